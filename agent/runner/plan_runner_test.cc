#include "agent/runner/plan_runner.h"

#include <atomic>
#include <filesystem>
#include <random>

#include "engine/base/status_matchers.h"
#include "engine/io/safetensors.h"
#include "engine/models/mlp.h"
#include "engine/plan/plan_io.h"
#include "engine/scheme/scheme.h"
#include "engine/train/trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::agent {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

constexpr int kFeatures = 16;
constexpr int kClasses = 4;

// A learnable task: the class is the argmax of the first four features.
LabeledData MakeData(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0, 1);
  LabeledData d;
  d.images = engine::Tensor(engine::DType::kF32, {n, kFeatures});
  d.labels = engine::Tensor(engine::DType::kI32, {n});
  d.num_classes = kClasses;
  for (int i = 0; i < n; ++i) {
    float* x = d.images.f32() + i * kFeatures;
    for (int j = 0; j < kFeatures; ++j) x[j] = u(rng);
    d.labels.i32()[i] = static_cast<int32_t>(std::max_element(x, x + kClasses) - x);
  }
  return d;
}

std::string PlanBytes(const std::string& scheme) {
  engine::models::MlpConfig config{{kFeatures, 32, kClasses}, 16};
  auto model = engine::models::BuildMlp(config);
  auto trainable = engine::train::SelectTrainable(*model, scheme);
  auto graph = engine::train::BuildTrainingGraph(
      *model, *trainable, engine::autodiff::OptimizerConfig::Sgd({0.1f, 0.9f, 0.0f}));
  v1::CompiledPlan plan;
  plan.set_format_version(engine::plan::kPlanFormatVersion);
  *plan.mutable_graph() = *engine::plan::GraphToProto(*graph);
  return plan.SerializeAsString();
}

// Every weight trains, but only half of each one's output channels: a sparse plan.
std::string HalfChannelsPlanBytes() {
  engine::models::MlpConfig config{{kFeatures, 32, kClasses}, 16};
  auto model = engine::models::BuildMlp(config);
  engine::scheme::UpdateScheme half{"half",
                                    {{"*.weight", engine::scheme::UpdateMode::kChannels, 0.5},
                                     {"*.bias", engine::scheme::UpdateMode::kFull, 0.0}}};
  auto resolved = engine::scheme::ResolveScheme(*model, half);
  auto graph = engine::train::BuildSchemeTrainingGraph(
      *model, *resolved, engine::autodiff::OptimizerConfig::Sgd({0.1f, 0.9f, 0.0f}));
  v1::CompiledPlan plan;
  plan.set_format_version(engine::plan::kPlanFormatVersion);
  *plan.mutable_graph() = *engine::plan::GraphToProto(*graph);
  return plan.SerializeAsString();
}

// Batches of 16 run as 4 slices of 4 (engine/runtime/executable.h micro_batches).
std::string MicroBatchedPlanBytes() {
  engine::models::MlpConfig config{{kFeatures, 32, kClasses}, 4};
  auto model = engine::models::BuildMlp(config);
  auto trainable = engine::train::SelectTrainable(*model, "last-k:1");
  auto graph = engine::train::BuildTrainingGraph(
      *model, *trainable, engine::autodiff::OptimizerConfig::Sgd({0.1f, 0.9f, 0.0f}));
  v1::CompiledPlan plan;
  plan.set_format_version(engine::plan::kPlanFormatVersion);
  *plan.mutable_graph() = *engine::plan::GraphToProto(*graph);
  plan.mutable_metadata()->set_micro_batches(4);
  return plan.SerializeAsString();
}

class PlanRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data_.train = MakeData(512, 1);
    data_.holdout = MakeData(200, 2);
    data_.num_classes = kClasses;
    dir_ = ::testing::TempDir() + "/" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    in_.plan_bytes = PlanBytes("last-k:1");
    in_.assignment.set_assignment_id("asg-1");
    in_.assignment.set_job_id("job-1");
    in_.assignment.mutable_hyper_parameters()->set_epochs(4);
    in_.assignment.mutable_hyper_parameters()->set_seed(3);
    in_.assignment.set_memory_budget_bytes(1 << 20);
    in_.data = &data_;
    in_.state_dir = dir_;
    in_.checkpoint_every_steps = 10;
  }

  SplitData data_;
  std::string dir_;
  PlanRunInputs in_;
};

