#include "engine/models/llama.h"

#include <random>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "engine/models/transformer.h"

namespace fleettune::engine::models {
namespace {

constexpr int64_t kMaxSize = int64_t{1} << 24;

// check_shapes: also seq_len and batch, which the weights do not depend on.
absl::Status ValidateConfig(const LlamaConfig& c, bool check_shapes) {
  const std::pair<const char*, int64_t> sizes[] = {
      {"vocab", c.vocab},       {"dim", c.dim},         {"layers", c.layers},   {"heads", c.heads},
      {"kv_heads", c.kv_heads}, {"ffn_dim", c.ffn_dim}, {"seq_len", c.seq_len}, {"batch", c.batch}};
  for (const auto& [name, value] : sizes) {
    const std::string field = name;
    if (!check_shapes && (field == "seq_len" || field == "batch")) continue;
    if (value <= 0 || value > kMaxSize) {
      return absl::InvalidArgumentError(
          absl::StrCat("llama config: ", name, "=", value, " out of range [1, ", kMaxSize, "]"));
    }
  }
  if (c.dim % c.heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("llama config: heads=", c.heads, " does not divide dim=", c.dim));
  }
  if (c.heads % c.kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("llama config: kv_heads=", c.kv_heads, " does not divide heads=", c.heads));
  }
  if (!(c.eps > 0.0f) || !(c.rope_base > 0.0f)) {
    return absl::InvalidArgumentError("llama config: eps and rope_base must be positive");
  }
  return absl::OkStatus();
}

std::string LayerPrefix(int64_t i) { return absl::StrCat("model.layers.", i, "."); }

}  // namespace

absl::StatusOr<LlamaModel> BuildLlama(const LlamaConfig& config) {
  RETURN_IF_ERROR(ValidateConfig(config, /*check_shapes=*/true));
  LlamaModel lm;
  Model& m = lm.model;
  Graph& g = m.graph;
  const int64_t b = config.batch, t = config.seq_len;
  ASSIGN_OR_RETURN(lm.tokens, g.AddInput("tokens", {DType::kI32, {b, t}}));
  ASSIGN_OR_RETURN(lm.targets, g.AddInput("targets", {DType::kI32, {b, t}}));
  ASSIGN_OR_RETURN(lm.positions, g.AddInput(kLlamaPositionsInput, {DType::kI32, {t}}));
  m.shared_inputs = {kLlamaPositionsInput};
  m.input = lm.tokens;
  m.labels = lm.targets;

  const std::string embed_name = "model.embed_tokens.weight";
  ASSIGN_OR_RETURN(ValueId embed,
                   g.AddParameter(embed_name, {DType::kF32, {config.vocab, config.dim}}));
  ASSIGN_OR_RETURN(ValueId h, g.AddNode(OpKind::kEmbedding, {lm.tokens, embed}, NoAttrs{},
                                        "model.embed_tokens"));
  m.layers.push_back({"model.embed_tokens", {embed_name}});

  DecoderLayerConfig layer;
  layer.hidden = config.dim;
  layer.heads = config.heads;
  layer.kv_heads = config.kv_heads;
  layer.intermediate = config.ffn_dim;
  layer.rms_eps = config.eps;
  layer.rope_base = config.rope_base;
  for (int64_t i = 0; i < config.layers; ++i) {
    const std::string prefix = LayerPrefix(i);
    ASSIGN_OR_RETURN(h, AddLlamaDecoderLayer(g, prefix, layer, h, lm.positions));
    Layer l{prefix.substr(0, prefix.size() - 1), {}};
    for (const char* w :
         {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
          "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
          "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}) {
      l.weights.push_back(prefix + w);
    }
    m.layers.push_back(std::move(l));
  }

  ASSIGN_OR_RETURN(ValueId norm_w,
                   g.AddParameter("model.norm.weight", {DType::kF32, {config.dim}}));
  ASSIGN_OR_RETURN(h,
                   g.AddNode(OpKind::kRmsNorm, {h, norm_w}, NormAttrs{config.eps}, "model.norm"));
  m.layers.push_back({"model.norm", {"model.norm.weight"}});

  ValueId head = embed;
  if (!config.tie_embeddings) {
    ASSIGN_OR_RETURN(head,
                     g.AddParameter("lm_head.weight", {DType::kF32, {config.vocab, config.dim}}));
    m.layers.push_back({"lm_head", {"lm_head.weight"}});
  }
  // logits [B, T, vocab] = h · headᵀ (nn.Linear layout [vocab, dim]).
  ASSIGN_OR_RETURN(m.logits, g.AddNode(OpKind::kLinear, {h, head}, NoAttrs{}, "lm_head"));
  ASSIGN_OR_RETURN(m.loss, SequenceCrossEntropy(g, m.logits, lm.targets));
  g.MarkOutput(m.logits);
  g.MarkOutput(m.loss);
  return lm;
}

absl::Status InitializeLlama(const LlamaConfig& config, uint64_t seed,
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
  auto ones = [&](const std::string& name) {
    Tensor w(DType::kF32, {config.dim});
    for (float& v : w.f32_span()) v = 1.0f;
    return params->Set(name, w);
  };
  const int64_t d = config.dim, head_dim = config.dim / config.heads;
  RETURN_IF_ERROR(normal_tensor("model.embed_tokens.weight", {config.vocab, d}));
  for (int64_t i = 0; i < config.layers; ++i) {
    const std::string p = LayerPrefix(i);
    RETURN_IF_ERROR(ones(p + "input_layernorm.weight"));
    RETURN_IF_ERROR(normal_tensor(p + "self_attn.q_proj.weight", {config.heads * head_dim, d}));
    RETURN_IF_ERROR(normal_tensor(p + "self_attn.k_proj.weight", {config.kv_heads * head_dim, d}));
    RETURN_IF_ERROR(normal_tensor(p + "self_attn.v_proj.weight", {config.kv_heads * head_dim, d}));
    RETURN_IF_ERROR(normal_tensor(p + "self_attn.o_proj.weight", {d, config.heads * head_dim}));
    RETURN_IF_ERROR(ones(p + "post_attention_layernorm.weight"));
    RETURN_IF_ERROR(normal_tensor(p + "mlp.gate_proj.weight", {config.ffn_dim, d}));
    RETURN_IF_ERROR(normal_tensor(p + "mlp.up_proj.weight", {config.ffn_dim, d}));
    RETURN_IF_ERROR(normal_tensor(p + "mlp.down_proj.weight", {d, config.ffn_dim}));
  }
  RETURN_IF_ERROR(ones("model.norm.weight"));
  if (!config.tie_embeddings) {
    RETURN_IF_ERROR(normal_tensor("lm_head.weight", {config.vocab, d}));
  }
  return absl::OkStatus();
}

void FillLlamaPositions(int32_t* positions, int64_t n) {
  for (int64_t i = 0; i < n; ++i) positions[i] = static_cast<int32_t>(i);
}

}  // namespace fleettune::engine::models
