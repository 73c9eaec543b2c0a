// Pieces of op kernels that fused ops (fused.cc, elementwise_chain.cc) reuse,
// so a fused kernel computes bit for bit what the ops it replaces compute.
// Internal to engine/ops. Thread-compatible, no state.
#ifndef FLEETTUNE_ENGINE_OPS_KERNEL_PARTS_H_
#define FLEETTUNE_ENGINE_OPS_KERNEL_PARTS_H_

#include <algorithm>
#include <cstdint>
#include <optional>

#include "engine/ir/attrs.h"
#include "engine/kernels/epilogue.h"
#include "engine/ops/op_registry.h"

namespace fleettune::engine::ops::parts {

// layer_norm.cc: rows [begin, end) of kLayerNorm (centered) or kRmsNorm
// (not), as both of its kernels compute them; `args` holds a node with
// NormAttrs and inputs (x[, w[, b]]), x: [rows, D].
void NormRows(const KernelArgs& args, bool centered, int64_t begin, int64_t end);

// activation.cc: y[i] = fn(x[i]) and dx[i] = dy[i]·fn'(v[i]) for i < n, as
// kActivation's / kActivationGrad's fast kernels compute each element
// (vectorized exp and erf where they have them). Single-threaded; y may be x
// and dx may be dy or v.
void ActivationFast(ActivationFn fn, const float* x, float* y, int64_t n);
void ActivationGradFast(ActivationFn fn, const float* dy, const float* v, float* dx, int64_t n);

// Work per element of ActivationFast / ActivationGradFast, in ParallelFor's
// units (about one per simple arithmetic operation).
int64_t ActivationCost(ActivationFn fn);

// What kRelu's kernel computes: y[i] = max(x[i], 0); y may be x.
inline void ReluRange(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::max(x[i], 0.0f);
}

// The fused op's activation on y[0, n) in place, as kRelu's kernel or
// kActivation's fast kernel computes it.
inline void FusedActivationInPlace(FusedActivationFn act, float* y, int64_t n) {
  if (act == FusedActivationFn::kRelu) return ReluRange(y, y, n);
  ActivationFast(static_cast<ActivationFn>(static_cast<int>(act) - 1), y, y, n);
}

// FusedActivationInPlace(*act, …) as a kernel epilogue, applied to each block
// of output right after it is written; `act` must outlive the kernel call.
inline kernels::PlaneEpilogue ActivationEpilogue(const FusedActivationFn* act) {
  return {[](const void* ctx, float* y, int64_t n) {
            FusedActivationInPlace(*static_cast<const FusedActivationFn*>(ctx), y, n);
          },
          act};
}

// Work per element of FusedActivationInPlace, in ParallelFor's units.
inline int64_t FusedActivationCost(FusedActivationFn act) {
  if (act == FusedActivationFn::kRelu) return 1;
  return ActivationCost(static_cast<ActivationFn>(static_cast<int>(act) - 1));
}

// linear.cc: kLinear's fast kernel for a node in `args` (inputs x, w[, b]),
// with `act`, if given, applied to each block of rows right after its bias is
// added, while in cache (the same bits as the two kernels in turn).
void LinearFast(const KernelArgs& args, std::optional<FusedActivationFn> act);

// conv.cc: kConv2d's fast kernel for the node in `conv_args`, with `act`
// applied while the output is in cache (the same bits as the two kernels in
// turn): to each plane right after it is computed (depthwise), or to each
// sample's output right after its GEMM and bias.
// With `mask`, each activated plane's activation_mask bits (ReLU: clamp +inf,
// ReLU6: 6) go there too; the output planes must be whole mask words.
void Conv2dActivationFast(const KernelArgs& conv_args, FusedActivationFn act,
                          int32_t* mask = nullptr);

// conv.cc: two convolutions in one pass, the tensor between them computed a
// few channels at a time into per-thread scratch and consumed from there
// (runtime::AbsorbedProducers):
//  - ExpandDepthwiseFast: a pointwise conv2d_activation (`expand`, the later
//    node's KernelArgs::producer) and the depthwise conv2d_activation reading
//    it; both activations and absorbed masks as their own kernels write them
//    (the same bits when the pointwise part takes the direct kernel).
//  - DepthwiseExpandGradFast: a depthwise conv2d_backward_input and the
//    pointwise conv2d_backward_input reading its dx, which sums the blocks of
//    channels in turn (a GEMM per block; rounds unlike one GEMM); both masks
//    and absorbed bias gradients (channel sums) as their kernels give them.
// The later node's scratch holds FusedConvolutionScratchBytes(later's op,
// the shape between, the later output's shape).
void ExpandDepthwiseFast(const KernelArgs& expand, const KernelArgs& depthwise);
// A whole inverted residual block forward: ExpandDepthwiseFast's two layers,
// then the projection (a pointwise conv2d, `project`, whose producer is the
// depthwise layer, whose producer is the expand layer) summing each block of
// depthwise channels into its output while they are in cache (GEMMs over
// blocks of channels; rounds unlike one GEMM). The project node's scratch
// holds InvertedResidualScratchBytes(the expand output's shape, the depthwise
// output's shape).
void InvertedResidualFast(const KernelArgs& expand, const KernelArgs& depthwise,
                          const KernelArgs& project);
size_t InvertedResidualScratchBytes(const Shape& expanded, const Shape& depthwise_output);
// Its input gradients likewise: the projection's (`project`, the producer of
// `depthwise`, masked and summed per plane for its absorbed bias gradient),
// then DepthwiseExpandGradFast's two, a block of channels at a time, so that
// the projection's dx never reaches memory either. The expand node's scratch
// holds InvertedResidualGradScratchBytes(its dx's shape, the depthwise dx's
// shape, the projection dx's shape).
void InvertedResidualGradFast(const KernelArgs& project, const KernelArgs& depthwise,
                              const KernelArgs& expand);
size_t InvertedResidualGradScratchBytes(const Shape& dx, const Shape& depthwise_dx,
                                        const Shape& project_dx);
void DepthwiseExpandGradFast(const KernelArgs& depthwise, const KernelArgs& expand);
size_t FusedConvolutionScratchBytes(OpKind later, const Shape& between, const Shape& later_output);

// conv.cc: a pointwise convolution whose weight scaling the runtime absorbed
// (runtime::AbsorbedWeightScalings) gets that batch_norm_inference node as
// KernelArgs::producer (IsWeightScaling) and applies its scale s per output
// channel itself: through a GEMM as (W·x)·s with the bias after it; in the
// direct kernel as it packs W (the node's values); for an input gradient with
// dY smaller than W as Wᵀ·(s·dY); otherwise with W·s written by the node's
// fast kernel into scratch. Its scratch starts at ScaledWeightOffset, and
// ScaledWeightOffset + the weight's bytes is what such a convolution needs.
bool IsWeightScaling(const KernelArgs* producer);
size_t ScaledWeightOffset(const Node& conv, absl::Span<const TensorType* const> in);

// batch_norm.cc: kBatchNormInference's fast kernel for the node in `bn_args`,
// with `act` applied to each row of a channel right after it is normalized,
// while in cache: one pass over the tensor instead of two, the same bits.
void BatchNormInferenceActivationFast(const KernelArgs& bn_args, FusedActivationFn act);

// activation_mask.cc: what kMaskedGrad computes, in place, on elements
// [first, first + n) of a tensor whose bit mask (activation_mask's layout) is
// `mask`: x[i] = x[i] where the element's bit is set, else +0. `x` points at
// element `first`. Single-threaded; any alignment of `first`.
void MaskInPlace(const int32_t* mask, int64_t first, float* x, int64_t n);

// activation_mask.cc: what kActivationMask{upper} computes for the whole
// words [first / 32, (first + n) / 32) of y's mask, from y[first, first + n)
// at `y`; first and n multiples of 32. Single-threaded.
void PackMask(float upper, const float* y, int64_t first, int64_t n, int32_t* mask);

// activation_mask's layout: element i is bit i % 32 of word i / 32.
inline constexpr int64_t kMaskBits = 32;
inline int64_t MaskWords(int64_t elements) { return (elements + kMaskBits - 1) / kMaskBits; }
inline bool MaskBit(const int32_t* mask, int64_t i) {
  return (static_cast<uint32_t>(mask[i / kMaskBits]) >> (i % kMaskBits)) & 1u;
}

}  // namespace fleettune::engine::ops::parts

#endif  // FLEETTUNE_ENGINE_OPS_KERNEL_PARTS_H_
