// Optimizer updates as graph nodes: kSgdUpdate and kAdamWUpdate.
//
// They have no output: they overwrite their parameter and state inputs in
// place, which is what lets the compiler schedule each update right after its
// gradient is complete. Semantics follow torch.optim (checked by the golden
// test). Not differentiable: an update is a side effect, not a function the
// loss depends on.
//
// Partial-channel updates (attrs.rows > 0) train rows [0, rows) of the
// parameter only: the gradient and the optimizer state are [rows, ...] and the
// kernels touch the first rows·(row size) elements, which are exactly those
// rows in row-major layout. The other rows are never read or written.
#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "engine/kernels/gemm.h"
#include "engine/kernels/parallel.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

// in[0] is the parameter; the gradient and state operands must be its type,
// or with rows > 0 its type with dim 0 cut to `rows`.
absl::Status CheckOperands(const Node& node, absl::Span<const TensorType* const> in, int64_t rows) {
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "parameter"));
  TensorType want = *in[0];
  if (rows != 0) {
    if (rows < 0 || want.shape.empty() || rows > want.shape[0]) {
      return OpError(node, "rows ", rows, " must be in [1, dim 0] of the parameter ",
                     TypeToString(*in[0]));
    }
    want.shape[0] = rows;
  }
  for (size_t i = 1; i < in.size(); ++i) {
    RETURN_IF_ERROR(ExpectDType(node, *in[i], DType::kF32, "operand"));
    if (*in[i] != want) {
      return OpError(node, "operand ", i, " is ", TypeToString(*in[i]), " but must be ",
                     TypeToString(want), " for the parameter ", TypeToString(*in[0]),
                     rows != 0 ? absl::StrCat(" with rows ", rows) : std::string());
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorType> InferSgd(const Node& node, absl::Span<const TensorType* const> in) {
  const auto* attrs = std::get_if<SgdAttrs>(&node.attrs);
  if (attrs == nullptr) return OpError(node, "needs SgdAttrs");
  const bool wants_buffer = attrs->momentum != 0.0f;
  if (wants_buffer != (in.size() == 3)) {
    return OpError(node,
                   "takes (param, grad, momentum_buffer) with momentum and (param, grad) "
                   "without, got ",
                   in.size(), " inputs");
  }
  RETURN_IF_ERROR(CheckOperands(node, in, attrs->rows));
  return TensorType{DType::kF32, {}};
}

//   g = grad + wd·p;   buf = momentum·buf + g (when momentum ≠ 0);   p -= lr·buf
// The buffer starts at zero, so the first step gives buf = g as torch does.
//
// A micro-batched step accumulates in the buffer: slice k adds w_k·grad_k
// (StepInfo::gradient_weight), the first slice also decays the buffer and adds
// the weight decay, and the last applies the buffer. Since Σ w_k·grad_k is the
// batch's gradient, that is the same update as one pass over the whole batch,
// up to the order of the sums. The runtime allows micro-batches only with a
// momentum buffer to accumulate in. With one slice (w = 1) this is exactly
// the unsliced update.
//
// `buf` is null without momentum.
void SgdRange(const SgdAttrs& a, const StepInfo& step, float* p, const float* g, float* buf,
              int64_t begin, int64_t end) {
  if (buf == nullptr) {
    for (int64_t i = begin; i < end; ++i) p[i] -= a.lr * (g[i] + a.weight_decay * p[i]);
    return;
  }
  const float w = step.gradient_weight;
  const float decay = step.first_micro_batch() ? a.momentum : 1.0f;
  const float wd = step.first_micro_batch() ? a.weight_decay : 0.0f;
  if (!step.last_micro_batch()) {
    if (wd == 0.0f) {  // a later slice: leaves p unread (w·g + 0·p is w·g for finite p)
      for (int64_t i = begin; i < end; ++i) buf[i] = decay * buf[i] + w * g[i];
      return;
    }
    for (int64_t i = begin; i < end; ++i) buf[i] = decay * buf[i] + (w * g[i] + wd * p[i]);
    return;
  }
  for (int64_t i = begin; i < end; ++i) {
    buf[i] = decay * buf[i] + (w * g[i] + wd * p[i]);
    p[i] -= a.lr * buf[i];
  }
}

float* MomentumBuffer(const KernelArgs& args, int index) {
  return args.num_inputs > index ? args.in(index).f32() : nullptr;
}

// The trained rows only: the gradient's elements.
void SgdKernel(const KernelArgs& args) {
  SgdRange(args.attrs<SgdAttrs>(), *args.step, args.in(0).f32(), args.in(1).f32(),
           MomentumBuffer(args, 2), 0, args.in(1).num_elements());
}

// Split over threads: with micro-batches an update runs once per slice, and
// one thread streams parameter, gradient and buffer at about half the
// machine's bandwidth.
void SgdFast(const KernelArgs& args) {
  const auto& a = args.attrs<SgdAttrs>();
  float* p = args.in(0).f32();
  const float* g = args.in(1).f32();
  float* buf = MomentumBuffer(args, 2);
  kernels::ParallelFor(args.in(1).num_elements(), 3, [&](int64_t begin, int64_t end) {
    SgdRange(a, *args.step, p, g, buf, begin, end);
  });
}

// kSgdMatMulUpdate: the update above with gradient g = op(a)·op(b), inputs
// (parameter, a, b[, momentum buffer]). The fuse_updates pass emits it for a
// weight gradient (dW = dYᵀ·X) that only its update reads, so g is never
// stored: the GEMM accumulates into the momentum buffer, which is where the
// update would have added it anyway.
struct ProductDims {
  int64_t m, k, n;
};

ProductDims GetProductDims(const Shape& a, const Shape& b, const MatMulAttrs& t) {
  return {t.transpose_a ? a[1] : a[0], t.transpose_a ? a[0] : a[1], t.transpose_b ? b[0] : b[1]};
}

absl::StatusOr<TensorType> InferSgdMatMul(const Node& node,
                                          absl::Span<const TensorType* const> in) {
  const auto* attrs = std::get_if<FusedSgdAttrs>(&node.attrs);
  if (attrs == nullptr) return OpError(node, "needs FusedSgdAttrs");
  if (attrs->product.folded()) {
    return OpError(node, "the product takes transposes only (no alpha, no interleaved operands)");
  }
  const bool wants_buffer = attrs->sgd.momentum != 0.0f;
  if (wants_buffer != (in.size() == 4)) {
    return OpError(node,
                   "takes (param, a, b, momentum_buffer) with momentum and (param, a, b) "
                   "without, got ",
                   in.size(), " inputs");
  }
  for (int i : {1, 2}) {
    RETURN_IF_ERROR(ExpectDType(node, *in[i], DType::kF32, i == 1 ? "a" : "b"));
    if (in[i]->shape.size() != 2) {
      return OpError(node, i == 1 ? "a" : "b", " must have rank 2, got ", TypeToString(*in[i]));
    }
  }
  const ProductDims d = GetProductDims(in[1]->shape, in[2]->shape, attrs->product);
  const int64_t kb = attrs->product.transpose_b ? in[2]->shape[1] : in[2]->shape[0];
  if (d.k != kb) {
    return OpError(node, "inner dims ", d.k, " vs ", kb, " (a ", TypeToString(*in[1]), ", b ",
                   TypeToString(*in[2]), ")");
  }
  // The product stands where kSgdUpdate's gradient operand would.
  const TensorType grad{DType::kF32, {d.m, d.n}};
  std::vector<const TensorType*> operands = {in[0], &grad};
  if (wants_buffer) operands.push_back(in[3]);
  RETURN_IF_ERROR(CheckOperands(node, operands, attrs->sgd.rows));
  return TensorType{DType::kF32, {}};
}

// Each gradient element as kMatMul's reference computes it, then the
// elementwise update on it.
void SgdMatMulKernel(const KernelArgs& args) {
  const auto& attrs = args.attrs<FusedSgdAttrs>();
  const Shape& as = *args.in(1).shape;
  const Shape& bs = *args.in(2).shape;
  const ProductDims d = GetProductDims(as, bs, attrs.product);
  const float* a = args.in(1).f32();
  const float* b = args.in(2).f32();
  float* p = args.in(0).f32();
  float* buf = MomentumBuffer(args, 3);
  for (int64_t i = 0; i < d.m; ++i) {
    for (int64_t j = 0; j < d.n; ++j) {
      double acc = 0.0;
      for (int64_t q = 0; q < d.k; ++q) {
        const float av = attrs.product.transpose_a ? a[q * as[1] + i] : a[i * as[1] + q];
        const float bv = attrs.product.transpose_b ? b[j * bs[1] + q] : b[q * bs[1] + j];
        acc += static_cast<double>(av) * bv;
      }
      const float g = static_cast<float>(acc);
      const int64_t at = i * d.n + j;
      SgdRange(attrs.sgd, *args.step, p + at, &g, buf == nullptr ? nullptr : buf + at, 0, 1);
    }
  }
}

// A tall gradient, [m, n] with m ≥ 4·n (a vocabulary projection's
// [8192, 256]) over at least 512 samples, is computed transposed, in blocks
// of rows. Over 1024 tokens oneDNN multiplies dYᵀ·X at about 245 GFLOP/s and
// Xᵀ·dY, which gives gᵀ, at about 315 (bench/gemm_bench.cc, BENCHMARKS.md).
// Over 256 (a micro-batch's slice) the gap is 285 against 320, which the
// transposing pass eats: Llama-mini's head ran slower that way. Each block's
// gᵀ goes to a scratch slot small enough to stay in L2, and the update reads
// it from there. Each slot takes one thread, so a team larger than
// kTallSlots keeps the single GEMM.
constexpr int64_t kTallMinRows = 1024;
constexpr int64_t kTallMinDepth = 512;
constexpr int64_t kTallSlots = 4;
constexpr int64_t kTallSlotFloats = int64_t{1} << 16;  // 256 KiB

// Rows per block and the slots a tall gradient uses; rows == 0 when it is
// not tall.
struct RowBlocks {
  int64_t rows = 0, slots = 0;
};

RowBlocks TallSplit(const ProductDims& d) {
  constexpr int64_t kMinBlockRows = 64;
  if (d.m < kTallMinRows || d.m < 4 * d.n || d.k < kTallMinDepth ||
      d.n * kMinBlockRows > kTallSlotFloats) {
    return {};
  }
  const int64_t rows = kTallSlotFloats / d.n;
  return {rows, std::min(kTallSlots, (d.m + rows - 1) / rows)};
}

// The update of `rows` rows of p (and buf) from gᵀ, [n, rows] with row
// stride `rows`: kStrip rows at a time are transposed into `strip`
// ([kStrip, n]) and updated in one contiguous pass.
constexpr int64_t kStrip = 16;

void SgdRowsFromTransposed(const SgdAttrs& a, const StepInfo& step, int64_t rows, int64_t n,
                           const float* gt, float* strip, float* p, float* buf) {
  for (int64_t r0 = 0; r0 < rows; r0 += kStrip) {
    const int64_t rs = std::min(kStrip, rows - r0);
    for (int64_t j = 0; j < n; ++j) {
      const float* col = gt + j * rows + r0;
      for (int64_t r = 0; r < rs; ++r) strip[r * n + j] = col[r];
    }
    const int64_t at = r0 * n;
    SgdRange(a, step, p + at, strip, buf == nullptr ? nullptr : buf + at, 0, rs * n);
  }
}

// g = op(a)·op(b) block by block as gᵀ = op(b)ᵀ·op(a)ᵀ, each block's update
// right after its GEMM. Slot s takes blocks s, s + slots, ...
void TallUpdate(const FusedSgdAttrs& attrs, const StepInfo& step, const ProductDims& d,
                RowBlocks split, const float* a, int64_t lda, const float* b, int64_t ldb, float* p,
                float* buf, float* scratch) {
  const bool ta = attrs.product.transpose_a, tb = attrs.product.transpose_b;
  const int64_t blocks = (d.m + split.rows - 1) / split.rows;
  kernels::ParallelFor(split.slots, kernels::kMinParallelWork, [&](int64_t begin, int64_t end) {
    for (int64_t slot = begin; slot < end; ++slot) {
      float* gt = scratch + slot * (split.rows + kStrip) * d.n;
      float* strip = gt + split.rows * d.n;
      for (int64_t block = slot; block < blocks; block += split.slots) {
        const int64_t r0 = block * split.rows, rows = std::min(split.rows, d.m - r0);
        // gᵀ[:, r0 : r0 + rows] = op(b)ᵀ · (op(a)[r0 : r0 + rows, :])ᵀ
        kernels::Sgemm(!tb, !ta, d.n, rows, d.k, 1.0f, b, ldb, ta ? a + r0 : a + r0 * lda, lda,
                       0.0f, gt, rows);
        SgdRowsFromTransposed(attrs.sgd, step, rows, d.n, gt, strip, p + r0 * d.n,
                              buf == nullptr ? nullptr : buf + r0 * d.n);
      }
    }
  });
}

size_t SgdMatMulScratchBytes(const Node& node, absl::Span<const TensorType* const> in) {
  const auto& attrs = std::get<FusedSgdAttrs>(node.attrs);
  const ProductDims d = GetProductDims(in[1]->shape, in[2]->shape, attrs.product);
  const RowBlocks split = TallSplit(d);
  return static_cast<size_t>(split.slots * (split.rows + kStrip) * d.n) * sizeof(float);
}

// One GEMM into the buffer, then at most one pass over it:
//   momentum: buf = decay·buf + w·g by the GEMM's beta and alpha; the first
//             slice adds wd·p, the last applies p -= lr·buf;
//   none:     p = (1 − lr·wd)·p − lr·g by the GEMM alone.
void SgdMatMulFast(const KernelArgs& args) {
  const auto& attrs = args.attrs<FusedSgdAttrs>();
  const SgdAttrs& sgd = attrs.sgd;
  const Shape& as = *args.in(1).shape;
  const Shape& bs = *args.in(2).shape;
  const ProductDims d = GetProductDims(as, bs, attrs.product);
  const float* a = args.in(1).f32();
  const float* b = args.in(2).f32();
  float* p = args.in(0).f32();
  float* buf = MomentumBuffer(args, 3);
  const bool ta = attrs.product.transpose_a, tb = attrs.product.transpose_b;
  const RowBlocks split = TallSplit(d);
  if (split.rows != 0 && kernels::MaxThreads() <= kTallSlots) {
    TallUpdate(attrs, *args.step, d, split, a, as[1], b, bs[1], p, buf, args.scratch);
    return;
  }
  if (buf == nullptr) {
    kernels::Sgemm(ta, tb, d.m, d.n, d.k, -sgd.lr, a, as[1], b, bs[1],
                   1.0f - sgd.lr * sgd.weight_decay, p, d.n);
    return;
  }
  const StepInfo& step = *args.step;
  const float decay = step.first_micro_batch() ? sgd.momentum : 1.0f;
  const float wd = step.first_micro_batch() ? sgd.weight_decay : 0.0f;
  kernels::Sgemm(ta, tb, d.m, d.n, d.k, step.gradient_weight, a, as[1], b, bs[1], decay, buf, d.n);
  const bool apply = step.last_micro_batch();
  if (wd == 0.0f && !apply) return;
  kernels::ParallelFor(d.m * d.n, 2, [&](int64_t begin, int64_t end) {
    if (wd != 0.0f) {
      for (int64_t i = begin; i < end; ++i) buf[i] += wd * p[i];
    }
    if (apply) {
      for (int64_t i = begin; i < end; ++i) p[i] -= sgd.lr * buf[i];
    }
  });
}

absl::StatusOr<TensorType> InferAdamW(const Node& node, absl::Span<const TensorType* const> in) {
  const auto* attrs = std::get_if<AdamWAttrs>(&node.attrs);
  if (attrs == nullptr) return OpError(node, "needs AdamWAttrs");
  RETURN_IF_ERROR(CheckOperands(node, in, attrs->rows));
  return TensorType{DType::kF32, {}};
}

//   p *= 1 − lr·wd;   m = β1·m + (1−β1)·g;   v = β2·v + (1−β2)·g²
//   p -= lr · (m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + eps)
void AdamWKernel(const KernelArgs& args) {
  const auto& a = args.attrs<AdamWAttrs>();
  float* p = args.in(0).f32();
  const float* g = args.in(1).f32();
  float* m = args.in(2).f32();
  float* v = args.in(3).f32();
  const int64_t n = args.in(1).num_elements();  // the trained rows only
  const double t = static_cast<double>(args.step->step);
  const float bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(a.beta1), t));
  const float bc2_sqrt =
      static_cast<float>(std::sqrt(1.0 - std::pow(static_cast<double>(a.beta2), t)));
  const float step_size = a.lr / bc1;
  const float decay = 1.0f - a.lr * a.weight_decay;
  for (int64_t i = 0; i < n; ++i) {
    p[i] *= decay;
    m[i] = a.beta1 * m[i] + (1.0f - a.beta1) * g[i];
    v[i] = a.beta2 * v[i] + (1.0f - a.beta2) * g[i] * g[i];
    p[i] -= step_size * m[i] / (std::sqrt(v[i]) / bc2_sqrt + a.eps);
  }
}

}  // namespace

OpDef SgdUpdateOpDef() {
  OpDef def;
  def.name = "sgd_update";
  def.attrs_index = AttrsIndexOf<SgdAttrs>();
  def.min_inputs = 2;
  def.max_inputs = 3;
  def.has_output = false;
  def.infer = InferSgd;
  def.reference = SgdKernel;
  def.fast = SgdFast;
  return def;
}

OpDef AdamWUpdateOpDef() {
  OpDef def;
  def.name = "adamw_update";
  def.attrs_index = AttrsIndexOf<AdamWAttrs>();
  def.min_inputs = def.max_inputs = 4;
  def.has_output = false;
  def.infer = InferAdamW;
  def.reference = AdamWKernel;
  return def;
}

OpDef SgdMatMulUpdateOpDef() {
  OpDef def;
  def.name = "sgd_matmul_update";
  def.attrs_index = AttrsIndexOf<FusedSgdAttrs>();
  def.min_inputs = 3;
  def.max_inputs = 4;
  def.has_output = false;
  def.infer = InferSgdMatMul;
  def.reference = SgdMatMulKernel;
  def.fast = SgdMatMulFast;
  def.scratch_bytes = SgdMatMulScratchBytes;
  return def;
}

}  // namespace fleettune::engine::ops
