#include "engine/passes/reorder_updates.h"

#include <algorithm>
#include <functional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "engine/ir/verifier.h"
#include "engine/passes/rewrite.h"

namespace fleettune::engine::passes {

std::vector<int> WrittenOperands(const Node& node) {
  std::vector<int> out;
  for (int i = 0; i < static_cast<int>(node.inputs.size()); ++i) {
    if (WritesOperand(node.op, i)) out.push_back(i);
  }
  return out;
}

absl::StatusOr<bool> ReorderUpdates(Graph& graph, std::vector<ValueId>* old_to_new) {
  const int n = graph.num_nodes();
  const std::vector<std::vector<ValueId>> users = graph.ComputeUsers();
  // Sources (inputs, parameters) have no inputs, so they may all go first;
  // autodiff appends optimizer-state parameters next to the updates, and
  // hoisting them frees each update to move up to its real dependencies.
  auto is_source = [&](ValueId v) {
    const OpKind op = graph.node(v).op;
    return op == OpKind::kInput || op == OpKind::kParameter;
  };
  // after[a]: the updates that go right after node a, in original order.
  std::vector<std::vector<ValueId>> after(n);
  std::vector<ValueId> leading;  // updates that depend on sources only
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    if (!IsUpdateOp(node.op)) continue;
    ValueId anchor = -1;
    for (ValueId in : node.inputs) {
      if (!graph.IsValid(in) || in >= id) {
        return absl::FailedPreconditionError(
            absl::StrCat("node %", id, ": input %", in, " is not an earlier node"));
      }
      if (!is_source(in)) anchor = std::max(anchor, in);
    }
    for (int i : WrittenOperands(node)) {
      for (ValueId reader : users[node.inputs[i]]) {
        // A reader after the update would see the new value; the verifier
        // rejects such graphs, and keeping it after the update keeps that.
        if (reader < id) anchor = std::max(anchor, reader);
      }
    }
    (anchor < 0 ? leading : after[anchor]).push_back(id);
  }
  std::vector<ValueId> order;
  order.reserve(n);
  // Anchors are earlier nodes, so the recursion ends; an update anchored at
  // another update follows it.
  std::function<void(ValueId)> emit = [&](ValueId v) {
    order.push_back(v);
    for (ValueId u : after[v]) emit(u);
  };
  for (ValueId id = 0; id < n; ++id) {
    if (is_source(id)) emit(id);
  }
  for (ValueId u : leading) emit(u);
  for (ValueId id = 0; id < n; ++id) {
    if (!IsUpdateOp(graph.node(id).op) && !is_source(id)) emit(id);
  }
  bool same = true;
  for (ValueId i = 0; i < n && same; ++i) same = order[i] == i;
  if (same) return Unchanged(n, old_to_new);
  ASSIGN_OR_RETURN(graph, RebuildGraph(graph, order, old_to_new));
  return true;
}

}  // namespace fleettune::engine::passes
