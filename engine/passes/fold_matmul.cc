#include "engine/passes/fold_matmul.h"

#include <algorithm>
#include <cmath>

#include "engine/base/status_macros.h"
#include "engine/passes/rewrite.h"

namespace fleettune::engine::passes {
namespace {

// The head dims k > 0 of a transpose that takes a value stored
// [..., T, H1..Hk, D] to [..., H1..Hk, T, D] (as an input fold reads it) or,
// with `to_stored`, back (as an output fold writes it); 0 for any other
// node. For k = 1 both are the swap of the two axes before the last.
int InterleavedHeads(const Node& node, bool to_stored) {
  if (node.op != OpKind::kTranspose) return 0;
  const std::vector<int>& perm = std::get<PermuteAttrs>(node.attrs).perm;
  const int r = static_cast<int>(perm.size());
  for (int heads = 1; heads + 2 <= r; ++heads) {
    bool match = true;
    for (int i = 0; i < r && match; ++i) {
      match = perm[i] ==
              (to_stored ? InterleavedLogicalDim(r, heads, i) : InterleavedStoredDim(r, heads, i));
    }
    if (match) return heads;
  }
  return 0;
}

// Scaling by this value is exact (short of overflow and underflow).
bool IsPowerOfTwoScale(const Node& node) {
  if (node.op != OpKind::kScale) return false;
  const float v = std::get<ScalarAttrs>(node.attrs).value;
  int exponent = 0;
  return std::isfinite(v) && std::fabs(std::frexp(v, &exponent)) == 0.5f;
}

// Folds `node` (a head transpose or a scale) into a matmul's operand `slot`
// (0 = a, 1 = b) or, with slot 2, its output; false when it is neither or
// that operand already is interleaved.
bool FoldInto(const Node& node, int slot, MatMulAttrs* attrs) {
  if (IsPowerOfTwoScale(node)) {
    attrs->alpha *= std::get<ScalarAttrs>(node.attrs).value;
    return true;
  }
  const int heads = InterleavedHeads(node, /*to_stored=*/slot == 2);
  int* flag = slot == 0   ? &attrs->interleaved_a
              : slot == 1 ? &attrs->interleaved_b
                          : &attrs->interleaved_y;
  if (heads == 0 || *flag != 0) return false;
  *flag = heads;
  return true;
}

// What one round does: matmuls re-emitted with new inputs and attributes,
// and folded nodes dropped or taken over by the matmul that absorbed them.
struct Round {
  explicit Round(const Graph& graph)
      : graph(graph),
        users(graph.ComputeUsers()),
        rewritten(graph.num_nodes(), false),
        inputs(graph.num_nodes()),
        attrs(graph.num_nodes()),
        folded(graph.num_nodes(), false),
        absorbed_by(graph.num_nodes(), kNoValue) {}

  // Matmul u's attributes and inputs as this round has them so far.
  MatMulAttrs Attrs(ValueId u) const {
    return rewritten[u] ? attrs[u] : std::get<MatMulAttrs>(graph.node(u).attrs);
  }
  void Rewrite(ValueId u, const MatMulAttrs& a) {
    if (!rewritten[u]) inputs[u] = graph.node(u).inputs;
    attrs[u] = a;
    rewritten[u] = true;
  }

  // The rebuilt graph.
  absl::Status Apply(Graph& out, std::vector<ValueId>* old_to_new) const {
    GraphRewriter rw(graph);
    for (ValueId id = 0; id < graph.num_nodes(); ++id) {
      if (folded[id]) {
        if (absorbed_by[id] != kNoValue) rw.Map(id, rw.New(absorbed_by[id]));
        continue;
      }
      if (!rewritten[id]) {
        RETURN_IF_ERROR(rw.Copy(id));
        continue;
      }
      std::vector<ValueId> mapped;
      for (ValueId in : inputs[id]) mapped.push_back(rw.New(in));
      ASSIGN_OR_RETURN(ValueId y,
                       rw.Emit(OpKind::kMatMul, std::move(mapped), attrs[id], graph.node(id).name));
      rw.Map(id, y);
    }
    ASSIGN_OR_RETURN(out, rw.Finish());
    *old_to_new = rw.old_to_new();
    return absl::OkStatus();
  }

