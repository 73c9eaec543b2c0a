#include "engine/compile/compiler.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "engine/base/status_matchers.h"
#include "engine/compile/cost.h"
#include "engine/models/zoo.h"
#include "engine/plan/plan_io.h"
#include "engine/runtime/executable.h"
#include "engine/train/trainer.h"
#include "gtest/gtest.h"

namespace fleettune::engine::compile {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

CompileOptions Options(const models::Model& model, const std::string& scheme) {
  CompileOptions o;
  o.model_name = "test";
  o.scheme = *train::ResolvePreset(model, scheme);
  o.optimizer = autodiff::OptimizerConfig::Sgd({0.05f, 0.9f, 0.0f});
  o.device_class = "x86-avx2";
  o.threads = 1;
  return o;
}

TEST(Cost, GemmOpsAreCountedFromTheirShapes) {
  Graph g;
  ValueId x = *g.AddInput("x", {DType::kF32, {2, 3, 8, 8}});
  ValueId w = *g.AddParameter("w", {DType::kF32, {4, 3, 3, 3}});
  ValueId y = *g.AddNode(OpKind::kConv2d, {x, w}, Conv2dAttrs{1, 1, 1, 1, 1, 1, 1});
  // 2·(2·4·8·8 outputs)·(3·3·3 taps).
  EXPECT_EQ(NodeFlops(g, y), 2u * 512 * 27);
  ValueId flat = *g.AddNode(OpKind::kReshape, {y}, ShapeAttrs{{2, 256}});
  EXPECT_EQ(NodeFlops(g, flat), 0u);
  ValueId fw = *g.AddParameter("fw", {DType::kF32, {10, 256}});
  ValueId fb = *g.AddParameter("fb", {DType::kF32, {10}});
  ValueId logits = *g.AddNode(OpKind::kLinear, {flat, fw, fb});
  EXPECT_EQ(NodeFlops(g, logits), 20u * (2 * 256 + 1));
  ValueId r = *g.AddNode(OpKind::kRelu, {logits});
  EXPECT_EQ(NodeFlops(g, r), 20u);
  EXPECT_EQ(StepFlops(g), 2u * 512 * 27 + 20u * 513 + 20u);
}

// A plan written to a file and loaded back runs with exactly the arena and
// scratch the metadata promised, and gives the same losses as the graph the
// compiler built.
TEST(CompileTraining, PlanFromFileRunsAsCompiledAndMatchesTheMetadata) {
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* cnn, models::FindZooModel("cnn"));
  ASSERT_OK_AND_ASSIGN(models::Model model, cnn->build(4, models::Mode::kTrain));
  ASSERT_OK_AND_ASSIGN(CompiledTraining compiled, CompileTraining(model, Options(model, "full")));
  const v1::PlanMetadata& meta = compiled.plan.metadata();
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/cnn.plan";
  ASSERT_OK(plan::WritePlan(path, compiled.plan));
  ASSERT_OK_AND_ASSIGN(v1::CompiledPlan read, plan::ReadPlan(path));
  ASSERT_OK_AND_ASSIGN(Graph loaded, plan::GraphFromProto(read.graph()));
  CompileOptions no_passes = Options(model, "full");
  no_passes.passes = *passes::PassOptions::Parse("none");
  ASSERT_OK_AND_ASSIGN(CompiledTraining plain, CompileTraining(model, no_passes));
  const Graph& unoptimized = plain.graph;

  std::vector<float> losses[3];
  runtime::MemoryStats memory;
  for (int i = 0; i < 3; ++i) {
    runtime::ParameterStore params;
    ASSERT_OK(cnn->initialize(model, 0, &params));
    ASSERT_OK_AND_ASSIGN(auto exe, runtime::Executable::Compile(i == 0   ? compiled.graph
                                                                : i == 1 ? loaded
                                                                         : unoptimized,
                                                                &params, RuntimeOptionsFor(meta)));
    ASSERT_OK(cnn->fill_batch(*exe, 0));
    for (int step = 0; step < 3; ++step) {
      ASSERT_OK(exe->Run());
      ASSERT_OK_AND_ASSIGN(TensorView loss, exe->Output(i == 2 ? plain.loss : compiled.loss));
      losses[i].push_back(loss.f32()[0]);
    }
    if (i == 1) memory = exe->memory();  // the plan as loaded from the file
  }
  EXPECT_EQ(losses[0], losses[1]);
  // The passes change the schedule, not the arithmetic of this CNN (training-mode BatchNorm:
  // nothing folds) beyond float rounding.
  for (size_t s = 0; s < losses[0].size(); ++s) EXPECT_NEAR(losses[0][s], losses[2][s], 1e-5);
  EXPECT_LT(losses[0].back(), losses[0].front());
  EXPECT_EQ(memory.arena_bytes, meta.arena_bytes());
  EXPECT_EQ(memory.scratch_bytes, meta.scratch_bytes());
  EXPECT_EQ(memory.optimizer_state_bytes, meta.optimizer_state_bytes());
  EXPECT_EQ(memory.constant_bytes, meta.constant_bytes());
  EXPECT_GT(meta.flops_per_step(), 0u);
  EXPECT_GT(meta.backward_nodes(), 0);
  EXPECT_EQ(meta.update_nodes(), meta.trainable_parameters_size());
  // The classifier's weight gradient goes straight into its momentum buffer.
  EXPECT_GT(meta.fused_gradient_bytes(), 0u);
  EXPECT_EQ(meta.gradient_bytes() + meta.fused_gradient_bytes(), meta.trainable_elements() * 4);
  EXPECT_EQ(meta.activation_cache_nodes(), 0);  // full: the first layer trains
}

