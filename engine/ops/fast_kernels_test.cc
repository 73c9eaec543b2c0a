// Fast kernels against their reference kernels on shapes the conformance
// cases keep small for the gradient check: large channel counts, rows wider
// than the vector lanes, odd sizes, and enough work that ParallelFor splits
// it over two threads. Kernels are called directly through their OpDef.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/base/status_matchers.h"
#include "engine/kernels/gemm.h"
#include "engine/kernels/isa.h"
#include "engine/kernels/pointwise_conv.h"
#include "engine/kernels/stem_conv.h"
#include "engine/ops/kernel_parts.h"
#include "engine/ops/op_registry.h"
#include "engine/testing/gradcheck.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::ops {
namespace {

struct Case {
  OpKind kind;
  std::vector<TensorType> inputs;
  Attrs attrs = NoAttrs{};
  std::vector<int> positive_inputs = {};
  int32_t int_upper = 1;  // i32 inputs are drawn from [0, int_upper)
};

// Runs `kernel` on copies of `inputs`; returns the output, or for ops without
// one the f32 inputs they update in place.
std::vector<std::vector<float>> RunKernel(KernelFn kernel, const Node& node,
                                          const std::vector<Tensor>& inputs, const TensorType& out,
                                          size_t scratch_bytes, const StepInfo& step) {
  std::vector<Tensor> in = inputs;
  std::vector<TensorView> views;
  for (Tensor& t : in) views.push_back(t.view());
  Tensor output(out.dtype, out.shape);
  std::vector<float> scratch(scratch_bytes / sizeof(float) + 1);
  KernelArgs args;
  args.node = &node;
  args.inputs = views.data();
  args.num_inputs = static_cast<int>(views.size());
  args.output = output.view();
  args.step = &step;
  args.scratch = scratch.data();
  kernel(args);
  std::vector<std::vector<float>> results;
  if (node.has_output) {
    results.emplace_back(output.f32(), output.f32() + output.num_elements());
  } else {
    for (const Tensor& t : in) {
      if (t.dtype() == DType::kF32) results.emplace_back(t.f32(), t.f32() + t.num_elements());
    }
  }
  return results;
}

// The reference and fast kernels' results on seeded random inputs.
void RunBoth(const Case& c, std::vector<std::vector<float>>* ref,
             std::vector<std::vector<float>>* fast, const StepInfo& step = {}) {
  kernels::SetGemmThreads(2);
  const OpDef& def = GetOpDef(c.kind);
  ASSERT_NE(def.fast, nullptr) << def.name;
  Node node;
  node.op = c.kind;
  node.attrs = c.attrs;
  node.has_output = def.has_output;
  std::vector<const TensorType*> types;
  for (const TensorType& t : c.inputs) types.push_back(&t);
  ASSERT_OK_AND_ASSIGN(TensorType out, InferType(node, types));
  std::mt19937_64 rng(7);
  std::vector<Tensor> inputs;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    inputs.push_back(testing::RandomTensor(c.inputs[i], rng, c.int_upper));
    const bool positive = std::find(c.positive_inputs.begin(), c.positive_inputs.end(),
                                    static_cast<int>(i)) != c.positive_inputs.end();
    if (positive) {
      for (float& v : inputs.back().f32_span()) v = std::abs(v);
    }
  }
  const size_t scratch = def.scratch_bytes ? def.scratch_bytes(node, types) : 0;
  *ref = RunKernel(def.reference, node, inputs, out, scratch, step);
  *fast = RunKernel(def.fast, node, inputs, out, scratch, step);
}

// Each of `got`'s results within tol + tol·|want| of `want`'s (at most five
// failures reported per result, each prefixed with `label`).
void ExpectClose(const std::vector<std::vector<float>>& want,
                 const std::vector<std::vector<float>>& got, float tol, const std::string& label) {
  ASSERT_EQ(want.size(), got.size()) << label;
  for (size_t r = 0; r < want.size(); ++r) {
    ASSERT_EQ(want[r].size(), got[r].size()) << label;
    int bad = 0;
    for (size_t i = 0; i < want[r].size() && bad < 5; ++i) {
      if (!(std::abs(want[r][i] - got[r][i]) <= tol + tol * std::abs(want[r][i]))) {
        ++bad;
        ADD_FAILURE() << label << " result " << r << " element " << i << ": " << want[r][i]
                      << " vs " << got[r][i];
      }
    }
  }
}

void ExpectFastMatchesReference(const Case& c, float tol = 1e-4f, const StepInfo& step = {}) {
  std::vector<std::vector<float>> ref, fast;
  RunBoth(c, &ref, &fast, step);
  ExpectClose(ref, fast, tol, absl::StrCat(GetOpDef(c.kind).name, " reference vs fast"));
}

TensorType F32(Shape s) { return {DType::kF32, std::move(s)}; }

std::vector<Shape> BatchNormShapes() { return {{8, 96, 32, 32}, {16, 1280}, {3, 40, 3, 7}}; }

