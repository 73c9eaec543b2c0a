#include "engine/search/cost_model.h"

#include "engine/base/status_matchers.h"
#include "engine/compile/compiler.h"
#include "engine/models/zoo.h"
#include "engine/runtime/executable.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::search {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

models::Model Zoo(const std::string& name) {
  // .value(): a zoo model that fails to build fails the test loudly.
  return models::FindZooModel(name).value()->build(8, models::Mode::kTrain).value();
}

TEST(CostModel, MatchesCompileTrainingExactly) {
  for (const std::string name : {"mlp", "cnn"}) {
    models::Model model = Zoo(name);
    ASSERT_OK_AND_ASSIGN(std::vector<Candidate> all, ListCandidates(model));
    DeviceClass device{"rpi4", 2, 4e9};
    CostModel costs(model, device);
    // A few sets: one candidate, every bias, a mix.
    std::vector<std::vector<Candidate>> sets = {{all[0]}, {}, {all.back(), all[0]}};
    for (const Candidate& c : all) {
      if (c.kind == CandidateKind::kBias) sets[1].push_back(c);
    }
    for (const auto& set : sets) {
      ASSERT_OK_AND_ASSIGN(SchemeCost got, costs.Cost(set));
      ASSERT_OK_AND_ASSIGN(scheme::UpdateScheme s, ToScheme(model, set, "x"));
      compile::CompileOptions options;
      ASSERT_OK_AND_ASSIGN(options.scheme, scheme::ResolveScheme(model, s));
      options.optimizer = autodiff::OptimizerConfig::Sgd({0.01f, 0.9f});
      options.threads = 2;
      ASSERT_OK_AND_ASSIGN(compile::CompiledTraining compiled,
                           compile::CompileTraining(model, options));
      EXPECT_EQ(got.memory_bytes,
                static_cast<int64_t>(compile::TrainingBytes(compiled.plan.metadata())));
      EXPECT_EQ(got.flops_per_step,
                static_cast<int64_t>(compiled.plan.metadata().flops_per_step()));
      EXPECT_DOUBLE_EQ(got.step_seconds, got.flops_per_step / 4e9);
    }
  }
}

TEST(CostModel, CachesBySchemeTextAndComputesMarginals) {
  models::Model model = Zoo("mlp");
  ASSERT_OK_AND_ASSIGN(std::vector<Candidate> all, ListCandidates(model));
  CostModel costs(model, {});
  ASSERT_OK_AND_ASSIGN(SchemeCost bias, costs.Cost({all[0]}));
  ASSERT_OK_AND_ASSIGN(SchemeCost again, costs.Cost({all[0]}));
  EXPECT_EQ(costs.compiles(), 1);
  EXPECT_EQ(bias.memory_bytes, again.memory_bytes);
  // fc1.weight@1 on top of fc1.bias: costs more, and more than @1/8.
  ASSERT_OK_AND_ASSIGN(SchemeCost full, costs.Marginal({all[0]}, all[4]));
  ASSERT_OK_AND_ASSIGN(SchemeCost eighth, costs.Marginal({all[0]}, all[1]));
  EXPECT_GT(full.memory_bytes, eighth.memory_bytes);
  EXPECT_GT(eighth.memory_bytes, 0);
  EXPECT_GT(full.flops_per_step, 0);
  ASSERT_OK_AND_ASSIGN(SchemeCost with, costs.Cost({all[0], all[4]}));
  EXPECT_EQ(with.memory_bytes - bias.memory_bytes, full.memory_bytes);
  // An empty base: the candidate's whole cost.
  ASSERT_OK_AND_ASSIGN(SchemeCost alone, costs.Marginal({}, all[0]));
  EXPECT_EQ(alone.memory_bytes, bias.memory_bytes);
  // A candidate on a tensor of the base replaces that entry.
  ASSERT_OK_AND_ASSIGN(SchemeCost swap, costs.Marginal({all[0], all[1]}, all[4]));
  ASSERT_OK_AND_ASSIGN(SchemeCost eighth_set, costs.Cost({all[0], all[1]}));
  EXPECT_EQ(swap.memory_bytes, with.memory_bytes - eighth_set.memory_bytes);
}

TEST(CostModel, InferenceBytesAreWhatTheForwardPassAllocates) {
  for (const char* name : {"mlp", "cnn"}) {
    models::Model model = Zoo(name);
    CostModel costs(model, {"x", 2, 1e9});
    ASSERT_OK_AND_ASSIGN(int64_t inference, costs.InferenceBytes());
    ASSERT_OK_AND_ASSIGN(const models::ZooEntry* zoo, models::FindZooModel(name));
    runtime::ParameterStore params;
    ASSERT_OK(zoo->initialize(model, 0, &params));
    runtime::CompileOptions options;
    options.threads = 2;
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<runtime::Executable> exe,
                         runtime::Executable::Compile(model.graph, &params, options));
    EXPECT_EQ(inference, static_cast<int64_t>(exe->memory().total_bytes())) << name;

    // A third of full fine-tuning's overhead on top of inference.
    ASSERT_OK_AND_ASSIGN(scheme::UpdateScheme full, scheme::PresetScheme(model, "full"));
    ASSERT_OK_AND_ASSIGN(SchemeCost full_cost, costs.Cost(full));
    EXPECT_GT(full_cost.memory_bytes, inference) << name;
    ASSERT_OK_AND_ASSIGN(int64_t all, OverheadFractionBudget(costs, model, 1.0));
    EXPECT_EQ(all, full_cost.memory_bytes);
    ASSERT_OK_AND_ASSIGN(int64_t third, OverheadFractionBudget(costs, model, 1.0 / 3));
    EXPECT_NEAR(static_cast<double>(third - inference),
                static_cast<double>(full_cost.memory_bytes - inference) / 3, 1.0);
    EXPECT_THAT(OverheadFractionBudget(costs, model, 0.0),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fraction")));
    EXPECT_THAT(OverheadFractionBudget(costs, model, 1.5),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fraction")));
  }
}

TEST(CostModel, RejectsBadInputs) {
  models::Model model = Zoo("mlp");
  CostModel costs(model, {"zero", 1, 0.0});
  ASSERT_OK_AND_ASSIGN(std::vector<Candidate> all, ListCandidates(model));
  EXPECT_THAT(costs.Cost({all[0]}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("throughput")));
  CostModel ok(model, {});
  scheme::UpdateScheme unknown{"u", {{"nope.weight", scheme::UpdateMode::kFull, 0.0}}};
  EXPECT_THAT(ok.Cost(unknown),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nope.weight")));
  EXPECT_THAT(ok.Cost(std::vector<Candidate>{}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
}

}  // namespace
}  // namespace fleettune::engine::search
