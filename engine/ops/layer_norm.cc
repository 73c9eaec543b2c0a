// Normalization over the last dimension: kLayerNorm and kRmsNorm, and their
// backward-only companions kLayerNormGrad and kRmsNormGrad.
//
// x [..., D], optional weight [D] (and for layer_norm an optional bias [D]
// after it) → y [..., D]. Per row, with NormAttrs::eps:
//   layer_norm: y = (x − μ) · r ⊙ w + b,  μ = mean(x), r = 1/√(var(x) + eps)
//               (biased variance, as torch.nn.LayerNorm)
//   rms_norm:   y = x · r ⊙ w,            r = 1/√(mean(x²) + eps)
//               (as HF's LlamaRMSNorm / torch.nn.RMSNorm)
// Without weight (and bias) the op is the plain normalization x̂; gradient
// rules use that form to recompute x̂ for dw instead of keeping the forward's
// statistics alive.
#include <algorithm>
#include <cmath>

#include "engine/base/status_macros.h"
#include "engine/kernels/parallel.h"
#include "engine/kernels/vec.h"
#include "engine/ops/kernel_parts.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

absl::Status CheckAffine(const Node& node, const TensorType& x, const TensorType& p,
                         const char* what) {
  RETURN_IF_ERROR(ExpectDType(node, p, DType::kF32, what));
  if (p.shape != Shape{x.shape.back()}) {
    return OpError(node, what, " must be f32[", x.shape.back(), "] for x ", TypeToString(x),
                   ", got ", TypeToString(p));
  }
  return absl::OkStatus();
}

absl::Status CheckX(const Node& node, const TensorType& x, const char* what) {
  RETURN_IF_ERROR(ExpectDType(node, x, DType::kF32, what));
  if (x.shape.empty()) return OpError(node, what, " must have rank >= 1, got ", TypeToString(x));
  return absl::OkStatus();
}

absl::Status CheckEps(const Node& node) {
  const float eps = std::get<NormAttrs>(node.attrs).eps;
  if (!(eps >= 0.0f) || !std::isfinite(eps)) {
    return OpError(node, "eps must be finite and >= 0, got ", eps);
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorType> InferNorm(const Node& node, absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(CheckEps(node));
  RETURN_IF_ERROR(CheckX(node, *in[0], "x"));
  if (in.size() > 1) RETURN_IF_ERROR(CheckAffine(node, *in[0], *in[1], "weight"));
  if (in.size() > 2) RETURN_IF_ERROR(CheckAffine(node, *in[0], *in[2], "bias"));
  return *in[0];
}

// Inputs (dy, x[, weight]); the result is dx.
absl::StatusOr<TensorType> InferNormGrad(const Node& node, absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(CheckEps(node));
  RETURN_IF_ERROR(CheckX(node, *in[0], "dy"));
  if (*in[0] != *in[1]) {
    return OpError(node, "dy ", TypeToString(*in[0]), " and x ", TypeToString(*in[1]), " differ");
  }
  if (in.size() > 2) RETURN_IF_ERROR(CheckAffine(node, *in[1], *in[2], "weight"));
  return *in[1];
}

// Row statistics: mean (0 for rms_norm) and r = 1/√(variance or mean square + eps).
void RowStats(const float* x, int64_t d, float eps, bool centered, float* mean, float* r) {
  double m = 0.0;
  if (centered) {
    for (int64_t j = 0; j < d; ++j) m += x[j];
    m /= static_cast<double>(d);
  }
  double sq = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    const double c = x[j] - m;
    sq += c * c;
  }
  *mean = static_cast<float>(m);
  *r = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(d) + eps));
}

int64_t Rows(const TensorView& v) {
  const int64_t d = v.shape->back();
  return d == 0 ? 0 : v.num_elements() / d;
}

