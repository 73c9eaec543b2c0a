// Splitting a kernel's loop over the engine's threads.
//
//   kernels::ParallelFor(channels, per_channel_cost, [&](int64_t begin, int64_t end) {
//     for (int64_t c = begin; c < end; ++c) ...;
//   });
//
// Runs on the OpenMP team that oneDNN's GEMM already uses (thread count from
// SetGemmThreads), not on a pool of our own: two pools on the same cores make
// each one's spinning workers steal time from the other's, while one team is
// reused between GEMMs and these loops with no hand-off. The call does not
// allocate through operator new (libgomp keeps its team between regions).
// Thread-safe in the sense of OpenMP: call it from one thread at a time per
// executable; nested calls run serially.
#ifndef FLEETTUNE_ENGINE_KERNELS_PARALLEL_H_
#define FLEETTUNE_ENGINE_KERNELS_PARALLEL_H_

#include <cstdint>

namespace fleettune::engine::kernels {

// Below this much work (about one element touched per unit) a loop runs on
// the calling thread: waking the team costs a few microseconds.
inline constexpr int64_t kMinParallelWork = 1 << 15;

namespace internal {
using RangeFn = void (*)(const void* fn, int64_t begin, int64_t end);
void ParallelForImpl(int64_t n, int64_t cost_per_item, RangeFn call, const void* fn);
}  // namespace internal

// Calls fn(begin, end) on disjoint contiguous ranges covering [0, n), a few
// per thread (handed out dynamically), or fn(0, n) once when n · cost_per_item is small or only
// one thread is configured. fn must not throw.
template <typename Fn>
void ParallelFor(int64_t n, int64_t cost_per_item, const Fn& fn) {
  internal::ParallelForImpl(
      n, cost_per_item,
      [](const void* f, int64_t begin, int64_t end) { (*static_cast<const Fn*>(f))(begin, end); },
      &fn);
}

// Threads a ParallelFor may use (the OpenMP team size); at least 1.
int MaxThreads();

// Denormal floats (|x| < 1.2e-38) flushed to zero, in inputs and results, on
// the calling thread (FlushDenormalsOnThisThread) or on it and every thread of
// the OpenMP team (FlushDenormals). Training produces denormals as it runs:
// SGD momentum for a channel whose gradient stays zero decays by 0.9 a step
// into the denormal range within ~800 steps, and every multiply that touches
// one takes a microcode assist, about 100x slower on x86. The fleet's CNN
// fine-tuning slowed from ~16 to ~250 ms a step this way. TensorFlow's CPU
// thread pools flush denormals for the same reason; values this small carry
// no information a float32 training step can use.
void FlushDenormalsOnThisThread();
void FlushDenormals();

}  // namespace fleettune::engine::kernels

#endif  // FLEETTUNE_ENGINE_KERNELS_PARALLEL_H_
