#include "engine/compile/cost.h"

#include <variant>

namespace fleettune::engine::compile {
namespace {

uint64_t Elements(const Shape& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

// Multiply-adds per output element of a convolution with weight shape
// [C_out, C_in / groups, kh, kw].
uint64_t ConvMacsPerOutput(const Shape& weight) {
  return weight.size() == 4 ? Elements({weight[1], weight[2], weight[3]}) : 0;
}

}  // namespace

uint64_t NodeFlops(const Graph& graph, ValueId id) {
  const Node& node = graph.node(id);
  auto in = [&](int i) -> const Shape& { return graph.type(node.inputs[i]).shape; };
  switch (node.op) {
    case OpKind::kInput:
    case OpKind::kParameter:
    case OpKind::kFill:
    case OpKind::kReshape:
      return 0;
    case OpKind::kLinear:
    case OpKind::kLinearActivation: {
      // y[..., N] = x[..., K] · W[N, K]ᵀ (+ b) (then the activation).
      const uint64_t k = in(1).size() == 2 ? static_cast<uint64_t>(in(1)[1]) : 0;
      return Elements(node.type.shape) * (2 * k + (node.inputs.size() > 2 ? 1 : 0) +
                                          (node.op == OpKind::kLinearActivation ? 1 : 0));
    }
    case OpKind::kConv2dActivation:
      return Elements(node.type.shape) * (2 * ConvMacsPerOutput(in(1)) + 1);
    case OpKind::kAddActivation:
    case OpKind::kBatchNormInferenceActivation:
    case OpKind::kLayerNormActivation:
    case OpKind::kRmsNormActivation:
      return 2 * Elements(node.type.shape);
    case OpKind::kElementwiseChain: {
      const auto* attrs = std::get_if<ElementwiseChainAttrs>(&node.attrs);
      return (attrs == nullptr ? 1 : attrs->steps.size()) * Elements(node.type.shape);
    }
    case OpKind::kMatMul: {
      const auto* attrs = std::get_if<MatMulAttrs>(&node.attrs);
      const Shape& a = in(0);
      if (attrs == nullptr || a.size() < 2) return 0;
      const int64_t k = attrs->transpose_a ? a[a.size() - 2] : a.back();
      return 2 * Elements(node.type.shape) * static_cast<uint64_t>(k);
    }
    case OpKind::kConv2d:  // (x, w[, b]) → y
      return 2 * Elements(node.type.shape) * ConvMacsPerOutput(in(1));
    case OpKind::kConv2dBackwardInput:  // (dy, w) → dx: one MAC per dy element and tap
      return 2 * Elements(in(0)) * ConvMacsPerOutput(in(1));
    case OpKind::kConv2dBackwardWeight:  // (x, dy) → dw
      return 2 * Elements(in(1)) * ConvMacsPerOutput(node.type.shape);
    case OpKind::kActivationMask:  // two compares per element of y
      return 2 * Elements(in(0));
    case OpKind::kSgdMatMulUpdate: {  // (p, a, b[, buf]): g = op(a)·op(b), then 3 per element
      const auto* attrs = std::get_if<FusedSgdAttrs>(&node.attrs);
      const Shape& a = in(1);
      const Shape& b = in(2);
      if (attrs == nullptr || a.size() != 2 || b.size() != 2) return 0;
      const bool ta = attrs->product.transpose_a, tb = attrs->product.transpose_b;
      const uint64_t m = ta ? a[1] : a[0], k = ta ? a[0] : a[1], n = tb ? b[0] : b[1];
      return m * n * (2 * k + 3);
    }
    case OpKind::kSgdUpdate:
    case OpKind::kAdamWUpdate:
      return Elements(in(1)) * (node.op == OpKind::kSgdUpdate ? 3 : 10);  // per gradient element
    default:
      return Elements(node.type.shape);
  }
}

uint64_t StepFlops(const Graph& graph) {
  uint64_t total = 0;
  for (ValueId id = 0; id < graph.num_nodes(); ++id) total += NodeFlops(graph, id);
  return total;
}

}  // namespace fleettune::engine::compile
