#include "engine/plan/plan_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <utility>
#include <variant>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"
#include "engine/ir/verifier.h"
#include "engine/ops/op_registry.h"

namespace fleettune::engine::plan {
namespace {

namespace v1 = ::fleettune::v1;

template <class... Ts>
struct Overloaded : Ts... {
  using Ts::operator()...;
};
template <class... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

// One row per engine OpKind, in enum order: its wire value and the attrs oneof
// case it takes (ATTRS_NOT_SET for ops whose attributes are NoAttrs).
struct OpRow {
  OpKind engine;
  v1::OpKind wire;
  v1::Node::AttrsCase attrs;
};

constexpr OpRow kOps[] = {
    {OpKind::kInput, v1::OP_KIND_INPUT, v1::Node::ATTRS_NOT_SET},
    {OpKind::kParameter, v1::OP_KIND_PARAMETER, v1::Node::kParameter},
    {OpKind::kFill, v1::OP_KIND_FILL, v1::Node::kFill},
    {OpKind::kMatMul, v1::OP_KIND_MATMUL, v1::Node::kMatmul},
    {OpKind::kLinear, v1::OP_KIND_LINEAR, v1::Node::ATTRS_NOT_SET},
    {OpKind::kAdd, v1::OP_KIND_ADD, v1::Node::ATTRS_NOT_SET},
    {OpKind::kMul, v1::OP_KIND_MUL, v1::Node::ATTRS_NOT_SET},
    {OpKind::kScale, v1::OP_KIND_SCALE, v1::Node::kScalar},
    {OpKind::kRelu, v1::OP_KIND_RELU, v1::Node::ATTRS_NOT_SET},
    {OpKind::kReshape, v1::OP_KIND_RESHAPE, v1::Node::kShape},
    {OpKind::kReduceSum, v1::OP_KIND_REDUCE_SUM, v1::Node::kReduce},
    {OpKind::kReduceMean, v1::OP_KIND_REDUCE_MEAN, v1::Node::kReduce},
    {OpKind::kBroadcastTo, v1::OP_KIND_BROADCAST_TO, v1::Node::kShape},
    {OpKind::kSoftmaxCrossEntropy, v1::OP_KIND_SOFTMAX_CROSS_ENTROPY, v1::Node::kCrossEntropy},
    {OpKind::kReluGrad, v1::OP_KIND_RELU_GRAD, v1::Node::ATTRS_NOT_SET},
    {OpKind::kSoftmaxCrossEntropyGrad, v1::OP_KIND_SOFTMAX_CROSS_ENTROPY_GRAD,
     v1::Node::kCrossEntropy},
    {OpKind::kSgdUpdate, v1::OP_KIND_SGD_UPDATE, v1::Node::kSgd},
    {OpKind::kAdamWUpdate, v1::OP_KIND_ADAMW_UPDATE, v1::Node::kAdamw},
    {OpKind::kConv2d, v1::OP_KIND_CONV2D, v1::Node::kConv2D},
    {OpKind::kConv2dBackwardInput, v1::OP_KIND_CONV2D_BACKWARD_INPUT, v1::Node::kConv2DGrad},
    {OpKind::kConv2dBackwardWeight, v1::OP_KIND_CONV2D_BACKWARD_WEIGHT, v1::Node::kConv2DGrad},
    {OpKind::kBatchNorm, v1::OP_KIND_BATCH_NORM, v1::Node::kBatchNorm},
    {OpKind::kBatchNormInference, v1::OP_KIND_BATCH_NORM_INFERENCE, v1::Node::kBatchNorm},
    {OpKind::kBatchNormGrad, v1::OP_KIND_BATCH_NORM_GRAD, v1::Node::kBatchNorm},
    {OpKind::kBatchNormInferenceGrad, v1::OP_KIND_BATCH_NORM_INFERENCE_GRAD, v1::Node::kBatchNorm},
    {OpKind::kBatchNormWeightGrad, v1::OP_KIND_BATCH_NORM_WEIGHT_GRAD, v1::Node::kBatchNorm},
    {OpKind::kBatchNormStatsUpdate, v1::OP_KIND_BATCH_NORM_STATS_UPDATE, v1::Node::kBatchNorm},
    {OpKind::kMaxPool2d, v1::OP_KIND_MAX_POOL2D, v1::Node::kPool2D},
    {OpKind::kMaxPool2dGrad, v1::OP_KIND_MAX_POOL2D_GRAD, v1::Node::kPool2D},
    {OpKind::kAvgPool2d, v1::OP_KIND_AVG_POOL2D, v1::Node::kPool2D},
    {OpKind::kAvgPool2dGrad, v1::OP_KIND_AVG_POOL2D_GRAD, v1::Node::kPool2DGrad},
    {OpKind::kActivation, v1::OP_KIND_ACTIVATION, v1::Node::kActivation},
    {OpKind::kActivationGrad, v1::OP_KIND_ACTIVATION_GRAD, v1::Node::kActivation},
    {OpKind::kDropout, v1::OP_KIND_DROPOUT, v1::Node::kDropout},
    {OpKind::kMseLoss, v1::OP_KIND_MSE_LOSS, v1::Node::ATTRS_NOT_SET},
    {OpKind::kMseLossGrad, v1::OP_KIND_MSE_LOSS_GRAD, v1::Node::ATTRS_NOT_SET},
    {OpKind::kSub, v1::OP_KIND_SUB, v1::Node::ATTRS_NOT_SET},
    {OpKind::kDiv, v1::OP_KIND_DIV, v1::Node::ATTRS_NOT_SET},
    {OpKind::kLayerNorm, v1::OP_KIND_LAYER_NORM, v1::Node::kNorm},
    {OpKind::kLayerNormGrad, v1::OP_KIND_LAYER_NORM_GRAD, v1::Node::kNorm},
    {OpKind::kRmsNorm, v1::OP_KIND_RMS_NORM, v1::Node::kNorm},
    {OpKind::kRmsNormGrad, v1::OP_KIND_RMS_NORM_GRAD, v1::Node::kNorm},
    {OpKind::kEmbedding, v1::OP_KIND_EMBEDDING, v1::Node::ATTRS_NOT_SET},
    {OpKind::kEmbeddingGrad, v1::OP_KIND_EMBEDDING_GRAD, v1::Node::kShape},
    {OpKind::kSoftmax, v1::OP_KIND_SOFTMAX, v1::Node::kSoftmax},
    {OpKind::kSoftmaxGrad, v1::OP_KIND_SOFTMAX_GRAD, v1::Node::ATTRS_NOT_SET},
    {OpKind::kTranspose, v1::OP_KIND_TRANSPOSE, v1::Node::kPermute},
    {OpKind::kConcat, v1::OP_KIND_CONCAT, v1::Node::kAxis},
    {OpKind::kSlice, v1::OP_KIND_SLICE, v1::Node::kSlice},
    {OpKind::kSliceGrad, v1::OP_KIND_SLICE_GRAD, v1::Node::kSliceGrad},
    {OpKind::kRope, v1::OP_KIND_ROPE, v1::Node::kRope},
    {OpKind::kConv2dActivation, v1::OP_KIND_CONV2D_ACTIVATION, v1::Node::kFusedConv},
    {OpKind::kLinearActivation, v1::OP_KIND_LINEAR_ACTIVATION, v1::Node::kFusedActivation},
    {OpKind::kBatchNormInferenceActivation, v1::OP_KIND_BATCH_NORM_INFERENCE_ACTIVATION,
     v1::Node::kFusedBatchNorm},
    {OpKind::kAddActivation, v1::OP_KIND_ADD_ACTIVATION, v1::Node::kFusedActivation},
    {OpKind::kLayerNormActivation, v1::OP_KIND_LAYER_NORM_ACTIVATION, v1::Node::kFusedNorm},
    {OpKind::kRmsNormActivation, v1::OP_KIND_RMS_NORM_ACTIVATION, v1::Node::kFusedNorm},
    {OpKind::kElementwiseChain, v1::OP_KIND_ELEMENTWISE_CHAIN, v1::Node::kElementwiseChain},
    {OpKind::kActivationMask, v1::OP_KIND_ACTIVATION_MASK, v1::Node::kScalar},
    {OpKind::kMaskedGrad, v1::OP_KIND_MASKED_GRAD, v1::Node::ATTRS_NOT_SET},
    {OpKind::kSgdMatMulUpdate, v1::OP_KIND_SGD_MATMUL_UPDATE, v1::Node::kFusedSgd},
};
static_assert(std::size(kOps) == kNumOpKinds, "every OpKind needs a row in kOps");

constexpr bool RowsFollowEnumOrder() {
  for (int i = 0; i < kNumOpKinds; ++i) {
    if (static_cast<int>(kOps[i].engine) != i) return false;
  }
  return true;
}
static_assert(RowsFollowEnumOrder(), "kOps rows must be in OpKind order");

// The row for a wire value, or nullptr for unknown and unspecified values.
const OpRow* FindWireOp(int wire) {
  for (const OpRow& row : kOps) {
    if (static_cast<int>(row.wire) == wire) return &row;
  }
  return nullptr;
}

// "parameter", "matmul", ...: the oneof field name.
std::string AttrsName(v1::Node::AttrsCase attrs_case) {
  const google::protobuf::FieldDescriptor* field =
      v1::Node::descriptor()->FindFieldByNumber(static_cast<int>(attrs_case));
  return field == nullptr ? absl::StrCat("field ", static_cast<int>(attrs_case)) : field->name();
}

// Why `got` is the wrong attrs case for an op that takes `want`.
std::string AttrsMismatch(v1::Node::AttrsCase want, v1::Node::AttrsCase got) {
  if (want == v1::Node::ATTRS_NOT_SET) {
    return absl::StrCat("takes no attributes, got ", AttrsName(got));
  }
  if (got == v1::Node::ATTRS_NOT_SET)
    return absl::StrCat("missing ", AttrsName(want), " attributes");
  return absl::StrCat("takes ", AttrsName(want), " attributes, got ", AttrsName(got));
}

template <typename... Args>
absl::Status NodeError(int id, OpKind op, const Args&... args) {
  return absl::InvalidArgumentError(
      absl::StrCat("node ", id, " (", ops::GetOpDef(op).name, "): ", args...));
}

// Strict UTF-8 (no overlong forms, surrogates or code points above U+10FFFF):
// proto3 `string` fields must hold it or the message does not parse.
bool IsValidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int extra;
    uint32_t min_code_point;
    uint32_t code_point;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1, min_code_point = 0x80, code_point = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2, min_code_point = 0x800, code_point = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3, min_code_point = 0x10000, code_point = c & 0x07;
    } else {
      return false;
    }
    if (s.size() - i <= static_cast<size_t>(extra)) return false;
    for (int k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      code_point = (code_point << 6) | (cc & 0x3F);
    }
    if (code_point < min_code_point || code_point > 0x10FFFF ||
        (code_point >= 0xD800 && code_point <= 0xDFFF)) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

// --- engine → wire ---------------------------------------------------------

v1::DType DTypeToProto(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return v1::DTYPE_F32;
    case DType::kI32:
      return v1::DTYPE_I32;
  }
  return v1::DTYPE_UNSPECIFIED;
}

