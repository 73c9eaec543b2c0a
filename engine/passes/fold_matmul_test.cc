#include "engine/passes/fold_matmul.h"

#include <random>

#include "engine/base/status_matchers.h"
#include "engine/ir/verifier.h"
#include "engine/passes/fuse.h"
#include "engine/passes/test_util.h"
#include "engine/runtime/executable.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::passes {
namespace {

int HeadSwaps(const Graph& g) {
  int n = 0;
  for (const Node& node : g.nodes()) {
    if (node.op == OpKind::kTranspose &&
        std::get<PermuteAttrs>(node.attrs).perm == std::vector<int>{0, 2, 1, 3}) {
      ++n;
    }
  }
  return n;
}

// The folded graph trains to the same bits as the original with either
// kernel set (the fast kernels within `fast_tolerance`, where folding splits
// GEMMs), in no more memory.
void ExpectFoldedTrainsTheSame(const testing::TestModel& m, int min_folds,
                               double fast_tolerance = 0.0) {
  Graph g = m.graph;
  std::vector<ValueId> map;
  int folded = 0;
  ASSERT_OK_AND_ASSIGN(bool changed, FoldIntoMatMuls(g, &map, &folded));
  ASSERT_OK(VerifyGraph(g));
  EXPECT_TRUE(changed);
  EXPECT_GE(folded, min_folds);
  EXPECT_EQ(g.num_nodes(), m.graph.num_nodes() - folded);
  for (bool reference : {false, true}) {
    SCOPED_TRACE(reference ? "reference kernels" : "fast kernels");
    runtime::CompileOptions options;
    options.use_reference_kernels = reference;
    ASSERT_OK_AND_ASSIGN(testing::TrainResult want,
                         testing::TrainSteps(m.graph, m.model.loss, m, 3, options));
    ASSERT_OK_AND_ASSIGN(testing::TrainResult got,
                         testing::TrainSteps(g, map[m.model.loss], m, 3, options));
    testing::ExpectSameTraining(want, got, reference ? 0.0 : fast_tolerance);
    EXPECT_LE(got.memory.arena_bytes, want.memory.arena_bytes);
  }
}

TEST(FoldIntoMatMuls, BertsHeadTransposesAndScalesBecomeMatMulLayouts) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m, testing::SmallBert("full"));
  // Per layer: q, k, v split and the context merge forward; their inverses
  // backward; the scale of q and of its gradient.
  const int transposes = HeadSwaps(m.graph);
  const int scales = testing::CountOps(m.graph, OpKind::kScale);
  EXPECT_EQ(transposes, 2 * 8);
  EXPECT_EQ(scales, 2 * 2);
  ExpectFoldedTrainsTheSame(m, transposes + scales);
  Graph g = m.graph;
  ASSERT_OK(FoldIntoMatMuls(g).status());
  EXPECT_EQ(HeadSwaps(g), 0);
  EXPECT_EQ(testing::CountOps(g, OpKind::kScale), 0);
}

// Transposes between [B, T, Hkv, G, D] and [B, Hkv, G, T, D], either way.
int GroupedHeadTransposes(const Graph& g) {
  int n = 0;
  for (const Node& node : g.nodes()) {
    if (node.op != OpKind::kTranspose) continue;
    const std::vector<int>& perm = std::get<PermuteAttrs>(node.attrs).perm;
    n += perm == std::vector<int>{0, 2, 3, 1, 4} || perm == std::vector<int>{0, 3, 1, 2, 4};
  }
  return n;
}

TEST(FoldIntoMatMuls, GroupedQueryAttentionFoldsOverTwoHeadDims) {
  // Llama's heads stay in each token's row, [B, T, Hkv, G, D], through rope;
  // the attention's matmuls take them as [B, Hkv, G, T, D].
  ASSERT_OK_AND_ASSIGN(testing::TestModel m, testing::SmallLlama("full"));
  const int layers = 2;
  const int transposes = GroupedHeadTransposes(m.graph);
  const int scales = testing::CountOps(m.graph, OpKind::kScale);
  // Per layer: q, k, v split and the context merge forward, their inverses
  // backward; the scale of q and of its gradient.
  EXPECT_EQ(transposes, layers * 8);
  EXPECT_EQ(scales, layers * 2);
  // The key and value gradients are summed over their query heads
  // (reduce_sum) before their transposes, which therefore stay.
  const int stay = layers * 2;
  // oneDNN sums the split GEMMs in another order; three AdamW steps (m/√v)
  // carry that to 2e-5 relative on some weights.
  ExpectFoldedTrainsTheSame(m, transposes - stay + scales, /*fast_tolerance=*/5e-5);
  Graph g = m.graph;
  ASSERT_OK(FoldIntoMatMuls(g).status());
  EXPECT_EQ(GroupedHeadTransposes(g), stay);
  EXPECT_EQ(testing::CountOps(g, OpKind::kScale), 0);
}

