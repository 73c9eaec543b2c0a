#include "engine/passes/fuse.h"

#include <algorithm>
#include <optional>

#include "engine/base/status_macros.h"
#include "engine/passes/fuse_elementwise.h"
#include "engine/passes/rewrite.h"

namespace fleettune::engine::passes {
namespace {

std::optional<FusedActivationFn> ActivationOf(const Node& node) {
  if (node.op == OpKind::kRelu) return FusedActivationFn::kRelu;
  if (node.op != OpKind::kActivation) return std::nullopt;
  const auto* a = std::get_if<ActivationAttrs>(&node.attrs);
  if (a == nullptr || static_cast<int>(a->fn) > static_cast<int>(ActivationFn::kTanh)) {
    return std::nullopt;
  }
  return static_cast<FusedActivationFn>(static_cast<int>(a->fn) + 1);
}

// The fused op and attributes for producer `p` followed by `act`, if any.
std::optional<std::pair<OpKind, Attrs>> FusedFor(const Node& p, FusedActivationFn act) {
  switch (p.op) {
    case OpKind::kConv2d:
      return std::make_pair(OpKind::kConv2dActivation,
                            Attrs{FusedConvAttrs{std::get<Conv2dAttrs>(p.attrs), act}});
    case OpKind::kLinear:
      return std::make_pair(OpKind::kLinearActivation, Attrs{FusedActivationAttrs{act}});
    case OpKind::kAdd:
      return std::make_pair(OpKind::kAddActivation, Attrs{FusedActivationAttrs{act}});
    case OpKind::kBatchNormInference:
      return std::make_pair(OpKind::kBatchNormInferenceActivation,
                            Attrs{FusedBatchNormAttrs{std::get<BatchNormAttrs>(p.attrs), act}});
    case OpKind::kLayerNorm:
      return std::make_pair(OpKind::kLayerNormActivation,
                            Attrs{FusedNormAttrs{std::get<NormAttrs>(p.attrs), act}});
    case OpKind::kRmsNorm:
      return std::make_pair(OpKind::kRmsNormActivation,
                            Attrs{FusedNormAttrs{std::get<NormAttrs>(p.attrs), act}});
    default:
      return std::nullopt;
  }
}

// The transpose a matmul operand (or, with `to_stored`, y) interleaved over
// `heads` head dims stands for (MatMulAttrs), for a rank-r value.
PermuteAttrs HeadTranspose(int rank, int heads, bool to_stored) {
  PermuteAttrs t;
  for (int i = 0; i < rank; ++i) {
    t.perm.push_back(to_stored ? InterleavedLogicalDim(rank, heads, i)
                               : InterleavedStoredDim(rank, heads, i));
  }
  return t;
}

// A folded matmul as the transposes, plain matmul and scale fold_matmul.h
// took in; returns the value standing for its output.
absl::StatusOr<ValueId> EmitUnfoldedMatMul(GraphRewriter& rw, const Node& node) {
  const auto& folded = std::get<MatMulAttrs>(node.attrs);
  const Graph& out = rw.graph();
  std::vector<ValueId> operands;
  for (int slot : {0, 1}) {
    ValueId v = rw.New(node.inputs[slot]);
    const int heads = slot == 0 ? folded.interleaved_a : folded.interleaved_b;
    if (heads != 0) {
      ASSIGN_OR_RETURN(v, rw.Emit(OpKind::kTranspose, {v},
                                  HeadTranspose(static_cast<int>(out.type(v).shape.size()), heads,
                                                /*to_stored=*/false)));
    }
    operands.push_back(v);
  }
  ASSIGN_OR_RETURN(ValueId y, rw.Emit(OpKind::kMatMul, std::move(operands),
                                      MatMulAttrs{folded.transpose_a, folded.transpose_b}));
  if (folded.alpha != 1.0f) {
    ASSIGN_OR_RETURN(y, rw.Emit(OpKind::kScale, {y}, ScalarAttrs{folded.alpha}));
  }
  if (folded.interleaved_y != 0) {
    ASSIGN_OR_RETURN(y, rw.Emit(OpKind::kTranspose, {y},
                                HeadTranspose(static_cast<int>(out.type(y).shape.size()),
                                              folded.interleaved_y, /*to_stored=*/true)));
  }
  return y;
}

}  // namespace

absl::StatusOr<bool> FuseActivations(Graph& graph, std::vector<ValueId>* old_to_new, int* fused) {
  const int n = graph.num_nodes();
  const std::vector<std::vector<ValueId>> users = graph.ComputeUsers();
  std::vector<bool> skip(n, false);
  std::vector<std::optional<std::pair<OpKind, Attrs>>> replace(n);
  int count = 0;
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    const std::optional<FusedActivationFn> act = ActivationOf(node);
    if (!act.has_value() || node.inputs.size() != 1) continue;
    const ValueId p = node.inputs[0];
    if (!graph.IsValid(p) || users[p].size() != 1) continue;
    if (graph.IsOutput(p)) continue;
    std::optional<std::pair<OpKind, Attrs>> f = FusedFor(graph.node(p), *act);
    if (!f.has_value()) continue;
    replace[id] = std::move(f);
    skip[p] = true;
    ++count;
  }
  if (fused != nullptr) *fused = count;
  if (count == 0) return Unchanged(n, old_to_new);
  GraphRewriter rw(graph);
  for (ValueId id = 0; id < n; ++id) {
    if (skip[id]) continue;
    if (!replace[id].has_value()) {
      RETURN_IF_ERROR(rw.Copy(id));
      continue;
    }
    const Node& producer = graph.node(graph.node(id).inputs[0]);
    std::vector<ValueId> inputs;
    for (ValueId in : producer.inputs) inputs.push_back(rw.New(in));
    ASSIGN_OR_RETURN(ValueId y, rw.Emit(replace[id]->first, std::move(inputs), replace[id]->second,
                                        graph.node(id).name));
    rw.Map(id, y);
  }
  ASSIGN_OR_RETURN(graph, rw.Finish());
  if (old_to_new != nullptr) *old_to_new = rw.old_to_new();
  return true;
}

