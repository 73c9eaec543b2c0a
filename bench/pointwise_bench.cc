// Times the direct pointwise convolution kernel (engine/kernels/pointwise_conv.h)
// against what the convolution ran before it: oneDNN's sgemm per sample plus
// a pass adding the bias, on MobileNetV2's 1×1 layer shapes at 128×128 input,
// batch 8, forward (y = W·x) and input gradient (dx = Wᵀ·dy).
//
//   bazel run -c opt //bench:pointwise_bench -- --threads=2 --isa=avx512
//
// The same buffers every call, so both sides run from cache: in a training
// step the inputs come from memory, which favours the GEMM's packing on
// shapes where x is the larger (PointwiseConvApplies; BENCHMARKS.md). Prints
// µs per call (the best of --reps), both sides' GFLOP/s, the ratio, the
// largest difference, and whether the kernel takes the shape in a step.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "engine/kernels/gemm.h"
#include "engine/kernels/isa.h"
#include "engine/kernels/parallel.h"
#include "engine/kernels/pointwise_conv.h"

ABSL_FLAG(int, threads, 2, "Kernel threads.");
ABSL_FLAG(std::string, isa, "avx512", "Kernel ISA level: generic, avx2 or avx512.");
ABSL_FLAG(int, reps, 40, "Calls per side and shape; the best is printed.");

namespace {

namespace kernels = fleettune::engine::kernels;

constexpr int64_t kBatch = 8;

// y has `rows` channels, x `k`; `gradient`: dx = Wᵀ·dy with W [k, rows].
struct Shape {
  int64_t rows, k, plane;
  bool gradient;
};

// MobileNetV2's pointwise layers (expand, project, head) and their input
// gradients, one of each shape.
constexpr Shape kShapes[] = {
    {96, 16, 4096, false},  {144, 24, 1024, false}, {192, 32, 256, false},  {384, 64, 64, false},
    {576, 96, 64, false},   {960, 160, 16, false},  {1280, 320, 16, false}, {16, 32, 4096, false},
    {24, 144, 1024, false}, {32, 192, 256, false},  {96, 576, 64, false},   {320, 960, 16, false},
    {32, 16, 4096, true},   {144, 24, 1024, true},  {96, 24, 1024, true},   {16, 96, 4096, true},
    {24, 144, 1024, true},  {192, 32, 256, true},   {32, 192, 256, true},   {576, 96, 64, true},
    {96, 576, 64, true},    {960, 160, 16, true},   {320, 1280, 16, true},
};

template <typename Fn>
double BestMicroseconds(const Fn& fn) {
  double best = 1e30;
  for (int r = 0; r < absl::GetFlag(FLAGS_reps); ++r) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    best = std::min(
        best, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
                  .count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  kernels::SetGemmThreads(absl::GetFlag(FLAGS_threads));
  const auto isa = kernels::ParseIsa(absl::GetFlag(FLAGS_isa));
  if (!isa.ok() || !kernels::HostSupports(*isa)) {
    std::fprintf(stderr, "pointwise_bench: --isa=%s is not a level this CPU runs\n",
                 absl::GetFlag(FLAGS_isa).c_str());
    return 1;
  }
  kernels::SetKernelIsa(*isa);
  std::printf("%-28s %17s %17s %7s %9s %s   (%s, %d thread(s), batch %ld)\n", "layer",
              "GEMM + bias µs", "direct µs", "ratio", "max diff", "in a step",
              absl::GetFlag(FLAGS_isa).c_str(), absl::GetFlag(FLAGS_threads),
              static_cast<long>(kBatch));
  for (const Shape& s : kShapes) {
    std::vector<float> w(s.rows * s.k), x(kBatch * s.k * s.plane), bias(s.rows, 0.5f);
    std::vector<float> gemm_y(kBatch * s.rows * s.plane), direct_y(gemm_y.size());
    for (size_t i = 0; i < w.size(); ++i) w[i] = std::sin(0.37f * static_cast<float>(i)) * 0.1f;
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.11f * static_cast<float>(i));
    // The weight is [rows, k] forward; [k, rows] for the gradient, read transposed.
    const kernels::PointwiseGeometry g{
        kBatch, s.rows, s.k, s.plane, s.gradient ? 1 : s.k, s.gradient ? s.rows : 1};
    const float* b = s.gradient ? nullptr : bias.data();
    const double gemm = BestMicroseconds([&] {
      for (int64_t n = 0; n < kBatch; ++n) {
        float* yn = gemm_y.data() + n * s.rows * s.plane;
        kernels::Sgemm(s.gradient, false, s.rows, s.plane, s.k, 1.0f, w.data(),
                       s.gradient ? s.rows : s.k, x.data() + n * s.k * s.plane, s.plane, 0.0f, yn,
                       s.plane);
        if (b == nullptr) continue;
        kernels::ParallelFor(s.rows, 2 * s.plane, [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            for (int64_t p = 0; p < s.plane; ++p) yn[r * s.plane + p] += b[r];
          }
        });
      }
    });
    const double direct = BestMicroseconds(
        [&] { kernels::F32PointwiseConv(g, w.data(), x.data(), b, direct_y.data()); });
    double diff = 0.0;
    for (size_t i = 0; i < gemm_y.size(); ++i) {
      diff = std::max(diff, static_cast<double>(std::fabs(gemm_y[i] - direct_y[i])));
    }
    const double flops = 2.0 * kBatch * s.rows * s.k * s.plane;
    char name[64];
    std::snprintf(name, sizeof name, "%s %ld from %ld, %ld px", s.gradient ? "dx" : "y ",
                  static_cast<long>(s.rows), static_cast<long>(s.k), static_cast<long>(s.plane));
    std::printf("%-28s %7.1f (%4.0f GF) %7.1f (%4.0f GF) %6.2fx %9.1e %s\n", name, gemm,
                flops / gemm * 1e-3, direct, flops / direct * 1e-3, gemm / direct, diff,
                kernels::PointwiseConvApplies(g) ? "yes" : "no");
  }
  return 0;
}
