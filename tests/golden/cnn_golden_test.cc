// Golden test: fleettune's CNN operators against PyTorch 1.13.
//
// tests/golden/gen_cnn_golden.py (Debian's python3-torch) built a small network
// that uses every CNN operator variant — convolutions with bias, stride,
// padding, dilation, groups, depthwise, 1×1 and non-square kernels; BatchNorm
// in training mode and with frozen statistics; max and average pooling (with
// and without counting padding); global average pooling; ReLU, ReLU6, SiLU,
// GELU (tanh and erf), tanh, sigmoid; cross-entropy plus MSE loss — and saved
// its weights, a batch, and PyTorch's logits, loss, every parameter gradient and
// the updated running statistics. This test rebuilds the network with engine
// ops and compares, once with the fast kernels (im2col + GEMM, depthwise) and
// once with the reference kernels. PyTorch is not needed to run it.
//
// Tolerance: relative error (max |ours − torch| / max |torch| per tensor) below
// 1e-4 for everything, as the issue asks; no tensor needs a looser bound. One
// gradient is exactly zero in theory (conv1.bias in training mode, see below)
// and is compared at the scale of its layer's weight gradient.
#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "engine/autodiff/autodiff.h"
#include "engine/base/status_macros.h"
#include "engine/base/status_matchers.h"
#include "engine/io/safetensors.h"
#include "engine/ir/graph.h"
#include "engine/runtime/executable.h"
#include "gtest/gtest.h"

namespace fleettune::engine {
namespace {

constexpr double kTolerance = 1e-4;
const char* const kBatchNorms[] = {"bn1", "bn2", "bn3"};

double RelativeError(const float* ours, const Tensor& golden) {
  double diff = 0.0, scale = 0.0;
  for (int64_t i = 0; i < golden.num_elements(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(ours[i]) - golden.f32()[i]));
    scale = std::max(scale, std::abs(static_cast<double>(golden.f32()[i])));
  }
  return diff / std::max(scale, 1e-12);
}

// The network of gen_cnn_golden.py, in training mode (batch statistics and
// running-statistics updates) or evaluation mode (frozen statistics).
class NetBuilder {
 public:
  NetBuilder(const std::map<std::string, Tensor>& golden, bool train)
      : golden_(golden), train_(train) {}

  absl::StatusOr<Graph> Build() {
    ASSIGN_OR_RETURN(ValueId x, g_.AddInput("x", golden_.at("x").type()));
    ASSIGN_OR_RETURN(ValueId labels, g_.AddInput("labels", golden_.at("labels").type()));
    ASSIGN_OR_RETURN(ValueId target, g_.AddInput("target", golden_.at("target").type()));
    ValueId h;
    ASSIGN_OR_RETURN(h, Conv(x, "conv1", {1, 1, 1, 1, 1, 1, 1}, true));
    ASSIGN_OR_RETURN(h, BatchNorm(h, "bn1"));
    ASSIGN_OR_RETURN(h, g_.AddNode(OpKind::kRelu, {h}));
    ASSIGN_OR_RETURN(h, Conv(h, "conv2", {1, 1, 2, 2, 2, 2, 2}, true));
    ASSIGN_OR_RETURN(h, Act(h, ActivationFn::kSilu));
    ASSIGN_OR_RETURN(h, Conv(h, "conv3", {1, 1, 1, 1, 1, 1, 8}, false));
    ASSIGN_OR_RETURN(h, BatchNorm(h, "bn2"));
    ASSIGN_OR_RETURN(h, Act(h, ActivationFn::kRelu6));
    ASSIGN_OR_RETURN(h, g_.AddNode(OpKind::kMaxPool2d, {h}, Pool2dAttrs{3, 3, 2, 2, 1, 1, true}));
    ASSIGN_OR_RETURN(h, Conv(h, "conv4", {2, 2, 1, 1, 1, 1, 1}, true));
    ASSIGN_OR_RETURN(h, Act(h, ActivationFn::kGeluTanh));
    ASSIGN_OR_RETURN(h, Conv(h, "conv5", {1, 1, 0, 0, 1, 1, 1}, true));
    ASSIGN_OR_RETURN(h, Act(h, ActivationFn::kGeluErf));
    ASSIGN_OR_RETURN(h, Conv(h, "conv6", {1, 2, 1, 1, 1, 1, 1}, false));
    ASSIGN_OR_RETURN(h, BatchNorm(h, "bn3"));
    ASSIGN_OR_RETURN(h, g_.AddNode(OpKind::kAvgPool2d, {h}, Pool2dAttrs{3, 3, 1, 1, 1, 1, false}));
    ASSIGN_OR_RETURN(h, Act(h, ActivationFn::kTanh));
    ASSIGN_OR_RETURN(h, g_.AddNode(OpKind::kAvgPool2d, {h}, Pool2dAttrs{2, 2, 1, 1, 0, 0, true}));
    ASSIGN_OR_RETURN(h, g_.AddNode(OpKind::kReduceMean, {h}, ReduceAttrs{{2, 3}, false}));
    ASSIGN_OR_RETURN(ValueId w, Weight("fc.weight"));
    ASSIGN_OR_RETURN(ValueId b, Weight("fc.bias"));
    ASSIGN_OR_RETURN(logits_, g_.AddNode(OpKind::kLinear, {h, w, b}));
    ASSIGN_OR_RETURN(ValueId ce, g_.AddNode(OpKind::kSoftmaxCrossEntropy, {logits_, labels},
                                            CrossEntropyAttrs{}));
    ASSIGN_OR_RETURN(ValueId probs, Act(logits_, ActivationFn::kSigmoid));
    ASSIGN_OR_RETURN(ValueId mse, g_.AddNode(OpKind::kMseLoss, {probs, target}));
    ASSIGN_OR_RETURN(loss_, g_.AddNode(OpKind::kAdd, {ce, mse}));
    g_.MarkOutput(logits_);
    g_.MarkOutput(loss_);
    return g_;
  }

