// A node of the SSA training graph.
//
// Every node produces at most one value, so a node's id is also its value's id
// (`ValueId`). Ids are dense and a node's inputs always have smaller ids: the
// node order is a valid execution order.
#ifndef FLEETTUNE_ENGINE_IR_NODE_H_
#define FLEETTUNE_ENGINE_IR_NODE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "engine/ir/attrs.h"
#include "engine/ir/op_kind.h"
#include "engine/ir/tensor.h"

namespace fleettune::engine {

using ValueId = int32_t;
inline constexpr ValueId kNoValue = -1;

struct Node {
  OpKind op = OpKind::kInput;
  std::vector<ValueId> inputs;
  Attrs attrs;
  // Output type. Ops without an output (optimizer updates) have f32[] here and
  // `has_output == false`.
  TensorType type;
  bool has_output = true;
  // Unique for kInput and kParameter (checkpoint and binding key); free text or
  // empty elsewhere.
  std::string name;
};

}  // namespace fleettune::engine

#endif  // FLEETTUNE_ENGINE_IR_NODE_H_
