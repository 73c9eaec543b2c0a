// Neighbours a matmul can do itself: attention's head transposes and its
// 1/√d scale.
//
//   ASSIGN_OR_RETURN(bool changed, FoldIntoMatMuls(graph, &old_to_new, &folded));
//
// Attention splits heads with a transpose ([B, T, H, D] → [B, H, T, D]),
// scales q by 1/√D, and merges heads with the inverse transpose; its backward
// pass repeats each in reverse. Every one of those is a full copy of a
// tensor, yet each matrix of the moved layout is still a plain strided
// matrix: head h of token rows t is at offset h·D with row stride H·D. So
// MatMulAttrs takes the stored layout (interleaved_a / _b / _y) and a scalar
// alpha, and this pass folds
//   transpose (heads before T) → matmul    ⇒ the matmul reads it interleaved,
//   matmul → transpose (T before heads)    ⇒ the matmul writes it interleaved,
//   scale by a power of two → matmul,
//   matmul → scale by a power of two       ⇒ alpha,
// where "heads" may be several dims: grouped-query attention takes
// [B, T, Hkv, G, D] as [B, Hkv, G, T, D], so that q's G heads meet their
// key/value head's single one by broadcasting; each head's rows are still at
// offset (kv·G + g)·D with row stride Hkv·G·D. Either fold applies
// when the transpose or scale has no other reader than matmuls (an input
// fold) or the matmul no other reader than it (an output fold), and neither
// is a marked output. Only powers of two fold: scaling by them is exact, so
// the folded graph computes the same bits (1/√64 = 1/8 for BERT-mini's and
// Llama-mini's heads).
//
// Runs after autodiff (folded matmuls have no gradient rule), as part of the
// pipeline's "fuse". Expects a graph that passes VerifyGraph.
#ifndef FLEETTUNE_ENGINE_PASSES_FOLD_MATMUL_H_
#define FLEETTUNE_ENGINE_PASSES_FOLD_MATMUL_H_

#include <vector>

#include "absl/status/statusor.h"
#include "engine/ir/graph.h"

namespace fleettune::engine::passes {

// Returns whether anything was folded; `old_to_new` as in EliminateDeadCode
// (a folded transpose or scale maps to kNoValue, or to the matmul that
// absorbed it), `folded` (optional) the transposes and scales removed.
absl::StatusOr<bool> FoldIntoMatMuls(Graph& graph, std::vector<ValueId>* old_to_new = nullptr,
                                     int* folded = nullptr);

}  // namespace fleettune::engine::passes

#endif  // FLEETTUNE_ENGINE_PASSES_FOLD_MATMUL_H_