  ValueId logits() const { return logits_; }
  ValueId loss() const { return loss_; }
  const std::vector<ValueId>& weights() const { return weights_; }

 private:
  absl::StatusOr<ValueId> Weight(const std::string& name) {
    ASSIGN_OR_RETURN(ValueId id, g_.AddParameter(name, golden_.at(name).type()));
    weights_.push_back(id);
    return id;
  }
  absl::StatusOr<ValueId> Buffer(const std::string& name) {
    return g_.AddParameter(name, golden_.at(name).type(), ParamRole::kBuffer);
  }
  absl::StatusOr<ValueId> Conv(ValueId x, const std::string& name, Conv2dAttrs attrs, bool bias) {
    std::vector<ValueId> in = {x};
    ASSIGN_OR_RETURN(ValueId w, Weight(name + ".weight"));
    in.push_back(w);
    if (bias) {
      ASSIGN_OR_RETURN(ValueId b, Weight(name + ".bias"));
      in.push_back(b);
    }
    return g_.AddNode(OpKind::kConv2d, in, attrs, name);
  }
  absl::StatusOr<ValueId> BatchNorm(ValueId x, const std::string& name) {
    ASSIGN_OR_RETURN(ValueId gamma, Weight(name + ".weight"));
    ASSIGN_OR_RETURN(ValueId beta, Weight(name + ".bias"));
    ASSIGN_OR_RETURN(ValueId mean, Buffer(name + ".running_mean"));
    ASSIGN_OR_RETURN(ValueId var, Buffer(name + ".running_var"));
    if (!train_) {
      return g_.AddNode(OpKind::kBatchNormInference, {x, mean, var, gamma, beta}, BatchNormAttrs{},
                        name);
    }
    ASSIGN_OR_RETURN(ValueId count, Buffer(name + ".num_batches_tracked"));
    RETURN_IF_ERROR(
        g_.AddNode(OpKind::kBatchNormStatsUpdate, {x, mean, var, count}, BatchNormAttrs{})
            .status());
    return g_.AddNode(OpKind::kBatchNorm, {x, gamma, beta}, BatchNormAttrs{}, name);
  }
  absl::StatusOr<ValueId> Act(ValueId x, ActivationFn fn) {
    return g_.AddNode(OpKind::kActivation, {x}, ActivationAttrs{fn});
  }

