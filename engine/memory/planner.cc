#include "engine/memory/planner.h"

#include <algorithm>
#include <numeric>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fleettune::engine::memory {
namespace {

bool LifetimesIntersect(const BufferRequest& a, const BufferRequest& b) {
  return a.first_use <= b.last_use && b.first_use <= a.last_use;
}

size_t AlignUp(size_t v, size_t alignment) { return (v + alignment - 1) / alignment * alignment; }

// Why request i's in-place link is illegal, or "" when it is fine.
std::string InPlaceProblem(absl::Span<const BufferRequest> buffers, size_t i) {
  const int j = buffers[i].in_place_of;
  if (j < 0) return "";
  if (static_cast<size_t>(j) >= buffers.size() || static_cast<size_t>(j) == i) {
    return absl::StrCat("buffer ", i, ": in_place_of ", j, " is not another buffer");
  }
  if (buffers[j].last_use != buffers[i].first_use) {
    return absl::StrCat("buffer ", i, " (first use ", buffers[i].first_use, ") reuses buffer ", j,
                        " in place, which is last used at ", buffers[j].last_use);
  }
  if (buffers[i].bytes > buffers[j].bytes) {
    return absl::StrCat("buffer ", i, " (", buffers[i].bytes, " bytes) reuses the smaller buffer ",
                        j, " (", buffers[j].bytes, " bytes) in place");
  }
  return "";
}

}  // namespace

absl::StatusOr<MemoryPlan> PlanMemory(absl::Span<const BufferRequest> buffers, size_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("alignment ", alignment, " is not a power of two"));
  }
  for (size_t i = 0; i < buffers.size(); ++i) {
    if (buffers[i].last_use < buffers[i].first_use) {
      return absl::InvalidArgumentError(absl::StrCat("buffer ", i, ": last use ",
                                                     buffers[i].last_use, " before first use ",
                                                     buffers[i].first_use));
    }
  }
  // In-place chains share storage: plan each chain as one buffer spanning its
  // members' lifetimes (they meet end to start), then give every member the
  // chain's offset.
  std::vector<size_t> group(buffers.size());
  for (size_t i = 0; i < buffers.size(); ++i) {
    if (std::string why = InPlaceProblem(buffers, i); !why.empty()) {
      return absl::InvalidArgumentError(why);
    }
    group[i] = i;
  }
  auto root = [&](size_t i) {
    while (group[i] != i) i = group[i];
    return i;
  };
  for (size_t i = 0; i < buffers.size(); ++i) {
    if (buffers[i].in_place_of >= 0) group[i] = root(buffers[i].in_place_of);
  }
  std::vector<BufferRequest> merged(buffers.begin(), buffers.end());
  for (size_t i = 0; i < buffers.size(); ++i) {
    const size_t r = root(i);
    if (r == i) continue;
    merged[r].bytes = std::max(merged[r].bytes, buffers[i].bytes);
    merged[r].first_use = std::min(merged[r].first_use, buffers[i].first_use);
    merged[r].last_use = std::max(merged[r].last_use, buffers[i].last_use);
  }
  std::vector<size_t> order;
  for (size_t i = 0; i < buffers.size(); ++i) {
    if (root(i) == i) order.push_back(i);
  }
  // Largest first; ties by earlier first use, then index, so plans are stable.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (merged[a].bytes != merged[b].bytes) return merged[a].bytes > merged[b].bytes;
    return merged[a].first_use < merged[b].first_use;
  });

  MemoryPlan plan;
  plan.offsets.assign(buffers.size(), 0);
  std::vector<size_t> placed;  // indices, kept sorted by offset
  std::vector<size_t> live;
  for (size_t i : order) {
    const size_t size = AlignUp(std::max<size_t>(merged[i].bytes, 1), alignment);
    live.clear();
    for (size_t j : placed) {
      if (LifetimesIntersect(merged[i], merged[j])) live.push_back(j);
    }
    // `placed` is sorted by offset, so `live` is too: scan the gaps.
    size_t candidate = 0;
    for (size_t j : live) {
      const size_t j_end =
          plan.offsets[j] + AlignUp(std::max<size_t>(merged[j].bytes, 1), alignment);
      if (plan.offsets[j] >= candidate + size) break;  // fits in the gap before j
      candidate = std::max(candidate, j_end);
    }
    plan.offsets[i] = candidate;
    plan.arena_bytes = std::max(plan.arena_bytes, candidate + size);
    auto pos = std::lower_bound(placed.begin(), placed.end(), i, [&](size_t a, size_t b) {
      return plan.offsets[a] < plan.offsets[b];
    });
    placed.insert(pos, i);
  }
  for (size_t i = 0; i < buffers.size(); ++i) plan.offsets[i] = plan.offsets[root(i)];
  return plan;
}

absl::Status CheckPlan(absl::Span<const BufferRequest> buffers, const MemoryPlan& plan) {
  if (plan.offsets.size() != buffers.size()) {
    return absl::InternalError("plan has a different number of buffers than requested");
  }
  for (size_t i = 0; i < buffers.size(); ++i) {
    if (plan.offsets[i] + buffers[i].bytes > plan.arena_bytes) {
      return absl::InternalError(absl::StrCat("buffer ", i, " ends past the arena"));
    }
    if (std::string why = InPlaceProblem(buffers, i); !why.empty()) {
      return absl::InternalError(why);
    }
    if (buffers[i].in_place_of >= 0 && plan.offsets[i] != plan.offsets[buffers[i].in_place_of]) {
      return absl::InternalError(absl::StrCat("buffer ", i, " reuses buffer ",
                                              buffers[i].in_place_of,
                                              " in place but has another offset"));
    }
    for (size_t j = i + 1; j < buffers.size(); ++j) {
      if (!LifetimesIntersect(buffers[i], buffers[j])) continue;
      // A legal in-place pair meets at one position (checked above).
      if (buffers[i].in_place_of == static_cast<int>(j) ||
          buffers[j].in_place_of == static_cast<int>(i)) {
        continue;
      }
      if (buffers[i].bytes == 0 || buffers[j].bytes == 0) continue;
      const size_t a0 = plan.offsets[i], a1 = a0 + buffers[i].bytes;
      const size_t b0 = plan.offsets[j], b1 = b0 + buffers[j].bytes;
      if (a0 < b1 && b0 < a1) {
        return absl::InternalError(absl::StrCat("buffers ", i, " [", a0, ", ", a1, ") and ", j,
                                                " [", b0, ", ", b1,
                                                ") are live together and overlap"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace fleettune::engine::memory