absl::StatusOr<bool> UnfuseActivations(Graph& graph, std::vector<ValueId>* old_to_new) {
  GraphRewriter rw(graph);
  bool changed = false;
  for (ValueId id = 0; id < graph.num_nodes(); ++id) {
    const Node& node = graph.node(id);
    OpKind producer;
    Attrs producer_attrs = NoAttrs{};
    FusedActivationFn act;
    switch (node.op) {
      case OpKind::kConv2dActivation: {
        const auto& a = std::get<FusedConvAttrs>(node.attrs);
        producer = OpKind::kConv2d;
        producer_attrs = a.conv;
        act = a.act;
        break;
      }
      case OpKind::kLinearActivation:
      case OpKind::kAddActivation:
        producer = node.op == OpKind::kLinearActivation ? OpKind::kLinear : OpKind::kAdd;
        act = std::get<FusedActivationAttrs>(node.attrs).act;
        break;
      case OpKind::kBatchNormInferenceActivation: {
        const auto& a = std::get<FusedBatchNormAttrs>(node.attrs);
        producer = OpKind::kBatchNormInference;
        producer_attrs = a.bn;
        act = a.act;
        break;
      }
      case OpKind::kLayerNormActivation:
      case OpKind::kRmsNormActivation: {
        const auto& a = std::get<FusedNormAttrs>(node.attrs);
        producer = node.op == OpKind::kLayerNormActivation ? OpKind::kLayerNorm : OpKind::kRmsNorm;
        producer_attrs = a.norm;
        act = a.act;
        break;
      }
      case OpKind::kElementwiseChain: {
        ASSIGN_OR_RETURN(ValueId out, EmitUnfusedChain(rw, node));
        rw.Map(id, out);
        changed = true;
        continue;
      }
      case OpKind::kMatMul:
        if (std::get<MatMulAttrs>(node.attrs).folded()) {
          ASSIGN_OR_RETURN(ValueId out, EmitUnfoldedMatMul(rw, node));
          rw.Map(id, out);
          changed = true;
          continue;
        }
        RETURN_IF_ERROR(rw.Copy(id));
        continue;
      default:
        RETURN_IF_ERROR(rw.Copy(id));
        continue;
    }
    std::vector<ValueId> inputs;
    for (ValueId in : node.inputs) inputs.push_back(rw.New(in));
    ASSIGN_OR_RETURN(ValueId pre, rw.Emit(producer, std::move(inputs), producer_attrs));
    ValueId out;
    if (act == FusedActivationFn::kRelu) {
      ASSIGN_OR_RETURN(out, rw.Emit(OpKind::kRelu, {pre}, NoAttrs{}, node.name));
    } else {
      const ActivationFn fn = static_cast<ActivationFn>(static_cast<int>(act) - 1);
      ASSIGN_OR_RETURN(out, rw.Emit(OpKind::kActivation, {pre}, ActivationAttrs{fn}, node.name));
    }
    rw.Map(id, out);
    changed = true;
  }
  if (!changed) {
    if (old_to_new != nullptr) {
      old_to_new->resize(graph.num_nodes());
      for (ValueId id = 0; id < graph.num_nodes(); ++id) (*old_to_new)[id] = id;
    }
    return false;
  }
  ASSIGN_OR_RETURN(Graph out, rw.Finish());
  if (old_to_new != nullptr) *old_to_new = rw.old_to_new();
  graph = std::move(out);
  return true;
}

}  // namespace fleettune::engine::passes
