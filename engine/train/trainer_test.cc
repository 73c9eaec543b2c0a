#include "engine/train/trainer.h"

#include <random>

#include "engine/base/status_matchers.h"
#include "engine/models/mlp.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::train {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A learnable synthetic task: class = argmax of the first 4 features, plus noise.
void MakeData(int64_t n, uint64_t seed, Tensor* images, Tensor* labels) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  *images = Tensor(DType::kF32, {n, 4, 4});
  *labels = Tensor(DType::kI32, {n});
  for (int64_t i = 0; i < n; ++i) {
    float* x = images->f32() + i * 16;
    for (int j = 0; j < 16; ++j) x[j] = u(rng);
    labels->i32()[i] = static_cast<int32_t>(std::max_element(x, x + 4) - x);
  }
}

ModelBuilder Builder() {
  return [](int64_t batch, models::Mode) { return models::BuildMlp({{16, 32, 4}, batch}); };
}

TrainerOptions Options(const models::Model& probe, const std::string& scheme) {
  TrainerOptions o;
  o.batch = 32;
  o.eval_batch = 100;
  o.seed = 5;
  o.optimizer = autodiff::OptimizerConfig::Sgd({0.1f, 0.9f, 0.0f});
  o.trainable = *SelectTrainable(probe, scheme);
  return o;
}

TEST(Trainer, LearnsASyntheticTaskAndIsDeterministic) {
  Tensor train_x, train_y, test_x, test_y;
  MakeData(2048, 1, &train_x, &train_y);
  MakeData(500, 2, &test_x, &test_y);
  ASSERT_OK_AND_ASSIGN(models::Model probe, Builder()(1, models::Mode::kTrain));
  double accuracy[2];
  float weight[2];
  for (int run = 0; run < 2; ++run) {
    runtime::ParameterStore params;
    ASSERT_OK(models::InitializeMlp({{16, 32, 4}, 1}, 3, &params));
    ASSERT_OK_AND_ASSIGN(auto trainer, Trainer::Create(Builder(), &params, Options(probe, "full")));
    ASSERT_OK_AND_ASSIGN(double before, trainer->Evaluate(test_x, test_y));
    double first_loss = 0, last_loss = 0;
    for (int e = 0; e < 8; ++e) {
      ASSERT_OK_AND_ASSIGN(EpochStats s, trainer->TrainEpoch(train_x, train_y));
      EXPECT_EQ(s.steps, 2048 / 32);
      if (e == 0) first_loss = s.mean_loss;
      last_loss = s.mean_loss;
    }
    ASSERT_OK_AND_ASSIGN(accuracy[run], trainer->Evaluate(test_x, test_y));
    EXPECT_LT(last_loss, 0.7 * first_loss);
    EXPECT_GT(accuracy[run], before + 0.3);
    EXPECT_GT(accuracy[run], 0.8);
    weight[run] = params.Find("fc1.weight")->f32()[7];
  }
  EXPECT_EQ(accuracy[0], accuracy[1]);
  EXPECT_EQ(weight[0], weight[1]);
}

TEST(Trainer, FrozenLayerKeepsItsWeights) {
  Tensor x, y;
  MakeData(256, 1, &x, &y);
  ASSERT_OK_AND_ASSIGN(models::Model probe, Builder()(1, models::Mode::kTrain));
  runtime::ParameterStore params;
  ASSERT_OK(models::InitializeMlp({{16, 32, 4}, 1}, 3, &params));
  const Tensor fc1 = *params.Find("fc1.weight");
  const Tensor fc2 = *params.Find("fc2.weight");
  ASSERT_OK_AND_ASSIGN(auto trainer,
                       Trainer::Create(Builder(), &params, Options(probe, "freeze:fc1")));
  ASSERT_OK(trainer->TrainEpoch(x, y).status());
  EXPECT_EQ(std::memcmp(fc1.raw(), params.Find("fc1.weight")->raw(), fc1.bytes()), 0);
  EXPECT_NE(std::memcmp(fc2.raw(), params.Find("fc2.weight")->raw(), fc2.bytes()), 0);
}

