// kSoftmax over the last dimension, optionally causal, and the backward-only
// kSoftmaxGrad.
//
// x [..., L, S] → y, same shape: y[..., i, j] = exp(x_ij) / Σ_k exp(x_ik).
// With SoftmaxAttrs::causal (rank >= 2), row i (index along dim -2) sees only
// columns j <= i + (S − L), the bottom-right-aligned causal mask (for L == S
// the usual lower triangle; with L < S the queries are the last L positions of
// S, as with a key/value cache). Masked entries are exactly 0, and a row that
// sees no column (only possible when L > S) is all zeros. Fusing the mask into
// the softmax saves attention a pass over its [..., L, S] scores and the −inf
// arithmetic of an additive mask.
#include <algorithm>
#include <cmath>

#include "engine/base/status_macros.h"
#include "engine/kernels/exp_sum.h"
#include "engine/kernels/parallel.h"
#include "engine/kernels/vec.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  const auto& attrs = std::get<SoftmaxAttrs>(node.attrs);
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "x"));
  const size_t min_rank = attrs.causal ? 2 : 1;
  if (in[0]->shape.size() < min_rank) {
    return OpError(node, "x must have rank >= ", min_rank, attrs.causal ? " when causal" : "",
                   ", got ", TypeToString(*in[0]));
  }
  return *in[0];
}

// Rows [begin, end); `vectorized` takes exp and the row sum from
// engine/kernels (the fast kernel), else libm and a double sum (reference).
void SoftmaxRows(const KernelArgs& args, int64_t begin, int64_t end, bool vectorized) {
  const bool causal = args.attrs<SoftmaxAttrs>().causal;
  const Shape& xs = *args.in(0).shape;
  const int64_t s = xs.back();
  const int64_t l = causal ? xs[xs.size() - 2] : 1;
  const float* x = args.in(0).f32();
  float* y = args.output.f32();
  for (int64_t r = begin; r < end; ++r) {
    const float* xr = x + r * s;
    float* yr = y + r * s;
    // Visible columns [0, n).
    const int64_t n = causal ? std::clamp<int64_t>(r % l + 1 + (s - l), 0, s) : s;
    std::fill(yr + n, yr + s, 0.0f);
    if (n == 0) continue;
    if (vectorized) {
      kernels::ScaledSoftmaxRow(xr, n, 1.0f, yr);
      continue;
    }
    float m = xr[0];
    for (int64_t j = 1; j < n; ++j) m = std::max(m, xr[j]);
    double sum = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      yr[j] = std::exp(xr[j] - m);
      sum += yr[j];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t j = 0; j < n; ++j) yr[j] *= inv;
  }
}

int64_t Rows(const TensorView& v) {
  const int64_t s = v.shape->back();
  return s == 0 ? 0 : v.num_elements() / s;
}

void Kernel(const KernelArgs& args) { SoftmaxRows(args, 0, Rows(args.in(0)), false); }

// Rows split over the threads.
void FastKernel(const KernelArgs& args) {
  kernels::ParallelFor(Rows(args.in(0)), 8 * args.in(0).shape->back(),
                       [&](int64_t begin, int64_t end) { SoftmaxRows(args, begin, end, true); });
}

// dx = y ⊙ (dy − Σ_j dy_j·y_j) per row. Uses the output only; masked entries
// have y = 0, so their dx is 0 without knowing the mask.
absl::Status Gradient(GradContext& ctx) {
  if (!ctx.NeedsGrad(0)) return absl::OkStatus();
  ASSIGN_OR_RETURN(ValueId dx, ctx.Emit(OpKind::kSoftmaxGrad, {ctx.dy(), ctx.self()}));
  ctx.SetGrad(0, dx);
  return absl::OkStatus();
}

std::vector<OpTestCase> TestCases() {
  auto make = [](Shape s, bool causal) {
    OpTestCase c;
    c.inputs = {{DType::kF32, std::move(s)}};
    c.attrs = SoftmaxAttrs{causal};
    return c;
  };
  return {make({3, 5}, false), make({7}, false), make({2, 4, 4}, true), make({2, 3, 5}, true),
          make({5, 3}, true)};
}

// (dy, y) pairs of softmax's shapes; the in-place test runs them with dx over
// either.
std::vector<OpTestCase> GradTestCases() {
  std::vector<OpTestCase> cases;
  for (const Shape& s : {Shape{3, 5}, Shape{7}, Shape{2, 4, 33}}) {
    OpTestCase c;
    c.inputs = {{DType::kF32, s}, {DType::kF32, s}};
    cases.push_back(c);
  }
  return cases;
}

absl::StatusOr<TensorType> InferGrad(const Node& node, absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "dy"));
  if (*in[0] != *in[1]) {
    return OpError(node, "dy ", TypeToString(*in[0]), " and y ", TypeToString(*in[1]), " differ");
  }
  if (in[0]->shape.empty()) return OpError(node, "dy must have rank >= 1");
  return *in[0];
}

// Rows [begin, end); `vectorized` sums dy·y in f32 vector lanes (the fast
// kernel), else in double (reference).
void GradRows(const KernelArgs& args, int64_t begin, int64_t end, bool vectorized) {
  const int64_t s = args.in(0).shape->back();
  const float* dy = args.in(0).f32();
  const float* y = args.in(1).f32();
  float* dx = args.output.f32();
  for (int64_t r = begin; r < end; ++r) {
    const int64_t o = r * s;
    float d;
    if (vectorized) {
      d = kernels::DotF32(dy + o, y + o, s);
    } else {
      double dot = 0.0;
      for (int64_t j = 0; j < s; ++j) dot += static_cast<double>(dy[o + j]) * y[o + j];
      d = static_cast<float>(dot);
    }
    for (int64_t j = 0; j < s; ++j) dx[o + j] = y[o + j] * (dy[o + j] - d);
  }
}

void GradKernel(const KernelArgs& args) { GradRows(args, 0, Rows(args.in(0)), false); }

void FastGradKernel(const KernelArgs& args) {
  kernels::ParallelFor(Rows(args.in(0)), 3 * args.in(0).shape->back(),
                       [&](int64_t begin, int64_t end) { GradRows(args, begin, end, true); });
}

}  // namespace

OpDef SoftmaxOpDef() {
  OpDef def;
  def.name = "softmax";
  def.attrs_index = AttrsIndexOf<SoftmaxAttrs>();
  def.min_inputs = def.max_inputs = 1;
  def.infer = Infer;
  def.reference = Kernel;
  def.fast = FastKernel;
  def.gradient = Gradient;
  def.test_cases = TestCases;
  return def;
}

// Not differentiable: emitted only by softmax's gradient rule (no second order).
OpDef SoftmaxGradOpDef() {
  OpDef def;
  def.name = "softmax_grad";
  def.min_inputs = def.max_inputs = 2;
  def.infer = InferGrad;
  def.reference = GradKernel;
  def.fast = FastGradKernel;
  def.test_cases = GradTestCases;
  return def;
}

}  // namespace fleettune::engine::ops
