#include "engine/compile/activation_cache.h"

#include <cstring>
#include <string>
#include <vector>

#include "engine/base/status_matchers.h"
#include "engine/compile/cost.h"
#include "engine/models/zoo.h"
#include "engine/runtime/executable.h"
#include "engine/train/trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::compile {
namespace {

using ::fleettune::testing::StatusIs;

// Copies `src` into input `name` of `exe` (same type).
void CopyInput(runtime::Executable& exe, const std::string& name, const TensorView& src) {
  auto dst = exe.Input(name);
  ASSERT_OK(dst.status());
  ASSERT_EQ(*dst->shape, *src.shape) << name;
  std::memcpy(dst->data, src.data, src.num_elements() * DTypeSize(src.dtype));
}

struct Trained {
  std::vector<float> losses;
  runtime::ParameterStore params;
};

Graph TrainingGraph(const models::Model& model, const std::string& scheme) {
  auto trainable = train::SelectTrainable(model, scheme);
  EXPECT_OK(trainable.status());
  auto graph = train::BuildTrainingGraph(model, *trainable,
                                         autodiff::OptimizerConfig::Sgd({0.05f, 0.9f, 0.0f}));
  EXPECT_OK(graph.status());
  return *std::move(graph);
}

// Three steps of the whole training graph on the zoo's synthetic batch.
Trained RunWhole(const models::ZooEntry& zoo, const models::Model& model, const Graph& graph) {
  Trained t;
  EXPECT_OK(zoo.initialize(model, 0, &t.params));
  auto exe = runtime::Executable::Compile(graph, &t.params);
  EXPECT_OK(exe.status());
  EXPECT_OK(zoo.fill_batch(**exe, 0));
  for (int step = 0; step < 3; ++step) {
    EXPECT_OK((*exe)->Run());
    t.losses.push_back((*exe)->Output(model.loss)->f32()[0]);
  }
  return t;
}

// The same three steps with the prefix run once and its outputs cached.
Trained RunCached(const models::ZooEntry& zoo, const models::Model& model, const Graph& graph,
                  const PrefixCut& cut) {
  Trained t;
  EXPECT_OK(zoo.initialize(model, 0, &t.params));
  auto whole = runtime::Executable::Compile(graph, &t.params);  // only to draw the batch
  EXPECT_OK(zoo.fill_batch(**whole, 0));
  auto prefix = runtime::Executable::Compile(cut.prefix, &t.params);
  auto suffix = runtime::Executable::Compile(cut.suffix, &t.params);
  EXPECT_OK(prefix.status());
  EXPECT_OK(suffix.status());
  for (const Node& n : cut.prefix.nodes()) {
    if (n.op == OpKind::kInput) CopyInput(**prefix, n.name, *(*whole)->Input(n.name));
  }
  for (const Node& n : cut.suffix.nodes()) {
    if (n.op == OpKind::kInput && n.name.rfind("cache/", 0) != 0) {
      CopyInput(**suffix, n.name, *(*whole)->Input(n.name));
    }
  }
  EXPECT_OK((*prefix)->Run());
  for (size_t i = 0; i < cut.frontier_inputs.size(); ++i) {
    auto value = (*prefix)->Output(cut.prefix.outputs()[i]);
    EXPECT_OK(value.status());
    CopyInput(**suffix, cut.frontier_inputs[i], *value);
  }
  for (int step = 0; step < 3; ++step) {
    EXPECT_OK((*suffix)->Run());
    ValueId loss = kNoValue;
    for (ValueId o : cut.suffix.outputs()) {
      if (cut.suffix.type(o).shape.empty()) loss = o;
    }
    t.losses.push_back((*suffix)->Output(loss)->f32()[0]);
  }
  return t;
}

void ExpectSameTraining(const Trained& a, const Trained& b) {
  EXPECT_EQ(a.losses, b.losses);
  for (const auto& [name, tensor] : a.params.tensors()) {
    const Tensor* other = b.params.Find(name);
    ASSERT_NE(other, nullptr) << name;
    for (int64_t i = 0; i < tensor.num_elements(); ++i) {
      ASSERT_EQ(tensor.f32()[i], other->f32()[i]) << name << "[" << i << "]";
    }
  }
}

TEST(CutFrozenPrefix, MlpLastLayerCachesTheFrozenLayersAndTrainsIdentically) {
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* zoo, models::FindZooModel("mlp"));
  ASSERT_OK_AND_ASSIGN(models::Model model, zoo->build(8, models::Mode::kTrain));
  const Graph graph = TrainingGraph(model, "last-k:1");
  ASSERT_OK_AND_ASSIGN(std::optional<PrefixCut> cut, CutFrozenPrefix(graph, model.input));
  ASSERT_TRUE(cut.has_value());
  // fc1, relu, fc2, relu: the boundary is the second ReLU's output, 128 floats.
  ASSERT_EQ(cut->frontier.size(), 1u);
  EXPECT_EQ(cut->bytes_per_example, 128u * 4);
  EXPECT_EQ(cut->prefix_nodes, 4);
  EXPECT_GT(cut->prefix_flops, StepFlops(graph) / 2);  // the big layers are frozen
  ExpectSameTraining(RunWhole(*zoo, model, graph), RunCached(*zoo, model, graph, *cut));
}

