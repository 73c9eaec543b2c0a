#include "engine/ir/verifier.h"

#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/ops/op_registry.h"

namespace fleettune::engine {
namespace {

template <typename... Args>
absl::Status NodeError(const Graph& g, ValueId id, const Args&... args) {
  return absl::InvalidArgumentError(
      absl::StrCat("node ", id, " (", ops::GetOpDef(g.node(id).op).name, "): ", args...));
}

// The role operand i of update op `op` must have as the parameter it writes,
// or nullopt for an operand it only reads (a gradient, a batch).
std::optional<ParamRole> WrittenRole(OpKind op, size_t i) {
  if (!WritesOperand(op, static_cast<int>(i))) return std::nullopt;
  if (op == OpKind::kBatchNormStatsUpdate) {
    return ParamRole::kBuffer;  // running mean, running var, num_batches_tracked
  }
  return i == 0 ? ParamRole::kWeight : ParamRole::kOptimizerState;
}

const char* RoleName(ParamRole role) {
  switch (role) {
    case ParamRole::kWeight:
      return "weight";
    case ParamRole::kOptimizerState:
      return "optimizer-state";
    case ParamRole::kBuffer:
      return "buffer";
  }
  return "?";
}

}  // namespace

bool IsUpdateOp(OpKind op) {
  return op == OpKind::kSgdUpdate || op == OpKind::kAdamWUpdate ||
         op == OpKind::kBatchNormStatsUpdate || op == OpKind::kSgdMatMulUpdate;
}

bool WritesOperand(OpKind op, int i) {
  switch (op) {
    case OpKind::kBatchNormStatsUpdate:
      return i != 0;  // reads the batch
    case OpKind::kSgdUpdate:
    case OpKind::kAdamWUpdate:
      return i != 1;  // reads the gradient
    case OpKind::kSgdMatMulUpdate:
      return i != 1 && i != 2;  // reads the gradient's two factors
    default:
      return false;
  }
}

absl::Status VerifyGraph(const Graph& g) {
  absl::flat_hash_set<std::string> names;
  // Tensors written by an update seen so far; reading them later is an error.
  absl::flat_hash_set<ValueId> updated;
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    const Node& node = g.node(id);
    if (static_cast<int>(node.op) >= kNumOpKinds) {
      return absl::InvalidArgumentError(absl::StrCat("node ", id, ": unknown op"));
    }
    const bool source = node.op == OpKind::kInput || node.op == OpKind::kParameter;
    if (source) {
      if (!node.inputs.empty()) return NodeError(g, id, "sources take no inputs");
      if (node.name.empty()) return NodeError(g, id, "needs a name");
      if (!names.insert(node.name).second) {
        return NodeError(g, id, "duplicate name '", node.name, "'");
      }
      if (node.op == OpKind::kParameter && !std::holds_alternative<ParameterAttrs>(node.attrs)) {
        return NodeError(g, id, "needs ParameterAttrs");
      }
      if (absl::Status s = ValidateShape(node.type.shape); !s.ok()) {
        return NodeError(g, id, s.message());
      }
    }
    std::vector<const TensorType*> input_types;
    for (ValueId in : node.inputs) {
      if (in < 0 || in >= id) return NodeError(g, id, "input %", in, " is not an earlier node");
      if (!g.node(in).has_output) return NodeError(g, id, "input %", in, " has no output");
      if (updated.contains(in)) {
        return NodeError(g, id, "reads %", in, " after its optimizer update");
      }
      input_types.push_back(&g.node(in).type);
    }
    absl::StatusOr<TensorType> inferred = ops::InferType(node, input_types);
    if (!inferred.ok()) return NodeError(g, id, inferred.status().message());
    if (*inferred != node.type) {
      return NodeError(g, id, "type is ", TypeToString(node.type), " but inference gives ",
                       TypeToString(*inferred));
    }
    if (node.has_output != ops::GetOpDef(node.op).has_output) {
      return NodeError(g, id, "has_output disagrees with the op definition");
    }
    if (IsUpdateOp(node.op)) {
      for (size_t i = 0; i < node.inputs.size(); ++i) {
        const std::optional<ParamRole> want = WrittenRole(node.op, i);
        if (!want.has_value()) continue;
        const Node& target = g.node(node.inputs[i]);
        const auto* attrs = std::get_if<ParameterAttrs>(&target.attrs);
        if (target.op != OpKind::kParameter || attrs == nullptr || attrs->role != *want) {
          return NodeError(g, id, "operand ", i, " (%", node.inputs[i], ") must be a ",
                           RoleName(*want), " parameter");
        }
        if (!updated.insert(node.inputs[i]).second) {
          return NodeError(g, id, "%", node.inputs[i], " is updated twice");
        }
      }
      // The kernels read the other operands while they write these.
      for (size_t i = 0; i < node.inputs.size(); ++i) {
        if (WritesOperand(node.op, static_cast<int>(i))) continue;
        for (size_t j = 0; j < node.inputs.size(); ++j) {
          if (WritesOperand(node.op, static_cast<int>(j)) && node.inputs[j] == node.inputs[i]) {
            return NodeError(g, id, "operand ", i, " reads %", node.inputs[i],
                             ", which this update writes");
          }
        }
      }
    }
  }
  for (ValueId out : g.outputs()) {
    if (!g.IsValid(out) || !g.node(out).has_output) {
      return absl::InvalidArgumentError(absl::StrCat("output %", out, " is not a value"));
    }
  }
  return absl::OkStatus();
}

}  // namespace fleettune::engine
