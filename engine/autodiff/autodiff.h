// Reverse-mode autodiff as a compile-time graph-to-graph pass, and optimizer
// updates as graph nodes.
//
//   ASSIGN_OR_RETURN(GradientMap grads, BuildBackward(graph, loss, trainable));
//   // or BuildPartialBackward(graph, loss, {{w, /*rows=*/8}, {b, 0}})
//   RETURN_IF_ERROR(AddOptimizerUpdates(graph, grads, OptimizerConfig::Sgd(...)));
//
// BuildBackward appends backward nodes only where a gradient is needed: a
// value needs one when it lies on a path from a trainable parameter to the
// loss. So frozen parameters get no gradient, the data input gets none, and
// nothing is emitted below the lowest trainable layer. Each op's gradient rule
// (engine/ops) decides which nodes to emit for the inputs that need one.
//
// Partial-channel training: a TrainableParam with rows = k > 0 trains only the
// first k output channels (rows of dim 0) of a kLinear or kConv2d weight. Its
// gradient is [k, ...] and is computed from the first k channels of the
// layer's output gradient only (a kSlice before the weight-gradient matmul or
// kConv2dBackwardWeight; for grouped and depthwise convolutions the input is
// sliced to the groups those channels read). AddOptimizerUpdates then emits an
// update with attrs.rows = k and optimizer state of k rows.
//
// Thread-safety: functions, no shared state; a Graph must not be shared while
// they mutate it.
#ifndef FLEETTUNE_ENGINE_AUTODIFF_AUTODIFF_H_
#define FLEETTUNE_ENGINE_AUTODIFF_AUTODIFF_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/ir/graph.h"

namespace fleettune::engine::autodiff {

// Trainable parameter id → id of the loss gradient w.r.t. it: the
// parameter's type, or [rows, ...] for a partial-channel parameter.
using GradientMap = std::map<ValueId, ValueId>;

// A weight parameter to train: all of it (rows = 0), or only rows [0, rows)
// of dim 0, its first `rows` output channels (0 < rows <= dim 0; rows equal
// to dim 0 is the same as 0).
struct TrainableParam {
  ValueId id = kNoValue;
  int64_t rows = 0;
};

// Appends the backward graph of scalar `loss` w.r.t. `trainable` (weight
// parameters) to `graph`.
// Errors: InvalidArgument if loss is not an f32 scalar, if a trainable id is
// not a weight parameter, or if a trainable parameter does not affect the loss;
// Unimplemented if a needed gradient passes through a non-differentiable op.
absl::StatusOr<GradientMap> BuildBackward(Graph& graph, ValueId loss,
                                          absl::Span<const ValueId> trainable);

// As BuildBackward, with partial-channel parameters (a separate name, so
// brace-initialized calls of BuildBackward stay unambiguous). Additional errors:
// InvalidArgument if rows is outside [0, dim 0] or the parameter has rank 0,
// or a parameter is listed twice; Unimplemented if a partial parameter feeds
// anything on the path to the loss other than the weight input of kLinear or
// kConv2d (messages name the parameter).
absl::StatusOr<GradientMap> BuildPartialBackward(Graph& graph, ValueId loss,
                                                 absl::Span<const TrainableParam> trainable);

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
// graph. A gradient with fewer rows than its parameter (partial channels)
// gets state of the gradient's type and an update with attrs.rows set; the
// `rows` field of config is ignored. InvalidArgument on hyper-parameters
// outside their domain or a gradient whose type is not the parameter's with
// dim 0 cut.
absl::Status AddOptimizerUpdates(Graph& graph, const GradientMap& grads,
                                 const OptimizerConfig& config);

}  // namespace fleettune::engine::autodiff

#endif  // FLEETTUNE_ENGINE_AUTODIFF_AUTODIFF_H_
