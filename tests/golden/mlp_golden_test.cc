// Golden test: fleettune's MLP training step against PyTorch 1.13.
//
// tests/golden/gen_mlp_golden.py (Debian's python3-torch) wrote fixed-seed
// weights, a batch, and PyTorch's logits, loss, gradients and parameters after
// two SGD-momentum and two AdamW steps. This test rebuilds the same MLP
// (784-32-16-10, batch 16) with the engine and compares. PyTorch is not needed
// to run it. Tolerance: relative error (max |ours − torch| / max |torch| per
// tensor) below 1e-4.
#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "engine/autodiff/autodiff.h"
#include "engine/base/status_matchers.h"
#include "engine/io/safetensors.h"
#include "engine/models/mlp.h"
#include "engine/runtime/executable.h"
#include "engine/train/trainer.h"
#include "gtest/gtest.h"

namespace fleettune::engine {
namespace {

constexpr double kTolerance = 1e-4;
const char* const kParams[] = {"fc1.weight", "fc1.bias",   "fc2.weight",
                               "fc2.bias",   "fc3.weight", "fc3.bias"};

double RelativeError(const float* ours, const Tensor& golden) {
  double diff = 0.0, scale = 0.0;
  for (int64_t i = 0; i < golden.num_elements(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(ours[i]) - golden.f32()[i]));
    scale = std::max(scale, std::abs(static_cast<double>(golden.f32()[i])));
  }
  return diff / std::max(scale, 1e-12);
}

class MlpGoldenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(golden_, io::ReadSafetensors("tests/golden/mlp_golden.safetensors"));
    config_.sizes = {784, 32, 16, 10};
    config_.batch = 16;
    ASSERT_OK_AND_ASSIGN(model_, models::BuildMlp(config_));
    for (const char* name : kParams) ASSERT_OK(params_.Set(name, golden_.at(name)));
  }

  const Tensor& Golden(const std::string& name) { return golden_.at(name); }

  // Runs one step of `graph` on the golden batch.
  std::unique_ptr<runtime::Executable> Run(const Graph& graph, int steps = 1) {
    auto exe = runtime::Executable::Compile(graph, &params_);
    EXPECT_OK(exe.status());
    if (!exe.ok()) return nullptr;
    EXPECT_OK((*exe)->SetInput("x", Golden("x")));
    EXPECT_OK((*exe)->SetInput("labels", Golden("labels")));
    for (int i = 0; i < steps; ++i) EXPECT_OK((*exe)->Run());
    return std::move(*exe);
  }

  std::map<std::string, Tensor> golden_;
  models::MlpConfig config_;
  models::Model model_;
  runtime::ParameterStore params_;
};

TEST_F(MlpGoldenTest, LossLogitsAndGradientsMatchPyTorch) {
  Graph g = model_.graph;
  std::vector<ValueId> trainable;
  for (const char* name : kParams) trainable.push_back(*g.FindByName(name));
  ASSERT_OK_AND_ASSIGN(autodiff::GradientMap grads,
                       autodiff::BuildBackward(g, model_.loss, trainable));
  for (const auto& [p, grad] : grads) g.MarkOutput(grad);
  auto exe = Run(g);
  ASSERT_NE(exe, nullptr);

  ASSERT_OK_AND_ASSIGN(TensorView loss, exe->Output(model_.loss));
  EXPECT_LT(RelativeError(loss.f32(), Golden("loss")), kTolerance)
      << loss.f32()[0] << " vs " << Golden("loss").f32()[0];
  ASSERT_OK_AND_ASSIGN(TensorView logits, exe->Output(model_.logits));
  EXPECT_LT(RelativeError(logits.f32(), Golden("logits")), kTolerance);
  for (const auto& [p, grad] : grads) {
    const std::string& name = g.node(p).name;
    ASSERT_OK_AND_ASSIGN(TensorView v, exe->Output(grad));
    EXPECT_LT(RelativeError(v.f32(), Golden("grad." + name)), kTolerance) << name;
  }
}

TEST_F(MlpGoldenTest, FrozenFirstLayerGradientsMatchPyTorch) {
  Graph g = model_.graph;
  std::vector<ValueId> trainable;
  for (int i = 2; i < 6; ++i) trainable.push_back(*g.FindByName(kParams[i]));
  ASSERT_OK_AND_ASSIGN(autodiff::GradientMap grads,
                       autodiff::BuildBackward(g, model_.loss, trainable));
  for (const auto& [p, grad] : grads) g.MarkOutput(grad);
  auto exe = Run(g);
  ASSERT_NE(exe, nullptr);
  EXPECT_EQ(grads.size(), 4u);
  for (const auto& [p, grad] : grads) {
    const std::string& name = g.node(p).name;
    ASSERT_OK_AND_ASSIGN(TensorView v, exe->Output(grad));
    EXPECT_LT(RelativeError(v.f32(), Golden("frozen1.grad." + name)), kTolerance) << name;
  }
}

TEST_F(MlpGoldenTest, TwoSgdMomentumStepsMatchPyTorch) {
  ASSERT_OK_AND_ASSIGN(Graph g, train::BuildTrainingGraph(
                                    model_, {std::begin(kParams), std::end(kParams)},
                                    autodiff::OptimizerConfig::Sgd({/*lr=*/0.1f, /*momentum=*/0.9f,
                                                                    /*weight_decay=*/1e-4f})));
  ASSERT_NE(Run(g, 2), nullptr);
  for (const char* name : kParams) {
    EXPECT_LT(RelativeError(params_.Find(name)->f32(), Golden(std::string("sgd.step2.") + name)),
              kTolerance)
        << name;
  }
}

TEST_F(MlpGoldenTest, TwoAdamWStepsMatchPyTorch) {
  AdamWAttrs adamw;
  adamw.lr = 1e-2f;
  adamw.beta1 = 0.9f;
  adamw.beta2 = 0.999f;
  adamw.eps = 1e-8f;
  adamw.weight_decay = 1e-2f;
  ASSERT_OK_AND_ASSIGN(Graph g,
                       train::BuildTrainingGraph(model_, {std::begin(kParams), std::end(kParams)},
                                                 autodiff::OptimizerConfig::AdamW(adamw)));
  ASSERT_NE(Run(g, 2), nullptr);
  for (const char* name : kParams) {
    EXPECT_LT(RelativeError(params_.Find(name)->f32(), Golden(std::string("adamw.step2.") + name)),
              kTolerance)
        << name;
  }
}

}  // namespace
}  // namespace fleettune::engine
