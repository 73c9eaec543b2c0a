#include "engine/ops/op_registry.h"

#include <algorithm>
#include <array>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {

// Each op file defines one of these.
OpDef InputOpDef();
OpDef ParameterOpDef();
OpDef FillOpDef();
OpDef MatMulOpDef();
OpDef LinearOpDef();
OpDef AddOpDef();
OpDef MulOpDef();
OpDef ScaleOpDef();
OpDef ReluOpDef();
OpDef ReshapeOpDef();
OpDef ReduceSumOpDef();
OpDef ReduceMeanOpDef();
OpDef BroadcastToOpDef();
OpDef SoftmaxCrossEntropyOpDef();
OpDef ReluGradOpDef();
OpDef SoftmaxCrossEntropyGradOpDef();
OpDef SgdUpdateOpDef();
OpDef AdamWUpdateOpDef();
OpDef Conv2dOpDef();
OpDef Conv2dBackwardInputOpDef();
OpDef Conv2dBackwardWeightOpDef();
OpDef BatchNormOpDef();
OpDef BatchNormInferenceOpDef();
OpDef BatchNormGradOpDef();
OpDef BatchNormInferenceGradOpDef();
OpDef BatchNormWeightGradOpDef();
OpDef BatchNormStatsUpdateOpDef();
OpDef MaxPool2dOpDef();
OpDef MaxPool2dGradOpDef();
OpDef AvgPool2dOpDef();
OpDef AvgPool2dGradOpDef();
OpDef ActivationOpDef();
OpDef ActivationGradOpDef();
OpDef DropoutOpDef();
OpDef MseLossOpDef();
OpDef MseLossGradOpDef();
OpDef SubOpDef();
OpDef DivOpDef();
OpDef LayerNormOpDef();
OpDef LayerNormGradOpDef();
OpDef RmsNormOpDef();
OpDef RmsNormGradOpDef();
OpDef EmbeddingOpDef();
OpDef EmbeddingGradOpDef();
OpDef SoftmaxOpDef();
OpDef SoftmaxGradOpDef();
OpDef TransposeOpDef();
OpDef ConcatOpDef();
OpDef SliceOpDef();
OpDef SliceGradOpDef();
OpDef RopeOpDef();
OpDef Conv2dActivationOpDef();
OpDef LinearActivationOpDef();
OpDef BatchNormInferenceActivationOpDef();
OpDef AddActivationOpDef();
OpDef LayerNormActivationOpDef();
OpDef RmsNormActivationOpDef();
OpDef ElementwiseChainOpDef();
OpDef ActivationMaskOpDef();
OpDef MaskedGradOpDef();
OpDef SgdMatMulUpdateOpDef();

