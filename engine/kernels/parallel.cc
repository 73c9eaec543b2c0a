#include "engine/kernels/parallel.h"

#include <omp.h>

#include <algorithm>

namespace fleettune::engine::kernels {

int MaxThreads() { return std::max(1, omp_get_max_threads()); }

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
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num();
    const int64_t team = omp_get_num_threads();
    const int64_t begin = n * t / team, end = n * (t + 1) / team;
    if (begin < end) call(fn, begin, end);
  }
}

}  // namespace internal
}  // namespace fleettune::engine::kernels
