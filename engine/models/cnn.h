// A small convolutional image classifier: blocks of Conv2d(3×3, no bias) →
// BatchNorm2d → ReLU, the first at stride 1 and the others at stride 2, then
// either flatten → Linear or global average pooling → Linear, softmax
// cross-entropy loss. Parameter names match this PyTorch module's state_dict:
//
//   class Cnn(nn.Module):           # channels = (32, 64, 64)
//     conv1 = nn.Conv2d(1, 32, 3, padding=1, bias=False);            bn1 = nn.BatchNorm2d(32)
//     conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False); bn2 = nn.BatchNorm2d(64)
//     conv3 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False); bn3 = nn.BatchNorm2d(64)
//     fc = nn.Linear(64 * 7 * 7, 10)    # nn.Linear(64, 10) with global_pool
//
// (conv1.weight, bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var,
// bn1.num_batches_tracked, ..., fc.weight, fc.bias). num_batches_tracked is
// i32 here (torch: int64; the safetensors reader narrows it).
//
//   CnnConfig config;  config.batch = 64;  config.mode = Mode::kTrain;
//   ASSIGN_OR_RETURN(Model m, BuildCnn(config));
//   RETURN_IF_ERROR(InitializeCnn(config, /*seed=*/0, &params));
//
// Mode::kTrain builds BatchNorm with batch statistics plus one running-
// statistics update per BatchNorm (momentum 0.1, as torch's train()), and
// applies dropout; Mode::kEval uses the running statistics (torch's eval()).
#ifndef FLEETTUNE_ENGINE_MODELS_CNN_H_
#define FLEETTUNE_ENGINE_MODELS_CNN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/models/model.h"
#include "engine/runtime/executable.h"

namespace fleettune::engine::models {

struct CnnConfig {
  int64_t batch = 64;
  // Input images: x [batch, in_channels, height, width].
  int64_t in_channels = 1;
  int64_t height = 28;
  int64_t width = 28;
  // Output channels of each conv block; block 1 has stride 1, the others 2.
  std::vector<int64_t> channels = {32, 64, 64};
  // Head: false flattens the last feature map into the classifier; true
  // averages it over space first (global average pooling).
  bool global_pool = false;
  int64_t classes = 10;
  // Dropout probability before the classifier (training graphs only).
  float dropout = 0.0f;
  uint64_t dropout_seed = 0;
  Mode mode = Mode::kTrain;
};

// InvalidArgument for no blocks, non-positive sizes, or a dropout outside [0, 1).
absl::StatusOr<Model> BuildCnn(const CnnConfig& config);

// PyTorch's default initialization from a seeded generator: conv and linear
// weights and the linear bias U(−1/√fan_in, 1/√fan_in); BatchNorm weight 1,
// bias 0, running mean 0, running variance 1, num_batches_tracked 0.
absl::Status InitializeCnn(const CnnConfig& config, uint64_t seed, runtime::ParameterStore* params);

// "cnn-32-64-64-flatten-10" / "cnn-32-64-64-gap-10".
std::string CnnName(const CnnConfig& config);

}  // namespace fleettune::engine::models

#endif  // FLEETTUNE_ENGINE_MODELS_CNN_H_
