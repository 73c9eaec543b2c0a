// The closed list of operation kinds.
//
// Every kind has exactly one OpDef (engine/ops/op_registry.h) holding its shape
// inference, reference kernel and gradient rule. Append new kinds before kCount.
#ifndef FLEETTUNE_ENGINE_IR_OP_KIND_H_
#define FLEETTUNE_ENGINE_IR_OP_KIND_H_

#include <cstdint>

namespace fleettune::engine {

enum class OpKind : uint8_t {
  // Sources.
  kInput,      // per-step data bound by the caller (images, labels)
  kParameter,  // persistent state: weights and optimizer buffers
  kFill,       // constant tensor, every element the same
  // Forward ops.
  kMatMul,
  kLinear,
  kAdd,
  kMul,
  kScale,
  kRelu,
  kReshape,
  kReduceSum,
  kReduceMean,
  kBroadcastTo,
  kSoftmaxCrossEntropy,
  // Ops that only gradient rules emit.
  kReluGrad,
  kSoftmaxCrossEntropyGrad,
  // Optimizer updates: no output, they write their parameter and state inputs.
  kSgdUpdate,
  kAdamWUpdate,
  // CNN ops (engine/ops/conv.cc, batch_norm.cc, pool.cc, activation.cc,
  // dropout.cc, mse_loss.cc).
  kConv2d,
  kConv2dBackwardInput,
  kConv2dBackwardWeight,
  kBatchNorm,           // training mode: batch statistics
  kBatchNormInference,  // frozen running statistics
  kBatchNormGrad,
  kBatchNormInferenceGrad,
  kBatchNormWeightGrad,
  kBatchNormStatsUpdate,  // no output: updates the running statistics in place
  kMaxPool2d,
  kMaxPool2dGrad,
  kAvgPool2d,
  kAvgPool2dGrad,
  kActivation,
  kActivationGrad,
  kDropout,
  kMseLoss,
  kMseLossGrad,
  // Transformer ops (engine/ops/elementwise.cc, layer_norm.cc, embedding.cc,
  // softmax.cc, transpose.cc, concat_slice.cc, rope.cc).
  kSub,
  kDiv,
  kLayerNorm,
  kLayerNormGrad,
  kRmsNorm,
  kRmsNormGrad,
  kEmbedding,
  kEmbeddingGrad,
  kSoftmax,
  kSoftmaxGrad,
  kTranspose,
  kConcat,
  kSlice,
  kSliceGrad,
  kRope,
  // Fused ops (engine/ops/fused.cc), emitted only by the fusion pass
  // (engine/passes/fuse.h, fuse_elementwise.h) after autodiff: op + activation
  // in one kernel; elementwise chains in one loop.
  kConv2dActivation,
  kLinearActivation,
  kBatchNormInferenceActivation,
  kAddActivation,
  kLayerNormActivation,  // layer_norm + activation
  kRmsNormActivation,    // rms_norm + activation
  kElementwiseChain,     // a chain of elementwise ops run as one pass over the data
  // A ReLU's or ReLU6's output packed to one bit per element for its
  // gradient, emitted only by the pack_masks pass (engine/ops/activation_mask.cc).
  kActivationMask,
  kMaskedGrad,
  // kSgdUpdate with the gradient given as a product of two matrices, emitted
  // only by the fuse_updates pass (engine/passes/fuse_updates.h): the weight
  // gradient's GEMM accumulates straight into the momentum buffer.
  kSgdMatMulUpdate,
  kCount,
};

constexpr int kNumOpKinds = static_cast<int>(OpKind::kCount);

}  // namespace fleettune::engine

#endif  // FLEETTUNE_ENGINE_IR_OP_KIND_H_
