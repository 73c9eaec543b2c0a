// Operator reordering with in-place updates (PockEngine §4.2).
//
//   ASSIGN_OR_RETURN(bool changed, ReorderUpdates(graph, &old_to_new));
//
// Autodiff appends every optimizer update at the end of the graph, so every
// gradient buffer stays alive until the last node. This pass moves each update
// node (SGD, AdamW, BatchNorm statistics) to the earliest point its
// dependencies allow, so the gradient it consumes dies at once and the arena
// planner can reuse its bytes for the rest of the backward pass.
//
// Dependencies of an update u: (1) its inputs (the gradient, state), and
// (2) because u writes its written operands in place (the weight and its
// optimizer state; the running statistics), every other node that reads one
// of those tensors: the forward op reading the weight, and backward ops that
// read it again (conv2d_backward_input reads W, matmul for dx reads W, ...).
// u is placed right after the last of these in the original order. Sources
// (inputs, parameters: autodiff appends optimizer state at the end) move to the
// front; all other nodes keep their relative order, so the result is
// topological and VerifyGraph ("nothing reads an updated tensor after its
// update") still holds.
//
// Expects a graph that passes VerifyGraph (RunPasses checks before any pass).
#ifndef FLEETTUNE_ENGINE_PASSES_REORDER_UPDATES_H_
#define FLEETTUNE_ENGINE_PASSES_REORDER_UPDATES_H_

#include <vector>

#include "absl/status/statusor.h"
#include "engine/ir/graph.h"

namespace fleettune::engine::passes {

// Returns whether the order changed; `old_to_new` as in EliminateDeadCode.
// FailedPrecondition for a graph whose inputs are not earlier nodes.
absl::StatusOr<bool> ReorderUpdates(Graph& graph, std::vector<ValueId>* old_to_new = nullptr);

// The operands an update node writes in place (indices into node.inputs), as
// engine/ir/verifier.h's WritesOperand: for SGD / AdamW every operand but the
// gradient (1), for fused SGD every operand but the gradient's factors (1, 2),
// for BatchNorm statistics updates every operand but the batch (0). Empty for
// other ops.
std::vector<int> WrittenOperands(const Node& node);

}  // namespace fleettune::engine::passes

#endif  // FLEETTUNE_ENGINE_PASSES_REORDER_UPDATES_H_
