// Packing ReLU and ReLU6 outputs saved for the backward pass into bit masks.
//
//   int packed = 0;
//   ASSIGN_OR_RETURN(bool changed, PackActivationMasks(graph, &old_to_new, &packed));
//
// A ReLU's gradient needs only where y > 0 (ReLU6: 0 < y < 6), but relu_grad
// and activation_grad{relu6} read the whole f32 output y, so y stays alive
// from the forward pass to its gradient. Under sparse updates that is most of
// the arena: a frozen layer after the ReLU needs no input for its input
// gradient, so y is kept for that one bit per element alone. This pass emits
// m = activation_mask{upper}(y) right after y's producer and replaces each
// such gradient with masked_grad(dy, m) (engine/ops/activation_mask.cc): m is
// 1/32 of y's bytes, and y dies once the forward pass has read it. The result
// is bit-identical.
//
// A value is packed when one or more of these gradients (all of one kind) read
// it as y and nothing else reads it in the backward pass (taken to start at
// the earliest dy such a gradient reads), i.e. when packing ends its life with
// the forward pass. A value the backward pass still reads (a trainable
// layer's weight gradient reads its input) stays whole, since a mask would
// barely shorten its life; so do marked outputs. Other node order is
// unchanged.
//
// Expects a graph that passes VerifyGraph (RunPasses checks before any pass).
#ifndef FLEETTUNE_ENGINE_PASSES_PACK_MASKS_H_
#define FLEETTUNE_ENGINE_PASSES_PACK_MASKS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "engine/ir/graph.h"

namespace fleettune::engine::passes {

// Returns whether anything was packed; `packed` (optional) gets the number of
// values packed. `old_to_new` (optional) maps old ids to new ones (replaced
// gradients map to their masked_grad).
absl::StatusOr<bool> PackActivationMasks(Graph& graph, std::vector<ValueId>* old_to_new = nullptr,
                                         int* packed = nullptr);

// The pass's second step: a masked_grad whose gradient is a convolution's
// input gradient read by nothing else becomes that gradient's mask operand,
// conv2d_backward_input(dy, w, mask) (engine/ops/conv.cc), which masks each
// block of dx as it writes it instead of a pass over the whole tensor. The
// same bits. `folded` (optional) gets the number folded; `old_to_new` maps
// each folded masked_grad to the masked convolution.
absl::StatusOr<bool> FoldMasksIntoConvGrads(Graph& graph,
                                            std::vector<ValueId>* old_to_new = nullptr,
                                            int* folded = nullptr);

}  // namespace fleettune::engine::passes

#endif  // FLEETTUNE_ENGINE_PASSES_PACK_MASKS_H_
