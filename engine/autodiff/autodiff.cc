#include "engine/autodiff/autodiff.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "engine/ops/op_registry.h"

namespace fleettune::engine::autodiff {
namespace {

// Whether input i of `node` can carry a gradient at all (integer labels can't).
bool DifferentiableInput(const Node& node, int i) {
  const ops::OpDef& def = ops::GetOpDef(node.op);
  if (def.differentiable_inputs == nullptr) return true;
  std::vector<bool> mask = def.differentiable_inputs(node);
  return i < static_cast<int>(mask.size()) && mask[i];
}

class Backward : public ops::GradContext {
 public:
  Backward(Graph& graph, std::vector<bool> needed)
      : graph_(graph), needed_(std::move(needed)), contributions_(graph.num_nodes()) {}

  // GradContext.
  const Node& node() const override { return graph_.node(current_); }
  ValueId self() const override { return current_; }
  ValueId dy() const override { return dy_; }
  const TensorType& type(ValueId v) const override { return graph_.type(v); }
  bool NeedsGrad(int input) const override {
    const ValueId v = node().inputs[input];
    return needed_[v] && DifferentiableInput(node(), input);
  }
  absl::StatusOr<ValueId> Emit(OpKind op, std::vector<ValueId> inputs, Attrs attrs) override {
    return graph_.AddNode(op, std::move(inputs), std::move(attrs));
  }
  void SetGrad(int input, ValueId grad) override {
    contributions_[node().inputs[input]].push_back(grad);
  }

  void Seed(ValueId loss, ValueId grad) { contributions_[loss].push_back(grad); }

  // Sums the contributions to v's gradient (kNoValue if there are none).
  absl::StatusOr<ValueId> Accumulate(ValueId v) {
    std::vector<ValueId>& parts = contributions_[v];
    if (parts.empty()) return kNoValue;
    ValueId sum = parts[0];
    for (size_t i = 1; i < parts.size(); ++i) {
      ASSIGN_OR_RETURN(sum, graph_.AddNode(OpKind::kAdd, {sum, parts[i]}));
    }
    parts.assign(1, sum);
    return sum;
  }

  absl::Status Visit(ValueId id) {
    ASSIGN_OR_RETURN(ValueId grad, Accumulate(id));
    if (grad == kNoValue) return absl::OkStatus();
    current_ = id;
    dy_ = grad;
    const Node& n = graph_.node(id);
    if (n.inputs.empty()) return absl::OkStatus();
    const ops::OpDef& def = ops::GetOpDef(n.op);
    if (def.gradient == nullptr) {
      return absl::UnimplementedError(absl::StrCat("node ", id, " (", def.name,
                                                   ") is not differentiable but lies between a "
                                                   "trainable parameter and the loss"));
    }
    absl::Status status = def.gradient(*this);
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat("gradient of node ", id, " (", def.name,
                                                      "): ", status.message()));
    }
    return absl::OkStatus();
  }

 private:
  Graph& graph_;
  std::vector<bool> needed_;
  std::vector<std::vector<ValueId>> contributions_;
  ValueId current_ = kNoValue;
  ValueId dy_ = kNoValue;
};

}  // namespace

