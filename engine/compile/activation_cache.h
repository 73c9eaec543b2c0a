// Activation caching for frozen prefixes.
//
// When every layer below the lowest trained one is frozen, the first part of
// the forward pass computes the same values for an example in every epoch.
// CutFrozenPrefix splits a training graph into
//   prefix  data input → the frozen prefix's boundary values ("frontier"),
//           forward only; run once per example (first epoch) and cached;
//   suffix  the rest of the step (forward above the boundary, backward,
//           updates), reading each boundary value from an input named
//           "cache/<value>" instead of recomputing it.
// Running the prefix and feeding its outputs to the suffix gives exactly the
// original step's values (same kernels on the same inputs).
//
//   ASSIGN_OR_RETURN(std::optional<PrefixCut> cut, CutFrozenPrefix(training, x));
//   if (cut.has_value()) { ... cut->bytes_per_example, cut->prefix_flops ... }
//
// A value belongs to the cacheable prefix when it is a function of one
// example alone: computed by a per-example op (elementwise, convolution,
// linear, pooling, frozen-statistics BatchNorm, activation, embedding, rope...)
// whose inputs are the data input, other prefix values, frozen constants
// (parameters no update writes, fills) and shared inputs (the same for every
// example, such as a decoder's token positions: models::Model::shared_inputs),
// with the batch as its leading dimension. Ops that mix examples (training-mode BatchNorm), depend
// on the step (dropout) or read labels stop the prefix. The caller must also feed the same examples
// in every epoch (no random augmentation): the input pipeline, not the graph, decides that.
//
// Thread-safe (pure function).
#ifndef FLEETTUNE_ENGINE_COMPILE_ACTIVATION_CACHE_H_
#define FLEETTUNE_ENGINE_COMPILE_ACTIVATION_CACHE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/ir/graph.h"

namespace fleettune::engine::compile {

struct PrefixCut {
  // Boundary values in the original graph, increasing ids; prefix output i
  // is suffix input frontier_inputs[i].
  std::vector<ValueId> frontier;
  std::vector<std::string> frontier_inputs;  // "cache/<name>" per boundary value
  Graph prefix;                              // marked outputs: the boundary, in order
  Graph suffix;
  int prefix_nodes = 0;            // computing nodes moved out of the step
  uint64_t prefix_flops = 0;       // per step, saved once the cache is warm
  uint64_t bytes_per_example = 0;  // cache size per example (f32 boundary values)
};

// nullopt when nothing can be cached: the first op on the data input already
// depends on a trained parameter (e.g. bias-only schemes), or the prefix
// would be the data input itself. A shared input the prefix reads is an
// input of both graphs. InvalidArgument if `data_input` or a shared input is
// not an input of the graph, or the data input's leading dimension is not
// positive.
absl::StatusOr<std::optional<PrefixCut>> CutFrozenPrefix(
    const Graph& training_graph, ValueId data_input,
    const std::vector<ValueId>& shared_inputs = {});

}  // namespace fleettune::engine::compile

#endif  // FLEETTUNE_ENGINE_COMPILE_ACTIVATION_CACHE_H_