namespace {

using Table = std::array<OpDef, kNumOpKinds>;

void Register(Table& table, OpKind kind, OpDef def) { table[static_cast<int>(kind)] = def; }

// The one list of ops.
Table BuildTable() {
  Table t;
  Register(t, OpKind::kInput, InputOpDef());
  Register(t, OpKind::kParameter, ParameterOpDef());
  Register(t, OpKind::kFill, FillOpDef());
  Register(t, OpKind::kMatMul, MatMulOpDef());
  Register(t, OpKind::kLinear, LinearOpDef());
  Register(t, OpKind::kAdd, AddOpDef());
  Register(t, OpKind::kMul, MulOpDef());
  Register(t, OpKind::kScale, ScaleOpDef());
  Register(t, OpKind::kRelu, ReluOpDef());
  Register(t, OpKind::kReshape, ReshapeOpDef());
  Register(t, OpKind::kReduceSum, ReduceSumOpDef());
  Register(t, OpKind::kReduceMean, ReduceMeanOpDef());
  Register(t, OpKind::kBroadcastTo, BroadcastToOpDef());
  Register(t, OpKind::kSoftmaxCrossEntropy, SoftmaxCrossEntropyOpDef());
  Register(t, OpKind::kReluGrad, ReluGradOpDef());
  Register(t, OpKind::kSoftmaxCrossEntropyGrad, SoftmaxCrossEntropyGradOpDef());
  Register(t, OpKind::kSgdUpdate, SgdUpdateOpDef());
  Register(t, OpKind::kAdamWUpdate, AdamWUpdateOpDef());
  Register(t, OpKind::kConv2d, Conv2dOpDef());
  Register(t, OpKind::kConv2dBackwardInput, Conv2dBackwardInputOpDef());
  Register(t, OpKind::kConv2dBackwardWeight, Conv2dBackwardWeightOpDef());
  Register(t, OpKind::kBatchNorm, BatchNormOpDef());
  Register(t, OpKind::kBatchNormInference, BatchNormInferenceOpDef());
  Register(t, OpKind::kBatchNormGrad, BatchNormGradOpDef());
  Register(t, OpKind::kBatchNormInferenceGrad, BatchNormInferenceGradOpDef());
  Register(t, OpKind::kBatchNormWeightGrad, BatchNormWeightGradOpDef());
  Register(t, OpKind::kBatchNormStatsUpdate, BatchNormStatsUpdateOpDef());
  Register(t, OpKind::kMaxPool2d, MaxPool2dOpDef());
  Register(t, OpKind::kMaxPool2dGrad, MaxPool2dGradOpDef());
  Register(t, OpKind::kAvgPool2d, AvgPool2dOpDef());
  Register(t, OpKind::kAvgPool2dGrad, AvgPool2dGradOpDef());
  Register(t, OpKind::kActivation, ActivationOpDef());
  Register(t, OpKind::kActivationGrad, ActivationGradOpDef());
  Register(t, OpKind::kDropout, DropoutOpDef());
  Register(t, OpKind::kMseLoss, MseLossOpDef());
  Register(t, OpKind::kMseLossGrad, MseLossGradOpDef());
  Register(t, OpKind::kSub, SubOpDef());
  Register(t, OpKind::kDiv, DivOpDef());
  Register(t, OpKind::kLayerNorm, LayerNormOpDef());
  Register(t, OpKind::kLayerNormGrad, LayerNormGradOpDef());
  Register(t, OpKind::kRmsNorm, RmsNormOpDef());
  Register(t, OpKind::kRmsNormGrad, RmsNormGradOpDef());
  Register(t, OpKind::kEmbedding, EmbeddingOpDef());
  Register(t, OpKind::kEmbeddingGrad, EmbeddingGradOpDef());
  Register(t, OpKind::kSoftmax, SoftmaxOpDef());
  Register(t, OpKind::kSoftmaxGrad, SoftmaxGradOpDef());
  Register(t, OpKind::kTranspose, TransposeOpDef());
  Register(t, OpKind::kConcat, ConcatOpDef());
  Register(t, OpKind::kSlice, SliceOpDef());
  Register(t, OpKind::kSliceGrad, SliceGradOpDef());
  Register(t, OpKind::kRope, RopeOpDef());
  Register(t, OpKind::kConv2dActivation, Conv2dActivationOpDef());
  Register(t, OpKind::kLinearActivation, LinearActivationOpDef());
  Register(t, OpKind::kBatchNormInferenceActivation, BatchNormInferenceActivationOpDef());
  Register(t, OpKind::kAddActivation, AddActivationOpDef());
  Register(t, OpKind::kLayerNormActivation, LayerNormActivationOpDef());
  Register(t, OpKind::kRmsNormActivation, RmsNormActivationOpDef());
  Register(t, OpKind::kElementwiseChain, ElementwiseChainOpDef());
  Register(t, OpKind::kActivationMask, ActivationMaskOpDef());
  Register(t, OpKind::kMaskedGrad, MaskedGradOpDef());
  Register(t, OpKind::kSgdMatMulUpdate, SgdMatMulUpdateOpDef());
  return t;
}

}  // namespace

