// Measures the GEMM libraries on Debian for the engine's GEMM shapes, in one
// process: oneDNN's dnnl_sgemm and OpenBLAS's cblas_sgemm. This is the
// measurement behind engine/kernels/gemm.h's choice. A second table times a
// tall weight gradient in both orientations, the measurement behind the fused
// SGD update's transposed path (engine/ops/optimizer.cc).
//
//   bazel run //bench:gemm_bench -- --threads=2
//   OPENBLAS_CORETYPE=SkylakeX bazel run //bench:gemm_bench   # OpenBLAS with a forced core
//
// The shapes are those of one training step of MLP 784-512-512-10, batch 64
// (forward, input gradients, weight gradients). Reports the best of --reps
// passes over all shapes.
#include <cblas.h>
#include <dnnl.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"

ABSL_FLAG(int, threads, 2, "Threads for both libraries.");
ABSL_FLAG(int, reps, 300, "Passes over the shapes.");

extern "C" char* openblas_get_corename();

namespace {

struct Shape {
  bool ta, tb;
  int m, n, k;
};

const Shape kShapes[] = {
    {false, true, 64, 512, 784},  {false, true, 64, 512, 512}, {false, true, 64, 10, 512},
    {true, false, 10, 512, 64},   {false, false, 64, 512, 10}, {true, false, 512, 512, 64},
    {false, false, 64, 512, 512}, {true, false, 512, 784, 64},
};

template <typename F>
double BestMs(F&& gemm) {
  double best = 1e30;
  for (int r = 0; r < absl::GetFlag(FLAGS_reps); ++r) {
    const auto start = std::chrono::steady_clock::now();
    for (const Shape& s : kShapes) gemm(s);
    best = std::min(
        best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                  .count());
  }
  return best;
}

// The weight gradient of a tall projection, dW [out, in] = dYᵀ·X with
// out ≫ in (Llama-mini's vocabulary head: [8192, 256] over 1024 tokens), in
// both orientations: as written, and transposed (dWᵀ = Xᵀ·dY), which is how
// the fused SGD update computes it (engine/ops/optimizer.cc).
void TallGradients(int threads) {
  constexpr int kOut = 8192, kIn = 256;
  std::vector<float> dy(size_t{1024} * kOut, 0.01f), x(1024 * kIn, 0.5f), dw(size_t{kOut} * kIn);
  omp_set_num_threads(threads);
  std::printf("Tall weight gradient [%d, %d], oneDNN, %d threads, best of 20\n", kOut, kIn,
              threads);
  for (int tokens : {256, 512, 1024}) {
    auto best = [&](bool transposed) {
      double ms = 1e30;
      for (int r = 0; r < 20; ++r) {
        const auto start = std::chrono::steady_clock::now();
        if (transposed) {
          dnnl_sgemm('T', 'N', kIn, kOut, tokens, 1.0f, x.data(), kIn, dy.data(), kOut, 0.0f,
                     dw.data(), kOut);
        } else {
          dnnl_sgemm('T', 'N', kOut, kIn, tokens, 1.0f, dy.data(), kOut, x.data(), kIn, 0.0f,
                     dw.data(), kIn);
        }
        ms = std::min(
            ms, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                    .count());
      }
      return ms;
    };
    const double flops = 2.0 * kOut * kIn * tokens;
    const double plain = best(false), transposed = best(true);
    std::printf("  %4d tokens: dYT.X %6.2f ms (%3.0f GFLOP/s)   XT.dY %6.2f ms (%3.0f GFLOP/s)\n",
                tokens, plain, flops / plain / 1e6, transposed, flops / transposed / 1e6);
  }
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int threads = absl::GetFlag(FLAGS_threads);
  std::vector<float> a(1 << 20, 0.5f), b(1 << 20, 0.25f), c(1 << 20);
  auto lda = [](const Shape& s) { return s.ta ? s.m : s.k; };
  auto ldb = [](const Shape& s) { return s.tb ? s.k : s.n; };

  omp_set_num_threads(threads);
  const double dnnl = BestMs([&](const Shape& s) {
    dnnl_sgemm(s.ta ? 'T' : 'N', s.tb ? 'T' : 'N', s.m, s.n, s.k, 1.0f, a.data(), lda(s), b.data(),
               ldb(s), 0.0f, c.data(), s.n);
  });
  openblas_set_num_threads(threads);
  const double openblas = BestMs([&](const Shape& s) {
    cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans, s.tb ? CblasTrans : CblasNoTrans,
                s.m, s.n, s.k, 1.0f, a.data(), lda(s), b.data(), ldb(s), 0.0f, c.data(), s.n);
  });
  std::printf("GEMMs of one MLP 784-512-512-10 batch-64 training step, %d threads, best of %d\n",
              threads, absl::GetFlag(FLAGS_reps));
  std::printf("  oneDNN dnnl_sgemm         %7.3f ms\n", dnnl);
  std::printf("  OpenBLAS cblas_sgemm      %7.3f ms  (core %s)\n", openblas,
              openblas_get_corename());
  std::printf("  OpenBLAS / oneDNN         %7.2fx\n", openblas / dnnl);
  TallGradients(threads);
  return 0;
}
