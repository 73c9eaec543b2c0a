// Graph rebuilding for passes that remove, reorder or replace nodes.
//
// Node ids are dense and a node's inputs come earlier, so any pass that drops
// or moves nodes renumbers them. GraphRewriter copies a graph node by node into
// a fresh one, remapping inputs and marked outputs; a pass decides per node
// whether to copy it, drop it, or emit replacement nodes.
//
//   GraphRewriter rw(graph);
//   for (ValueId id : order) {
//     if (drop(id)) continue;
//     RETURN_IF_ERROR(rw.Copy(id));          // or: rw.Emit(...) + rw.Map(id, new_id)
//   }
//   ASSIGN_OR_RETURN(Graph out, std::move(rw).Finish());
//   std::vector<ValueId> old_to_new = rw.old_to_new();   // kNoValue: dropped
//
// Names, attributes and parameter roles are kept. Not thread-safe.
#ifndef FLEETTUNE_ENGINE_PASSES_REWRITE_H_
#define FLEETTUNE_ENGINE_PASSES_REWRITE_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/ir/graph.h"

namespace fleettune::engine::passes {

class GraphRewriter {
 public:
  explicit GraphRewriter(const Graph& source);

  // Copies source node `id` with its inputs remapped. FailedPrecondition if an
  // input has not been copied or mapped yet (the order is not topological).
  absl::Status Copy(ValueId id);
  // Appends a new node to the rebuilt graph (inputs are ids in the NEW graph),
  // type-checked like Graph::AddNode.
  absl::StatusOr<ValueId> Emit(OpKind op, std::vector<ValueId> inputs, Attrs attrs = NoAttrs{},
                               std::string name = "");
  // Records that source value `old_id` is now `new_id` (a replacement).
  void Map(ValueId old_id, ValueId new_id) { old_to_new_[old_id] = new_id; }
  // The new id of a source value, or kNoValue when it was not copied.
  ValueId New(ValueId old_id) const { return old_to_new_[old_id]; }
  // The graph rebuilt so far (types of the new values).
  const Graph& graph() const { return out_; }

  // Marks the outputs of the source graph (remapped) and returns the new graph.
  // FailedPrecondition if a marked output was dropped.
  absl::StatusOr<Graph> Finish();
  const std::vector<ValueId>& old_to_new() const { return old_to_new_; }

 private:
  const Graph& source_;
  Graph out_;
  std::vector<ValueId> old_to_new_;
};

// For a pass that leaves the graph as it is: sets `old_to_new` (optional) to
// the identity over `num_nodes` ids and returns false ("not changed").
bool Unchanged(int num_nodes, std::vector<ValueId>* old_to_new);

// Rebuilds `graph` from the nodes in `order` (each at most once, inputs before
// users), dropping the others. Returns the new graph; `old_to_new` (optional)
// gets kNoValue for dropped nodes. FailedPrecondition when `order` is not
// topological or drops a marked output; InvalidArgument for an unknown id.
absl::StatusOr<Graph> RebuildGraph(const Graph& graph, absl::Span<const ValueId> order,
                                   std::vector<ValueId>* old_to_new = nullptr);

// Composes id maps: first `first` (a → b), then `second` (b → c).
std::vector<ValueId> ComposeMaps(const std::vector<ValueId>& first,
                                 const std::vector<ValueId>& second);

}  // namespace fleettune::engine::passes

#endif  // FLEETTUNE_ENGINE_PASSES_REWRITE_H_
