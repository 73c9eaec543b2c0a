// A BERT-style encoder with a sequence-classification head (Hugging Face's
// BertForSequenceClassification): word + position + token-type embeddings,
// LayerNorm, N post-norm encoder layers (biased q/k/v/out projections,
// bidirectional multi-head attention, GELU(erf) feed-forward), the pooler
// (first token → dense → tanh), the classifier and softmax cross-entropy.
// Weights are named as in BertForSequenceClassification's state_dict, so HF
// weights load unchanged:
//   bert.embeddings.{word,position,token_type}_embeddings.weight
//   bert.embeddings.LayerNorm.{weight,bias}
//   bert.encoder.layer.{i}.attention.self.{query,key,value}.{weight,bias}
//   bert.encoder.layer.{i}.attention.output.{dense,LayerNorm}.{weight,bias}
//   bert.encoder.layer.{i}.intermediate.dense.{weight,bias}
//   bert.encoder.layer.{i}.output.{dense,LayerNorm}.{weight,bias}
//   bert.pooler.dense.{weight,bias}
//   classifier.{weight,bias}
//
//   BertConfig config;
//   config.vocab = 30522;  config.hidden = 256;  config.layers = 4;  ...
//   ASSIGN_OR_RETURN(BertModel m, BuildBert(config, Mode::kTrain));
//   RETURN_IF_ERROR(InitializeBert(config, /*seed=*/0, &params));
//   // each step: write input_ids, token_type_ids, labels and
//   // FillBertPositions(position_ids view)
//
// Mode::kTrain applies dropout with probability config.dropout (HF's
// hidden_dropout_prob) after the embedding LayerNorm, after each attention
// output projection, after each FFN output projection and before the
// classifier, as HF does. Attention-probability dropout (HF's
// attention_probs_dropout_prob) is not applied: the shared attention helper
// has no dropout site (TODO(#5)). Mode::kEval has no dropout. With
// dropout = 0 both modes build the same graph. No attention mask: every
// sequence is a full seq_len tokens (no padding).
//
// Errors: InvalidArgument naming the bad config field. Not thread-safe (the
// functions build into or write to caller-owned objects).
#ifndef FLEETTUNE_ENGINE_MODELS_BERT_H_
#define FLEETTUNE_ENGINE_MODELS_BERT_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/models/model.h"
#include "engine/runtime/executable.h"

namespace fleettune::engine::models {

struct BertConfig {
  int64_t vocab = 0;          // HF's vocab_size
  int64_t hidden = 0;         // hidden_size
  int64_t layers = 0;         // num_hidden_layers
  int64_t heads = 0;          // num_attention_heads; divides hidden
  int64_t ffn = 0;            // intermediate_size
  int64_t max_positions = 0;  // max_position_embeddings; at least seq_len
  int64_t type_vocab = 2;     // type_vocab_size
  int64_t seq_len = 0;        // T
  int64_t batch = 0;          // B
  int64_t num_labels = 0;     // classifier outputs
  float eps = 1e-12f;         // layer_norm_eps
  float dropout = 0.1f;       // hidden_dropout_prob, Mode::kTrain only; in [0, 1)
  uint64_t dropout_seed = 0;  // each dropout site uses dropout_seed + its index
};

// The graph's inputs besides Model's (Model::input is `input_ids`,
// Model::labels is `labels` i32 [B], Model::logits is [B, num_labels]).
struct BertModel {
  Model model;
  ValueId input_ids = kNoValue;       // "input_ids", i32 [B, T], ids in [0, vocab)
  ValueId token_type_ids = kNoValue;  // "token_type_ids", i32 [B, T], in [0, type_vocab)
  ValueId position_ids = kNoValue;    // "position_ids", i32 [T]: 0..T-1, see FillBertPositions
};

// The input the caller fills with 0..T-1 before each Run() (inputs live in
// the arena, which the plan may reuse).
inline constexpr char kBertPositionsInput[] = "position_ids";

// BuildBert()
//
// The forward graph with the loss (a scalar, Model::loss: mean softmax
// cross-entropy of the logits against `labels`). Model::layers lists, in
// order, "bert.embeddings", "bert.encoder.layer.{i}", "bert.pooler" and
// "classifier" with their weights. InvalidArgument for a non-positive size,
// heads not dividing hidden, seq_len above max_positions, a non-positive eps
// or a dropout outside [0, 1).
absl::StatusOr<BertModel> BuildBert(const BertConfig& config, Mode mode);

// InitializeBert()
//
// HF's BertPreTrainedModel._init_weights: every linear weight and embedding
// from N(0, 0.02²), linear biases 0, LayerNorm weight 1 and bias 0;
// deterministic per seed. InvalidArgument as BuildBert(), except that seq_len
// and batch are ignored.
absl::Status InitializeBert(const BertConfig& config, uint64_t seed,
                            runtime::ParameterStore* params);

// Writes 0, 1, ..., n-1 into an i32 buffer of n elements.
void FillBertPositions(int32_t* positions, int64_t n);

}  // namespace fleettune::engine::models

#endif  // FLEETTUNE_ENGINE_MODELS_BERT_H_
