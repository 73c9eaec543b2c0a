#include "engine/passes/fuse_elementwise.h"

#include "engine/base/status_matchers.h"
#include "engine/ir/verifier.h"
#include "engine/models/zoo.h"
#include "engine/passes/fuse.h"
#include "engine/passes/pipeline.h"
#include "engine/passes/test_util.h"
#include "engine/train/trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::passes {
namespace {

constexpr int32_t kPrev = ElementwiseStep::kPrevious;

// Steps per chain node, in graph order.
std::vector<size_t> ChainLengths(const Graph& g) {
  std::vector<size_t> out;
  for (const Node& node : g.nodes()) {
    if (node.op == OpKind::kElementwiseChain) {
      out.push_back(std::get<ElementwiseChainAttrs>(node.attrs).steps.size());
    }
  }
  return out;
}

// Forward only: y = gelu(0.5 · (x0 + x1)) ⊙ x2 − x0, loss = Σ y.
struct Forward {
  Graph g;
  ValueId add, scale, act, mul, sub, loss;
};

Forward BuildForward() {
  Forward f;
  Graph& g = f.g;
  const TensorType t{DType::kF32, {5, 7}};
  const ValueId x0 = *g.AddParameter("x0", t);
  const ValueId x1 = *g.AddParameter("x1", t);
  const ValueId x2 = *g.AddParameter("x2", t);
  f.add = *g.AddNode(OpKind::kAdd, {x0, x1});
  f.scale = *g.AddNode(OpKind::kScale, {f.add}, ScalarAttrs{0.5f});
  f.act = *g.AddNode(OpKind::kActivation, {f.scale}, ActivationAttrs{ActivationFn::kGeluErf});
  f.mul = *g.AddNode(OpKind::kMul, {f.act, x2});
  f.sub = *g.AddNode(OpKind::kSub, {f.mul, x0});
  f.loss = *g.AddNode(OpKind::kReduceSum, {f.sub}, ReduceAttrs{{0, 1}});
  g.MarkOutput(f.sub);
  g.MarkOutput(f.loss);
  return f;
}

absl::StatusOr<testing::TrainResult> RunOnce(const Graph& g, ValueId loss, const Graph& params_of) {
  testing::TestModel m;
  m.graph = params_of;
  RETURN_IF_ERROR(testing::InitializeParams(params_of, 3, &m.params));
  return testing::TrainSteps(g, loss, m, 1);
}

TEST(FuseElementwiseChains, FusesARunOfSingleReaderOpsIntoOneProgram) {
  Forward f = BuildForward();
  Graph g = f.g;
  std::vector<ValueId> map;
  int chains = 0;
  ASSERT_OK_AND_ASSIGN(bool changed, FuseElementwiseChains(g, &map, &chains));
  ASSERT_OK(VerifyGraph(g));
  EXPECT_TRUE(changed);
  EXPECT_EQ(chains, 1);
  EXPECT_EQ(testing::CountOps(g, OpKind::kElementwiseChain), 1);
  for (ValueId id : {f.add, f.scale, f.act, f.mul}) EXPECT_EQ(map[id], kNoValue);
  const Node& chain = g.node(map[f.sub]);
  ASSERT_EQ(chain.op, OpKind::kElementwiseChain);
  // Inputs in order of first use: x0, x1, x2.
  EXPECT_EQ(chain.inputs, (std::vector<ValueId>{0, 1, 2}));
  const std::vector<ElementwiseStep> want = {
      {OpKind::kAdd, 0, 1},
      {OpKind::kScale, kPrev, kPrev, ActivationFn::kRelu6, 0.5f},
      {OpKind::kActivation, kPrev, kPrev, ActivationFn::kGeluErf},
      {OpKind::kMul, kPrev, 2},
      {OpKind::kSub, kPrev, 0},
  };
  EXPECT_EQ(std::get<ElementwiseChainAttrs>(chain.attrs).steps, want);
  // One instruction computes, bit for bit, what the five did.
  ASSERT_OK_AND_ASSIGN(testing::TrainResult before, RunOnce(f.g, f.loss, f.g));
  ASSERT_OK_AND_ASSIGN(testing::TrainResult after, RunOnce(g, map[f.loss], f.g));
  ASSERT_EQ(before.first.size(), after.first.size());
  for (size_t i = 0; i < before.first.size(); ++i) EXPECT_EQ(before.first[i], after.first[i]);
  EXPECT_EQ(before.losses, after.losses);
}

TEST(FuseElementwiseChains, AValueAnotherNodeReadsEndsTheChain) {
  Forward f = BuildForward();
  Graph g = f.g;
  g.MarkOutput(f.scale);                                     // now read outside the chain
  const ValueId extra = *g.AddNode(OpKind::kRelu, {f.mul});  // a second reader of mul
  g.MarkOutput(extra);
  std::vector<ValueId> map;
  ASSERT_OK(FuseElementwiseChains(g, &map).status());
  ASSERT_OK(VerifyGraph(g));
  // add → scale | act → mul | sub: two chains, mul and scale materialized.
  EXPECT_EQ(ChainLengths(g), (std::vector<size_t>{2, 2}));
  EXPECT_NE(map[f.scale], kNoValue);
  EXPECT_NE(map[f.mul], kNoValue);
  EXPECT_EQ(g.node(map[f.sub]).op, OpKind::kSub);  // alone: nothing to fuse
}

TEST(FuseElementwiseChains, LeavesBroadcastsAndSplitsLongRuns) {
  Graph g;
  const ValueId x = *g.AddParameter("x", {DType::kF32, {4, 6}});
  const ValueId bias = *g.AddParameter("bias", {DType::kF32, {6}});
  ValueId v = *g.AddNode(OpKind::kAdd, {x, bias});  // broadcast: not a step
  for (int i = 0; i < 10; ++i) v = *g.AddNode(OpKind::kScale, {v}, ScalarAttrs{1.0f + i});
  const ValueId loss = *g.AddNode(OpKind::kReduceSum, {v}, ReduceAttrs{{0, 1}});
  g.MarkOutput(loss);
  Graph fused = g;
  std::vector<ValueId> map;
  int chains = 0;
  ASSERT_OK(FuseElementwiseChains(fused, &map, &chains).status());
  ASSERT_OK(VerifyGraph(fused));
  EXPECT_EQ(chains, 2);
  EXPECT_EQ(ChainLengths(fused),
            (std::vector<size_t>{static_cast<size_t>(kMaxElementwiseChainSteps), 2}));
  EXPECT_EQ(testing::CountOps(fused, OpKind::kAdd), 1);
  ASSERT_OK_AND_ASSIGN(testing::TrainResult before, RunOnce(g, loss, g));
  ASSERT_OK_AND_ASSIGN(testing::TrainResult after, RunOnce(fused, map[loss], g));
  EXPECT_EQ(before.losses, after.losses);
}

TEST(FuseElementwiseChains, UnfuseGivesBackTheSteps) {
  Forward f = BuildForward();
  Graph g = f.g;
  std::vector<ValueId> fuse_map, unfuse_map;
  ASSERT_OK(FuseElementwiseChains(g, &fuse_map).status());
  ASSERT_OK_AND_ASSIGN(bool changed, UnfuseActivations(g, &unfuse_map));
  EXPECT_TRUE(changed);
  ASSERT_OK(VerifyGraph(g));
  EXPECT_EQ(testing::CountOps(g, OpKind::kElementwiseChain), 0);
  // Same ops, same order, same attributes as before fusion.
  ASSERT_EQ(g.num_nodes(), f.g.num_nodes());
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    EXPECT_EQ(g.node(id).op, f.g.node(id).op) << id;
    EXPECT_EQ(g.node(id).inputs, f.g.node(id).inputs) << id;
    EXPECT_EQ(g.node(id).attrs, f.g.node(id).attrs) << id;
  }
  EXPECT_EQ(unfuse_map[fuse_map[f.sub]], f.sub);
}