  const std::map<std::string, Tensor>& golden_;
  const bool train_;
  Graph g_;
  std::vector<ValueId> weights_;
  ValueId logits_ = kNoValue, loss_ = kNoValue;
};

// Parameter: use the reference kernels.
class CnnGoldenTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(golden_, io::ReadSafetensors("tests/golden/cnn_golden.safetensors"));
    // The initial state_dict: every name without a "." prefix of its own.
    for (const auto& [name, t] : golden_) {
      if (name.rfind("train.", 0) == 0 || name.rfind("eval.", 0) == 0) continue;
      if (name == "x" || name == "labels" || name == "target") continue;
      ASSERT_OK(params_.Set(name, t));
    }
  }

  const Tensor& Golden(const std::string& name) {
    auto it = golden_.find(name);
    EXPECT_NE(it, golden_.end()) << name;
    return it->second;
  }

  // Forward + backward of every weight, one step; compares with the
  // golden tensors under `prefix` ("train." or "eval.").
  void RunAndCompare(bool train, const std::string& prefix) {
    NetBuilder net(golden_, train);
    ASSERT_OK_AND_ASSIGN(Graph g, net.Build());
    ASSERT_OK_AND_ASSIGN(autodiff::GradientMap grads,
                         autodiff::BuildBackward(g, net.loss(), net.weights()));
    for (const auto& [p, grad] : grads) g.MarkOutput(grad);
    runtime::CompileOptions options;
    options.use_reference_kernels = GetParam();
    ASSERT_OK_AND_ASSIGN(auto exe, runtime::Executable::Compile(g, &params_, options));
    for (const char* input : {"x", "labels", "target"})
      ASSERT_OK(exe->SetInput(input, Golden(input)));
    ASSERT_OK(exe->Run());

    ASSERT_OK_AND_ASSIGN(TensorView loss, exe->Output(net.loss()));
    EXPECT_LT(RelativeError(loss.f32(), Golden(prefix + "loss")), kTolerance)
        << loss.f32()[0] << " vs " << Golden(prefix + "loss").f32()[0];
    ASSERT_OK_AND_ASSIGN(TensorView logits, exe->Output(net.logits()));
    EXPECT_LT(RelativeError(logits.f32(), Golden(prefix + "logits")), kTolerance);
    EXPECT_EQ(grads.size(), 18u);
    for (const auto& [p, grad] : grads) {
      const std::string& name = g.node(p).name;
      ASSERT_OK_AND_ASSIGN(TensorView v, exe->Output(grad));
      const Tensor& want = Golden(prefix + "grad." + name);
      if (train && name == "conv1.bias") {
        // A bias feeding a training-mode BatchNorm has gradient exactly 0 (the
        // normalization subtracts every per-channel constant); both sides hold
        // float rounding noise near 1e-8, so the error is measured against the
        // layer's weight gradient instead of against the noise.
        const Tensor& scale = Golden(prefix + "grad.conv1.weight");
        double diff = 0.0, max_scale = 0.0;
        for (int64_t i = 0; i < want.num_elements(); ++i) {
          diff = std::max(diff, std::abs(static_cast<double>(v.f32()[i]) - want.f32()[i]));
        }
        for (int64_t i = 0; i < scale.num_elements(); ++i) {
          max_scale = std::max(max_scale, std::abs(static_cast<double>(scale.f32()[i])));
        }
        EXPECT_LT(diff / max_scale, kTolerance) << name;
        continue;
      }
      EXPECT_LT(RelativeError(v.f32(), want), kTolerance) << name;
    }
  }

  std::map<std::string, Tensor> golden_;
  runtime::ParameterStore params_;
};

TEST_P(CnnGoldenTest, TrainingModeLossGradientsAndRunningStatisticsMatchPyTorch) {
  ASSERT_NO_FATAL_FAILURE(RunAndCompare(/*train=*/true, "train."));
  for (const char* bn : kBatchNorms) {
    for (const char* stat : {".running_mean", ".running_var"}) {
      const std::string name = std::string(bn) + stat;
      EXPECT_LT(RelativeError(params_.Find(name)->f32(), Golden("train." + name)), kTolerance)
          << name;
    }
    const std::string count = std::string(bn) + ".num_batches_tracked";
    EXPECT_EQ(params_.Find(count)->i32()[0], Golden("train." + count).i32()[0]);
  }
}

TEST_P(CnnGoldenTest, FrozenStatisticsLossAndGradientsMatchPyTorch) {
  // PyTorch ran eval() after the training-mode forward had updated the
  // running statistics; start from the same state.
  for (const char* bn : kBatchNorms) {
    for (const char* stat : {".running_mean", ".running_var"}) {
      const std::string name = std::string(bn) + stat;
      ASSERT_OK(params_.Set(name, Golden("train." + name)));
    }
  }
  ASSERT_NO_FATAL_FAILURE(RunAndCompare(/*train=*/false, "eval."));
}

INSTANTIATE_TEST_SUITE_P(Kernels, CnnGoldenTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Reference" : "Fast";
                         });

}  // namespace
}  // namespace fleettune::engine
