// Static cost of a training graph: floating-point operations per step.
//
//   uint64_t flops = StepFlops(graph);
//
// Counts multiply-adds as two operations. GEMM-like ops (linear, matmul,
// convolution and its two backward ops) are counted exactly from their
// shapes; every other op as one operation per output element (per parameter
// element for optimizer updates, which write in place), which is what they
// cost to within a small constant; fused ops count as their parts. Thread-safe
// (pure function).
#ifndef FLEETTUNE_ENGINE_COMPILE_COST_H_
#define FLEETTUNE_ENGINE_COMPILE_COST_H_

#include <cstdint>

#include "engine/ir/graph.h"

namespace fleettune::engine::compile {

// Operations node `id` performs per step (0 for inputs, parameters, reshapes).
uint64_t NodeFlops(const Graph& graph, ValueId id);

// Sum of NodeFlops over the graph.
uint64_t StepFlops(const Graph& graph);

}  // namespace fleettune::engine::compile

#endif  // FLEETTUNE_ENGINE_COMPILE_COST_H_
