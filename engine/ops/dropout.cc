// kDropout: y = x ⊙ mask / (1 − p), each element kept with probability 1 − p
// (PyTorch's nn.Dropout in training mode; evaluation graphs leave it out).
//
// The mask is not stored. Element i's keep decision is a pure function of
// (seed, optimizer step, i): a SplitMix64 stream keyed by the seed and the
// step (StepInfo::step, which advances once per training step). So the
// forward draws a fresh mask every step, a given (seed, step) reproduces it
// exactly, and the gradient — the same linear map applied to dy — is simply
// kDropout of dy with the same attributes, which recomputes the forward's
// mask in the same step. This trades a hash per element for the mask's
// memory, the scarcer resource on a device. Distinct dropout layers of one
// model need distinct seeds.
#include <cmath>
#include <cstdint>

#include "engine/base/status_macros.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ULL;  // SplitMix64's increment

uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  const float p = std::get<DropoutAttrs>(node.attrs).p;
  if (!(p >= 0.0f && p <= 1.0f)) return OpError(node, "p must be in [0, 1], got ", p);
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "x"));
  return *in[0];
}

void Kernel(const KernelArgs& args) {
  const auto& a = args.attrs<DropoutAttrs>();
  const float* x = args.in(0).f32();
  float* y = args.output.f32();
  const int64_t n = args.output.num_elements();
  if (a.p >= 1.0f) {  // torch: everything dropped
    for (int64_t i = 0; i < n; ++i) y[i] = 0.0f;
    return;
  }
  const float scale = 1.0f / (1.0f - a.p);
  // Keep when the top 24 bits, as a fraction of 2²⁴, are >= p.
  const auto threshold = static_cast<uint64_t>(std::ceil(static_cast<double>(a.p) * (1 << 24)));
  const uint64_t key = Mix(a.seed + Mix(static_cast<uint64_t>(args.step->step) * kGamma));
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t bits = Mix(key + static_cast<uint64_t>(i + 1) * kGamma) >> 40;
    y[i] = bits >= threshold ? x[i] * scale : 0.0f;
  }
}

// y = x ⊙ m/(1−p) with a mask m fixed for the step:  dx = dy ⊙ m/(1−p) = dropout(dy)
absl::Status Gradient(GradContext& ctx) {
  if (!ctx.NeedsGrad(0)) return absl::OkStatus();
  ASSIGN_OR_RETURN(ValueId dx, ctx.Emit(OpKind::kDropout, {ctx.dy()}, ctx.node().attrs));
  ctx.SetGrad(0, dx);
  return absl::OkStatus();
}

std::vector<OpTestCase> TestCases() {
  OpTestCase half;
  half.inputs = {{DType::kF32, {4, 5}}};
  half.attrs = DropoutAttrs{0.5f, 7};
  OpTestCase none = half;
  none.attrs = DropoutAttrs{0.0f, 1};
  OpTestCase all = half;
  all.attrs = DropoutAttrs{1.0f, 2};
  return {half, none, all};
}

}  // namespace

OpDef DropoutOpDef() {
  OpDef def;
  def.name = "dropout";
  def.attrs_index = AttrsIndexOf<DropoutAttrs>();
  def.min_inputs = def.max_inputs = 1;
  def.infer = Infer;
  def.reference = Kernel;
  def.gradient = Gradient;
  def.test_cases = TestCases;
  return def;
}

}  // namespace fleettune::engine::ops
