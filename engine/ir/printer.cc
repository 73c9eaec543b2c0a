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

}  // namespace

std::string PrintAttrs(const Attrs& attrs) {
  return std::visit(
      Overloaded{
          [](const NoAttrs&) { return std::string(); },
          [](const ParameterAttrs& a) {
            return std::string(a.role == ParamRole::kWeight ? "{role=weight}"
                                                            : "{role=optimizer_state}");
          },
          [](const MatMulAttrs& a) {
            return absl::StrCat("{transpose_a=", Bool(a.transpose_a),
                                ", transpose_b=", Bool(a.transpose_b), "}");
          },
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
          [](const SgdAttrs& a) {
            return absl::StrCat("{lr=", a.lr, ", momentum=", a.momentum,
                                ", weight_decay=", a.weight_decay, "}");
          },
          [](const AdamWAttrs& a) {
            return absl::StrCat("{lr=", a.lr, ", beta1=", a.beta1, ", beta2=", a.beta2,
                                ", eps=", a.eps, ", weight_decay=", a.weight_decay, "}");
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