TEST(FastKernels, BatchNormTrainingForwardAndGradients) {
  for (const Shape& s : BatchNormShapes()) {
    SCOPED_TRACE(s.size());
    const TensorType pc = F32({s[1]});
    ExpectFastMatchesReference({OpKind::kBatchNorm, {F32(s), pc, pc}, BatchNormAttrs{}});
    ExpectFastMatchesReference({OpKind::kBatchNormGrad, {F32(s), F32(s), pc}, BatchNormAttrs{}});
    ExpectFastMatchesReference({OpKind::kBatchNormWeightGrad, {F32(s), F32(s)}, BatchNormAttrs{}});
    ExpectFastMatchesReference({OpKind::kBatchNormStatsUpdate,
                                {F32(s), pc, pc, {DType::kI32, {}}},
                                BatchNormAttrs{},
                                {2}});
  }
}

TEST(FastKernels, BatchNormFrozenForwardAndGradients) {
  for (const Shape& s : BatchNormShapes()) {
    const TensorType pc = F32({s[1]});
    ExpectFastMatchesReference(
        {OpKind::kBatchNormInference, {F32(s), pc, pc, pc, pc}, BatchNormAttrs{}, {2}});
    ExpectFastMatchesReference(
        {OpKind::kBatchNormInferenceGrad, {F32(s), pc, pc}, BatchNormAttrs{}, {1}});
    ExpectFastMatchesReference(
        {OpKind::kBatchNormWeightGrad, {F32(s), F32(s), pc, pc}, BatchNormAttrs{}, {3}});
  }
}

// A language model's logits: many rows of a wide vocabulary (odd width, so the
// vector tail runs), split over two threads; with ignore_index 0 every row is
// skipped (labels are 0 here).
TEST(FastKernels, CrossEntropyOverAWideVocabulary) {
  for (int32_t ignore : {-100, 0}) {
    const TensorType logits = F32({96, 8191}), labels = {DType::kI32, {96}};
    ExpectFastMatchesReference(
        {OpKind::kSoftmaxCrossEntropy, {logits, labels}, CrossEntropyAttrs{ignore}});
    ExpectFastMatchesReference(
        {OpKind::kSoftmaxCrossEntropyGrad, {logits, labels, F32({})}, CrossEntropyAttrs{ignore}});
  }
}

// Rotary embeddings at Llama's head size over a long sequence (positions up
// to 4095, so that the table's angles need the full range reduction), both
// directions, with a head size whose half is not a whole number of vectors.
TEST(FastKernels, RopeOverALongSequence) {
  for (bool inverse : {false, true}) {
    Case c{
        OpKind::kRope, {F32({2, 3, 512, 64}), {DType::kI32, {512}}}, RopeAttrs{10000.0f, inverse}};
    c.int_upper = 4096;
    ExpectFastMatchesReference(c, 2e-6f);
    c.inputs = {F32({3, 40, 12}), {DType::kI32, {40}}};
    ExpectFastMatchesReference(c, 2e-6f);
  }
}

// Matmuls with attention's transposes and scale folded in (fold_matmul.h):
// interleaved operands and outputs, alpha, broadcast batch dimensions.
TEST(FastKernels, FoldedMatMulLayouts) {
  auto folded = [](bool ta, bool tb, float alpha, int ia, int ib, int iy) {
    MatMulAttrs a{ta, tb};
    a.alpha = alpha;
    a.interleaved_a = ia;
    a.interleaved_b = ib;
    a.interleaved_y = iy;
    return a;
  };
  struct FoldedCase {
    Shape a, b;
    MatMulAttrs attrs;
  };
  for (const FoldedCase& c : std::vector<FoldedCase>{
           // q [B, T, H, D] · k [B, T, H, D]ᵀ per head → scores [B, H, T, T], scaled.
           {{2, 5, 3, 4}, {2, 5, 3, 4}, folded(false, true, 0.125f, true, true, false)},
           // probs [B, H, T, T] · v [B, T, H, D] → context written as [B, T, H, D].
           {{2, 3, 5, 5}, {2, 5, 3, 4}, folded(false, false, 1.0f, false, true, true)},
           // dk = dsᵀ · q with q interleaved, written interleaved.
           {{2, 3, 5, 5}, {2, 5, 3, 4}, folded(true, false, 0.5f, false, true, true)},
           // An interleaved a against a broadcast b, and a transposed interleaved a.
           {{2, 5, 3, 4}, {4, 6}, folded(false, false, 1.0f, true, false, false)},
           {{2, 4, 3, 5}, {2, 3, 4, 6}, folded(true, false, 2.0f, true, false, true)},
           // Rank 5 with broadcast batch dims on b; alpha alone on plain operands.
           {{2, 2, 7, 3, 4}, {2, 1, 1, 4, 5}, folded(false, false, 1.0f, true, false, false)},
           {{2, 3, 5, 4}, {4, 6}, folded(false, false, 0.25f, false, false, false)},
           // Grouped-query attention over two head dims: q [B, T, Hkv, G, D] against
           // k [B, S, Hkv, 1, D], then probs · v written as [B, T, Hkv, G, D].
           {{2, 5, 2, 3, 4}, {2, 6, 2, 1, 4}, folded(false, true, 0.125f, 2, 2, 0)},
           {{2, 2, 3, 5, 6}, {2, 6, 2, 1, 4}, folded(false, false, 1.0f, 0, 2, 2)},
           // dq = ds · k, and dk's per-group products dsᵀ · q.
           {{2, 2, 3, 5, 6}, {2, 6, 2, 1, 4}, folded(false, false, 0.5f, 0, 2, 2)},
           {{2, 2, 3, 5, 6}, {2, 5, 2, 3, 4}, folded(true, false, 1.0f, 0, 2, 2)},
           // Plain a and y, so the G query heads stack into one GEMM's rows
           // against the interleaved b they share.
           {{2, 2, 3, 5, 6}, {2, 6, 2, 1, 4}, folded(false, false, 1.0f, 0, 2, 0)},
       }) {
    ExpectFastMatchesReference({OpKind::kMatMul, {F32(c.a), F32(c.b)}, c.attrs});
  }
}

