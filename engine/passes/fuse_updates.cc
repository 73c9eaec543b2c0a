#include "engine/passes/fuse_updates.h"

#include <algorithm>

#include "engine/base/status_macros.h"
#include "engine/passes/rewrite.h"

namespace fleettune::engine::passes {
namespace {

// Whether update `id` (sgd_update) can take its gradient's matmul inside.
bool Fusible(const Graph& graph, const std::vector<std::vector<ValueId>>& users, ValueId id) {
  const Node& update = graph.node(id);
  if (update.op != OpKind::kSgdUpdate || update.inputs.size() < 2) return false;
  const ValueId g = update.inputs[1];
  const Node& product = graph.node(g);
  if (product.op != OpKind::kMatMul || users[g].size() != 1) return false;
  if (std::get<MatMulAttrs>(product.attrs).folded()) return false;
  if (graph.IsOutput(g)) return false;
  for (ValueId factor : product.inputs) {
    if (graph.type(factor).shape.size() != 2) return false;
    // The update writes its parameter and buffer while the GEMM reads the
    // factors: they must be other tensors.
    for (size_t i = 0; i < update.inputs.size(); ++i) {
      if (i != 1 && update.inputs[i] == factor) return false;
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<bool> FuseUpdates(Graph& graph, std::vector<ValueId>* old_to_new, int* fused) {
  const int n = graph.num_nodes();
  const std::vector<std::vector<ValueId>> users = graph.ComputeUsers();
  std::vector<bool> fuse(n, false), skip(n, false);
  int count = 0;
  for (ValueId id = 0; id < n; ++id) {
    if (!Fusible(graph, users, id)) continue;
    fuse[id] = true;
    skip[graph.node(id).inputs[1]] = true;
    ++count;
  }
  if (fused != nullptr) *fused = count;
  if (count == 0) return Unchanged(n, old_to_new);
  GraphRewriter rw(graph);
  for (ValueId id = 0; id < n; ++id) {
    if (skip[id]) continue;
    if (!fuse[id]) {
      RETURN_IF_ERROR(rw.Copy(id));
      continue;
    }
    // At the update's place: after every reader of the weight, as before.
    const Node& update = graph.node(id);
    const Node& product = graph.node(update.inputs[1]);
    std::vector<ValueId> inputs = {rw.New(update.inputs[0]), rw.New(product.inputs[0]),
                                   rw.New(product.inputs[1])};
    for (size_t i = 2; i < update.inputs.size(); ++i) inputs.push_back(rw.New(update.inputs[i]));
    FusedSgdAttrs attrs{std::get<SgdAttrs>(update.attrs), std::get<MatMulAttrs>(product.attrs)};
    ASSIGN_OR_RETURN(ValueId fused_id, rw.Emit(OpKind::kSgdMatMulUpdate, std::move(inputs),
                                               std::move(attrs), update.name));
    rw.Map(id, fused_id);
  }
  ASSIGN_OR_RETURN(graph, rw.Finish());
  if (old_to_new != nullptr) *old_to_new = rw.old_to_new();
  return true;
}

}  // namespace fleettune::engine::passes