void TypeToProto(const TensorType& type, v1::TensorType* out) {
  out->set_dtype(DTypeToProto(type.dtype));
  for (int64_t d : type.shape) out->add_dims(d);
}

void SliceToProto(const SliceAttrs& a, v1::SliceAttrs* out) {
  for (int64_t v : a.begin) out->add_begin(v);
  for (int64_t v : a.end) out->add_end(v);
  for (int64_t v : a.step) out->add_step(v);
}

v1::ParamRole RoleToProto(ParamRole role) {
  switch (role) {
    case ParamRole::kWeight:
      return v1::PARAM_ROLE_WEIGHT;
    case ParamRole::kOptimizerState:
      return v1::PARAM_ROLE_OPTIMIZER_STATE;
    case ParamRole::kBuffer:
      return v1::PARAM_ROLE_BUFFER;
  }
  return v1::PARAM_ROLE_UNSPECIFIED;
}

// Engine ActivationFn ↔ wire, in enum order.
constexpr std::pair<ActivationFn, v1::ActivationFn> kActivationFns[] = {
    {ActivationFn::kRelu6, v1::ACTIVATION_FN_RELU6},
    {ActivationFn::kSilu, v1::ACTIVATION_FN_SILU},
    {ActivationFn::kGeluTanh, v1::ACTIVATION_FN_GELU_TANH},
    {ActivationFn::kGeluErf, v1::ACTIVATION_FN_GELU_ERF},
    {ActivationFn::kSigmoid, v1::ACTIVATION_FN_SIGMOID},
    {ActivationFn::kTanh, v1::ACTIVATION_FN_TANH},
};

