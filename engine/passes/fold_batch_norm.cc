#include "engine/passes/fold_batch_norm.h"

#include <algorithm>

#include "engine/base/status_macros.h"
#include "engine/passes/rewrite.h"

namespace fleettune::engine::passes {
namespace {

// The conv feeding BatchNorm node `bn` when the pair can fold, else kNoValue.
ValueId FoldableConv(const Graph& g, ValueId bn, const std::vector<std::vector<ValueId>>& users) {
  const Node& node = g.node(bn);
  if (node.op != OpKind::kBatchNormInference || node.inputs.size() != 5) return kNoValue;
  const ValueId conv = node.inputs[0];
  const Node& c = g.node(conv);
  if (c.op != OpKind::kConv2d || c.type.shape.size() != 4) return kNoValue;
  if (users[conv].size() != 1 || users[conv][0] != bn) return kNoValue;
  const auto& outs = g.outputs();
  if (std::find(outs.begin(), outs.end(), conv) != outs.end()) return kNoValue;
  return conv;
}

}  // namespace

absl::StatusOr<bool> FoldBatchNorm(Graph& graph, std::vector<ValueId>* old_to_new, int* folded) {
  const int n = graph.num_nodes();
  const std::vector<std::vector<ValueId>> users = graph.ComputeUsers();
  std::vector<ValueId> conv_of(n, kNoValue);  // per BatchNorm node
  std::vector<bool> skip(n, false);           // convs folded into their BatchNorm
  int count = 0;
  for (ValueId id = 0; id < n; ++id) {
    const ValueId conv = FoldableConv(graph, id, users);
    if (conv == kNoValue) continue;
    conv_of[id] = conv;
    skip[conv] = true;
    ++count;
  }
  if (folded != nullptr) *folded = count;
  if (count == 0) return Unchanged(n, old_to_new);
  GraphRewriter rw(graph);
  for (ValueId id = 0; id < n; ++id) {
    if (skip[id]) continue;
    if (conv_of[id] == kNoValue) {
      RETURN_IF_ERROR(rw.Copy(id));
      continue;
    }
    const Node& bn = graph.node(id);
    const Node& conv = graph.node(conv_of[id]);
    const auto& bn_attrs = std::get<BatchNormAttrs>(bn.attrs);
    const ValueId x = rw.New(conv.inputs[0]);
    const ValueId w = rw.New(conv.inputs[1]);
    const ValueId mean = rw.New(bn.inputs[1]);
    const ValueId var = rw.New(bn.inputs[2]);
    const ValueId gamma = rw.New(bn.inputs[3]);
    const ValueId beta = rw.New(bn.inputs[4]);
    const Shape& w_shape = graph.type(conv.inputs[1]).shape;
    const int64_t c = w_shape[0];
    const int64_t k = NumElements(w_shape) / std::max<int64_t>(c, 1);
    ASSIGN_OR_RETURN(ValueId zeros, rw.Emit(OpKind::kFill, {}, FillAttrs{0.0f, {c}}));
    // Wf = W·s, per output channel.
    ASSIGN_OR_RETURN(ValueId w3, rw.Emit(OpKind::kReshape, {w}, ShapeAttrs{{1, c, k}}));
    ASSIGN_OR_RETURN(ValueId ws3, rw.Emit(OpKind::kBatchNormInference,
                                          {w3, zeros, var, gamma, zeros}, bn_attrs));
    ASSIGN_OR_RETURN(ValueId wf, rw.Emit(OpKind::kReshape, {ws3}, ShapeAttrs{w_shape}));
    // shift = (b − μ)·s + β.
    const ValueId b = conv.inputs.size() == 3 ? rw.New(conv.inputs[2]) : zeros;
    ASSIGN_OR_RETURN(ValueId b2, rw.Emit(OpKind::kReshape, {b}, ShapeAttrs{{1, c}}));
    ASSIGN_OR_RETURN(ValueId shift2,
                     rw.Emit(OpKind::kBatchNormInference, {b2, mean, var, gamma, beta}, bn_attrs));
    ASSIGN_OR_RETURN(ValueId shift, rw.Emit(OpKind::kReshape, {shift2}, ShapeAttrs{{c}}));
    ASSIGN_OR_RETURN(ValueId y, rw.Emit(OpKind::kConv2d, {x, wf, shift}, conv.attrs, bn.name));
    rw.Map(id, y);
  }
  ASSIGN_OR_RETURN(graph, rw.Finish());
  if (old_to_new != nullptr) *old_to_new = rw.old_to_new();
  return true;
}

}  // namespace fleettune::engine::passes
