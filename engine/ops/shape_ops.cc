// Shape ops: kReshape (same elements, new shape) and kBroadcastTo.
#include <cstring>

#include "engine/base/status_macros.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

absl::StatusOr<TensorType> InferReshape(const Node& node, absl::Span<const TensorType* const> in) {
  const auto* attrs = std::get_if<ShapeAttrs>(&node.attrs);
  if (attrs == nullptr) return OpError(node, "needs ShapeAttrs");
  absl::Status valid = ValidateShape(attrs->shape);
  if (!valid.ok()) return OpError(node, valid.message());
  if (NumElements(attrs->shape) != in[0]->num_elements()) {
    return OpError(node, "cannot reshape ", TypeToString(*in[0]), " to ",
                   ShapeToString(attrs->shape));
  }
  return TensorType{in[0]->dtype, attrs->shape};
}

void ReshapeKernel(const KernelArgs& args) {
  if (args.output.data != args.in(0).data) {
    std::memcpy(args.output.data, args.in(0).data, args.output.num_elements() * 4);
  }
}

// dx = reshape(dy, shape(x))
absl::Status ReshapeGradient(GradContext& ctx) {
  if (!ctx.NeedsGrad(0)) return absl::OkStatus();
  ASSIGN_OR_RETURN(
      ValueId dx, ctx.Emit(OpKind::kReshape, {ctx.dy()}, ShapeAttrs{ctx.type(ctx.input(0)).shape}));
  ctx.SetGrad(0, dx);
  return absl::OkStatus();
}

std::vector<OpTestCase> ReshapeTestCases() {
  OpTestCase c;
  c.inputs = {{DType::kF32, {2, 3, 4}}};
  c.attrs = ShapeAttrs{{6, 4}};
  return {c};
}

absl::StatusOr<TensorType> InferBroadcastTo(const Node& node,
                                            absl::Span<const TensorType* const> in) {
  const auto* attrs = std::get_if<ShapeAttrs>(&node.attrs);
  if (attrs == nullptr) return OpError(node, "needs ShapeAttrs");
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "x"));
  absl::Status valid = ValidateShape(attrs->shape);
  if (!valid.ok()) return OpError(node, valid.message());
  absl::StatusOr<Shape> b = BroadcastShapes(in[0]->shape, attrs->shape);
  if (!b.ok() || *b != attrs->shape) {
    return OpError(node, "cannot broadcast ", TypeToString(*in[0]), " to ",
                   ShapeToString(attrs->shape));
  }
  return TensorType{DType::kF32, attrs->shape};
}

void BroadcastToKernel(const KernelArgs& args) {
  const float* x = args.in(0).f32();
  float* y = args.output.f32();
  const Shape& out = *args.output.shape;
  ForEachBroadcast(*args.in(0).shape, out, out,
                   [&](int64_t o, int64_t ix, int64_t) { y[o] = x[ix]; });
}

// dx = Σ over the broadcast axes of dy
absl::Status BroadcastToGradient(GradContext& ctx) {
  if (!ctx.NeedsGrad(0)) return absl::OkStatus();
  ASSIGN_OR_RETURN(ValueId dx, ReduceToShape(ctx, ctx.dy(), ctx.type(ctx.input(0)).shape));
  ctx.SetGrad(0, dx);
  return absl::OkStatus();
}

std::vector<OpTestCase> BroadcastToTestCases() {
  OpTestCase row;
  row.inputs = {{DType::kF32, {4}}};
  row.attrs = ShapeAttrs{{3, 4}};
  OpTestCase mid;
  mid.inputs = {{DType::kF32, {2, 1, 3}}};
  mid.attrs = ShapeAttrs{{2, 4, 3}};
  return {row, mid};
}

}  // namespace

OpDef ReshapeOpDef() {
  OpDef def;
  def.name = "reshape";
  def.attrs_index = AttrsIndexOf<ShapeAttrs>();
  def.min_inputs = def.max_inputs = 1;
  def.infer = InferReshape;
  def.reference = ReshapeKernel;
  def.gradient = ReshapeGradient;
  def.test_cases = ReshapeTestCases;
  return def;
}

OpDef BroadcastToOpDef() {
  OpDef def;
  def.name = "broadcast_to";
  def.attrs_index = AttrsIndexOf<ShapeAttrs>();
  def.min_inputs = def.max_inputs = 1;
  def.infer = InferBroadcastTo;
  def.reference = BroadcastToKernel;
  def.gradient = BroadcastToGradient;
  def.test_cases = BroadcastToTestCases;
  return def;
}

}  // namespace fleettune::engine::ops
