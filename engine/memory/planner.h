// Static memory planning: one arena, an offset per buffer, reuse after last use.
//
//   std::vector<BufferRequest> reqs = {{bytes, first_use, last_use}, ...};
//   ASSIGN_OR_RETURN(MemoryPlan plan, PlanMemory(reqs));
//   RETURN_IF_ERROR(CheckPlan(reqs, plan));   // proof: no live overlap
//
// The planner is TensorFlow Lite Micro's greedy-by-size strategy: place buffers
// from largest to smallest, each at the lowest aligned offset that does not
// overlap any already-placed buffer whose lifetime intersects its own.
// Lifetimes are inclusive ranges of step positions. Pure functions; thread-safe.
#ifndef FLEETTUNE_ENGINE_MEMORY_PLANNER_H_
#define FLEETTUNE_ENGINE_MEMORY_PLANNER_H_

#include <cstddef>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace fleettune::engine::memory {

struct BufferRequest {
  size_t bytes = 0;
  int first_use = 0;  // position of the write that creates the buffer
  int last_use = 0;   // position of the last read (inclusive)
};

struct MemoryPlan {
  std::vector<size_t> offsets;  // one per request, in request order
  size_t arena_bytes = 0;       // high-water mark
};

// InvalidArgument if a request has last_use < first_use or alignment is not a
// power of two.
absl::StatusOr<MemoryPlan> PlanMemory(absl::Span<const BufferRequest> buffers,
                                      size_t alignment = 64);

// Internal if two buffers with intersecting lifetimes overlap in the arena, or
// a buffer runs past arena_bytes. Independent of PlanMemory's algorithm.
absl::Status CheckPlan(absl::Span<const BufferRequest> buffers, const MemoryPlan& plan);

}  // namespace fleettune::engine::memory

#endif  // FLEETTUNE_ENGINE_MEMORY_PLANNER_H_
