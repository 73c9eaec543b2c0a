// kLinear: y = x · Wᵀ + b, PyTorch's nn.Linear layout.
//
// Shapes: x [..., in], weight [out, in], bias [out] (optional third input),
// y [..., out]. Leading dimensions of x are flattened into rows.
#include <optional>

#include "engine/base/status_macros.h"
#include "engine/kernels/gemm.h"
#include "engine/kernels/parallel.h"
#include "engine/ops/kernel_parts.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  const TensorType& x = *in[0];
  const TensorType& w = *in[1];
  RETURN_IF_ERROR(ExpectDType(node, x, DType::kF32, "x"));
  RETURN_IF_ERROR(ExpectDType(node, w, DType::kF32, "weight"));
  RETURN_IF_ERROR(ExpectRank(node, w, 2, "weight"));
  if (x.shape.empty()) return OpError(node, "x must have rank >= 1, got ", TypeToString(x));
  if (x.shape.back() != w.shape[1]) {
    return OpError(node, "x has ", x.shape.back(), " features but weight ", TypeToString(w),
                   " expects ", w.shape[1]);
  }
  if (in.size() == 3) {
    RETURN_IF_ERROR(ExpectDType(node, *in[2], DType::kF32, "bias"));
    if (in[2]->shape != Shape{w.shape[0]}) {
      return OpError(node, "bias must be f32[", w.shape[0], "], got ", TypeToString(*in[2]));
    }
  }
  Shape out = x.shape;
  out.back() = w.shape[0];
  return TensorType{DType::kF32, out};
}

void Reference(const KernelArgs& args) {
  const Shape& ws = *args.in(1).shape;
  const int64_t out = ws[0], in = ws[1];
  const int64_t rows = args.in(0).num_elements() / in;
  const float* x = args.in(0).f32();
  const float* w = args.in(1).f32();
  const float* b = args.num_inputs == 3 ? args.in(2).f32() : nullptr;
  float* y = args.output.f32();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = b ? b[o] : 0.0;
      for (int64_t i = 0; i < in; ++i) acc += static_cast<double>(x[r * in + i]) * w[o * in + i];
      y[r * out + o] = static_cast<float>(acc);
    }
  }
}

}  // namespace

// GEMM with beta = 0, then one threaded pass adding the bias to each block of
// rows and applying the activation while the block is in cache. Copying the
// bias into y first and accumulating onto it (beta = 1) was measured slower:
// the copy is a pass over y before the GEMM, not after it in cache
// (BENCHMARKS.md, issue #6, fifth session). Both round fl(x·Wᵀ) + b once.
void parts::LinearFast(const KernelArgs& args, std::optional<FusedActivationFn> act) {
  const Shape& ws = *args.in(1).shape;
  const int64_t out = ws[0], in = ws[1];
  const int64_t rows = args.in(0).num_elements() / in;
  float* y = args.output.f32();
  kernels::Sgemm(false, true, rows, out, in, 1.0f, args.in(0).f32(), in, args.in(1).f32(), in, 0.0f,
                 y, out);
  const float* b = args.num_inputs == 3 ? args.in(2).f32() : nullptr;
  if (b == nullptr && !act.has_value()) return;
  const int64_t cost = 1 + (act.has_value() ? FusedActivationCost(*act) : 0);
  kernels::ParallelFor(rows, out * cost, [&](int64_t begin, int64_t end) {
    if (b != nullptr) {
      for (int64_t r = begin; r < end; ++r) {
        float* __restrict row = y + r * out;
        for (int64_t o = 0; o < out; ++o) row[o] += b[o];
      }
    }
    if (act.has_value()) FusedActivationInPlace(*act, y + begin * out, (end - begin) * out);
  });
}

namespace {

void Fast(const KernelArgs& args) { parts::LinearFast(args, std::nullopt); }

// With X2 = x flattened to [rows, in] and dY2 = dy as [rows, out]:
//   dx = dY2 · W        dW = dY2ᵀ · X2        db = Σ_rows dY2
absl::Status Gradient(GradContext& ctx) {
  const Shape& xs = ctx.type(ctx.input(0)).shape;
  const Shape& ws = ctx.type(ctx.input(1)).shape;
  const int64_t rows = NumElements(xs) / ws[1];
  const bool flat = xs.size() == 2;
  ValueId dy2 = ctx.dy();
  if (!flat) {
    ASSIGN_OR_RETURN(dy2, ctx.Emit(OpKind::kReshape, {ctx.dy()}, ShapeAttrs{{rows, ws[0]}}));
  }
  if (ctx.NeedsGrad(0)) {
    ASSIGN_OR_RETURN(ValueId dx, ctx.Emit(OpKind::kMatMul, {dy2, ctx.input(1)}, MatMulAttrs{}));
    if (!flat) {
      ASSIGN_OR_RETURN(dx, ctx.Emit(OpKind::kReshape, {dx}, ShapeAttrs{xs}));
    }
    ctx.SetGrad(0, dx);
  }
  if (ctx.NeedsGrad(1)) {
    ValueId x2 = ctx.input(0);
    if (!flat) {
      ASSIGN_OR_RETURN(x2, ctx.Emit(OpKind::kReshape, {x2}, ShapeAttrs{{rows, ws[1]}}));
    }
    ASSIGN_OR_RETURN(ValueId dw, ctx.Emit(OpKind::kMatMul, {dy2, x2}, MatMulAttrs{true, false}));
    ctx.SetGrad(1, dw);
  }
  if (ctx.node().inputs.size() == 3 && ctx.NeedsGrad(2)) {
    ASSIGN_OR_RETURN(ValueId db, ctx.Emit(OpKind::kReduceSum, {dy2}, ReduceAttrs{{0}, false}));
    ctx.SetGrad(2, db);
  }
  return absl::OkStatus();
}

std::vector<OpTestCase> TestCases() {
  OpTestCase with_bias;
  with_bias.inputs = {{DType::kF32, {3, 5}}, {DType::kF32, {4, 5}}, {DType::kF32, {4}}};
  OpTestCase no_bias;
  no_bias.inputs = {{DType::kF32, {3, 5}}, {DType::kF32, {2, 5}}};
  OpTestCase rank3;
  rank3.inputs = {{DType::kF32, {2, 3, 5}}, {DType::kF32, {4, 5}}, {DType::kF32, {4}}};
  return {with_bias, no_bias, rank3};
}

}  // namespace

OpDef LinearOpDef() {
  OpDef def;
  def.name = "linear";
  def.min_inputs = 2;
  def.max_inputs = 3;
  def.infer = Infer;
  def.reference = Reference;
  def.fast = Fast;
  def.gradient = Gradient;
  def.test_cases = TestCases;
  return def;
}

}  // namespace fleettune::engine::ops