constexpr bool ActivationFnsFollowEnumOrder() {
  for (size_t i = 0; i < std::size(kActivationFns); ++i) {
    if (static_cast<size_t>(kActivationFns[i].first) != i) return false;
  }
  return std::size(kActivationFns) == static_cast<size_t>(ActivationFn::kTanh) + 1;
}
static_assert(ActivationFnsFollowEnumOrder(), "one kActivationFns row per ActivationFn, in order");

void ConvToProto(const Conv2dAttrs& a, v1::Conv2dAttrs* out) {
  out->set_stride_h(a.stride_h);
  out->set_stride_w(a.stride_w);
  out->set_pad_h(a.pad_h);
  out->set_pad_w(a.pad_w);
  out->set_dilation_h(a.dilation_h);
  out->set_dilation_w(a.dilation_w);
  out->set_groups(a.groups);
}

void PoolToProto(const Pool2dAttrs& a, v1::Pool2dAttrs* out) {
  out->set_kernel_h(a.kernel_h);
  out->set_kernel_w(a.kernel_w);
  out->set_stride_h(a.stride_h);
  out->set_stride_w(a.stride_w);
  out->set_pad_h(a.pad_h);
  out->set_pad_w(a.pad_w);
  out->set_count_include_pad(a.count_include_pad);
}

// FusedActivationFn's wire values are the engine's plus one (0 is UNSPECIFIED).
v1::FusedActivationFn FusedActToProto(FusedActivationFn act) {
  return static_cast<v1::FusedActivationFn>(static_cast<int>(act) + 1);
}

