// f32 3×3 convolution with stride 2 and padding 1 over few input channels:
// a network's stem (MobileNet's 3 → 32 on RGB images), as a direct loop
// instead of im2col and a GEMM. Copying 27 strided columns per output pixel
// cost the stem more than its 27-deep GEMM; here each output row's input
// rows are split into even and odd columns once, and a block of output
// channels × a vector of output columns sums the taps in registers: bias,
// then the taps by input channel, row, column. MobileNetV2's stem at
// 128×128: 0.80 → 0.40 ms a step, timed at AVX-512 (the AVX2 and generic
// levels are tested, not timed). Work is split over (sample, band of 8
// output rows); the epilogue runs on each band of each output plane right
// after it is written (whole mask words when wo is a multiple of 4). No
// allocation.
#ifndef FLEETTUNE_ENGINE_KERNELS_STEM_CONV_H_
#define FLEETTUNE_ENGINE_KERNELS_STEM_CONV_H_

#include <cstdint>

#include "engine/kernels/epilogue.h"

namespace fleettune::engine::kernels {

// x [n, c, h, w], weight [o, c, 3, 3], y [n, o, ho, wo] with ho = ⌈h/2⌉,
// wo = ⌈w/2⌉ (stride 2, padding 1, dilation 1, one group).
struct StemGeometry {
  int64_t n, c, h, w, o;
};

// Whether F32StemConv computes g at the kernel ISA's width: at most 4 input
// channels, output rows a whole number of vectors, at most 512 wide.
bool StemConvApplies(const StemGeometry& g);

// y = conv(x, weight) + bias (bias may be null), then the epilogue on each
// band of rows of each output plane. y must not alias x.
void F32StemConv(const StemGeometry& g, const float* x, const float* weight, const float* bias,
                 float* y, PlaneEpilogue epilogue = {});

}  // namespace fleettune::engine::kernels

#endif  // FLEETTUNE_ENGINE_KERNELS_STEM_CONV_H_
