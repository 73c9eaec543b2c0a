#include "engine/passes/dce.h"

#include <utility>

#include "engine/base/status_macros.h"
#include "engine/ir/verifier.h"
#include "engine/passes/rewrite.h"

namespace fleettune::engine::passes {

absl::StatusOr<bool> EliminateDeadCode(Graph& graph, std::vector<ValueId>* old_to_new) {
  const int n = graph.num_nodes();
  std::vector<bool> live(n, false);
  for (ValueId out : graph.outputs()) {
    if (graph.IsValid(out)) live[out] = true;
  }
  for (ValueId id = 0; id < n; ++id) {
    const OpKind op = graph.node(id).op;
    if (IsUpdateOp(op) || op == OpKind::kInput || op == OpKind::kParameter) live[id] = true;
  }
  // Inputs come earlier, so one backward sweep reaches every needed node.
  for (ValueId id = n - 1; id >= 0; --id) {
    if (!live[id]) continue;
    for (ValueId in : graph.node(id).inputs) {
      if (graph.IsValid(in)) live[in] = true;
    }
  }
  std::vector<ValueId> order;
  for (ValueId id = 0; id < n; ++id) {
    if (live[id]) order.push_back(id);
  }
  if (static_cast<int>(order.size()) == n) return Unchanged(n, old_to_new);
  ASSIGN_OR_RETURN(graph, RebuildGraph(graph, order, old_to_new));
  return true;
}

}  // namespace fleettune::engine::passes
