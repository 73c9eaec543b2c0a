#include "engine/passes/fold_batch_norm.h"

#include "absl/strings/match.h"
#include "engine/autodiff/autodiff.h"
#include "engine/base/status_matchers.h"
#include "engine/ir/verifier.h"
#include "engine/passes/dce.h"
#include "engine/passes/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::passes {
namespace {

enum class Train { kConvWeights, kConvWeightsAndBeta, kBetaOnly, kFrozenFeatures, kEverything };

// MobileNetV2 eval graph (frozen statistics) with the gradients of the chosen
// weights marked as outputs next to logits and loss; no optimizer updates.
absl::StatusOr<testing::TestModel> GradientGraph(Train train) {
  ASSIGN_OR_RETURN(testing::TestModel m, testing::SmallMobileNetV2(models::Mode::kEval, "full"));
  Graph g = m.model.graph;
  std::vector<ValueId> trainable;
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    const Node& n = g.node(id);
    if (n.op != OpKind::kParameter) continue;
    if (std::get<ParameterAttrs>(n.attrs).role != ParamRole::kWeight) continue;
    const bool classifier = absl::StartsWith(n.name, "classifier");
    const bool conv = n.type.shape.size() == 4;
    const bool bn_bias = !classifier && n.type.shape.size() == 1 && absl::EndsWith(n.name, ".bias");
    bool take = classifier;
    if (train == Train::kConvWeights) take = take || conv;
    if (train == Train::kConvWeightsAndBeta) take = take || conv || bn_bias;
    if (train == Train::kBetaOnly) take = take || bn_bias;
    if (train == Train::kEverything) take = true;
    if (take) trainable.push_back(id);
  }
  ASSIGN_OR_RETURN(autodiff::GradientMap grads,
                   autodiff::BuildBackward(g, m.model.loss, trainable));
  for (const auto& [param, grad] : grads) g.MarkOutput(grad);
  m.graph = std::move(g);
  return m;
}

void ExpectSameValues(const testing::TrainResult& want, const testing::TrainResult& got,
                      double tolerance) {
  ASSERT_EQ(want.first.size(), got.first.size());
  for (size_t i = 0; i < want.first.size(); ++i) {
    ASSERT_EQ(want.first[i].size(), got.first[i].size()) << "output " << i;
    EXPECT_LE(testing::RelativeDifference(want.first[i].data(), got.first[i].data(),
                                          want.first[i].size()),
              tolerance)
        << "output " << i;
  }
}

struct Case {
  Train train;
  bool expect_fold;
  bool expect_absorb = false;  // BatchNorm input gradients moved into conv gradients
};

class FoldBatchNormTest : public ::testing::TestWithParam<Case> {};

TEST_P(FoldBatchNormTest, KeepsForwardValuesAndGradients) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m, GradientGraph(GetParam().train));
  Graph g = m.graph;
  std::vector<ValueId> map;
  int folded = 0, absorbed = 0;
  ASSERT_OK_AND_ASSIGN(bool changed, FoldBatchNorm(g, &map, &folded, &absorbed));
  ASSERT_OK(VerifyGraph(g));
  EXPECT_EQ(changed, GetParam().expect_fold || GetParam().expect_absorb);
  EXPECT_EQ(absorbed > 0, GetParam().expect_absorb);
  if (GetParam().expect_fold) {
    EXPECT_GE(folded, 30);  // every conv of MobileNetV2 is followed by a BatchNorm
  } else {
    EXPECT_EQ(folded, 0);
  }
  ASSERT_OK_AND_ASSIGN(testing::TrainResult want, testing::TrainSteps(m.graph, m.model.loss, m, 1));
  ASSERT_OK_AND_ASSIGN(testing::TrainResult got, testing::TrainSteps(g, map[m.model.loss], m, 1));
  // Outputs: logits, loss, then every trainable gradient.
  ExpectSameValues(want, got, 1e-5);
  runtime::CompileOptions fold;
  fold.fold_constants = true;
  ASSERT_OK_AND_ASSIGN(testing::TrainResult folded_once,
                       testing::TrainSteps(g, map[m.model.loss], m, 1, fold));
  ExpectSameValues(want, folded_once, 1e-5);
  if (GetParam().train == Train::kFrozenFeatures) {
    // W·s and the shift of every folded pair are computed once.
    EXPECT_GE(folded_once.memory.constant_nodes, 5 * folded);
  }
}

INSTANTIATE_TEST_SUITE_P(Schemes, FoldBatchNormTest,
                         ::testing::Values(Case{Train::kFrozenFeatures, true},
                                           Case{Train::kConvWeights, true, true},
                                           Case{Train::kConvWeightsAndBeta, true, true},
                                           Case{Train::kBetaOnly, true, true},
                                           // γ's gradient reads the conv output.
                                           Case{Train::kEverything, false, true}));

// Frozen convolutions under trainable BatchNorm biases: the input gradient
// through each folded pair reads Wf and the raw dy, so after dead-code
// elimination no per-channel scaling pass over an activation gradient is left.
TEST(FoldBatchNorm, InputGradientsReadTheFoldedWeight) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m, GradientGraph(Train::kBetaOnly));
  ASSERT_GE(testing::CountOps(m.graph, OpKind::kBatchNormInferenceGrad), 30);
  Graph g = m.graph;
  int folded = 0;
  ASSERT_OK(FoldBatchNorm(g, nullptr, &folded).status());
  ASSERT_OK(EliminateDeadCode(g).status());
  ASSERT_OK(VerifyGraph(g));
  // Every pair folds, so no scaling of an activation gradient is left.
  EXPECT_GE(folded, 30);
  EXPECT_EQ(testing::CountOps(g, OpKind::kBatchNormInferenceGrad), 0);
  for (const Node& node : g.nodes()) {
    if (node.op != OpKind::kConv2dBackwardInput) continue;
    EXPECT_NE(g.node(node.inputs[0]).op, OpKind::kBatchNormInferenceGrad);
    EXPECT_EQ(g.node(node.inputs[1]).op, OpKind::kReshape);  // Wf = reshape(W·s)
  }
}

