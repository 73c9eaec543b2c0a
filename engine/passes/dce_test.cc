#include "engine/passes/dce.h"

#include "engine/base/status_matchers.h"
#include "engine/ir/verifier.h"
#include "engine/passes/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::passes {
namespace {

TEST(DeadCodeElimination, DropsUnusedNodesAndRemapsOutputs) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {2, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId unused_in, g.AddInput("unused", {DType::kF32, {2}}));
  ASSERT_OK_AND_ASSIGN(ValueId w, g.AddParameter("w", {DType::kF32, {4, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId dead, g.AddNode(OpKind::kRelu, {x}));
  ASSERT_OK_AND_ASSIGN(ValueId dead2, g.AddNode(OpKind::kScale, {dead}, ScalarAttrs{2.0f}));
  ASSERT_OK_AND_ASSIGN(ValueId y, g.AddNode(OpKind::kLinear, {x, w}, NoAttrs{}, "fc"));
  g.MarkOutput(y);
  std::vector<ValueId> map;
  ASSERT_OK_AND_ASSIGN(bool changed, EliminateDeadCode(g, &map));
  EXPECT_TRUE(changed);
  ASSERT_OK(VerifyGraph(g));
  EXPECT_EQ(g.num_nodes(), 4);  // x, unused (sources stay), w, y
  EXPECT_EQ(map[dead], kNoValue);
  EXPECT_EQ(map[dead2], kNoValue);
  EXPECT_EQ(map[unused_in], 1);
  ASSERT_EQ(g.outputs().size(), 1u);
  EXPECT_EQ(g.outputs()[0], map[y]);
  EXPECT_EQ(g.node(map[y]).name, "fc");
  EXPECT_EQ(g.FindByName("w"), map[w]);
}

TEST(DeadCodeElimination, KeepsUpdatesAndWhatTheyNeed) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m, testing::SmallMlp());
  Graph g = m.graph;
  ASSERT_OK_AND_ASSIGN(bool changed, EliminateDeadCode(g));
  ASSERT_OK(VerifyGraph(g));
  // Autodiff emits only needed nodes: nothing to remove.
  EXPECT_FALSE(changed);
  EXPECT_EQ(g.num_nodes(), m.graph.num_nodes());
}

TEST(DeadCodeElimination, RemovesWhatFrozenLayersLeaveBehind) {
  // The MobileNetV2 eval graph reads no num_batches_tracked; a hand-added
  // dead branch (a BatchNorm of the logits nobody reads) goes away.
  ASSERT_OK_AND_ASSIGN(testing::TestModel m,
                       testing::SmallMobileNetV2(models::Mode::kEval, "full"));
  Graph g = m.graph;
  ASSERT_OK_AND_ASSIGN(ValueId dead,
                       g.AddNode(OpKind::kScale, {m.model.logits}, ScalarAttrs{3.0f}));
  ASSERT_OK_AND_ASSIGN(ValueId dead2, g.AddNode(OpKind::kRelu, {dead}));
  std::vector<ValueId> map;
  ASSERT_OK_AND_ASSIGN(bool changed, EliminateDeadCode(g, &map));
  EXPECT_TRUE(changed);
  ASSERT_OK(VerifyGraph(g));
  EXPECT_EQ(g.num_nodes(), m.graph.num_nodes());
  EXPECT_EQ(map[dead2], kNoValue);
  ASSERT_OK_AND_ASSIGN(testing::TrainResult want, testing::TrainSteps(m.graph, m.model.loss, m, 2));
  ASSERT_OK_AND_ASSIGN(testing::TrainResult got, testing::TrainSteps(g, map[m.model.loss], m, 2));
  testing::ExpectSameTraining(want, got, 0.0);
}

}  // namespace
}  // namespace fleettune::engine::passes
