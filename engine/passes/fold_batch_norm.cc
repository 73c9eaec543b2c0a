#include "engine/passes/fold_batch_norm.h"

#include <algorithm>

#include "engine/base/status_macros.h"
#include "engine/passes/rewrite.h"

namespace fleettune::engine::passes {
namespace {

// The conv feeding BatchNorm node `bn` when the pair can fold, else kNoValue.
ValueId FoldableConv(const Graph& g, ValueId bn, const std::vector<std::vector<ValueId>>& users) {
  const Node& node = g.node(bn);
  if (node.op != OpKind::kBatchNormInference || node.inputs.size() != 5) return kNoValue;
  const ValueId conv = node.inputs[0];
  const Node& c = g.node(conv);
  if (c.op != OpKind::kConv2d || c.type.shape.size() != 4) return kNoValue;
  if (users[conv].size() != 1 || users[conv][0] != bn) return kNoValue;
  if (g.IsOutput(conv)) return kNoValue;
  return conv;
}

// The folded BatchNorm whose input gradient `grad` is, when `grad` is
// batch_norm_inference_grad(dy, σ², γ) of a BatchNorm in `folded_bn` (same
// statistics, scale and attributes), else kNoValue.
ValueId FoldedBatchNormOfGrad(const Graph& g, ValueId grad,
                              const std::vector<ValueId>& folded_bns) {
  const Node& node = g.node(grad);
  if (node.op != OpKind::kBatchNormInferenceGrad || node.inputs.size() != 3) return kNoValue;
  for (ValueId bn : folded_bns) {
    const Node& b = g.node(bn);
    if (b.inputs[2] == node.inputs[1] && b.inputs[3] == node.inputs[2] && b.attrs == node.attrs) {
      return bn;
    }
  }
  return kNoValue;
}

// Emits v·s per row along axis 0 of `v` (a new-graph value of shape
// `shape`), s = γ/√(σ² + eps) from the new-graph values `var` and `gamma`:
// batch_norm_inference with mean 0 and bias 0 over v viewed as [1, C, K].
absl::StatusOr<ValueId> EmitRowScaled(GraphRewriter& rw, ValueId v, const Shape& shape, ValueId var,
                                      ValueId gamma, const Attrs& bn_attrs) {
  const int64_t c = shape[0];
  const int64_t k = NumElements(shape) / std::max<int64_t>(c, 1);
  ASSIGN_OR_RETURN(ValueId zeros, rw.Emit(OpKind::kFill, {}, FillAttrs{0.0f, {c}}));
  ASSIGN_OR_RETURN(ValueId v3, rw.Emit(OpKind::kReshape, {v}, ShapeAttrs{{1, c, k}}));
  ASSIGN_OR_RETURN(ValueId vs3,
                   rw.Emit(OpKind::kBatchNormInference, {v3, zeros, var, gamma, zeros}, bn_attrs));
  return rw.Emit(OpKind::kReshape, {vs3}, ShapeAttrs{shape});
}

// Emits Wf = W·s per output channel (s = γ/√(σ² + eps) of BatchNorm `bn`)
// into the rebuilt graph.
absl::StatusOr<ValueId> EmitScaledWeight(GraphRewriter& rw, const Graph& graph, const Node& bn,
                                         ValueId w_old) {
  return EmitRowScaled(rw, rw.New(w_old), graph.type(w_old).shape, rw.New(bn.inputs[2]),
                       rw.New(bn.inputs[3]), bn.attrs);
}

// conv2d_backward_input(dy, W·s) in place of `node` =
// conv2d_backward_input(g, W), g = batch_norm_inference_grad(dy, σ², γ).
absl::StatusOr<ValueId> EmitInputGradOfScaledWeight(GraphRewriter& rw, const Graph& graph,
                                                    const Node& node) {
  const Node& g = graph.node(node.inputs[0]);
  const ValueId w = node.inputs[1];
  ASSIGN_OR_RETURN(ValueId ws, EmitRowScaled(rw, rw.New(w), graph.type(w).shape,
                                             rw.New(g.inputs[1]), rw.New(g.inputs[2]), g.attrs));
  return rw.Emit(OpKind::kConv2dBackwardInput, {rw.New(g.inputs[0]), ws}, node.attrs, node.name);
}

// Whether the activation gradient g = batch_norm_inference_grad(dy, σ², γ)
// = dy·s (per channel of axis 1) can move into the convolution gradients that
// read it: every reader is conv2d_backward_input(g, W) or
// conv2d_backward_weight(x, g), and dy is more than twice the size of each
// weight. Then
//   conv2d_backward_input(g, W)  = conv2d_backward_input(dy, W·s)
//   conv2d_backward_weight(x, g) = conv2d_backward_weight(x, dy)·s   (per output channel)
// trade the pass that reads dy and writes g for one pass over each weight.
// This covers BatchNorms whose γ trains (full fine-tuning), which FoldableConv
// leaves unfolded.
bool AbsorbableGrad(const Graph& g, ValueId grad, const std::vector<std::vector<ValueId>>& users) {
  const Node& node = g.node(grad);
  if (node.op != OpKind::kBatchNormInferenceGrad || node.inputs.size() != 3) return false;
  if (node.type.shape.size() != 4 || users[grad].empty()) return false;
  if (g.IsOutput(grad)) return false;
  const int64_t dy_elements = NumElements(node.type.shape);
  for (ValueId u : users[grad]) {
    const Node& user = g.node(u);
    Shape w;
    if (user.op == OpKind::kConv2dBackwardInput && user.inputs[0] == grad &&
        user.inputs[1] != grad) {
      w = g.type(user.inputs[1]).shape;
    } else if (user.op == OpKind::kConv2dBackwardWeight && user.inputs[1] == grad &&
               user.inputs[0] != grad) {
      w = user.type.shape;
    } else {
      return false;
    }
    if (w.empty() || w[0] != node.type.shape[1] || 2 * NumElements(w) >= dy_elements) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<bool> FoldBatchNorm(Graph& graph, std::vector<ValueId>* old_to_new, int* folded,
                                   int* absorbed_grads) {
  const int n = graph.num_nodes();
  const std::vector<std::vector<ValueId>> users = graph.ComputeUsers();
  std::vector<ValueId> conv_of(n, kNoValue);  // per BatchNorm node
  std::vector<bool> skip(n, false);           // convs folded into their BatchNorm
  int count = 0;
  for (ValueId id = 0; id < n; ++id) {
    const ValueId conv = FoldableConv(graph, id, users);
    if (conv == kNoValue) continue;
    conv_of[id] = conv;
    skip[conv] = true;
    ++count;
  }
  if (folded != nullptr) *folded = count;
  std::vector<bool> absorbed(n, false);  // per batch_norm_inference_grad node
  int absorbable = 0;
  for (ValueId id = 0; id < n; ++id) {
    absorbed[id] = AbsorbableGrad(graph, id, users);
    absorbable += absorbed[id];
  }
  if (absorbed_grads != nullptr) *absorbed_grads = 0;
  if (count == 0 && absorbable == 0) return Unchanged(n, old_to_new);
  std::vector<ValueId> folded_bns;
  for (ValueId id = 0; id < n; ++id) {
    if (conv_of[id] != kNoValue) folded_bns.push_back(id);
  }
  GraphRewriter rw(graph);
  for (ValueId id = 0; id < n; ++id) {
    if (skip[id]) continue;
    const Node& node = graph.node(id);
    // Backward through an unfolded BatchNorm (AbsorbableGrad).
    const bool reads_absorbed =
        (node.op == OpKind::kConv2dBackwardInput && absorbed[node.inputs[0]]) ||
        (node.op == OpKind::kConv2dBackwardWeight && absorbed[node.inputs[1]]);
    if (reads_absorbed) {
      ValueId out;
      if (node.op == OpKind::kConv2dBackwardInput) {
        ASSIGN_OR_RETURN(out, EmitInputGradOfScaledWeight(rw, graph, node));
      } else {
        const Node& g = graph.node(node.inputs[1]);
        ASSIGN_OR_RETURN(ValueId dw,
                         rw.Emit(OpKind::kConv2dBackwardWeight,
                                 {rw.New(node.inputs[0]), rw.New(g.inputs[0])}, node.attrs));
        ASSIGN_OR_RETURN(out, EmitRowScaled(rw, dw, node.type.shape, rw.New(g.inputs[1]),
                                            rw.New(g.inputs[2]), g.attrs));
      }
      rw.Map(id, out);
      if (absorbed_grads != nullptr) ++*absorbed_grads;
      continue;
    }
    // Backward: conv2d_backward_input(batch_norm_inference_grad(dy), W) of a
    // folded pair is conv2d_backward_input(dy, Wf), with Wf recomputed here
    // so that it lives only as long as this gradient needs it.
    if (node.op == OpKind::kConv2dBackwardInput) {
      const ValueId bn = FoldedBatchNormOfGrad(graph, node.inputs[0], folded_bns);
      if (bn != kNoValue) {
        const Node& conv = graph.node(conv_of[bn]);
        const auto* grad_attrs = std::get_if<Conv2dGradAttrs>(&node.attrs);
        const auto* conv_attrs = std::get_if<Conv2dAttrs>(&conv.attrs);
        if (conv.inputs[1] == node.inputs[1] && grad_attrs != nullptr && conv_attrs != nullptr &&
            grad_attrs->conv == *conv_attrs) {
          // The gradient's σ², γ and attributes are the folded BatchNorm's.
          ASSIGN_OR_RETURN(ValueId dx, EmitInputGradOfScaledWeight(rw, graph, node));
          rw.Map(id, dx);
          continue;
        }
      }
    }
    if (conv_of[id] == kNoValue) {
      RETURN_IF_ERROR(rw.Copy(id));
      continue;
    }
    const Node& bn = graph.node(id);
    const Node& conv = graph.node(conv_of[id]);
    const auto& bn_attrs = std::get<BatchNormAttrs>(bn.attrs);
    const ValueId x = rw.New(conv.inputs[0]);
    const ValueId mean = rw.New(bn.inputs[1]);
    const ValueId var = rw.New(bn.inputs[2]);
    const ValueId gamma = rw.New(bn.inputs[3]);
    const ValueId beta = rw.New(bn.inputs[4]);
    const int64_t c = graph.type(conv.inputs[1]).shape[0];
    ASSIGN_OR_RETURN(ValueId zeros, rw.Emit(OpKind::kFill, {}, FillAttrs{0.0f, {c}}));
    ASSIGN_OR_RETURN(ValueId wf, EmitScaledWeight(rw, graph, bn, conv.inputs[1]));
    // shift = (b − μ)·s + β.
    const ValueId b = conv.inputs.size() == 3 ? rw.New(conv.inputs[2]) : zeros;
    ASSIGN_OR_RETURN(ValueId b2, rw.Emit(OpKind::kReshape, {b}, ShapeAttrs{{1, c}}));
    ASSIGN_OR_RETURN(ValueId shift2,
                     rw.Emit(OpKind::kBatchNormInference, {b2, mean, var, gamma, beta}, bn_attrs));
    ASSIGN_OR_RETURN(ValueId shift, rw.Emit(OpKind::kReshape, {shift2}, ShapeAttrs{{c}}));
    ASSIGN_OR_RETURN(ValueId y, rw.Emit(OpKind::kConv2d, {x, wf, shift}, conv.attrs, bn.name));
    rw.Map(id, y);
  }
  ASSIGN_OR_RETURN(graph, rw.Finish());
  if (old_to_new != nullptr) *old_to_new = rw.old_to_new();
  return true;
}

}  // namespace fleettune::engine::passes
