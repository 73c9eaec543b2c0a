// Graph verifier: structural and type invariants every pass must preserve.
//
//   RETURN_IF_ERROR(VerifyGraph(graph));
//
// Checks, for every node: inputs exist, come earlier, and produce a value;
// arity and types agree with the op's shape inference; input and parameter
// names are non-empty and unique. For optimizer updates: the first operand is a
// weight parameter, state operands are optimizer-state parameters; for
// BatchNorm statistics updates the written operands are buffer parameters;
// each parameter is updated at most once, and nothing reads an updated tensor
// after its update. Marked outputs must exist and produce values.
//
// Returns InvalidArgument naming the first offending node ("node 12 (matmul):
// ...").
#ifndef FLEETTUNE_ENGINE_IR_VERIFIER_H_
#define FLEETTUNE_ENGINE_IR_VERIFIER_H_

#include "absl/status/status.h"
#include "engine/ir/graph.h"

namespace fleettune::engine {

absl::Status VerifyGraph(const Graph& graph);

// True for the ops that write their inputs instead of producing a value
// (optimizer updates, BatchNorm running-statistics updates).
bool IsUpdateOp(OpKind op);

// Whether update op `op` writes its operand i (a parameter, optimizer state or
// statistics buffer) rather than only reading it (a gradient, a batch, the
// factors of a fused gradient). False for ops that are not updates.
bool WritesOperand(OpKind op, int i);

}  // namespace fleettune::engine

#endif  // FLEETTUNE_ENGINE_IR_VERIFIER_H_