absl::StatusOr<FusedActivationFn> FusedActFromProto(int wire) {
  if (wire == v1::FUSED_ACTIVATION_FN_UNSPECIFIED) {
    return absl::InvalidArgumentError("fused activation fn is unspecified");
  }
  if (wire < 0 || wire > static_cast<int>(FusedActivationFn::kTanh) + 1) {
    return absl::InvalidArgumentError(absl::StrCat("unknown fused activation fn ", wire));
  }
  return static_cast<FusedActivationFn>(wire - 1);
}

// Whether an elementwise-chain step carries an activation function.
bool StepReadsFn(OpKind op) { return op == OpKind::kActivation || op == OpKind::kActivationGrad; }

absl::StatusOr<ActivationFn> ActivationFnFromProto(int fn) {
  for (const auto& [engine, wire] : kActivationFns) {
    if (static_cast<int>(wire) == fn) return engine;
  }
  return absl::InvalidArgumentError(fn == v1::ACTIVATION_FN_UNSPECIFIED
                                        ? std::string("activation fn is unspecified")
                                        : absl::StrCat("unknown activation fn ", fn));
}

void MatMulToProto(const MatMulAttrs& a, v1::MatMulAttrs* m) {
  m->set_transpose_a(a.transpose_a);
  m->set_transpose_b(a.transpose_b);
  if (a.alpha != 1.0f) m->set_alpha(a.alpha);
  m->set_interleaved_a(a.interleaved_a);
  m->set_interleaved_b(a.interleaved_b);
  m->set_interleaved_y(a.interleaved_y);
}

MatMulAttrs MatMulFromProto(const v1::MatMulAttrs& m) {
  MatMulAttrs a;
  a.transpose_a = m.transpose_a();
  a.transpose_b = m.transpose_b();
  a.alpha = m.alpha() == 0.0f ? 1.0f : m.alpha();
  // Past kMaxRank no shape fits; kMatMul's shape inference rejects the node.
  auto heads = [](uint32_t k) { return static_cast<int>(std::min<uint32_t>(k, kMaxRank + 1)); };
  a.interleaved_a = heads(m.interleaved_a());
  a.interleaved_b = heads(m.interleaved_b());
  a.interleaved_y = heads(m.interleaved_y());
  return a;
}

void SgdToProto(const SgdAttrs& a, v1::SgdAttrs* s) {
  s->set_lr(a.lr);
  s->set_momentum(a.momentum);
  s->set_weight_decay(a.weight_decay);
  s->set_rows(a.rows);
}

SgdAttrs SgdFromProto(const v1::SgdAttrs& s) {
  return SgdAttrs{s.lr(), s.momentum(), s.weight_decay(), s.rows()};
}

