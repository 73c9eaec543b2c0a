// kMseLoss: PyTorch's F.mse_loss with reduction "mean", and the backward-only
// kMseLossGrad.
//
// prediction and target f32 of one shape (no broadcasting) → loss f32[] =
// Σ (prediction − target)² / count; 0 for empty tensors.
#include "engine/base/status_macros.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

absl::Status CheckOperands(const Node& node, const TensorType& pred, const TensorType& target) {
  RETURN_IF_ERROR(ExpectDType(node, pred, DType::kF32, "prediction"));
  if (target != pred) {
    return OpError(node, "target ", TypeToString(target), " and prediction ", TypeToString(pred),
                   " differ");
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(CheckOperands(node, *in[0], *in[1]));
  return TensorType{DType::kF32, {}};
}

void Kernel(const KernelArgs& args) {
  const float* p = args.in(0).f32();
  const float* t = args.in(1).f32();
  const int64_t n = args.in(0).num_elements();
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(p[i]) - t[i];
    sum += d * d;
  }
  args.output.f32()[0] = n == 0 ? 0.0f : static_cast<float>(sum / static_cast<double>(n));
}

// L = Σ (p − t)² / n:  dp = 2·(p − t)·dL/n,  dt = −dp
absl::Status Gradient(GradContext& ctx) {
  ASSIGN_OR_RETURN(ValueId dp,
                   ctx.Emit(OpKind::kMseLossGrad, {ctx.input(0), ctx.input(1), ctx.dy()}));
  if (ctx.NeedsGrad(0)) ctx.SetGrad(0, dp);
  if (ctx.NeedsGrad(1)) {
    ASSIGN_OR_RETURN(ValueId dt, ctx.Emit(OpKind::kScale, {dp}, ScalarAttrs{-1.0f}));
    ctx.SetGrad(1, dt);
  }
  return absl::OkStatus();
}

std::vector<OpTestCase> TestCases() {
  OpTestCase c;
  c.inputs = {{DType::kF32, {3, 4}}, {DType::kF32, {3, 4}}};
  OpTestCase rank3 = c;
  rank3.inputs = {{DType::kF32, {2, 2, 3}}, {DType::kF32, {2, 2, 3}}};
  return {c, rank3};
}

absl::StatusOr<TensorType> InferGrad(const Node& node, absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(CheckOperands(node, *in[0], *in[1]));
  if (*in[2] != TensorType{DType::kF32, {}}) {
    return OpError(node, "dy must be f32[], got ", TypeToString(*in[2]));
  }
  return *in[0];
}

// Inputs (prediction, target, dy).
void GradKernel(const KernelArgs& args) {
  const float* p = args.in(0).f32();
  const float* t = args.in(1).f32();
  const int64_t n = args.in(0).num_elements();
  const float scale = n == 0 ? 0.0f : 2.0f * args.in(2).f32()[0] / static_cast<float>(n);
  float* dp = args.output.f32();
  for (int64_t i = 0; i < n; ++i) dp[i] = scale * (p[i] - t[i]);
}

std::vector<OpTestCase> GradTestCases() {
  OpTestCase c;
  c.inputs = {{DType::kF32, {3, 4}}, {DType::kF32, {3, 4}}, {DType::kF32, {}}};
  return {c};
}

}  // namespace

OpDef MseLossOpDef() {
  OpDef def;
  def.name = "mse_loss";
  def.min_inputs = def.max_inputs = 2;
  def.infer = Infer;
  def.reference = Kernel;
  def.gradient = Gradient;
  def.test_cases = TestCases;
  return def;
}

// Not differentiable: emitted only by MseLoss's gradient rule (no second order).
OpDef MseLossGradOpDef() {
  OpDef def;
  def.name = "mse_loss_grad";
  def.min_inputs = def.max_inputs = 3;
  def.infer = InferGrad;
  def.reference = GradKernel;
  def.test_cases = GradTestCases;
  return def;
}

}  // namespace fleettune::engine::ops