TEST(CompileTraining, ReportsTheActivationCacheOfAFrozenPrefix) {
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* mlp, models::FindZooModel("mlp"));
  ASSERT_OK_AND_ASSIGN(models::Model model, mlp->build(64, models::Mode::kTrain));
  ASSERT_OK_AND_ASSIGN(CompiledTraining compiled,
                       CompileTraining(model, Options(model, "last-k:1")));
  const v1::PlanMetadata& meta = compiled.plan.metadata();
  EXPECT_EQ(meta.activation_cache_bytes_per_example(), 128u * 4);
  EXPECT_EQ(meta.activation_cache_nodes(), 4);
  EXPECT_GT(meta.activation_cache_flops_saved(), meta.flops_per_step() / 2);
  EXPECT_THAT(FormatPlanSummary(meta), HasSubstr("activation cache 0.5 KiB per example"));
}

// Every pass alone, and all of them: the plan written to a file and loaded
// back trains like the unoptimized graph (losses and every parameter after 3
// steps). Frozen-statistics CNN with bias-only updates, so BatchNorm folding
// applies; folding reassociates float products, hence the tolerance.
TEST(CompileTraining, EveryPassThroughAPlanFileTrainsLikeTheUnoptimizedGraph) {
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* cnn, models::FindZooModel("cnn"));
  ASSERT_OK_AND_ASSIGN(models::Model model, cnn->build(4, models::Mode::kEval));
  auto train = [&](const std::string& spec, std::vector<float>* losses,
                   runtime::ParameterStore* params) {
    CompileOptions o = Options(model, "bias-only");
    ASSERT_OK_AND_ASSIGN(o.passes, passes::PassOptions::Parse(spec));
    ASSERT_OK_AND_ASSIGN(CompiledTraining compiled, CompileTraining(model, o));
    const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/" + spec + ".plan";
    ASSERT_OK(plan::WritePlan(path, compiled.plan));
    ASSERT_OK_AND_ASSIGN(v1::CompiledPlan read, plan::ReadPlan(path));
    ASSERT_OK_AND_ASSIGN(Graph graph, plan::GraphFromProto(read.graph()));
    ASSERT_OK(cnn->initialize(model, 0, params));
    ASSERT_OK_AND_ASSIGN(
        auto exe, runtime::Executable::Compile(graph, params, RuntimeOptionsFor(read.metadata())));
    ASSERT_OK(cnn->fill_batch(*exe, 0));
    for (int step = 0; step < 3; ++step) {
      ASSERT_OK(exe->Run());
      ASSERT_OK_AND_ASSIGN(TensorView loss, exe->Output(compiled.loss));
      losses->push_back(loss.f32()[0]);
    }
  };
  std::vector<float> want_losses;
  runtime::ParameterStore want;
  train("none", &want_losses, &want);
  for (const char* spec : {"fold_batch_norm", "fuse", "dce", "pack_masks", "fuse_updates",
                           "reorder_updates", "fold_constants", "in_place", "all"}) {
    SCOPED_TRACE(spec);
    std::vector<float> losses;
    runtime::ParameterStore got;
    train(spec, &losses, &got);
    ASSERT_EQ(losses.size(), want_losses.size());
    for (size_t i = 0; i < losses.size(); ++i) {
      EXPECT_NEAR(losses[i], want_losses[i], 2e-4 * std::abs(want_losses[i]));
    }
    for (const auto& [name, tensor] : want.tensors()) {
      const Tensor* other = got.Find(name);
      ASSERT_NE(other, nullptr) << name;
      double diff = 0, scale = 1e-12;
      for (int64_t i = 0; i < tensor.num_elements(); ++i) {
        diff = std::max(diff, std::abs(static_cast<double>(tensor.f32()[i]) - other->f32()[i]));
        scale = std::max(scale, std::abs(static_cast<double>(tensor.f32()[i])));
      }
      EXPECT_LT(diff / scale, 2e-4) << name;
    }
  }
}

