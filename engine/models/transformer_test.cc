#include "engine/models/transformer.h"

#include <random>
#include <string>
#include <vector>

#include "engine/base/status_matchers.h"
#include "engine/ir/verifier.h"
#include "engine/runtime/executable.h"
#include "engine/testing/gradcheck.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::models {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

DecoderLayerConfig SmallConfig() {
  DecoderLayerConfig config;
  config.hidden = 8;
  config.heads = 4;
  config.kv_heads = 2;
  config.intermediate = 12;
  return config;
}

TEST(DecoderLayer, WeightsHaveHuggingFaceNamesAndShapes) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("h", {DType::kF32, {2, 3, 8}}));
  ASSERT_OK_AND_ASSIGN(ValueId pos, g.AddInput("positions", {DType::kI32, {3}}));
  ASSERT_OK_AND_ASSIGN(ValueId y,
                       AddLlamaDecoderLayer(g, "model.layers.3.", SmallConfig(), x, pos));
  EXPECT_EQ(g.type(y), g.type(x));
  ASSERT_OK(VerifyGraph(g));
  const std::vector<std::pair<std::string, Shape>> want = {
      {"model.layers.3.input_layernorm.weight", {8}},
      {"model.layers.3.self_attn.q_proj.weight", {8, 8}},
      {"model.layers.3.self_attn.k_proj.weight", {4, 8}},  // 2 kv heads of dim 2
      {"model.layers.3.self_attn.v_proj.weight", {4, 8}},
      {"model.layers.3.self_attn.o_proj.weight", {8, 8}},
      {"model.layers.3.post_attention_layernorm.weight", {8}},
      {"model.layers.3.mlp.gate_proj.weight", {12, 8}},
      {"model.layers.3.mlp.up_proj.weight", {12, 8}},
      {"model.layers.3.mlp.down_proj.weight", {8, 12}},
  };
  std::vector<std::pair<std::string, Shape>> got;
  for (const Node& node : g.nodes()) {
    if (node.op == OpKind::kParameter) got.emplace_back(node.name, node.type.shape);
  }
  EXPECT_EQ(got, want);
}

TEST(DecoderLayer, RejectsABadConfig) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("h", {DType::kF32, {2, 3, 8}}));
  ASSERT_OK_AND_ASSIGN(ValueId pos, g.AddInput("positions", {DType::kI32, {3}}));
  DecoderLayerConfig config = SmallConfig();
  config.kv_heads = 3;
  EXPECT_THAT(AddLlamaDecoderLayer(g, "", config, x, pos),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("kv_heads=3")));
  config = SmallConfig();
  config.hidden = 16;
  EXPECT_THAT(AddLlamaDecoderLayer(g, "", config, x, pos),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("does not end in hidden=16")));
}

// Grouped-query attention (4 query heads over 2 kv heads, k and v broadcast
// by the batched matmul) equals multi-head attention with k and v copied to
// every query head of their group, as HF's repeat_kv does.
TEST(Attention, GroupedQueryEqualsMultiHeadWithRepeatedKeysAndValues) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId q, g.AddInput("q", {DType::kF32, {2, 4, 3, 2}}));
  ASSERT_OK_AND_ASSIGN(ValueId k, g.AddInput("k", {DType::kF32, {2, 2, 3, 2}}));
  ASSERT_OK_AND_ASSIGN(ValueId v, g.AddInput("v", {DType::kF32, {2, 2, 3, 2}}));
  ASSERT_OK_AND_ASSIGN(ValueId gqa, ScaledDotProductAttention(g, q, k, v, /*causal=*/true));
  std::vector<ValueId> repeated;
  for (ValueId t : {k, v}) {
    ASSERT_OK_AND_ASSIGN(ValueId r, g.AddNode(OpKind::kReshape, {t}, ShapeAttrs{{2, 2, 1, 3, 2}}));
    ASSERT_OK_AND_ASSIGN(r, g.AddNode(OpKind::kBroadcastTo, {r}, ShapeAttrs{{2, 2, 2, 3, 2}}));
    ASSERT_OK_AND_ASSIGN(r, g.AddNode(OpKind::kReshape, {r}, ShapeAttrs{{2, 4, 3, 2}}));
    repeated.push_back(r);
  }
  ASSERT_OK_AND_ASSIGN(ValueId mha,
                       ScaledDotProductAttention(g, q, repeated[0], repeated[1], true));
  g.MarkOutput(gqa);
  g.MarkOutput(mha);
  runtime::ParameterStore params;
  ASSERT_OK_AND_ASSIGN(auto exe, runtime::Executable::Compile(g, &params));
  std::mt19937_64 rng(7);
  for (const char* name : {"q", "k", "v"}) {
    ASSERT_OK(exe->SetInput(name, testing::RandomTensor(g.type(*g.FindByName(name)), rng)));
  }
  ASSERT_OK(exe->Run());
  ASSERT_OK_AND_ASSIGN(TensorView a, exe->Output(gqa));
  ASSERT_OK_AND_ASSIGN(TensorView b, exe->Output(mha));
  ASSERT_EQ(*a.shape, *b.shape);
  for (int64_t i = 0; i < a.num_elements(); ++i) EXPECT_NEAR(a.f32()[i], b.f32()[i], 1e-6f) << i;
}

TEST(Attention, RejectsHeadsThatDoNotGroup) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId q, g.AddInput("q", {DType::kF32, {1, 3, 4, 2}}));
  ASSERT_OK_AND_ASSIGN(ValueId k, g.AddInput("k", {DType::kF32, {1, 2, 4, 2}}));
  EXPECT_THAT(ScaledDotProductAttention(g, q, k, k, false),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("3 query heads are not a multiple of 2 key/value heads")));
  ASSERT_OK_AND_ASSIGN(ValueId k3, g.AddInput("k3", {DType::kF32, {1, 2, 4}}));
  EXPECT_THAT(ScaledDotProductAttention(g, q, k3, k3, false),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("k must have rank 4")));
}

TEST(Split, SlicesConsecutivePiecesAndChecksTheSizes) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {2, 7}}));
  ASSERT_OK_AND_ASSIGN(std::vector<ValueId> pieces, Split(g, x, 1, {3, 0, 4}));
  ASSERT_EQ(pieces.size(), 3u);
  EXPECT_EQ(g.type(pieces[0]).shape, (Shape{2, 3}));
  EXPECT_EQ(g.type(pieces[1]).shape, (Shape{2, 0}));
  EXPECT_EQ(g.type(pieces[2]).shape, (Shape{2, 4}));
  EXPECT_EQ(std::get<SliceAttrs>(g.node(pieces[2]).attrs).begin, (std::vector<int64_t>{0, 3}));
  EXPECT_THAT(Split(g, x, 1, {3, 3}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("sizes sum to 6")));
  EXPECT_THAT(Split(g, x, 2, {7}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("axis 2 out of range")));
}

TEST(SequenceCrossEntropy, RejectsTargetsOfTheWrongShape) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId logits, g.AddInput("logits", {DType::kF32, {2, 3, 5}}));
  ASSERT_OK_AND_ASSIGN(ValueId targets, g.AddInput("targets", {DType::kI32, {6}}));
  EXPECT_THAT(SequenceCrossEntropy(g, logits, targets),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("targets must be i32[2, 3] for logits f32[2, 3, 5], got i32[6]")));
}

}  // namespace
}  // namespace fleettune::engine::models
