// A Classifier backed by the engine: the device's personalized MLP, loaded from safetensors.
//
//   ASSIGN_OR_RETURN(Classifier classify,
//                    MakeMlpClassifier(state_dir + "/personalized.safetensors", {784, 256, 10}));
//   InferenceServer server({.socket_path = path, .classifier = std::move(classify)});
//
// Thread-safety: the returned Classifier may be called from any number of threads; calls run one
// at a time (a mutex guards the one compiled Executable).
#ifndef FLEETTUNE_AGENT_INFERENCE_MLP_CLASSIFIER_H_
#define FLEETTUNE_AGENT_INFERENCE_MLP_CLASSIFIER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "agent/inference/classifier.h"

namespace fleettune::agent {

// MakeMlpClassifier()
//
// Loads the weights of an MLP with layer sizes `sizes` (input, hidden..., classes; see
// engine/models/mlp.h) from the safetensors file at `safetensors_path` — PyTorch state_dict
// names fc1.weight [out, in], fc1.bias [out], ... — and compiles its forward graph for batch 1.
// Tensors in the file that the model does not use (optimizer state) are ignored.
//
// The classifier takes x: [sizes.front()] and returns softmax(logits): [sizes.back()]. It returns
// InvalidArgument for a sample of another length or with a NaN or infinite value.
//
// Errors: InvalidArgument for bad sizes, and for a file that lacks a tensor or holds one of the
// wrong shape or type (the message names the tensor); the codes of ReadSafetensors() for a
// missing (NotFound), truncated (DataLoss) or malformed (InvalidArgument) file.
absl::StatusOr<Classifier> MakeMlpClassifier(const std::string& safetensors_path,
                                             std::vector<int64_t> sizes);

// Softmax(): exp(logits - max) / sum, computed in double so that large logits neither overflow
// nor lose the small probabilities.
std::vector<float> Softmax(absl::Span<const float> logits);

}  // namespace fleettune::agent

#endif  // FLEETTUNE_AGENT_INFERENCE_MLP_CLASSIFIER_H_
