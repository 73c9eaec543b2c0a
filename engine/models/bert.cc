#include "engine/models/bert.h"

#include <random>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "engine/models/transformer.h"

namespace fleettune::engine::models {
namespace {

constexpr int64_t kMaxSize = int64_t{1} << 24;

// check_shapes: also seq_len and batch, which the weights do not depend on.
absl::Status ValidateConfig(const BertConfig& c, bool check_shapes) {
  const std::pair<const char*, int64_t> sizes[] = {{"vocab", c.vocab},
                                                   {"hidden", c.hidden},
                                                   {"layers", c.layers},
                                                   {"heads", c.heads},
                                                   {"ffn", c.ffn},
                                                   {"max_positions", c.max_positions},
                                                   {"type_vocab", c.type_vocab},
                                                   {"num_labels", c.num_labels},
                                                   {"seq_len", c.seq_len},
                                                   {"batch", c.batch}};
  for (const auto& [name, value] : sizes) {
    const std::string field = name;
    if (!check_shapes && (field == "seq_len" || field == "batch")) continue;
    if (value <= 0 || value > kMaxSize) {
      return absl::InvalidArgumentError(
          absl::StrCat("bert config: ", name, "=", value, " out of range [1, ", kMaxSize, "]"));
    }
  }
  if (c.hidden % c.heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("bert config: heads=", c.heads, " does not divide hidden=", c.hidden));
  }
  if (check_shapes && c.seq_len > c.max_positions) {
    return absl::InvalidArgumentError(absl::StrCat("bert config: seq_len=", c.seq_len,
                                                   " exceeds max_positions=", c.max_positions));
  }
  if (!(c.eps > 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("bert config: eps=", c.eps, " must be > 0"));
  }
  if (!(c.dropout >= 0.0f && c.dropout < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bert config: dropout=", c.dropout, " outside [0, 1)"));
  }
  return absl::OkStatus();
}

std::string LayerPrefix(int64_t i) { return absl::StrCat("bert.encoder.layer.", i, "."); }

// Appends to a graph under construction, with HF's parameter names.
class BertBuilder {
 public:
  BertBuilder(const BertConfig& config, Mode mode, Model& m)
      : config_(config), mode_(mode), m_(m), g_(m.graph) {}

  // nn.Linear(in, out) named `name`: x [..., in] → [..., out].
  absl::StatusOr<ValueId> Linear(ValueId x, const std::string& name, int64_t out) {
    const int64_t in = g_.type(x).shape.back();
    ASSIGN_OR_RETURN(ValueId w, g_.AddParameter(name + ".weight", {DType::kF32, {out, in}}));
    ASSIGN_OR_RETURN(ValueId b, g_.AddParameter(name + ".bias", {DType::kF32, {out}}));
    Record(name + ".weight");
    Record(name + ".bias");
    return g_.AddNode(OpKind::kLinear, {x, w, b}, NoAttrs{}, name);
  }

  // nn.LayerNorm(hidden, eps) named `name`.
  absl::StatusOr<ValueId> LayerNorm(ValueId x, const std::string& name) {
    ASSIGN_OR_RETURN(ValueId w, g_.AddParameter(name + ".weight", {DType::kF32, {config_.hidden}}));
    ASSIGN_OR_RETURN(ValueId b, g_.AddParameter(name + ".bias", {DType::kF32, {config_.hidden}}));
    Record(name + ".weight");
    Record(name + ".bias");
    return g_.AddNode(OpKind::kLayerNorm, {x, w, b}, NormAttrs{config_.eps}, name);
  }

  // nn.Dropout(hidden_dropout_prob): identity in eval mode or with p = 0.
  absl::StatusOr<ValueId> Dropout(ValueId x, const std::string& name) {
    if (mode_ != Mode::kTrain || config_.dropout == 0.0f) return x;
    // Distinct seeds: the mask is a function of (seed, step, index) only.
    const uint64_t seed = config_.dropout_seed + dropout_sites_++;
    return g_.AddNode(OpKind::kDropout, {x}, DropoutAttrs{config_.dropout, seed}, name);
  }

  // [B, T, H·D] → [B, H, T, D].
  absl::StatusOr<ValueId> SplitHeads(ValueId x, const std::string& name) {
    const Shape& s = g_.type(x).shape;
    const int64_t heads = config_.heads;
    ASSIGN_OR_RETURN(
        ValueId r, g_.AddNode(OpKind::kReshape, {x}, ShapeAttrs{{s[0], s[1], heads, s[2] / heads}},
                              name + ".heads"));
    return g_.AddNode(OpKind::kTranspose, {r}, PermuteAttrs{{0, 2, 1, 3}}, name + ".transpose");
  }

