#include "engine/passes/rewrite.h"

#include <numeric>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::passes {

GraphRewriter::GraphRewriter(const Graph& source)
    : source_(source), old_to_new_(source.num_nodes(), kNoValue) {}

absl::Status GraphRewriter::Copy(ValueId id) {
  if (!source_.IsValid(id)) {
    return absl::InvalidArgumentError(absl::StrCat("node %", id, " does not exist"));
  }
  const Node& node = source_.node(id);
  if (old_to_new_[id] != kNoValue) {
    return absl::FailedPreconditionError(absl::StrCat("node %", id, " is copied twice"));
  }
  if (node.op == OpKind::kInput) {
    ASSIGN_OR_RETURN(old_to_new_[id], out_.AddInput(node.name, node.type));
    return absl::OkStatus();
  }
  if (node.op == OpKind::kParameter) {
    const auto* attrs = std::get_if<ParameterAttrs>(&node.attrs);
    ASSIGN_OR_RETURN(old_to_new_[id],
                     out_.AddParameter(node.name, node.type,
                                       attrs != nullptr ? attrs->role : ParamRole::kWeight));
    return absl::OkStatus();
  }
  Node copy = node;
  for (ValueId& in : copy.inputs) {
    const ValueId mapped = source_.IsValid(in) ? old_to_new_[in] : kNoValue;
    if (mapped == kNoValue) {
      return absl::FailedPreconditionError(
          absl::StrCat("node %", id, ": input %", in, " has not been emitted before it"));
    }
    in = mapped;
  }
  old_to_new_[id] = out_.AddUncheckedNode(std::move(copy));
  return absl::OkStatus();
}

absl::StatusOr<ValueId> GraphRewriter::Emit(OpKind op, std::vector<ValueId> inputs, Attrs attrs,
                                            std::string name) {
  return out_.AddNode(op, std::move(inputs), std::move(attrs), std::move(name));
}

absl::StatusOr<Graph> GraphRewriter::Finish() {
  for (ValueId out : source_.outputs()) {
    const ValueId mapped = source_.IsValid(out) ? old_to_new_[out] : kNoValue;
    if (mapped == kNoValue) {
      return absl::FailedPreconditionError(absl::StrCat("marked output %", out, " was dropped"));
    }
    out_.MarkOutput(mapped);
  }
  return std::move(out_);
}

absl::StatusOr<Graph> RebuildGraph(const Graph& graph, absl::Span<const ValueId> order,
                                   std::vector<ValueId>* old_to_new) {
  GraphRewriter rw(graph);
  for (ValueId id : order) RETURN_IF_ERROR(rw.Copy(id));
  ASSIGN_OR_RETURN(Graph out, rw.Finish());
  if (old_to_new != nullptr) *old_to_new = rw.old_to_new();
  return out;
}

std::vector<ValueId> ComposeMaps(const std::vector<ValueId>& first,
                                 const std::vector<ValueId>& second) {
  std::vector<ValueId> out(first.size(), kNoValue);
  for (size_t i = 0; i < first.size(); ++i) {
    const ValueId mid = first[i];
    if (mid >= 0 && mid < static_cast<ValueId>(second.size())) out[i] = second[mid];
  }
  return out;
}

bool Unchanged(int num_nodes, std::vector<ValueId>* old_to_new) {
  if (old_to_new != nullptr) {
    old_to_new->resize(num_nodes);
    std::iota(old_to_new->begin(), old_to_new->end(), 0);
  }
  return false;
}

}  // namespace fleettune::engine::passes