TEST(CutFrozenPrefix, FrozenStatisticsCnnCachesThroughBatchNorm) {
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* zoo, models::FindZooModel("cnn"));
  ASSERT_OK_AND_ASSIGN(models::Model eval, zoo->build(4, models::Mode::kEval));
  const Graph graph = TrainingGraph(eval, "last-k:1");
  ASSERT_OK_AND_ASSIGN(std::optional<PrefixCut> cut, CutFrozenPrefix(graph, eval.input));
  ASSERT_TRUE(cut.has_value());
  EXPECT_GE(cut->prefix_nodes, 9);  // three conv + BN + ReLU blocks
  ExpectSameTraining(RunWhole(*zoo, eval, graph), RunCached(*zoo, eval, graph, *cut));

  // Training-mode BatchNorm mixes the examples of a batch: the prefix stops
  // at the first convolution.
  ASSERT_OK_AND_ASSIGN(models::Model train, zoo->build(4, models::Mode::kTrain));
  const Graph train_graph = TrainingGraph(train, "last-k:1");
  ASSERT_OK_AND_ASSIGN(std::optional<PrefixCut> short_cut,
                       CutFrozenPrefix(train_graph, train.input));
  ASSERT_TRUE(short_cut.has_value());
  EXPECT_EQ(short_cut->prefix_nodes, 1);
}

// The token positions are an input, the same for every example: read as a
// shared input, they let the prefix run through rope, so a Llama-style
// decoder whose first layers are frozen caches them whole.
TEST(CutFrozenPrefix, DecoderCachesItsFrozenLayersThroughRope) {
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* zoo, models::FindZooModel("llama_mini"));
  ASSERT_OK_AND_ASSIGN(models::Model model, zoo->build(2, models::Mode::kEval));
  const Graph graph = TrainingGraph(model, "sparse");
  ASSERT_EQ(model.shared_inputs.size(), 1u);
  const ValueId positions = *graph.FindByName(model.shared_inputs[0]);
  ASSERT_OK_AND_ASSIGN(std::optional<PrefixCut> without, CutFrozenPrefix(graph, model.input));
  ASSERT_OK_AND_ASSIGN(std::optional<PrefixCut> cut,
                       CutFrozenPrefix(graph, model.input, {positions}));
  ASSERT_TRUE(without.has_value() && cut.has_value());
  // Without the positions the prefix stops at the first layer's rope (1% of
  // the step's FLOPs); with them it is the embedding and layers 0 and 1 (the
  // vocabulary head is most of the rest).
  EXPECT_LT(without->prefix_flops * 50, StepFlops(graph));
  EXPECT_GT(cut->prefix_flops * 10, StepFlops(graph));
  int ropes = 0;
  for (const Node& node : cut->prefix.nodes()) ropes += node.op == OpKind::kRope;
  EXPECT_EQ(ropes, 4);  // q and k of the two frozen layers
  // The boundary includes the residual stream entering layer 2: one
  // [T, dim] row per example.
  bool residual = false;
  for (ValueId f : cut->frontier) residual |= graph.node(f).name == "model.layers.1.mlp_residual";
  EXPECT_TRUE(residual);
  EXPECT_GE(cut->bytes_per_example, 128u * 256 * 4);
  ExpectSameTraining(RunWhole(*zoo, model, graph), RunCached(*zoo, model, graph, *cut));
}

TEST(CutFrozenPrefix, RejectsASharedInputThatIsNotAnInput) {
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* zoo, models::FindZooModel("mlp"));
  ASSERT_OK_AND_ASSIGN(models::Model model, zoo->build(8, models::Mode::kTrain));
  const Graph graph = TrainingGraph(model, "last-k:1");
  EXPECT_THAT(CutFrozenPrefix(graph, model.input, {model.loss}),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("shared input")));
  EXPECT_THAT(CutFrozenPrefix(graph, model.input, {model.input}),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("shared input")));
}

TEST(CutFrozenPrefix, NothingToCacheWhenTheFirstLayerTrains) {
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* zoo, models::FindZooModel("mlp"));
  ASSERT_OK_AND_ASSIGN(models::Model model, zoo->build(8, models::Mode::kTrain));
  for (const char* scheme : {"full", "bias-only"}) {
    ASSERT_OK_AND_ASSIGN(std::optional<PrefixCut> cut,
                         CutFrozenPrefix(TrainingGraph(model, scheme), model.input));
    EXPECT_FALSE(cut.has_value()) << scheme;
  }
}

TEST(CutFrozenPrefix, RejectsAValueThatIsNotAnInput) {
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* zoo, models::FindZooModel("mlp"));
  ASSERT_OK_AND_ASSIGN(models::Model model, zoo->build(8, models::Mode::kTrain));
  EXPECT_THAT(CutFrozenPrefix(model.graph, model.loss).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(CutFrozenPrefix(model.graph, 12345).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fleettune::engine::compile
