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
  kCount,
};

constexpr int kNumOpKinds = static_cast<int>(OpKind::kCount);

}  // namespace fleettune::engine

#endif  // FLEETTUNE_ENGINE_IR_OP_KIND_H_
