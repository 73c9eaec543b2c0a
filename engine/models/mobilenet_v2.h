// MobileNetV2 (Sandler et al. 2018) as an engine graph, with parameter and
// buffer names equal to torchvision's `mobilenet_v2` state_dict, so weights
// saved from torchvision as safetensors load unchanged:
//
//   features.0.0.weight                     stem conv 3×3 stride 2, then .1 BatchNorm
//   features.<i>.conv.<j>.{0,1}.*           inverted residual: 1×1 expand (absent
//   features.<i>.conv.<k>.weight, <k+1>.*   when t = 1), 3×3 depthwise, 1×1 project
//   features.<last>.{0,1}.*                 1×1 conv to the last channel count
//   classifier.1.weight, classifier.1.bias  Linear after global average pooling
//
// Every BatchNorm has weight, bias, running_mean, running_var and
// num_batches_tracked (i32 here; torch's int64 is narrowed by the reader).
// Channel counts follow torchvision's _make_divisible(c · width_mult, 8).
//
//   MobileNetV2Config config;  config.width_mult = 0.35;  config.resolution = 128;
//   ASSIGN_OR_RETURN(Model m, BuildMobileNetV2(config, Mode::kTrain));
//
// Mode::kTrain normalizes with batch statistics, updates the running statistics
// (momentum 0.1) and applies the classifier's dropout (when dropout > 0);
// Mode::kEval uses the running statistics and has no dropout. Loss: softmax
// cross-entropy. Builders are pure functions; the returned Model is owned by
// the caller.
#ifndef FLEETTUNE_ENGINE_MODELS_MOBILENET_V2_H_
#define FLEETTUNE_ENGINE_MODELS_MOBILENET_V2_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "engine/models/model.h"

namespace fleettune::engine::models {

struct MobileNetV2Config {
  double width_mult = 1.0;
  // Input images: x [batch, 3, resolution, resolution].
  int64_t resolution = 224;
  int64_t num_classes = 1000;
  int64_t batch = 1;
  // torchvision's classifier Dropout(p=0.2); training graphs only.
  float dropout = 0.2f;
  uint64_t dropout_seed = 0;
};

// The network's graph: logits [batch, num_classes] and the scalar loss are
// marked outputs. InvalidArgument for a non-positive or oversized width,
// resolution, class count or batch, or a dropout outside [0, 1).
absl::StatusOr<Model> BuildMobileNetV2(const MobileNetV2Config& config, Mode mode);

}  // namespace fleettune::engine::models

#endif  // FLEETTUNE_ENGINE_MODELS_MOBILENET_V2_H_
