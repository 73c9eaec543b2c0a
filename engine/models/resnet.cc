#include "engine/models/resnet.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::models {
namespace {

constexpr int64_t kMaxSize = int64_t{1} << 20;

// Appends torchvision's Conv2d(bias=False, padding=(kernel−1)/2) → BatchNorm2d.
// (mobilenet_v2.cc has the same helper; both are a screenful and private.)
class Builder {
 public:
  Builder(Model* m, bool train) : m_(*m), g_(m->graph), train_(train) {}

  absl::StatusOr<ValueId> ConvBn(ValueId x, const std::string& conv, const std::string& bn,
                                 int64_t in, int64_t out, int32_t kernel, int32_t stride) {
    ASSIGN_OR_RETURN(ValueId w,
                     g_.AddParameter(conv + ".weight", {DType::kF32, {out, in, kernel, kernel}}));
    m_.layers.push_back({conv, {conv + ".weight"}});
    Conv2dAttrs attrs;
    attrs.stride_h = attrs.stride_w = stride;
    attrs.pad_h = attrs.pad_w = (kernel - 1) / 2;
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
    if (!train_) {
      return g_.AddNode(OpKind::kBatchNormInference, {h, mean, var, gamma, beta}, BatchNormAttrs{},
                        bn);
    }
    ASSIGN_OR_RETURN(ValueId count, g_.AddParameter(bn + ".num_batches_tracked", {DType::kI32, {}},
                                                    ParamRole::kBuffer));
    RETURN_IF_ERROR(g_.AddNode(OpKind::kBatchNormStatsUpdate, {h, mean, var, count},
                               BatchNormAttrs{}, bn + ".update")
                        .status());
    return g_.AddNode(OpKind::kBatchNorm, {h, gamma, beta}, BatchNormAttrs{}, bn);
  }

  absl::StatusOr<ValueId> Relu(ValueId x, const std::string& name) {
    return g_.AddNode(OpKind::kRelu, {x}, NoAttrs{}, name);
  }

 private:
  Model& m_;
  Graph& g_;
  const bool train_;
};

absl::Status ValidateConfig(const ResNetConfig& c) {
  auto bad = [](int64_t v) { return v <= 0 || v > kMaxSize; };
  if (c.blocks.empty()) return absl::InvalidArgumentError("a ResNet needs at least one stage");
  for (size_t s = 0; s < c.blocks.size(); ++s) {
    if (bad(c.blocks[s])) {
      return absl::InvalidArgumentError(
          absl::StrCat("ResNet stage ", s + 1, " has ", c.blocks[s], " blocks"));
    }
  }
  // Stage widths double per stage: keep the last one in range too.
  if (bad(c.base_width) || c.blocks.size() > 16 || bad(c.base_width << (c.blocks.size() - 1)) ||
      bad(c.resolution) || bad(c.num_classes) || bad(c.batch)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ResNet base_width ", c.base_width, " (", c.blocks.size(),
                     " stages), resolution ", c.resolution, ", classes ", c.num_classes,
                     " and batch ", c.batch, " must be in [1, ", kMaxSize, "]"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Model> BuildResNet(const ResNetConfig& config, Mode mode) {
  RETURN_IF_ERROR(ValidateConfig(config));
  Model m;
  Graph& g = m.graph;
  Builder b(&m, mode == Mode::kTrain);
  ASSIGN_OR_RETURN(
      m.input,
      g.AddInput("x", {DType::kF32, {config.batch, 3, config.resolution, config.resolution}}));
  ASSIGN_OR_RETURN(m.labels, g.AddInput("labels", {DType::kI32, {config.batch}}));

  ASSIGN_OR_RETURN(ValueId h, b.ConvBn(m.input, "conv1", "bn1", 3, config.base_width, 7, 2));
  ASSIGN_OR_RETURN(h, b.Relu(h, "relu"));
  ASSIGN_OR_RETURN(
      h, g.AddNode(OpKind::kMaxPool2d, {h}, Pool2dAttrs{3, 3, 2, 2, 1, 1, true}, "maxpool"));
  int64_t in = config.base_width;
  for (size_t s = 0; s < config.blocks.size(); ++s) {
    const int64_t out = config.base_width << s;
    for (int64_t i = 0; i < config.blocks[s]; ++i) {
      const int32_t stride = (s > 0 && i == 0) ? 2 : 1;
      const std::string p = absl::StrCat("layer", s + 1, ".", i, ".");
      // BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + identity).
      ASSIGN_OR_RETURN(ValueId y, b.ConvBn(h, p + "conv1", p + "bn1", in, out, 3, stride));
      ASSIGN_OR_RETURN(y, b.Relu(y, p + "relu1"));
      ASSIGN_OR_RETURN(y, b.ConvBn(y, p + "conv2", p + "bn2", out, out, 3, 1));
      ValueId identity = h;
      if (stride != 1 || in != out) {
        ASSIGN_OR_RETURN(identity,
                         b.ConvBn(h, p + "downsample.0", p + "downsample.1", in, out, 1, stride));
      }
      ASSIGN_OR_RETURN(y, g.AddNode(OpKind::kAdd, {y, identity}, NoAttrs{}, p + "add"));
      ASSIGN_OR_RETURN(h, b.Relu(y, p + "relu2"));
      in = out;
    }
  }
  // adaptive_avg_pool2d((1, 1)) + flatten: the mean over the spatial axes.
  ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kReduceMean, {h}, ReduceAttrs{{2, 3}, false}, "avgpool"));
  ASSIGN_OR_RETURN(ValueId w, g.AddParameter("fc.weight", {DType::kF32, {config.num_classes, in}}));
  ASSIGN_OR_RETURN(ValueId bias, g.AddParameter("fc.bias", {DType::kF32, {config.num_classes}}));
  ASSIGN_OR_RETURN(m.logits, g.AddNode(OpKind::kLinear, {h, w, bias}, NoAttrs{}, "fc"));
  m.layers.push_back({"fc", {"fc.weight", "fc.bias"}});
  ASSIGN_OR_RETURN(m.loss, g.AddNode(OpKind::kSoftmaxCrossEntropy, {m.logits, m.labels},
                                     CrossEntropyAttrs{}, "loss"));
  g.MarkOutput(m.logits);
  g.MarkOutput(m.loss);
  return m;
}

}  // namespace fleettune::engine::models
