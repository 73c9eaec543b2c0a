// Elementwise-chain fusion: a run of elementwise ops in which each result is
// read only by the next op becomes one elementwise_chain node
// (engine/ops/elementwise_chain.cc) that makes one pass over the data and
// never materializes the intermediate values.
//
//   ASSIGN_OR_RETURN(bool changed, FuseElementwiseChains(graph, &old_to_new, &chains));
//
// Ops: add, sub, mul, div, scale, relu, activation, relu_grad and
// activation_grad whose inputs all have the output's shape (no broadcasting).
// A node joins its user's chain when that user is its only reader and it is
// not a marked output. The pass runs after autodiff, so reads by backward
// nodes count: in a training graph a forward value the backward needs (an
// activation's input for GELU/SiLU, a product's operands) ends a chain, and
// the chains it finds are mostly backward ones: gradient accumulation
// ((g1 + g2) + g3) and mul → activation_grad (SwiGLU's backward). A user with
// two such operands continues the first one's chain; the other ends its own
// chain. At most kMaxElementwiseChainSteps ops per chain: a longer run splits.
//
// The pipeline runs it after FuseActivations (fuse.h), so producer +
// activation pairs (add + relu) stay the pair fusions' ops. UnfuseActivations
// splits chains again. Expects a verified graph. Not thread-safe.
#ifndef FLEETTUNE_ENGINE_PASSES_FUSE_ELEMENTWISE_H_
#define FLEETTUNE_ENGINE_PASSES_FUSE_ELEMENTWISE_H_

#include <vector>

#include "absl/status/statusor.h"
#include "engine/ir/graph.h"
#include "engine/passes/rewrite.h"

namespace fleettune::engine::passes {

// Returns whether anything was fused; `old_to_new` as in EliminateDeadCode
// (a chain's last op maps to the chain node, the others to kNoValue); `chains`
// (optional) gets the number of chains emitted.
absl::StatusOr<bool> FuseElementwiseChains(Graph& graph, std::vector<ValueId>* old_to_new = nullptr,
                                           int* chains = nullptr);

// Emits the steps of elementwise_chain node `chain` (of the graph `rw` reads)
// as the primitive ops they are, inputs remapped through `rw`; returns the
// last one's id, which carries the chain's name. Errors: those of
// GraphRewriter::Emit.
absl::StatusOr<ValueId> EmitUnfusedChain(GraphRewriter& rw, const Node& chain);

}  // namespace fleettune::engine::passes

#endif  // FLEETTUNE_ENGINE_PASSES_FUSE_ELEMENTWISE_H_