TEST(FastKernels, ReduceOverLargeAxes) {
  for (kernels::Isa isa : {kernels::Isa::kGeneric, kernels::Isa::kAvx2, kernels::Isa::kAvx512}) {
    if (!kernels::HostSupports(isa)) continue;
    SCOPED_TRACE(kernels::IsaName(isa));
    kernels::SetKernelIsa(isa);
    for (OpKind kind : {OpKind::kReduceSum, OpKind::kReduceMean}) {
      ExpectFastMatchesReference({kind, {F32({8, 96, 32, 32})}, ReduceAttrs{{0, 2, 3}, false}});
      // Column sums in registers: whole groups of vectors, single vectors and a scalar tail.
      ExpectFastMatchesReference({kind, {F32({600, 300})}, ReduceAttrs{{0}, false}});
      ExpectFastMatchesReference({kind, {F32({1024, 256})}, ReduceAttrs{{0}, false}});
      ExpectFastMatchesReference({kind, {F32({5, 3})}, ReduceAttrs{{0}, false}});
      // Rows wider than kColumnSumMaxBlockedWidth: split over columns, no scratch.
      ExpectFastMatchesReference({kind, {F32({37, 5000})}, ReduceAttrs{{0}, false}});
      ExpectFastMatchesReference({kind, {F32({300, 517})}, ReduceAttrs{{1}, true}});
      ExpectFastMatchesReference({kind, {F32({4, 6, 50, 70})}, ReduceAttrs{{1, 3}, false}});
    }
  }
  kernels::SetKernelIsa(kernels::Isa::kGeneric);
}

struct Conv {
  Shape x, w;
  Conv2dAttrs attrs;
};

// The convolution, its input gradient and its weight gradient.
void ExpectConvolutionMatchesReference(const Conv& c) {
  Node probe;
  probe.op = OpKind::kConv2d;
  probe.attrs = c.attrs;
  const TensorType x = F32(c.x), w = F32(c.w);
  ASSERT_OK_AND_ASSIGN(TensorType y, InferType(probe, {&x, &w}));
  ExpectFastMatchesReference({OpKind::kConv2d, {x, w, F32({c.w[0]})}, c.attrs});
  ExpectFastMatchesReference({OpKind::kConv2dBackwardInput, {y, w}, Conv2dGradAttrs{c.attrs, c.x}});
  ExpectFastMatchesReference({OpKind::kConv2dBackwardWeight, {x, y}, Conv2dGradAttrs{c.attrs, c.w}},
                             3e-4f);
}

// Small ones run a sample per thread (forward, input gradient); large ones
// split each GEMM over the team. Weight gradients on 4×4 planes (the second)
// gather the batch into one GEMM, the others run one GEMM per sample.
TEST(FastKernels, PointwiseConvolutionPaths) {
  const Conv2dAttrs pointwise{1, 1, 0, 0, 1, 1, 1};
  for (const Conv& c : std::vector<Conv>{
           {{8, 64, 8, 8}, {96, 64, 1, 1}, pointwise},    // one per thread
           {{5, 96, 4, 4}, {320, 96, 1, 1}, pointwise},   // uneven: 5 samples on 2 threads
           {{8, 16, 64, 64}, {96, 16, 1, 1}, pointwise},  // 6.3 M multiply-adds: the team
           {{8, 64, 8, 8}, {64, 32, 1, 1}, {1, 1, 0, 0, 1, 1, 2}},  // grouped
       }) {
    ExpectConvolutionMatchesReference(c);
  }
}

