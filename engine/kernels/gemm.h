// Single-precision GEMM for the engine's fast kernels.
//
//   Sgemm(false, true, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);  // C = A·Bᵀ
//
// Row-major, C = alpha·op(A)·op(B) + beta·C, op = transpose when the flag is
// set. Backed by oneDNN's dnnl_sgemm, chosen by measurement over OpenBLAS and
// BLIS (bench/gemm_bench.cc; BENCHMARKS.md): oneDNN picks its JIT kernels from
// the CPU's ISA features (AVX2, AVX-512, AMX, ...), while Debian's OpenBLAS
// 0.3.21 picks by CPU model and falls back to its slowest (Prescott) kernels
// on processors newer than it knows. Thread-safe; the thread count is
// process-wide.
#ifndef FLEETTUNE_ENGINE_KERNELS_GEMM_H_
#define FLEETTUNE_ENGINE_KERNELS_GEMM_H_

#include <cstdint>

namespace fleettune::engine::kernels {

void Sgemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc);

// Threads used by Sgemm (and other parallel kernels); at least 1.
void SetGemmThreads(int threads);

// Whether a batch of `count` independent GEMMs of `macs` multiply-adds each
// should run one per thread, each single-threaded (oneDNN runs on one thread
// inside a parallel region), instead of one after another on the whole team.
// Small GEMMs split over the team pay a fork and join each and leave every
// thread a sliver: attention's 2 M multiply-add products ran at 1.5× the rate
// one per thread (BENCHMARKS.md, issue #6, fifth session).
bool GemmsPerThread(int64_t count, int64_t macs);

}  // namespace fleettune::engine::kernels

#endif  // FLEETTUNE_ENGINE_KERNELS_GEMM_H_
