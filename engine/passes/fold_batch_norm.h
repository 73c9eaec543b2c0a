// BatchNorm folding: conv2d → batch_norm_inference becomes one convolution.
//
//   ASSIGN_OR_RETURN(bool changed, FoldBatchNorm(graph, &old_to_new));
//
// With frozen statistics, y = (conv(x, W) + b − μ)·s + β where
// s = γ/√(σ² + eps) per output channel, which equals conv(x, W·s, (b − μ)·s + β).
// The pass rewrites the pair into existing ops:
//
//   Wf    = reshape(batch_norm_inference(reshape(W, [1, C, K]), 0, σ², γ, 0), W.shape)
//   shift = reshape(batch_norm_inference(reshape(b or 0, [1, C]), μ, σ², γ, β), [C])
//   y     = conv2d(x, Wf, shift)
//
// (batch_norm_inference with mean 0 and bias 0 multiplies by s; the same
// kernel computes s as the unfolded op does). When W, γ, β and the statistics
// are all frozen, Wf and shift depend on parameters only, so the runtime's
// constant folding (CompileOptions::fold_constants) computes them once at
// Compile(); a trainable β or conv bias only makes `shift` (C floats) per-step
// work, a trainable W only makes Wf (one pass over the weight) per-step work.
//
// Gradients: the pass runs on training graphs after autodiff. Backward nodes
// keep reading W, γ, σ² and x; they never read the conv output (checked
// below) and read the BatchNorm output only as a value, which the folded conv
// reproduces. The input gradient through a folded pair,
//   conv2d_backward_input(batch_norm_inference_grad(dy, σ², γ), W),
// scales dy per channel before the transposed convolution; it becomes
//   conv2d_backward_input(dy, Wf)
// with Wf recomputed next to it (one pass over the weight instead of one over
// the activation gradient, and Wf is not kept alive from the forward pass).
// The scaled gradient is left to dead-code elimination, or kept when a
// trainable W's weight gradient still reads it.
//
// Unfolded pairs (γ trains: full fine-tuning) get the same treatment when it
// pays: when every reader of g = batch_norm_inference_grad(dy, σ², γ) is a
// convolution gradient and dy is more than twice each weight's size,
//   conv2d_backward_input(g, W)  → conv2d_backward_input(dy, W·s)
//   conv2d_backward_weight(x, g) → conv2d_backward_weight(x, dy)·s (per output channel)
// so no pass over the activation gradient scales it. A pair is folded only when the conv
// output has no reader but the BatchNorm: a trainable γ's gradient
// (batch_norm_weight_grad) reads the conv output, so convolutions followed by
// a BatchNorm with trainable γ are left alone (folding them would need the
// normalized input rebuilt from y, dividing by γ). Works on forward graphs too.
//
// Expects a graph that passes VerifyGraph (RunPasses checks before any pass).
#ifndef FLEETTUNE_ENGINE_PASSES_FOLD_BATCH_NORM_H_
#define FLEETTUNE_ENGINE_PASSES_FOLD_BATCH_NORM_H_

#include <vector>

#include "absl/status/statusor.h"
#include "engine/ir/graph.h"

namespace fleettune::engine::passes {

// Returns whether a pair was folded; `old_to_new` as in EliminateDeadCode (the
// BatchNorm maps to the folded conv, the old conv to kNoValue). `folded`
// (optional) gets the number of pairs folded, `absorbed_grads` (optional) the
// number of convolution gradients rewritten to read dy instead of a BatchNorm
// input gradient. Errors from type checking the
// emitted nodes (a malformed graph): InvalidArgument.
absl::StatusOr<bool> FoldBatchNorm(Graph& graph, std::vector<ValueId>* old_to_new = nullptr,
                                   int* folded = nullptr, int* absorbed_grads = nullptr);

}  // namespace fleettune::engine::passes

#endif  // FLEETTUNE_ENGINE_PASSES_FOLD_BATCH_NORM_H_