// The direct pointwise kernel (kernels/pointwise_conv.h) at AVX-512: few
// input channels on big planes, expand layers on planes narrower than a tile
// (4×4: two samples to a tile; an odd batch leaves half a tile), a plane of 3
// vectors (a tile repeating its last one), output channels leaving a block of
// 1, 5 or 9 rows (the narrow tiles, repeating the last row), and a masked
// input gradient.
TEST(FastKernels, PointwiseConvolutionDirectPaths) {
  if (!kernels::HostSupports(kernels::Isa::kAvx512)) GTEST_SKIP() << "no AVX-512 on this host";
  kernels::SetKernelIsa(kernels::Isa::kAvx512);
  const Conv2dAttrs pointwise{1, 1, 0, 0, 1, 1, 1};
  struct Direct {
    Conv conv;
    bool forward, input_gradient;  // which of the two take the direct kernel
  };
  for (const Direct& d : std::vector<Direct>{
           {{{3, 16, 32, 32}, {96, 16, 1, 1}, pointwise}, true, false},
           {{{2, 24, 32, 32}, {20, 24, 1, 1}, pointwise}, true, true},
           {{{5, 40, 4, 4}, {160, 40, 1, 1}, pointwise}, true, false},
           {{{4, 160, 4, 4}, {349, 160, 1, 1}, pointwise}, true, false},
           {{{3, 8, 4, 12}, {13, 8, 1, 1}, pointwise}, true, false},
           {{{2, 64, 8, 8}, {384, 64, 1, 1}, pointwise}, true, false},
           {{{2, 96, 32, 32}, {33, 96, 1, 1}, pointwise}, false, true},
       }) {
    const Conv& c = d.conv;
    SCOPED_TRACE(ShapeToString(c.x) + " to " + std::to_string(c.w[0]));
    const int64_t plane = c.x[2] * c.x[3];
    EXPECT_EQ(kernels::PointwiseConvApplies({c.x[0], c.w[0], c.x[1], plane, c.x[1], 1}), d.forward);
    EXPECT_EQ(kernels::PointwiseConvApplies({c.x[0], c.x[1], c.w[0], plane, 1, c.x[1]}),
              d.input_gradient);
    ExpectConvolutionMatchesReference(c);
    const TensorType dy = F32({c.x[0], c.w[0], c.x[2], c.x[3]});
    const TensorType mask{DType::kI32, {parts::MaskWords(c.x[0] * c.x[1] * plane)}};
    Case masked{OpKind::kConv2dBackwardInput, {dy, F32(c.w), mask}, Conv2dGradAttrs{c.attrs, c.x}};
    masked.int_upper = 1 << 30;  // random bits in all but the top two of each word
    ExpectFastMatchesReference(masked);
  }
  kernels::SetKernelIsa(kernels::Isa::kGeneric);
}

// The direct pointwise kernel adding into y (PointwiseGeometry::accumulate),
// against y plus the product in double: a block of 5 rows (a tile repeating
// its last row), planes of 3 vectors (a tile repeating its last vector), and
// 4×4 planes two samples to a tile; forward (A packed) and transposed A.
TEST(FastKernels, PointwiseConvolutionDirectAccumulates) {
  if (!kernels::HostSupports(kernels::Isa::kAvx512)) GTEST_SKIP() << "no AVX-512 on this host";
  kernels::SetKernelIsa(kernels::Isa::kAvx512);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (const auto& [n, rows, k, plane, transposed] :
       std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, bool>>{
           {1, 5, 48, 48, false}, {3, 17, 24, 16, false}, {2, 5, 40, 1024, true}}) {
    SCOPED_TRACE(absl::StrCat(n, " ", rows, " ", k, " ", plane, transposed ? " transposed" : ""));
    const kernels::PointwiseGeometry g{
        n, rows, k, plane, transposed ? 1 : k, transposed ? rows : 1, true};
    ASSERT_TRUE(kernels::PointwiseConvApplies(g));
    auto random = [&](int64_t size) {
      std::vector<float> v(size);
      for (float& e : v) e = u(rng);
      return v;
    };
    const std::vector<float> a = random(rows * k), x = random(n * k * plane), bias = random(rows),
                             y = random(n * rows * plane);
    std::vector<float> got = y;
    kernels::F32PointwiseConv(g, a.data(), x.data(), bias.data(), got.data());
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t p = 0; p < plane; ++p) {
          double want = y[(s * rows + r) * plane + p] + bias[r];
          for (int64_t q = 0; q < k; ++q) {
            want += static_cast<double>(a[r * g.a_row_stride + q * g.a_k_stride]) *
                    x[(s * k + q) * plane + p];
          }
          ASSERT_NEAR(got[(s * rows + r) * plane + p], want, 1e-5) << s << " " << r << " " << p;
        }
      }
    }
  }
  kernels::SetKernelIsa(kernels::Isa::kGeneric);
}

