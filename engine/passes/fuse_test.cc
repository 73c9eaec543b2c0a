#include "engine/passes/fuse.h"

#include "engine/autodiff/autodiff.h"
#include "engine/base/status_matchers.h"
#include "engine/ir/verifier.h"
#include "engine/passes/fold_batch_norm.h"
#include "engine/passes/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::passes {
namespace {

// x → conv(+bias) → act → linear(+bias) → act → output, forward only.
struct Chain {
  Graph g;
  ValueId conv, conv_act, fc, fc_act;
};

Chain BuildChain(OpKind act_op, ActivationFn fn) {
  Chain c;
  Graph& g = c.g;
  const ValueId x = *g.AddInput("x", {DType::kF32, {2, 3, 6, 6}});
  const ValueId w = *g.AddParameter("conv.weight", {DType::kF32, {4, 3, 3, 3}});
  const ValueId b = *g.AddParameter("conv.bias", {DType::kF32, {4}});
  const ValueId fw = *g.AddParameter("fc.weight", {DType::kF32, {5, 36}});
  const ValueId fb = *g.AddParameter("fc.bias", {DType::kF32, {5}});
  const Attrs act_attrs = act_op == OpKind::kRelu ? Attrs{NoAttrs{}} : Attrs{ActivationAttrs{fn}};
  Conv2dAttrs conv;
  conv.stride_h = conv.stride_w = 2;
  conv.pad_h = conv.pad_w = 1;
  c.conv = *g.AddNode(OpKind::kConv2d, {x, w, b}, conv);
  c.conv_act = *g.AddNode(act_op, {c.conv}, act_attrs);
  const ValueId flat = *g.AddNode(OpKind::kReshape, {c.conv_act}, ShapeAttrs{{2, 36}});
  c.fc = *g.AddNode(OpKind::kLinear, {flat, fw, fb});
  c.fc_act = *g.AddNode(act_op, {c.fc}, act_attrs);
  const ValueId loss = *g.AddNode(OpKind::kReduceSum, {c.fc_act}, ReduceAttrs{{0, 1}});
  g.MarkOutput(c.fc_act);
  g.MarkOutput(loss);
  return c;
}

TEST(FuseActivations, FusesConvAndLinearWithEveryActivation) {
  const std::pair<OpKind, ActivationFn> acts[] = {{OpKind::kRelu, ActivationFn::kRelu6},
                                                  {OpKind::kActivation, ActivationFn::kRelu6},
                                                  {OpKind::kActivation, ActivationFn::kSilu},
                                                  {OpKind::kActivation, ActivationFn::kGeluErf},
                                                  {OpKind::kActivation, ActivationFn::kGeluTanh}};
  for (const auto& [op, fn] : acts) {
    Chain c = BuildChain(op, fn);
    Graph g = c.g;
    std::vector<ValueId> map;
    int fused = 0;
    ASSERT_OK_AND_ASSIGN(bool changed, FuseActivations(g, &map, &fused));
    ASSERT_OK(VerifyGraph(g));
    EXPECT_TRUE(changed);
    EXPECT_EQ(fused, 2);
    EXPECT_EQ(testing::CountOps(g, OpKind::kConv2dActivation), 1);
    EXPECT_EQ(testing::CountOps(g, OpKind::kLinearActivation), 1);
    EXPECT_EQ(map[c.conv], kNoValue);
    EXPECT_EQ(map[c.fc], kNoValue);
    testing::TestModel m;
    m.graph = c.g;
    ASSERT_OK(testing::InitializeParams(c.g, 5, &m.params));
    const ValueId loss = c.g.outputs()[1];
    ASSERT_OK_AND_ASSIGN(testing::TrainResult want, testing::TrainSteps(c.g, loss, m, 1));
    ASSERT_OK_AND_ASSIGN(testing::TrainResult got, testing::TrainSteps(g, map[loss], m, 1));
    // The fused kernels run the same kernels back to back: bit-identical.
    testing::ExpectSameTraining(want, got, 0.0);
    ASSERT_EQ(want.first.size(), got.first.size());
    for (size_t i = 0; i < want.first.size(); ++i) EXPECT_EQ(want.first[i], got.first[i]);
  }
}

// Unfusing gives back a graph of primitive ops that computes the same values
// and that autodiff can differentiate.
TEST(UnfuseActivations, RestoresDifferentiablePrimitives) {
  for (const auto& [op, fn] : {std::pair{OpKind::kRelu, ActivationFn::kRelu6},
                               std::pair{OpKind::kActivation, ActivationFn::kGeluErf}}) {
    Chain c = BuildChain(op, fn);
    Graph g = c.g;
    std::vector<ValueId> fuse_map, unfuse_map;
    ASSERT_OK(FuseActivations(g, &fuse_map).status());
    ASSERT_OK_AND_ASSIGN(bool changed, UnfuseActivations(g, &unfuse_map));
    EXPECT_TRUE(changed);
    ASSERT_OK(VerifyGraph(g));
    EXPECT_EQ(testing::CountOps(g, OpKind::kConv2dActivation) +
                  testing::CountOps(g, OpKind::kLinearActivation),
              0);
    EXPECT_EQ(testing::CountOps(g, OpKind::kConv2d), 1);
    EXPECT_EQ(testing::CountOps(g, OpKind::kLinear), 1);
    testing::TestModel m;
    m.graph = c.g;
    ASSERT_OK(testing::InitializeParams(c.g, 5, &m.params));
    const ValueId loss = c.g.outputs()[1];
    ASSERT_OK_AND_ASSIGN(testing::TrainResult want, testing::TrainSteps(c.g, loss, m, 2));
    ASSERT_OK_AND_ASSIGN(testing::TrainResult got,
                         testing::TrainSteps(g, unfuse_map[fuse_map[loss]], m, 2));
    testing::ExpectSameTraining(want, got, 0.0);
  }
  Graph plain = BuildChain(OpKind::kRelu, ActivationFn::kRelu6).g;
  ASSERT_OK_AND_ASSIGN(bool changed, UnfuseActivations(plain));
  EXPECT_FALSE(changed);
}

TEST(FuseActivations, FusesAResidualAddAndReluInATrainingGraph) {
  // h = relu(linear(x, w1) + x); loss = sum(linear(h, w2)); both trained.
  // relu_grad reads relu's output, so the add's output has one reader.
  Graph g;
  const ValueId x = *g.AddInput("x", {DType::kF32, {4, 6}});
  const ValueId w1 = *g.AddParameter("l1.weight", {DType::kF32, {6, 6}});
  const ValueId w2 = *g.AddParameter("l2.weight", {DType::kF32, {3, 6}});
  const ValueId h1 = *g.AddNode(OpKind::kLinear, {x, w1});
  const ValueId sum = *g.AddNode(OpKind::kAdd, {h1, x});
  const ValueId h = *g.AddNode(OpKind::kRelu, {sum});
  const ValueId out = *g.AddNode(OpKind::kLinear, {h, w2});
  const ValueId loss = *g.AddNode(OpKind::kReduceMean, {out}, ReduceAttrs{{0, 1}});
  g.MarkOutput(loss);
  ASSERT_OK_AND_ASSIGN(autodiff::GradientMap grads, autodiff::BuildBackward(g, loss, {w1, w2}));
  ASSERT_OK(
      autodiff::AddOptimizerUpdates(g, grads, autodiff::OptimizerConfig::Sgd({0.1f, 0.9f, 0.0f})));
  testing::TestModel m;
  m.graph = g;
  ASSERT_OK(testing::InitializeParams(g, 9, &m.params));
  Graph fused = g;
  std::vector<ValueId> map;
  ASSERT_OK(FuseActivations(fused, &map).status());
  ASSERT_OK(VerifyGraph(fused));
  EXPECT_EQ(testing::CountOps(fused, OpKind::kAddActivation), 1);
  EXPECT_EQ(map[sum], kNoValue);
  ASSERT_OK_AND_ASSIGN(testing::TrainResult want, testing::TrainSteps(g, loss, m, 3));
  ASSERT_OK_AND_ASSIGN(testing::TrainResult got, testing::TrainSteps(fused, map[loss], m, 3));
  testing::ExpectSameTraining(want, got, 0.0);
}

TEST(FuseActivations, FusesFoldedConvsAndResidualAddsOfResNet) {
  // Frozen statistics, only the last BatchNorm and fc trained: after BatchNorm
  // folding, conv + ReLU and the residual add + ReLU fuse.
  ASSERT_OK_AND_ASSIGN(testing::TestModel m, testing::SmallResNet(models::Mode::kEval, "last-k:2"));
  Graph g = m.graph;
  std::vector<ValueId> fold_map, fuse_map;
  ASSERT_OK(FoldBatchNorm(g, &fold_map).status());
  ASSERT_OK(FuseActivations(g, &fuse_map).status());
  ASSERT_OK(VerifyGraph(g));
  EXPECT_GE(testing::CountOps(g, OpKind::kConv2dActivation), 3);
  EXPECT_GE(testing::CountOps(g, OpKind::kAddActivation), 1);
}

TEST(FuseActivations, LeavesAProducerWithAnotherReader) {
  Chain c = BuildChain(OpKind::kActivation, ActivationFn::kSilu);
  Graph g = c.g;
  g.MarkOutput(c.conv);  // now someone reads the conv output
  int fused = 0;
  ASSERT_OK(FuseActivations(g, nullptr, &fused).status());
  EXPECT_EQ(fused, 1);  // only the linear
  EXPECT_EQ(testing::CountOps(g, OpKind::kConv2dActivation), 0);
}

TEST(FuseActivations, RespectsWhatActivationGradientsRead) {
  // MobileNetV2 with frozen statistics and trained BatchNorm affine weights:
  // batch_norm_weight_grad reads every conv output, and ReLU6's gradient reads
  // the activation's output, so frozen BN + ReLU6 fuses but conv + BN does not.
  ASSERT_OK_AND_ASSIGN(testing::TestModel m,
                       testing::SmallMobileNetV2(models::Mode::kEval, "full"));
  Graph g = m.graph;
  std::vector<ValueId> map;
  int fused = 0;
  ASSERT_OK(FuseActivations(g, &map, &fused).status());
  ASSERT_OK(VerifyGraph(g));
  EXPECT_GT(testing::CountOps(g, OpKind::kBatchNormInferenceActivation), 20);
  EXPECT_EQ(testing::CountOps(g, OpKind::kConv2dActivation), 0);
  ASSERT_OK_AND_ASSIGN(testing::TrainResult want, testing::TrainSteps(m.graph, m.model.loss, m, 3));
  ASSERT_OK_AND_ASSIGN(testing::TrainResult got, testing::TrainSteps(g, map[m.model.loss], m, 3));
  testing::ExpectSameTraining(want, got, 0.0);

  // BERT: GELU's gradient reads its input (the linear output), so the
  // trained feed-forward layers stay unfused; the pooler's tanh (whose
  // gradient reads the output) fuses.
  ASSERT_OK_AND_ASSIGN(testing::TestModel bert, testing::SmallBert("full"));
  Graph bg = bert.graph;
  ASSERT_OK(FuseActivations(bg, nullptr, &fused).status());
  ASSERT_OK(VerifyGraph(bg));
  for (const Node& node : bg.nodes()) {
    if (node.op != OpKind::kLinearActivation) continue;
    EXPECT_EQ(std::get<FusedActivationAttrs>(node.attrs).act, FusedActivationFn::kTanh);
  }
}

// x → linear → norm → act → linear → mean; `train`: both linears and the
// norm's affine weights trained with SGD (autodiff first, as the pipeline).
struct NormGraph {
  Graph g;
  ValueId norm, act, loss;
};

NormGraph BuildNormGraph(OpKind norm_op, OpKind act_op, ActivationFn fn, bool train) {
  NormGraph n;
  Graph& g = n.g;
  const ValueId x = *g.AddInput("x", {DType::kF32, {3, 4, 8}});
  const ValueId w1 = *g.AddParameter("l1.weight", {DType::kF32, {8, 8}});
  const ValueId gamma = *g.AddParameter("norm.weight", {DType::kF32, {8}});
  const ValueId beta = *g.AddParameter("norm.bias", {DType::kF32, {8}});
  const ValueId w2 = *g.AddParameter("l2.weight", {DType::kF32, {5, 8}});
  const ValueId h = *g.AddNode(OpKind::kLinear, {x, w1});
  std::vector<ValueId> norm_in = {h, gamma};
  if (norm_op == OpKind::kLayerNorm) norm_in.push_back(beta);
  n.norm = *g.AddNode(norm_op, norm_in, NormAttrs{1e-5f});
  const Attrs act_attrs = act_op == OpKind::kRelu ? Attrs{NoAttrs{}} : Attrs{ActivationAttrs{fn}};
  n.act = *g.AddNode(act_op, {n.norm}, act_attrs);
  const ValueId out = *g.AddNode(OpKind::kLinear, {n.act, w2});
  n.loss = *g.AddNode(OpKind::kReduceMean, {out}, ReduceAttrs{{0, 1, 2}});
  g.MarkOutput(n.loss);
  if (train) {
    std::vector<ValueId> trainable = {w1, gamma, w2};
    if (norm_op == OpKind::kLayerNorm) trainable.push_back(beta);
    absl::StatusOr<autodiff::GradientMap> grads = autodiff::BuildBackward(g, n.loss, trainable);
    EXPECT_OK(grads.status());
    EXPECT_OK(autodiff::AddOptimizerUpdates(g, *grads,
                                            autodiff::OptimizerConfig::Sgd({0.1f, 0.9f, 0.0f})));
  }
  return n;
}

// The norms' gradients read their input, not their output, and ReLU's (like
// ReLU6's, sigmoid's, tanh's) reads the activation's output: the norm's value
// has one reader even in a trained layer, so norm + ReLU fuses, and training
// is bit for bit the same.
TEST(FuseActivations, FusesTrainedNormsWithActivationsWhoseGradientReadsTheOutput) {
  const std::pair<OpKind, ActivationFn> acts[] = {{OpKind::kRelu, ActivationFn::kRelu6},
                                                  {OpKind::kActivation, ActivationFn::kRelu6},
                                                  {OpKind::kActivation, ActivationFn::kTanh}};
  for (OpKind norm_op : {OpKind::kLayerNorm, OpKind::kRmsNorm}) {
    const OpKind fused_op =
        norm_op == OpKind::kLayerNorm ? OpKind::kLayerNormActivation : OpKind::kRmsNormActivation;
    for (const auto& [op, fn] : acts) {
      NormGraph n = BuildNormGraph(norm_op, op, fn, /*train=*/true);
      Graph g = n.g;
      std::vector<ValueId> map;
      int fused = 0;
      ASSERT_OK(FuseActivations(g, &map, &fused).status());
      ASSERT_OK(VerifyGraph(g));
      EXPECT_EQ(testing::CountOps(g, fused_op), 1);
      EXPECT_EQ(map[n.norm], kNoValue);
      const Node& node = g.node(map[n.act]);
      ASSERT_EQ(node.op, fused_op);
      const FusedActivationFn want_act =
          op == OpKind::kRelu ? FusedActivationFn::kRelu
                              : static_cast<FusedActivationFn>(static_cast<int>(fn) + 1);
      EXPECT_EQ(std::get<FusedNormAttrs>(node.attrs), (FusedNormAttrs{NormAttrs{1e-5f}, want_act}));
      testing::TestModel m;
      m.graph = n.g;
      ASSERT_OK(testing::InitializeParams(n.g, 5, &m.params));
      ASSERT_OK_AND_ASSIGN(testing::TrainResult want, testing::TrainSteps(n.g, n.loss, m, 3));
      ASSERT_OK_AND_ASSIGN(testing::TrainResult got, testing::TrainSteps(g, map[n.loss], m, 3));
      testing::ExpectSameTraining(want, got, 0.0);
      // Unfused again, it is the original graph.
      std::vector<ValueId> back;
      ASSERT_OK(UnfuseActivations(g, &back).status());
      ASSERT_OK(VerifyGraph(g));
      ASSERT_EQ(g.num_nodes(), n.g.num_nodes());
      for (ValueId id = 0; id < g.num_nodes(); ++id) {
        EXPECT_EQ(g.node(id).op, n.g.node(id).op);
        EXPECT_EQ(g.node(id).attrs, n.g.node(id).attrs);
      }
    }
  }
}

// GELU's and SiLU's gradients read their input, the norm's output: fused only
// where no gradient flows (a forward graph), never in a trained layer.
TEST(FuseActivations, FusesNormAndGeluOnlyWhereNoGradientReadsTheNorm) {
  for (OpKind norm_op : {OpKind::kLayerNorm, OpKind::kRmsNorm}) {
    for (ActivationFn fn : {ActivationFn::kGeluErf, ActivationFn::kSilu}) {
      NormGraph trained = BuildNormGraph(norm_op, OpKind::kActivation, fn, /*train=*/true);
      int fused = -1;
      ASSERT_OK(FuseActivations(trained.g, nullptr, &fused).status());
      EXPECT_EQ(fused, 0);
      NormGraph forward = BuildNormGraph(norm_op, OpKind::kActivation, fn, /*train=*/false);
      Graph g = forward.g;
      std::vector<ValueId> map;
      ASSERT_OK(FuseActivations(g, &map, &fused).status());
      ASSERT_OK(VerifyGraph(g));
      EXPECT_EQ(fused, 1);
      EXPECT_EQ(testing::CountOps(g, OpKind::kLayerNormActivation) +
                    testing::CountOps(g, OpKind::kRmsNormActivation),
                1);
      testing::TestModel m;
      m.graph = forward.g;
      ASSERT_OK(testing::InitializeParams(forward.g, 5, &m.params));
      ASSERT_OK_AND_ASSIGN(testing::TrainResult want,
                           testing::TrainSteps(forward.g, forward.loss, m, 1));
      ASSERT_OK_AND_ASSIGN(testing::TrainResult got,
                           testing::TrainSteps(g, map[forward.loss], m, 1));
      testing::ExpectSameTraining(want, got, 0.0);
    }
  }
}

}  // namespace
}  // namespace fleettune::engine::passes
