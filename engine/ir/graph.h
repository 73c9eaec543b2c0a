// The training graph: SSA, dense ids, typed attributes.
//
//   Graph g;
//   ValueId x = g.AddInput("x", {DType::kF32, {64, 784}});
//   ValueId w = g.AddParameter("fc1.weight", {DType::kF32, {256, 784}});
//   ASSIGN_OR_RETURN(ValueId y, g.AddNode(OpKind::kLinear, {x, w}));
//
// AddNode validates the inputs and infers the output type with the op's
// definition (engine/ops), so a graph built through this API is always well
// typed. Graphs are values: copy one to transform it. Not thread-safe.
#ifndef FLEETTUNE_ENGINE_IR_GRAPH_H_
#define FLEETTUNE_ENGINE_IR_GRAPH_H_

#include <algorithm>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/ir/node.h"

namespace fleettune::engine {

class Graph {
 public:
  // Per-step data. InvalidArgument on a duplicate name or invalid shape.
  absl::StatusOr<ValueId> AddInput(std::string name, TensorType type);
  // Persistent state. InvalidArgument on a duplicate name or invalid shape.
  absl::StatusOr<ValueId> AddParameter(std::string name, TensorType type,
                                       ParamRole role = ParamRole::kWeight);
  // Appends a computation. InvalidArgument when the arity, input ids or
  // input types do not fit the op (message names the op and the problem).
  absl::StatusOr<ValueId> AddNode(OpKind op, std::vector<ValueId> inputs, Attrs attrs = NoAttrs{},
                                  std::string name = "");

  // Appends a node exactly as given, with no checking. For deserializers and
  // tests of the verifier; everything else uses AddNode.
  ValueId AddUncheckedNode(Node node);

  const Node& node(ValueId id) const { return nodes_[id]; }
  Node& mutable_node(ValueId id) { return nodes_[id]; }
  // A deque, so references to nodes stay valid while nodes are appended
  // (gradient rules hold them while emitting).
  const std::deque<Node>& nodes() const { return nodes_; }
  int num_nodes() const { return static_cast<int>(nodes_.size()); }
  const TensorType& type(ValueId id) const { return nodes_[id].type; }
  bool IsValid(ValueId id) const { return id >= 0 && id < num_nodes(); }

  // The kInput / kParameter node with this name.
  std::optional<ValueId> FindByName(absl::string_view name) const;

  // Values the caller reads after a step (loss, logits): the memory planner
  // keeps them alive to the end of the step.
  void MarkOutput(ValueId id);
  void UnmarkOutput(ValueId id);
  const std::vector<ValueId>& outputs() const { return outputs_; }
  bool IsOutput(ValueId id) const {
    return std::find(outputs_.begin(), outputs_.end(), id) != outputs_.end();
  }

  // users[v] = ids of the nodes that read v, in increasing order.
  std::vector<std::vector<ValueId>> ComputeUsers() const;

 private:
  absl::StatusOr<ValueId> AddSource(OpKind op, std::string name, TensorType type, Attrs attrs);

  std::deque<Node> nodes_;
  std::vector<ValueId> outputs_;
  absl::flat_hash_map<std::string, ValueId> names_;
};

}  // namespace fleettune::engine

#endif  // FLEETTUNE_ENGINE_IR_GRAPH_H_