// 3×3 stride-2 convolutions of few input channels (kernels/stem_conv.h) at
// every kernel ISA this host runs: rows of whole vectors at each level,
// odd heights and widths (a last output row or column reading past the
// input), 1 to 4 input channels, and output channels leaving a partial
// block (repeating the last channel).
TEST(FastKernels, StemConvolutionPaths) {
  const Conv2dAttrs stem{2, 2, 1, 1, 1, 1, 1};
  for (kernels::Isa isa : {kernels::Isa::kGeneric, kernels::Isa::kAvx2, kernels::Isa::kAvx512}) {
    if (!kernels::HostSupports(isa)) continue;
    SCOPED_TRACE(kernels::IsaName(isa));
    kernels::SetKernelIsa(isa);
    for (const Conv& c : std::vector<Conv>{
             {{2, 3, 16, 64}, {32, 3, 3, 3}, stem},
             {{3, 3, 33, 63}, {13, 3, 3, 3}, stem},
             {{2, 1, 9, 32}, {40, 1, 3, 3}, stem},
             {{1, 4, 20, 32}, {8, 4, 3, 3}, stem},
         }) {
      SCOPED_TRACE(ShapeToString(c.x));
      const int64_t wo = (c.x[3] + 1) / 2;
      ASSERT_TRUE(kernels::StemConvApplies({c.x[0], c.x[1], c.x[2], c.x[3], c.w[0]}) ||
                  (isa == kernels::Isa::kAvx512 && wo % 16 != 0));
      ExpectConvolutionMatchesReference(c);
    }
  }
  kernels::SetKernelIsa(kernels::Isa::kGeneric);
}

// 3×3 depthwise layers with padding 1 and stride 1 or 2 (flat-vector planes
// in kernels/depthwise_conv.cc): rows a whole number of vectors wide, planes
// a whole number of rows per vector, neither, single columns and rows, odd
// sizes, and rows wide enough to take several bands per plane.
std::vector<Conv> FlatDepthwiseConvs() {
  std::vector<Conv> out;
  for (int32_t stride : {1, 2}) {
    const Conv2dAttrs a{stride, stride, 1, 1, 1, 1, 0};
    for (const auto& [c, h, w] : std::vector<std::array<int64_t, 3>>{{96, 4, 4},
                                                                     {40, 8, 8},
                                                                     {16, 32, 32},
                                                                     {8, 16, 64},
                                                                     {24, 7, 5},
                                                                     {12, 9, 1},
                                                                     {12, 1, 9},
                                                                     {12, 2, 3},
                                                                     {3, 5, 2100},
                                                                     {2, 4, 4099}}) {
      Conv2dAttrs attrs = a;
      attrs.groups = static_cast<int32_t>(c);
      out.push_back({{3, c, h, w}, {c, 1, 3, 3}, attrs});
    }
  }
  return out;
}

TEST(FastKernels, DepthwiseConvolutionPaths) {
  std::vector<Conv> convs = {
      {{4, 32, 33, 31}, {32, 1, 3, 3}, {1, 1, 1, 1, 1, 1, 32}},
      {{4, 32, 34, 33}, {32, 1, 3, 3}, {2, 2, 1, 1, 1, 1, 32}},
      {{2, 24, 20, 21}, {48, 1, 5, 5}, {1, 1, 2, 2, 1, 1, 24}},
      {{2, 24, 20, 21}, {24, 1, 3, 3}, {2, 1, 2, 2, 2, 2, 24}},
  };
  for (const Conv& c : FlatDepthwiseConvs()) convs.push_back(c);
  for (const Conv& c : convs) ExpectConvolutionMatchesReference(c);
}

// The flat-vector depthwise planes at every kernel ISA this host runs give
// the generic level's results to within rounding: outputs and input
// gradients the same sums in the same order, with fused multiply-adds.
TEST(FastKernels, DepthwiseConvolutionAgreesAcrossKernelIsas) {
  for (const Conv& c : FlatDepthwiseConvs()) {
    Node probe;
    probe.op = OpKind::kConv2d;
    probe.attrs = c.attrs;
    const TensorType x = F32(c.x), w = F32(c.w);
    ASSERT_OK_AND_ASSIGN(TensorType y, InferType(probe, {&x, &w}));
    for (const Case& op : std::vector<Case>{
             {OpKind::kConv2d, {x, w, F32({c.w[0]})}, c.attrs},
             {OpKind::kConv2dBackwardInput, {y, w}, Conv2dGradAttrs{c.attrs, c.x}},
             {OpKind::kConv2dBackwardWeight, {x, y}, Conv2dGradAttrs{c.attrs, c.w}},
         }) {
      // Weight gradients sum every position of every sample: partial sums
      // as wide as the vectors, so in another order at each level.
      const float tol = op.kind == OpKind::kConv2dBackwardWeight ? 2e-5f : 1e-6f;
      std::vector<std::vector<float>> unused, generic;
      kernels::SetKernelIsa(kernels::Isa::kGeneric);
      RunBoth(op, &unused, &generic);
      for (kernels::Isa isa : {kernels::Isa::kAvx2, kernels::Isa::kAvx512}) {
        if (!kernels::HostSupports(isa)) continue;
        kernels::SetKernelIsa(isa);
        std::vector<std::vector<float>> wide;
        RunBoth(op, &unused, &wide);
        ExpectClose(generic, wide, tol,
                    absl::StrCat(GetOpDef(op.kind).name, " x ", ShapeToString(x.shape), " stride ",
                                 c.attrs.stride_h, ": generic vs ", kernels::IsaName(isa)));
      }
    }
  }
  kernels::SetKernelIsa(kernels::Isa::kGeneric);
}

