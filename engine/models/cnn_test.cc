#include "engine/models/cnn.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/base/status_matchers.h"
#include "engine/ir/printer.h"
#include "engine/train/trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::models {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

int CountOps(const Graph& g, OpKind op) {
  return static_cast<int>(std::count_if(g.nodes().begin(), g.nodes().end(),
                                        [op](const Node& n) { return n.op == op; }));
}

TEST(Cnn, ParameterNamesAndShapesMatchPyTorchStateDict) {
  ASSERT_OK_AND_ASSIGN(Model m, BuildCnn(CnnConfig{}));
  std::vector<std::string> names;
  for (const Layer& layer : m.layers) {
    for (const std::string& w : layer.weights) {
      names.push_back(w);
      ASSERT_TRUE(m.graph.FindByName(w).has_value()) << w;
    }
  }
  EXPECT_THAT(names, ElementsAre("conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight",
                                 "bn2.weight", "bn2.bias", "conv3.weight", "bn3.weight", "bn3.bias",
                                 "fc.weight", "fc.bias"));
  EXPECT_THAT(m.buffers,
              ElementsAre("bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
                          "bn2.running_mean", "bn2.running_var", "bn2.num_batches_tracked",
                          "bn3.running_mean", "bn3.running_var", "bn3.num_batches_tracked"));
  auto type = [&](const char* name) { return m.graph.type(*m.graph.FindByName(name)); };
  EXPECT_EQ(type("x"), (TensorType{DType::kF32, {64, 1, 28, 28}}));
  EXPECT_EQ(type("conv1.weight"), (TensorType{DType::kF32, {32, 1, 3, 3}}));
  EXPECT_EQ(type("conv3.weight"), (TensorType{DType::kF32, {64, 64, 3, 3}}));
  EXPECT_EQ(type("bn2.running_var"), (TensorType{DType::kF32, {64}}));
  EXPECT_EQ(type("bn2.num_batches_tracked"), (TensorType{DType::kI32, {}}));
  EXPECT_EQ(type("fc.weight"), (TensorType{DType::kF32, {10, 64 * 7 * 7}}));
  EXPECT_EQ(m.graph.type(m.logits), (TensorType{DType::kF32, {64, 10}}));
  EXPECT_EQ(CnnName(CnnConfig{}), "cnn-32-64-64-flatten-10");
}

TEST(Cnn, TrainingGraphUsesBatchStatisticsAndEvaluationGraphTheRunningOnes) {
  CnnConfig config;
  config.batch = 4;
  config.dropout = 0.3f;
  ASSERT_OK_AND_ASSIGN(Model train, BuildCnn(config));
  EXPECT_EQ(CountOps(train.graph, OpKind::kBatchNorm), 3);
  EXPECT_EQ(CountOps(train.graph, OpKind::kBatchNormStatsUpdate), 3);
  EXPECT_EQ(CountOps(train.graph, OpKind::kBatchNormInference), 0);
  EXPECT_EQ(CountOps(train.graph, OpKind::kDropout), 1);
  EXPECT_THAT(PrintGraph(train.graph), HasSubstr("parameter \"bn1.running_mean\" {role=buffer}"));
  config.mode = Mode::kEval;
  ASSERT_OK_AND_ASSIGN(Model eval, BuildCnn(config));
  EXPECT_EQ(CountOps(eval.graph, OpKind::kBatchNorm), 0);
  EXPECT_EQ(CountOps(eval.graph, OpKind::kBatchNormStatsUpdate), 0);
  EXPECT_EQ(CountOps(eval.graph, OpKind::kBatchNormInference), 3);
  EXPECT_EQ(CountOps(eval.graph, OpKind::kDropout), 0);
  EXPECT_FALSE(eval.graph.FindByName("bn1.num_batches_tracked").has_value());
}

TEST(Cnn, GlobalPoolingHeadAveragesOverSpace) {
  CnnConfig config;
  config.global_pool = true;
  config.channels = {8, 16};
  ASSERT_OK_AND_ASSIGN(Model m, BuildCnn(config));
  EXPECT_EQ(m.graph.type(*m.graph.FindByName("fc.weight")), (TensorType{DType::kF32, {10, 16}}));
  EXPECT_EQ(CountOps(m.graph, OpKind::kReduceMean), 1);
  EXPECT_EQ(CnnName(config), "cnn-8-16-gap-10");
}

