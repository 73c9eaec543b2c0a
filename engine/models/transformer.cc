#include "engine/models/transformer.h"

#include <cmath>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::models {
namespace {

absl::Status ExpectRank(const Graph& g, ValueId v, size_t rank, const char* what) {
  if (!g.IsValid(v)) return absl::InvalidArgumentError(absl::StrCat(what, ": no value %", v));
  if (g.type(v).shape.size() != rank) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must have rank ", rank, ", got ", TypeToString(g.type(v))));
  }
  return absl::OkStatus();
}

// Positions broadcastable to [B, heads, T] ([T], or [B, 1, T]) as the same
// positions for the heads-in-rows layout [B, T, Hkv, G]: [T, 1, 1] or
// [B, T, 1, 1].
absl::StatusOr<ValueId> PositionsPerToken(Graph& g, ValueId positions) {
  if (!g.IsValid(positions)) {
    return absl::InvalidArgumentError(absl::StrCat("decoder layer: no positions %", positions));
  }
  const Shape& ps = g.type(positions).shape;
  const size_t r = ps.size();
  if (r == 0 || r > 3 || (r >= 2 && ps[r - 2] != 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("decoder layer positions must be [T], [1, T] or [B, 1, T], got ",
                     TypeToString(g.type(positions))));
  }
  Shape per_token = {ps[r - 1], 1, 1};
  if (r == 3) per_token.insert(per_token.begin(), ps[0]);
  return g.AddNode(OpKind::kReshape, {positions}, ShapeAttrs{std::move(per_token)});
}

}  // namespace

absl::StatusOr<std::vector<ValueId>> Split(Graph& g, ValueId x, int axis,
                                           const std::vector<int64_t>& sizes) {
  if (!g.IsValid(x)) return absl::InvalidArgumentError(absl::StrCat("split: no value %", x));
  const Shape& s = g.type(x).shape;
  if (axis < 0 || axis >= static_cast<int>(s.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("split: axis ", axis, " out of range for ", TypeToString(g.type(x))));
  }
  int64_t total = 0;
  for (int64_t n : sizes) {
    if (n < 0) return absl::InvalidArgumentError(absl::StrCat("split: negative size ", n));
    total += n;
  }
  if (total != s[axis]) {
    return absl::InvalidArgumentError(absl::StrCat("split: sizes sum to ", total, " but axis ",
                                                   axis, " of ", TypeToString(g.type(x)), " has ",
                                                   s[axis]));
  }
  std::vector<ValueId> pieces;
  int64_t offset = 0;
  for (int64_t n : sizes) {
    SliceAttrs slice;
    slice.begin.assign(s.size(), 0);
    slice.end = g.type(x).shape;
    slice.step.assign(s.size(), 1);
    slice.begin[axis] = offset;
    slice.end[axis] = offset + n;
    ASSIGN_OR_RETURN(ValueId piece, g.AddNode(OpKind::kSlice, {x}, std::move(slice)));
    pieces.push_back(piece);
    offset += n;
  }
  return pieces;
}

absl::StatusOr<ValueId> SwiGlu(Graph& g, ValueId a, ValueId b) {
  ASSIGN_OR_RETURN(ValueId silu,
                   g.AddNode(OpKind::kActivation, {a}, ActivationAttrs{ActivationFn::kSilu}));
  return g.AddNode(OpKind::kMul, {silu, b});
}

namespace {

// softmax(q·kᵀ / √D [+ causal mask]) · v for q [..., T, D] and k, v
// [..., S, D] whose batch dimensions broadcast to q's.
absl::StatusOr<ValueId> Attend(Graph& g, ValueId q, ValueId k, ValueId v, bool causal) {
  const int64_t dim = g.type(q).shape.back();
  // Scaling q rather than the scores touches T·D instead of T·S elements;
  // next to the matmul, a power of two folds into it (fold_matmul.h).
  ASSIGN_OR_RETURN(
      ValueId scaled,
      g.AddNode(OpKind::kScale, {q}, ScalarAttrs{static_cast<float>(1.0 / std::sqrt(double(dim)))},
                "attention.scale"));
  ASSIGN_OR_RETURN(ValueId scores, g.AddNode(OpKind::kMatMul, {scaled, k}, MatMulAttrs{false, true},
                                             "attention.scores"));
  ASSIGN_OR_RETURN(ValueId probs,
                   g.AddNode(OpKind::kSoftmax, {scores}, SoftmaxAttrs{causal}, "attention.probs"));
  return g.AddNode(OpKind::kMatMul, {probs, v}, MatMulAttrs{}, "attention.out");
}

}  // namespace