TEST(FastKernels, ActivationsSplitOverThreads) {
  const TensorType x = F32({8, 24, 33, 35});
  for (ActivationFn fn : {ActivationFn::kRelu6, ActivationFn::kSilu, ActivationFn::kGeluTanh,
                          ActivationFn::kGeluErf, ActivationFn::kSigmoid, ActivationFn::kTanh}) {
    ExpectFastMatchesReference({OpKind::kActivation, {x}, ActivationAttrs{fn}});
    ExpectFastMatchesReference({OpKind::kActivationGrad, {x, x}, ActivationAttrs{fn}});
  }
}

// ReLU6 and its gradient, vectorized at every kernel ISA this host runs,
// give the scalar definition's bits: edges (0, −0, 6), NaN passing through,
// infinities, and a tail shorter than a vector.
TEST(FastKernels, Relu6IsTheScalarDefinitionBitForBit) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x = {0.0f, -0.0f, 6.0f, 5.9999995f, 6.0000005f,
                          nan,  inf,   -inf, -1e-30f,    1e-30f};
  for (int i = 0; x.size() < 77; ++i) x.push_back(0.37f * static_cast<float>(i) - 9.0f);
  std::vector<float> dy(x.size());
  for (size_t i = 0; i < dy.size(); ++i) dy[i] = 1.0f + static_cast<float>(i);
  const auto bits = [](float v) {
    uint32_t b;
    std::memcpy(&b, &v, sizeof b);
    return b;
  };
  for (kernels::Isa isa : {kernels::Isa::kGeneric, kernels::Isa::kAvx2, kernels::Isa::kAvx512}) {
    if (!kernels::HostSupports(isa)) continue;
    SCOPED_TRACE(kernels::IsaName(isa));
    kernels::SetKernelIsa(isa);
    std::vector<float> y(x.size()), dx(x.size());
    parts::ActivationFast(ActivationFn::kRelu6, x.data(), y.data(), static_cast<int64_t>(x.size()));
    parts::ActivationGradFast(ActivationFn::kRelu6, dy.data(), y.data(), dx.data(),
                              static_cast<int64_t>(x.size()));
    for (size_t i = 0; i < x.size(); ++i) {
      const float want = std::min(std::max(x[i], 0.0f), 6.0f);
      EXPECT_EQ(bits(y[i]), bits(want)) << "x = " << x[i];
      const float want_dx = want > 0.0f && want < 6.0f ? dy[i] : 0.0f;
      EXPECT_EQ(bits(dx[i]), bits(want_dx)) << "x = " << x[i];
    }
  }
  kernels::SetKernelIsa(kernels::Isa::kGeneric);
}

// Every kernel ISA this host runs (engine/kernels/isa.h) gives the generic
// kernels' results for the exp-based ops to within a few ulps: the same operations per lane, only
// wider, with fused multiply-adds rounding once where the generic code rounds
// twice (where GELU's gradient cancels, 1e-7 absolute).
TEST(FastKernels, ExpKernelsAgreeAcrossKernelIsas) {
  const TensorType x = F32({3, 1000, 7});  // a tail at every width
  const TensorType logits = F32({37, 1003}), labels = {DType::kI32, {37}};
  std::vector<Case> cases = {
      {OpKind::kSoftmax, {F32({6, 9, 77})}, SoftmaxAttrs{false}},
      {OpKind::kSoftmax, {F32({6, 33, 33})}, SoftmaxAttrs{true}},
      {OpKind::kSoftmaxCrossEntropy, {logits, labels}, CrossEntropyAttrs{}},
      {OpKind::kSoftmaxCrossEntropyGrad, {logits, labels, F32({})}, CrossEntropyAttrs{}},
  };
  for (ActivationFn fn : {ActivationFn::kSilu, ActivationFn::kGeluErf, ActivationFn::kSigmoid}) {
    cases.push_back({OpKind::kActivation, {x}, ActivationAttrs{fn}});
    cases.push_back({OpKind::kActivationGrad, {x, x}, ActivationAttrs{fn}});
  }
  for (size_t n = 0; n < cases.size(); ++n) {
    const Case& c = cases[n];
    std::vector<std::vector<float>> ref, generic;
    kernels::SetKernelIsa(kernels::Isa::kGeneric);
    RunBoth(c, &ref, &generic);
    for (kernels::Isa isa : {kernels::Isa::kAvx2, kernels::Isa::kAvx512}) {
      if (!kernels::HostSupports(isa)) continue;
      kernels::SetKernelIsa(isa);
      std::vector<std::vector<float>> unused, wide;
      RunBoth(c, &unused, &wide);
      ExpectClose(generic, wide, 1e-6f,
                  absl::StrCat("case ", n, " (", GetOpDef(c.kind).name, ") generic vs ",
                               kernels::IsaName(isa)));
    }
  }
  kernels::SetKernelIsa(kernels::Isa::kGeneric);
}

