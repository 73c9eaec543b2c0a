// BatchNorm (PyTorch's nn.BatchNorm1d/2d with affine weight and bias) in its
// two forms, their backward-only companions, and the running-statistics update.
//
// x [N, C, ...] (channels on axis 1; statistics over every other axis, M
// values per channel), weight γ [C], bias β [C]:
//
//   kBatchNorm (training mode):   inputs (x, weight, bias)
//       y = (x − μ_B)/√(σ²_B + eps)·γ + β   with the batch mean μ_B and the
//       biased batch variance σ²_B of each channel.
//   kBatchNormInference (frozen): inputs (x, running_mean, running_var, weight, bias)
//       y = (x − running_mean)/√(running_var + eps)·γ + β.
//       The running statistics are buffer parameters: never differentiated.
//   kBatchNormStatsUpdate:        inputs (x, running_mean, running_var
//       [, num_batches_tracked]); no output. Like torch in training mode:
//       running = (1 − momentum)·running + momentum·batch, with the unbiased
//       batch variance (· M/(M−1)) for running_var, and num_batches_tracked
//       (i32[]) += 1. An update op: it writes its buffer operands in place.
//
// The backward ops recompute the batch statistics from x (one more pass over a
// value the backward pass reads anyway) instead of the forward emitting them as
// extra values, so every node keeps its single output.
#include "engine/kernels/batch_norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/base/status_macros.h"
#include "engine/ops/kernel_parts.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

// x viewed as [outer = N, C, inner = ∏ dims after the channel axis].
struct Layout {
  int64_t outer, c, inner;
  int64_t per_channel() const { return outer * inner; }
};

Layout MakeLayout(const Shape& x) {
  Layout l{x[0], x[1], 1};
  for (size_t d = 2; d < x.size(); ++d) l.inner *= x[d];
  return l;
}

// Calls fn(value index) for every element of channel c.
template <typename Fn>
void ForChannel(const Layout& l, int64_t c, Fn&& fn) {
  for (int64_t n = 0; n < l.outer; ++n) {
    const int64_t base = (n * l.c + c) * l.inner;
    for (int64_t i = 0; i < l.inner; ++i) fn(base + i);
  }
}

// Mean and biased variance of channel c (two passes, in double).
void ChannelStats(const Layout& l, const float* x, int64_t c, double* mean, double* var) {
  double sum = 0.0;
  ForChannel(l, c, [&](int64_t i) { sum += x[i]; });
  const double m = sum / static_cast<double>(l.per_channel());
  double sq = 0.0;
  ForChannel(l, c, [&](int64_t i) {
    const double d = x[i] - m;
    sq += d * d;
  });
  *mean = m;
  *var = sq / static_cast<double>(l.per_channel());
}

absl::Status CheckAttrs(const Node& node) {
  const auto& a = std::get<BatchNormAttrs>(node.attrs);
  if (!(a.eps > 0.0f) || !std::isfinite(a.eps) || !(a.momentum >= 0.0f && a.momentum <= 1.0f)) {
    return OpError(node, "needs eps > 0 and momentum in [0, 1], got eps ", a.eps, " momentum ",
                   a.momentum);
  }
  return absl::OkStatus();
}

absl::Status CheckX(const Node& node, const TensorType& x, bool batch_statistics) {
  RETURN_IF_ERROR(ExpectDType(node, x, DType::kF32, "x"));
  if (x.shape.size() < 2) return OpError(node, "x must be [N, C, ...], got ", TypeToString(x));
  if (batch_statistics && x.num_elements() / std::max<int64_t>(x.shape[1], 1) < 2) {
    // torch raises the same: the batch variance of one value is undefined.
    return OpError(node, "batch statistics need more than one value per channel, x is ",
                   TypeToString(x));
  }
  return absl::OkStatus();
}

absl::Status CheckPerChannel(const Node& node, const TensorType& x, const TensorType& t,
                             const char* what) {
  if (t != TensorType{DType::kF32, {x.shape[1]}}) {
    return OpError(node, what, " must be f32[", x.shape[1], "] for x ", TypeToString(x), ", got ",
                   TypeToString(t));
  }
  return absl::OkStatus();
}

