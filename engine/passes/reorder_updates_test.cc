#include "engine/passes/reorder_updates.h"

#include "engine/base/status_matchers.h"
#include "engine/ir/verifier.h"
#include "engine/passes/test_util.h"
#include "engine/runtime/executable.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::passes {
namespace {

// Every update sits after every other reader of the tensors it writes and
// after its inputs, and directly after the last of them.
void ExpectUpdatesAsEarlyAsLegal(const Graph& g) {
  const auto users = g.ComputeUsers();
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    const Node& node = g.node(id);
    if (!IsUpdateOp(node.op)) continue;
    ValueId last = -1;
    for (ValueId in : node.inputs) last = std::max(last, in);
    for (int i : WrittenOperands(node)) {
      for (ValueId reader : users[node.inputs[i]]) {
        if (reader == id) continue;
        EXPECT_LT(reader, id) << "node " << id << " writes %" << node.inputs[i] << " before reader "
                              << reader;
        last = std::max(last, reader);
      }
    }
    // Only other updates may sit between the last dependency and the update.
    for (ValueId between = last + 1; between < id; ++between) {
      EXPECT_TRUE(IsUpdateOp(g.node(between).op))
          << "update " << id << " could run before " << between;
    }
  }
}

TEST(ReorderUpdates, MovesEachUpdateAfterItsGradientAndLastWeightRead) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m, testing::SmallMlp());
  Graph g = m.graph;
  std::vector<ValueId> map;
  ASSERT_OK_AND_ASSIGN(bool changed, ReorderUpdates(g, &map));
  EXPECT_TRUE(changed);
  ASSERT_OK(VerifyGraph(g));
  ExpectUpdatesAsEarlyAsLegal(g);
  // The first layer's weight is read by the forward linear only (no dx is
  // needed below it); the last layer's weight also by the matmul for dx:
  // its update must come after that matmul.
  const ValueId w3 = *g.FindByName("fc3.weight");
  ValueId update = kNoValue, dx_reader = kNoValue;
  const auto users = g.ComputeUsers();
  for (ValueId u : users[w3]) {
    if (IsUpdateOp(g.node(u).op)) update = u;
    if (g.node(u).op == OpKind::kMatMul) dx_reader = u;
  }
  ASSERT_NE(update, kNoValue);
  ASSERT_NE(dx_reader, kNoValue);
  EXPECT_GT(update, dx_reader);
  EXPECT_LT(update, g.num_nodes() - 3);  // no longer at the end
}

TEST(ReorderUpdates, IsANoOpTheSecondTime) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m, testing::SmallMlp());
  Graph g = m.graph;
  ASSERT_OK(ReorderUpdates(g).status());
  ASSERT_OK_AND_ASSIGN(bool changed, ReorderUpdates(g));
  EXPECT_FALSE(changed);
}

TEST(ReorderUpdates, ShrinksTheArenaOfMobileNetV2AndBert) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel mnv2,
                       testing::SmallMobileNetV2(models::Mode::kTrain, "full"));
  ASSERT_OK_AND_ASSIGN(testing::TestModel bert, testing::SmallBert("full"));
  for (const testing::TestModel* m : {&mnv2, &bert}) {
    Graph g = m->graph;
    ASSERT_OK(ReorderUpdates(g).status());
    ASSERT_OK(VerifyGraph(g));
    ExpectUpdatesAsEarlyAsLegal(g);
    const size_t before = testing::ArenaBytes(m->graph), after = testing::ArenaBytes(g);
    EXPECT_LT(after, before);
    std::printf("arena bytes: %zu before, %zu after reordering updates\n", before, after);
  }
}

TEST(ReorderUpdates, TrainsExactlyAsTheOriginalOrder) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel mnv2,
                       testing::SmallMobileNetV2(models::Mode::kTrain, "full"));
  ASSERT_OK_AND_ASSIGN(testing::TestModel bert, testing::SmallBert("full"));
  ASSERT_OK_AND_ASSIGN(testing::TestModel mlp, testing::SmallMlp());
  for (const testing::TestModel* m : {&mnv2, &bert, &mlp}) {
    Graph g = m->graph;
    std::vector<ValueId> map;
    ASSERT_OK(ReorderUpdates(g, &map).status());
    ASSERT_OK_AND_ASSIGN(testing::TrainResult want,
                         testing::TrainSteps(m->graph, m->model.loss, *m, 4));
    ASSERT_OK_AND_ASSIGN(testing::TrainResult got,
                         testing::TrainSteps(g, map[m->model.loss], *m, 4));
    // Same kernels on the same values in a different order: bit-identical.
    testing::ExpectSameTraining(want, got, 0.0);
  }
}

TEST(ReorderUpdates, RejectsAGraphOutOfOrder) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId w, g.AddParameter("w", {DType::kF32, {2}}));
  Node update;
  update.op = OpKind::kSgdUpdate;
  update.inputs = {w, 5};
  update.attrs = SgdAttrs{};
  update.has_output = false;
  update.type = {DType::kF32, {}};
  g.AddUncheckedNode(update);
  EXPECT_THAT(ReorderUpdates(g), fleettune::testing::StatusIs(absl::StatusCode::kFailedPrecondition,
                                                              ::testing::HasSubstr("earlier")));
}

}  // namespace
}  // namespace fleettune::engine::passes