TEST(FastKernels, BroadcastingBinaryOps) {
  for (OpKind kind : {OpKind::kAdd, OpKind::kMul, OpKind::kSub, OpKind::kDiv}) {
    ExpectFastMatchesReference({kind, {F32({64, 128, 40}), F32({64, 128, 40})}});
    ExpectFastMatchesReference({kind, {F32({64, 128, 40}), F32({40})}});
    ExpectFastMatchesReference({kind, {F32({1, 128, 40}), F32({64, 128, 40})}});
    ExpectFastMatchesReference({kind, {F32({4, 2, 128, 128}), F32({4, 1, 1, 128})}});
  }
}

TEST(FastKernels, NormsAndSoftmaxSplitOverRows) {
  const TensorType x = F32({8, 128, 256}), w = F32({256});
  ExpectFastMatchesReference({OpKind::kLayerNorm, {x, w, w}, NormAttrs{1e-5f}});
  ExpectFastMatchesReference({OpKind::kRmsNorm, {x, w}, NormAttrs{1e-6f}});
  ExpectFastMatchesReference({OpKind::kLayerNormGrad, {x, x, w}, NormAttrs{1e-5f}});
  ExpectFastMatchesReference({OpKind::kRmsNormGrad, {x, x}, NormAttrs{1e-6f}});
  const TensorType scores = F32({8, 4, 128, 130});
  ExpectFastMatchesReference({OpKind::kSoftmax, {scores}, SoftmaxAttrs{false}});
  ExpectFastMatchesReference({OpKind::kSoftmax, {scores}, SoftmaxAttrs{true}});
  ExpectFastMatchesReference({OpKind::kSoftmaxGrad, {scores, scores}});
}

// Runs op `kind`'s fast kernel (its reference where it has none) on `inputs`.
Tensor RunFast(OpKind kind, const Attrs& attrs, const std::vector<const Tensor*>& inputs) {
  const OpDef& def = GetOpDef(kind);
  Node node;
  node.op = kind;
  node.attrs = attrs;
  std::vector<TensorType> types;
  std::vector<const TensorType*> type_ptrs;
  for (const Tensor* t : inputs) types.push_back(t->type());
  for (const TensorType& t : types) type_ptrs.push_back(&t);
  absl::StatusOr<TensorType> out = InferType(node, type_ptrs);
  EXPECT_OK(out.status());
  if (!out.ok()) return Tensor();
  std::vector<TensorView> views;
  for (const Tensor* t : inputs) views.push_back(const_cast<Tensor*>(t)->view());
  Tensor output(out->dtype, out->shape);
  StepInfo step;
  KernelArgs args;
  args.node = &node;
  args.inputs = views.data();
  args.num_inputs = static_cast<int>(views.size());
  args.output = output.view();
  args.step = &step;
  (def.fast != nullptr ? def.fast : def.reference)(args);
  return output;
}

void ExpectBitIdentical(const Tensor& want, const Tensor& got) {
  ASSERT_EQ(want.num_elements(), got.num_elements());
  int bad = 0;
  for (int64_t i = 0; i < want.num_elements() && bad < 5; ++i) {
    if (std::memcmp(&want.f32()[i], &got.f32()[i], sizeof(float)) != 0) {
      ++bad;
      ADD_FAILURE() << "element " << i << ": unfused " << want.f32()[i] << " fused "
                    << got.f32()[i];
    }
  }
}

constexpr FusedActivationFn kAllFusedActs[] = {
    FusedActivationFn::kRelu,     FusedActivationFn::kRelu6,   FusedActivationFn::kSilu,
    FusedActivationFn::kGeluTanh, FusedActivationFn::kGeluErf, FusedActivationFn::kSigmoid,
    FusedActivationFn::kTanh};