  // BertLayer (post-norm):
  //   h = LayerNorm(x + dense(attention(query(x), key(x), value(x))))
  //   y = LayerNorm(h + dense(gelu(dense(h))))
  absl::StatusOr<ValueId> EncoderLayer(ValueId x, const std::string& p) {
    const Shape xs = g_.type(x).shape;
    const int64_t hidden = config_.hidden;
    ASSIGN_OR_RETURN(ValueId q, Linear(x, p + "attention.self.query", hidden));
    ASSIGN_OR_RETURN(ValueId k, Linear(x, p + "attention.self.key", hidden));
    ASSIGN_OR_RETURN(ValueId v, Linear(x, p + "attention.self.value", hidden));
    ASSIGN_OR_RETURN(q, SplitHeads(q, p + "attention.self.q"));
    ASSIGN_OR_RETURN(k, SplitHeads(k, p + "attention.self.k"));
    ASSIGN_OR_RETURN(v, SplitHeads(v, p + "attention.self.v"));
    ASSIGN_OR_RETURN(ValueId a, ScaledDotProductAttention(g_, q, k, v, /*causal=*/false));
    ASSIGN_OR_RETURN(a, g_.AddNode(OpKind::kTranspose, {a}, PermuteAttrs{{0, 2, 1, 3}}));
    ASSIGN_OR_RETURN(a, g_.AddNode(OpKind::kReshape, {a}, ShapeAttrs{xs}));
    ASSIGN_OR_RETURN(a, Linear(a, p + "attention.output.dense", hidden));
    ASSIGN_OR_RETURN(a, Dropout(a, p + "attention.output.dropout"));
    ASSIGN_OR_RETURN(ValueId h,
                     g_.AddNode(OpKind::kAdd, {a, x}, NoAttrs{}, p + "attention.output.residual"));
    ASSIGN_OR_RETURN(h, LayerNorm(h, p + "attention.output.LayerNorm"));

    ASSIGN_OR_RETURN(ValueId f, Linear(h, p + "intermediate.dense", config_.ffn));
    ASSIGN_OR_RETURN(f,
                     g_.AddNode(OpKind::kActivation, {f}, ActivationAttrs{ActivationFn::kGeluErf},
                                p + "intermediate.gelu"));
    ASSIGN_OR_RETURN(f, Linear(f, p + "output.dense", hidden));
    ASSIGN_OR_RETURN(f, Dropout(f, p + "output.dropout"));
    ASSIGN_OR_RETURN(ValueId y, g_.AddNode(OpKind::kAdd, {f, h}, NoAttrs{}, p + "output.residual"));
    return LayerNorm(y, p + "output.LayerNorm");
  }

  // Starts a new Model::layers entry; Record() adds weights to it.
  void BeginLayer(std::string name) { m_.layers.push_back({std::move(name), {}}); }

 private:
  void Record(const std::string& weight) { m_.layers.back().weights.push_back(weight); }

  const BertConfig& config_;
  Mode mode_;
  Model& m_;
  Graph& g_;
  uint64_t dropout_sites_ = 0;
};

}  // namespace

absl::StatusOr<BertModel> BuildBert(const BertConfig& config, Mode mode) {
  RETURN_IF_ERROR(ValidateConfig(config, /*check_shapes=*/true));
  BertModel bm;
  Model& m = bm.model;
  Graph& g = m.graph;
  const int64_t b = config.batch, t = config.seq_len, hidden = config.hidden;
  ASSIGN_OR_RETURN(bm.input_ids, g.AddInput("input_ids", {DType::kI32, {b, t}}));
  ASSIGN_OR_RETURN(bm.token_type_ids, g.AddInput("token_type_ids", {DType::kI32, {b, t}}));
  ASSIGN_OR_RETURN(bm.position_ids, g.AddInput(kBertPositionsInput, {DType::kI32, {t}}));
  m.shared_inputs = {kBertPositionsInput};
  ASSIGN_OR_RETURN(m.labels, g.AddInput("labels", {DType::kI32, {b}}));
  m.input = bm.input_ids;
  BertBuilder builder(config, mode, m);

  // Embeddings: word [B, T, H] + position [T, H] (broadcast) + token type.
  builder.BeginLayer("bert.embeddings");
  const std::pair<std::string, std::pair<ValueId, int64_t>> tables[] = {
      {"word_embeddings", {bm.input_ids, config.vocab}},
      {"position_embeddings", {bm.position_ids, config.max_positions}},
      {"token_type_embeddings", {bm.token_type_ids, config.type_vocab}}};
  ValueId h = kNoValue;
  for (const auto& [table, ids_rows] : tables) {
    const std::string name = "bert.embeddings." + table;
    ASSIGN_OR_RETURN(ValueId w,
                     g.AddParameter(name + ".weight", {DType::kF32, {ids_rows.second, hidden}}));
    m.layers.back().weights.push_back(name + ".weight");
    ASSIGN_OR_RETURN(ValueId e,
                     g.AddNode(OpKind::kEmbedding, {ids_rows.first, w}, NoAttrs{}, name));
    if (h == kNoValue) {
      h = e;
    } else {
      ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kAdd, {h, e}, NoAttrs{}, name + ".add"));
    }
  }
  ASSIGN_OR_RETURN(h, builder.LayerNorm(h, "bert.embeddings.LayerNorm"));
  ASSIGN_OR_RETURN(h, builder.Dropout(h, "bert.embeddings.dropout"));

  for (int64_t i = 0; i < config.layers; ++i) {
    const std::string prefix = LayerPrefix(i);
    builder.BeginLayer(prefix.substr(0, prefix.size() - 1));
    ASSIGN_OR_RETURN(h, builder.EncoderLayer(h, prefix));
  }

  // Pooler: tanh(dense(h[:, 0])).
  builder.BeginLayer("bert.pooler");
  ASSIGN_OR_RETURN(ValueId first,
                   g.AddNode(OpKind::kSlice, {h}, SliceAttrs{{0, 0, 0}, {b, 1, hidden}, {1, 1, 1}},
                             "bert.pooler.first_token"));
  ASSIGN_OR_RETURN(first, g.AddNode(OpKind::kReshape, {first}, ShapeAttrs{{b, hidden}}));
  ASSIGN_OR_RETURN(ValueId pooled, builder.Linear(first, "bert.pooler.dense", hidden));
  ASSIGN_OR_RETURN(pooled, g.AddNode(OpKind::kActivation, {pooled},
                                     ActivationAttrs{ActivationFn::kTanh}, "bert.pooler.tanh"));
  ASSIGN_OR_RETURN(pooled, builder.Dropout(pooled, "dropout"));

  builder.BeginLayer("classifier");
  ASSIGN_OR_RETURN(m.logits, builder.Linear(pooled, "classifier", config.num_labels));
  ASSIGN_OR_RETURN(m.loss, g.AddNode(OpKind::kSoftmaxCrossEntropy, {m.logits, m.labels},
                                     CrossEntropyAttrs{}, "loss"));
  g.MarkOutput(m.logits);
  g.MarkOutput(m.loss);
  return bm;
}

