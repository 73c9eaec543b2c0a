// kSoftmaxCrossEntropy and its backward-only companion.
//
// logits [N, C] f32, labels [N] i32 → loss f32[] = mean over the counted
// samples of  logsumexp(z_n) − z_n[label_n].  A sample is counted when its
// label is in [0, C) and differs from ignore_index; labels outside [0, C) are
// skipped rather than read out of bounds (data loaders reject them earlier
// with a clear error). With no counted sample the loss is 0.
#include <algorithm>
#include <cmath>

#include "engine/base/status_macros.h"
#include "engine/kernels/exp_sum.h"
#include "engine/kernels/parallel.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

absl::Status CheckLogitsAndLabels(const Node& node, const TensorType& logits,
                                  const TensorType& labels) {
  RETURN_IF_ERROR(ExpectDType(node, logits, DType::kF32, "logits"));
  RETURN_IF_ERROR(ExpectRank(node, logits, 2, "logits"));
  RETURN_IF_ERROR(ExpectDType(node, labels, DType::kI32, "labels"));
  if (labels.shape != Shape{logits.shape[0]}) {
    return OpError(node, "labels must be i32[", logits.shape[0], "] for logits ",
                   TypeToString(logits), ", got ", TypeToString(labels));
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  if (!std::holds_alternative<CrossEntropyAttrs>(node.attrs)) {
    return OpError(node, "needs CrossEntropyAttrs");
  }
  RETURN_IF_ERROR(CheckLogitsAndLabels(node, *in[0], *in[1]));
  return TensorType{DType::kF32, {}};
}

bool Counted(int32_t label, int64_t classes, int32_t ignore_index) {
  return label != ignore_index && label >= 0 && label < classes;
}

int64_t CountedSamples(const int32_t* labels, int64_t n, int64_t classes, int32_t ignore) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) count += Counted(labels[i], classes, ignore);
  return count;
}

// Row maximum and log Σ exp(z − max), for a numerically stable log-softmax.
void RowStats(const float* z, int64_t c, float* max_out, float* log_sum_out) {
  float m = z[0];
  for (int64_t j = 1; j < c; ++j) m = std::max(m, z[j]);
  double s = 0.0;
  for (int64_t j = 0; j < c; ++j) s += std::exp(static_cast<double>(z[j] - m));
  *max_out = m;
  *log_sum_out = static_cast<float>(std::log(s));
}

void Kernel(const KernelArgs& args) {
  const int32_t ignore = args.attrs<CrossEntropyAttrs>().ignore_index;
  const Shape& ls = *args.in(0).shape;
  const int64_t n = ls[0], c = ls[1];
  const float* z = args.in(0).f32();
  const int32_t* labels = args.in(1).i32();
  const int64_t count = CountedSamples(labels, n, c, ignore);
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    if (!Counted(labels[i], c, ignore)) continue;
    float m, log_sum;
    RowStats(z + i * c, c, &m, &log_sum);
    total += static_cast<double>(m) + log_sum - z[i * c + labels[i]];
  }
  args.output.f32()[0] = count == 0 ? 0.0f : static_cast<float>(total / count);
}

// The fast kernels: rows split over the threads, exp and sums vectorized at
// the class's ISA width (engine/kernels/exp_sum.h). A language model's logits
// are [B·T, vocab]: millions of exps per step, which libm's scalar exp made a
// third of a Llama step.

// Row maximum and log Σ exp(z − max), vectorized: the statistics
// kernels::ScaledSoftmaxRow returns to the gradient, so that an absorbed
// loss has these bits.
void FastRowStats(const float* z, int64_t c, float* max_out, float* log_sum_out) {
  const float m = kernels::RowMax(z, c);
  *max_out = m;
  *log_sum_out = std::log(kernels::ExpShiftedSum(z, c, m, nullptr));
}

// Per-row losses go to scratch (one double per row), then one ordered sum:
// the result does not depend on how rows were split.
size_t FastScratchBytes(const Node&, absl::Span<const TensorType* const> in) {
  return in[0]->shape.size() == 2 ? static_cast<size_t>(in[0]->shape[0]) * sizeof(double) : 0;
}

// The loss from per-row losses: one ordered sum over the counted rows.
float MeanLoss(const double* row_loss, const int32_t* labels, int64_t n, int64_t c,
               int32_t ignore) {
  const int64_t count = CountedSamples(labels, n, c, ignore);
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += row_loss[i];
  return count == 0 ? 0.0f : static_cast<float>(total / count);
}

void FastKernel(const KernelArgs& args) {
  const int32_t ignore = args.attrs<CrossEntropyAttrs>().ignore_index;
  const Shape& ls = *args.in(0).shape;
  const int64_t n = ls[0], c = ls[1];
  const float* z = args.in(0).f32();
  const int32_t* labels = args.in(1).i32();
  double* row_loss = reinterpret_cast<double*>(args.scratch);
  kernels::ParallelFor(n, 2 * c, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      row_loss[i] = 0.0;
      if (!Counted(labels[i], c, ignore)) continue;
      float m, log_sum;
      FastRowStats(z + i * c, c, &m, &log_sum);
      row_loss[i] = static_cast<double>(m) + log_sum - z[i * c + labels[i]];
    }
  });
  args.output.f32()[0] = MeanLoss(row_loss, labels, n, c, ignore);
}

// dz[n, j] = dy · (softmax(z_n)[j] − [j == label_n]) / count  for counted rows, else 0.
absl::Status Gradient(GradContext& ctx) {
  if (!ctx.NeedsGrad(0)) return absl::OkStatus();
  ASSIGN_OR_RETURN(ValueId dz, ctx.Emit(OpKind::kSoftmaxCrossEntropyGrad,
                                        {ctx.input(0), ctx.input(1), ctx.dy()}, ctx.node().attrs));
  ctx.SetGrad(0, dz);
  return absl::OkStatus();
}