absl::StatusOr<ValueId> ScaledDotProductAttention(Graph& g, ValueId q, ValueId k, ValueId v,
                                                  bool causal) {
  RETURN_IF_ERROR(ExpectRank(g, q, 4, "attention q"));
  RETURN_IF_ERROR(ExpectRank(g, k, 4, "attention k"));
  RETURN_IF_ERROR(ExpectRank(g, v, 4, "attention v"));
  const Shape qs = g.type(q).shape, ks = g.type(k).shape;
  const int64_t batch = qs[0], heads = qs[1], t = qs[2], dim = qs[3];
  const int64_t kv_heads = ks[1], s = ks[2];
  if (g.type(v).shape != ks || ks[0] != batch || ks[3] != dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention: k ", TypeToString(g.type(k)), " and v ", TypeToString(g.type(v)),
                     " must be equal and fit q ", TypeToString(g.type(q)), " as [B, Hkv, S, D]"));
  }
  if (kv_heads <= 0 || heads % kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "attention: ", heads, " query heads are not a multiple of ", kv_heads, " key/value heads"));
  }
  const int64_t group = heads / kv_heads;
  if (group == 1) return Attend(g, q, k, v, causal);
  // Query heads h = kv·G + g meet kv head kv by broadcasting along G.
  ASSIGN_OR_RETURN(ValueId q5,
                   g.AddNode(OpKind::kReshape, {q}, ShapeAttrs{{batch, kv_heads, group, t, dim}}));
  ASSIGN_OR_RETURN(ValueId k5,
                   g.AddNode(OpKind::kReshape, {k}, ShapeAttrs{{batch, kv_heads, 1, s, dim}}));
  ASSIGN_OR_RETURN(ValueId v5,
                   g.AddNode(OpKind::kReshape, {v}, ShapeAttrs{{batch, kv_heads, 1, s, dim}}));
  ASSIGN_OR_RETURN(ValueId out, Attend(g, q5, k5, v5, causal));
  return g.AddNode(OpKind::kReshape, {out}, ShapeAttrs{qs});
}

absl::StatusOr<ValueId> SequenceCrossEntropy(Graph& g, ValueId logits, ValueId targets,
                                             int32_t ignore_index) {
  RETURN_IF_ERROR(ExpectRank(g, logits, 3, "sequence cross-entropy logits"));
  const Shape& ls = g.type(logits).shape;
  const int64_t rows = ls[0] * ls[1];
  if (g.type(targets) != TensorType{DType::kI32, {ls[0], ls[1]}}) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequence cross-entropy: targets must be i32[", ls[0], ", ", ls[1], "] for logits ",
        TypeToString(g.type(logits)), ", got ", TypeToString(g.type(targets))));
  }
  ASSIGN_OR_RETURN(ValueId flat_logits,
                   g.AddNode(OpKind::kReshape, {logits}, ShapeAttrs{{rows, ls[2]}}));
  ASSIGN_OR_RETURN(ValueId flat_targets,
                   g.AddNode(OpKind::kReshape, {targets}, ShapeAttrs{{rows}}));
  return g.AddNode(OpKind::kSoftmaxCrossEntropy, {flat_logits, flat_targets},
                   CrossEntropyAttrs{ignore_index}, "loss");
}