// Norm + activation, rows of an odd width split over threads: the fused fast
// kernel matches its reference, and is bit for bit the norm's fast kernel
// followed by the activation's (what the graph ran before fusion).
TEST(FastKernels, NormActivationSplitOverRows) {
  const TensorType x = F32({8, 128, 257}), w = F32({257});
  std::mt19937_64 rng(11);
  const Tensor xt = testing::RandomTensor(x, rng), wt = testing::RandomTensor(w, rng),
               bt = testing::RandomTensor(w, rng);
  for (FusedActivationFn act : kAllFusedActs) {
    SCOPED_TRACE(static_cast<int>(act));
    const FusedNormAttrs attrs{NormAttrs{1e-5f}, act};
    ExpectFastMatchesReference({OpKind::kLayerNormActivation, {x, w, w}, attrs});
    ExpectFastMatchesReference({OpKind::kRmsNormActivation, {x, w}, attrs});
    ExpectFastMatchesReference({OpKind::kLayerNormActivation, {x}, attrs});
    const OpKind act_op = act == FusedActivationFn::kRelu ? OpKind::kRelu : OpKind::kActivation;
    const Attrs act_attrs =
        act == FusedActivationFn::kRelu
            ? Attrs{NoAttrs{}}
            : Attrs{ActivationAttrs{static_cast<ActivationFn>(static_cast<int>(act) - 1)}};
    for (bool rms : {false, true}) {
      std::vector<const Tensor*> in = {&xt, &wt};
      if (!rms) in.push_back(&bt);
      const Tensor norm = RunFast(rms ? OpKind::kRmsNorm : OpKind::kLayerNorm, attrs.norm, in);
      const Tensor want = RunFast(act_op, act_attrs, {&norm});
      const Tensor got =
          RunFast(rms ? OpKind::kRmsNormActivation : OpKind::kLayerNormActivation, attrs, in);
      ExpectBitIdentical(want, got);
    }
  }
}

// Every conformance program of elementwise_chain on an odd element count
// (not a multiple of the tile or the vector width) split over threads:
// the fused fast kernel matches its reference, and is bit for bit each step's
// own kernel run one after another into separate tensors.
TEST(FastKernels, ElementwiseChainSplitOverThreads) {
  const Shape shape = {37, 1031};
  std::mt19937_64 rng(5);
  for (const OpTestCase& c : GetOpDef(OpKind::kElementwiseChain).test_cases()) {
    const auto& steps = std::get<ElementwiseChainAttrs>(c.attrs).steps;
    SCOPED_TRACE(steps.size());
    Case big{OpKind::kElementwiseChain, {}, c.attrs, c.positive_inputs};
    std::vector<Tensor> inputs;
    for (size_t i = 0; i < c.inputs.size(); ++i) {
      big.inputs.push_back(F32(shape));
      inputs.push_back(testing::RandomTensor(F32(shape), rng));
      if (std::count(c.positive_inputs.begin(), c.positive_inputs.end(), static_cast<int>(i))) {
        for (float& v : inputs.back().f32_span()) v = std::abs(v) + 0.1f;
      }
    }
    ExpectFastMatchesReference(big);
    Tensor prev;
    for (const ElementwiseStep& step : steps) {
      auto operand = [&](int32_t i) {
        return i == ElementwiseStep::kPrevious ? &prev : &inputs[i];
      };
      std::vector<const Tensor*> in = {operand(step.a)};
      if (step.op != OpKind::kScale && step.op != OpKind::kRelu && step.op != OpKind::kActivation) {
        in.push_back(operand(step.b));
      }
      Attrs attrs = NoAttrs{};
      if (step.op == OpKind::kScale) attrs = ScalarAttrs{step.value};
      if (step.op == OpKind::kActivation || step.op == OpKind::kActivationGrad) {
        attrs = ActivationAttrs{step.fn};
      }
      Tensor next = RunFast(step.op, attrs, in);
      prev = std::move(next);
    }
    std::vector<const Tensor*> in;
    for (const Tensor& t : inputs) in.push_back(&t);
    ExpectBitIdentical(prev, RunFast(OpKind::kElementwiseChain, c.attrs, in));
  }
}

// Every phase of a micro-batched step (accumulate, first and last slice, one
// slice), whole and partial-channel updates, with and without momentum.
TEST(FastKernels, SgdUpdatesInEveryMicroBatchPhase) {
  struct Phase {
    int micro_batch, micro_batches;
    float weight;
  };
  for (const Phase& phase :
       {Phase{0, 1, 1.0f}, Phase{0, 4, 0.3f}, Phase{2, 4, 0.2f}, Phase{3, 4, 0.25f}}) {
    StepInfo step;
    step.micro_batch = phase.micro_batch;
    step.micro_batches = phase.micro_batches;
    step.gradient_weight = phase.weight;
    for (int64_t rows : {0, 96}) {
      const Shape trained = {rows == 0 ? 1024 : rows, 300};
      ExpectFastMatchesReference({OpKind::kSgdUpdate,
                                  {F32({1024, 300}), F32(trained), F32(trained)},
                                  SgdAttrs{0.05f, 0.9f, 1e-3f, rows}},
                                 1e-6f, step);
    }
    ExpectFastMatchesReference(
        {OpKind::kSgdUpdate, {F32({1024, 300}), F32({1024, 300})}, SgdAttrs{0.05f, 0.0f, 1e-3f}},
        1e-6f, step);
  }
}

}  // namespace
}  // namespace fleettune::engine::ops