std::vector<bool> DifferentiableInputs(const Node&) { return {true, false}; }

std::vector<OpTestCase> TestCases() {
  OpTestCase c;
  c.inputs = {{DType::kF32, {5, 4}}, {DType::kI32, {5}}};
  c.attrs = CrossEntropyAttrs{};
  c.int_upper = 4;
  OpTestCase ignored = c;
  ignored.attrs = CrossEntropyAttrs{2};  // label 2 rows are skipped
  return {c, ignored};
}

// The gradient's cases (logits, labels, dloss): the in-place test runs them
// with dlogits over the logits.
std::vector<OpTestCase> GradTestCases() {
  std::vector<OpTestCase> cases = TestCases();
  for (OpTestCase& c : cases) c.inputs.push_back({DType::kF32, {}});
  OpTestCase wide;  // a row wider than the vector tail
  wide.inputs = {{DType::kF32, {3, 37}}, {DType::kI32, {3}}, {DType::kF32, {}}};
  wide.attrs = CrossEntropyAttrs{};
  wide.int_upper = 37;
  cases.push_back(wide);
  return cases;
}

absl::StatusOr<TensorType> InferGrad(const Node& node, absl::Span<const TensorType* const> in) {
  if (!std::holds_alternative<CrossEntropyAttrs>(node.attrs)) {
    return OpError(node, "needs CrossEntropyAttrs");
  }
  RETURN_IF_ERROR(CheckLogitsAndLabels(node, *in[0], *in[1]));
  if (*in[2] != TensorType{DType::kF32, {}}) {
    return OpError(node, "dy must be f32[], got ", TypeToString(*in[2]));
  }
  return *in[0];
}

void GradKernel(const KernelArgs& args) {
  const int32_t ignore = args.attrs<CrossEntropyAttrs>().ignore_index;
  const Shape& ls = *args.in(0).shape;
  const int64_t n = ls[0], c = ls[1];
  const float* z = args.in(0).f32();
  const int32_t* labels = args.in(1).i32();
  const float dy = args.in(2).f32()[0];
  float* dz = args.output.f32();
  const int64_t count = CountedSamples(labels, n, c, ignore);
  const float scale = count == 0 ? 0.0f : dy / static_cast<float>(count);
  for (int64_t i = 0; i < n; ++i) {
    float* row = dz + i * c;
    if (!Counted(labels[i], c, ignore)) {
      std::fill_n(row, c, 0.0f);
      continue;
    }
    float m, log_sum;
    RowStats(z + i * c, c, &m, &log_sum);
    for (int64_t j = 0; j < c; ++j) row[j] = std::exp(z[i * c + j] - m - log_sum) * scale;
    row[labels[i]] -= scale;
  }
}

void FastGradKernel(const KernelArgs& args) {
  const int32_t ignore = args.attrs<CrossEntropyAttrs>().ignore_index;
  const Shape& ls = *args.in(0).shape;
  const int64_t n = ls[0], c = ls[1];
  const float* z = args.in(0).f32();
  const int32_t* labels = args.in(1).i32();
  const float dy = args.in(2).f32()[0];
  float* dz = args.output.f32();
  const int64_t count = CountedSamples(labels, n, c, ignore);
  const float scale = count == 0 ? 0.0f : dy / static_cast<float>(count);
  // With an absorbed loss node, each row's loss as FastKernel computes it.
  double* row_loss =
      args.cross_entropy_loss == nullptr ? nullptr : reinterpret_cast<double*>(args.scratch);
  kernels::ParallelFor(n, 3 * c, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* row = dz + i * c;
      if (row_loss != nullptr) row_loss[i] = 0.0;
      if (!Counted(labels[i], c, ignore)) {
        std::fill_n(row, c, 0.0f);
        continue;
      }
      // Read before the row's exps overwrite it (dz may be z).
      const float z_label = z[i * c + labels[i]];
      // softmax · scale, through the row's exps in dz itself.
      const kernels::SoftmaxRowStats stats = kernels::ScaledSoftmaxRow(z + i * c, c, scale, row);
      if (row_loss != nullptr) {
        row_loss[i] = static_cast<double>(stats.max) + std::log(stats.sum) - z_label;
      }
      row[labels[i]] -= scale;
    }
  });
  if (row_loss != nullptr) *args.cross_entropy_loss = MeanLoss(row_loss, labels, n, c, ignore);
}

}  // namespace

OpDef SoftmaxCrossEntropyOpDef() {
  OpDef def;
  def.name = "softmax_cross_entropy";
  def.attrs_index = AttrsIndexOf<CrossEntropyAttrs>();
  def.min_inputs = def.max_inputs = 2;
  def.infer = Infer;
  def.reference = Kernel;
  def.fast = FastKernel;
  def.scratch_bytes = FastScratchBytes;
  def.gradient = Gradient;
  def.differentiable_inputs = DifferentiableInputs;
  def.test_cases = TestCases;
  return def;
}

// Not differentiable: emitted only by the loss's gradient rule (no second order).
OpDef SoftmaxCrossEntropyGradOpDef() {
  OpDef def;
  def.name = "softmax_cross_entropy_grad";
  def.attrs_index = AttrsIndexOf<CrossEntropyAttrs>();
  def.min_inputs = def.max_inputs = 3;
  def.infer = InferGrad;
  def.reference = GradKernel;
  def.fast = FastGradKernel;
  def.scratch_bytes = FastScratchBytes;  // per-row losses for an absorbed loss node
  def.test_cases = GradTestCases;
  return def;
}

}  // namespace fleettune::engine::ops