// Fast row statistics: f32 partial sums in vector registers
// (kernels/vec.h), the moments shifted by the row's first element so the
// variance does not cancel; same formulas as RowStats.
void FastRowStats(const float* x, int64_t d, float eps, bool centered, float* mean, float* r) {
  if (!centered) {
    *mean = 0.0f;
    *r = 1.0f / std::sqrt(kernels::DotF32(x, x, d) / static_cast<float>(d) + eps);
    return;
  }
  double m[2] = {0.0, 0.0};
  kernels::ShiftedMomentsF32(x, d, x[0], m);
  const double shift_mean = m[0] / static_cast<double>(d);
  const double var = std::max(0.0, m[1] / static_cast<double>(d) - shift_mean * shift_mean);
  *mean = static_cast<float>(x[0] + shift_mean);
  *r = static_cast<float>(1.0 / std::sqrt(var + eps));
}

// Rows [begin, end) of the norm, with row statistics from RowStats (double,
// the reference kernel) or FastRowStats (vector f32, the fast kernels, which
// split rows over threads). The affine step computes the same in both.
template <bool kFast>
void NormRowsWith(const KernelArgs& args, bool centered, int64_t begin, int64_t end) {
  const float eps = args.attrs<NormAttrs>().eps;
  const int64_t d = args.in(0).shape->back();
  const float* x = args.in(0).f32();
  const float* w = args.num_inputs > 1 ? args.in(1).f32() : nullptr;
  const float* b = args.num_inputs > 2 ? args.in(2).f32() : nullptr;
  float* y = args.output.f32();
  for (int64_t r = begin; r < end; ++r) {
    const float* __restrict xr = x + r * d;
    float* __restrict yr = y + r * d;
    float mean, rstd;
    (kFast ? FastRowStats : RowStats)(xr, d, eps, centered, &mean, &rstd);
    // One loop per affine form, each a plain loop GCC vectorizes.
    if (w != nullptr && b != nullptr) {
      for (int64_t j = 0; j < d; ++j) yr[j] = (xr[j] - mean) * rstd * w[j] + b[j];
    } else if (w != nullptr) {
      for (int64_t j = 0; j < d; ++j) yr[j] = (xr[j] - mean) * rstd * w[j];
    } else {
      for (int64_t j = 0; j < d; ++j) yr[j] = (xr[j] - mean) * rstd;
    }
  }
}

}  // namespace

void parts::NormRows(const KernelArgs& args, bool centered, int64_t begin, int64_t end) {
  NormRowsWith<true>(args, centered, begin, end);
}

namespace {

using parts::NormRows;

void NormKernel(const KernelArgs& args, bool centered) {
  NormRowsWith<false>(args, centered, 0, Rows(args.in(0)));
}
void FastNormKernel(const KernelArgs& args, bool centered) {
  kernels::ParallelFor(Rows(args.in(0)), 4 * args.in(0).shape->back(),
                       [&](int64_t begin, int64_t end) { NormRows(args, centered, begin, end); });
}

void LayerNormKernel(const KernelArgs& args) { NormKernel(args, true); }
void RmsNormKernel(const KernelArgs& args) { NormKernel(args, false); }
void LayerNormFast(const KernelArgs& args) { FastNormKernel(args, true); }
void RmsNormFast(const KernelArgs& args) { FastNormKernel(args, false); }

// Per row, with g = dy ⊙ w (dy without weight) and x̂ = (x − μ)·r:
//   layer_norm: dx = r · (g − mean(g) − x̂ · mean(g ⊙ x̂))
//   rms_norm:   dx = r · (g − x̂ · mean(g ⊙ x̂))
void NormGradRows(const KernelArgs& args, bool centered, int64_t begin, int64_t end) {
  const float eps = args.attrs<NormAttrs>().eps;
  const int64_t d = args.in(1).shape->back();
  const float* dy = args.in(0).f32();
  const float* x = args.in(1).f32();
  const float* w = args.num_inputs > 2 ? args.in(2).f32() : nullptr;
  float* dx = args.output.f32();
  for (int64_t r = begin; r < end; ++r) {
    const float* xr = x + r * d;
    const float* dyr = dy + r * d;
    float* dxr = dx + r * d;
    float mean, rstd;
    RowStats(xr, d, eps, centered, &mean, &rstd);
    double sum_g = 0.0, sum_gx = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      const double g = w != nullptr ? dyr[j] * w[j] : dyr[j];
      sum_g += g;
      sum_gx += g * ((xr[j] - mean) * rstd);
    }
    const float mean_g = centered ? static_cast<float>(sum_g / d) : 0.0f;
    const float mean_gx = static_cast<float>(sum_gx / d);
    for (int64_t j = 0; j < d; ++j) {
      const float g = w != nullptr ? dyr[j] * w[j] : dyr[j];
      const float xhat = (xr[j] - mean) * rstd;
      dxr[j] = rstd * (g - mean_g - xhat * mean_gx);
    }
  }
}