const OpDef& GetOpDef(OpKind op) {
  static const Table* table = new Table(BuildTable());
  int index = static_cast<int>(op);
  if (index < 0 || index >= kNumOpKinds) index = 0;
  return (*table)[index];
}

absl::StatusOr<TensorType> InferType(const Node& node, absl::Span<const TensorType* const> inputs) {
  const OpDef& def = GetOpDef(node.op);
  const int n = static_cast<int>(inputs.size());
  if (n < def.min_inputs || n > def.max_inputs) {
    if (def.min_inputs == def.max_inputs) {
      return OpError(node, "expects ", def.min_inputs, " inputs, got ", n);
    }
    return OpError(node, "expects ", def.min_inputs, " to ", def.max_inputs, " inputs, got ", n);
  }
  if (node.attrs.index() != def.attrs_index) {
    static constexpr const char* kAttrNames[] = {
        "no attributes",   "ParameterAttrs",        "MatMulAttrs",
        "ShapeAttrs",      "ReduceAttrs",           "ScalarAttrs",
        "FillAttrs",       "CrossEntropyAttrs",     "SgdAttrs",
        "AdamWAttrs",      "Conv2dAttrs",           "Conv2dGradAttrs",
        "Pool2dAttrs",     "Pool2dGradAttrs",       "BatchNormAttrs",
        "ActivationAttrs", "DropoutAttrs",          "NormAttrs",
        "SoftmaxAttrs",    "PermuteAttrs",          "AxisAttrs",
        "SliceAttrs",      "SliceGradAttrs",        "RopeAttrs",
        "FusedConvAttrs",  "FusedActivationAttrs",  "FusedBatchNormAttrs",
        "FusedNormAttrs",  "ElementwiseChainAttrs", "FusedSgdAttrs"};
    static_assert(sizeof(kAttrNames) / sizeof(kAttrNames[0]) == std::variant_size_v<Attrs>);
    return OpError(node, "takes ", kAttrNames[def.attrs_index], ", got ",
                   kAttrNames[node.attrs.index()]);
  }
  if (def.infer == nullptr) return OpError(node, "has no shape inference");
  return def.infer(node, inputs);
}

absl::StatusOr<Shape> BroadcastShapes(const Shape& a, const Shape& b) {
  const size_t rank = std::max(a.size(), b.size());
  Shape out(rank, 1);
  for (size_t i = 0; i < rank; ++i) {
    int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da != db && da != 1 && db != 1) {
      return absl::InvalidArgumentError(absl::StrCat("shapes ", ShapeToString(a), " and ",
                                                     ShapeToString(b), " do not broadcast"));
    }
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Strides BroadcastStrides(const Shape& shape, const Shape& out_shape) {
  const size_t rank = out_shape.size();
  Strides strides{};
  int64_t stride = 1;
  for (size_t k = 0; k < shape.size(); ++k) {
    const size_t dim = shape.size() - 1 - k;  // dim in `shape`
    const size_t out_dim = rank - 1 - k;
    strides[out_dim] = (shape[dim] == 1 && out_shape[out_dim] != 1) ? 0 : stride;
    stride *= shape[dim];
  }
  return strides;
}

absl::StatusOr<ValueId> ReduceToShape(GradContext& ctx, ValueId grad, const Shape& target) {
  const Shape& shape = ctx.type(grad).shape;
  if (shape == target) return grad;
  const size_t lead = shape.size() - target.size();
  ReduceAttrs reduce;
  reduce.keep_dims = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    bool broadcast = i < lead || (target[i - lead] == 1 && shape[i] != 1);
    if (broadcast) reduce.axes.push_back(static_cast<int>(i));
  }
  ValueId reduced = grad;
  if (!reduce.axes.empty()) {
    ASSIGN_OR_RETURN(reduced, ctx.Emit(OpKind::kReduceSum, {grad}, reduce));
  }
  if (ctx.type(reduced).shape == target) return reduced;
  return ctx.Emit(OpKind::kReshape, {reduced}, ShapeAttrs{target});
}

}  // namespace fleettune::engine::ops
