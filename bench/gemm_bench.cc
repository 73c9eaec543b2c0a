// Measures the GEMM libraries on Debian for the engine's GEMM shapes, in one
// process: oneDNN's dnnl_sgemm and OpenBLAS's cblas_sgemm. This is the
// measurement behind engine/kernels/gemm.h's choice. A second table times a
// tall weight gradient in both orientations, the measurement behind the fused
// SGD update's transposed path (engine/ops/optimizer.cc). A third times
// Llama-mini's GEMMs with warm and with cold caches, through dnnl_sgemm,
// through oneDNN's matmul primitive with its weights packed ahead of time, and
// in bfloat16: the ceiling its training step runs against (BENCHMARKS.md,
// issue #6).
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
#include <cstdint>
#include <cstdio>
#include <dnnl.hpp>  // the matmul primitive: this bench only, which may throw
#include <utility>
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

// Llama-mini's GEMMs for one micro-batch of 256 tokens (dim 256, FFN 704,
// vocabulary 8192), C = op(A)·op(B) with B the weight where there is one.
struct DecoderGemm {
  const char* name;
  bool ta, tb;
  int64_t m, n, k;
  bool b_is_weight;

  int64_t lda() const { return ta ? m : k; }
  int64_t ldb() const { return tb ? k : n; }
  double flops() const { return 2.0 * m * n * k; }
};

const DecoderGemm kDecoderGemms[] = {
    {"head forward      X.WT", false, true, 256, 8192, 256, true},
    {"head input grad   dY.W", false, false, 256, 256, 8192, true},
    {"head weight grad dYT.X", true, false, 8192, 256, 256, false},
    {"FFN up/gate       X.WT", false, true, 256, 704, 256, true},
    {"FFN down          H.WT", false, true, 256, 256, 704, true},
};

// GFLOP/s of `gemm(set)` over kSets operand sets: warm is the best of 20
// calls on set 0; cold is the mean over calls that each find the caches
// holding 64 MiB of other data (the step touches about 55 MB).
constexpr int kSets = 8;
using dnnl::memory;

template <typename F>
std::pair<double, double> WarmCold(double flops, F&& gemm) {
  using Clock = std::chrono::steady_clock;
  double warm = 1e30, cold = 0.0;
  for (int r = 0; r < 20; ++r) {
    const auto start = Clock::now();
    gemm(0);
    warm = std::min(warm, std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::vector<float> other(size_t{16} << 20, 1.0f);
  constexpr int kRounds = 6;
  for (int r = 0; r < kRounds; ++r) {
    for (int set = 0; set < kSets; ++set) {
      for (size_t i = 0; i < other.size(); i += 16) other[i] += 1.0f;
      const auto start = Clock::now();
      gemm(set);
      cold += std::chrono::duration<double>(Clock::now() - start).count();
    }
  }
  return {flops / warm / 1e9, flops / (cold / (kRounds * kSets)) / 1e9};
}

// oneDNN's matmul for one of kDecoderGemms: f32 with the weights packed ahead
// of time, or bfloat16 (AMX where the CPU has it) into an f32 C, the f32
// operands converted in each call except a weight, converted and packed ahead
// as a plan would once per step.
std::pair<double, double> MatmulWarmCold(const DecoderGemm& g, memory::data_type type,
                                         std::vector<std::vector<float>>& a,
                                         std::vector<std::vector<float>>& b,
                                         std::vector<std::vector<float>>& c) {
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const memory::dims a_strides = g.ta ? memory::dims{1, g.lda()} : memory::dims{g.lda(), 1};
  const memory::dims b_strides = g.tb ? memory::dims{1, g.ldb()} : memory::dims{g.ldb(), 1};
  const memory::desc a_f32({g.m, g.k}, memory::data_type::f32, a_strides);
  const memory::desc b_f32({g.k, g.n}, memory::data_type::f32, b_strides);
  const memory::desc a_md({g.m, g.k}, type, a_strides);
  const memory::desc b_md = g.b_is_weight ? memory::desc({g.k, g.n}, type, memory::format_tag::any)
                                          : memory::desc({g.k, g.n}, type, b_strides);
  const memory::desc c_md({g.m, g.n}, memory::data_type::f32, memory::dims{g.n, 1});
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), engine);
  const dnnl::matmul matmul(pd);
  struct Set {
    memory a_f32, b_f32, a, b, c;
  };
  std::vector<Set> sets;
  for (int i = 0; i < kSets; ++i) {
    Set set{memory(a_f32, engine, a[i].data()), memory(b_f32, engine, b[i].data()),
            memory(a_md, engine), memory(pd.weights_desc(), engine),
            memory(c_md, engine, c[i].data())};
    if (type == memory::data_type::f32) set.a = set.a_f32;
    if (g.b_is_weight) dnnl::reorder(set.b_f32, set.b).execute(stream, set.b_f32, set.b);
    sets.push_back(set);
  }
  return WarmCold(g.flops(), [&](int i) {
    Set& set = sets[i];
    if (type != memory::data_type::f32) {
      dnnl::reorder(set.a_f32, set.a).execute(stream, set.a_f32, set.a);
      if (!g.b_is_weight) dnnl::reorder(set.b_f32, set.b).execute(stream, set.b_f32, set.b);
    }
    matmul.execute(stream,
                   {{DNNL_ARG_SRC, set.a}, {DNNL_ARG_WEIGHTS, set.b}, {DNNL_ARG_DST, set.c}});
    stream.wait();
  });
}

void DecoderCeiling(int threads) {
  omp_set_num_threads(threads);
  std::printf(
      "Llama-mini's GEMMs (256 tokens), %d threads, GFLOP/s, warm (best of 20) / cold (mean,\n"
      "64 MiB written between calls): dnnl_sgemm; oneDNN matmul with packed f32 weights;\n"
      "the same in bfloat16 into f32, operands converted in the call (weights ahead)\n",
      threads);
  std::printf("  %-24s %13s %13s %13s\n", "", "sgemm", "packed f32", "bf16");
  for (const DecoderGemm& g : kDecoderGemms) {
    std::vector<std::vector<float>> a(kSets, std::vector<float>(g.m * g.k, 0.5f));
    std::vector<std::vector<float>> b(kSets, std::vector<float>(g.k * g.n, 0.25f));
    std::vector<std::vector<float>> c(kSets, std::vector<float>(g.m * g.n, 0.0f));
    const auto [sgemm_warm, sgemm_cold] = WarmCold(g.flops(), [&](int set) {
      dnnl_sgemm(g.ta ? 'T' : 'N', g.tb ? 'T' : 'N', g.m, g.n, g.k, 1.0f, a[set].data(), g.lda(),
                 b[set].data(), g.ldb(), 0.0f, c[set].data(), g.n);
    });
    std::printf("  %-24s %6.0f/%-6.0f", g.name, sgemm_warm, sgemm_cold);
    if (g.b_is_weight) {
      const auto [warm, cold] = MatmulWarmCold(g, memory::data_type::f32, a, b, c);
      std::printf(" %6.0f/%-6.0f", warm, cold);
    } else {
      std::printf(" %13s", "-");
    }
    const auto [warm, cold] = MatmulWarmCold(g, memory::data_type::bf16, a, b, c);
    std::printf(" %6.0f/%-6.0f\n", warm, cold);
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
  DecoderCeiling(threads);
  return 0;
}