absl::StatusOr<ValueId> AddLlamaDecoderLayer(Graph& g, const std::string& prefix,
                                             const DecoderLayerConfig& config, ValueId x,
                                             ValueId positions) {
  RETURN_IF_ERROR(ExpectRank(g, x, 3, "decoder layer input"));
  const int64_t hidden = config.hidden, heads = config.heads, kv_heads = config.kv_heads;
  if (hidden <= 0 || heads <= 0 || kv_heads <= 0 || config.intermediate <= 0 ||
      heads % kv_heads != 0 || (config.head_dim == 0 && hidden % heads != 0) ||
      config.head_dim < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "decoder layer config: need hidden, heads, kv_heads, intermediate > 0, kv_heads dividing "
        "heads and head_dim > 0 or heads dividing hidden; got hidden=",
        hidden, " heads=", heads, " kv_heads=", kv_heads, " head_dim=", config.head_dim,
        " intermediate=", config.intermediate));
  }
  const Shape xs = g.type(x).shape;
  if (xs[2] != hidden) {
    return absl::InvalidArgumentError(absl::StrCat("decoder layer input ", TypeToString(g.type(x)),
                                                   " does not end in hidden=", hidden));
  }
  const int64_t head_dim = config.head_dim > 0 ? config.head_dim : hidden / heads;
  auto param = [&](const std::string& name, Shape shape) {
    return g.AddParameter(prefix + name, {DType::kF32, std::move(shape)});
  };
  auto linear = [&](ValueId in, const std::string& name, int64_t out) -> absl::StatusOr<ValueId> {
    const int64_t features = g.type(in).shape.back();
    ASSIGN_OR_RETURN(ValueId w, param(name + ".weight", {out, features}));
    return g.AddNode(OpKind::kLinear, {in, w}, NoAttrs{}, prefix + name);
  };
  auto rms_norm = [&](ValueId in, const std::string& name) -> absl::StatusOr<ValueId> {
    ASSIGN_OR_RETURN(ValueId w, param(name + ".weight", {hidden}));
    return g.AddNode(OpKind::kRmsNorm, {in, w}, NormAttrs{config.rms_eps}, prefix + name);
  };
  const RopeAttrs rope{config.rope_base, false};
  const int64_t group = heads / kv_heads;

  // Attention block. The heads stay in each token's row, [B, T, Hkv, G, D]
  // (k and v with G = 1): rope rotates them there, and the transposes to
  // [B, Hkv, G, T, D], where query heads kv·G + g meet kv head kv by
  // broadcasting, fold into the attention's matmuls (fold_matmul.h).
  ASSIGN_OR_RETURN(ValueId n, rms_norm(x, "input_layernorm"));
  ASSIGN_OR_RETURN(ValueId q, linear(n, "self_attn.q_proj", heads * head_dim));
  ASSIGN_OR_RETURN(ValueId k, linear(n, "self_attn.k_proj", kv_heads * head_dim));
  ASSIGN_OR_RETURN(ValueId v, linear(n, "self_attn.v_proj", kv_heads * head_dim));
  ASSIGN_OR_RETURN(ValueId token_positions, PositionsPerToken(g, positions));
  auto heads_of = [&](ValueId in, int64_t per_kv, const std::string& name,
                      bool rotate) -> absl::StatusOr<ValueId> {
    ASSIGN_OR_RETURN(ValueId r, g.AddNode(OpKind::kReshape, {in},
                                          ShapeAttrs{{xs[0], xs[1], kv_heads, per_kv, head_dim}},
                                          prefix + name + ".heads"));
    if (rotate) {
      ASSIGN_OR_RETURN(
          r, g.AddNode(OpKind::kRope, {r, token_positions}, rope, prefix + name + ".rope"));
    }
    return g.AddNode(OpKind::kTranspose, {r}, PermuteAttrs{{0, 2, 3, 1, 4}},
                     prefix + name + ".transpose");
  };
  ASSIGN_OR_RETURN(q, heads_of(q, group, "self_attn.q", /*rotate=*/true));
  ASSIGN_OR_RETURN(k, heads_of(k, 1, "self_attn.k", /*rotate=*/true));
  ASSIGN_OR_RETURN(v, heads_of(v, 1, "self_attn.v", /*rotate=*/false));
  ASSIGN_OR_RETURN(ValueId a, Attend(g, q, k, v, /*causal=*/true));
  ASSIGN_OR_RETURN(a, g.AddNode(OpKind::kTranspose, {a}, PermuteAttrs{{0, 3, 1, 2, 4}}));
  ASSIGN_OR_RETURN(a,
                   g.AddNode(OpKind::kReshape, {a}, ShapeAttrs{{xs[0], xs[1], heads * head_dim}}));
  ASSIGN_OR_RETURN(a, linear(a, "self_attn.o_proj", hidden));
  ASSIGN_OR_RETURN(ValueId h, g.AddNode(OpKind::kAdd, {x, a}, NoAttrs{}, prefix + "attn_residual"));

  // MLP block.
  ASSIGN_OR_RETURN(ValueId m, rms_norm(h, "post_attention_layernorm"));
  ASSIGN_OR_RETURN(ValueId gate, linear(m, "mlp.gate_proj", config.intermediate));
  ASSIGN_OR_RETURN(ValueId up, linear(m, "mlp.up_proj", config.intermediate));
  ASSIGN_OR_RETURN(ValueId act, SwiGlu(g, gate, up));
  ASSIGN_OR_RETURN(ValueId down, linear(act, "mlp.down_proj", hidden));
  return g.AddNode(OpKind::kAdd, {h, down}, NoAttrs{}, prefix + "mlp_residual");
}

}  // namespace fleettune::engine::models
