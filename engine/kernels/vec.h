// Inline f32 loops written so that GCC vectorizes them at -O3 without
// -ffast-math: reductions keep kLanes independent partial sums (the order of
// additions is fixed, so results do not depend on the ISA), elementwise loops
// take __restrict pointers. Used by the fast kernels; thread-compatible.
#ifndef FLEETTUNE_ENGINE_KERNELS_VEC_H_
#define FLEETTUNE_ENGINE_KERNELS_VEC_H_

#include <cstdint>

namespace fleettune::engine::kernels {

inline constexpr int kLanes = 16;

// Σ x[i], i < n.
inline float SumF32(const float* __restrict x, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += x[i + l];
  }
  float s = 0.0f;
  for (; i < n; ++i) s += x[i];
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

// Σ (x[i] − mean)².
inline float SumSquaredDeviationF32(const float* __restrict x, int64_t n, float mean) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float d = x[i + l] - mean;
      acc[l] += d * d;
    }
  }
  float s = 0.0f;
  for (; i < n; ++i) s += (x[i] - mean) * (x[i] - mean);
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

// Σ a[i]·b[i].
inline float DotF32(const float* __restrict a, const float* __restrict b, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += a[i + l] * b[i + l];
  }
  float s = 0.0f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

// Σ dy[i] and Σ dy[i]·(x[i] − mean) in one pass.
inline void SumAndCenteredDotF32(const float* __restrict dy, const float* __restrict x, int64_t n,
                                 float mean, float* sum_dy, float* dot) {
  float acc_s[kLanes] = {}, acc_d[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      acc_s[l] += dy[i + l];
      acc_d[l] += dy[i + l] * (x[i + l] - mean);
    }
  }
  float s = 0.0f, d = 0.0f;
  for (; i < n; ++i) {
    s += dy[i];
    d += dy[i] * (x[i] - mean);
  }
  for (int l = 0; l < kLanes; ++l) {
    s += acc_s[l];
    d += acc_d[l];
  }
  *sum_dy = s;
  *dot = d;
}

// y[i] = x[i]·scale + shift.
// y may equal x.
inline void ScaleShiftF32(const float* x, int64_t n, float scale, float shift, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale + shift;
}

}  // namespace fleettune::engine::kernels

#endif  // FLEETTUNE_ENGINE_KERNELS_VEC_H_