// In training graphs the backward's reads count: chains form where a value has
// one reader across forward and backward.
TEST(FuseElementwiseChains, TrainsSmallBertAndLlamaBitForBit) {
  for (const char* name : {"bert", "llama"}) {
    SCOPED_TRACE(name);
    ASSERT_OK_AND_ASSIGN(testing::TestModel m, std::string(name) == "bert"
                                                   ? testing::SmallBert("full")
                                                   : testing::SmallLlama("full"));
    Graph g = m.graph;
    std::vector<ValueId> map;
    int chains = 0;
    ASSERT_OK(FuseElementwiseChains(g, &map, &chains).status());
    ASSERT_OK(VerifyGraph(g));
    EXPECT_GT(chains, 0);
    ASSERT_OK_AND_ASSIGN(testing::TrainResult want,
                         testing::TrainSteps(m.graph, m.model.loss, m, 3));
    ASSERT_OK_AND_ASSIGN(testing::TrainResult got, testing::TrainSteps(g, map[m.model.loss], m, 3));
    testing::ExpectSameTraining(want, got, 0.0);
    // The dense baseline a device derives: unfused, the graph trains the same.
    Graph back = g;
    std::vector<ValueId> unfuse_map;
    ASSERT_OK(UnfuseActivations(back, &unfuse_map).status());
    EXPECT_EQ(testing::CountOps(back, OpKind::kElementwiseChain), 0);
    EXPECT_EQ(back.num_nodes(), m.graph.num_nodes());
    ASSERT_OK_AND_ASSIGN(testing::TrainResult again,
                         testing::TrainSteps(back, unfuse_map[map[m.model.loss]], m, 3));
    testing::ExpectSameTraining(want, again, 0.0);
  }
}

