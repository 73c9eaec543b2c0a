#include "agent/inference/mlp_classifier.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/base/status_macros.h"
#include "engine/io/safetensors.h"
#include "engine/ir/tensor.h"
#include "engine/models/mlp.h"
#include "engine/runtime/executable.h"

namespace fleettune::agent {
namespace {

using engine::Tensor;
using engine::TensorView;
using engine::runtime::Executable;
using engine::runtime::ParameterStore;

// Everything one classifier closure owns. Heap-allocated and never moved: the executable points
// into `params`.
struct MlpState {
  absl::Mutex mu;
  ParameterStore params;
  std::unique_ptr<Executable> executable ABSL_GUARDED_BY(mu);
  TensorView input ABSL_GUARDED_BY(mu);   // x: [1, inputs], in the executable's arena
  TensorView labels ABSL_GUARDED_BY(mu);  // labels: [1]
  engine::ValueId logits = engine::kNoValue;
  size_t inputs = 0;
};

absl::StatusOr<std::vector<float>> RunMlp(MlpState& state, absl::Span<const float> sample) {
  if (sample.size() != state.inputs) {
    return absl::InvalidArgumentError(
        absl::StrCat("sample has ", sample.size(), " values; the model takes ", state.inputs));
  }
  for (size_t i = 0; i < sample.size(); ++i) {
    if (!std::isfinite(sample[i])) {
      return absl::InvalidArgumentError(absl::StrCat("sample value ", i, " is not finite"));
    }
  }
  absl::MutexLock lock(&state.mu);
  std::copy(sample.begin(), sample.end(), state.input.f32());
  // The graph ends in the training loss, which needs a label; any valid class will do.
  state.labels.i32()[0] = 0;
  RETURN_IF_ERROR(state.executable->Run());
  ASSIGN_OR_RETURN(TensorView logits, state.executable->Output(state.logits));
  return Softmax({logits.f32(), static_cast<size_t>(logits.num_elements())});
}

}  // namespace

std::vector<float> Softmax(absl::Span<const float> logits) {
  std::vector<float> out(logits.size());
  if (logits.empty()) return out;
  const double max = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float v : logits) sum += std::exp(static_cast<double>(v) - max);
  for (size_t i = 0; i < logits.size(); ++i) {
    out[i] = static_cast<float>(std::exp(static_cast<double>(logits[i]) - max) / sum);
  }
  return out;
}

absl::StatusOr<Classifier> MakeMlpClassifier(const std::string& safetensors_path,
                                             std::vector<int64_t> sizes) {
  ASSIGN_OR_RETURN(engine::models::Model model,
                   engine::models::BuildMlp({std::move(sizes), /*batch=*/1}));
  ASSIGN_OR_RETURN(auto tensors, engine::io::ReadSafetensors(safetensors_path));

  auto state = std::make_shared<MlpState>();
  for (const engine::models::Layer& layer : model.layers) {
    for (const std::string& name : layer.weights) {
      auto it = tensors.find(name);
      if (it == tensors.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(safetensors_path, ": no tensor ", name, " for the model"));
      }
      const std::optional<engine::ValueId> id = model.graph.FindByName(name);
      if (!id.has_value()) return absl::InternalError(absl::StrCat("MLP has no parameter ", name));
      const engine::TensorType& want = model.graph.type(*id);
      if (it->second.type() != want) {
        return absl::InvalidArgumentError(absl::StrCat(
            safetensors_path, ": tensor ", name, " is ", engine::TypeToString(it->second.type()),
            "; the model needs ", engine::TypeToString(want)));
      }
      RETURN_IF_ERROR(state->params.Set(name, it->second));
    }
  }

  {
    absl::MutexLock lock(&state->mu);
    // One thread: a batch of one is too small for GEMM threads to pay off.
    engine::runtime::CompileOptions options;
    options.threads = 1;
    ASSIGN_OR_RETURN(state->executable, Executable::Compile(model.graph, &state->params, options));
    ASSIGN_OR_RETURN(state->labels, state->executable->Input("labels"));
    ASSIGN_OR_RETURN(state->input, state->executable->Input("x"));
  }
  state->logits = model.logits;
  state->inputs = static_cast<size_t>(model.graph.type(model.input).shape[1]);
  return Classifier([state = std::move(state)](absl::Span<const float> sample) {
    return RunMlp(*state, sample);
  });
}

}  // namespace fleettune::agent
