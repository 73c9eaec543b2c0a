// Shape ops: kReshape (same elements, new shape) and kBroadcastTo.
#include <algorithm>
#include <cstring>

#include "engine/base/status_macros.h"
#include "engine/kernels/parallel.h"
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

// Broadcasts that copy contiguous runs: x covering y's leading axes with
// the rest broadcast (a pooled [N, C, 1, 1] back to [N, C, H, W]: each x
// element `inner` times), or y's trailing axes with the leading ones
// broadcast (a bias [C] to [N, C]: x whole, `outer` times). The rest take
// the reference kernel's index walk.
void BroadcastToFast(const KernelArgs& args) {
  const Shape& in = *args.in(0).shape;
  const Shape& out = *args.output.shape;
  const int64_t pad = static_cast<int64_t>(out.size() - in.size());
  auto dim = [&](int64_t axis) { return axis < pad ? int64_t{1} : in[axis - pad]; };
  const int64_t rank = static_cast<int64_t>(out.size());
  int64_t lead = 0;  // axes x covers from the front
  while (lead < rank && dim(lead) == out[lead]) ++lead;
  int64_t ones = lead;
  while (ones < rank && dim(ones) == 1) ++ones;
  const float* x = args.in(0).f32();
  float* y = args.output.f32();
  if (args.output.num_elements() == 0) return;
  if (ones == rank) {  // y[i·inner + j] = x[i]
    int64_t inner = 1;
    for (int64_t a = lead; a < rank; ++a) inner *= out[a];
    kernels::ParallelFor(args.in(0).num_elements(), inner, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) std::fill_n(y + i * inner, inner, x[i]);
    });
    return;
  }
  int64_t trail = rank;  // axes x covers from the back
  while (trail > 0 && dim(trail - 1) == out[trail - 1]) --trail;
  bool leading_ones = true;
  for (int64_t a = 0; a < trail; ++a) leading_ones &= dim(a) == 1;
  if (leading_ones) {  // y[o·block + j] = x[j]
    const int64_t block = args.in(0).num_elements();
    kernels::ParallelFor(args.output.num_elements() / block, block,
                         [&](int64_t begin, int64_t end) {
                           for (int64_t o = begin; o < end; ++o) {
                             std::memcpy(y + o * block, x, block * sizeof(float));
                           }
                         });
    return;
  }
  BroadcastToKernel(args);
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
  OpTestCase pooled;  // trailing axes broadcast
  pooled.inputs = {{DType::kF32, {2, 3, 1, 1}}};
  pooled.attrs = ShapeAttrs{{2, 3, 2, 2}};
  OpTestCase leading;  // leading axes broadcast, one of them missing
  leading.inputs = {{DType::kF32, {1, 3}}};
  leading.attrs = ShapeAttrs{{2, 2, 3}};
  OpTestCase same;  // nothing broadcast
  same.inputs = {{DType::kF32, {2, 3}}};
  same.attrs = ShapeAttrs{{2, 3}};
  return {row, mid, pooled, leading, same};
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
  def.fast = BroadcastToFast;
  def.gradient = BroadcastToGradient;
  def.test_cases = BroadcastToTestCases;
  return def;
}

}  // namespace fleettune::engine::ops
