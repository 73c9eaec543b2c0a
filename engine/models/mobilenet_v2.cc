#include "engine/models/mobilenet_v2.h"

#include <algorithm>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::models {
namespace {

constexpr int64_t kMaxSize = int64_t{1} << 20;

// torchvision's _make_divisible: v rounded to the nearest multiple of 8, at
// least 8, and never more than 10% below v.
int64_t MakeDivisible(double v) {
  constexpr int64_t kDivisor = 8;
  int64_t rounded =
      std::max<int64_t>(kDivisor, static_cast<int64_t>(v + kDivisor / 2.0) / kDivisor * kDivisor);
  if (static_cast<double>(rounded) < 0.9 * v) rounded += kDivisor;
  return rounded;
}

// Appends torchvision's Conv2d(bias=False) → BatchNorm2d [→ ReLU6] blocks.
class Builder {
 public:
  Builder(Model* m, bool train) : m_(*m), g_(m->graph), train_(train) {}

  // conv: weight name prefix ("features.0.0"); bn: BatchNorm prefix.
  absl::StatusOr<ValueId> ConvBn(ValueId x, const std::string& conv, const std::string& bn,
                                 int64_t in, int64_t out, int32_t kernel, int32_t stride,
                                 int32_t groups, bool relu6) {
    ASSIGN_OR_RETURN(ValueId w, g_.AddParameter(conv + ".weight",
                                                {DType::kF32, {out, in / groups, kernel, kernel}}));
    m_.layers.push_back({conv, {conv + ".weight"}});
    Conv2dAttrs attrs;
    attrs.stride_h = attrs.stride_w = stride;
    attrs.pad_h = attrs.pad_w = (kernel - 1) / 2;
    attrs.groups = groups;
    ASSIGN_OR_RETURN(ValueId h, g_.AddNode(OpKind::kConv2d, {x, w}, attrs, conv));
    const TensorType per_channel{DType::kF32, {out}};
    ASSIGN_OR_RETURN(ValueId gamma, g_.AddParameter(bn + ".weight", per_channel));
    ASSIGN_OR_RETURN(ValueId beta, g_.AddParameter(bn + ".bias", per_channel));
    ASSIGN_OR_RETURN(ValueId mean,
                     g_.AddParameter(bn + ".running_mean", per_channel, ParamRole::kBuffer));
    ASSIGN_OR_RETURN(ValueId var,
                     g_.AddParameter(bn + ".running_var", per_channel, ParamRole::kBuffer));
    m_.layers.push_back({bn, {bn + ".weight", bn + ".bias"}});
    m_.buffers.push_back(bn + ".running_mean");
    m_.buffers.push_back(bn + ".running_var");
    m_.buffers.push_back(bn + ".num_batches_tracked");
    if (train_) {
      ASSIGN_OR_RETURN(ValueId count, g_.AddParameter(bn + ".num_batches_tracked",
                                                      {DType::kI32, {}}, ParamRole::kBuffer));
      RETURN_IF_ERROR(g_.AddNode(OpKind::kBatchNormStatsUpdate, {h, mean, var, count},
                                 BatchNormAttrs{}, bn + ".update")
                          .status());
      ASSIGN_OR_RETURN(h, g_.AddNode(OpKind::kBatchNorm, {h, gamma, beta}, BatchNormAttrs{}, bn));
    } else {
      ASSIGN_OR_RETURN(h, g_.AddNode(OpKind::kBatchNormInference, {h, mean, var, gamma, beta},
                                     BatchNormAttrs{}, bn));
    }
    if (!relu6) return h;
    return g_.AddNode(OpKind::kActivation, {h}, ActivationAttrs{ActivationFn::kRelu6},
                      bn + ".relu6");
  }

  // Conv2dNormActivation(in, out, kernel, stride, groups) named `prefix`:
  // prefix.0 is the conv, prefix.1 the BatchNorm, then ReLU6.
  absl::StatusOr<ValueId> ConvBnRelu6(ValueId x, const std::string& prefix, int64_t in, int64_t out,
                                      int32_t kernel, int32_t stride, int32_t groups) {
    return ConvBn(x, prefix + ".0", prefix + ".1", in, out, kernel, stride, groups, true);
  }

