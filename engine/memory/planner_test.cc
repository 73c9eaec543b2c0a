#include "engine/memory/planner.h"

#include <random>

#include "engine/base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::memory {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

TEST(MemoryPlanner, ReusesBufferAfterLastUse) {
  // a dies at 1, c is born at 2: c can take a's place.
  std::vector<BufferRequest> reqs = {{1024, 0, 1}, {1024, 1, 3}, {1024, 2, 3}};
  ASSERT_OK_AND_ASSIGN(MemoryPlan plan, PlanMemory(reqs));
  ASSERT_OK(CheckPlan(reqs, plan));
  EXPECT_EQ(plan.arena_bytes, 2048u);
  EXPECT_EQ(plan.offsets[0], plan.offsets[2]);
}

TEST(MemoryPlanner, OverlappingLifetimesGetDisjointRanges) {
  std::vector<BufferRequest> reqs = {{100, 0, 5}, {200, 0, 5}, {300, 0, 5}};
  ASSERT_OK_AND_ASSIGN(MemoryPlan plan, PlanMemory(reqs));
  ASSERT_OK(CheckPlan(reqs, plan));
  EXPECT_EQ(plan.arena_bytes, 128u + 256u + 320u);  // each rounded up to 64
}

TEST(MemoryPlanner, FillsGapsBetweenLiveBuffers) {
  // Big buffers at both ends of time; a small one in the middle fits in the
  // space the first one freed.
  std::vector<BufferRequest> reqs = {{4096, 0, 1}, {4096, 0, 4}, {1024, 2, 3}};
  ASSERT_OK_AND_ASSIGN(MemoryPlan plan, PlanMemory(reqs));
  ASSERT_OK(CheckPlan(reqs, plan));
  EXPECT_EQ(plan.arena_bytes, 8192u);
}

TEST(MemoryPlanner, RandomPlansPassTheChecker) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<BufferRequest> reqs;
    const int n = 1 + rng() % 40;
    size_t peak_lower_bound = 0;
    for (int i = 0; i < n; ++i) {
      const int a = rng() % 50, b = a + rng() % 20;
      reqs.push_back({static_cast<size_t>(1 + rng() % 5000), a, b});
    }
    // The arena can never be smaller than the bytes live at any one time.
    for (int t = 0; t < 70; ++t) {
      size_t live = 0;
      for (const auto& r : reqs) {
        if (r.first_use <= t && t <= r.last_use) live += r.bytes;
      }
      peak_lower_bound = std::max(peak_lower_bound, live);
    }
    ASSERT_OK_AND_ASSIGN(MemoryPlan plan, PlanMemory(reqs));
    ASSERT_OK(CheckPlan(reqs, plan));
    EXPECT_GE(plan.arena_bytes, peak_lower_bound);
  }
}

TEST(MemoryPlanner, CheckerCatchesOverlap) {
  std::vector<BufferRequest> reqs = {{100, 0, 2}, {100, 1, 3}};
  MemoryPlan bad{{0, 50}, 256};
  EXPECT_THAT(CheckPlan(reqs, bad),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("live together and overlap")));
  MemoryPlan short_arena{{0, 128}, 200};
  EXPECT_THAT(CheckPlan(reqs, short_arena),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("past the arena")));
}

TEST(MemoryPlanner, RejectsInvertedLifetime) {
  std::vector<BufferRequest> reqs = {{100, 3, 2}};
  EXPECT_THAT(PlanMemory(reqs),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("before first use")));
  EXPECT_THAT(PlanMemory({}, 48),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("power of two")));
}

TEST(MemoryPlanner, InPlacePairSharesOneBuffer) {
  // b = relu(a) at position 2 where a dies; c = relu(b) at 4 where b dies.
  std::vector<BufferRequest> reqs = {{1024, 0, 2}, {1024, 2, 4}, {1024, 4, 6}, {512, 1, 5}};
  reqs[1].in_place_of = 0;
  reqs[2].in_place_of = 1;
  ASSERT_OK_AND_ASSIGN(MemoryPlan plan, PlanMemory(reqs));
  ASSERT_OK(CheckPlan(reqs, plan));
  EXPECT_EQ(plan.offsets[0], plan.offsets[1]);
  EXPECT_EQ(plan.offsets[1], plan.offsets[2]);
  EXPECT_EQ(plan.arena_bytes, 1024u + 512u);
  // Without the pairs each op needs its input and output at once.
  for (BufferRequest& r : reqs) r.in_place_of = -1;
  ASSERT_OK_AND_ASSIGN(MemoryPlan separate, PlanMemory(reqs));
  EXPECT_GT(separate.arena_bytes, plan.arena_bytes);
}

TEST(MemoryPlanner, RejectsAnInPlacePairWhoseInputOutlivesTheOp) {
  std::vector<BufferRequest> reqs = {{1024, 0, 3}, {1024, 2, 4}};
  reqs[1].in_place_of = 0;  // 0 is still read at 3, after 1 was written at 2
  EXPECT_THAT(PlanMemory(reqs),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("last used at 3")));
  std::vector<BufferRequest> bigger = {{512, 0, 2}, {1024, 2, 4}};
  bigger[1].in_place_of = 0;
  EXPECT_THAT(PlanMemory(bigger),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("smaller buffer")));
}

TEST(MemoryPlanner, CheckerRejectsBrokenInPlacePlans) {
  std::vector<BufferRequest> reqs = {{1024, 0, 2}, {1024, 2, 4}};
  reqs[1].in_place_of = 0;
  ASSERT_OK_AND_ASSIGN(MemoryPlan plan, PlanMemory(reqs));
  // The pair moved apart: no longer in place.
  MemoryPlan moved = plan;
  moved.offsets[1] = 1024;
  moved.arena_bytes = 2048;
  EXPECT_THAT(CheckPlan(reqs, moved),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("another offset")));
  // The same offsets without the declared pair: an overlap of live buffers.
  reqs[1].in_place_of = -1;
  EXPECT_THAT(CheckPlan(reqs, plan), StatusIs(absl::StatusCode::kInternal, HasSubstr("overlap")));
}

}  // namespace
}  // namespace fleettune::engine::memory
