#include "engine/passes/fold_matmul.h"

#include <algorithm>
#include <cmath>

#include "engine/base/status_macros.h"
#include "engine/passes/rewrite.h"

namespace fleettune::engine::passes {
namespace {

// [..., T, H, D] ↔ [..., H, T, D]: the last axis stays, the two before it swap.
bool IsHeadSwap(const Node& node) {
  if (node.op != OpKind::kTranspose) return false;
  const std::vector<int>& perm = std::get<PermuteAttrs>(node.attrs).perm;
  const int r = static_cast<int>(perm.size());
  if (r < 3) return false;
  for (int i = 0; i < r; ++i) {
    const int want = i == r - 3 ? r - 2 : i == r - 2 ? r - 3 : i;
    if (perm[i] != want) return false;
  }
  return true;
}

// Scaling by this value is exact (short of overflow and underflow).
bool IsPowerOfTwoScale(const Node& node) {
  if (node.op != OpKind::kScale) return false;
  const float v = std::get<ScalarAttrs>(node.attrs).value;
  int exponent = 0;
  return std::isfinite(v) && std::fabs(std::frexp(v, &exponent)) == 0.5f;
}

bool Foldable(const Node& node) { return IsHeadSwap(node) || IsPowerOfTwoScale(node); }

bool IsOutput(const Graph& graph, ValueId id) {
  const auto& outs = graph.outputs();
  return std::find(outs.begin(), outs.end(), id) != outs.end();
}

// Folds `node` (a head swap or a scale) into a matmul's operand `slot` (0 =
// a, 1 = b) or, with slot 2, its output; false when that operand already is
// interleaved.
bool FoldInto(const Node& node, int slot, MatMulAttrs* attrs) {
  if (node.op == OpKind::kScale) {
    attrs->alpha *= std::get<ScalarAttrs>(node.attrs).value;
    return true;
  }
  bool* flag = slot == 0   ? &attrs->interleaved_a
               : slot == 1 ? &attrs->interleaved_b
                           : &attrs->interleaved_y;
  if (*flag) return false;
  *flag = true;
  return true;
}

// One round of input folds: every foldable node read only by matmuls goes
// into each of them. Returns the number folded.
absl::StatusOr<int> FoldInputs(Graph& graph, std::vector<ValueId>* old_to_new) {
  const int n = graph.num_nodes();
  const auto users = graph.ComputeUsers();
  std::vector<bool> drop(n, false);
  std::vector<MatMulAttrs> attrs(n);
  std::vector<std::vector<ValueId>> inputs(n);
  std::vector<bool> changed(n, false);
  int count = 0;
  for (ValueId p = 0; p < n; ++p) {
    const Node& node = graph.node(p);
    if (!Foldable(node) || IsOutput(graph, p) || users[p].empty()) continue;
    bool all = true;
    for (ValueId u : users[p]) all = all && graph.node(u).op == OpKind::kMatMul;
    if (!all) continue;
    // Tentatively fold into every reader; give up if any refuses.
    std::vector<std::pair<ValueId, MatMulAttrs>> updates;
    for (ValueId u : users[p]) {
      if (std::find_if(updates.begin(), updates.end(),
                       [&](const auto& e) { return e.first == u; }) != updates.end()) {
        continue;  // a matmul reading p twice: both slots handled below
      }
      MatMulAttrs a = changed[u] ? attrs[u] : std::get<MatMulAttrs>(graph.node(u).attrs);
      for (int slot : {0, 1}) {
        if (graph.node(u).inputs[slot] == p) all = all && FoldInto(node, slot, &a);
      }
      updates.emplace_back(u, a);
    }
    if (!all) continue;
    for (auto& [u, a] : updates) {
      if (!changed[u]) inputs[u] = graph.node(u).inputs;
      for (ValueId& in : inputs[u]) {
        if (in == p) in = node.inputs[0];
      }
      attrs[u] = a;
      changed[u] = true;
    }
    drop[p] = true;
    ++count;
  }
  if (count == 0) return 0;
  GraphRewriter rw(graph);
  for (ValueId id = 0; id < n; ++id) {
    if (drop[id]) continue;
    if (!changed[id]) {
      RETURN_IF_ERROR(rw.Copy(id));
      continue;
    }
    std::vector<ValueId> mapped;
    for (ValueId in : inputs[id]) mapped.push_back(rw.New(in));
    ASSIGN_OR_RETURN(ValueId y,
                     rw.Emit(OpKind::kMatMul, std::move(mapped), attrs[id], graph.node(id).name));
    rw.Map(id, y);
  }
  ASSIGN_OR_RETURN(graph, rw.Finish());
  *old_to_new = rw.old_to_new();
  return count;
}

// One round of output folds: a matmul whose only reader is a foldable node
// takes it over.
absl::StatusOr<int> FoldOutputs(Graph& graph, std::vector<ValueId>* old_to_new) {
  const int n = graph.num_nodes();
  const auto users = graph.ComputeUsers();
  std::vector<ValueId> absorbed_by(n, kNoValue);  // the matmul that takes this node over
  std::vector<MatMulAttrs> attrs(n);
  std::vector<bool> changed(n, false);
  int count = 0;
  for (ValueId m = 0; m < n; ++m) {
    const Node& node = graph.node(m);
    if (node.op != OpKind::kMatMul || users[m].size() != 1 || IsOutput(graph, m)) continue;
    const ValueId u = users[m][0];
    if (!Foldable(graph.node(u))) continue;
    MatMulAttrs a = std::get<MatMulAttrs>(node.attrs);
    if (!FoldInto(graph.node(u), 2, &a)) continue;
    attrs[m] = a;
    changed[m] = true;
    absorbed_by[u] = m;
    ++count;
  }
  if (count == 0) return 0;
  GraphRewriter rw(graph);
  for (ValueId id = 0; id < n; ++id) {
    if (absorbed_by[id] != kNoValue) {
      rw.Map(id, rw.New(absorbed_by[id]));
      continue;
    }
    if (!changed[id]) {
      RETURN_IF_ERROR(rw.Copy(id));
      continue;
    }
    const Node& node = graph.node(id);
    std::vector<ValueId> mapped;
    for (ValueId in : node.inputs) mapped.push_back(rw.New(in));
    ASSIGN_OR_RETURN(ValueId y, rw.Emit(OpKind::kMatMul, std::move(mapped), attrs[id], node.name));
    rw.Map(id, y);
  }
  ASSIGN_OR_RETURN(graph, rw.Finish());
  *old_to_new = rw.old_to_new();
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
    std::vector<ValueId> step;
    ASSIGN_OR_RETURN(int inputs, FoldInputs(graph, &step));
    if (inputs > 0) map = ComposeMaps(map, step);
    ASSIGN_OR_RETURN(int outputs, FoldOutputs(graph, &step));
    if (outputs > 0) map = ComposeMaps(map, step);
    total += inputs + outputs;
    if (inputs + outputs == 0) break;
  }
  if (folded != nullptr) *folded = total;
  if (old_to_new != nullptr) *old_to_new = std::move(map);
  return total > 0;
}

}  // namespace fleettune::engine::passes
