#include "engine/train/lm_trainer.h"

#include <cmath>

#include "engine/base/status_matchers.h"
#include "engine/models/llama.h"
#include "engine/text/fortunes.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::train {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

models::LlamaConfig TinyConfig() {
  models::LlamaConfig c;
  c.vocab = 8;
  c.dim = 16;
  c.layers = 1;
  c.heads = 2;
  c.kv_heads = 1;
  c.ffn_dim = 32;
  c.seq_len = 8;
  return c;
}

// Windows of the repeating stream 0, 1, ..., 7, 0, 1, ...
text::LanguageModelData RepeatingData(int64_t windows, int64_t t) {
  std::vector<int32_t> stream;
  for (int64_t i = 0; i < windows * t + 1; ++i) stream.push_back(static_cast<int32_t>(i % 8));
  std::vector<std::vector<int32_t>> streams = {stream};
  return *text::MakeLanguageModelDataset(streams, /*eos_id=*/0, t);
}

TEST(LmTrainer, LossFallsOnRepeatingSequence) {
  const models::LlamaConfig config = TinyConfig();
  runtime::ParameterStore params;
  ASSERT_OK(models::InitializeLlama(config, 0, &params));
  LmTrainerOptions options;
  options.batch = 4;
  options.eval_batch = 3;  // 8 windows: the last batch is padded
  AdamWAttrs adamw;
  adamw.lr = 1e-2f;
  options.optimizer = autodiff::OptimizerConfig::AdamW(adamw);
  ASSERT_OK_AND_ASSIGN(auto trainer, LmTrainer::Create(config, &params, options));
  const text::LanguageModelData data = RepeatingData(8, config.seq_len);
  ASSERT_OK_AND_ASSIGN(double before, trainer->Evaluate(data));
  EXPECT_NEAR(before, std::log(8.0), 0.2);
  double first = 0.0, last = 0.0;
  for (int epoch = 0; epoch < 10; ++epoch) {
    ASSERT_OK_AND_ASSIGN(EpochStats stats, trainer->TrainEpoch(data));
    EXPECT_EQ(stats.steps, 2);
    if (epoch == 0) first = stats.mean_loss;
    last = stats.mean_loss;
  }
  EXPECT_LT(last, 0.5 * first);
  ASSERT_OK_AND_ASSIGN(double after, trainer->Evaluate(data));
  EXPECT_LT(after, 0.5 * before);
}

TEST(LmTrainer, RejectsMismatchedData) {
  const models::LlamaConfig config = TinyConfig();
  runtime::ParameterStore params;
  ASSERT_OK(models::InitializeLlama(config, 0, &params));
  LmTrainerOptions options;
  options.batch = 4;
  ASSERT_OK_AND_ASSIGN(auto trainer, LmTrainer::Create(config, &params, options));
  EXPECT_THAT(trainer->Evaluate(RepeatingData(2, 4)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("i32[N, 8]")));
  EXPECT_THAT(trainer->TrainEpoch(RepeatingData(2, 8)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fewer than one batch of 4")));
  text::LanguageModelData bad = RepeatingData(4, 8);
  bad.targets.i32()[9] = 8;
  EXPECT_THAT(trainer->Evaluate(bad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("target id 8 at window 1")));
}

TEST(LmTrainer, RejectsUnknownTrainable) {
  runtime::ParameterStore params;
  LmTrainerOptions options;
  options.trainable = {"model.layers.5.mlp.up_proj.weight"};
  EXPECT_THAT(LmTrainer::Create(TinyConfig(), &params, options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("model.layers.5")));
}

}  // namespace
}  // namespace fleettune::engine::train
