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

// Shifted moments of one row in one pass: m[0] = Σ (x − s), m[1] = Σ (x − s)².
// Centring on a value s of the same data (not 0) keeps the variance
// E[(x − s)²] − E[x − s]² free of cancellation unless s is many standard
// deviations from the mean.
inline void ShiftedMomentsF32(const float* __restrict x, int64_t n, float s, double m[2]) {
  float a0[kLanes] = {}, a1[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float d = x[i + l] - s;
      a0[l] += d;
      a1[l] += d * d;
    }
  }
  float s0 = 0.0f, s1 = 0.0f;
  for (; i < n; ++i) {
    const float d = x[i] - s;
    s0 += d;
    s1 += d * d;
  }
  for (int l = 0; l < kLanes; ++l) {
    s0 += a0[l];
    s1 += a1[l];
  }
  m[0] += s0;
  m[1] += s1;
}

// As ShiftedMomentsF32, and with dy: m[2] = Σ dy, m[3] = Σ dy·(x − s). Eight
// lanes per sum, so the four sums stay in SSE registers.
inline void ShiftedMomentsWithGradF32(const float* __restrict x, const float* __restrict dy,
                                      int64_t n, float s, double m[4]) {
  constexpr int kL = 8;
  float a0[kL] = {}, a1[kL] = {}, a2[kL] = {}, a3[kL] = {};
  int64_t i = 0;
  for (; i + kL <= n; i += kL) {
    for (int l = 0; l < kL; ++l) {
      const float d = x[i + l] - s;
      const float g = dy[i + l];
      a0[l] += d;
      a1[l] += d * d;
      a2[l] += g;
      a3[l] += g * d;
    }
  }
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
  for (; i < n; ++i) {
    const float d = x[i] - s;
    s0 += d;
    s1 += d * d;
    s2 += dy[i];
    s3 += dy[i] * d;
  }
  for (int l = 0; l < kL; ++l) {
    s0 += a0[l];
    s1 += a1[l];
    s2 += a2[l];
    s3 += a3[l];
  }
  m[0] += s0;
  m[1] += s1;
  m[2] += s2;
  m[3] += s3;
}

// y[i] = x[i]·scale + shift.
// y may equal x.
inline void ScaleShiftF32(const float* x, int64_t n, float scale, float shift, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale + shift;
}

}  // namespace fleettune::engine::kernels

#endif  // FLEETTUNE_ENGINE_KERNELS_VEC_H_