absl::Status CheckSameAsX(const Node& node, const TensorType& x, const TensorType& t,
                          const char* what) {
  if (t != x) {
    return OpError(node, what, " ", TypeToString(t), " and x ", TypeToString(x), " differ");
  }
  return absl::OkStatus();
}

// Reduces dy over every axis but the channel axis: dβ = Σ dy.
absl::StatusOr<ValueId> ChannelSum(GradContext& ctx, ValueId dy) {
  ReduceAttrs all_but_channels;
  const int rank = static_cast<int>(ctx.type(dy).shape.size());
  for (int d = 0; d < rank; ++d) {
    if (d != 1) all_but_channels.axes.push_back(d);
  }
  return ctx.Emit(OpKind::kReduceSum, {dy}, all_but_channels);
}

std::vector<Shape> TestShapes() { return {{3, 2, 2, 3}, {5, 3}, {2, 3, 4}}; }

// --- kBatchNorm (training mode) ------------------------------------------------

absl::StatusOr<TensorType> InferTrain(const Node& node, absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(CheckAttrs(node));
  RETURN_IF_ERROR(CheckX(node, *in[0], true));
  RETURN_IF_ERROR(CheckPerChannel(node, *in[0], *in[1], "weight"));
  RETURN_IF_ERROR(CheckPerChannel(node, *in[0], *in[2], "bias"));
  return *in[0];
}

void TrainKernel(const KernelArgs& args) {
  const float eps = args.attrs<BatchNormAttrs>().eps;
  const Layout l = MakeLayout(*args.in(0).shape);
  const float* x = args.in(0).f32();
  const float* gamma = args.in(1).f32();
  const float* beta = args.in(2).f32();
  float* y = args.output.f32();
  for (int64_t c = 0; c < l.c; ++c) {
    double mean, var;
    ChannelStats(l, x, c, &mean, &var);
    const float scale = static_cast<float>(gamma[c] / std::sqrt(var + eps));
    const float shift = static_cast<float>(beta[c] - mean * scale);
    ForChannel(l, c, [&](int64_t i) { y[i] = x[i] * scale + shift; });
  }
}

// With x̂ = (x − μ_B)/σ, σ = √(σ²_B + eps), M values per channel:
//   dx = γ/(M·σ) · (M·dy − Σdy − x̂·Σ(dy·x̂))
//   dγ = Σ dy·x̂        dβ = Σ dy
absl::Status TrainGradient(GradContext& ctx) {
  const Attrs& attrs = ctx.node().attrs;
  if (ctx.NeedsGrad(0)) {
    ASSIGN_OR_RETURN(ValueId dx, ctx.Emit(OpKind::kBatchNormGrad,
                                          {ctx.dy(), ctx.input(0), ctx.input(1)}, attrs));
    ctx.SetGrad(0, dx);
  }
  if (ctx.NeedsGrad(1)) {
    ASSIGN_OR_RETURN(ValueId dg,
                     ctx.Emit(OpKind::kBatchNormWeightGrad, {ctx.dy(), ctx.input(0)}, attrs));
    ctx.SetGrad(1, dg);
  }
  if (ctx.NeedsGrad(2)) {
    ASSIGN_OR_RETURN(ValueId db, ChannelSum(ctx, ctx.dy()));
    ctx.SetGrad(2, db);
  }
  return absl::OkStatus();
}

std::vector<OpTestCase> TrainTestCases() {
  std::vector<OpTestCase> out;
  for (const Shape& s : TestShapes()) {
    OpTestCase t;
    t.inputs = {{DType::kF32, s}, {DType::kF32, {s[1]}}, {DType::kF32, {s[1]}}};
    t.attrs = BatchNormAttrs{};
    out.push_back(t);
  }
  out[1].attrs = BatchNormAttrs{1e-3f, 0.1f};
  return out;
}

// --- kBatchNormInference (frozen statistics) -----------------------------------

