#include "engine/ir/graph.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "engine/ops/op_registry.h"

namespace fleettune::engine {

absl::StatusOr<ValueId> Graph::AddSource(OpKind op, std::string name, TensorType type,
                                         Attrs attrs) {
  if (name.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(ops::GetOpDef(op).name, " needs a non-empty name"));
  }
  if (names_.contains(name)) {
    return absl::InvalidArgumentError(absl::StrCat("duplicate name '", name, "'"));
  }
  RETURN_IF_ERROR(ValidateShape(type.shape));
  Node node;
  node.op = op;
  node.attrs = std::move(attrs);
  node.type = std::move(type);
  node.name = name;
  ValueId id = AddUncheckedNode(std::move(node));
  names_.emplace(std::move(name), id);
  return id;
}

absl::StatusOr<ValueId> Graph::AddInput(std::string name, TensorType type) {
  return AddSource(OpKind::kInput, std::move(name), std::move(type), NoAttrs{});
}

absl::StatusOr<ValueId> Graph::AddParameter(std::string name, TensorType type, ParamRole role) {
  return AddSource(OpKind::kParameter, std::move(name), std::move(type), ParameterAttrs{role});
}

absl::StatusOr<ValueId> Graph::AddNode(OpKind op, std::vector<ValueId> inputs, Attrs attrs,
                                       std::string name) {
  if (op == OpKind::kInput || op == OpKind::kParameter) {
    return absl::InvalidArgumentError("use AddInput / AddParameter for sources");
  }
  Node node;
  node.op = op;
  node.inputs = std::move(inputs);
  node.attrs = std::move(attrs);
  node.name = std::move(name);
  std::vector<const TensorType*> input_types;
  for (ValueId in : node.inputs) {
    if (!IsValid(in)) {
      return absl::InvalidArgumentError(
          absl::StrCat(ops::GetOpDef(op).name, ": input id ", in, " does not exist"));
    }
    if (!nodes_[in].has_output) {
      return absl::InvalidArgumentError(absl::StrCat(ops::GetOpDef(op).name, ": input ", in, " (",
                                                     ops::GetOpDef(nodes_[in].op).name,
                                                     ") has no output"));
    }
    input_types.push_back(&nodes_[in].type);
  }
  const ops::OpDef& def = ops::GetOpDef(op);
  ASSIGN_OR_RETURN(node.type, ops::InferType(node, input_types));
  node.has_output = def.has_output;
  return AddUncheckedNode(std::move(node));
}

ValueId Graph::AddUncheckedNode(Node node) {
  nodes_.push_back(std::move(node));
  return static_cast<ValueId>(nodes_.size() - 1);
}

std::optional<ValueId> Graph::FindByName(absl::string_view name) const {
  auto it = names_.find(name);
  if (it != names_.end()) return it->second;
  // Deserialized graphs fill nodes_ without names_; fall back to a scan.
  for (ValueId id = 0; id < num_nodes(); ++id) {
    const Node& n = nodes_[id];
    if ((n.op == OpKind::kInput || n.op == OpKind::kParameter) && n.name == name) return id;
  }
  return std::nullopt;
}

void Graph::MarkOutput(ValueId id) {
  if (std::find(outputs_.begin(), outputs_.end(), id) == outputs_.end()) outputs_.push_back(id);
}

void Graph::UnmarkOutput(ValueId id) {
  outputs_.erase(std::remove(outputs_.begin(), outputs_.end(), id), outputs_.end());
}

std::vector<std::vector<ValueId>> Graph::ComputeUsers() const {
  std::vector<std::vector<ValueId>> users(nodes_.size());
  for (ValueId id = 0; id < num_nodes(); ++id) {
    for (ValueId in : nodes_[id].inputs) {
      if (IsValid(in) && (users[in].empty() || users[in].back() != id)) users[in].push_back(id);
    }
  }
  return users;
}

}  // namespace fleettune::engine
