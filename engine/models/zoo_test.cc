#include "engine/models/zoo.h"

#include <cmath>
#include <set>

#include "engine/base/status_matchers.h"
#include "engine/train/trainer.h"
#include "gtest/gtest.h"

namespace fleettune::engine::models {
namespace {

using ::fleettune::testing::StatusIs;

TEST(Zoo, NamesAreUniqueAndLookupFindsEach) {
  std::set<std::string> names;
  for (const ZooEntry& e : ZooModels()) {
    EXPECT_TRUE(names.insert(e.name).second) << e.name;
    ASSERT_OK_AND_ASSIGN(const ZooEntry* found, FindZooModel(e.name));
    EXPECT_EQ(found, &e);
  }
  EXPECT_GE(names.size(), 6u);
}

TEST(Zoo, UnknownNameListsTheKnownOnes) {
  EXPECT_THAT(
      FindZooModel("alexnet").status(),
      StatusIs(absl::StatusCode::kNotFound, ::testing::HasSubstr("known: mlp, cnn, mobilenet_v2")));
}

// Every entry builds, initializes every parameter it reads, fills a valid
// batch, and trains one step (batch 2) to a finite loss that a second step
// changes.
TEST(Zoo, EveryModelTrainsAStepOnItsSyntheticBatch) {
  for (const ZooEntry& e : ZooModels()) {
    SCOPED_TRACE(e.name);
    ASSERT_OK_AND_ASSIGN(Model model, e.build(2, Mode::kTrain));
    runtime::ParameterStore params;
    ASSERT_OK(e.initialize(model, 0, &params));
    ASSERT_OK_AND_ASSIGN(std::vector<std::string> all, train::SelectTrainable(model, "full"));
    ASSERT_OK_AND_ASSIGN(
        Graph graph,
        train::BuildTrainingGraph(model, all, autodiff::OptimizerConfig::Sgd({0.01f, 0.0f})));
    ASSERT_OK_AND_ASSIGN(auto exe, runtime::Executable::Compile(graph, &params));
    ASSERT_OK(e.fill_batch(*exe, 0));
    ASSERT_OK(exe->Run());
    ASSERT_OK_AND_ASSIGN(TensorView loss, exe->Output(model.loss));
    const float first = loss.f32()[0];
    EXPECT_TRUE(std::isfinite(first));
    ASSERT_OK(exe->Run());
    ASSERT_OK_AND_ASSIGN(loss, exe->Output(model.loss));
    EXPECT_NE(loss.f32()[0], first);
  }
}

}  // namespace
}  // namespace fleettune::engine::models