absl::StatusOr<TensorType> InferFrozen(const Node& node, absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(CheckAttrs(node));
  RETURN_IF_ERROR(CheckX(node, *in[0], false));
  RETURN_IF_ERROR(CheckPerChannel(node, *in[0], *in[1], "running_mean"));
  RETURN_IF_ERROR(CheckPerChannel(node, *in[0], *in[2], "running_var"));
  RETURN_IF_ERROR(CheckPerChannel(node, *in[0], *in[3], "weight"));
  RETURN_IF_ERROR(CheckPerChannel(node, *in[0], *in[4], "bias"));
  return *in[0];
}

void FrozenKernel(const KernelArgs& args) {
  const float eps = args.attrs<BatchNormAttrs>().eps;
  const Layout l = MakeLayout(*args.in(0).shape);
  const float* x = args.in(0).f32();
  const float* mean = args.in(1).f32();
  const float* var = args.in(2).f32();
  const float* gamma = args.in(3).f32();
  const float* beta = args.in(4).f32();
  float* y = args.output.f32();
  for (int64_t c = 0; c < l.c; ++c) {
    const float scale = static_cast<float>(gamma[c] / std::sqrt(static_cast<double>(var[c]) + eps));
    const float shift = beta[c] - mean[c] * scale;
    ForChannel(l, c, [&](int64_t i) { y[i] = x[i] * scale + shift; });
  }
}

// With σ = √(running_var + eps), x̂ = (x − running_mean)/σ:
//   dx = dy·γ/σ        dγ = Σ dy·x̂        dβ = Σ dy
absl::Status FrozenGradient(GradContext& ctx) {
  const Attrs& attrs = ctx.node().attrs;
  if (ctx.NeedsGrad(0)) {
    ASSIGN_OR_RETURN(ValueId dx, ctx.Emit(OpKind::kBatchNormInferenceGrad,
                                          {ctx.dy(), ctx.input(2), ctx.input(3)}, attrs));
    ctx.SetGrad(0, dx);
  }
  if (ctx.NeedsGrad(3)) {
    ASSIGN_OR_RETURN(ValueId dg,
                     ctx.Emit(OpKind::kBatchNormWeightGrad,
                              {ctx.dy(), ctx.input(0), ctx.input(1), ctx.input(2)}, attrs));
    ctx.SetGrad(3, dg);
  }
  if (ctx.NeedsGrad(4)) {
    ASSIGN_OR_RETURN(ValueId db, ChannelSum(ctx, ctx.dy()));
    ctx.SetGrad(4, db);
  }
  return absl::OkStatus();
}

// The running statistics are state, not functions of the loss's inputs.
std::vector<bool> FrozenDifferentiableInputs(const Node&) {
  return {true, false, false, true, true};
}

std::vector<OpTestCase> FrozenTestCases() {
  std::vector<OpTestCase> out;
  for (const Shape& s : TestShapes()) {
    const TensorType per_channel{DType::kF32, {s[1]}};
    OpTestCase t;
    t.inputs = {{DType::kF32, s}, per_channel, per_channel, per_channel, per_channel};
    t.attrs = BatchNormAttrs{};
    t.positive_inputs = {2};  // running_var
    out.push_back(t);
  }
  return out;
}

// --- kBatchNormGrad: dx in training mode ---------------------------------------

absl::StatusOr<TensorType> InferTrainGrad(const Node& node,
                                          absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(CheckAttrs(node));
  RETURN_IF_ERROR(CheckX(node, *in[1], true));
  RETURN_IF_ERROR(CheckSameAsX(node, *in[1], *in[0], "dy"));
  RETURN_IF_ERROR(CheckPerChannel(node, *in[1], *in[2], "weight"));
  return *in[1];
}

