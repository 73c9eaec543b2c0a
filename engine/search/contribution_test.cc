#include "engine/search/contribution.h"

#include <cstdlib>
#include <iostream>
#include <random>

#include "engine/base/status_matchers.h"
#include "engine/models/mlp.h"
#include "engine/models/zoo.h"
#include "engine/search/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::search {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

class ContributionOnMlp : public ::testing::Test {
 protected:
  void SetUp() override {
    MakeArgmaxData(512, 1, &data_.train_images, &data_.train_labels);
    MakeArgmaxData(400, 2, &data_.heldout_images, &data_.heldout_labels);
    ASSERT_OK(models::InitializeMlp(kArgmaxMlp, 3, &base_));
    model_ = ArgmaxMlpBuilder()(1, models::Mode::kTrain).value();
    options_.model_name = "mlp-16-32-4";
    options_.task = "argmax4";
    options_.steps = 40;
    options_.seed = 9;
  }
  Candidate Get(const std::string& id) { return ParseCandidateId(model_, id).value(); }

  CalibrationData data_;
  runtime::ParameterStore base_;
  models::Model model_;
  ContributionOptions options_;
};

TEST_F(ContributionOnMlp, RanksTheHeadAboveAHiddenBiasAndIsDeterministic) {
  const std::vector<Candidate> candidates = {Get("fc1.bias"), Get("fc2.weight@1"),
                                             Get("fc2.weight@1/4")};
  ASSERT_OK_AND_ASSIGN(ContributionProfile a, AnalyzeContributions(ArgmaxMlpBuilder(), base_,
                                                                   candidates, data_, options_));
  ASSERT_EQ(a.entries.size(), 3u);
  EXPECT_EQ(a.entries[1].id, "fc2.weight@1");
  // Training the head on random features learns the task; a hidden bias alone
  // barely moves it.
  EXPECT_GT(a.entries[1].accuracy_gain, 0.2);
  EXPECT_GT(a.entries[1].accuracy_gain, a.entries[0].accuracy_gain + 0.1);
  EXPECT_GT(a.entries[1].loss_gain, a.entries[0].loss_gain);
  // The base weights were only read.
  runtime::ParameterStore fresh;
  ASSERT_OK(models::InitializeMlp(kArgmaxMlp, 3, &fresh));
  EXPECT_EQ(base_.Find("fc2.weight")->f32()[5], fresh.Find("fc2.weight")->f32()[5]);

  ASSERT_OK_AND_ASSIGN(ContributionProfile b, AnalyzeContributions(ArgmaxMlpBuilder(), base_,
                                                                   candidates, data_, options_));
  EXPECT_EQ(ProfileToText(a), ProfileToText(b));

  // The ranking feeds selection directly.
  ASSERT_OK_AND_ASSIGN(std::vector<ScoredCandidate> scored, ScoreCandidates(model_, a));
  ASSERT_EQ(scored.size(), 3u);
  EXPECT_EQ(scored[1].candidate, candidates[1]);
  EXPECT_DOUBLE_EQ(scored[1].gain, a.entries[1].accuracy_gain);
  ASSERT_OK_AND_ASSIGN(std::vector<ScoredCandidate> by_loss,
                       ScoreCandidates(model_, a, GainMetric::kLoss));
  EXPECT_DOUBLE_EQ(by_loss[0].gain, a.entries[0].loss_gain);

  // With room for the head but not for it plus a whole hidden layer, the
  // search keeps the head fully.
  const models::Model batch32 = ArgmaxMlpBuilder()(32, models::Mode::kTrain).value();
  CostModel costs(batch32, {});
  const int64_t head = costs.Cost({candidates[1]}).value().memory_bytes;
  ASSERT_OK_AND_ASSIGN(Selection s, SelectScheme(model_, scored, costs, {head}));
  ASSERT_FALSE(s.chosen.empty());
  EXPECT_EQ(s.chosen.back().candidate.Id(), "fc2.weight@1");
  EXPECT_LE(s.cost.memory_bytes, head);
  std::cerr << ProfileToText(a) << "searched: " << s.scheme.rules.size() << " rules, "
            << s.cost.memory_bytes << " bytes\n";
}

// Regression: base weights from a full fine-tune carry momentum buffers of
// full shape, which clashed with a partial-channel candidate's state.
TEST_F(ContributionOnMlp, IgnoresOptimizerStateInTheBaseStore) {
  ASSERT_OK(base_.Set("fc1.weight.momentum_buffer", Tensor(DType::kF32, {32, 16})));
  const std::vector<Candidate> candidates = {Get("fc1.weight@1/4")};
  ASSERT_OK_AND_ASSIGN(
      ContributionProfile with_state,
      AnalyzeContributions(ArgmaxMlpBuilder(), base_, candidates, data_, options_));
  runtime::ParameterStore clean;
  ASSERT_OK(models::InitializeMlp(kArgmaxMlp, 3, &clean));
  ASSERT_OK_AND_ASSIGN(
      ContributionProfile without,
      AnalyzeContributions(ArgmaxMlpBuilder(), clean, candidates, data_, options_));
  EXPECT_EQ(ProfileToText(with_state), ProfileToText(without));
}