absl::StatusOr<GradientMap> BuildBackward(Graph& graph, ValueId loss,
                                          absl::Span<const ValueId> trainable) {
  if (!graph.IsValid(loss) || graph.type(loss) != TensorType{DType::kF32, {}}) {
    return absl::InvalidArgumentError(
        absl::StrCat("loss %", loss, " must be an f32 scalar",
                     graph.IsValid(loss) ? ", got " + TypeToString(graph.type(loss)) : ""));
  }
  const int n = graph.num_nodes();
  // from_trainable[v]: v depends (differentiably) on a trainable parameter.
  std::vector<bool> from_trainable(n, false);
  for (ValueId p : trainable) {
    const auto* attrs =
        graph.IsValid(p) ? std::get_if<ParameterAttrs>(&graph.node(p).attrs) : nullptr;
    if (attrs == nullptr || graph.node(p).op != OpKind::kParameter ||
        attrs->role != ParamRole::kWeight) {
      return absl::InvalidArgumentError(
          absl::StrCat("trainable %", p, " is not a weight parameter"));
    }
    from_trainable[p] = true;
  }
  for (ValueId id = 0; id <= loss; ++id) {
    const Node& node = graph.node(id);
    for (int i = 0; i < static_cast<int>(node.inputs.size()); ++i) {
      if (from_trainable[node.inputs[i]] && DifferentiableInput(node, i)) from_trainable[id] = true;
    }
  }
  // to_loss[v]: the loss depends (differentiably) on v.
  std::vector<bool> to_loss(n, false);
  to_loss[loss] = true;
  for (ValueId id = loss; id >= 0; --id) {
    if (!to_loss[id]) continue;
    const Node& node = graph.node(id);
    for (int i = 0; i < static_cast<int>(node.inputs.size()); ++i) {
      if (DifferentiableInput(node, i)) to_loss[node.inputs[i]] = true;
    }
  }
  std::vector<bool> needed(n);
  for (ValueId id = 0; id < n; ++id) needed[id] = from_trainable[id] && to_loss[id];
  for (ValueId p : trainable) {
    if (!needed[p]) {
      return absl::InvalidArgumentError(
          absl::StrCat("trainable parameter '", graph.node(p).name, "' does not affect the loss"));
    }
  }

  Backward backward(graph, needed);
  ASSIGN_OR_RETURN(ValueId seed, graph.AddNode(OpKind::kFill, {}, FillAttrs{1.0f, {}}, "d_loss"));
  backward.Seed(loss, seed);
  for (ValueId id = loss; id >= 0; --id) {
    if (needed[id]) RETURN_IF_ERROR(backward.Visit(id));
  }
  GradientMap grads;
  for (ValueId p : trainable) {
    ASSIGN_OR_RETURN(ValueId g, backward.Accumulate(p));
    grads[p] = g;
  }
  return grads;
}

absl::Status AddOptimizerUpdates(Graph& graph, const GradientMap& grads,
                                 const OptimizerConfig& config) {
  auto finite_nonneg = [](float v) { return std::isfinite(v) && v >= 0.0f; };
  if (config.kind == OptimizerConfig::Kind::kSgd) {
    const SgdAttrs& a = config.sgd;
    if (!finite_nonneg(a.lr) || !finite_nonneg(a.momentum) || a.momentum >= 1.0f ||
        !finite_nonneg(a.weight_decay)) {
      return absl::InvalidArgumentError(
          absl::StrCat("sgd: need lr >= 0, 0 <= momentum < 1, weight_decay >= 0; got lr=", a.lr,
                       " momentum=", a.momentum, " weight_decay=", a.weight_decay));
    }
  } else {
    const AdamWAttrs& a = config.adamw;
    if (!finite_nonneg(a.lr) || !finite_nonneg(a.beta1) || a.beta1 >= 1.0f ||
        !finite_nonneg(a.beta2) || a.beta2 >= 1.0f || !(a.eps > 0.0f) ||
        !finite_nonneg(a.weight_decay)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "adamw: need lr >= 0, 0 <= beta1, beta2 < 1, eps > 0, weight_decay >= 0; got lr=", a.lr,
          " beta1=", a.beta1, " beta2=", a.beta2, " eps=", a.eps, " wd=", a.weight_decay));
    }
  }
  for (const auto& [param, grad] : grads) {
    const Node& p = graph.node(param);
    const std::string name = p.name;
    const TensorType type = p.type;
    if (config.kind == OptimizerConfig::Kind::kSgd) {
      std::vector<ValueId> operands = {param, grad};
      if (config.sgd.momentum != 0.0f) {
        ASSIGN_OR_RETURN(ValueId buf, graph.AddParameter(name + ".momentum_buffer", type,
                                                         ParamRole::kOptimizerState));
        operands.push_back(buf);
      }
      RETURN_IF_ERROR(graph.AddNode(OpKind::kSgdUpdate, operands, config.sgd).status());
    } else {
      ASSIGN_OR_RETURN(ValueId m,
                       graph.AddParameter(name + ".exp_avg", type, ParamRole::kOptimizerState));
      ASSIGN_OR_RETURN(ValueId v,
                       graph.AddParameter(name + ".exp_avg_sq", type, ParamRole::kOptimizerState));
      RETURN_IF_ERROR(
          graph.AddNode(OpKind::kAdamWUpdate, {param, grad, m, v}, config.adamw).status());
    }
  }
  return absl::OkStatus();
}

}  // namespace fleettune::engine::autodiff
