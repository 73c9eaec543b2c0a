// Test support for the passes: small models, deterministic weights and data,
// and a runner that trains a graph for a few steps and returns what to compare.
//
//   ASSERT_OK_AND_ASSIGN(TestModel m, SmallMobileNetV2(models::Mode::kEval, "full"));
//   ASSERT_OK_AND_ASSIGN(TrainResult a, TrainSteps(m.graph, m, 3));
//   ... run a pass on a copy of m.graph ...
//   ExpectSameTraining(a, b, 1e-4);
#ifndef FLEETTUNE_ENGINE_PASSES_TEST_UTIL_H_
#define FLEETTUNE_ENGINE_PASSES_TEST_UTIL_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/autodiff/autodiff.h"
#include "engine/models/model.h"
#include "engine/runtime/executable.h"

namespace fleettune::engine::passes::testing {

struct TestModel {
  models::Model model;
  Graph graph;  // training graph (forward, backward, updates)
  // Exclusive upper bounds of i32 inputs by name ("labels" → classes).
  std::map<std::string, int32_t> int_bounds;
  runtime::ParameterStore params;  // initial weights and buffers
};

// MobileNetV2 width 0.35, 32×32 inputs (or `resolution`), batch 2 (4 in
// training mode), 4 classes, SGD with momentum; `scheme` as
// train::SelectTrainable.
absl::StatusOr<TestModel> SmallMobileNetV2(models::Mode mode, const std::string& scheme,
                                           int64_t resolution = 32);
// BERT: 2 layers, hidden 32, 2 heads, seq 8, batch 2, no dropout; AdamW.
absl::StatusOr<TestModel> SmallBert(const std::string& scheme);
// Llama-style decoder: 2 layers, dim 32, 4 heads / 2 KV heads, SwiGLU 48,
// vocab 40, seq 8, batch 2; AdamW.
absl::StatusOr<TestModel> SmallLlama(const std::string& scheme);
// ResNet with stages {1, 1}, width 8, 16×16 inputs, batch 2, 4 classes, SGD.
absl::StatusOr<TestModel> SmallResNet(models::Mode mode, const std::string& scheme);
// MLP 12-16-8-3, batch 4; SGD with momentum and weight decay.
absl::StatusOr<TestModel> SmallMlp();

// Fills every weight / buffer `graph` reads with seeded values: matrices
// U(±1/√fan_in), BatchNorm-like vectors around 1 (".weight", ".running_var")
// or 0, i32 buffers 0.
absl::Status InitializeParams(const Graph& graph, uint64_t seed, runtime::ParameterStore* params);

struct TrainResult {
  std::vector<float> losses;              // per step
  std::vector<std::vector<float>> first;  // marked outputs after step 1, graph order
  runtime::ParameterStore params;         // after the last step
  runtime::MemoryStats memory;
};

// Compiles `graph` over a copy of `m.params`, then runs `steps` steps with
// seeded inputs (the same for every graph of this model) and returns the loss
// of each step (`loss` is the loss's id in `graph`).
absl::StatusOr<TrainResult> TrainSteps(const Graph& graph, ValueId loss, const TestModel& m,
                                       int steps, const runtime::CompileOptions& options = {});

// Nodes of `graph` with op `op`.
int CountOps(const Graph& graph, OpKind op);

// Arena bytes runtime::PlanArena gives `graph` without in-place execution
// (gtest failure and 0 if planning fails).
size_t ArenaBytes(const Graph& graph);

// Largest |a − b| over max(|a|, floor) of two tensors (0 for equal ones).
double RelativeDifference(const float* a, const float* b, int64_t n, double floor = 1e-30);

// Gtest expectations: same losses and same f32 parameters (weights, buffers,
// optimizer state) within `tolerance` relative. A tensor whose largest
// magnitude is under `floor` is measured against `floor`: for passes that
// change rounding, tensors that hold only rounding noise (the β of a
// BatchNorm whose shift the next training-mode BatchNorm removes has a true
// gradient of about zero) are compared at the scale of that noise.
void ExpectSameTraining(const TrainResult& want, const TrainResult& got, double tolerance,
                        double floor = 1e-30);

}  // namespace fleettune::engine::passes::testing

#endif  // FLEETTUNE_ENGINE_PASSES_TEST_UTIL_H_