// Inputs (dy, x, weight).
void TrainGradKernel(const KernelArgs& args) {
  const float eps = args.attrs<BatchNormAttrs>().eps;
  const float* dy = args.in(0).f32();
  const Layout l = MakeLayout(*args.in(1).shape);
  const float* x = args.in(1).f32();
  const float* gamma = args.in(2).f32();
  float* dx = args.output.f32();
  const double m = static_cast<double>(l.per_channel());
  for (int64_t c = 0; c < l.c; ++c) {
    double mean, var;
    ChannelStats(l, x, c, &mean, &var);
    const double inv = 1.0 / std::sqrt(var + eps);
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    ForChannel(l, c, [&](int64_t i) {
      sum_dy += dy[i];
      sum_dy_xhat += dy[i] * (x[i] - mean) * inv;
    });
    // dx = a·dy − b − x̂·d, folded into dx = a·dy + k·x + k0.
    const double a = gamma[c] * inv;
    const double mean_dy = sum_dy / m, mean_dy_xhat = sum_dy_xhat / m;
    const float fa = static_cast<float>(a);
    const float fk = static_cast<float>(-a * mean_dy_xhat * inv);
    const float fk0 = static_cast<float>(a * (mean_dy_xhat * inv * mean - mean_dy));
    ForChannel(l, c, [&](int64_t i) { dx[i] = fa * dy[i] + fk * x[i] + fk0; });
  }
}

std::vector<OpTestCase> TrainGradTestCases() {
  std::vector<OpTestCase> out;
  for (const Shape& s : TestShapes()) {
    OpTestCase t;
    t.inputs = {{DType::kF32, s}, {DType::kF32, s}, {DType::kF32, {s[1]}}};
    t.attrs = BatchNormAttrs{};
    out.push_back(t);
  }
  return out;
}

// --- kBatchNormInferenceGrad: dx with frozen statistics ------------------------

absl::StatusOr<TensorType> InferFrozenGrad(const Node& node,
                                           absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(CheckAttrs(node));
  RETURN_IF_ERROR(CheckX(node, *in[0], false));
  RETURN_IF_ERROR(CheckPerChannel(node, *in[0], *in[1], "running_var"));
  RETURN_IF_ERROR(CheckPerChannel(node, *in[0], *in[2], "weight"));
  return *in[0];
}

// Inputs (dy, running_var, weight): dx = dy·γ/√(running_var + eps).
void FrozenGradKernel(const KernelArgs& args) {
  const float eps = args.attrs<BatchNormAttrs>().eps;
  const Layout l = MakeLayout(*args.in(0).shape);
  const float* dy = args.in(0).f32();
  const float* var = args.in(1).f32();
  const float* gamma = args.in(2).f32();
  float* dx = args.output.f32();
  for (int64_t c = 0; c < l.c; ++c) {
    const float scale = static_cast<float>(gamma[c] / std::sqrt(static_cast<double>(var[c]) + eps));
    ForChannel(l, c, [&](int64_t i) { dx[i] = dy[i] * scale; });
  }
}

std::vector<OpTestCase> FrozenGradTestCases() {
  OpTestCase t;
  t.inputs = {{DType::kF32, {3, 2, 2, 3}}, {DType::kF32, {2}}, {DType::kF32, {2}}};
  t.attrs = BatchNormAttrs{};
  t.positive_inputs = {1};
  return {t};
}

// --- kBatchNormWeightGrad: dγ = Σ dy·x̂ ------------------------------------------

absl::StatusOr<TensorType> InferWeightGrad(const Node& node,
                                           absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(CheckAttrs(node));
  const bool batch_statistics = in.size() == 2;
  RETURN_IF_ERROR(CheckX(node, *in[1], batch_statistics));
  RETURN_IF_ERROR(CheckSameAsX(node, *in[1], *in[0], "dy"));
  if (!batch_statistics) {
    if (in.size() != 4) {
      return OpError(node, "takes (dy, x) or (dy, x, running_mean, running_var), got ", in.size(),
                     " inputs");
    }
    RETURN_IF_ERROR(CheckPerChannel(node, *in[1], *in[2], "running_mean"));
    RETURN_IF_ERROR(CheckPerChannel(node, *in[1], *in[3], "running_var"));
  }
  return TensorType{DType::kF32, {in[1]->shape[1]}};
}

// Inputs (dy, x) normalize with the batch statistics of x, (dy, x,
// running_mean, running_var) with the running ones.
void WeightGradKernel(const KernelArgs& args) {
  const float eps = args.attrs<BatchNormAttrs>().eps;
  const float* dy = args.in(0).f32();
  const Layout l = MakeLayout(*args.in(1).shape);
  const float* x = args.in(1).f32();
  float* dg = args.output.f32();
  for (int64_t c = 0; c < l.c; ++c) {
    double mean, var;
    if (args.num_inputs == 4) {
      mean = args.in(2).f32()[c];
      var = args.in(3).f32()[c];
    } else {
      ChannelStats(l, x, c, &mean, &var);
    }
    double sum = 0.0;
    ForChannel(l, c, [&](int64_t i) { sum += dy[i] * (x[i] - mean); });
    dg[c] = static_cast<float>(sum / std::sqrt(var + eps));
  }
}

