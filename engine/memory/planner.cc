#include "engine/memory/planner.h"

#include <algorithm>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fleettune::engine::memory {
namespace {

bool LifetimesIntersect(const BufferRequest& a, const BufferRequest& b) {
  return a.first_use <= b.last_use && b.first_use <= a.last_use;
}

size_t AlignUp(size_t v, size_t alignment) { return (v + alignment - 1) / alignment * alignment; }

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
  std::vector<size_t> order(buffers.size());
  std::iota(order.begin(), order.end(), 0);
  // Largest first; ties by earlier first use, then index, so plans are stable.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (buffers[a].bytes != buffers[b].bytes) return buffers[a].bytes > buffers[b].bytes;
    return buffers[a].first_use < buffers[b].first_use;
  });

  MemoryPlan plan;
  plan.offsets.assign(buffers.size(), 0);
  std::vector<size_t> placed;  // indices, kept sorted by offset
  std::vector<size_t> live;
  for (size_t i : order) {
    const size_t size = AlignUp(std::max<size_t>(buffers[i].bytes, 1), alignment);
    live.clear();
    for (size_t j : placed) {
      if (LifetimesIntersect(buffers[i], buffers[j])) live.push_back(j);
    }
    // `placed` is sorted by offset, so `live` is too: scan the gaps.
    size_t candidate = 0;
    for (size_t j : live) {
      const size_t j_end =
          plan.offsets[j] + AlignUp(std::max<size_t>(buffers[j].bytes, 1), alignment);
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
    for (size_t j = i + 1; j < buffers.size(); ++j) {
      if (!LifetimesIntersect(buffers[i], buffers[j])) continue;
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
