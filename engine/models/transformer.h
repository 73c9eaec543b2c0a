// Transformer building blocks: graph-building helpers over the engine's ops,
// shared by the BERT-style and Llama-style model builders.
//
//   Graph g;
//   ASSIGN_OR_RETURN(ValueId x, g.AddInput("h", {DType::kF32, {2, 5, 8}}));
//   ASSIGN_OR_RETURN(ValueId pos, g.AddInput("positions", {DType::kI32, {5}}));
//   DecoderLayerConfig config{.hidden = 8, .heads = 2, .kv_heads = 1, .intermediate = 16};
//   ASSIGN_OR_RETURN(ValueId y, AddLlamaDecoderLayer(g, "model.layers.0.", config, x, pos));
//
// Attention is a composite of ops (matmul, softmax, reshape, transpose), not
// one fused op: every piece already has a gradient rule and a fast kernel, the
// softmax output is the only [.., T, S] buffer the backward keeps, and
// autodiff prunes per piece (a frozen q_proj costs no dq). Grouped-query
// attention costs no copy of k or v: q is viewed as [B, Hkv, R, T, D] and the
// batched matmul broadcasts k and v [B, Hkv, 1, S, D] over R. The decoder
// layer keeps the heads in each token's row ([B, T, Hkv, R, D]) through rope,
// so that its head transposes fold into those matmuls (fold_matmul.h).
//
// Errors: InvalidArgument (from the ops' shape inference or the config
// checks) naming the op or field. Not thread-safe (they append to a Graph).
#ifndef FLEETTUNE_ENGINE_MODELS_TRANSFORMER_H_
#define FLEETTUNE_ENGINE_MODELS_TRANSFORMER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/ir/graph.h"

namespace fleettune::engine::models {

// Splits x along `axis` (in [0, rank)) into consecutive pieces of `sizes`,
// which must sum to that dimension: one kSlice per piece.
absl::StatusOr<std::vector<ValueId>> Split(Graph& g, ValueId x, int axis,
                                           const std::vector<int64_t>& sizes);

// silu(a) ⊙ b for a, b of one shape: kActivation (SiLU) then kMul.
absl::StatusOr<ValueId> SwiGlu(Graph& g, ValueId a, ValueId b);

// softmax(q·kᵀ / √D [+ causal mask]) · v per head.
// q [B, Hq, T, D], k and v [B, Hkv, S, D] with Hq a multiple of Hkv: query
// head h attends with kv head h / (Hq / Hkv) (HF's repeat_kv) → [B, Hq, T, D].
// causal: query t sees keys s <= t + (S − T) (SoftmaxAttrs).
absl::StatusOr<ValueId> ScaledDotProductAttention(Graph& g, ValueId q, ValueId k, ValueId v,
                                                  bool causal);

// Mean next-token loss over the counted positions: logits [N, T, V],
// targets i32 [N, T]; a target equal to ignore_index (or outside [0, V)) does
// not count (F.cross_entropy on the flattened logits). Returns an f32 scalar.
absl::StatusOr<ValueId> SequenceCrossEntropy(Graph& g, ValueId logits, ValueId targets,
                                             int32_t ignore_index = -100);

// A Llama / Hugging Face LlamaDecoderLayer (pre-norm, no biases):
//   h = x + o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))
//   y = h + down_proj(silu(gate_proj(m)) ⊙ up_proj(m))
// with n = rms_norm(x), m = rms_norm(h), causal grouped-query attention.
struct DecoderLayerConfig {
  int64_t hidden = 0;
  int64_t heads = 0;         // query heads
  int64_t kv_heads = 0;      // divides heads
  int64_t head_dim = 0;      // 0: hidden / heads
  int64_t intermediate = 0;  // MLP width
  float rms_eps = 1e-6f;
  float rope_base = 10000.0f;
};

// Adds the layer's weights as parameters named as in HF's state_dict under
// `prefix` (e.g. "model.layers.0."): input_layernorm.weight [hidden],
// self_attn.{q,k,v,o}_proj.weight, post_attention_layernorm.weight,
// mlp.{gate,up,down}_proj.weight ([out, in], nn.Linear layout).
// x [B, T, hidden]; positions i32 [T], [1, T] or [B, 1, T] (the same for every
// head). Returns y [B, T, hidden].
absl::StatusOr<ValueId> AddLlamaDecoderLayer(Graph& g, const std::string& prefix,
                                             const DecoderLayerConfig& config, ValueId x,
                                             ValueId positions);

}  // namespace fleettune::engine::models

#endif  // FLEETTUNE_ENGINE_MODELS_TRANSFORMER_H_
