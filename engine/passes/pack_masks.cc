#include "engine/passes/pack_masks.h"

#include <algorithm>
#include <utility>
#include <variant>

#include "engine/base/status_macros.h"
#include "engine/passes/rewrite.h"

namespace fleettune::engine::passes {
namespace {

// activation_grad{relu6}(dy, v) reading v only as its saved value.
bool IsRelu6GradOf(const Node& node, ValueId v) {
  if (node.op != OpKind::kActivationGrad || node.inputs.size() != 2) return false;
  const auto* attrs = std::get_if<ActivationAttrs>(&node.attrs);
  return attrs != nullptr && attrs->fn == ActivationFn::kRelu6 && node.inputs[1] == v &&
         node.inputs[0] != v;
}

}  // namespace

absl::StatusOr<bool> PackActivationMasks(Graph& graph, std::vector<ValueId>* old_to_new,
                                         int* packed) {
  const int n = graph.num_nodes();
  const std::vector<std::vector<ValueId>> users = graph.ComputeUsers();
  // Every dy a ReLU6 gradient reads is a backward value, so nodes before the
  // earliest of them belong to the forward pass (or to the start of the
  // backward pass, which mask packing treats alike).
  ValueId backward = n;
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    if (node.op == OpKind::kActivationGrad && node.inputs.size() == 2 &&
        IsRelu6GradOf(node, node.inputs[1])) {
      backward = std::min(backward, node.inputs[0]);
    }
  }
  std::vector<bool> pack(n, false), masked(n, false);
  int count = 0;
  for (ValueId v = 0; v < n; ++v) {
    if (graph.type(v).dtype != DType::kF32) continue;
    if (std::find(graph.outputs().begin(), graph.outputs().end(), v) != graph.outputs().end()) {
      continue;
    }
    ValueId first_grad = n, last_other = -1;
    for (ValueId u : users[v]) {
      if (IsRelu6GradOf(graph.node(u), v)) {
        first_grad = std::min(first_grad, u);
      } else {
        last_other = std::max(last_other, u);
      }
    }
    if (first_grad == n || last_other >= backward) continue;
    pack[v] = true;
    for (ValueId u : users[v]) {
      if (IsRelu6GradOf(graph.node(u), v)) masked[u] = true;
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
    if (pack[id]) {
      ASSIGN_OR_RETURN(mask_of[id], rw.Emit(OpKind::kActivationMask, {rw.New(id)},
                                            ActivationAttrs{ActivationFn::kRelu6}));
    }
  }
  ASSIGN_OR_RETURN(Graph out, rw.Finish());
  if (old_to_new != nullptr) *old_to_new = rw.old_to_new();
  graph = std::move(out);
  return true;
}

}  // namespace fleettune::engine::passes