TEST(CompileTraining, SparserSchemesCostLess) {
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* entry, models::FindZooModel("mobilenet_v2"));
  ASSERT_OK_AND_ASSIGN(models::Model model, entry->build(2, models::Mode::kEval));
  ASSERT_OK_AND_ASSIGN(CompiledTraining full, CompileTraining(model, Options(model, "full")));
  ASSERT_OK_AND_ASSIGN(CompiledTraining bias, CompileTraining(model, Options(model, "bias-only")));
  const v1::PlanMetadata &f = full.plan.metadata(), &b = bias.plan.metadata();
  EXPECT_LT(b.trainable_elements(), f.trainable_elements() / 50);
  EXPECT_LT(b.arena_bytes(), f.arena_bytes());
  EXPECT_LT(b.flops_per_step(), f.flops_per_step());
  EXPECT_LT(b.optimizer_state_bytes(), f.optimizer_state_bytes() / 50);
  const std::string summary = FormatPlanSummary(f);
  EXPECT_THAT(summary, HasSubstr("GFLOP"));
  EXPECT_THAT(summary, HasSubstr("conv2d/fast"));
}

// Partial channels: the pockengine preset trains some weights' first rows;
// gradients and optimizer state hold only those rows.
// Under bias-only updates every convolution is frozen, so MobileNetV2's ReLU6
// outputs are kept for their gradient's 0 < y < 6 test alone: the plan keeps
// them as bit masks (pack_masks), and the masks survive the plan format.
TEST(CompileTraining, FrozenRelu6OutputsShipAsBitMasks) {
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* entry, models::FindZooModel("mobilenet_v2"));
  ASSERT_OK_AND_ASSIGN(models::Model model, entry->build(2, models::Mode::kEval));
  ASSERT_OK_AND_ASSIGN(CompiledTraining compiled,
                       CompileTraining(model, Options(model, "bias-only")));
  const v1::PlanMetadata& meta = compiled.plan.metadata();
  const v1::PassResult* pack = nullptr;
  for (const v1::PassResult& p : meta.passes()) {
    if (p.name() == "pack_masks") pack = &p;
  }
  ASSERT_NE(pack, nullptr);
  EXPECT_GE(pack->rewrites(), 30);
  EXPECT_LT(pack->arena_bytes_after(), pack->arena_bytes_before() / 2);
  ASSERT_OK_AND_ASSIGN(Graph graph, plan::GraphFromProto(compiled.plan.graph()));
  // Rewrites: the masks, and the masked gradients folded into convolutions'
  // input gradients (which then take the mask as a third operand).
  int masks = 0, masked = 0, folded = 0;
  for (const Node& node : graph.nodes()) {
    masks += node.op == OpKind::kActivationMask;
    masked += node.op == OpKind::kMaskedGrad;
    folded += node.op == OpKind::kConv2dBackwardInput && node.inputs.size() == 3;
  }
  EXPECT_GT(folded, 0);
  EXPECT_EQ(masks + folded, pack->rewrites());
  EXPECT_GE(masked + folded, masks);
  EXPECT_THAT(FormatPlanSummary(meta), HasSubstr("pack_masks"));
}

TEST(CompileTraining, PartialChannelSchemesCountOnlyTheTrainedRows) {
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* entry, models::FindZooModel("mobilenet_v2"));
  ASSERT_OK_AND_ASSIGN(models::Model model, entry->build(2, models::Mode::kEval));
  CompileOptions o = Options(model, "pockengine");
  ASSERT_OK_AND_ASSIGN(CompiledTraining compiled, CompileTraining(model, o));
  const v1::PlanMetadata& meta = compiled.plan.metadata();
  EXPECT_EQ(static_cast<int64_t>(meta.trainable_elements()), o.scheme.TrainableElements());
  EXPECT_EQ(meta.gradient_bytes() + meta.fused_gradient_bytes(), meta.trainable_elements() * 4);
  EXPECT_EQ(meta.optimizer_state_bytes(), meta.trainable_elements() * 4);  // momentum
}

TEST(CompileTraining, RejectsBadRequestsNamingTheProblem) {
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* mlp, models::FindZooModel("mlp"));
  ASSERT_OK_AND_ASSIGN(models::Model model, mlp->build(4, models::Mode::kTrain));
  CompileOptions o = Options(model, "full");
  o.scheme.params.push_back({"fc9.weight", scheme::UpdateMode::kFull, 4, 4, 16});
  EXPECT_THAT(CompileTraining(model, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fc9.weight")));
  o = Options(model, "full");
  o.scheme.params.clear();
  EXPECT_THAT(CompileTraining(model, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("trains nothing")));
  o = Options(model, "full");
  o.threads = 0;
  EXPECT_THAT(CompileTraining(model, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("threads")));
}

}  // namespace
}  // namespace fleettune::engine::compile
