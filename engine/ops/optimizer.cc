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
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
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
void SgdRange(const KernelArgs& args, int64_t begin, int64_t end) {
  const auto& a = args.attrs<SgdAttrs>();
  float* p = args.in(0).f32();
  const float* g = args.in(1).f32();
  if (args.num_inputs == 2) {
    for (int64_t i = begin; i < end; ++i) p[i] -= a.lr * (g[i] + a.weight_decay * p[i]);
    return;
  }
  const StepInfo& step = *args.step;
  const float w = step.gradient_weight;
  const float decay = step.first_micro_batch() ? a.momentum : 1.0f;
  const float wd = step.first_micro_batch() ? a.weight_decay : 0.0f;
  float* buf = args.in(2).f32();
  if (!step.last_micro_batch()) {
    for (int64_t i = begin; i < end; ++i) buf[i] = decay * buf[i] + (w * g[i] + wd * p[i]);
    return;
  }
  for (int64_t i = begin; i < end; ++i) {
    buf[i] = decay * buf[i] + (w * g[i] + wd * p[i]);
    p[i] -= a.lr * buf[i];
  }
}

// The trained rows only: the gradient's elements.
void SgdKernel(const KernelArgs& args) { SgdRange(args, 0, args.in(1).num_elements()); }

// Split over threads: with micro-batches an update runs once per slice, and
// one thread streams parameter, gradient and buffer at about half the
// machine's bandwidth.
void SgdFast(const KernelArgs& args) {
  kernels::ParallelFor(args.in(1).num_elements(), 3,
                       [&](int64_t begin, int64_t end) { SgdRange(args, begin, end); });
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

}  // namespace fleettune::engine::ops
