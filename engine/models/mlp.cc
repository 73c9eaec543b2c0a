#include "engine/models/mlp.h"

#include <cmath>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::models {
namespace {

absl::Status ValidateConfig(const MlpConfig& config) {
  if (config.sizes.size() < 2) {
    return absl::InvalidArgumentError("an MLP needs at least an input and an output size");
  }
  for (int64_t s : config.sizes) {
    if (s <= 0 || s > (int64_t{1} << 24)) {
      return absl::InvalidArgumentError(absl::StrCat("MLP layer size ", s, " out of range"));
    }
  }
  if (config.batch <= 0 || config.batch > (int64_t{1} << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("batch ", config.batch, " out of range"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Model> BuildMlp(const MlpConfig& config) {
  RETURN_IF_ERROR(ValidateConfig(config));
  Model m;
  Graph& g = m.graph;
  const int64_t batch = config.batch;
  ASSIGN_OR_RETURN(m.input, g.AddInput("x", {DType::kF32, {batch, config.sizes[0]}}));
  ASSIGN_OR_RETURN(m.labels, g.AddInput("labels", {DType::kI32, {batch}}));
  ValueId h = m.input;
  const size_t num_layers = config.sizes.size() - 1;
  for (size_t i = 0; i < num_layers; ++i) {
    const std::string name = absl::StrCat("fc", i + 1);
    const int64_t in = config.sizes[i], out = config.sizes[i + 1];
    ASSIGN_OR_RETURN(ValueId w, g.AddParameter(name + ".weight", {DType::kF32, {out, in}}));
    ASSIGN_OR_RETURN(ValueId b, g.AddParameter(name + ".bias", {DType::kF32, {out}}));
    ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kLinear, {h, w, b}, NoAttrs{}, name));
    if (i + 1 < num_layers) {
      ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kRelu, {h}, NoAttrs{}, name + ".relu"));
    }
    m.layers.push_back({name, {name + ".weight", name + ".bias"}});
  }
  m.logits = h;
  ASSIGN_OR_RETURN(m.loss, g.AddNode(OpKind::kSoftmaxCrossEntropy, {m.logits, m.labels},
                                     CrossEntropyAttrs{}, "loss"));
  g.MarkOutput(m.logits);
  g.MarkOutput(m.loss);
  return m;
}

absl::Status InitializeMlp(const MlpConfig& config, uint64_t seed,
                           runtime::ParameterStore* params) {
  RETURN_IF_ERROR(ValidateConfig(config));
  // mt19937_64 and uniform_real_distribution are fully specified by the
  // standard library we build with, so a seed gives the same weights each run.
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i + 1 < config.sizes.size(); ++i) {
    const int64_t in = config.sizes[i], out = config.sizes[i + 1];
    const float bound = 1.0f / std::sqrt(static_cast<float>(in));
    std::uniform_real_distribution<float> dist(-bound, bound);
    Tensor w(DType::kF32, {out, in});
    Tensor b(DType::kF32, {out});
    for (float& v : w.f32_span()) v = dist(rng);
    for (float& v : b.f32_span()) v = dist(rng);
    const std::string name = absl::StrCat("fc", i + 1);
    RETURN_IF_ERROR(params->Set(name + ".weight", w));
    RETURN_IF_ERROR(params->Set(name + ".bias", b));
  }
  return absl::OkStatus();
}

}  // namespace fleettune::engine::models
