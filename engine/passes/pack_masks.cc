#include "engine/passes/pack_masks.h"

#include <algorithm>
#include <limits>
#include <utility>
#include <variant>

#include "engine/base/status_macros.h"
#include "engine/passes/rewrite.h"

namespace fleettune::engine::passes {
namespace {

constexpr float kNotAMaskGrad = 0.0f;

// The upper clamp of the ReLU whose gradient `node` is, reading v only as its
// saved output: 6 for activation_grad{relu6}(dy, v), +inf for relu_grad(dy, v);
// kNotAMaskGrad for anything else.
float MaskUpperOf(const Node& node, ValueId v) {
  if (node.inputs.size() != 2 || node.inputs[1] != v || node.inputs[0] == v) return kNotAMaskGrad;
  if (node.op == OpKind::kReluGrad) return std::numeric_limits<float>::infinity();
  const auto* attrs = std::get_if<ActivationAttrs>(&node.attrs);
  if (node.op == OpKind::kActivationGrad && attrs != nullptr && attrs->fn == ActivationFn::kRelu6) {
    return 6.0f;
  }
  return kNotAMaskGrad;
}

}  // namespace

absl::StatusOr<bool> PackActivationMasks(Graph& graph, std::vector<ValueId>* old_to_new,
                                         int* packed) {
  const int n = graph.num_nodes();
  const std::vector<std::vector<ValueId>> users = graph.ComputeUsers();
  // Every dy a ReLU gradient reads is a backward value, so nodes before the
  // earliest of them belong to the forward pass (or to the start of the
  // backward pass, which mask packing treats alike).
  ValueId backward = n;
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    if (node.inputs.size() == 2 && MaskUpperOf(node, node.inputs[1]) != kNotAMaskGrad) {
      backward = std::min(backward, node.inputs[0]);
    }
  }
  std::vector<float> upper(n, kNotAMaskGrad);  // per packed value
  std::vector<bool> masked(n, false);          // gradients that read a mask instead
  int count = 0;
  for (ValueId v = 0; v < n; ++v) {
    if (graph.type(v).dtype != DType::kF32) continue;
    if (graph.IsOutput(v)) continue;
    float clamp = kNotAMaskGrad;
    bool one_kind = true, any = false;
    ValueId last_other = -1;
    for (ValueId u : users[v]) {
      const float u_clamp = MaskUpperOf(graph.node(u), v);
      if (u_clamp == kNotAMaskGrad) {
        last_other = std::max(last_other, u);
        continue;
      }
      one_kind &= !any || u_clamp == clamp;
      clamp = u_clamp;
      any = true;
    }
    if (!any || !one_kind || last_other >= backward) continue;
    upper[v] = clamp;
    for (ValueId u : users[v]) {
      if (MaskUpperOf(graph.node(u), v) != kNotAMaskGrad) masked[u] = true;
    }
    ++count;
  }
  if (packed != nullptr) *packed = count;
  if (count == 0) return Unchanged(n, old_to_new);

  GraphRewriter rw(graph);
  std::vector<ValueId> mask_of(n, kNoValue);  // new id of v's mask
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    if (masked[id]) {
      ASSIGN_OR_RETURN(ValueId dx, rw.Emit(OpKind::kMaskedGrad,
                                           {rw.New(node.inputs[0]), mask_of[node.inputs[1]]}));
      rw.Map(id, dx);
      continue;
    }
    RETURN_IF_ERROR(rw.Copy(id));
    if (upper[id] != kNotAMaskGrad) {
      ASSIGN_OR_RETURN(mask_of[id],
                       rw.Emit(OpKind::kActivationMask, {rw.New(id)}, ScalarAttrs{upper[id]}));
    }
  }
  ASSIGN_OR_RETURN(Graph out, rw.Finish());
  if (old_to_new != nullptr) *old_to_new = rw.old_to_new();
  graph = std::move(out);
  return true;
}

absl::StatusOr<bool> FoldMasksIntoConvGrads(Graph& graph, std::vector<ValueId>* old_to_new,
                                            int* folded) {
  const int n = graph.num_nodes();
  const std::vector<std::vector<ValueId>> users = graph.ComputeUsers();
  std::vector<ValueId> mask_for(n, kNoValue);  // per input gradient: the mask it takes
  std::vector<bool> fold(n, false);            // masked_grads that disappear
  int count = 0;
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    if (node.op != OpKind::kMaskedGrad) continue;
    const ValueId dx = node.inputs[0], mask = node.inputs[1];
    const Node& grad = graph.node(dx);
    if (grad.op != OpKind::kConv2dBackwardInput || grad.inputs.size() != 2) continue;
    if (users[dx].size() != 1 || mask > dx) continue;
    if (graph.IsOutput(dx)) continue;
    mask_for[dx] = mask;
    fold[id] = true;
    ++count;
  }
  if (folded != nullptr) *folded = count;
  if (count == 0) return Unchanged(n, old_to_new);
  GraphRewriter rw(graph);
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    if (fold[id]) {
      rw.Map(id, rw.New(node.inputs[0]));
      continue;
    }
    if (mask_for[id] == kNoValue) {
      RETURN_IF_ERROR(rw.Copy(id));
      continue;
    }
    ASSIGN_OR_RETURN(ValueId dx,
                     rw.Emit(OpKind::kConv2dBackwardInput,
                             {rw.New(node.inputs[0]), rw.New(node.inputs[1]), rw.New(mask_for[id])},
                             node.attrs, node.name));
    rw.Map(id, dx);
  }
  ASSIGN_OR_RETURN(Graph out, rw.Finish());
  if (old_to_new != nullptr) *old_to_new = rw.old_to_new();
  graph = std::move(out);
  return true;
}

}  // namespace fleettune::engine::passes
