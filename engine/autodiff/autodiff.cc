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
  // rows[v] > 0: parameter v trains its first rows[v] output channels; its
  // gradient comes from PartialWeightGradient, not from the op's rule.
  Backward(Graph& graph, std::vector<bool> needed, std::vector<int64_t> rows)
      : graph_(graph),
        needed_(std::move(needed)),
        rows_(std::move(rows)),
        contributions_(graph.num_nodes()) {}

  // GradContext.
  const Node& node() const override { return graph_.node(current_); }
  ValueId self() const override { return current_; }
  ValueId dy() const override { return dy_; }
  const TensorType& type(ValueId v) const override { return graph_.type(v); }
  bool NeedsGrad(int input) const override {
    const ValueId v = node().inputs[input];
    return needed_[v] && rows_[v] == 0 && DifferentiableInput(node(), input);
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
    bool rule_needed = false;
    const std::vector<ValueId> inputs = n.inputs;  // Emit may move the node
    for (int i = 0; i < static_cast<int>(inputs.size()); ++i) {
      if (rows_[inputs[i]] > 0) {
        RETURN_IF_ERROR(PartialWeightGradient(i));
      } else {
        rule_needed = rule_needed || NeedsGrad(i);
      }
    }
    // Skipping the rule when only partial parameters need gradients keeps it
    // from emitting shared helpers (reshapes of dy) that nothing would read.
    if (!rule_needed) return absl::OkStatus();
    const ops::OpDef& def = ops::GetOpDef(graph_.node(id).op);
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
  absl::StatusOr<ValueId> SliceDim(ValueId v, int axis, int64_t end) {
    const Shape& s = graph_.type(v).shape;
    if (s[axis] == end) return v;
    SliceAttrs slice{std::vector<int64_t>(s.size(), 0), s, std::vector<int64_t>(s.size(), 1)};
    slice.end[axis] = end;
    return graph_.AddNode(OpKind::kSlice, {v}, std::move(slice));
  }

  // The gradient of the first k = rows_[w] output channels of weight input i
  // (BuildPartialBackward checked that i is kLinear's or kConv2d's weight).
  absl::Status PartialWeightGradient(int i) {
    // Copies: adding nodes may move the forward node.
    const OpKind op = node().op;
    const Attrs attrs = node().attrs;
    const ValueId w = node().inputs[i];
    const ValueId x = node().inputs[0];
    const int64_t k = rows_[w];
    const Shape ws = graph_.type(w).shape;
    const Shape xs = graph_.type(x).shape;
    ValueId dw = kNoValue;
    if (op == OpKind::kLinear) {
      // With X2 = x as [rows, in], dY2 = dy as [rows, out]:  dW[:k] = dY2[:, :k]ᵀ · X2
      const int64_t rows = NumElements(xs) / ws[1];
      ValueId dy2 = dy_;
      ValueId x2 = x;
      if (xs.size() != 2) {
        ASSIGN_OR_RETURN(dy2, graph_.AddNode(OpKind::kReshape, {dy_}, ShapeAttrs{{rows, ws[0]}}));
        ASSIGN_OR_RETURN(x2, graph_.AddNode(OpKind::kReshape, {x}, ShapeAttrs{{rows, ws[1]}}));
      }
      ASSIGN_OR_RETURN(ValueId dy_k, SliceDim(dy2, 1, k));
      ASSIGN_OR_RETURN(dw, graph_.AddNode(OpKind::kMatMul, {dy_k, x2}, MatMulAttrs{true, false}));
    } else {
      // Output channel o of a convolution with g groups reads input channels
      // of group o / (C_out / g) only, so dW[:k] is the weight gradient of a
      // convolution over the first ⌈k / opg⌉ groups: dy and x sliced to those
      // groups' channels (opg = C_out / g output, ipg = C_in / g input channels
      // per group), then cut to k rows when k is not a multiple of opg.
      //   dW[:k] = conv_backward_weight(x[:, :g'·ipg], dy[:, :g'·opg])[:k],  g' = ⌈k / opg⌉
      Conv2dAttrs conv = std::get<Conv2dAttrs>(attrs);
      const int64_t opg = ws[0] / conv.groups;
      const int64_t ipg = ws[1];
      const int64_t groups = (k + opg - 1) / opg;
      ASSIGN_OR_RETURN(ValueId dy_k, SliceDim(dy_, 1, groups * opg));
      ASSIGN_OR_RETURN(ValueId x_k, SliceDim(x, 1, groups * ipg));
      conv.groups = static_cast<int32_t>(groups);
      Shape shape = ws;
      shape[0] = groups * opg;
      ASSIGN_OR_RETURN(dw, graph_.AddNode(OpKind::kConv2dBackwardWeight, {x_k, dy_k},
                                          Conv2dGradAttrs{conv, shape}));
      ASSIGN_OR_RETURN(dw, SliceDim(dw, 0, k));
    }
    contributions_[w].push_back(dw);
    return absl::OkStatus();
  }

  Graph& graph_;
  std::vector<bool> needed_;
  std::vector<int64_t> rows_;
  std::vector<std::vector<ValueId>> contributions_;
  ValueId current_ = kNoValue;
  ValueId dy_ = kNoValue;
};

}  // namespace

absl::StatusOr<GradientMap> BuildBackward(Graph& graph, ValueId loss,
                                          absl::Span<const ValueId> trainable) {
  std::vector<TrainableParam> params;
  params.reserve(trainable.size());
  for (ValueId p : trainable) params.push_back({p, 0});
  return BuildPartialBackward(graph, loss, params);
}

