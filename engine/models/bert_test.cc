#include "engine/models/bert.h"

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "engine/base/status_matchers.h"
#include "engine/io/safetensors.h"
#include "engine/ir/verifier.h"
#include "engine/runtime/executable.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::models {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

// tests/golden/gen_bert_golden.py's configuration.
BertConfig GoldenConfig() {
  BertConfig c;
  c.vocab = 50;
  c.hidden = 16;
  c.layers = 2;
  c.heads = 2;
  c.ffn = 32;
  c.max_positions = 8;
  c.type_vocab = 2;
  c.seq_len = 6;
  c.batch = 2;
  c.num_labels = 3;
  return c;
}

// name → shape of every golden parameter ("param.<name>").
std::map<std::string, Shape> GoldenParameters() {
  auto read = io::ReadSafetensors("tests/golden/bert_golden.safetensors");
  EXPECT_OK(read.status());
  std::map<std::string, Shape> params;
  if (!read.ok()) return params;
  for (const auto& [name, t] : *read) {
    if (name.rfind("param.", 0) == 0) params[name.substr(6)] = t.shape();
  }
  return params;
}

std::map<std::string, Shape> GraphParameters(const Graph& g) {
  std::map<std::string, Shape> params;
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    if (g.node(id).op == OpKind::kParameter) params[g.node(id).name] = g.type(id).shape;
  }
  return params;
}

TEST(Bert, ParametersHaveHuggingFaceNamesAndShapes) {
  ASSERT_OK_AND_ASSIGN(BertModel bm, BuildBert(GoldenConfig(), Mode::kEval));
  ASSERT_OK(VerifyGraph(bm.model.graph));
  const auto golden = GoldenParameters();
  ASSERT_EQ(golden.size(), 41u);
  EXPECT_EQ(GraphParameters(bm.model.graph), golden);
  EXPECT_EQ(golden.at("bert.encoder.layer.1.intermediate.dense.weight"), (Shape{32, 16}));
  EXPECT_EQ(golden.at("bert.embeddings.position_embeddings.weight"), (Shape{8, 16}));
}

TEST(Bert, LayersListEveryWeightOnceInOrder) {
  ASSERT_OK_AND_ASSIGN(BertModel bm, BuildBert(GoldenConfig(), Mode::kEval));
  const auto& layers = bm.model.layers;
  ASSERT_EQ(layers.size(), 5u);
  EXPECT_EQ(layers[0].name, "bert.embeddings");
  EXPECT_EQ(layers[1].name, "bert.encoder.layer.0");
  EXPECT_EQ(layers[2].name, "bert.encoder.layer.1");
  EXPECT_EQ(layers[3].name, "bert.pooler");
  EXPECT_EQ(layers[4].name, "classifier");
  std::map<std::string, int> seen;
  for (const Layer& l : layers) {
    for (const std::string& w : l.weights) ++seen[w];
  }
  const auto params = GraphParameters(bm.model.graph);
  EXPECT_EQ(seen.size(), params.size());
  for (const auto& [name, count] : seen) {
    EXPECT_EQ(count, 1) << name;
    EXPECT_TRUE(params.count(name)) << name;
  }
}

TEST(Bert, InputsAndOutputsHaveTheDocumentedTypes) {
  ASSERT_OK_AND_ASSIGN(BertModel bm, BuildBert(GoldenConfig(), Mode::kEval));
  const Graph& g = bm.model.graph;
  EXPECT_EQ(g.type(bm.input_ids), (TensorType{DType::kI32, {2, 6}}));
  EXPECT_EQ(g.type(bm.token_type_ids), (TensorType{DType::kI32, {2, 6}}));
  EXPECT_EQ(g.type(bm.position_ids), (TensorType{DType::kI32, {6}}));
  EXPECT_EQ(g.type(bm.model.labels), (TensorType{DType::kI32, {2}}));
  EXPECT_EQ(g.type(bm.model.logits), (TensorType{DType::kF32, {2, 3}}));
  EXPECT_EQ(g.type(bm.model.loss), (TensorType{DType::kF32, {}}));
}

TEST(Bert, TrainModeAddsDropoutOnlyWhenPositive) {
  BertConfig config = GoldenConfig();
  config.dropout = 0.1f;
  auto count_dropout = [](const Graph& g) {
    int n = 0;
    for (ValueId id = 0; id < g.num_nodes(); ++id) n += g.node(id).op == OpKind::kDropout;
    return n;
  };
  ASSERT_OK_AND_ASSIGN(BertModel train, BuildBert(config, Mode::kTrain));
  ASSERT_OK(VerifyGraph(train.model.graph));
  // Embeddings, two per layer, before the classifier.
  EXPECT_EQ(count_dropout(train.model.graph), 1 + 2 * 2 + 1);
  ASSERT_OK_AND_ASSIGN(BertModel eval, BuildBert(config, Mode::kEval));
  EXPECT_EQ(count_dropout(eval.model.graph), 0);
}

TEST(Bert, InitializeSetsEveryParameterLikeHuggingFace) {
  const BertConfig config = GoldenConfig();
  ASSERT_OK_AND_ASSIGN(BertModel bm, BuildBert(config, Mode::kEval));
  runtime::ParameterStore params;
  ASSERT_OK(InitializeBert(config, /*seed=*/3, &params));
  for (const auto& [name, shape] : GraphParameters(bm.model.graph)) {
    Tensor* t = params.Find(name);
    ASSERT_NE(t, nullptr) << name;
    ASSERT_EQ(t->shape(), shape) << name;
    const bool is_norm = name.find("LayerNorm") != std::string::npos;
    const bool is_bias = name.size() > 5 && name.substr(name.size() - 5) == ".bias";
    if (is_norm && !is_bias) {
      for (float v : t->f32_span()) EXPECT_EQ(v, 1.0f) << name;
    } else if (is_bias) {
      for (float v : t->f32_span()) EXPECT_EQ(v, 0.0f) << name;
    } else {
      double sum_sq = 0;
      for (float v : t->f32_span()) sum_sq += double(v) * v;
      const double std = std::sqrt(sum_sq / t->num_elements());
      EXPECT_GT(std, 0.01) << name;
      EXPECT_LT(std, 0.04) << name;
    }
  }
}

TEST(Bert, RejectsBadConfigsNamingTheField) {
  auto with = [](auto edit) {
    BertConfig c = GoldenConfig();
    edit(c);
    return BuildBert(c, Mode::kTrain).status();
  };
  EXPECT_THAT(with([](BertConfig& c) { c.vocab = 0; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("vocab=0")));
  EXPECT_THAT(with([](BertConfig& c) { c.num_labels = -1; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_labels=-1")));
  EXPECT_THAT(with([](BertConfig& c) { c.heads = 3; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("heads=3 does not divide")));
  EXPECT_THAT(with([](BertConfig& c) { c.seq_len = 9; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_positions=8")));
  EXPECT_THAT(with([](BertConfig& c) { c.eps = 0.0f; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("eps")));
  EXPECT_THAT(with([](BertConfig& c) { c.dropout = 1.0f; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dropout")));
  BertConfig bad = GoldenConfig();
  bad.type_vocab = 0;
  runtime::ParameterStore params;
  EXPECT_THAT(InitializeBert(bad, 0, &params),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("type_vocab=0")));
}

}  // namespace
}  // namespace fleettune::engine::models
