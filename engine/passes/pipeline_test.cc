#include "engine/passes/pipeline.h"

#include "engine/base/status_matchers.h"
#include "engine/ir/verifier.h"
#include "engine/passes/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::passes {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

const PassStats& Stats(const PassReport& r, const std::string& name) {
  for (const PassStats& s : r.passes) {
    if (s.name == name) return s;
  }
  static const PassStats kNone;
  ADD_FAILURE() << "no pass " << name;
  return kNone;
}

TEST(PassOptions, ParsesAllNoneAndLists) {
  ASSERT_OK_AND_ASSIGN(PassOptions all, PassOptions::Parse("all"));
  EXPECT_TRUE(all.fold_batch_norm && all.fuse && all.dce && all.pack_masks && all.fuse_updates &&
              all.reorder_updates && all.fold_constants && all.in_place);
  ASSERT_OK_AND_ASSIGN(PassOptions none, PassOptions::Parse("none"));
  EXPECT_FALSE(none.fold_batch_norm || none.fuse || none.dce || none.pack_masks ||
               none.fuse_updates || none.reorder_updates || none.fold_constants || none.in_place);
  ASSERT_OK_AND_ASSIGN(PassOptions some, PassOptions::Parse("dce,in_place"));
  EXPECT_TRUE(some.dce && some.in_place);
  EXPECT_FALSE(some.fuse || some.reorder_updates);
  EXPECT_THAT(PassOptions::Parse("dce,inline"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown pass 'inline'")));
}

TEST(RunPasses, ReportsWhatEachPassDid) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m,
                       testing::SmallMobileNetV2(models::Mode::kEval, "last-k:3"));
  Graph g = m.graph;
  ASSERT_OK_AND_ASSIGN(PassReport report, RunPasses(g));
  ASSERT_OK(VerifyGraph(g));
  ASSERT_EQ(report.passes.size(), 8u);
  EXPECT_GT(Stats(report, "fold_batch_norm").rewrites, 10);
  EXPECT_GT(Stats(report, "fuse").rewrites, 0);
  EXPECT_EQ(Stats(report, "fuse_updates").rewrites, 1);  // the classifier's weight
  const PassStats& reorder = Stats(report, "reorder_updates");
  EXPECT_TRUE(reorder.changed);
  EXPECT_LT(reorder.arena_bytes_after, reorder.arena_bytes_before);
  EXPECT_GT(Stats(report, "fold_constants").rewrites, 0);
  const PassStats& in_place = Stats(report, "in_place");
  EXPECT_GT(in_place.rewrites, 0);
  EXPECT_LE(in_place.arena_bytes_after, in_place.arena_bytes_before);
  const ValueId loss = report.Map(m.model.loss);
  ASSERT_NE(loss, kNoValue);
  EXPECT_EQ(g.node(loss).op, OpKind::kSoftmaxCrossEntropy);
  EXPECT_THAT(report.ToString(), HasSubstr("fold_batch_norm"));
  std::printf("%s", report.ToString().c_str());
}

TEST(RunPasses, DisabledPassesDoNothing) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m, testing::SmallMlp());
  Graph g = m.graph;
  ASSERT_OK_AND_ASSIGN(PassOptions none, PassOptions::Parse("none"));
  ASSERT_OK_AND_ASSIGN(PassReport report, RunPasses(g, none));
  EXPECT_EQ(g.num_nodes(), m.graph.num_nodes());
  for (const PassStats& s : report.passes) {
    EXPECT_FALSE(s.enabled) << s.name;
    EXPECT_FALSE(s.changed) << s.name;
  }
  EXPECT_EQ(report.Map(m.model.loss), m.model.loss);
}

TEST(RunPasses, RejectsAMalformedGraph) {
  Graph g;
  Node bad;
  bad.op = OpKind::kRelu;
  bad.inputs = {3};  // not an earlier node
  bad.type = {DType::kF32, {2}};
  g.AddUncheckedNode(bad);
  EXPECT_THAT(RunPasses(g),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not an earlier node")));
}

}  // namespace
}  // namespace fleettune::engine::passes
