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
//
// In-place pairs: a request may name, in `in_place_of`, an earlier-dying
// request whose storage it reuses (an elementwise op writing over its input,
// which dies at that op). Such a pair shares one offset; it is legal when the
// reused buffer's last use is exactly the new buffer's first use (the op that
// reads the one and writes the other) and the new buffer is no larger.
// CheckPlan proves exactly that for every pair, and no overlap for all others.
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
  // Index of the request whose bytes this one overwrites in place, or -1.
  int in_place_of = -1;
};

struct MemoryPlan {
  std::vector<size_t> offsets;  // one per request, in request order
  size_t arena_bytes = 0;       // high-water mark
};

// InvalidArgument if a request has last_use < first_use, alignment is not a
// power of two, or an in-place pair is illegal (see above).
absl::StatusOr<MemoryPlan> PlanMemory(absl::Span<const BufferRequest> buffers,
                                      size_t alignment = 64);

// Internal if two buffers with intersecting lifetimes overlap in the arena
// (other than a legal in-place pair at the same offset), an in-place pair is
// not at one offset or not legal, or a buffer runs past arena_bytes.
// Independent of PlanMemory's algorithm.
absl::Status CheckPlan(absl::Span<const BufferRequest> buffers, const MemoryPlan& plan);

}  // namespace fleettune::engine::memory

#endif  // FLEETTUNE_ENGINE_MEMORY_PLANNER_H_
