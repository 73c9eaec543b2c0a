// Constant folding in the runtime (CompileOptions::fold_constants): the
// prologue computes values of frozen parameters once, RefreshConstants()
// recomputes them, and the step loop still allocates nothing.
#include <atomic>
#include <cstdlib>
#include <new>

#include "engine/base/status_matchers.h"
#include "engine/models/mlp.h"
#include "engine/runtime/executable.h"
#include "engine/train/trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace {
std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_allocations{0};
}  // namespace

void* operator new(std::size_t size) {
  if (g_counting.load(std::memory_order_relaxed)) ++g_allocations;
  void* p = std::malloc(size == 0 ? 1 : size);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace fleettune::engine::runtime {
namespace {

// y = linear(x, 3·(2·w)) + fill(1): the two scales and the fill are constant;
// the first scale is read only by the second (a prologue temporary).
struct Fixture {
  Graph g;
  ValueId y = kNoValue;
  ParameterStore params;
};

void Build(Fixture* f) {
  Graph& g = f->g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {2, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId w, g.AddParameter("w", {DType::kF32, {4, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId w2, g.AddNode(OpKind::kScale, {w}, ScalarAttrs{2.0f}));
  ASSERT_OK_AND_ASSIGN(ValueId w6, g.AddNode(OpKind::kScale, {w2}, ScalarAttrs{3.0f}));
  ASSERT_OK_AND_ASSIGN(ValueId one, g.AddNode(OpKind::kFill, {}, FillAttrs{1.0f, {2, 4}}));
  ASSERT_OK_AND_ASSIGN(ValueId lin, g.AddNode(OpKind::kLinear, {x, w6}));
  ASSERT_OK_AND_ASSIGN(f->y, g.AddNode(OpKind::kAdd, {lin, one}));
  g.MarkOutput(f->y);
  ASSERT_OK_AND_ASSIGN(Tensor wt, Tensor::FromF32({4, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));
  ASSERT_OK(f->params.Set("w", wt));
}

std::vector<float> RunOnce(Executable& exe, ValueId y) {
  TensorView x = *exe.Input("x");
  for (int i = 0; i < 6; ++i) x.f32()[i] = 0.5f * i - 1.0f;
  EXPECT_OK(exe.Run());
  TensorView out = *exe.Output(y);
  return std::vector<float>(out.f32(), out.f32() + out.num_elements());
}

TEST(ConstantFolding, ComputesFrozenValuesOnceWithTheSameResults) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(Build(&f));
  ASSERT_OK_AND_ASSIGN(auto plain, Executable::Compile(f.g, &f.params));
  CompileOptions fold;
  fold.fold_constants = true;
  ASSERT_OK_AND_ASSIGN(auto folded, Executable::Compile(f.g, &f.params, fold));
  EXPECT_EQ(plain->memory().constant_nodes, 0);
  EXPECT_EQ(folded->memory().constant_nodes, 3);  // both scales and the fill
  // Persistent: 3·(2·w) and the fill (each rounded to 64 bytes); 2·w is a
  // prologue temporary.
  EXPECT_EQ(folded->memory().constant_bytes, 64u + 64u);
  EXPECT_LT(folded->memory().arena_bytes, plain->memory().arena_bytes);
  EXPECT_EQ(RunOnce(*plain, f.y), RunOnce(*folded, f.y));
}

TEST(ConstantFolding, RefreshConstantsPicksUpNewWeights) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(Build(&f));
  CompileOptions fold;
  fold.fold_constants = true;
  ASSERT_OK_AND_ASSIGN(auto folded, Executable::Compile(f.g, &f.params, fold));
  const std::vector<float> before = RunOnce(*folded, f.y);
  ASSERT_OK(f.params.Set("w", Tensor::Zeros(DType::kF32, {4, 3})));
  // Documented: the prologue ran at Compile(), so the step still sees the old
  // weights until RefreshConstants().
  EXPECT_EQ(RunOnce(*folded, f.y), before);
  ASSERT_OK(folded->RefreshConstants());
  EXPECT_EQ(RunOnce(*folded, f.y), std::vector<float>(8, 1.0f));
  ASSERT_OK_AND_ASSIGN(auto plain, Executable::Compile(f.g, &f.params));
  EXPECT_EQ(RunOnce(*plain, f.y), std::vector<float>(8, 1.0f));
}

TEST(ConstantFolding, TrainedWeightsAreNotConstant) {
  models::MlpConfig config{{6, 5, 3}, 4};
  ASSERT_OK_AND_ASSIGN(models::Model model, models::BuildMlp(config));
  ASSERT_OK_AND_ASSIGN(
      Graph graph, train::BuildTrainingGraph(model, {"fc2.weight", "fc2.bias"},
                                             autodiff::OptimizerConfig::Sgd({0.1f, 0.9f, 0.0f})));
  const std::vector<bool> constant = FindConstants(graph);
  EXPECT_TRUE(constant[*graph.FindByName("fc1.weight")]);
  EXPECT_FALSE(constant[*graph.FindByName("fc2.weight")]);
  EXPECT_FALSE(constant[*graph.FindByName("fc2.weight.momentum_buffer")]);
  EXPECT_FALSE(constant[*graph.FindByName("x")]);
}

TEST(ConstantFolding, StepLoopDoesNotAllocate) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(Build(&f));
  CompileOptions fold;
  fold.fold_constants = true;
  ASSERT_OK_AND_ASSIGN(auto exe, Executable::Compile(f.g, &f.params, fold));
  ASSERT_OK(exe->Run());
  g_allocations = 0;
  g_counting = true;
  absl::Status status;
  for (int i = 0; i < 5 && status.ok(); ++i) status = exe->Run();
  g_counting = false;
  ASSERT_OK(status);
  EXPECT_EQ(g_allocations.load(), 0);
}

}  // namespace
}  // namespace fleettune::engine::runtime
