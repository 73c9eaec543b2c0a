// Stable text form of a graph, for golden tests, debugging and `--print_graph`.
//
//   %0 = input "x" : f32[16, 784]
//   %1 = parameter "fc1.weight" {role=weight} : f32[32, 784]
//   %3 = linear(%0, %1, %2) : f32[16, 32]
//   sgd_update(%1, %9, %12) {lr=0.1, momentum=0.9, weight_decay=0.0001}
//   outputs: %7
//
// The format depends only on the graph's contents, never on addresses or hash
// order, so equal graphs print equally.
#ifndef FLEETTUNE_ENGINE_IR_PRINTER_H_
#define FLEETTUNE_ENGINE_IR_PRINTER_H_

#include <string>

#include "engine/ir/graph.h"

namespace fleettune::engine {

std::string PrintGraph(const Graph& graph);
// One node's line, without the trailing newline.
std::string PrintNode(const Graph& graph, ValueId id);
// "{k=v, ...}" or "" for ops without attributes.
std::string PrintAttrs(const Attrs& attrs);

}  // namespace fleettune::engine

#endif  // FLEETTUNE_ENGINE_IR_PRINTER_H_
