#include "engine/models/cnn.h"

#include <cmath>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::models {
namespace {

constexpr int64_t kMaxSize = int64_t{1} << 20;

absl::Status ValidateConfig(const CnnConfig& c) {
  if (c.channels.empty()) return absl::InvalidArgumentError("a CNN needs at least one conv block");
  auto bad = [](int64_t v) { return v <= 0 || v > kMaxSize; };
  if (bad(c.batch) || bad(c.in_channels) || bad(c.height) || bad(c.width) || bad(c.classes)) {
    return absl::InvalidArgumentError(absl::StrCat("CNN batch ", c.batch, ", input ", c.in_channels,
                                                   "x", c.height, "x", c.width, " and classes ",
                                                   c.classes, " must be in [1, ", kMaxSize, "]"));
  }
  for (int64_t ch : c.channels) {
    if (bad(ch)) return absl::InvalidArgumentError(absl::StrCat("CNN channel count ", ch));
  }
  if (!(c.dropout >= 0.0f && c.dropout < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("dropout ", c.dropout, " is outside [0, 1)"));
  }
  return absl::OkStatus();
}

// 3×3, padding 1: ⌊(size − 1) / stride⌋ + 1.
int64_t ConvOut(int64_t size, int64_t stride) { return (size - 1) / stride + 1; }

struct BlockShape {
  int64_t in, out, stride, fan_in;
};

std::vector<BlockShape> Blocks(const CnnConfig& c) {
  std::vector<BlockShape> blocks;
  int64_t in = c.in_channels;
  for (size_t i = 0; i < c.channels.size(); ++i) {
    blocks.push_back({in, c.channels[i], i == 0 ? 1 : 2, in * 9});
    in = c.channels[i];
  }
  return blocks;
}

// Features entering the classifier.
int64_t HeadFeatures(const CnnConfig& c) {
  int64_t h = c.height, w = c.width;
  for (const BlockShape& b : Blocks(c)) {
    h = ConvOut(h, b.stride);
    w = ConvOut(w, b.stride);
  }
  return c.global_pool ? c.channels.back() : c.channels.back() * h * w;
}

}  // namespace

std::string CnnName(const CnnConfig& config) {
  return absl::StrCat("cnn-", absl::StrJoin(config.channels, "-"),
                      config.global_pool ? "-gap-" : "-flatten-", config.classes);
}

