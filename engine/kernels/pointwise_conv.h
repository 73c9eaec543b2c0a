// f32 pointwise (1×1, stride 1) convolution over NCHW planes as a direct
// register-tiled loop, for the shapes where a GEMM per sample leaves most of
// the time on the table: few input channels (MobileNetV2's expand layers
// read 16 to 32) or small planes (its last layers' 4×4 ones, where a
// sample's GEMM is 16 columns wide).
//
//   y[s][r][p] = Σ_k A(r, k) · x[s][k][p] (+ bias[r])
//
// with A(r, k) = a[r·a_row_stride + k·a_k_stride]: the weight [rows, k] for
// the forward pass, its transpose for the input gradient. Each tile of rows ×
// columns sums k in order with fused multiply-adds, in registers; columns
// come from one sample's plane, or from a few samples' when planes are
// narrower than a tile. A block of rows is finished plane by plane, so the
// epilogue (activation, mask, plane sums) runs on whole planes still in
// cache. No allocation: each thread packs its rows of A on the stack.
#ifndef FLEETTUNE_ENGINE_KERNELS_POINTWISE_CONV_H_
#define FLEETTUNE_ENGINE_KERNELS_POINTWISE_CONV_H_

#include <cstdint>

#include "engine/kernels/epilogue.h"

namespace fleettune::engine::kernels {

struct PointwiseGeometry {
  int64_t n;      // samples
  int64_t rows;   // output channels of y
  int64_t k;      // input channels of x
  int64_t plane;  // h·w, the same for x and y
  int64_t a_row_stride, a_k_stride;
  bool accumulate = false;  // y += A·x (+ bias) instead of y = A·x (+ bias)
};

// Whether F32PointwiseConv computes g at the kernel ISA's width (isa.h),
// and beat a GEMM per sample on such shapes in a training step
// (bench/pointwise_bench; BENCHMARKS.md, issue #6, tenth session).
bool PointwiseConvApplies(const PointwiseGeometry& g);

// y [n, rows, plane] from x [n, k, plane] (with g.accumulate, added to y,
// as a GEMM with β = 1); bias may be null (added after the sum, as a GEMM's
// caller would). The epilogue runs on blocks of whole planes
// of y. y must not alias x or a. With row_scale (rows floats), A's row r is
// taken times row_scale[r] as it is packed, each element rounded as
// a·row_scale alone would be: a frozen BatchNorm's scaling of a weight
// (runtime::AbsorbedWeightScalings) at no extra pass.
void F32PointwiseConv(const PointwiseGeometry& g, const float* a, const float* x, const float* bias,
                      float* y, PlaneEpilogue epilogue = {}, const float* row_scale = nullptr);

}  // namespace fleettune::engine::kernels

#endif  // FLEETTUNE_ENGINE_KERNELS_POINTWISE_CONV_H_