// Sets the oneof from `attrs` and returns the case it set.
v1::Node::AttrsCase AttrsToProto(const Attrs& attrs, v1::Node* out) {
  std::visit(
      Overloaded{
          [](const NoAttrs&) {},
          [&](const ParameterAttrs& a) { out->mutable_parameter()->set_role(RoleToProto(a.role)); },
          [&](const MatMulAttrs& a) { MatMulToProto(a, out->mutable_matmul()); },
          [&](const ShapeAttrs& a) {
            v1::ShapeAttrs* s = out->mutable_shape();
            for (int64_t d : a.shape) s->add_shape(d);
          },
          [&](const ReduceAttrs& a) {
            v1::ReduceAttrs* r = out->mutable_reduce();
            for (int axis : a.axes) r->add_axes(axis);
            r->set_keep_dims(a.keep_dims);
          },
          [&](const ScalarAttrs& a) { out->mutable_scalar()->set_value(a.value); },
          [&](const FillAttrs& a) {
            v1::FillAttrs* f = out->mutable_fill();
            f->set_value(a.value);
            for (int64_t d : a.shape) f->add_shape(d);
          },
          [&](const CrossEntropyAttrs& a) {
            out->mutable_cross_entropy()->set_ignore_index(a.ignore_index);
          },
          [&](const SgdAttrs& a) { SgdToProto(a, out->mutable_sgd()); },
          [&](const AdamWAttrs& a) {
            v1::AdamWAttrs* w = out->mutable_adamw();
            w->set_lr(a.lr);
            w->set_beta1(a.beta1);
            w->set_beta2(a.beta2);
            w->set_eps(a.eps);
            w->set_weight_decay(a.weight_decay);
            w->set_rows(a.rows);
          },
          [&](const NormAttrs& a) { out->mutable_norm()->set_eps(a.eps); },
          [&](const SoftmaxAttrs& a) { out->mutable_softmax()->set_causal(a.causal); },
          [&](const PermuteAttrs& a) {
            for (int p : a.perm) out->mutable_permute()->add_perm(p);
          },
          [&](const AxisAttrs& a) { out->mutable_axis()->set_axis(a.axis); },
          [&](const SliceAttrs& a) { SliceToProto(a, out->mutable_slice()); },
          [&](const SliceGradAttrs& a) {
            v1::SliceGradAttrs* g = out->mutable_slice_grad();
            SliceToProto(a.slice, g->mutable_slice());
            for (int64_t d : a.input_shape) g->add_input_shape(d);
          },
          [&](const RopeAttrs& a) {
            v1::RopeAttrs* r = out->mutable_rope();
            r->set_base(a.base);
            r->set_inverse(a.inverse);
          },
          [&](const Conv2dAttrs& a) { ConvToProto(a, out->mutable_conv2d()); },
          [&](const Conv2dGradAttrs& a) {
            v1::Conv2dGradAttrs* g = out->mutable_conv2d_grad();
            ConvToProto(a.conv, g->mutable_conv());
            for (int64_t d : a.shape) g->add_shape(d);
          },
          [&](const Pool2dAttrs& a) { PoolToProto(a, out->mutable_pool2d()); },
          [&](const Pool2dGradAttrs& a) {
            v1::Pool2dGradAttrs* g = out->mutable_pool2d_grad();
            PoolToProto(a.pool, g->mutable_pool());
            for (int64_t d : a.input_shape) g->add_input_shape(d);
          },
          [&](const BatchNormAttrs& a) {
            v1::BatchNormAttrs* b = out->mutable_batch_norm();
            b->set_eps(a.eps);
            b->set_momentum(a.momentum);
          },
          [&](const ActivationAttrs& a) {
            out->mutable_activation()->set_fn(kActivationFns[static_cast<int>(a.fn)].second);
          },
          [&](const DropoutAttrs& a) {
            v1::DropoutAttrs* d = out->mutable_dropout();
            d->set_p(a.p);
            d->set_seed(a.seed);
          },
          [&](const FusedConvAttrs& a) {
            v1::FusedConvAttrs* f = out->mutable_fused_conv();
            ConvToProto(a.conv, f->mutable_conv());
            f->set_act(FusedActToProto(a.act));
          },
          [&](const FusedActivationAttrs& a) {
            out->mutable_fused_activation()->set_act(FusedActToProto(a.act));
          },
          [&](const FusedNormAttrs& a) {
            v1::FusedNormAttrs* f = out->mutable_fused_norm();
            f->mutable_norm()->set_eps(a.norm.eps);
            f->set_act(FusedActToProto(a.act));
          },
          [&](const ElementwiseChainAttrs& a) {
            v1::ElementwiseChainAttrs* c = out->mutable_elementwise_chain();
            for (const ElementwiseStep& step : a.steps) {
              v1::ElementwiseStep* s = c->add_steps();
              // Graphs reaching here verified: step ops are valid kinds.
              s->set_op(kOps[static_cast<int>(step.op)].wire);
              s->set_a(step.a);
              s->set_b(step.b);
              if (StepReadsFn(step.op)) s->set_fn(kActivationFns[static_cast<int>(step.fn)].second);
              s->set_value(step.value);
            }
          },
          [&](const FusedSgdAttrs& a) {
            v1::FusedSgdAttrs* f = out->mutable_fused_sgd();
            SgdToProto(a.sgd, f->mutable_sgd());
            MatMulToProto(a.product, f->mutable_product());
          },
          [&](const FusedBatchNormAttrs& a) {
            v1::FusedBatchNormAttrs* f = out->mutable_fused_batch_norm();
            f->mutable_bn()->set_eps(a.bn.eps);
            f->mutable_bn()->set_momentum(a.bn.momentum);
            f->set_act(FusedActToProto(a.act));
          },
      },
      attrs);
  return out->attrs_case();
}

// --- wire → engine ---------------------------------------------------------

