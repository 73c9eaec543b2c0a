// Golden test: fleettune's BERT builder (models::BuildBert) against PyTorch
// 1.13.
//
// tests/golden/gen_bert_golden.py (Debian's python3-torch) spelled out
// Hugging Face's BertForSequenceClassification with plain torch.nn modules
// (same state_dict names), ran one batch in eval mode (no dropout) and wrote
// the weights, the inputs, the logits, the loss and every parameter's
// gradient. This test loads the weights by name into the engine's graph
// (fast kernels, as training runs), builds the backward pass and compares.
// PyTorch is not needed to run it.
//
// Tolerance: relative error (max |ours − torch| / max |torch| per tensor)
// below 1e-4 for every tensor; no looser bound was needed. One exception in
// the scale, not the bound: the key bias's gradient is exactly zero in exact
// arithmetic (adding b_k shifts every score of a query row by the same q·b_k,
// which softmax ignores), so both sides hold only float32 rounding noise
// (~1e-12) and a relative error against their own maximum is meaningless;
// it is measured against the scale of the same layer's key weight gradient
// instead. The error measured per tensor is printed (--test_output=all).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "engine/autodiff/autodiff.h"
#include "engine/base/status_matchers.h"
#include "engine/io/safetensors.h"
#include "engine/models/bert.h"
#include "engine/runtime/executable.h"
#include "gtest/gtest.h"

namespace fleettune::engine {
namespace {

constexpr double kTolerance = 1e-4;
constexpr char kGoldenPath[] = "tests/golden/bert_golden.safetensors";

// The generator's configuration (its "config" metadata).
models::BertConfig GoldenConfig() {
  models::BertConfig c;
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
  c.eps = 1e-12f;
  return c;
}

double MaxAbs(const Tensor& t) {
  double m = 0.0;
  for (int64_t i = 0; i < t.num_elements(); ++i) {
    m = std::max(m, std::abs(static_cast<double>(t.f32()[i])));
  }
  return m;
}

// max |ours − golden| / scale, with scale = max |golden| unless given.
double RelativeError(const TensorView& ours, const Tensor& golden, double scale = -1.0) {
  double diff = 0.0;
  for (int64_t i = 0; i < golden.num_elements(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(ours.f32()[i]) - golden.f32()[i]));
  }
  if (scale < 0.0) scale = MaxAbs(golden);
  return diff / std::max(scale, 1e-12);
}

const std::map<std::string, Tensor>& Golden() {
  static const auto* golden = [] {
    auto read = io::ReadSafetensors(kGoldenPath);
    EXPECT_OK(read.status());
    return new std::map<std::string, Tensor>(read.ok() ? *std::move(read)
                                                       : std::map<std::string, Tensor>{});
  }();
  return *golden;
}

void ExpectMatches(const TensorView& ours, const std::string& name) {
  auto it = Golden().find(name);
  ASSERT_NE(it, Golden().end()) << name << " is not in " << kGoldenPath;
  ASSERT_EQ(*ours.shape, it->second.shape()) << name;
  // See the file comment: the key bias's gradient is zero up to rounding.
  double scale = -1.0;
  const std::string key_bias = "attention.self.key.bias";
  if (name.size() > key_bias.size() &&
      name.compare(name.size() - key_bias.size(), key_bias.size(), key_bias) == 0) {
    const std::string weight = name.substr(0, name.size() - 4) + "weight";
    ASSERT_TRUE(Golden().count(weight)) << weight;
    scale = MaxAbs(Golden().at(weight));
  }
  const double err = RelativeError(ours, it->second, scale);
  EXPECT_LT(err, kTolerance) << name;
  std::printf("%-64s rel. error %.2e\n", name.c_str(), err);
}

void RunAndCompare(models::Mode mode) {
  ASSERT_OK_AND_ASSIGN(models::BertModel bm, models::BuildBert(GoldenConfig(), mode));
  Graph& g = bm.model.graph;
  runtime::ParameterStore params;
  std::vector<ValueId> trainable;
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    if (g.node(id).op != OpKind::kParameter) continue;
    const std::string& name = g.node(id).name;
    auto it = Golden().find("param." + name);
    ASSERT_NE(it, Golden().end()) << "no golden weight for " << name;
    ASSERT_OK(params.Set(name, it->second));
    trainable.push_back(id);
  }
  // 5 embedding tensors, 16 per layer, pooler 2, classifier 2.
  EXPECT_EQ(trainable.size(), 5u + 16u * 2u + 2u + 2u);
  ASSERT_OK_AND_ASSIGN(autodiff::GradientMap grads,
                       autodiff::BuildBackward(g, bm.model.loss, trainable));
  EXPECT_EQ(grads.size(), trainable.size());
  for (const auto& [p, grad] : grads) g.MarkOutput(grad);
  ASSERT_OK_AND_ASSIGN(auto exe, runtime::Executable::Compile(g, &params));
  for (const char* input : {"input_ids", "token_type_ids", "position_ids", "labels"}) {
    ASSERT_OK(exe->SetInput(input, Golden().at(input)));
  }
  ASSERT_OK(exe->Run());

  ASSERT_OK_AND_ASSIGN(TensorView logits, exe->Output(bm.model.logits));
  ExpectMatches(logits, "logits");
  ASSERT_OK_AND_ASSIGN(TensorView loss, exe->Output(bm.model.loss));
  ExpectMatches(loss, "loss");
  for (const auto& [p, grad] : grads) {
    ASSERT_OK_AND_ASSIGN(TensorView v, exe->Output(grad));
    ExpectMatches(v, "grad." + g.node(p).name);
  }
}

TEST(BertGolden, EvalLogitsLossAndEveryParameterGradientMatchPyTorch) {
  RunAndCompare(models::Mode::kEval);
}

// The golden numbers are eval-mode (no dropout): a training graph with
// dropout 0 is the same graph, so they hold for it too.
TEST(BertGolden, TrainModeWithoutDropoutBuildsTheEvalGraph) {
  models::BertConfig config = GoldenConfig();
  config.dropout = 0.0f;
  ASSERT_OK_AND_ASSIGN(models::BertModel train, models::BuildBert(config, models::Mode::kTrain));
  ASSERT_OK_AND_ASSIGN(models::BertModel eval, models::BuildBert(config, models::Mode::kEval));
  EXPECT_EQ(train.model.graph.num_nodes(), eval.model.graph.num_nodes());
  for (ValueId id = 0; id < train.model.graph.num_nodes(); ++id) {
    EXPECT_NE(train.model.graph.node(id).op, OpKind::kDropout);
  }
}

}  // namespace
}  // namespace fleettune::engine