// Full fine-tuning folds no pair (γ trains), but where an activation
// gradient is more than twice the weight's size, the conv gradients read dy
// and a rescaled weight (or rescale their result), and the per-channel pass
// over the activation gradient is gone.
TEST(FoldBatchNorm, ConvGradientsAbsorbTheBatchNormInputGradient) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m, GradientGraph(Train::kEverything));
  const int before = testing::CountOps(m.graph, OpKind::kBatchNormInferenceGrad);
  Graph g = m.graph;
  int folded = 0, absorbed = 0;
  ASSERT_OK(FoldBatchNorm(g, nullptr, &folded, &absorbed).status());
  ASSERT_OK(EliminateDeadCode(g).status());
  ASSERT_OK(VerifyGraph(g));
  EXPECT_EQ(folded, 0);
  EXPECT_GE(absorbed, 4);
  const int after = testing::CountOps(g, OpKind::kBatchNormInferenceGrad);
  EXPECT_LT(after, before);
  // Each absorbed gradient had a weight gradient and (but for the first conv)
  // an input gradient reading it.
  EXPECT_LE(absorbed, 2 * (before - after));
  EXPECT_GE(absorbed, 2 * (before - after) - 1);
  for (const Node& node : g.nodes()) {
    if (node.op == OpKind::kConv2dBackwardInput || node.op == OpKind::kConv2dBackwardWeight) {
      const ValueId dy = node.inputs[node.op == OpKind::kConv2dBackwardInput ? 0 : 1];
      if (g.node(dy).op == OpKind::kBatchNormInferenceGrad) {
        // Left alone: the weight is too large against the gradient.
        const Shape& w = node.op == OpKind::kConv2dBackwardInput ? g.type(node.inputs[1]).shape
                                                                 : node.type.shape;
        EXPECT_GE(2 * NumElements(w), NumElements(g.type(dy).shape)) << node.name;
      }
    }
  }
}

TEST(FoldBatchNorm, LeavesAConvWithAnotherReaderAlone) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {1, 2, 4, 4}}));
  ASSERT_OK_AND_ASSIGN(ValueId w, g.AddParameter("w", {DType::kF32, {3, 2, 1, 1}}));
  std::vector<ValueId> stats;
  for (const char* name : {"mean", "var", "gamma", "beta"}) {
    ASSERT_OK_AND_ASSIGN(ValueId p, g.AddParameter(name, {DType::kF32, {3}}, ParamRole::kBuffer));
    stats.push_back(p);
  }
  ASSERT_OK_AND_ASSIGN(ValueId c, g.AddNode(OpKind::kConv2d, {x, w}, Conv2dAttrs{}));
  ASSERT_OK_AND_ASSIGN(
      ValueId y, g.AddNode(OpKind::kBatchNormInference, {c, stats[0], stats[1], stats[2], stats[3]},
                           BatchNormAttrs{}));
  g.MarkOutput(y);
  g.MarkOutput(c);
  ASSERT_OK_AND_ASSIGN(bool changed, FoldBatchNorm(g));
  EXPECT_FALSE(changed);
}

TEST(FoldBatchNorm, FoldsTheConvBiasIntoTheShift) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {2, 2, 5, 5}}));
  ASSERT_OK_AND_ASSIGN(ValueId w, g.AddParameter("w", {DType::kF32, {3, 2, 3, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId b, g.AddParameter("b", {DType::kF32, {3}}));
  std::vector<ValueId> stats;
  for (const char* name : {"bn.running_mean", "bn.running_var", "bn.weight", "bn.bias"}) {
    ASSERT_OK_AND_ASSIGN(ValueId p, g.AddParameter(name, {DType::kF32, {3}}, ParamRole::kBuffer));
    stats.push_back(p);
  }
  Conv2dAttrs conv;
  conv.pad_h = conv.pad_w = 1;
  ASSERT_OK_AND_ASSIGN(ValueId c, g.AddNode(OpKind::kConv2d, {x, w, b}, conv));
  ASSERT_OK_AND_ASSIGN(
      ValueId y, g.AddNode(OpKind::kBatchNormInference, {c, stats[0], stats[1], stats[2], stats[3]},
                           BatchNormAttrs{1e-3f, 0.1f}));
  ASSERT_OK_AND_ASSIGN(ValueId loss, g.AddNode(OpKind::kReduceSum, {y}, ReduceAttrs{{0, 1, 2, 3}}));
  g.MarkOutput(y);
  g.MarkOutput(loss);
  testing::TestModel m;
  m.graph = g;
  ASSERT_OK(testing::InitializeParams(g, 3, &m.params));
  std::vector<ValueId> map;
  ASSERT_OK_AND_ASSIGN(bool changed, FoldBatchNorm(g, &map));
  ASSERT_TRUE(changed);
  ASSERT_OK(VerifyGraph(g));
  EXPECT_EQ(map[c], kNoValue);
  EXPECT_EQ(g.node(map[y]).op, OpKind::kConv2d);
  ASSERT_OK_AND_ASSIGN(testing::TrainResult want, testing::TrainSteps(m.graph, loss, m, 1));
  ASSERT_OK_AND_ASSIGN(testing::TrainResult got, testing::TrainSteps(g, map[loss], m, 1));
  ExpectSameValues(want, got, 1e-5);
}

}  // namespace
}  // namespace fleettune::engine::passes
