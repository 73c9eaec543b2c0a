// f32 depthwise convolution (PyTorch's Conv2d with groups = in_channels) and
// its input and weight gradients as direct loops over NCHW planes, split over
// planes (forward, input gradient) or channels (weight gradient) with
// ParallelFor. 3×3 kernels with padding 1, dilation 1 and stride 1 or 2
// (MobileNet's) run on flattened planes at the kernel ISA's vector width
// (isa.h) for the forward pass and the stride-1 input gradient; other 3-wide
// kernels take unrolled row loops that GCC vectorizes, other shapes a generic
// loop. No allocation (band buffers are on the stack); outputs must not alias
// inputs.
#ifndef FLEETTUNE_ENGINE_KERNELS_DEPTHWISE_CONV_H_
#define FLEETTUNE_ENGINE_KERNELS_DEPTHWISE_CONV_H_

#include <cstdint>

#include "engine/kernels/epilogue.h"

namespace fleettune::engine::kernels {

// x [n, c, h, w], weight [c·mult, 1, kh, kw], y [n, c·mult, ho, wo]; output
// channel o reads input channel o / mult.
struct DepthwiseGeometry {
  int64_t n, c, h, w;
  int64_t mult;
  int64_t kh, kw;
  int64_t ho, wo;
  int64_t sh, sw, ph, pw, dh, dw;
};

// y = conv(x, weight) + bias (bias may be null), then the epilogue per plane.
void F32DepthwiseConv(const DepthwiseGeometry& g, const float* x, const float* weight,
                      const float* bias, float* y, PlaneEpilogue epilogue = {});

// dx [n, c, h, w] from dy [n, c·mult, ho, wo], then the epilogue on each
// plane of dx (or a few adjacent ones at a time) once it is complete.
void F32DepthwiseConvBackwardInput(const DepthwiseGeometry& g, const float* dy, const float* weight,
                                   float* dx, PlaneEpilogue epilogue = {});

// dweight [c·mult, 1, kh, kw] = Σ over samples and positions of dy · x.
void F32DepthwiseConvBackwardWeight(const DepthwiseGeometry& g, const float* x, const float* dy,
                                    float* dweight);

}  // namespace fleettune::engine::kernels

#endif  // FLEETTUNE_ENGINE_KERNELS_DEPTHWISE_CONV_H_