// x [2, 4, 3, 8] (tokens, heads, dims) taken as heads: y = (x' · x'ᵀ) · s,
// with the scale s applied to the product and a transpose back.
Graph Attention(float scale, bool extra_reader) {
  Graph g;
  const ValueId x = *g.AddInput("x", {DType::kF32, {2, 4, 3, 8}});
  const ValueId heads = *g.AddNode(OpKind::kTranspose, {x}, PermuteAttrs{{0, 2, 1, 3}});
  const ValueId scaled = *g.AddNode(OpKind::kScale, {heads}, ScalarAttrs{scale});
  const ValueId scores = *g.AddNode(OpKind::kMatMul, {scaled, heads}, MatMulAttrs{false, true});
  const ValueId out = *g.AddNode(OpKind::kMatMul, {scores, heads}, MatMulAttrs{});
  const ValueId merged = *g.AddNode(OpKind::kTranspose, {out}, PermuteAttrs{{0, 2, 1, 3}});
  g.MarkOutput(merged);
  if (extra_reader) g.MarkOutput(*g.AddNode(OpKind::kRelu, {heads}));
  return g;
}

std::vector<std::vector<float>> Outputs(const Graph& g) {
  runtime::ParameterStore params;
  auto exe = runtime::Executable::Compile(g, &params, {});
  EXPECT_TRUE(exe.ok()) << exe.status();
  if (!exe.ok()) return {};
  TensorView x = *(*exe)->Input("x");
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int64_t i = 0; i < x.num_elements(); ++i) x.f32()[i] = u(rng);
  EXPECT_OK((*exe)->Run());
  std::vector<std::vector<float>> out;
  for (ValueId id : g.outputs()) {
    TensorView v = *(*exe)->Output(id);
    out.emplace_back(v.f32(), v.f32() + v.num_elements());
  }
  return out;
}

TEST(FoldIntoMatMuls, FoldsPowersOfTwoOnlyAndComputesTheSameBits) {
  for (float scale : {0.25f, 0.3f}) {
    SCOPED_TRACE(scale);
    const Graph original = Attention(scale, false);
    Graph g = original;
    int folded = 0;
    ASSERT_OK_AND_ASSIGN(bool changed, FoldIntoMatMuls(g, nullptr, &folded));
    ASSERT_OK(VerifyGraph(g));
    EXPECT_TRUE(changed);
    const bool power_of_two = scale == 0.25f;
    EXPECT_EQ(testing::CountOps(g, OpKind::kScale), power_of_two ? 0 : 1);
    // Without the scale folded, the split is read by the scale: it stays.
    EXPECT_EQ(HeadSwaps(g), power_of_two ? 0 : 1);
    EXPECT_EQ(folded, power_of_two ? 3 : 1);
    const std::vector<std::vector<float>> want = Outputs(original), got = Outputs(g);
    ASSERT_EQ(want.size(), 1u);
    EXPECT_EQ(want, got);
  }
}

TEST(FoldIntoMatMuls, UnfuseGivesBackPlainMatMulsThatComputeTheSame) {
  const Graph original = Attention(0.25f, false);
  Graph g = original;
  ASSERT_OK(FoldIntoMatMuls(g).status());
  ASSERT_OK_AND_ASSIGN(bool changed, UnfuseActivations(g));
  EXPECT_TRUE(changed);
  ASSERT_OK(VerifyGraph(g));
  for (const Node& node : g.nodes()) {
    if (node.op == OpKind::kMatMul) {
      EXPECT_FALSE(std::get<MatMulAttrs>(node.attrs).folded());
    }
  }
  EXPECT_EQ(HeadSwaps(g), 4);  // the split once per read operand, and the merge
  EXPECT_EQ(Outputs(original), Outputs(g));
}

TEST(FoldIntoMatMuls, KeepsATransposeAnotherOpReads) {
  Graph g = Attention(0.25f, /*extra_reader=*/true);
  ASSERT_OK(FoldIntoMatMuls(g).status());
  ASSERT_OK(VerifyGraph(g));
  EXPECT_EQ(HeadSwaps(g), 1);  // the split, read by the relu; the merge folded
  EXPECT_EQ(testing::CountOps(g, OpKind::kScale), 0);
}

}  // namespace
}  // namespace fleettune::engine::passes