std::vector<OpTestCase> WeightGradTestCases() {
  const Shape s = {3, 2, 2, 3};
  OpTestCase batch;
  batch.inputs = {{DType::kF32, s}, {DType::kF32, s}};
  batch.attrs = BatchNormAttrs{};
  OpTestCase running = batch;
  running.inputs.push_back({DType::kF32, {2}});
  running.inputs.push_back({DType::kF32, {2}});
  running.positive_inputs = {3};
  return {batch, running};
}

// --- kBatchNormStatsUpdate -------------------------------------------------------

absl::StatusOr<TensorType> InferStatsUpdate(const Node& node,
                                            absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(CheckAttrs(node));
  RETURN_IF_ERROR(CheckX(node, *in[0], true));
  RETURN_IF_ERROR(CheckPerChannel(node, *in[0], *in[1], "running_mean"));
  RETURN_IF_ERROR(CheckPerChannel(node, *in[0], *in[2], "running_var"));
  if (in.size() == 4 && *in[3] != TensorType{DType::kI32, {}}) {
    return OpError(node, "num_batches_tracked must be i32[], got ", TypeToString(*in[3]));
  }
  return TensorType{DType::kF32, {}};
}

void StatsUpdateKernel(const KernelArgs& args) {
  const double momentum = args.attrs<BatchNormAttrs>().momentum;
  const Layout l = MakeLayout(*args.in(0).shape);
  const float* x = args.in(0).f32();
  float* running_mean = args.in(1).f32();
  float* running_var = args.in(2).f32();
  const double m = static_cast<double>(l.per_channel());
  for (int64_t c = 0; c < l.c; ++c) {
    double mean, var;
    ChannelStats(l, x, c, &mean, &var);
    const double unbiased = var * m / (m - 1.0);
    running_mean[c] = static_cast<float>((1.0 - momentum) * running_mean[c] + momentum * mean);
    running_var[c] = static_cast<float>((1.0 - momentum) * running_var[c] + momentum * unbiased);
  }
  if (args.num_inputs == 4) ++args.in(3).i32()[0];
}

// --- fast kernels (engine/kernels/batch_norm.h) ----------------------------------

kernels::ChannelLayout FastLayout(const Shape& x) {
  const Layout l = MakeLayout(x);
  return {l.outer, l.c, l.inner};
}

void TrainFast(const KernelArgs& args) {
  kernels::F32BatchNormTrain(FastLayout(*args.in(0).shape), args.in(0).f32(), args.in(1).f32(),
                             args.in(2).f32(), args.attrs<BatchNormAttrs>().eps, args.output.f32());
}

void FrozenFastWithEpilogue(const KernelArgs& args, kernels::PlaneEpilogue epilogue) {
  kernels::F32BatchNormFrozen(FastLayout(*args.in(0).shape), args.in(0).f32(), args.in(1).f32(),
                              args.in(2).f32(), args.in(3).f32(), args.in(4).f32(),
                              args.attrs<BatchNormAttrs>().eps, args.output.f32(), epilogue);
}

void FrozenFast(const KernelArgs& args) { FrozenFastWithEpilogue(args, {}); }

void TrainGradFast(const KernelArgs& args) {
  kernels::F32BatchNormTrainGrad(FastLayout(*args.in(1).shape), args.in(0).f32(), args.in(1).f32(),
                                 args.in(2).f32(), args.attrs<BatchNormAttrs>().eps,
                                 args.output.f32());
}

void FrozenGradFast(const KernelArgs& args) {
  kernels::F32BatchNormFrozenGrad(FastLayout(*args.in(0).shape), args.in(0).f32(), args.in(1).f32(),
                                  args.in(2).f32(), args.attrs<BatchNormAttrs>().eps,
                                  args.output.f32());
}

