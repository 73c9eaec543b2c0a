#include "engine/kernels/gemm.h"

#include <dnnl.h>
#include <omp.h>

#include <algorithm>

#include "engine/kernels/parallel.h"

namespace fleettune::engine::kernels {

void Sgemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc) {
  if (m == 0 || n == 0) return;
  // dnnl_sgemm is row-major like the engine. Shapes were validated when the
  // graph was built, so the status can only be OK.
  dnnl_sgemm(transpose_a ? 'T' : 'N', transpose_b ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta,
             c, ldc);
}

// Debian's oneDNN runs on OpenMP.
bool GemmsPerThread(int64_t count, int64_t macs) {
  // Up to this many multiply-adds a GEMM gains little from a second thread.
  constexpr int64_t kSmallGemmMacs = int64_t{4} << 20;
  return count >= 2 * MaxThreads() && macs <= kSmallGemmMacs;
}

void SetGemmThreads(int threads) {
  omp_set_num_threads(std::max(1, threads));
  FlushDenormals();  // the team just sized is the one every kernel runs on
}

}  // namespace fleettune::engine::kernels