 private:
  Model& m_;
  Graph& g_;
  const bool train_;
};

absl::Status ValidateConfig(const MobileNetV2Config& c) {
  auto bad = [](int64_t v) { return v <= 0 || v > kMaxSize; };
  if (!(c.width_mult > 0.0 && c.width_mult <= 64.0) || bad(c.resolution) || bad(c.num_classes) ||
      bad(c.batch)) {
    return absl::InvalidArgumentError(
        absl::StrCat("MobileNetV2 width_mult ", c.width_mult,
                     " must be in (0, 64], and resolution ", c.resolution, ", classes ",
                     c.num_classes, " and batch ", c.batch, " in [1, ", kMaxSize, "]"));
  }
  if (!(c.dropout >= 0.0f && c.dropout < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("dropout ", c.dropout, " is outside [0, 1)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Model> BuildMobileNetV2(const MobileNetV2Config& config, Mode mode) {
  RETURN_IF_ERROR(ValidateConfig(config));
  const bool train = mode == Mode::kTrain;
  Model m;
  Graph& g = m.graph;
  Builder b(&m, train);
  ASSIGN_OR_RETURN(
      m.input,
      g.AddInput("x", {DType::kF32, {config.batch, 3, config.resolution, config.resolution}}));
  ASSIGN_OR_RETURN(m.labels, g.AddInput("labels", {DType::kI32, {config.batch}}));

  // torchvision's inverted_residual_setting: expansion t, channels c,
  // repeats n, first stride s.
  struct Stage {
    int64_t t, c, n;
    int32_t s;
  };
  constexpr Stage kStages[] = {{1, 16, 1, 1}, {6, 24, 2, 2},  {6, 32, 3, 2}, {6, 64, 4, 2},
                               {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
  int64_t in = MakeDivisible(32 * config.width_mult);
  const int64_t last = MakeDivisible(1280 * std::max(1.0, config.width_mult));

  ASSIGN_OR_RETURN(ValueId h, b.ConvBnRelu6(m.input, "features.0", 3, in, 3, 2, 1));
  int feature = 1;
  for (const Stage& stage : kStages) {
    const int64_t out = MakeDivisible(stage.c * config.width_mult);
    for (int64_t i = 0; i < stage.n; ++i, ++feature) {
      const int32_t stride = i == 0 ? stage.s : 1;
      // hidden_dim = int(round(inp * t)); t is an integer here.
      const int64_t hidden = in * stage.t;
      const std::string p = absl::StrCat("features.", feature, ".conv.");
      int j = 0;
      ValueId y = h;
      if (stage.t != 1) {
        ASSIGN_OR_RETURN(y, b.ConvBnRelu6(y, absl::StrCat(p, j++), in, hidden, 1, 1, 1));
      }
      ASSIGN_OR_RETURN(y, b.ConvBnRelu6(y, absl::StrCat(p, j++), hidden, hidden, 3, stride,
                                        static_cast<int32_t>(hidden)));
      ASSIGN_OR_RETURN(y, b.ConvBn(y, absl::StrCat(p, j), absl::StrCat(p, j + 1), hidden, out, 1, 1,
                                   1, /*relu6=*/false));
      if (stride == 1 && in == out) {
        ASSIGN_OR_RETURN(y, g.AddNode(OpKind::kAdd, {h, y}, NoAttrs{},
                                      absl::StrCat("features.", feature, ".add")));
      }
      h = y;
      in = out;
    }
  }
  ASSIGN_OR_RETURN(h, b.ConvBnRelu6(h, absl::StrCat("features.", feature), in, last, 1, 1, 1));
  // adaptive_avg_pool2d(1) + flatten: the mean over the spatial axes.
  ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kReduceMean, {h}, ReduceAttrs{{2, 3}, false}, "pool"));
  if (train && config.dropout > 0.0f) {
    ASSIGN_OR_RETURN(
        h, g.AddNode(OpKind::kDropout, {h}, DropoutAttrs{config.dropout, config.dropout_seed},
                     "classifier.0"));
  }
  ASSIGN_OR_RETURN(
      ValueId w, g.AddParameter("classifier.1.weight", {DType::kF32, {config.num_classes, last}}));
  ASSIGN_OR_RETURN(ValueId bias,
                   g.AddParameter("classifier.1.bias", {DType::kF32, {config.num_classes}}));
  ASSIGN_OR_RETURN(m.logits, g.AddNode(OpKind::kLinear, {h, w, bias}, NoAttrs{}, "classifier.1"));
  m.layers.push_back({"classifier.1", {"classifier.1.weight", "classifier.1.bias"}});
  ASSIGN_OR_RETURN(m.loss, g.AddNode(OpKind::kSoftmaxCrossEntropy, {m.logits, m.labels},
                                     CrossEntropyAttrs{}, "loss"));
  g.MarkOutput(m.logits);
  g.MarkOutput(m.loss);
  return m;
}

}  // namespace fleettune::engine::models