absl::StatusOr<DType> DTypeFromProto(int dtype) {
  switch (dtype) {
    case v1::DTYPE_F32:
      return DType::kF32;
    case v1::DTYPE_I32:
      return DType::kI32;
    case v1::DTYPE_UNSPECIFIED:
      return absl::InvalidArgumentError("dtype is unspecified");
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype ", dtype));
}

absl::StatusOr<Shape> ShapeFromProto(const google::protobuf::RepeatedField<int64_t>& dims) {
  Shape shape(dims.begin(), dims.end());
  RETURN_IF_ERROR(ValidateShape(shape));
  return shape;
}

absl::StatusOr<TensorType> TypeFromProto(const v1::TensorType& type) {
  TensorType out;
  ASSIGN_OR_RETURN(out.dtype, DTypeFromProto(type.dtype()));
  ASSIGN_OR_RETURN(out.shape, ShapeFromProto(type.dims()));
  return out;
}

// Bounds are checked by the op's shape inference when the graph verifies.
SliceAttrs SliceFromProto(const v1::SliceAttrs& s) {
  return SliceAttrs{{s.begin().begin(), s.begin().end()},
                    {s.end().begin(), s.end().end()},
                    {s.step().begin(), s.step().end()}};
}

// Field ranges are checked by the op's shape inference when the graph verifies.
Conv2dAttrs ConvFromProto(const v1::Conv2dAttrs& c) {
  return Conv2dAttrs{c.stride_h(),   c.stride_w(),   c.pad_h(), c.pad_w(),
                     c.dilation_h(), c.dilation_w(), c.groups()};
}

Pool2dAttrs PoolFromProto(const v1::Pool2dAttrs& p) {
  return Pool2dAttrs{p.kernel_h(), p.kernel_w(), p.stride_h(),         p.stride_w(),
                     p.pad_h(),    p.pad_w(),    p.count_include_pad()};
}

// The caller has checked that the case is the one the op takes.
absl::StatusOr<Attrs> AttrsFromProto(const v1::Node& node) {
  switch (node.attrs_case()) {
    case v1::Node::ATTRS_NOT_SET:
      return NoAttrs{};
    case v1::Node::kParameter:
      switch (node.parameter().role()) {
        case v1::PARAM_ROLE_WEIGHT:
          return ParameterAttrs{ParamRole::kWeight};
        case v1::PARAM_ROLE_OPTIMIZER_STATE:
          return ParameterAttrs{ParamRole::kOptimizerState};
        case v1::PARAM_ROLE_BUFFER:
          return ParameterAttrs{ParamRole::kBuffer};
        case v1::PARAM_ROLE_UNSPECIFIED:
          return absl::InvalidArgumentError("parameter role is unspecified");
        default:
          return absl::InvalidArgumentError(
              absl::StrCat("unknown parameter role ", static_cast<int>(node.parameter().role())));
      }
    case v1::Node::kMatmul:
      return MatMulFromProto(node.matmul());
    case v1::Node::kShape: {
      ShapeAttrs attrs;
      ASSIGN_OR_RETURN(attrs.shape, ShapeFromProto(node.shape().shape()));
      return attrs;
    }
    case v1::Node::kReduce: {
      const v1::ReduceAttrs& r = node.reduce();
      return ReduceAttrs{std::vector<int>(r.axes().begin(), r.axes().end()), r.keep_dims()};
    }
    case v1::Node::kScalar:
      return ScalarAttrs{node.scalar().value()};
    case v1::Node::kFill: {
      FillAttrs attrs;
      attrs.value = node.fill().value();
      ASSIGN_OR_RETURN(attrs.shape, ShapeFromProto(node.fill().shape()));
      return attrs;
    }
    case v1::Node::kCrossEntropy:
      return CrossEntropyAttrs{node.cross_entropy().ignore_index()};
    case v1::Node::kSgd:
      return SgdFromProto(node.sgd());
    case v1::Node::kFusedSgd: {
      const v1::FusedSgdAttrs& f = node.fused_sgd();
      return FusedSgdAttrs{SgdFromProto(f.sgd()), MatMulFromProto(f.product())};
    }
    case v1::Node::kAdamw: {
      const v1::AdamWAttrs& a = node.adamw();
      return AdamWAttrs{a.lr(), a.beta1(), a.beta2(), a.eps(), a.weight_decay(), a.rows()};
    }
    case v1::Node::kNorm:
      return NormAttrs{node.norm().eps()};
    case v1::Node::kSoftmax:
      return SoftmaxAttrs{node.softmax().causal()};
    case v1::Node::kPermute:
      return PermuteAttrs{
          std::vector<int>(node.permute().perm().begin(), node.permute().perm().end())};
    case v1::Node::kAxis:
      return AxisAttrs{node.axis().axis()};
    case v1::Node::kSlice:
      return SliceFromProto(node.slice());
    case v1::Node::kSliceGrad: {
      SliceGradAttrs attrs;
      attrs.slice = SliceFromProto(node.slice_grad().slice());
      ASSIGN_OR_RETURN(attrs.input_shape, ShapeFromProto(node.slice_grad().input_shape()));
      return attrs;
    }
    case v1::Node::kRope:
      return RopeAttrs{node.rope().base(), node.rope().inverse()};
    case v1::Node::kConv2D:
      return ConvFromProto(node.conv2d());
    case v1::Node::kConv2DGrad: {
      Conv2dGradAttrs attrs;
      attrs.conv = ConvFromProto(node.conv2d_grad().conv());
      ASSIGN_OR_RETURN(attrs.shape, ShapeFromProto(node.conv2d_grad().shape()));
      return attrs;
    }
    case v1::Node::kPool2D:
      return PoolFromProto(node.pool2d());
    case v1::Node::kPool2DGrad: {
      Pool2dGradAttrs attrs;
      attrs.pool = PoolFromProto(node.pool2d_grad().pool());
      ASSIGN_OR_RETURN(attrs.input_shape, ShapeFromProto(node.pool2d_grad().input_shape()));
      return attrs;
    }
    case v1::Node::kBatchNorm:
      return BatchNormAttrs{node.batch_norm().eps(), node.batch_norm().momentum()};
    case v1::Node::kActivation: {
      ASSIGN_OR_RETURN(ActivationFn fn,
                       ActivationFnFromProto(static_cast<int>(node.activation().fn())));
      return ActivationAttrs{fn};
    }
    case v1::Node::kDropout:
      return DropoutAttrs{node.dropout().p(), node.dropout().seed()};
    case v1::Node::kFusedConv: {
      ASSIGN_OR_RETURN(FusedActivationFn act, FusedActFromProto(node.fused_conv().act()));
      return FusedConvAttrs{ConvFromProto(node.fused_conv().conv()), act};
    }
    case v1::Node::kFusedActivation: {
      ASSIGN_OR_RETURN(FusedActivationFn act, FusedActFromProto(node.fused_activation().act()));
      return FusedActivationAttrs{act};
    }
    case v1::Node::kFusedNorm: {
      ASSIGN_OR_RETURN(FusedActivationFn act, FusedActFromProto(node.fused_norm().act()));
      return FusedNormAttrs{NormAttrs{node.fused_norm().norm().eps()}, act};
    }
    case v1::Node::kElementwiseChain: {
      const auto& steps = node.elementwise_chain().steps();
      if (steps.size() > kMaxElementwiseChainSteps) {
        return absl::InvalidArgumentError(
            absl::StrCat(steps.size(), " steps, more than ", kMaxElementwiseChainSteps));
      }
      ElementwiseChainAttrs attrs;
      for (int k = 0; k < steps.size(); ++k) {
        const v1::ElementwiseStep& in = steps[k];
        const OpRow* row = FindWireOp(static_cast<int>(in.op()));
        if (row == nullptr) {
          return absl::InvalidArgumentError(
              absl::StrCat("step ", k, ": unknown op ", static_cast<int>(in.op())));
        }
        ElementwiseStep step;
        step.op = row->engine;
        step.a = in.a();
        step.b = in.b();
        step.value = in.value();
        if (StepReadsFn(step.op)) {
          absl::StatusOr<ActivationFn> fn = ActivationFnFromProto(static_cast<int>(in.fn()));
          if (!fn.ok()) {
            return absl::InvalidArgumentError(
                absl::StrCat("step ", k, ": ", fn.status().message()));
          }
          step.fn = *fn;
        } else if (in.fn() != v1::ACTIVATION_FN_UNSPECIFIED) {
          return absl::InvalidArgumentError(
              absl::StrCat("step ", k, ": ", ops::GetOpDef(step.op).name, " takes no fn"));
        }
        attrs.steps.push_back(step);
      }
      // Operands, ops and arity are checked by the op's shape inference.
      return attrs;
    }
    case v1::Node::kFusedBatchNorm: {
      ASSIGN_OR_RETURN(FusedActivationFn act, FusedActFromProto(node.fused_batch_norm().act()));
      const v1::BatchNormAttrs& bn = node.fused_batch_norm().bn();
      return FusedBatchNormAttrs{BatchNormAttrs{bn.eps(), bn.momentum()}, act};
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown attributes case ", static_cast<int>(node.attrs_case())));
}

absl::Status WithPath(const std::string& path, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(path, ": ", status.message()));
}

}  // namespace

absl::StatusOr<v1::OpKind> OpKindToProto(OpKind op) {
  const int index = static_cast<int>(op);
  if (index < 0 || index >= kNumOpKinds) {
    return absl::InvalidArgumentError(absl::StrCat("unknown engine op kind ", index));
  }
  return kOps[index].wire;
}

absl::StatusOr<OpKind> OpKindFromProto(v1::OpKind op) {
  if (op == v1::OP_KIND_UNSPECIFIED) return absl::InvalidArgumentError("op is unspecified");
  const OpRow* row = FindWireOp(static_cast<int>(op));
  if (row == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown op ", static_cast<int>(op)));
  }
  return row->engine;
}

absl::StatusOr<v1::Graph> GraphToProto(const Graph& graph) {
  RETURN_IF_ERROR(VerifyGraph(graph));
  v1::Graph proto;
  proto.mutable_nodes()->Reserve(graph.num_nodes());
  for (ValueId id = 0; id < graph.num_nodes(); ++id) {
    const Node& node = graph.node(id);
    // VerifyGraph rejected kinds >= kCount.
    const OpRow& row = kOps[static_cast<int>(node.op)];
    v1::Node* out = proto.add_nodes();
    out->set_op(row.wire);
    out->mutable_inputs()->Reserve(static_cast<int>(node.inputs.size()));
    for (ValueId in : node.inputs) out->add_inputs(in);
    const v1::Node::AttrsCase attrs_case = AttrsToProto(node.attrs, out);
    if (attrs_case != row.attrs) {
      return NodeError(id, node.op, AttrsMismatch(row.attrs, attrs_case));
    }
    TypeToProto(node.type, out->mutable_type());
    out->set_has_output(node.has_output);
    if (!IsValidUtf8(node.name)) {
      return NodeError(id, node.op, "name '", absl::CHexEscape(node.name), "' is not valid UTF-8");
    }
    out->set_name(node.name);
  }
  for (ValueId out : graph.outputs()) proto.add_outputs(out);
  return proto;
}

absl::StatusOr<Graph> GraphFromProto(const v1::Graph& proto) {
  const int num_nodes = proto.nodes_size();
  if (num_nodes > kMaxGraphNodes) {
    return absl::InvalidArgumentError(
        absl::StrCat("graph has ", num_nodes, " nodes, more than the limit of ", kMaxGraphNodes));
  }
  Graph graph;
  for (int id = 0; id < num_nodes; ++id) {
    const v1::Node& in = proto.nodes(id);
    if (in.op() == v1::OP_KIND_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrCat("node ", id, ": op is unspecified"));
    }
    const OpRow* row = FindWireOp(static_cast<int>(in.op()));
    if (row == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("node ", id, ": unknown op ", static_cast<int>(in.op())));
    }
    Node node;
    node.op = row->engine;
    node.inputs.reserve(in.inputs_size());
    for (int32_t input : in.inputs()) {
      if (input < 0 || input >= id) {
        return NodeError(id, node.op, "input %", input, " is not an earlier node");
      }
      node.inputs.push_back(input);
    }
    if (in.attrs_case() != row->attrs) {
      return NodeError(id, node.op, AttrsMismatch(row->attrs, in.attrs_case()));
    }
    absl::StatusOr<Attrs> attrs = AttrsFromProto(in);
    if (!attrs.ok()) {
      return NodeError(id, node.op, AttrsName(row->attrs),
                       " attributes: ", attrs.status().message());
    }
    node.attrs = *std::move(attrs);
    absl::StatusOr<TensorType> type = TypeFromProto(in.type());
    if (!type.ok()) return NodeError(id, node.op, "type: ", type.status().message());
    node.type = *std::move(type);
    node.has_output = in.has_output();
    node.name = in.name();
    graph.AddUncheckedNode(std::move(node));
  }
  absl::flat_hash_set<int32_t> outputs;
  for (int32_t out : proto.outputs()) {
    if (out < 0 || out >= num_nodes) {
      return absl::InvalidArgumentError(absl::StrCat("output %", out, " is not a node"));
    }
    if (!outputs.insert(out).second) {
      return absl::InvalidArgumentError(absl::StrCat("output %", out, " is listed twice"));
    }
    graph.MarkOutput(out);
  }
  RETURN_IF_ERROR(VerifyGraph(graph));
  return graph;
}

