// Fused ops: a producer and the activation that follows it, run as one
// instruction so the producer's output never round-trips through its own arena
// buffer (the activation runs over the freshly written output while it is
// still in cache).
//
//   kConv2dActivation              inputs (x, w[, b]), FusedConvAttrs
//       y = act(conv2d(x, w[, b]))
//   kLinearActivation              inputs (x, w[, b]), FusedActivationAttrs
//       y = act(linear(x, w[, b]))
//   kBatchNormInferenceActivation  inputs (x, mean, var, γ, β), FusedBatchNormAttrs
//       y = act(batch_norm_inference(x, mean, var, γ, β))
//   kAddActivation                 inputs (a, b), FusedActivationAttrs
//       y = act(a + b)   (broadcasting as kAdd; a residual add + ReLU)
//   kLayerNormActivation           inputs (x[, w[, b]]), FusedNormAttrs
//       y = act(layer_norm(x[, w[, b]]))
//   kRmsNormActivation             inputs (x[, w]), FusedNormAttrs
//       y = act(rms_norm(x[, w]))
//
// Only the fusion pass (engine/passes/fuse.h) emits them, and it runs after
// autodiff, so they are not differentiable: no gradient rule. Each kernel
// delegates to the producer's kernel (its fast kernel when the fused op's fast
// kernel runs, its reference kernel otherwise) and then applies the
// activation in place with the activation op's kernel, so a fused op computes
// bit for bit what the unfused pair computes. The norms' and linear's fast
// kernels go one step further: each thread normalizes (or adds the bias to) a
// block of rows and applies the activation to them while they are in cache
// (kernel_parts.h keeps the per-element arithmetic the unfused kernels'). Elementwise chains are
// elementwise_chain.cc.
#include <algorithm>

#include "engine/base/status_macros.h"
#include "engine/kernels/parallel.h"
#include "engine/ops/kernel_parts.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

absl::Status CheckAct(const Node& node, FusedActivationFn act) {
  if (static_cast<int>(act) > static_cast<int>(FusedActivationFn::kTanh)) {
    return OpError(node, "unknown activation ", static_cast<int>(act));
  }
  return absl::OkStatus();
}

// A node carrying only the producer's op and attributes: kernels read nothing
// else from KernelArgs::node. Built on the stack; allocates nothing.
Node InnerNode(OpKind op, const Attrs& attrs) {
  Node n;
  n.op = op;
  n.attrs = attrs;
  return n;
}

FusedActivationFn ActOf(const Node& node) {
  if (const auto* a = std::get_if<FusedConvAttrs>(&node.attrs)) return a->act;
  if (const auto* a = std::get_if<FusedActivationAttrs>(&node.attrs)) return a->act;
  if (const auto* a = std::get_if<FusedNormAttrs>(&node.attrs)) return a->act;
  return std::get<FusedBatchNormAttrs>(node.attrs).act;
}

// The producer's op and attributes of a fused node.
Node Producer(const Node& node) {
  switch (node.op) {
    case OpKind::kConv2dActivation:
      return InnerNode(OpKind::kConv2d, std::get<FusedConvAttrs>(node.attrs).conv);
    case OpKind::kLinearActivation:
      return InnerNode(OpKind::kLinear, NoAttrs{});
    case OpKind::kAddActivation:
      return InnerNode(OpKind::kAdd, NoAttrs{});
    case OpKind::kLayerNormActivation:
      return InnerNode(OpKind::kLayerNorm, std::get<FusedNormAttrs>(node.attrs).norm);
    case OpKind::kRmsNormActivation:
      return InnerNode(OpKind::kRmsNorm, std::get<FusedNormAttrs>(node.attrs).norm);
    default:
      return InnerNode(OpKind::kBatchNormInference, std::get<FusedBatchNormAttrs>(node.attrs).bn);
  }
}

// Applies `act` to `y` in place with kRelu's / kActivation's reference
// kernel; both are elementwise (y[i] depends on x[i] only).
template <bool kFast>
void ApplyActivation(FusedActivationFn act, const KernelArgs& args) {
  Node inner =
      act == FusedActivationFn::kRelu
          ? InnerNode(OpKind::kRelu, NoAttrs{})
          : InnerNode(OpKind::kActivation,
                      ActivationAttrs{static_cast<ActivationFn>(static_cast<int>(act) - 1)});
  KernelArgs a;
  a.node = &inner;
  a.inputs = &args.output;
  a.num_inputs = 1;
  a.output = args.output;
  a.step = args.step;
  const OpDef& def = GetOpDef(inner.op);
  (kFast && def.fast != nullptr ? def.fast : def.reference)(a);
}

template <bool kFast>
void Kernel(const KernelArgs& args) {
  const Node inner = Producer(*args.node);
  const OpDef& def = GetOpDef(inner.op);
  KernelArgs a = args;
  a.node = &inner;
  if (kFast && args.node->op == OpKind::kConv2dActivation) {
    if (args.producer != nullptr && !parts::IsWeightScaling(args.producer)) {
      return parts::ExpandDepthwiseFast(*args.producer, args);
    }
    return parts::Conv2dActivationFast(a, ActOf(*args.node), args.activation_mask);
  }
  if (kFast && args.node->op == OpKind::kLinearActivation) {
    return parts::LinearFast(a, ActOf(*args.node));
  }
  if (kFast && args.node->op == OpKind::kBatchNormInferenceActivation) {
    return parts::BatchNormInferenceActivationFast(a, ActOf(*args.node));
  }
  (kFast && def.fast != nullptr ? def.fast : def.reference)(a);
  ApplyActivation<kFast>(ActOf(*args.node), args);
}

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(CheckAct(node, ActOf(node)));
  const Node inner = Producer(node);
  absl::StatusOr<TensorType> t = GetOpDef(inner.op).infer(inner, in);
  if (!t.ok()) return OpError(node, t.status().message());
  return t;
}