void WeightGradFast(const KernelArgs& args) {
  const bool running = args.num_inputs == 4;
  kernels::F32BatchNormWeightGrad(FastLayout(*args.in(1).shape), args.in(0).f32(), args.in(1).f32(),
                                  running ? args.in(2).f32() : nullptr,
                                  running ? args.in(3).f32() : nullptr,
                                  args.attrs<BatchNormAttrs>().eps, args.output.f32());
}

void StatsUpdateFast(const KernelArgs& args) {
  kernels::F32BatchNormStatsUpdate(FastLayout(*args.in(0).shape), args.in(0).f32(),
                                   args.attrs<BatchNormAttrs>().momentum, args.in(1).f32(),
                                   args.in(2).f32());
  if (args.num_inputs == 4) ++args.in(3).i32()[0];
}

}  // namespace

void parts::BatchNormInferenceActivationFast(const KernelArgs& bn_args, FusedActivationFn act) {
  FrozenFastWithEpilogue(bn_args, parts::ActivationEpilogue(&act));
}

OpDef BatchNormOpDef() {
  OpDef def;
  def.name = "batch_norm";
  def.attrs_index = AttrsIndexOf<BatchNormAttrs>();
  def.min_inputs = def.max_inputs = 3;
  def.infer = InferTrain;
  def.reference = TrainKernel;
  def.fast = TrainFast;
  def.gradient = TrainGradient;
  def.test_cases = TrainTestCases;
  return def;
}

OpDef BatchNormInferenceOpDef() {
  OpDef def;
  def.name = "batch_norm_inference";
  def.attrs_index = AttrsIndexOf<BatchNormAttrs>();
  def.min_inputs = def.max_inputs = 5;
  def.infer = InferFrozen;
  def.reference = FrozenKernel;
  def.fast = FrozenFast;
  def.gradient = FrozenGradient;
  def.differentiable_inputs = FrozenDifferentiableInputs;
  def.test_cases = FrozenTestCases;
  return def;
}

// Not differentiable: emitted only by BatchNorm's gradient rule (no second order).
OpDef BatchNormGradOpDef() {
  OpDef def;
  def.name = "batch_norm_grad";
  def.attrs_index = AttrsIndexOf<BatchNormAttrs>();
  def.min_inputs = def.max_inputs = 3;
  def.infer = InferTrainGrad;
  def.reference = TrainGradKernel;
  def.fast = TrainGradFast;
  def.test_cases = TrainGradTestCases;
  return def;
}

// Not differentiable: emitted only by BatchNormInference's gradient rule.
OpDef BatchNormInferenceGradOpDef() {
  OpDef def;
  def.name = "batch_norm_inference_grad";
  def.attrs_index = AttrsIndexOf<BatchNormAttrs>();
  def.min_inputs = def.max_inputs = 3;
  def.infer = InferFrozenGrad;
  def.reference = FrozenGradKernel;
  def.fast = FrozenGradFast;
  def.test_cases = FrozenGradTestCases;
  return def;
}

// Not differentiable: emitted only by the BatchNorm gradient rules.
OpDef BatchNormWeightGradOpDef() {
  OpDef def;
  def.name = "batch_norm_weight_grad";
  def.attrs_index = AttrsIndexOf<BatchNormAttrs>();
  def.min_inputs = 2;
  def.max_inputs = 4;
  def.infer = InferWeightGrad;
  def.reference = WeightGradKernel;
  def.fast = WeightGradFast;
  def.test_cases = WeightGradTestCases;
  return def;
}

// Not differentiable: a side effect on state, like an optimizer update. No
// conformance cases (it has no output to check); the CNN golden test compares
// the updated statistics with PyTorch's.
OpDef BatchNormStatsUpdateOpDef() {
  OpDef def;
  def.name = "batch_norm_stats_update";
  def.attrs_index = AttrsIndexOf<BatchNormAttrs>();
  def.min_inputs = 3;
  def.max_inputs = 4;
  def.has_output = false;
  def.infer = InferStatsUpdate;
  def.reference = StatsUpdateKernel;
  def.fast = StatsUpdateFast;
  return def;
}

}  // namespace fleettune::engine::ops
