// Times the depthwise convolution kernels (forward, input gradient, weight
// gradient) on MobileNetV2's 3×3 layer shapes at 128×128 input, calling
// engine/kernels/depthwise_conv.h directly, at one kernel ISA level.
//
//   bazel run -c opt //bench:depthwise_bench -- --threads=1 --isa=avx2 --batch=8
//
// A batch of 1 keeps every tensor in a 4 MB L2; comparing it with batch 8
// tells arithmetic from memory traffic. Prints µs per call, the best of
// --rounds rounds of --reps calls.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "engine/kernels/depthwise_conv.h"
#include "engine/kernels/gemm.h"
#include "engine/kernels/isa.h"

ABSL_FLAG(int, threads, 1, "Kernel threads.");
ABSL_FLAG(std::string, isa, "avx2", "Kernel ISA level: generic, avx2 or avx512.");
ABSL_FLAG(int, batch, 8, "Samples.");
ABSL_FLAG(int, reps, 50, "Calls per round.");
ABSL_FLAG(int, rounds, 5, "Rounds; the best is printed.");

namespace {

using fleettune::engine::kernels::DepthwiseGeometry;
namespace kernels = fleettune::engine::kernels;

struct Layer {
  int64_t channels, size, stride;
};

// MobileNetV2's depthwise layers at 128×128 input, one of each shape.
constexpr Layer kLayers[] = {{32, 64, 1},  {96, 64, 2}, {144, 32, 1}, {144, 32, 2}, {192, 16, 1},
                             {192, 16, 2}, {384, 8, 1}, {576, 8, 1},  {576, 8, 2},  {960, 4, 1}};

template <typename Fn>
double BestMicroseconds(const Fn& fn) {
  double best = 1e30;
  for (int r = 0; r < absl::GetFlag(FLAGS_rounds); ++r) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < absl::GetFlag(FLAGS_reps); ++i) fn();
    const double us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
    best = std::min(best, us / absl::GetFlag(FLAGS_reps));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  kernels::SetGemmThreads(absl::GetFlag(FLAGS_threads));
  absl::StatusOr<kernels::Isa> isa = kernels::ParseIsa(absl::GetFlag(FLAGS_isa));
  if (!isa.ok() || !kernels::HostSupports(*isa)) {
    std::fprintf(stderr, "depthwise_bench: --isa=%s is not a level this CPU runs\n",
                 absl::GetFlag(FLAGS_isa).c_str());
    return 1;
  }
  kernels::SetKernelIsa(*isa);
  const int64_t n = absl::GetFlag(FLAGS_batch);
  std::printf("%-22s %10s %10s %10s   (µs per call, %s, %d thread(s), batch %ld)\n", "layer",
              "forward", "input grad", "weight grad", absl::GetFlag(FLAGS_isa).c_str(),
              absl::GetFlag(FLAGS_threads), static_cast<long>(n));
  for (const Layer& l : kLayers) {
    const int64_t out = (l.size - 1) / l.stride + 1;
    const DepthwiseGeometry g{n,   l.channels, l.size,   l.size, 1, 3, 3, out,
                              out, l.stride,   l.stride, 1,      1, 1, 1};
    std::vector<float> x(n * l.channels * l.size * l.size), y(n * l.channels * out * out);
    std::vector<float> w(l.channels * 9), b(l.channels), dw(l.channels * 9);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 17) * 0.1f - 0.8f;
    for (size_t i = 0; i < y.size(); ++i) y[i] = static_cast<float>(i % 13) * 0.1f - 0.6f;
    for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i % 7) * 0.05f - 0.15f;
    std::vector<float> dx(x.size()), forward_y(y.size());
    const double forward = BestMicroseconds(
        [&] { kernels::F32DepthwiseConv(g, x.data(), w.data(), b.data(), forward_y.data()); });
    const double input = BestMicroseconds(
        [&] { kernels::F32DepthwiseConvBackwardInput(g, y.data(), w.data(), dx.data()); });
    const double weight = BestMicroseconds(
        [&] { kernels::F32DepthwiseConvBackwardWeight(g, x.data(), y.data(), dw.data()); });
    char name[64];
    std::snprintf(name, sizeof name, "%ld×%ld×%ld s%ld", static_cast<long>(l.channels),
                  static_cast<long>(l.size), static_cast<long>(l.size),
                  static_cast<long>(l.stride));
    std::printf("%-22s %10.1f %10.1f %10.1f\n", name, forward, input, weight);
  }
  return 0;
}
