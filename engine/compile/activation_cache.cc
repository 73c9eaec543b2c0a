#include "engine/compile/activation_cache.h"

#include <algorithm>
#include <variant>

#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "engine/compile/cost.h"
#include "engine/ir/verifier.h"

namespace fleettune::engine::compile {
namespace {

// Ops whose output row b depends only on row b of their batched inputs
// (given the checks in IsPerExample).
bool IsPerExampleOp(OpKind op) {
  switch (op) {
    case OpKind::kLinear:
    case OpKind::kMatMul:
    case OpKind::kAdd:
    case OpKind::kSub:
    case OpKind::kMul:
    case OpKind::kDiv:
    case OpKind::kScale:
    case OpKind::kRelu:
    case OpKind::kActivation:
    case OpKind::kConv2d:
    case OpKind::kBatchNormInference:
    case OpKind::kMaxPool2d:
    case OpKind::kAvgPool2d:
    case OpKind::kLayerNorm:
    case OpKind::kRmsNorm:
    case OpKind::kEmbedding:
    case OpKind::kRope:
    case OpKind::kSoftmax:
    case OpKind::kReshape:
    case OpKind::kTranspose:
    case OpKind::kReduceSum:
    case OpKind::kReduceMean:
      return true;
    default:
      return false;
  }
}

bool KeepsBatchAxis(const Node& node) {
  if (const auto* p = std::get_if<PermuteAttrs>(&node.attrs))
    return !p->perm.empty() && p->perm[0] == 0;
  if (const auto* r = std::get_if<ReduceAttrs>(&node.attrs)) {
    return std::find(r->axes.begin(), r->axes.end(), 0) == r->axes.end();
  }
  return true;
}

}  // namespace

absl::StatusOr<std::optional<PrefixCut>> CutFrozenPrefix(
    const Graph& g, ValueId data_input, const std::vector<ValueId>& shared_inputs) {
  auto is_input = [&](ValueId v) { return g.IsValid(v) && g.node(v).op == OpKind::kInput; };
  if (!is_input(data_input)) {
    return absl::InvalidArgumentError(
        absl::StrCat("value ", data_input, " is not an input of the graph"));
  }
  for (ValueId v : shared_inputs) {
    if (!is_input(v) || v == data_input) {
      return absl::InvalidArgumentError(
          absl::StrCat("shared input ", v, " is not an input of the graph besides the data"));
    }
  }
  const Shape& data_shape = g.type(data_input).shape;
  if (data_shape.empty() || data_shape[0] <= 0) {
    return absl::InvalidArgumentError("the data input has no batch dimension");
  }
  const int64_t batch = data_shape[0];
  const int n = g.num_nodes();

  // Constants: fills, parameters nothing writes (updates and statistics
  // updates write their parameter inputs in place) and the shared inputs,
  // whose values are the same for every example.
  std::vector<bool> written(n, false), constant(n, false), prefix(n, false);
  for (const Node& node : g.nodes()) {
    if (node.has_output) continue;
    for (ValueId in : node.inputs) written[in] = true;
  }
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = g.node(id);
    constant[id] = node.op == OpKind::kFill || (node.op == OpKind::kParameter && !written[id]);
  }
  for (ValueId v : shared_inputs) constant[v] = true;
  prefix[data_input] = true;
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = g.node(id);
    if (!node.has_output || !IsPerExampleOp(node.op)) continue;
    // Pure ops on constants alone give constants (the positions as rope
    // reads them, reshaped).
    if (!node.inputs.empty() && std::all_of(node.inputs.begin(), node.inputs.end(),
                                            [&](ValueId in) { return constant[in]; })) {
      constant[id] = true;
      continue;
    }
    if (!KeepsBatchAxis(node)) continue;
    if (node.type.shape.empty() || node.type.shape[0] != batch) continue;
    bool reads_prefix = false, ok = true;
    for (ValueId in : node.inputs) {
      if (prefix[in]) {
        reads_prefix = true;
        ok = ok && !g.type(in).shape.empty() && g.type(in).shape[0] == batch;
      } else if (!constant[in]) {
        ok = false;
      }
    }
    prefix[id] = ok && reads_prefix;
  }

  // The boundary: prefix values read outside the prefix (or marked outputs).
  const std::vector<std::vector<ValueId>> users = g.ComputeUsers();
  std::vector<bool> is_output(n, false);
  for (ValueId o : g.outputs()) is_output[o] = true;
  PrefixCut cut;
  for (ValueId id = 0; id < n; ++id) {
    if (!prefix[id] || id == data_input) continue;
    ++cut.prefix_nodes;
    cut.prefix_flops += NodeFlops(g, id);
    const bool escapes = is_output[id] || std::any_of(users[id].begin(), users[id].end(),
                                                      [&](ValueId u) { return !prefix[u]; });
    if (escapes) {
      cut.frontier.push_back(id);
      cut.bytes_per_example += g.type(id).num_elements() / batch * DTypeSize(g.type(id).dtype);
    }
  }
  if (cut.frontier.empty()) return std::nullopt;

  // Copies node `id` of g into `out` with inputs remapped through `map`.
  auto copy = [&](Graph& out, std::vector<ValueId>& map, ValueId id) -> absl::Status {
    const Node& node = g.node(id);
    if (node.op == OpKind::kInput) {
      ASSIGN_OR_RETURN(map[id], out.AddInput(node.name, node.type));
    } else if (node.op == OpKind::kParameter) {
      ASSIGN_OR_RETURN(map[id], out.AddParameter(node.name, node.type,
                                                 std::get<ParameterAttrs>(node.attrs).role));
    } else {
      Node copied = node;
      for (ValueId& in : copied.inputs) in = map[in];
      map[id] = out.AddUncheckedNode(std::move(copied));
    }
    return absl::OkStatus();
  };

  // Prefix: the data input, the constants the prefix reads (and what they
  // are computed from), the prefix.
  std::vector<ValueId> map(n, kNoValue);
  std::vector<bool> needed(prefix);
  for (ValueId id = n - 1; id >= 0; --id) {
    if (!needed[id]) continue;
    for (ValueId in : g.node(id).inputs) needed[in] = true;
  }
  for (ValueId id = 0; id < n; ++id) {
    if (needed[id]) RETURN_IF_ERROR(copy(cut.prefix, map, id));
  }
  for (ValueId f : cut.frontier) cut.prefix.MarkOutput(map[f]);
  RETURN_IF_ERROR(VerifyGraph(cut.prefix));

  // Suffix: everything else, with the boundary values as inputs.
  std::fill(map.begin(), map.end(), kNoValue);
  std::vector<bool> frontier(n, false);
  for (ValueId f : cut.frontier) frontier[f] = true;
  for (ValueId id = 0; id < n; ++id) {
    if (frontier[id]) {
      const std::string name = absl::StrCat("cache/v", id);
      ASSIGN_OR_RETURN(map[id], cut.suffix.AddInput(name, g.type(id)));
      cut.frontier_inputs.push_back(name);
      continue;
    }
    if (prefix[id] && id != data_input) continue;
    const Node& node = g.node(id);
    const bool source = node.op == OpKind::kInput || node.op == OpKind::kParameter;
    if ((source || constant[id]) && !is_output[id] &&
        std::all_of(users[id].begin(), users[id].end(), [&](ValueId u) { return prefix[u]; })) {
      continue;  // read by the prefix alone
    }
    RETURN_IF_ERROR(copy(cut.suffix, map, id));
  }
  for (ValueId o : g.outputs()) cut.suffix.MarkOutput(map[o]);
  RETURN_IF_ERROR(VerifyGraph(cut.suffix));
  return cut;
}

}  // namespace fleettune::engine::compile