absl::StatusOr<v1::CompiledPlan> ParsePlan(absl::string_view bytes) {
  if (bytes.size() > static_cast<size_t>(kMaxPlanBytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan is ", bytes.size(), " bytes, over the limit of ", kMaxPlanBytes));
  }
  v1::CompiledPlan plan;
  if (!plan.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError(absl::StrCat("the ", bytes.size(),
                                            " bytes do not parse as a fleettune.v1.CompiledPlan "
                                            "(truncated or corrupted)"));
  }
  if (plan.format_version() == 0) {
    return absl::InvalidArgumentError("plan has no format_version");
  }
  if (plan.format_version() > kPlanFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat("plan format_version ", plan.format_version(),
                                                      " is newer than this build reads (",
                                                      kPlanFormatVersion, ")"));
  }
  return plan;
}

absl::Status WritePlan(const std::string& path, const v1::CompiledPlan& plan) {
  if (plan.format_version() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": plan has no format_version"));
  }
  const size_t size = plan.ByteSizeLong();
  if (size > static_cast<size_t>(kMaxPlanBytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": plan is ", size, " bytes, over the limit of ", kMaxPlanBytes));
  }
  std::string bytes;
  if (!plan.SerializeToString(&bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": plan does not serialize"));
  }
  // Refuse to write what ReadPlan would reject (e.g. a string field holding
  // invalid UTF-8, which proto3 serializes but will not parse).
  if (absl::Status readable = ParsePlan(bytes).status(); !readable.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": plan would not read back: ", readable.message()));
  }
  return WriteFileAtomically(path, bytes);
}

absl::StatusOr<v1::CompiledPlan> ReadPlan(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path, kMaxPlanBytes));
  absl::StatusOr<v1::CompiledPlan> plan = ParsePlan(bytes);
  if (!plan.ok()) return WithPath(path, plan.status());
  return plan;
}

}  // namespace fleettune::engine::plan