TEST_F(ContributionOnMlp, ProfileRoundTripsThroughAFile) {
  ContributionProfile p;
  p.model_name = "mlp";
  p.task = "fashion mnist, low-contrast\ncamera";  // free text: spaces, a newline
  p.key = std::string(64, 'c');
  p.steps = 50;
  p.seed = 4;
  p.base_accuracy = 0.1;
  p.base_loss = 2.302585092994046;
  p.entries = {{"fc1.bias", 0.15, 2.1, 0.05, 0.202585092994046},
               {"fc2.weight@1/8", 1.0 / 3.0, 1.5, 1.0 / 3.0 - 0.1, 2.302585092994046 - 1.5}};
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/mlp.profile";
  ASSERT_OK(WriteProfile(path, p));
  ASSERT_OK_AND_ASSIGN(ContributionProfile q, ReadProfile(path));
  EXPECT_EQ(ProfileToText(p), ProfileToText(q));
  EXPECT_EQ(q.entries[1].accuracy, 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(q.entries[1].accuracy_gain, 1.0 / 3.0 - 0.1);
  EXPECT_EQ(q.task, p.task);
  EXPECT_EQ(q.key, p.key);
}

TEST_F(ContributionOnMlp, ReportsBadInputs) {
  EXPECT_THAT(AnalyzeContributions(ArgmaxMlpBuilder(), base_, {}, data_, options_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty candidate list")));
  Candidate ghost{CandidateKind::kBias, "fc7.bias", "fc7", 1.0};
  EXPECT_THAT(AnalyzeContributions(ArgmaxMlpBuilder(), base_, {ghost}, data_, options_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fc7.bias")));
  ContributionOptions zero = options_;
  zero.steps = 0;
  EXPECT_THAT(AnalyzeContributions(ArgmaxMlpBuilder(), base_, {Get("fc1.bias")}, data_, zero),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("steps")));
  CalibrationData empty = data_;
  empty.heldout_labels = Tensor(DType::kI32, {3});
  EXPECT_THAT(AnalyzeContributions(ArgmaxMlpBuilder(), base_, {Get("fc1.bias")}, empty, options_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("held-out")));

  runtime::ParameterStore partial;
  ASSERT_OK(partial.Set("fc1.weight", *base_.Find("fc1.weight")));
  EXPECT_THAT(AnalyzeContributions(ArgmaxMlpBuilder(), partial, {Get("fc1.bias")}, data_, options_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'fc1.bias'")));

  EXPECT_THAT(ParseProfileText("garbage"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("header")));
  EXPECT_THAT(ParseProfileText("# fleettune contribution profile v1\nbase 0.1 x\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 2")));
  ContributionProfile unknown;
  unknown.entries = {{"fc9.weight@1/2", 0.5, 1.0, 0.1, 0.1}};
  EXPECT_THAT(ScoreCandidates(model_, unknown),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fc9.weight@1/2")));
}

// Contribution analysis evaluates every candidate on one compiled graph, copying
// in what the candidate's run changed; the result must be what a fresh
// evaluation of the fine-tuned weights gives (a CNN whose BatchNorm statistics
// train, so that buffers change too).
TEST(Contribution, SharedEvaluationEqualsAFreshOne) {
  const models::ZooEntry* zoo = models::FindZooModel("cnn").value();
  const train::ModelBuilder build = [zoo](int64_t b, models::Mode mode) {
    return zoo->build(b, mode);
  };
  models::Model model = build(1, models::Mode::kTrain).value();
  runtime::ParameterStore base;
  ASSERT_OK(zoo->initialize(model, 1, &base));
  CalibrationData data;
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (auto [x, y, n] : {std::tuple{&data.train_images, &data.train_labels, 24},
                         std::tuple{&data.heldout_images, &data.heldout_labels, 20}}) {
    *x = Tensor(DType::kF32, {n, 1, 28, 28});
    *y = Tensor(DType::kI32, {n});
    for (float& v : x->f32_span()) v = u(rng);
    for (int i = 0; i < n; ++i) y->i32()[i] = i % 10;
  }
  ContributionOptions options;
  options.steps = 3;
  options.batch = 8;
  const std::vector<Candidate> candidates = {ParseCandidateId(model, "conv2.weight@1/4").value(),
                                             ParseCandidateId(model, "bn1.bias").value()};
  ASSERT_OK_AND_ASSIGN(ContributionProfile profile,
                       AnalyzeContributions(build, base, candidates, data, options));
  for (size_t i = 0; i < candidates.size(); ++i) {
    runtime::ParameterStore params;
    for (const auto& [name, t] : base.tensors()) ASSERT_OK(params.Set(name, t));
    train::TrainerOptions topts;
    ASSERT_OK_AND_ASSIGN(scheme::UpdateScheme s, ToScheme(model, {candidates[i]}, "one"));
    ASSERT_OK_AND_ASSIGN(topts.scheme, scheme::ResolveScheme(model, s));
    topts.batch = 8;
    topts.optimizer = options.optimizer;
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<train::Trainer> trainer,
                         train::Trainer::Create(build, &params, topts));
    ASSERT_OK(trainer->TrainEpoch(data.train_images, data.train_labels).status());
    trainer.reset();
    ASSERT_OK_AND_ASSIGN(Evaluation fresh,
                         EvaluateHeldOut(build, &params, data.heldout_images, data.heldout_labels));
    EXPECT_EQ(profile.entries[i].accuracy, fresh.accuracy) << candidates[i].Id();
    EXPECT_EQ(profile.entries[i].loss, fresh.loss) << candidates[i].Id();
  }
}

}  // namespace
}  // namespace fleettune::engine::search
