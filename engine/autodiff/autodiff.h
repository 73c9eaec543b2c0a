// Reverse-mode autodiff as a compile-time graph-to-graph pass, and optimizer
// updates as graph nodes.
//
//   ASSIGN_OR_RETURN(GradientMap grads, BuildBackward(graph, loss, trainable));
//   RETURN_IF_ERROR(AddOptimizerUpdates(graph, grads, OptimizerConfig::Sgd(...)));
//
// BuildBackward appends backward nodes only where a gradient is needed: a
// value needs one when it lies on a path from a trainable parameter to the
// loss. So frozen parameters get no gradient, the data input gets none, and
// nothing is emitted below the lowest trainable layer. Each op's gradient rule
// (engine/ops) decides which nodes to emit for the inputs that need one.
#ifndef FLEETTUNE_ENGINE_AUTODIFF_AUTODIFF_H_
#define FLEETTUNE_ENGINE_AUTODIFF_AUTODIFF_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/ir/graph.h"

namespace fleettune::engine::autodiff {

// Trainable parameter id → id of the loss gradient w.r.t. it (same type).
using GradientMap = std::map<ValueId, ValueId>;

// Appends the backward graph of scalar `loss` w.r.t. `trainable` (weight
// parameters) to `graph`.
// Errors: InvalidArgument if loss is not an f32 scalar, if a trainable id is
// not a weight parameter, or if a trainable parameter does not affect the loss;
// Unimplemented if a needed gradient passes through a non-differentiable op.
absl::StatusOr<GradientMap> BuildBackward(Graph& graph, ValueId loss,
                                          absl::Span<const ValueId> trainable);

struct OptimizerConfig {
  enum class Kind { kSgd, kAdamW };
  Kind kind = Kind::kSgd;
  SgdAttrs sgd;
  AdamWAttrs adamw;

  static OptimizerConfig Sgd(SgdAttrs attrs) { return {Kind::kSgd, attrs, {}}; }
  static OptimizerConfig AdamW(AdamWAttrs attrs) { return {Kind::kAdamW, {}, attrs}; }
};

// Adds optimizer state parameters (named "<param>.momentum_buffer",
// "<param>.exp_avg", "<param>.exp_avg_sq" as in torch.optim's state) and one
// update node per trainable parameter, in parameter order, at the end of the
// graph. InvalidArgument on hyper-parameters outside their domain.
absl::Status AddOptimizerUpdates(Graph& graph, const GradientMap& grads,
                                 const OptimizerConfig& config);

}  // namespace fleettune::engine::autodiff

#endif  // FLEETTUNE_ENGINE_AUTODIFF_AUTODIFF_H_