// As NormGradRows, with vectorized f32 sums: Σ g and Σ g·(x − μ) in vector
// registers (x̂ = (x − μ)·r, so Σ g·x̂ = r·Σ g·(x − μ)).
void FastNormGradRows(const KernelArgs& args, bool centered, int64_t begin, int64_t end) {
  using kernels::F32x4;
  using kernels::LoadF32x4;
  const float eps = args.attrs<NormAttrs>().eps;
  const int64_t d = args.in(1).shape->back();
  const float* dy = args.in(0).f32();
  const float* x = args.in(1).f32();
  const float* w = args.num_inputs > 2 ? args.in(2).f32() : nullptr;
  float* dx = args.output.f32();
  for (int64_t r = begin; r < end; ++r) {
    const float* __restrict xr = x + r * d;
    const float* __restrict dyr = dy + r * d;
    float* __restrict dxr = dx + r * d;
    float mean, rstd;
    FastRowStats(xr, d, eps, centered, &mean, &rstd);
    const F32x4 mv = {mean, mean, mean, mean};
    F32x4 g0 = {}, g1 = {}, e0 = {}, e1 = {};
    int64_t j = 0;
    for (; j + 8 <= d; j += 8) {
      F32x4 a = LoadF32x4(dyr + j), b = LoadF32x4(dyr + j + 4);
      if (w != nullptr) {
        a *= LoadF32x4(w + j);
        b *= LoadF32x4(w + j + 4);
      }
      g0 += a;
      g1 += b;
      e0 += a * (LoadF32x4(xr + j) - mv);
      e1 += b * (LoadF32x4(xr + j + 4) - mv);
    }
    float sum_g = kernels::HorizontalSum(g0 + g1), sum_gc = kernels::HorizontalSum(e0 + e1);
    for (; j < d; ++j) {
      const float g = w != nullptr ? dyr[j] * w[j] : dyr[j];
      sum_g += g;
      sum_gc += g * (xr[j] - mean);
    }
    const float inv_d = 1.0f / static_cast<float>(d);
    const float mean_g = centered ? sum_g * inv_d : 0.0f;
    const float mean_gx = sum_gc * rstd * inv_d;
    // dx = r·(g − mean_g − (x − μ)·r·mean_gx)
    const float k = rstd * mean_gx;
    if (w != nullptr) {
      for (j = 0; j < d; ++j) dxr[j] = rstd * (dyr[j] * w[j] - mean_g - (xr[j] - mean) * k);
    } else {
      for (j = 0; j < d; ++j) dxr[j] = rstd * (dyr[j] - mean_g - (xr[j] - mean) * k);
    }
  }
}

void NormGradKernel(const KernelArgs& args, bool centered) {
  NormGradRows(args, centered, 0, Rows(args.in(1)));
}
void FastNormGradKernel(const KernelArgs& args, bool centered) {
  kernels::ParallelFor(
      Rows(args.in(1)), 6 * args.in(1).shape->back(),
      [&](int64_t begin, int64_t end) { FastNormGradRows(args, centered, begin, end); });
}

void LayerNormGradKernel(const KernelArgs& args) { NormGradKernel(args, true); }
void RmsNormGradKernel(const KernelArgs& args) { NormGradKernel(args, false); }
void LayerNormGradFast(const KernelArgs& args) { FastNormGradKernel(args, true); }
void RmsNormGradFast(const KernelArgs& args) { FastNormGradKernel(args, false); }