absl::Status InitializeBert(const BertConfig& config, uint64_t seed,
                            runtime::ParameterStore* params) {
  RETURN_IF_ERROR(ValidateConfig(config, /*check_shapes=*/false));
  // mt19937_64 is fully specified; normal_distribution is the library's, so a
  // seed fixes the weights for one standard library.
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  auto normal_tensor = [&](const std::string& name, Shape shape) {
    Tensor w(DType::kF32, std::move(shape));
    for (float& v : w.f32_span()) v = normal(rng);
    return params->Set(name, w);
  };
  auto filled = [&](const std::string& name, int64_t n, float value) {
    Tensor w(DType::kF32, {n});
    for (float& v : w.f32_span()) v = value;
    return params->Set(name, w);
  };
  auto linear = [&](const std::string& name, int64_t out, int64_t in) -> absl::Status {
    RETURN_IF_ERROR(normal_tensor(name + ".weight", {out, in}));
    return filled(name + ".bias", out, 0.0f);
  };
  auto layer_norm = [&](const std::string& name) -> absl::Status {
    RETURN_IF_ERROR(filled(name + ".weight", config.hidden, 1.0f));
    return filled(name + ".bias", config.hidden, 0.0f);
  };
  const int64_t d = config.hidden;
  RETURN_IF_ERROR(normal_tensor("bert.embeddings.word_embeddings.weight", {config.vocab, d}));
  RETURN_IF_ERROR(
      normal_tensor("bert.embeddings.position_embeddings.weight", {config.max_positions, d}));
  RETURN_IF_ERROR(
      normal_tensor("bert.embeddings.token_type_embeddings.weight", {config.type_vocab, d}));
  RETURN_IF_ERROR(layer_norm("bert.embeddings.LayerNorm"));
  for (int64_t i = 0; i < config.layers; ++i) {
    const std::string p = LayerPrefix(i);
    RETURN_IF_ERROR(linear(p + "attention.self.query", d, d));
    RETURN_IF_ERROR(linear(p + "attention.self.key", d, d));
    RETURN_IF_ERROR(linear(p + "attention.self.value", d, d));
    RETURN_IF_ERROR(linear(p + "attention.output.dense", d, d));
    RETURN_IF_ERROR(layer_norm(p + "attention.output.LayerNorm"));
    RETURN_IF_ERROR(linear(p + "intermediate.dense", config.ffn, d));
    RETURN_IF_ERROR(linear(p + "output.dense", d, config.ffn));
    RETURN_IF_ERROR(layer_norm(p + "output.LayerNorm"));
  }
  RETURN_IF_ERROR(linear("bert.pooler.dense", d, d));
  return linear("classifier", config.num_labels, d);
}

void FillBertPositions(int32_t* positions, int64_t n) {
  for (int64_t i = 0; i < n; ++i) positions[i] = static_cast<int32_t>(i);
}

}  // namespace fleettune::engine::models