  const Graph& graph;
  const std::vector<std::vector<ValueId>> users;
  std::vector<bool> rewritten;
  std::vector<std::vector<ValueId>> inputs;
  std::vector<MatMulAttrs> attrs;
  std::vector<bool> folded;
  std::vector<ValueId> absorbed_by;  // the matmul that took a folded node's place, if any
};

// Input folds: every foldable node read only by matmuls goes into each of
// them. Returns the number folded.
int PlanInputFolds(Round& round) {
  const Graph& graph = round.graph;
  int count = 0;
  for (ValueId p = 0; p < graph.num_nodes(); ++p) {
    const Node& node = graph.node(p);
    const std::vector<ValueId>& readers = round.users[p];
    if (graph.IsOutput(p) || readers.empty()) continue;
    if (InterleavedHeads(node, /*to_stored=*/false) == 0 && !IsPowerOfTwoScale(node)) continue;
    bool all = true;
    for (ValueId u : readers) all = all && graph.node(u).op == OpKind::kMatMul;
    if (!all) continue;
    // Tentatively fold into every reader (once per reader, both slots if it
    // reads p twice); give up if any refuses.
    std::vector<std::pair<ValueId, MatMulAttrs>> updates;
    for (ValueId u : readers) {
      if (std::any_of(updates.begin(), updates.end(),
                      [&](const auto& e) { return e.first == u; })) {
        continue;
      }
      MatMulAttrs a = round.Attrs(u);
      for (int slot : {0, 1}) {
        if (graph.node(u).inputs[slot] == p) all = all && FoldInto(node, slot, &a);
      }
      updates.emplace_back(u, a);
    }
    if (!all) continue;
    for (const auto& [u, a] : updates) {
      round.Rewrite(u, a);
      for (ValueId& in : round.inputs[u]) {
        if (in == p) in = node.inputs[0];
      }
    }
    round.folded[p] = true;
    ++count;
  }
  return count;
}

// Output folds: a matmul whose only reader is a foldable node takes it over.
int PlanOutputFolds(Round& round) {
  const Graph& graph = round.graph;
  int count = 0;
  for (ValueId m = 0; m < graph.num_nodes(); ++m) {
    const Node& node = graph.node(m);
    if (node.op != OpKind::kMatMul || round.users[m].size() != 1 || graph.IsOutput(m)) continue;
    const ValueId u = round.users[m][0];
    MatMulAttrs a = round.Attrs(m);
    if (!FoldInto(graph.node(u), 2, &a)) continue;
    round.Rewrite(m, a);
    round.folded[u] = true;
    round.absorbed_by[u] = m;
    ++count;
  }
  return count;
}

// One round of `plan` (PlanInputFolds or PlanOutputFolds) applied to graph.
absl::StatusOr<int> FoldRound(Graph& graph, int (*plan)(Round&), std::vector<ValueId>* map) {
  Round round(graph);
  const int count = plan(round);
  if (count > 0) {
    Graph out;
    std::vector<ValueId> step;
    RETURN_IF_ERROR(round.Apply(out, &step));
    graph = std::move(out);
    *map = ComposeMaps(*map, step);
  }
  return count;
}

}  // namespace

absl::StatusOr<bool> FoldIntoMatMuls(Graph& graph, std::vector<ValueId>* old_to_new, int* folded) {
  std::vector<ValueId> map;
  Unchanged(graph.num_nodes(), &map);
  int total = 0;
  // Each round removes nodes, so this ends; a chain (transpose → scale →
  // matmul) takes one round per link.
  for (;;) {
    ASSIGN_OR_RETURN(int inputs, FoldRound(graph, PlanInputFolds, &map));
    ASSIGN_OR_RETURN(int outputs, FoldRound(graph, PlanOutputFolds, &map));
    total += inputs + outputs;
    if (inputs + outputs == 0) break;
  }
  if (folded != nullptr) *folded = total;
  if (old_to_new != nullptr) *old_to_new = std::move(map);
  return total > 0;
}

}  // namespace fleettune::engine::passes
