// Dead-code elimination.
//
//   std::vector<ValueId> old_to_new;
//   ASSIGN_OR_RETURN(bool changed, EliminateDeadCode(graph, &old_to_new));
//
// Keeps the nodes some root needs and drops the rest, renumbering the graph
// (engine/passes/rewrite.h). Roots: update nodes (optimizer and BatchNorm
// statistics updates, which write state in place), marked outputs (loss,
// logits), and every kInput and kParameter node: sources are the binding
// interface (Executable::Input, checkpoints), cost no arena, and are kept even
// when unread. Node order is otherwise unchanged.
//
// Expects a graph that passes VerifyGraph (RunPasses checks before any pass).
#ifndef FLEETTUNE_ENGINE_PASSES_DCE_H_
#define FLEETTUNE_ENGINE_PASSES_DCE_H_

#include <vector>

#include "absl/status/statusor.h"
#include "engine/ir/graph.h"

namespace fleettune::engine::passes {

// Returns whether nodes were removed. `old_to_new` (optional) maps every old
// id to its new id or kNoValue. Errors only for a graph whose inputs are not
// earlier nodes (FailedPrecondition).
absl::StatusOr<bool> EliminateDeadCode(Graph& graph, std::vector<ValueId>* old_to_new = nullptr);

}  // namespace fleettune::engine::passes

#endif  // FLEETTUNE_ENGINE_PASSES_DCE_H_
