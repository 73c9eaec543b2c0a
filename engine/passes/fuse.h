// Operator fusion: a producer and the activation that consumes it become one
// fused op (engine/ops/fused.cc).
//
//   ASSIGN_OR_RETURN(bool changed, FuseActivations(graph, &old_to_new, &fused));
//
// Patterns (producer → activation):
//   conv2d               → relu | activation   ⇒ conv2d_activation
//   linear               → relu | activation   ⇒ linear_activation
//   batch_norm_inference → relu | activation   ⇒ batch_norm_inference_activation
//   add                  → relu | activation   ⇒ add_activation (residual + ReLU)
//   layer_norm           → relu | activation   ⇒ layer_norm_activation
//   rms_norm             → relu | activation   ⇒ rms_norm_activation
//
// A conv's bias is its third input, so conv + bias + activation is covered.
// Fusion is legal only when nothing but the activation reads the producer's
// output (and it is not a marked output): the fused op never materializes it.
// In training graphs that is decided by what the activation's gradient reads:
// relu_grad and activation_grad for ReLU6, sigmoid and tanh read the
// activation's OUTPUT, so those fuse; for SiLU and GELU activation_grad reads
// the INPUT (the producer's output), so they fuse only where no gradient flows
// (frozen layers, forward graphs). The norms' gradients read their input,
// never their output, so norm + ReLU (ReLU6, sigmoid, tanh) fuses in trained
// layers too. Runs after autodiff: fused ops have no gradient rule.
//
// Chains of elementwise ops are fuse_elementwise.h's (the pipeline's "fuse"
// runs both, this one first).
//
// Expects a graph that passes VerifyGraph (RunPasses checks before any pass).
#ifndef FLEETTUNE_ENGINE_PASSES_FUSE_H_
#define FLEETTUNE_ENGINE_PASSES_FUSE_H_

#include <vector>

#include "absl/status/statusor.h"
#include "engine/ir/graph.h"

namespace fleettune::engine::passes {

// Returns whether anything was fused; `old_to_new` as in EliminateDeadCode
// (the activation maps to the fused node, the producer to kNoValue); `fused`
// (optional) gets the number of pairs fused.
absl::StatusOr<bool> FuseActivations(Graph& graph, std::vector<ValueId>* old_to_new = nullptr,
                                     int* fused = nullptr);

// The inverse of the fuse pipeline: every fused op becomes its producer
// followed by its activation again, every elementwise_chain its steps, and
// every matmul with folded neighbours (fold_matmul.h) a plain matmul between
// its transposes and scale, so autodiff can run over an optimized forward
// graph (a device builds its dense baseline from a fused plan this way).
// Values keep their meaning; `old_to_new` maps each fused node to its
// activation (a chain to its last step, a matmul to its last unfolded op).
// Returns whether anything changed.
absl::StatusOr<bool> UnfuseActivations(Graph& graph, std::vector<ValueId>* old_to_new = nullptr);

}  // namespace fleettune::engine::passes

#endif  // FLEETTUNE_ENGINE_PASSES_FUSE_H_
