#include "engine/ir/printer.h"

#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/ops/op_registry.h"

namespace fleettune::engine {
namespace {

template <class... Ts>
struct Overloaded : Ts... {
  using Ts::operator()...;
};
template <class... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

const char* Bool(bool b) { return b ? "true" : "false"; }

const char* RoleName(ParamRole role) {
  switch (role) {
    case ParamRole::kWeight:
      return "weight";
    case ParamRole::kOptimizerState:
      return "optimizer_state";
    case ParamRole::kBuffer:
      return "buffer";
  }
  return "?";
}

const char* ActivationName(ActivationFn fn) {
  switch (fn) {
    case ActivationFn::kRelu6:
      return "relu6";
    case ActivationFn::kSilu:
      return "silu";
    case ActivationFn::kGeluTanh:
      return "gelu_tanh";
    case ActivationFn::kGeluErf:
      return "gelu_erf";
    case ActivationFn::kSigmoid:
      return "sigmoid";
    case ActivationFn::kTanh:
      return "tanh";
  }
  return "?";
}

const char* FusedActivationName(FusedActivationFn fn) {
  if (fn == FusedActivationFn::kRelu) return "relu";
  if (static_cast<int>(fn) > static_cast<int>(FusedActivationFn::kTanh)) return "?";
  return ActivationName(static_cast<ActivationFn>(static_cast<int>(fn) - 1));
}

// "stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1"
// Optimizer updates print rows only when partial, so full-update text is
// unchanged.
std::string RowsField(int64_t rows) {
  return rows == 0 ? std::string() : absl::StrCat(", rows=", rows);
}

// The transposes always, folded neighbours only when present.
std::string MatMulFields(const MatMulAttrs& a) {
  std::string out =
      absl::StrCat("transpose_a=", Bool(a.transpose_a), ", transpose_b=", Bool(a.transpose_b));
  if (a.alpha != 1.0f) absl::StrAppend(&out, ", alpha=", a.alpha);
  if (a.interleaved_a != 0) absl::StrAppend(&out, ", interleaved_a=", a.interleaved_a);
  if (a.interleaved_b != 0) absl::StrAppend(&out, ", interleaved_b=", a.interleaved_b);
  if (a.interleaved_y != 0) absl::StrAppend(&out, ", interleaved_y=", a.interleaved_y);
  return out;
}

std::string SgdFields(const SgdAttrs& a) {
  return absl::StrCat("lr=", a.lr, ", momentum=", a.momentum, ", weight_decay=", a.weight_decay,
                      RowsField(a.rows));
}

std::string ConvFields(const Conv2dAttrs& a) {
  return absl::StrCat("stride=[", a.stride_h, ", ", a.stride_w, "], padding=[", a.pad_h, ", ",
                      a.pad_w, "], dilation=[", a.dilation_h, ", ", a.dilation_w,
                      "], groups=", a.groups);
}

// "kernel=[2, 2], stride=[2, 2], padding=[0, 0], count_include_pad=true"
std::string PoolFields(const Pool2dAttrs& a) {
  return absl::StrCat("kernel=[", a.kernel_h, ", ", a.kernel_w, "], stride=[", a.stride_h, ", ",
                      a.stride_w, "], padding=[", a.pad_h, ", ", a.pad_w,
                      "], count_include_pad=", Bool(a.count_include_pad));
}

// "begin=[0, 1], end=[2, 4], step=[1, 2]"
std::string SliceFields(const SliceAttrs& a) {
  return absl::StrCat("begin=[", absl::StrJoin(a.begin, ", "), "], end=[",
                      absl::StrJoin(a.end, ", "), "], step=[", absl::StrJoin(a.step, ", "), "]");
}

// "add(in0, in1)", "scale(prev, value=0.5)", "activation_grad(prev, in2, fn=silu)"
std::string StepText(const ElementwiseStep& s) {
  auto operand = [](int32_t i) {
    return i == ElementwiseStep::kPrevious ? std::string("prev") : absl::StrCat("in", i);
  };
  const bool unary = s.op == OpKind::kScale || s.op == OpKind::kRelu || s.op == OpKind::kActivation;
  std::string out = absl::StrCat(ops::GetOpDef(s.op).name, "(", operand(s.a));
  if (!unary) absl::StrAppend(&out, ", ", operand(s.b));
  if (s.op == OpKind::kScale) absl::StrAppend(&out, ", value=", s.value);
  if (s.op == OpKind::kActivation || s.op == OpKind::kActivationGrad) {
    absl::StrAppend(&out, ", fn=", ActivationName(s.fn));
  }
  return out + ")";
}

}  // namespace

std::string PrintAttrs(const Attrs& attrs) {
  return std::visit(
      Overloaded{
          [](const NoAttrs&) { return std::string(); },
          [](const ParameterAttrs& a) { return absl::StrCat("{role=", RoleName(a.role), "}"); },
          [](const MatMulAttrs& a) { return absl::StrCat("{", MatMulFields(a), "}"); },
          [](const ShapeAttrs& a) { return absl::StrCat("{shape=", ShapeToString(a.shape), "}"); },
          [](const ReduceAttrs& a) {
            return absl::StrCat("{axes=[", absl::StrJoin(a.axes, ", "),
                                "], keep_dims=", Bool(a.keep_dims), "}");
          },
          [](const ScalarAttrs& a) { return absl::StrCat("{value=", a.value, "}"); },
          [](const FillAttrs& a) {
            return absl::StrCat("{value=", a.value, ", shape=", ShapeToString(a.shape), "}");
          },
          [](const CrossEntropyAttrs& a) {
            return absl::StrCat("{ignore_index=", a.ignore_index, "}");
          },
          [](const SgdAttrs& a) { return absl::StrCat("{", SgdFields(a), "}"); },
          [](const FusedSgdAttrs& a) {
            return absl::StrCat("{", SgdFields(a.sgd), ", ", MatMulFields(a.product), "}");
          },
          [](const AdamWAttrs& a) {
            return absl::StrCat("{lr=", a.lr, ", beta1=", a.beta1, ", beta2=", a.beta2,
                                ", eps=", a.eps, ", weight_decay=", a.weight_decay,
                                RowsField(a.rows), "}");
          },
          [](const Conv2dAttrs& a) { return absl::StrCat("{", ConvFields(a), "}"); },
          [](const Conv2dGradAttrs& a) {
            return absl::StrCat("{", ConvFields(a.conv), ", shape=", ShapeToString(a.shape), "}");
          },
          [](const Pool2dAttrs& a) { return absl::StrCat("{", PoolFields(a), "}"); },
          [](const Pool2dGradAttrs& a) {
            return absl::StrCat("{", PoolFields(a.pool),
                                ", input_shape=", ShapeToString(a.input_shape), "}");
          },
          [](const BatchNormAttrs& a) {
            return absl::StrCat("{eps=", a.eps, ", momentum=", a.momentum, "}");
          },
          [](const ActivationAttrs& a) { return absl::StrCat("{fn=", ActivationName(a.fn), "}"); },
          [](const DropoutAttrs& a) { return absl::StrCat("{p=", a.p, ", seed=", a.seed, "}"); },
          [](const FusedConvAttrs& a) {
            return absl::StrCat("{", ConvFields(a.conv), ", act=", FusedActivationName(a.act), "}");
          },
          [](const FusedActivationAttrs& a) {
            return absl::StrCat("{act=", FusedActivationName(a.act), "}");
          },
          [](const FusedBatchNormAttrs& a) {
            return absl::StrCat("{eps=", a.bn.eps, ", momentum=", a.bn.momentum,
                                ", act=", FusedActivationName(a.act), "}");
          },
          [](const FusedNormAttrs& a) {
            return absl::StrCat("{eps=", a.norm.eps, ", act=", FusedActivationName(a.act), "}");
          },
          [](const ElementwiseChainAttrs& a) {
            std::vector<std::string> steps;
            for (const ElementwiseStep& s : a.steps) steps.push_back(StepText(s));
            return absl::StrCat("{steps=[", absl::StrJoin(steps, ", "), "]}");
          },
          [](const NormAttrs& a) { return absl::StrCat("{eps=", a.eps, "}"); },
          [](const SoftmaxAttrs& a) { return absl::StrCat("{causal=", Bool(a.causal), "}"); },
          [](const PermuteAttrs& a) {
            return absl::StrCat("{perm=[", absl::StrJoin(a.perm, ", "), "]}");
          },
          [](const AxisAttrs& a) { return absl::StrCat("{axis=", a.axis, "}"); },
          [](const SliceAttrs& a) { return absl::StrCat("{", SliceFields(a), "}"); },
          [](const SliceGradAttrs& a) {
            return absl::StrCat("{", SliceFields(a.slice),
                                ", input_shape=", ShapeToString(a.input_shape), "}");
          },
          [](const RopeAttrs& a) {
            return absl::StrCat("{base=", a.base, ", inverse=", Bool(a.inverse), "}");
          },
      },
      attrs);
}

std::string PrintNode(const Graph& graph, ValueId id) {
  const Node& node = graph.node(id);
  std::string line;
  if (node.has_output) absl::StrAppend(&line, "%", id, " = ");
  absl::StrAppend(&line, ops::GetOpDef(node.op).name);
  if (node.op == OpKind::kInput || node.op == OpKind::kParameter) {
    absl::StrAppend(&line, " \"", node.name, "\"");
  } else {
    absl::StrAppend(
        &line, "(",
        absl::StrJoin(node.inputs, ", ",
                      [](std::string* out, ValueId v) { absl::StrAppend(out, "%", v); }),
        ")");
  }
  const std::string attrs = PrintAttrs(node.attrs);
  if (!attrs.empty()) absl::StrAppend(&line, " ", attrs);
  if (node.has_output) absl::StrAppend(&line, " : ", TypeToString(node.type));
  return line;
}

std::string PrintGraph(const Graph& graph) {
  std::string text;
  for (ValueId id = 0; id < graph.num_nodes(); ++id) {
    absl::StrAppend(&text, PrintNode(graph, id), "\n");
  }
  if (!graph.outputs().empty()) {
    absl::StrAppend(
        &text, "outputs: ",
        absl::StrJoin(graph.outputs(), ", ",
                      [](std::string* out, ValueId v) { absl::StrAppend(out, "%", v); }),
        "\n");
  }
  return text;
}

}  // namespace fleettune::engine