absl::StatusOr<GradientMap> BuildPartialBackward(Graph& graph, ValueId loss,
                                                 absl::Span<const TrainableParam> trainable) {
  if (!graph.IsValid(loss) || graph.type(loss) != TensorType{DType::kF32, {}}) {
    return absl::InvalidArgumentError(
        absl::StrCat("loss %", loss, " must be an f32 scalar",
                     graph.IsValid(loss) ? ", got " + TypeToString(graph.type(loss)) : ""));
  }
  const int n = graph.num_nodes();
  // from_trainable[v]: v depends (differentiably) on a trainable parameter.
  std::vector<bool> from_trainable(n, false);
  std::vector<int64_t> rows(n, 0);
  for (const TrainableParam& t : trainable) {
    const ValueId p = t.id;
    const auto* attrs =
        graph.IsValid(p) ? std::get_if<ParameterAttrs>(&graph.node(p).attrs) : nullptr;
    if (attrs == nullptr || graph.node(p).op != OpKind::kParameter ||
        attrs->role != ParamRole::kWeight) {
      return absl::InvalidArgumentError(
          absl::StrCat("trainable %", p, " is not a weight parameter"));
    }
    const std::string& name = graph.node(p).name;
    if (from_trainable[p]) {
      return absl::InvalidArgumentError(absl::StrCat("parameter '", name, "' is listed twice"));
    }
    from_trainable[p] = true;
    const Shape& shape = graph.type(p).shape;
    if (t.rows != 0 && (shape.empty() || t.rows < 0 || t.rows > shape[0])) {
      return absl::InvalidArgumentError(absl::StrCat("parameter '", name, "' ",
                                                     TypeToString(graph.type(p)), ": rows ", t.rows,
                                                     " is outside [0, dim 0]"));
    }
    if (t.rows != 0 && t.rows < shape[0]) rows[p] = t.rows;
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
  for (const TrainableParam& t : trainable) {
    if (!needed[t.id]) {
      return absl::InvalidArgumentError(absl::StrCat("trainable parameter '", graph.node(t.id).name,
                                                     "' does not affect the loss"));
    }
  }

  // A partial parameter's gradient has a rule only as a linear or conv weight.
  for (ValueId id = 0; id <= loss; ++id) {
    const Node& node = graph.node(id);
    if (!needed[id]) continue;
    for (int i = 0; i < static_cast<int>(node.inputs.size()); ++i) {
      const ValueId v = node.inputs[i];
      if (rows[v] == 0) continue;
      const bool weight_slot = (node.op == OpKind::kLinear || node.op == OpKind::kConv2d) && i == 1;
      if (!weight_slot) {
        return absl::UnimplementedError(absl::StrCat(
            "parameter '", graph.node(v).name, "' trains ", rows[v],
            " of its output channels but feeds input ", i, " of node ", id, " (",
            ops::GetOpDef(node.op).name,
            "); partial channels need it to be the weight of a linear or conv2d node"));
      }
    }
  }

  Backward backward(graph, needed, std::move(rows));
  ASSIGN_OR_RETURN(ValueId seed, graph.AddNode(OpKind::kFill, {}, FillAttrs{1.0f, {}}, "d_loss"));
  backward.Seed(loss, seed);
  for (ValueId id = loss; id >= 0; --id) {
    if (needed[id]) RETURN_IF_ERROR(backward.Visit(id));
  }
  GradientMap grads;
  for (const TrainableParam& t : trainable) {
    ASSIGN_OR_RETURN(ValueId g, backward.Accumulate(t.id));
    grads[t.id] = g;
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
    // State is sized like the gradient: k rows for a partial parameter.
    const TensorType type = graph.type(grad);
    int64_t rows = 0;
    if (type != p.type) {
      TensorType cut = p.type;
      if (!cut.shape.empty() && !type.shape.empty()) cut.shape[0] = type.shape[0];
      if (cut != type || type.shape[0] < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("gradient of '", name, "' is ", TypeToString(type), ", expected ",
                         TypeToString(p.type), " or that with fewer rows"));
      }
      rows = type.shape[0];
    }
    if (config.kind == OptimizerConfig::Kind::kSgd) {
      std::vector<ValueId> operands = {param, grad};
      if (config.sgd.momentum != 0.0f) {
        ASSIGN_OR_RETURN(ValueId buf, graph.AddParameter(name + ".momentum_buffer", type,
                                                         ParamRole::kOptimizerState));
        operands.push_back(buf);
      }
      SgdAttrs attrs = config.sgd;
      attrs.rows = rows;
      RETURN_IF_ERROR(graph.AddNode(OpKind::kSgdUpdate, operands, attrs).status());
    } else {
      ASSIGN_OR_RETURN(ValueId m,
                       graph.AddParameter(name + ".exp_avg", type, ParamRole::kOptimizerState));
      ASSIGN_OR_RETURN(ValueId v,
                       graph.AddParameter(name + ".exp_avg_sq", type, ParamRole::kOptimizerState));
      AdamWAttrs attrs = config.adamw;
      attrs.rows = rows;
      RETURN_IF_ERROR(graph.AddNode(OpKind::kAdamWUpdate, {param, grad, m, v}, attrs).status());
    }
  }
  return absl::OkStatus();
}

}  // namespace fleettune::engine::autodiff