absl::StatusOr<Model> BuildCnn(const CnnConfig& config) {
  RETURN_IF_ERROR(ValidateConfig(config));
  const bool train = config.mode == Mode::kTrain;
  Model m;
  Graph& g = m.graph;
  const TensorType image{DType::kF32,
                         {config.batch, config.in_channels, config.height, config.width}};
  ASSIGN_OR_RETURN(m.input, g.AddInput("x", image));
  ASSIGN_OR_RETURN(m.labels, g.AddInput("labels", {DType::kI32, {config.batch}}));
  ValueId h = m.input;
  const std::vector<BlockShape> blocks = Blocks(config);
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockShape& b = blocks[i];
    const std::string conv = absl::StrCat("conv", i + 1), bn = absl::StrCat("bn", i + 1);
    const TensorType per_channel{DType::kF32, {b.out}};
    ASSIGN_OR_RETURN(ValueId w,
                     g.AddParameter(conv + ".weight", {DType::kF32, {b.out, b.in, 3, 3}}));
    Conv2dAttrs attrs;
    attrs.stride_h = attrs.stride_w = static_cast<int32_t>(b.stride);
    attrs.pad_h = attrs.pad_w = 1;
    ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kConv2d, {h, w}, attrs, conv));
    m.layers.push_back({conv, {conv + ".weight"}});

    ASSIGN_OR_RETURN(ValueId gamma, g.AddParameter(bn + ".weight", per_channel));
    ASSIGN_OR_RETURN(ValueId beta, g.AddParameter(bn + ".bias", per_channel));
    ASSIGN_OR_RETURN(ValueId mean,
                     g.AddParameter(bn + ".running_mean", per_channel, ParamRole::kBuffer));
    ASSIGN_OR_RETURN(ValueId var,
                     g.AddParameter(bn + ".running_var", per_channel, ParamRole::kBuffer));
    m.layers.push_back({bn, {bn + ".weight", bn + ".bias"}});
    m.buffers.push_back(bn + ".running_mean");
    m.buffers.push_back(bn + ".running_var");
    m.buffers.push_back(bn + ".num_batches_tracked");
    if (train) {
      ASSIGN_OR_RETURN(ValueId count, g.AddParameter(bn + ".num_batches_tracked", {DType::kI32, {}},
                                                     ParamRole::kBuffer));
      // The statistics update reads the conv output the BatchNorm normalizes.
      RETURN_IF_ERROR(g.AddNode(OpKind::kBatchNormStatsUpdate, {h, mean, var, count},
                                BatchNormAttrs{}, bn + ".update")
                          .status());
      ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kBatchNorm, {h, gamma, beta}, BatchNormAttrs{}, bn));
    } else {
      ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kBatchNormInference, {h, mean, var, gamma, beta},
                                    BatchNormAttrs{}, bn));
    }
    ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kRelu, {h}, NoAttrs{}, bn + ".relu"));
  }
  const int64_t features = HeadFeatures(config);
  if (config.global_pool) {
    // Global average pooling: the mean over the spatial axes.
    ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kReduceMean, {h}, ReduceAttrs{{2, 3}, false}, "pool"));
  } else {
    ASSIGN_OR_RETURN(
        h, g.AddNode(OpKind::kReshape, {h}, ShapeAttrs{{config.batch, features}}, "flatten"));
  }
  if (train && config.dropout > 0.0f) {
    ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kDropout, {h},
                                  DropoutAttrs{config.dropout, config.dropout_seed}, "dropout"));
  }
  ASSIGN_OR_RETURN(ValueId w,
                   g.AddParameter("fc.weight", {DType::kF32, {config.classes, features}}));
  ASSIGN_OR_RETURN(ValueId b, g.AddParameter("fc.bias", {DType::kF32, {config.classes}}));
  ASSIGN_OR_RETURN(m.logits, g.AddNode(OpKind::kLinear, {h, w, b}, NoAttrs{}, "fc"));
  m.layers.push_back({"fc", {"fc.weight", "fc.bias"}});
  ASSIGN_OR_RETURN(m.loss, g.AddNode(OpKind::kSoftmaxCrossEntropy, {m.logits, m.labels},
                                     CrossEntropyAttrs{}, "loss"));
  g.MarkOutput(m.logits);
  g.MarkOutput(m.loss);
  return m;
}

absl::Status InitializeCnn(const CnnConfig& config, uint64_t seed,
                           runtime::ParameterStore* params) {
  RETURN_IF_ERROR(ValidateConfig(config));
  // mt19937_64 and uniform_real_distribution are fully specified by the
  // standard library we build with, so a seed gives the same weights each run.
  std::mt19937_64 rng(seed);
  auto uniform = [&](Shape shape, int64_t fan_in) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
    std::uniform_real_distribution<float> dist(-bound, bound);
    Tensor t(DType::kF32, std::move(shape));
    for (float& v : t.f32_span()) v = dist(rng);
    return t;
  };
  auto filled = [](int64_t n, float value) {
    Tensor t(DType::kF32, {n});
    for (float& v : t.f32_span()) v = value;
    return t;
  };
  const std::vector<BlockShape> blocks = Blocks(config);
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockShape& b = blocks[i];
    const std::string conv = absl::StrCat("conv", i + 1), bn = absl::StrCat("bn", i + 1);
    RETURN_IF_ERROR(params->Set(conv + ".weight", uniform({b.out, b.in, 3, 3}, b.fan_in)));
    RETURN_IF_ERROR(params->Set(bn + ".weight", filled(b.out, 1.0f)));
    RETURN_IF_ERROR(params->Set(bn + ".bias", filled(b.out, 0.0f)));
    RETURN_IF_ERROR(params->Set(bn + ".running_mean", filled(b.out, 0.0f)));
    RETURN_IF_ERROR(params->Set(bn + ".running_var", filled(b.out, 1.0f)));
    RETURN_IF_ERROR(params->Set(bn + ".num_batches_tracked", Tensor(DType::kI32, {})));
  }
  const int64_t features = HeadFeatures(config);
  RETURN_IF_ERROR(params->Set("fc.weight", uniform({config.classes, features}, features)));
  RETURN_IF_ERROR(params->Set("fc.bias", uniform({config.classes}, features)));
  return absl::OkStatus();
}

}  // namespace fleettune::engine::models
