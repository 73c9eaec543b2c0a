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

#include "engine/ir/tensor.h"

namespace fleettune::engine {

struct NoAttrs {
  bool operator==(const NoAttrs&) const { return true; }
};

// What a kParameter node holds across steps.
enum class ParamRole : uint8_t {
  kWeight,          // model weight, loaded from / saved to checkpoints
  kOptimizerState,  // momentum buffer, Adam moments
};

struct ParameterAttrs {
  ParamRole role = ParamRole::kWeight;
  bool operator==(const ParameterAttrs& o) const { return role == o.role; }
};

// y = op(a) · op(b), op = transpose when the flag is set. 2-D only.
struct MatMulAttrs {
  bool transpose_a = false;
  bool transpose_b = false;
  bool operator==(const MatMulAttrs& o) const {
    return transpose_a == o.transpose_a && transpose_b == o.transpose_b;
  }
};

// Target shape for kReshape and kBroadcastTo.
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
struct SgdAttrs {
  float lr = 0.01f;
  float momentum = 0.0f;
  float weight_decay = 0.0f;
  bool operator==(const SgdAttrs& o) const {
    return lr == o.lr && momentum == o.momentum && weight_decay == o.weight_decay;
  }
};

// torch.optim.AdamW semantics (decoupled weight decay, bias correction).
struct AdamWAttrs {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 1e-2f;
  bool operator==(const AdamWAttrs& o) const {
    return lr == o.lr && beta1 == o.beta1 && beta2 == o.beta2 && eps == o.eps &&
           weight_decay == o.weight_decay;
  }
};

using Attrs = std::variant<NoAttrs, ParameterAttrs, MatMulAttrs, ShapeAttrs, ReduceAttrs,
                           ScalarAttrs, FillAttrs, CrossEntropyAttrs, SgdAttrs, AdamWAttrs>;

}  // namespace fleettune::engine

#endif  // FLEETTUNE_ENGINE_IR_ATTRS_H_
