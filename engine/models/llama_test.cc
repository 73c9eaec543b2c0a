#include "engine/models/llama.h"

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "engine/base/status_matchers.h"
#include "engine/ir/verifier.h"
#include "engine/runtime/executable.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::models {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

LlamaConfig TinyConfig() {
  LlamaConfig c;
  c.vocab = 11;
  c.dim = 8;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = 2;
  c.ffn_dim = 12;
  c.seq_len = 5;
  c.batch = 3;
  return c;
}

// The parameters of HF's LlamaForCausalLM(LlamaConfig(vocab_size=11,
// hidden_size=8, num_hidden_layers=2, num_attention_heads=4,
// num_key_value_heads=2, intermediate_size=12)).state_dict(), in its order.
std::vector<std::pair<std::string, Shape>> HfStateDict() {
  std::vector<std::pair<std::string, Shape>> want = {{"model.embed_tokens.weight", {11, 8}}};
  for (int i = 0; i < 2; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    want.push_back({p + "self_attn.q_proj.weight", {8, 8}});
    want.push_back({p + "self_attn.k_proj.weight", {4, 8}});
    want.push_back({p + "self_attn.v_proj.weight", {4, 8}});
    want.push_back({p + "self_attn.o_proj.weight", {8, 8}});
    want.push_back({p + "mlp.gate_proj.weight", {12, 8}});
    want.push_back({p + "mlp.up_proj.weight", {12, 8}});
    want.push_back({p + "mlp.down_proj.weight", {8, 12}});
    want.push_back({p + "input_layernorm.weight", {8}});
    want.push_back({p + "post_attention_layernorm.weight", {8}});
  }
  want.push_back({"model.norm.weight", {8}});
  want.push_back({"lm_head.weight", {11, 8}});
  return want;
}

TEST(Llama, ParametersHaveHuggingFaceNamesAndShapes) {
  ASSERT_OK_AND_ASSIGN(LlamaModel lm, BuildLlama(TinyConfig()));
  const Graph& g = lm.model.graph;
  ASSERT_OK(VerifyGraph(g));
  const auto want = HfStateDict();
  size_t params = 0;
  for (ValueId id = 0; id < static_cast<ValueId>(g.num_nodes()); ++id) {
    params += g.node(id).op == OpKind::kParameter;
  }
  EXPECT_EQ(params, want.size());
  for (const auto& [name, shape] : want) {
    std::optional<ValueId> id = g.FindByName(name);
    ASSERT_TRUE(id.has_value()) << name;
    EXPECT_EQ(g.node(*id).op, OpKind::kParameter) << name;
    EXPECT_EQ(g.type(*id), (TensorType{DType::kF32, shape})) << name;
  }
  EXPECT_EQ(g.type(lm.tokens), (TensorType{DType::kI32, {3, 5}}));
  EXPECT_EQ(g.type(lm.targets), (TensorType{DType::kI32, {3, 5}}));
  EXPECT_EQ(g.type(lm.model.logits), (TensorType{DType::kF32, {3, 5, 11}}));
  EXPECT_EQ(g.type(lm.model.loss).shape, Shape{});
  // Layers list every weight once.
  size_t listed = 0;
  for (const Layer& l : lm.model.layers) listed += l.weights.size();
  EXPECT_EQ(listed, want.size());
}

TEST(Llama, TiedEmbeddingsHaveNoLmHead) {
  LlamaConfig c = TinyConfig();
  c.tie_embeddings = true;
  ASSERT_OK_AND_ASSIGN(LlamaModel lm, BuildLlama(c));
  EXPECT_FALSE(lm.model.graph.FindByName("lm_head.weight").has_value());
  EXPECT_EQ(lm.model.layers.back().name, "model.norm");
}

TEST(Llama, InitializationIsSeededWithNormsAtOne) {
  const LlamaConfig c = TinyConfig();
  runtime::ParameterStore a, b, other;
  ASSERT_OK(InitializeLlama(c, 7, &a));
  ASSERT_OK(InitializeLlama(c, 7, &b));
  ASSERT_OK(InitializeLlama(c, 8, &other));
  EXPECT_EQ(a.tensors().size(), HfStateDict().size());
  for (float v : a.Find("model.norm.weight")->f32_span()) EXPECT_EQ(v, 1.0f);
  const Tensor& w = *a.Find("model.layers.1.mlp.down_proj.weight");
  double sum_sq = 0.0;
  for (float v : w.f32_span()) sum_sq += double(v) * v;
  const double std = std::sqrt(sum_sq / w.num_elements());
  EXPECT_GT(std, 0.01);
  EXPECT_LT(std, 0.03);
  EXPECT_EQ(a.Find("lm_head.weight")->f32_span()[3], b.Find("lm_head.weight")->f32_span()[3]);
  EXPECT_NE(a.Find("lm_head.weight")->f32_span()[3], other.Find("lm_head.weight")->f32_span()[3]);
}

TEST(Llama, UntrainedLossIsNearLogVocab) {
  const LlamaConfig c = TinyConfig();
  runtime::ParameterStore params;
  ASSERT_OK(InitializeLlama(c, 0, &params));
  ASSERT_OK_AND_ASSIGN(LlamaModel lm, BuildLlama(c));
  ASSERT_OK_AND_ASSIGN(auto exe, runtime::Executable::Compile(lm.model.graph, &params, {}));
  ASSERT_OK_AND_ASSIGN(TensorView tokens, exe->Input("tokens"));
  ASSERT_OK_AND_ASSIGN(TensorView targets, exe->Input("targets"));
  ASSERT_OK_AND_ASSIGN(TensorView positions, exe->Input(kLlamaPositionsInput));
  for (int i = 0; i < 15; ++i) tokens.i32()[i] = targets.i32()[i] = i % 11;
  FillLlamaPositions(positions.i32(), 5);
  ASSERT_OK(exe->Run());
  ASSERT_OK_AND_ASSIGN(TensorView loss, exe->Output(lm.model.loss));
  EXPECT_NEAR(loss.f32()[0], std::log(11.0), 0.1);
}

TEST(Llama, RejectsBadConfig) {
  LlamaConfig c = TinyConfig();
  c.kv_heads = 3;
  EXPECT_THAT(BuildLlama(c), StatusIs(absl::StatusCode::kInvalidArgument,
                                      HasSubstr("kv_heads=3 does not divide heads=4")));
  c = TinyConfig();
  c.heads = 3;
  EXPECT_THAT(BuildLlama(c),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("heads=3 does not divide")));
  c = TinyConfig();
  c.vocab = 0;
  EXPECT_THAT(InitializeLlama(c, 0, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("vocab=0")));
}

}  // namespace
}  // namespace fleettune::engine::models
