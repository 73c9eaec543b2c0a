// Typed per-op attributes.
//
// Each op that has attributes gets one plain struct here; a node stores them in
// the `Attrs` variant. Ops without attributes use `NoAttrs`. Structs compare by
// value so passes can deduplicate nodes and tests can compare graphs.
#ifndef FLEETTUNE_ENGINE_IR_ATTRS_H_
#define FLEETTUNE_ENGINE_IR_ATTRS_H_

#include <cstdint>
#include <variant>
#include <vector>

#include "engine/ir/op_kind.h"
#include "engine/ir/tensor.h"

namespace fleettune::engine {

struct NoAttrs {
  bool operator==(const NoAttrs&) const { return true; }
};

// What a kParameter node holds across steps.
enum class ParamRole : uint8_t {
  kWeight,          // model weight, loaded from / saved to checkpoints
  kOptimizerState,  // momentum buffer, Adam moments
  kBuffer,          // model state that is saved with the weights but never trained
                    // (BatchNorm running statistics; PyTorch's module buffers)
};

struct ParameterAttrs {
  ParamRole role = ParamRole::kWeight;
  bool operator==(const ParameterAttrs& o) const { return role == o.role; }
};

// y = op(a) · op(b), op = transpose when the flag is set. 2-D only.
//
// The fuse pass (engine/passes/fold_matmul.h) also folds neighbours into a
// matmul, after autodiff (such a matmul has no gradient rule):
//   alpha            y = alpha · op(a) · op(b) (a power-of-two scale);
//   interleaved_* = k > 0   that operand, or y, is stored [..., T, H1..Hk, D]
//                    and taken as [..., H1..Hk, T, D]: attention's heads
//                    interleaved in each token's row, so the transposes that
//                    split and merge the heads are never copied. k = 2 takes
//                    grouped-query attention's [B, T, Hkv, G, D] as
//                    [B, Hkv, G, T, D]. Needs rank >= k + 2.
struct MatMulAttrs {
  bool transpose_a = false;
  bool transpose_b = false;
  float alpha = 1.0f;
  int interleaved_a = 0;
  int interleaved_b = 0;
  int interleaved_y = 0;
  bool folded() const {
    return alpha != 1.0f || interleaved_a != 0 || interleaved_b != 0 || interleaved_y != 0;
  }
  bool operator==(const MatMulAttrs& o) const {
    return transpose_a == o.transpose_a && transpose_b == o.transpose_b && alpha == o.alpha &&
           interleaved_a == o.interleaved_a && interleaved_b == o.interleaved_b &&
           interleaved_y == o.interleaved_y;
  }
};

// The stored dimension of a rank-`rank` value interleaved over `heads` head
// dimensions (MatMulAttrs) that its logical dimension d is: T (logical
// rank − 2) is stored before the heads, each head one later; d itself when
// heads == 0. As a kTranspose's perm over d, it takes the stored value to
// the logical one.
constexpr int InterleavedStoredDim(int rank, int heads, int d) {
  if (heads <= 0 || d < rank - 2 - heads || d == rank - 1) return d;
  return d == rank - 2 ? rank - 2 - heads : d + 1;
}

// The inverse: the logical dimension stored dimension s holds. As a perm, it
// takes the logical value to the stored one.
constexpr int InterleavedLogicalDim(int rank, int heads, int s) {
  if (heads <= 0 || s < rank - 2 - heads || s == rank - 1) return s;
  return s == rank - 2 - heads ? rank - 2 : s - 1;
}

// Target shape for kReshape and kBroadcastTo; the table's shape for
// kEmbeddingGrad.
struct ShapeAttrs {
  Shape shape;
  bool operator==(const ShapeAttrs& o) const { return shape == o.shape; }
};

// kReduceSum / kReduceMean over `axes` (sorted, unique, non-negative).
struct ReduceAttrs {
  std::vector<int> axes;
  bool keep_dims = false;
  bool operator==(const ReduceAttrs& o) const { return axes == o.axes && keep_dims == o.keep_dims; }
};

// kScale: y = value * x.
struct ScalarAttrs {
  float value = 0.0f;
  bool operator==(const ScalarAttrs& o) const { return value == o.value; }
};

// kFill: a constant tensor of `shape` with every element `value`.
struct FillAttrs {
  float value = 0.0f;
  Shape shape;
  bool operator==(const FillAttrs& o) const { return value == o.value && shape == o.shape; }
};

// kSoftmaxCrossEntropy: mean over samples whose label != ignore_index.
struct CrossEntropyAttrs {
  int32_t ignore_index = -100;
  bool operator==(const CrossEntropyAttrs& o) const { return ignore_index == o.ignore_index; }
};

// torch.optim.SGD semantics: g += wd·p; buf = momentum·buf + g; p -= lr·buf.
// rows > 0: a partial-channel update. Only rows [0, rows) of the parameter
// (its first `rows` output channels, dim 0) train; the gradient and the
// momentum buffer hold just those rows. 0 = the whole parameter.
struct SgdAttrs {
  float lr = 0.01f;
  float momentum = 0.0f;
  float weight_decay = 0.0f;
  int64_t rows = 0;
  bool operator==(const SgdAttrs& o) const {
    return lr == o.lr && momentum == o.momentum && weight_decay == o.weight_decay && rows == o.rows;
  }
};

// torch.optim.AdamW semantics (decoupled weight decay, bias correction).
struct AdamWAttrs {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 1e-2f;
  int64_t rows = 0;  // as in SgdAttrs: > 0 trains rows [0, rows) only
  bool operator==(const AdamWAttrs& o) const {
    return lr == o.lr && beta1 == o.beta1 && beta2 == o.beta2 && eps == o.eps &&
           weight_decay == o.weight_decay && rows == o.rows;
  }
};

// kConv2d (and, inside Conv2dGradAttrs, its backward ops): PyTorch's
// nn.Conv2d hyper-parameters. All strides and dilations >= 1, paddings >= 0
// (zero padding on both sides), groups >= 1 dividing both channel counts.
struct Conv2dAttrs {
  int32_t stride_h = 1;
  int32_t stride_w = 1;
  int32_t pad_h = 0;
  int32_t pad_w = 0;
  int32_t dilation_h = 1;
  int32_t dilation_w = 1;
  int32_t groups = 1;
  bool operator==(const Conv2dAttrs& o) const {
    return stride_h == o.stride_h && stride_w == o.stride_w && pad_h == o.pad_h &&
           pad_w == o.pad_w && dilation_h == o.dilation_h && dilation_w == o.dilation_w &&
           groups == o.groups;
  }
};

// kConv2dBackwardInput / kConv2dBackwardWeight: the forward convolution and
// the shape of the gradient the op computes (x's or the weight's), which its
// inputs do not determine (strided output sizes round down).
struct Conv2dGradAttrs {
  Conv2dAttrs conv;
  Shape shape;
  bool operator==(const Conv2dGradAttrs& o) const { return conv == o.conv && shape == o.shape; }
};

// kMaxPool2d, kMaxPool2dGrad, kAvgPool2d: PyTorch's nn.MaxPool2d /
// nn.AvgPool2d (floor mode, dilation 1). Padding is at most half the kernel.
// count_include_pad (average pooling only) divides by the full window size as
// PyTorch does by default; false divides by the in-bounds element count.
struct Pool2dAttrs {
  int32_t kernel_h = 1;
  int32_t kernel_w = 1;
  int32_t stride_h = 1;
  int32_t stride_w = 1;
  int32_t pad_h = 0;
  int32_t pad_w = 0;
  bool count_include_pad = true;
  bool operator==(const Pool2dAttrs& o) const {
    return kernel_h == o.kernel_h && kernel_w == o.kernel_w && stride_h == o.stride_h &&
           stride_w == o.stride_w && pad_h == o.pad_h && pad_w == o.pad_w &&
           count_include_pad == o.count_include_pad;
  }
};

// kAvgPool2dGrad: the forward pooling and the shape of its input.
struct Pool2dGradAttrs {
  Pool2dAttrs pool;
  Shape input_shape;
  bool operator==(const Pool2dGradAttrs& o) const {
    return pool == o.pool && input_shape == o.input_shape;
  }
};

// kBatchNorm, kBatchNormInference and their backward and update ops (PyTorch's
// nn.BatchNorm2d): eps is added to the variance; momentum weighs the batch
// statistics in the running-statistics update (only kBatchNormStatsUpdate
// reads it).
struct BatchNormAttrs {
  float eps = 1e-5f;
  float momentum = 0.1f;
  bool operator==(const BatchNormAttrs& o) const { return eps == o.eps && momentum == o.momentum; }
};

// Elementwise activation functions of kActivation / kActivationGrad.
enum class ActivationFn : uint8_t {
  kRelu6,     // min(max(x, 0), 6)
  kSilu,      // x·σ(x)
  kGeluTanh,  // 0.5x(1 + tanh(√(2/π)(x + 0.044715x³))), PyTorch's approximate="tanh"
  kGeluErf,   // 0.5x(1 + erf(x/√2)), PyTorch's default GELU
  kSigmoid,   // σ(x) = 1 / (1 + e⁻ˣ)
  kTanh,
};

struct ActivationAttrs {
  ActivationFn fn = ActivationFn::kSigmoid;
  bool operator==(const ActivationAttrs& o) const { return fn == o.fn; }
};

// kDropout: zeroes each element with probability p and scales the rest by
// 1/(1−p). The mask is a pure function of (seed, optimizer step, element
// index), so the backward pass recomputes the forward's mask (engine/ops/dropout.cc).
struct DropoutAttrs {
  float p = 0.5f;
  uint64_t seed = 0;
  bool operator==(const DropoutAttrs& o) const { return p == o.p && seed == o.seed; }
};

// kLayerNorm, kRmsNorm and their backward ops: eps is added to the variance
// (layer_norm) or the mean square (rms_norm) before the square root.
struct NormAttrs {
  float eps = 1e-5f;
  bool operator==(const NormAttrs& o) const { return eps == o.eps; }
};

// kSoftmax over the last dimension; causal masks column j of row i (dim −2)
// when j > i + (columns − rows), the bottom-right-aligned causal mask.
struct SoftmaxAttrs {
  bool causal = false;
  bool operator==(const SoftmaxAttrs& o) const { return causal == o.causal; }
};

// kTranspose: y.shape[i] = x.shape[perm[i]]; perm is a permutation of [0, rank).
struct PermuteAttrs {
  std::vector<int> perm;
  bool operator==(const PermuteAttrs& o) const { return perm == o.perm; }
};

// kConcat: the axis, in [0, rank).
struct AxisAttrs {
  int axis = 0;
  bool operator==(const AxisAttrs& o) const { return axis == o.axis; }
};

// kSlice: y = x[begin[d] : end[d] : step[d]] on every axis d; one entry per
// axis with 0 <= begin <= end <= dim and step >= 1.
struct SliceAttrs {
  std::vector<int64_t> begin;
  std::vector<int64_t> end;
  std::vector<int64_t> step;
  bool operator==(const SliceAttrs& o) const {
    return begin == o.begin && end == o.end && step == o.step;
  }
};

// kSliceGrad: the forward slice and the shape of the sliced input (the
// gradient's shape, which dy does not determine).
struct SliceGradAttrs {
  SliceAttrs slice;
  Shape input_shape;
  bool operator==(const SliceGradAttrs& o) const {
    return slice == o.slice && input_shape == o.input_shape;
  }
};

// kRope: rotary position embedding with θ_j = position · base^(−2j/D);
// inverse rotates by −θ (the gradient).
struct RopeAttrs {
  float base = 10000.0f;
  bool inverse = false;
  bool operator==(const RopeAttrs& o) const { return base == o.base && inverse == o.inverse; }
};

// The activation a fused op (engine/ops/fused.cc) applies to its result:
// kRelu is OpKind::kRelu, the others ActivationFn's function of that name.
enum class FusedActivationFn : uint8_t {
  kRelu,
  kRelu6,
  kSilu,
  kGeluTanh,
  kGeluErf,
  kSigmoid,
  kTanh,
};

// kConv2dActivation: act(conv2d(x, w[, b])).
struct FusedConvAttrs {
  Conv2dAttrs conv;
  FusedActivationFn act = FusedActivationFn::kRelu;
  bool operator==(const FusedConvAttrs& o) const { return conv == o.conv && act == o.act; }
};

// kLinearActivation: act(linear(x, w[, b])); kAddActivation: act(a + b).
struct FusedActivationAttrs {
  FusedActivationFn act = FusedActivationFn::kRelu;
  bool operator==(const FusedActivationAttrs& o) const { return act == o.act; }
};

// kBatchNormInferenceActivation: act(batch_norm_inference(x, mean, var, γ, β)).
struct FusedBatchNormAttrs {
  BatchNormAttrs bn;
  FusedActivationFn act = FusedActivationFn::kRelu;
  bool operator==(const FusedBatchNormAttrs& o) const { return bn == o.bn && act == o.act; }
};

// kLayerNormActivation: act(layer_norm(x[, w[, b]])); kRmsNormActivation:
// act(rms_norm(x[, w])).
struct FusedNormAttrs {
  NormAttrs norm;
  FusedActivationFn act = FusedActivationFn::kRelu;
  bool operator==(const FusedNormAttrs& o) const { return norm == o.norm && act == o.act; }
};

// The most steps one kElementwiseChain runs (and so at most this + 1 inputs).
inline constexpr int kMaxElementwiseChainSteps = 8;

// Of those, the ones with one operand (kScale, kRelu, kActivation).
inline bool IsUnaryElementwiseChainStepOp(OpKind op) {
  return op == OpKind::kScale || op == OpKind::kRelu || op == OpKind::kActivation;
}

// The ops a kElementwiseChain step may be (see ElementwiseStep).
inline bool IsElementwiseChainStepOp(OpKind op) {
  switch (op) {
    case OpKind::kAdd:
    case OpKind::kSub:
    case OpKind::kMul:
    case OpKind::kDiv:
    case OpKind::kScale:
    case OpKind::kRelu:
    case OpKind::kActivation:
    case OpKind::kReluGrad:
    case OpKind::kActivationGrad:
      return true;
    default:
      return false;
  }
}

// One step of kElementwiseChain: op `op` with that op's semantics on operands
// of the chain's shape. `op` is one of
//   kAdd, kSub, kMul, kDiv   binary: a op b
//   kScale                   value · a
//   kRelu, kActivation       unary: relu(a), fn(a)
//   kReluGrad                (a = dy, b = y) as relu_grad
//   kActivationGrad          (a = dy, b = v) as activation_grad with fn
// An operand is kPrevious (the previous step's result) or the index of one of
// the node's inputs. Unary steps read `a` only and keep b = kPrevious; `fn`
// keeps its default unless the op reads it (the verifier checks both);
// `value` is read by kScale only.
struct ElementwiseStep {
  static constexpr int32_t kPrevious = -1;
  OpKind op = OpKind::kAdd;
  int32_t a = 0;
  int32_t b = kPrevious;
  ActivationFn fn = ActivationFn::kRelu6;
  float value = 0.0f;
  bool operator==(const ElementwiseStep& o) const {
    return op == o.op && a == o.a && b == o.b && fn == o.fn && value == o.value;
  }
};

// kElementwiseChain: y = the last step's result; step 0 reads inputs only,
// every later step reads the previous result (at least once).
struct ElementwiseChainAttrs {
  std::vector<ElementwiseStep> steps;
  bool operator==(const ElementwiseChainAttrs& o) const { return steps == o.steps; }
};

// kSgdMatMulUpdate: kSgdUpdate whose gradient is the product op(a)·op(b)
// (kMatMul's semantics, both operands rank 2), never materialized.
struct FusedSgdAttrs {
  SgdAttrs sgd;
  MatMulAttrs product;
  bool operator==(const FusedSgdAttrs& o) const { return sgd == o.sgd && product == o.product; }
};

using Attrs =
    std::variant<NoAttrs, ParameterAttrs, MatMulAttrs, ShapeAttrs, ReduceAttrs, ScalarAttrs,
                 FillAttrs, CrossEntropyAttrs, SgdAttrs, AdamWAttrs, Conv2dAttrs, Conv2dGradAttrs,
                 Pool2dAttrs, Pool2dGradAttrs, BatchNormAttrs, ActivationAttrs, DropoutAttrs,
                 NormAttrs, SoftmaxAttrs, PermuteAttrs, AxisAttrs, SliceAttrs, SliceGradAttrs,
                 RopeAttrs, FusedConvAttrs, FusedActivationAttrs, FusedBatchNormAttrs,
                 FusedNormAttrs, ElementwiseChainAttrs, FusedSgdAttrs>;

}  // namespace fleettune::engine

#endif  // FLEETTUNE_ENGINE_IR_ATTRS_H_