TEST(SelectTrainable, SchemesAndErrors) {
  ASSERT_OK_AND_ASSIGN(models::Model m, models::BuildMlp({{8, 6, 4, 2}, 1}));
  EXPECT_THAT(*SelectTrainable(m, "bias-only"), ElementsAre("fc1.bias", "fc2.bias", "fc3.bias"));
  EXPECT_THAT(*SelectTrainable(m, "last-k:1"), ElementsAre("fc3.weight", "fc3.bias"));
  EXPECT_THAT(*SelectTrainable(m, "freeze:fc1,fc2"), ElementsAre("fc3.weight", "fc3.bias"));
  EXPECT_THAT(SelectTrainable(m, "freeze:fc9"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no layer 'fc9'")));
  EXPECT_THAT(SelectTrainable(m, "freeze:fc1,fc2,fc3"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("trains nothing")));
  EXPECT_THAT(SelectTrainable(m, "last-k:7"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("k must be in [1, 3]")));
  EXPECT_THAT(SelectTrainable(m, "dense"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown scheme 'dense'")));
  // MLP: fewer than two blocks, so the units are fc1, fc2 and the head fc3.
  EXPECT_EQ(SelectTrainable(m, "sparse")->size(), 6u);
}

TEST(Trainer, PartialChannelsTrainOnlyTheirRowsWithRowSizedState) {
  Tensor x, y;
  MakeData(256, 1, &x, &y);
  ASSERT_OK_AND_ASSIGN(models::Model probe, Builder()(1, models::Mode::kTrain));
  runtime::ParameterStore params;
  ASSERT_OK(models::InitializeMlp({{16, 32, 4}, 1}, 3, &params));
  const Tensor fc1 = *params.Find("fc1.weight");  // [32, 16]
  scheme::UpdateScheme s{"partial",
                         {{"fc1.weight", scheme::UpdateMode::kChannels, 0.25},
                          {"fc2.*", scheme::UpdateMode::kFull, 0.0}}};
  TrainerOptions o = Options(probe, "full");
  ASSERT_OK_AND_ASSIGN(o.scheme, scheme::ResolveScheme(probe, s));
  ASSERT_OK_AND_ASSIGN(auto trainer, Trainer::Create(Builder(), &params, o));
  ASSERT_OK(trainer->TrainEpoch(x, y).status());
  const Tensor& after = *params.Find("fc1.weight");
  const int64_t k = 8;  // ⌈32 / 4⌉ rows
  EXPECT_NE(std::memcmp(fc1.raw(), after.raw(), k * 16 * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(fc1.f32() + k * 16, after.f32() + k * 16, (32 - k) * 16 * sizeof(float)),
            0);
  ASSERT_NE(params.Find("fc1.weight.momentum_buffer"), nullptr);
  EXPECT_EQ(params.Find("fc1.weight.momentum_buffer")->shape(), (Shape{k, 16}));
  EXPECT_EQ(params.Find("fc1.bias.momentum_buffer"), nullptr);
  // Momentum state: fc1's 8 rows + fc2 (4×32 + 4), against 32×16 + 32 + 132 for "full".
  EXPECT_EQ(trainer->train_executable().memory().optimizer_state_bytes,
            (k * 16 + 4 * 32 + 4) * sizeof(float));
}

TEST(Trainer, RejectsMismatchedData) {
  ASSERT_OK_AND_ASSIGN(models::Model probe, Builder()(1, models::Mode::kTrain));
  runtime::ParameterStore params;
  ASSERT_OK(models::InitializeMlp({{16, 32, 4}, 1}, 3, &params));
  ASSERT_OK_AND_ASSIGN(auto trainer, Trainer::Create(Builder(), &params, Options(probe, "full")));
  Tensor x, y;
  MakeData(64, 1, &x, &y);
  Tensor wide(DType::kF32, {64, 5, 5});
  EXPECT_THAT(
      trainer->TrainEpoch(wide, y),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("do not have 16 values per sample")));
  Tensor short_labels(DType::kI32, {63});
  EXPECT_THAT(trainer->TrainEpoch(x, short_labels),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("labels must be i32[64]")));
  y.i32()[10] = 4;
  EXPECT_THAT(trainer->Evaluate(x, y),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("label 4 of sample 10 is outside [0, 4)")));
}

}  // namespace
}  // namespace fleettune::engine::train
