// The function an inference endpoint calls to classify one sample.
//
//   Classifier classify = [](absl::Span<const float> x) -> absl::StatusOr<std::vector<float>> {
//     ...  // x: [features]; returns class probabilities: [classes]
//   };
//
// A Classifier must be safe to call from several threads at once (InferenceServer serves each
// connection on its own thread). Errors it returns reach the client with their code and message,
// so they must not carry private data.
#ifndef FLEETTUNE_AGENT_INFERENCE_CLASSIFIER_H_
#define FLEETTUNE_AGENT_INFERENCE_CLASSIFIER_H_

#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace fleettune::agent {

using Classifier = std::function<absl::StatusOr<std::vector<float>>(absl::Span<const float>)>;

}  // namespace fleettune::agent

#endif  // FLEETTUNE_AGENT_INFERENCE_CLASSIFIER_H_
