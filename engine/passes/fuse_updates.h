// Weight gradients accumulated straight into the optimizer state.
//
//   ASSIGN_OR_RETURN(bool changed, FuseUpdates(graph, &old_to_new, &fused));
//
// A linear layer's weight gradient is one GEMM, dW = dYᵀ·X, and SGD then
// folds it into the momentum buffer: buf = μ·buf + dW (+ wd·W), W -= lr·buf.
// This pass replaces such a matmul → sgd_update pair, when the update is the
// matmul's only reader, by one kSgdMatMulUpdate whose GEMM accumulates into
// the buffer through its α and β (engine/ops/optimizer.cc). The gradient is
// never stored: its arena buffer disappears, and so does one pass over it.
// In micro-batched plans the gain repeats per slice: each slice's GEMM adds
// its share to the buffer, and only the last slice touches the weight.
//
// Only rank-2 products are fused (the batched matmuls of attention produce
// activations, not weight gradients); AdamW updates are left as they are,
// since their moments are not linear in the gradient.
//
// The fused update's arithmetic differs from the unfused pair by rounding
// (the GEMM adds β·buf in its own order), so a fused graph trains the same
// within float tolerance, not bit for bit.
#ifndef FLEETTUNE_ENGINE_PASSES_FUSE_UPDATES_H_
#define FLEETTUNE_ENGINE_PASSES_FUSE_UPDATES_H_

#include <vector>

#include "absl/status/statusor.h"
#include "engine/ir/graph.h"

namespace fleettune::engine::passes {

// Returns whether anything was fused; `old_to_new` as in EliminateDeadCode
// (a fused matmul maps to kNoValue), `fused` (optional) the number of pairs.
absl::StatusOr<bool> FuseUpdates(Graph& graph, std::vector<ValueId>* old_to_new = nullptr,
                                 int* fused = nullptr);

}  // namespace fleettune::engine::passes

#endif  // FLEETTUNE_ENGINE_PASSES_FUSE_UPDATES_H_