// The zoo's BERT-mini and Llama-mini under full fine-tuning, through the
// pipeline's fuse pass: which chains form, per layer.
struct ZooCounts {
  int chains = 0;
  int add_chains = 0;          // gradient accumulation: adds only
  int add_steps = 0;           // adds in those chains
  int swiglu_grad_chains = 0;  // mul → activation_grad
  int norm_activation = 0;     // layer_norm / rms_norm + activation
};

absl::StatusOr<ZooCounts> CountZoo(const std::string& name) {
  ASSIGN_OR_RETURN(const models::ZooEntry* zoo, models::FindZooModel(name));
  ASSIGN_OR_RETURN(models::Model model, zoo->build(1, models::Mode::kEval));
  ASSIGN_OR_RETURN(std::vector<std::string> trainable, train::SelectTrainable(model, "full"));
  ASSIGN_OR_RETURN(Graph g, train::BuildTrainingGraph(
                                model, trainable, autodiff::OptimizerConfig::Sgd({0.01f, 0.9f})));
  ASSIGN_OR_RETURN(PassOptions only_fuse, PassOptions::Parse("fuse"));
  only_fuse.measure_memory = false;
  ASSIGN_OR_RETURN(PassReport report, RunPasses(g, only_fuse));
  ZooCounts c;
  for (const Node& node : g.nodes()) {
    if (node.op == OpKind::kLayerNormActivation || node.op == OpKind::kRmsNormActivation) {
      ++c.norm_activation;
    }
    if (node.op != OpKind::kElementwiseChain) continue;
    ++c.chains;
    const auto& steps = std::get<ElementwiseChainAttrs>(node.attrs).steps;
    bool adds = true;
    for (const ElementwiseStep& s : steps) adds &= s.op == OpKind::kAdd;
    c.add_chains += adds;
    if (adds) c.add_steps += static_cast<int>(steps.size());
    c.swiglu_grad_chains += steps.size() == 2 && steps[0].op == OpKind::kMul &&
                            steps[1].op == OpKind::kActivationGrad &&
                            steps[1].fn == ActivationFn::kSilu;
  }
  return c;
}

TEST(FuseElementwiseChains, ZooTransformersUnderFullFineTuning) {
  // BERT-mini (4 layers): the backward's gradient sums (adds only). Norms
  // feed linears, not activations, so nothing fuses as norm + activation.
  // Per layer, the gradient of the attention block's input sums four terms
  // (through q, k, v and the residual): one chain of three adds.
  ASSERT_OK_AND_ASSIGN(ZooCounts bert, CountZoo("bert_mini"));
  EXPECT_EQ(bert.chains, 4);
  EXPECT_EQ(bert.add_chains, 4);
  EXPECT_EQ(bert.add_steps, 12);
  EXPECT_EQ(bert.norm_activation, 0);
  // Llama-mini (4 layers): per layer SwiGLU's backward, activation_grad(dy ⊙
  // up, gate), and the sum of the q, k, v gradients (two adds; the residual
  // stream's gradient has other readers).
  ASSERT_OK_AND_ASSIGN(ZooCounts llama, CountZoo("llama_mini"));
  EXPECT_EQ(llama.swiglu_grad_chains, 4);
  EXPECT_EQ(llama.add_chains, 4);
  EXPECT_EQ(llama.add_steps, 8);
  EXPECT_EQ(llama.chains, 8);
  EXPECT_EQ(llama.norm_activation, 0);
}

}  // namespace
}  // namespace fleettune::engine::passes