size_t ScratchBytes(const Node& node, absl::Span<const TensorType* const> in) {
  const Node inner = Producer(node);
  const auto fn = GetOpDef(inner.op).scratch_bytes;
  return fn == nullptr ? 0 : fn(inner, in);
}

constexpr FusedActivationFn kActs[] = {FusedActivationFn::kRelu, FusedActivationFn::kRelu6,
                                       FusedActivationFn::kSilu, FusedActivationFn::kGeluErf};

// The producer's cases, each with a few activations.
template <OpKind kProducer>
std::vector<OpTestCase> TestCases() {
  std::vector<OpTestCase> out;
  int i = 0;
  for (const OpTestCase& base : GetOpDef(kProducer).test_cases()) {
    OpTestCase t = base;
    const FusedActivationFn act = kActs[i++ % std::size(kActs)];
    if constexpr (kProducer == OpKind::kConv2d) {
      t.attrs = FusedConvAttrs{std::get<Conv2dAttrs>(base.attrs), act};
    } else if constexpr (kProducer == OpKind::kLinear || kProducer == OpKind::kAdd) {
      t.attrs = FusedActivationAttrs{act};
    } else if constexpr (kProducer == OpKind::kLayerNorm || kProducer == OpKind::kRmsNorm) {
      t.attrs = FusedNormAttrs{std::get<NormAttrs>(base.attrs), act};
    } else {
      t.attrs = FusedBatchNormAttrs{std::get<BatchNormAttrs>(base.attrs), act};
    }
    out.push_back(t);
  }
  return out;
}

// kLayerNormActivation / kRmsNormActivation: rows split over the threads,
// each block normalized (the norm's row kernel) and then activated in place
// while it is in cache, instead of two passes over the whole tensor.
void NormActivationFast(const KernelArgs& args) {
  const Node inner = Producer(*args.node);
  const bool centered = inner.op == OpKind::kLayerNorm;
  const FusedActivationFn act = ActOf(*args.node);
  KernelArgs a = args;
  a.node = &inner;
  const int64_t d = args.in(0).shape->back();
  const int64_t rows = d == 0 ? 0 : args.in(0).num_elements() / d;
  const int64_t act_cost = parts::FusedActivationCost(act);
  float* y = args.output.f32();
  kernels::ParallelFor(rows, (4 + act_cost) * d, [&](int64_t begin, int64_t end) {
    parts::NormRows(a, centered, begin, end);
    parts::FusedActivationInPlace(act, y + begin * d, (end - begin) * d);
  });
}

// Runs while the op table is being built, so it must not call GetOpDef: the
// arity is the producer's, spelled out by the callers.
OpDef FusedDef(const char* name, size_t attrs_index, int min_inputs, int max_inputs) {
  OpDef def;
  def.name = name;
  def.attrs_index = attrs_index;
  def.min_inputs = min_inputs;
  def.max_inputs = max_inputs;
  def.infer = Infer;
  def.reference = Kernel<false>;
  // Uses the producer's and the activation's fast kernels where they exist
  // (the conformance test compares it with the reference).
  def.fast = Kernel<true>;
  // The producer's workspace (0 when it needs none).
  def.scratch_bytes = ScratchBytes;
  // Not differentiable: emitted after autodiff by the fusion pass only.
  def.gradient = nullptr;
  return def;
}

}  // namespace

OpDef Conv2dActivationOpDef() {
  OpDef def = FusedDef("conv2d_activation", AttrsIndexOf<FusedConvAttrs>(), 2, 3);
  def.test_cases = TestCases<OpKind::kConv2d>;
  return def;
}

OpDef LinearActivationOpDef() {
  OpDef def = FusedDef("linear_activation", AttrsIndexOf<FusedActivationAttrs>(), 2, 3);
  def.test_cases = TestCases<OpKind::kLinear>;
  return def;
}

OpDef AddActivationOpDef() {
  OpDef def = FusedDef("add_activation", AttrsIndexOf<FusedActivationAttrs>(), 2, 2);
  def.test_cases = TestCases<OpKind::kAdd>;
  return def;
}

OpDef LayerNormActivationOpDef() {
  OpDef def = FusedDef("layer_norm_activation", AttrsIndexOf<FusedNormAttrs>(), 1, 3);
  def.fast = NormActivationFast;
  def.test_cases = TestCases<OpKind::kLayerNorm>;
  return def;
}

OpDef RmsNormActivationOpDef() {
  OpDef def = FusedDef("rms_norm_activation", AttrsIndexOf<FusedNormAttrs>(), 1, 2);
  def.fast = NormActivationFast;
  def.test_cases = TestCases<OpKind::kRmsNorm>;
  return def;
}

OpDef BatchNormInferenceActivationOpDef() {
  OpDef def =
      FusedDef("batch_norm_inference_activation", AttrsIndexOf<FusedBatchNormAttrs>(), 5, 5);
  def.test_cases = TestCases<OpKind::kBatchNormInference>;
  return def;
}

}  // namespace fleettune::engine::ops