TEST_F(PlanRunnerTest, TrainsReportsAndKeepsWeightsOnTheDevice) {
  std::vector<v1::MetricsReport> reports;
  ASSERT_OK_AND_ASSIGN(
      v1::MetricsReport final_report,
      RunPlan(
          in_, [&](const v1::MetricsReport& r) { reports.push_back(r); }, nullptr));
  EXPECT_EQ(final_report.steps_done(), 4 * (512 / 16));
  EXPECT_GT(final_report.accuracy_after(), final_report.accuracy_before() + 0.2);
  EXPECT_TRUE(final_report.dense_fits());
  EXPECT_GT(final_report.speedup_vs_dense(), 0.0);
  EXPECT_GT(final_report.memory_saving_vs_dense(), 1.0);  // last-k:1 is lighter than full
  EXPECT_LE(final_report.peak_memory_bytes(), 1 << 20);
  EXPECT_GT(final_report.loss_curve_size(), 0);
  ASSERT_FALSE(reports.empty());
  for (size_t i = 1; i < reports.size(); ++i) {
    EXPECT_GT(reports[i].sequence(), reports[i - 1].sequence());
  }
  EXPECT_GT(final_report.sequence(), reports.back().sequence());
  ASSERT_OK_AND_ASSIGN(auto weights,
                       engine::io::ReadSafetensors(PersonalizedWeightsPath(dir_, "job-1")));
  EXPECT_EQ(weights.size(), 4u);  // fc1/fc2 weight and bias; no optimizer state
}

TEST_F(PlanRunnerTest, APartialChannelPlanIsComparedWithTheDensePlan) {
  in_.plan_bytes = HalfChannelsPlanBytes();
  in_.assignment.mutable_hyper_parameters()->set_epochs(1);
  ASSERT_OK_AND_ASSIGN(v1::MetricsReport report, RunPlan(in_, nullptr, nullptr));
  // Every weight has an update, yet only half its rows train: the dense baseline is timed
  // (a dense plan would report exactly 1) and needs more memory.
  EXPECT_TRUE(report.dense_fits());
  EXPECT_GT(report.speedup_vs_dense(), 0.0);
  EXPECT_NE(report.speedup_vs_dense(), 1.0);
  EXPECT_GT(report.memory_saving_vs_dense(), 1.0);
}

TEST_F(PlanRunnerTest, AMicroBatchedPlanTrainsOnWholeBatches) {
  in_.plan_bytes = MicroBatchedPlanBytes();
  ASSERT_OK_AND_ASSIGN(v1::MetricsReport report, RunPlan(in_, nullptr, nullptr));
  EXPECT_EQ(report.steps_done(), 4 * (512 / 16));  // batches of 16, not of the slice's 4
  EXPECT_GT(report.accuracy_after(), report.accuracy_before() + 0.2);
  EXPECT_GT(report.memory_saving_vs_dense(), 1.0);
}

TEST_F(PlanRunnerTest, ResumesFromACheckpointToTheSameWeights) {
  ASSERT_OK_AND_ASSIGN(v1::MetricsReport straight, RunPlan(in_, nullptr, nullptr));
  ASSERT_OK_AND_ASSIGN(auto expected,
                       engine::io::ReadSafetensors(PersonalizedWeightsPath(dir_, "job-1")));
  std::filesystem::remove_all(dir_);

  std::atomic<bool> cancelled{false};
  int reports = 0;
  auto stop_after_two = [&](const v1::MetricsReport&) {
    if (++reports == 2) cancelled = true;
  };
  EXPECT_THAT(RunPlan(in_, stop_after_two, &cancelled), StatusIs(absl::StatusCode::kCancelled));
  int64_t first_resumed_step = 0;
  ASSERT_OK_AND_ASSIGN(v1::MetricsReport resumed, RunPlan(
                                                      in_,
                                                      [&](const v1::MetricsReport& r) {
                                                        if (first_resumed_step == 0)
                                                          first_resumed_step = r.steps_done();
                                                      },
                                                      nullptr));
  EXPECT_GT(first_resumed_step, 20);  // it did not start over
  EXPECT_NEAR(resumed.accuracy_before(), straight.accuracy_before(), 1e-6);  // kept as f32
  ASSERT_OK_AND_ASSIGN(auto got,
                       engine::io::ReadSafetensors(PersonalizedWeightsPath(dir_, "job-1")));
  for (const auto& [name, t] : expected) {
    ASSERT_EQ(t.bytes(), got.at(name).bytes());
    EXPECT_EQ(std::memcmp(t.raw(), got.at(name).raw(), t.bytes()), 0) << name;
  }
}

TEST_F(PlanRunnerTest, RefusesAPlanOverTheBudget) {
  in_.assignment.set_memory_budget_bytes(1024);
  EXPECT_THAT(RunPlan(in_, nullptr, nullptr),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("over the budget")));
}

TEST_F(PlanRunnerTest, RefusesDataOfTheWrongShape) {
  data_.train.images = engine::Tensor(engine::DType::kF32, {512, kFeatures + 1});
  EXPECT_THAT(RunPlan(in_, nullptr, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("features per sample")));
}

TEST_F(PlanRunnerTest, RefusesAGarbagePlan) {
  in_.plan_bytes = "definitely not a plan";
  EXPECT_FALSE(RunPlan(in_, nullptr, nullptr).ok());
}

}  // namespace
}  // namespace fleettune::agent