TEST(Cnn, RejectsBadConfigs) {
  CnnConfig config;
  config.channels = {};
  EXPECT_THAT(BuildCnn(config),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at least one conv block")));
  config.channels = {8, 0};
  EXPECT_THAT(BuildCnn(config),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("channel count 0")));
  config.channels = {8};
  config.dropout = 1.0f;
  EXPECT_THAT(BuildCnn(config),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dropout 1 is outside")));
  runtime::ParameterStore params;
  config.dropout = 0.0f;
  config.height = 0;
  EXPECT_THAT(InitializeCnn(config, 0, &params),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("must be in [1, ")));
}

TEST(Cnn, InitializationIsPyTorchsDefaultAndDeterministic) {
  CnnConfig config;
  config.channels = {4, 8};
  runtime::ParameterStore a, b;
  ASSERT_OK(InitializeCnn(config, 7, &a));
  ASSERT_OK(InitializeCnn(config, 7, &b));
  for (const auto& [name, t] : a.tensors()) {
    ASSERT_EQ(std::memcmp(t.raw(), b.Find(name)->raw(), t.bytes()), 0) << name;
  }
  const Tensor& w = *a.Find("conv2.weight");  // fan_in = 4·3·3
  for (float v : w.f32_span()) EXPECT_LE(std::abs(v), 1.0f / 6.0f);
  EXPECT_EQ(a.Find("bn1.weight")->f32()[3], 1.0f);
  EXPECT_EQ(a.Find("bn1.running_var")->f32()[0], 1.0f);
  EXPECT_EQ(a.Find("bn1.running_mean")->f32()[0], 0.0f);
  EXPECT_EQ(a.Find("bn2.num_batches_tracked")->i32()[0], 0);
}

// 8×8 images whose class is the bright quadrant, with noise.
void MakeQuadrants(int64_t n, uint64_t seed, Tensor* images, Tensor* labels) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> noise(0.0f, 0.5f);
  *images = Tensor(DType::kF32, {n, 64});
  *labels = Tensor(DType::kI32, {n});
  for (int64_t i = 0; i < n; ++i) {
    const int32_t label = static_cast<int32_t>(rng() % 4);
    labels->i32()[i] = label;
    for (int p = 0; p < 64; ++p) {
      const int quadrant = (p / 8 >= 4) * 2 + (p % 8 >= 4);
      images->f32()[i * 64 + p] = noise(rng) + (quadrant == label ? 0.6f : 0.0f);
    }
  }
}

TEST(Cnn, TrainerLearnsAndTracksRunningStatistics) {
  CnnConfig config;
  config.height = config.width = 8;
  config.channels = {4, 8};
  config.classes = 4;
  config.dropout = 0.1f;
  auto build = [config](int64_t batch, Mode mode) {
    CnnConfig c = config;
    c.batch = batch;
    c.mode = mode;
    return BuildCnn(c);
  };
  Tensor train_x, train_y, test_x, test_y;
  MakeQuadrants(512, 1, &train_x, &train_y);
  MakeQuadrants(200, 2, &test_x, &test_y);
  runtime::ParameterStore params;
  ASSERT_OK(InitializeCnn(config, 3, &params));
  ASSERT_OK_AND_ASSIGN(Model probe, build(1, Mode::kTrain));
  train::TrainerOptions options;
  options.batch = 32;
  options.eval_batch = 64;
  options.optimizer = autodiff::OptimizerConfig::Sgd({0.05f, 0.9f, 0.0f});
  ASSERT_OK_AND_ASSIGN(options.trainable, train::SelectTrainable(probe, "full"));
  ASSERT_OK_AND_ASSIGN(auto trainer, train::Trainer::Create(build, &params, options));
  EXPECT_EQ(CountOps(trainer->eval_executable().graph(), OpKind::kBatchNormInference), 2);
  for (int epoch = 0; epoch < 3; ++epoch) ASSERT_OK(trainer->TrainEpoch(train_x, train_y).status());
  ASSERT_OK_AND_ASSIGN(double accuracy, trainer->Evaluate(test_x, test_y));
  EXPECT_GT(accuracy, 0.9);
  // 3 epochs of 512 / 32 steps, one statistics update per BatchNorm per step.
  EXPECT_EQ(params.Find("bn1.num_batches_tracked")->i32()[0], 3 * 16);
  EXPECT_THAT(params.Find("bn1.running_mean")->f32()[0], Not(0.0f));
  EXPECT_THAT(params.Find("bn2.running_var")->f32()[0], Not(1.0f));
}

}  // namespace
}  // namespace fleettune::engine::models
