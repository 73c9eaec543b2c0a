// Multi-layer perceptron classifier: Linear → ReLU → ... → Linear, softmax
// cross-entropy loss. Parameter names match a PyTorch module whose layers are
// attributes fc1, fc2, ... (`fc1.weight` [out, in], `fc1.bias` [out]).
//
//   ASSIGN_OR_RETURN(Model m, BuildMlp({.sizes = {784, 256, 128, 10}, .batch = 64}));
//   RETURN_IF_ERROR(InitializeMlp(config, /*seed=*/0, &params));
#ifndef FLEETTUNE_ENGINE_MODELS_MLP_H_
#define FLEETTUNE_ENGINE_MODELS_MLP_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/models/model.h"
#include "engine/runtime/executable.h"

namespace fleettune::engine::models {

struct MlpConfig {
  std::vector<int64_t> sizes = {784, 256, 128, 10};  // input, hidden..., classes
  int64_t batch = 64;
};

// InvalidArgument for fewer than two sizes or a non-positive size or batch.
absl::StatusOr<Model> BuildMlp(const MlpConfig& config);

// PyTorch's nn.Linear default initialization, U(−1/√fan_in, 1/√fan_in) for
// weights and biases, from a seeded generator (deterministic per seed).
absl::Status InitializeMlp(const MlpConfig& config, uint64_t seed, runtime::ParameterStore* params);

}  // namespace fleettune::engine::models

#endif  // FLEETTUNE_ENGINE_MODELS_MLP_H_
