// ResNet with BasicBlocks (He et al. 2016; resnet18 is blocks {2, 2, 2, 2}) as
// an engine graph, with parameter and buffer names equal to torchvision's
// `resnet18` state_dict, so weights saved from torchvision as safetensors load
// unchanged:
//
//   conv1.weight, bn1.*                       7×7 stride 2 stem, then 3×3/2 max pool
//   layer<s>.<b>.conv1.weight, .bn1.*, .conv2.weight, .bn2.*
//   layer<s>.0.downsample.0.weight, .downsample.1.*   1×1 projection where the
//                                             stride or channel count changes
//   fc.weight, fc.bias                        Linear after global average pooling
//
// Stage s (1-based) has base_width · 2^(s−1) channels and stride 2 except the
// first. base_width 64 is torchvision's resnet18; smaller widths match the same
// module structure with fewer channels. Every BatchNorm has weight, bias,
// running_mean, running_var and num_batches_tracked (i32).
//
//   ResNetConfig config;  config.resolution = 32;  config.num_classes = 10;
//   ASSIGN_OR_RETURN(Model m, BuildResNet(config, Mode::kTrain));
//
// Mode::kTrain normalizes with batch statistics and updates the running
// statistics (momentum 0.1); Mode::kEval uses the running statistics. Loss:
// softmax cross-entropy. The returned Model is owned by the caller.
#ifndef FLEETTUNE_ENGINE_MODELS_RESNET_H_
#define FLEETTUNE_ENGINE_MODELS_RESNET_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/models/model.h"

namespace fleettune::engine::models {

struct ResNetConfig {
  std::vector<int64_t> blocks = {2, 2, 2, 2};  // BasicBlocks per stage
  int64_t base_width = 64;                     // channels of the stem and stage 1
  // Input images: x [batch, 3, resolution, resolution].
  int64_t resolution = 224;
  int64_t num_classes = 1000;
  int64_t batch = 1;
};

// The network's graph: logits [batch, num_classes] and the scalar loss are
// marked outputs. InvalidArgument for no stages, a stage without blocks, or a
// non-positive or oversized width, resolution, class count or batch.
absl::StatusOr<Model> BuildResNet(const ResNetConfig& config, Mode mode);

}  // namespace fleettune::engine::models

#endif  // FLEETTUNE_ENGINE_MODELS_RESNET_H_
