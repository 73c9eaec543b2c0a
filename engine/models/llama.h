// A Llama-style decoder for causal language modelling (Hugging Face's
// LlamaForCausalLM): token embedding, N pre-norm decoder layers (RMSNorm,
// RoPE, grouped-query causal attention, SwiGLU), a final RMSNorm and the
// language-model head, with the mean next-token cross-entropy as the loss.
// Weights are named as in LlamaForCausalLM's state_dict, so HF weights load
// unchanged:
//   model.embed_tokens.weight [vocab, dim]
//   model.layers.{i}.input_layernorm.weight [dim]
//   model.layers.{i}.self_attn.{q,k,v,o}_proj.weight
//   model.layers.{i}.post_attention_layernorm.weight [dim]
//   model.layers.{i}.mlp.{gate,up,down}_proj.weight
//   model.norm.weight [dim]
//   lm_head.weight [vocab, dim] (absent with tie_embeddings)
//
//   LlamaConfig config;
//   config.vocab = 257;  config.dim = 64;  config.layers = 2;  ...
//   ASSIGN_OR_RETURN(LlamaModel m, BuildLlama(config));
//   RETURN_IF_ERROR(InitializeLlama(config, /*seed=*/0, &params));
//   // each step: write tokens, targets and FillLlamaPositions(positions view)
//
// Errors: InvalidArgument naming the bad config field. Not thread-safe (the
// functions build into or write to caller-owned objects).
#ifndef FLEETTUNE_ENGINE_MODELS_LLAMA_H_
#define FLEETTUNE_ENGINE_MODELS_LLAMA_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/models/model.h"
#include "engine/runtime/executable.h"

namespace fleettune::engine::models {

struct LlamaConfig {
  int64_t vocab = 0;
  int64_t dim = 0;       // hidden size
  int64_t layers = 0;    // decoder layers
  int64_t heads = 0;     // query heads; divides dim
  int64_t kv_heads = 0;  // divides heads
  int64_t ffn_dim = 0;   // SwiGLU width (HF's intermediate_size)
  int64_t seq_len = 0;   // T
  int64_t batch = 0;     // B
  float rope_base = 10000.0f;
  float eps = 1e-6f;            // RMSNorm epsilon
  bool tie_embeddings = false;  // lm_head reuses model.embed_tokens.weight
};

// The graph's inputs besides Model's (Model::input is `tokens`, Model::labels
// is `targets`, Model::logits is [B, T, vocab]).
struct LlamaModel {
  Model model;
  ValueId tokens = kNoValue;     // "tokens", i32 [B, T], ids in [0, vocab)
  ValueId targets = kNoValue;    // "targets", i32 [B, T]; -100 (or outside [0, vocab)) is ignored
  ValueId positions = kNoValue;  // "positions", i32 [T]: 0..T-1, see FillLlamaPositions
};

// The input the caller fills with 0..T-1 before each Run() (inputs live in
// the arena, which the plan may reuse).
inline constexpr char kLlamaPositionsInput[] = "positions";

// BuildLlama()
//
// The forward graph with the loss (a scalar, Model::loss) for config.batch
// sequences of config.seq_len tokens. Model::layers lists, in order,
// "model.embed_tokens", "model.layers.{i}", "model.norm" and "lm_head" (the
// last only without tie_embeddings) with their weights. InvalidArgument for a
// non-positive size, heads not dividing dim or kv_heads not dividing heads.
absl::StatusOr<LlamaModel> BuildLlama(const LlamaConfig& config);

// InitializeLlama()
//
// HF's LlamaPreTrainedModel._init_weights: every linear and the embedding
// from N(0, 0.02²), every RMSNorm weight 1; deterministic per seed.
// InvalidArgument as BuildLlama(), except that seq_len and batch are ignored.
absl::Status InitializeLlama(const LlamaConfig& config, uint64_t seed,
                             runtime::ParameterStore* params);

// Writes 0, 1, ..., n-1 into an i32 buffer of n elements.
void FillLlamaPositions(int32_t* positions, int64_t n);

}  // namespace fleettune::engine::models

#endif  // FLEETTUNE_ENGINE_MODELS_LLAMA_H_