// dx: the fused kernel above.  dw = Σ_rows dy ⊙ x̂ (x̂ recomputed by the op
// without affine inputs).  db = Σ_rows dy.
absl::Status NormGradient(GradContext& ctx, OpKind grad_op) {
  const Node& node = ctx.node();
  const ValueId x = ctx.input(0);
  const int n = static_cast<int>(node.inputs.size());
  if (ctx.NeedsGrad(0)) {
    std::vector<ValueId> operands = {ctx.dy(), x};
    if (n > 1) operands.push_back(ctx.input(1));
    ASSIGN_OR_RETURN(ValueId dx, ctx.Emit(grad_op, operands, node.attrs));
    ctx.SetGrad(0, dx);
  }
  if (n > 1 && ctx.NeedsGrad(1)) {
    ASSIGN_OR_RETURN(ValueId xhat, ctx.Emit(node.op, {x}, node.attrs));
    ASSIGN_OR_RETURN(ValueId prod, ctx.Emit(OpKind::kMul, {ctx.dy(), xhat}));
    ASSIGN_OR_RETURN(ValueId dw, ReduceToShape(ctx, prod, ctx.type(ctx.input(1)).shape));
    ctx.SetGrad(1, dw);
  }
  if (n > 2 && ctx.NeedsGrad(2)) {
    ASSIGN_OR_RETURN(ValueId db, ReduceToShape(ctx, ctx.dy(), ctx.type(ctx.input(2)).shape));
    ctx.SetGrad(2, db);
  }
  return absl::OkStatus();
}

absl::Status LayerNormGradient(GradContext& ctx) {
  return NormGradient(ctx, OpKind::kLayerNormGrad);
}
absl::Status RmsNormGradient(GradContext& ctx) { return NormGradient(ctx, OpKind::kRmsNormGrad); }

OpTestCase Case(std::vector<Shape> shapes, float eps = 1e-5f) {
  OpTestCase c;
  for (Shape& s : shapes) c.inputs.push_back({DType::kF32, std::move(s)});
  c.attrs = NormAttrs{eps};
  return c;
}

std::vector<OpTestCase> LayerNormTestCases() {
  return {Case({{3, 5}, {5}, {5}}), Case({{2, 3, 4}, {4}, {4}}), Case({{3, 5}, {5}}),
          Case({{4, 6}}, 0.1f)};
}

std::vector<OpTestCase> RmsNormTestCases() {
  return {Case({{3, 5}, {5}}, 1e-6f), Case({{2, 3, 4}, {4}}), Case({{4, 6}}, 0.1f)};
}

OpDef NormOpDef(const char* name, int max_inputs, KernelFn kernel, KernelFn fast, GradFn gradient,
                std::vector<OpTestCase> (*cases)()) {
  OpDef def;
  def.name = name;
  def.attrs_index = AttrsIndexOf<NormAttrs>();
  def.min_inputs = 1;
  def.max_inputs = max_inputs;
  def.infer = InferNorm;
  def.reference = kernel;
  def.fast = fast;
  def.gradient = gradient;
  def.test_cases = cases;
  return def;
}

// Not differentiable: emitted only by the norms' gradient rules (no second order).
OpDef NormGradOpDef(const char* name, KernelFn kernel, KernelFn fast) {
  OpDef def;
  def.name = name;
  def.attrs_index = AttrsIndexOf<NormAttrs>();
  def.min_inputs = 2;
  def.max_inputs = 3;
  def.infer = InferNormGrad;
  def.reference = kernel;
  def.fast = fast;
  return def;
}

}  // namespace

OpDef LayerNormOpDef() {
  return NormOpDef("layer_norm", 3, LayerNormKernel, LayerNormFast, LayerNormGradient,
                   LayerNormTestCases);
}
OpDef RmsNormOpDef() {
  return NormOpDef("rms_norm", 2, RmsNormKernel, RmsNormFast, RmsNormGradient, RmsNormTestCases);
}
OpDef LayerNormGradOpDef() {
  return NormGradOpDef("layer_norm_grad", LayerNormGradKernel, LayerNormGradFast);
}
OpDef RmsNormGradOpDef() {
  return NormGradOpDef("rms_norm_grad", RmsNormGradKernel, RmsNormGradFast);
}

}  // namespace fleettune::engine::ops
