// Source ops: kInput, kParameter, kFill.
//
// Inputs and parameters have no kernel: the runtime binds their buffers. None
// of the three is differentiable: a gradient w.r.t. a source is what autodiff
// returns, not something a rule computes.
#include <algorithm>

#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

absl::StatusOr<TensorType> InferSource(const Node& node, absl::Span<const TensorType* const>) {
  return node.type;
}

absl::StatusOr<TensorType> InferFill(const Node& node, absl::Span<const TensorType* const>) {
  const auto* attrs = std::get_if<FillAttrs>(&node.attrs);
  if (attrs == nullptr) return OpError(node, "needs FillAttrs");
  absl::Status valid = ValidateShape(attrs->shape);
  if (!valid.ok()) return OpError(node, valid.message());
  return TensorType{DType::kF32, attrs->shape};
}

void FillKernel(const KernelArgs& args) {
  const float value = args.attrs<FillAttrs>().value;
  std::fill_n(args.output.f32(), args.output.num_elements(), value);
}

}  // namespace

OpDef InputOpDef() {
  OpDef def;
  def.name = "input";
  def.infer = InferSource;
  return def;
}

OpDef ParameterOpDef() {
  OpDef def;
  def.name = "parameter";
  def.attrs_index = AttrsIndexOf<ParameterAttrs>();
  def.infer = InferSource;
  return def;
}

OpDef FillOpDef() {
  OpDef def;
  def.name = "fill";
  def.attrs_index = AttrsIndexOf<FillAttrs>();
  def.infer = InferFill;
  def.reference = FillKernel;
  return def;
}

}  // namespace fleettune::engine::ops
