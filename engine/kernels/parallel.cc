#include "engine/kernels/parallel.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <pmmintrin.h>
#include <xmmintrin.h>
#endif

namespace fleettune::engine::kernels {

int MaxThreads() { return std::max(1, omp_get_max_threads()); }

void FlushDenormalsOnThisThread() {
#if defined(__x86_64__) || defined(__i386__)
  _MM_SET_FLUSH_ZERO_MODE(_MM_FLUSH_ZERO_ON);          // results
  _MM_SET_DENORMALS_ZERO_MODE(_MM_DENORMALS_ZERO_ON);  // inputs
#elif defined(__aarch64__)
  // FPCR.FZ (bit 24) flushes both inputs and results on AArch64.
  uint64_t fpcr;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
  __asm__ __volatile__("msr fpcr, %0" : : "r"(fpcr | (uint64_t{1} << 24)));
#endif
}

void FlushDenormals() {
  FlushDenormalsOnThisThread();
  // libgomp keeps its team between regions, so the mode set here stays with
  // every thread that later runs a GEMM or a ParallelFor.
#pragma omp parallel num_threads(MaxThreads())
  FlushDenormalsOnThisThread();
}

namespace internal {

void ParallelForImpl(int64_t n, int64_t cost_per_item, RangeFn call, const void* fn) {
  if (n <= 0) return;
  const int64_t work = n * std::max<int64_t>(cost_per_item, 1);
  int64_t threads = std::min<int64_t>(MaxThreads(), n);
  threads = std::min<int64_t>(threads, std::max<int64_t>(1, work / kMinParallelWork));
  if (threads <= 1 || omp_in_parallel()) {
    call(fn, 0, n);
    return;
  }
  // A few chunks per thread, handed out dynamically: when another process
  // takes a core for a while, the other thread picks up its share instead of
  // the whole step waiting at the barrier.
  const int64_t chunks = std::min<int64_t>(n, threads * 4);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t begin = n * k / chunks, end = n * (k + 1) / chunks;
    if (begin < end) call(fn, begin, end);
  }
}

}  // namespace internal
}  // namespace fleettune::engine::kernels
