#include "engine/passes/fuse_elementwise.h"

#include <algorithm>

#include "engine/base/status_macros.h"

namespace fleettune::engine::passes {
namespace {

// Whether `id` can be a step: an elementwise op of the chain's kinds whose
// inputs all have its type (the chain kernel does not broadcast).
bool Chainable(const Graph& graph, ValueId id) {
  const Node& node = graph.node(id);
  if (!IsElementwiseChainStepOp(node.op)) return false;
  if (node.type.dtype != DType::kF32) return false;
  for (ValueId in : node.inputs) {
    if (!graph.IsValid(in) || graph.type(in) != node.type) return false;
  }
  return true;
}

ElementwiseStep StepOf(const Node& node) {
  ElementwiseStep step;
  step.op = node.op;
  if (const auto* s = std::get_if<ScalarAttrs>(&node.attrs)) step.value = s->value;
  if (const auto* a = std::get_if<ActivationAttrs>(&node.attrs)) step.fn = a->fn;
  return step;
}

}  // namespace

absl::StatusOr<bool> FuseElementwiseChains(Graph& graph, std::vector<ValueId>* old_to_new,
                                           int* chains) {
  const int n = graph.num_nodes();
  const std::vector<std::vector<ValueId>> users = graph.ComputeUsers();
  // prev[u]: the node whose value u continues (kNoValue: u starts a chain);
  // absorbed[p]: p's value lives only inside its user's chain.
  std::vector<ValueId> prev(n, kNoValue);
  std::vector<int> length(n, 1);
  std::vector<bool> chainable(n, false), absorbed(n, false);
  for (ValueId u = 0; u < n; ++u) {
    chainable[u] = Chainable(graph, u);
    if (!chainable[u]) continue;
    for (ValueId p : graph.node(u).inputs) {
      if (!chainable[p] || absorbed[p] || users[p].size() != 1) continue;
      if (length[p] >= kMaxElementwiseChainSteps) continue;
      if (graph.IsOutput(p)) continue;
      prev[u] = p;
      length[u] = length[p] + 1;
      absorbed[p] = true;
      break;
    }
  }
  int count = 0;
  for (ValueId id = 0; id < n; ++id) count += prev[id] != kNoValue && !absorbed[id];
  if (chains != nullptr) *chains = count;
  if (count == 0) return Unchanged(n, old_to_new);
  GraphRewriter rw(graph);
  for (ValueId id = 0; id < n; ++id) {
    if (absorbed[id]) continue;  // emitted with its chain's last op
    if (prev[id] == kNoValue) {
      RETURN_IF_ERROR(rw.Copy(id));
      continue;
    }
    std::vector<ValueId> members;
    for (ValueId m = id; m != kNoValue; m = prev[m]) members.push_back(m);
    std::reverse(members.begin(), members.end());
    ElementwiseChainAttrs attrs;
    std::vector<ValueId> inputs;  // old ids, each once
    for (size_t k = 0; k < members.size(); ++k) {
      const Node& node = graph.node(members[k]);
      auto operand = [&](ValueId v) -> int32_t {
        if (k > 0 && v == members[k - 1]) return ElementwiseStep::kPrevious;
        auto it = std::find(inputs.begin(), inputs.end(), v);
        if (it == inputs.end()) it = inputs.insert(inputs.end(), v);
        return static_cast<int32_t>(it - inputs.begin());
      };
      ElementwiseStep step = StepOf(node);
      step.a = operand(node.inputs[0]);
      if (!IsUnaryElementwiseChainStepOp(node.op)) step.b = operand(node.inputs[1]);
      attrs.steps.push_back(step);
    }
    std::vector<ValueId> new_inputs;
    for (ValueId in : inputs) new_inputs.push_back(rw.New(in));
    ASSIGN_OR_RETURN(ValueId y, rw.Emit(OpKind::kElementwiseChain, std::move(new_inputs),
                                        std::move(attrs), graph.node(id).name));
    rw.Map(id, y);
  }
  ASSIGN_OR_RETURN(graph, rw.Finish());
  if (old_to_new != nullptr) *old_to_new = rw.old_to_new();
  return true;
}

absl::StatusOr<ValueId> EmitUnfusedChain(GraphRewriter& rw, const Node& chain) {
  const auto& steps = std::get<ElementwiseChainAttrs>(chain.attrs).steps;
  ValueId value = kNoValue;
  for (size_t k = 0; k < steps.size(); ++k) {
    const ElementwiseStep& s = steps[k];
    auto operand = [&](int32_t i) {
      return i == ElementwiseStep::kPrevious ? value : rw.New(chain.inputs[i]);
    };
    std::vector<ValueId> inputs = {operand(s.a)};
    if (!IsUnaryElementwiseChainStepOp(s.op)) inputs.push_back(operand(s.b));
    Attrs attrs = NoAttrs{};
    if (s.op == OpKind::kScale) attrs = ScalarAttrs{s.value};
    if (s.op == OpKind::kActivation || s.op == OpKind::kActivationGrad) {
      attrs = ActivationAttrs{s.fn};
    }
    ASSIGN_OR_RETURN(value, rw.Emit(s.op, std::move(inputs), std::move(attrs),
                                    k + 1 == steps.size() ? chain.name : std::string()));
  }
  return value;
}

}  // namespace fleettune::engine::passes
