// Inline f32 loops that vectorize at -O3 without -ffast-math: reductions keep
// independent partial sums in vector registers (the order of additions is
// fixed, so results do not depend on the ISA); elementwise loops are plain
// loops GCC vectorizes. Used by the fast kernels; thread-compatible.
#ifndef FLEETTUNE_ENGINE_KERNELS_VEC_H_
#define FLEETTUNE_ENGINE_KERNELS_VEC_H_

#include <cstdint>

namespace fleettune::engine::kernels {

inline constexpr int kLanes = 16;

// Four f32 lanes with GCC/Clang vector extensions: SSE on x86-64, NEON on
// ARM, without intrinsics. Used where the auto-vectorizer shuffles lanes of
// several interleaved sums instead of keeping one register per sum.
using F32x4 = float __attribute__((vector_size(16)));

inline F32x4 LoadF32x4(const float* p) {
  F32x4 v;
  __builtin_memcpy(&v, p, sizeof v);  // unaligned
  return v;
}

inline float HorizontalSum(F32x4 v) { return (v[0] + v[1]) + (v[2] + v[3]); }

// Σ x[i], i < n.
inline float SumF32(const float* __restrict x, int64_t n) {
  F32x4 a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 += LoadF32x4(x + i);
    a1 += LoadF32x4(x + i + 4);
    a2 += LoadF32x4(x + i + 8);
    a3 += LoadF32x4(x + i + 12);
  }
  for (; i + 4 <= n; i += 4) a0 += LoadF32x4(x + i);
  float s = HorizontalSum((a0 + a1) + (a2 + a3));
  for (; i < n; ++i) s += x[i];
  return s;
}

// max_i x[i], n >= 1: std::max's result when no x[i] is NaN (the maximum is
// exact, so the order of comparisons does not matter). With NaNs the result
// may differ from a serial std::max loop. Four independent vector maxima: the
// serial loop waits out the compare's latency at every element.
inline float MaxF32(const float* __restrict x, int64_t n) {
  float m = x[0];
  int64_t i = 0;
  if (n >= 16) {
    F32x4 a0 = LoadF32x4(x), a1 = LoadF32x4(x + 4), a2 = LoadF32x4(x + 8), a3 = LoadF32x4(x + 12);
    for (i = 16; i + 16 <= n; i += 16) {
      const F32x4 v0 = LoadF32x4(x + i), v1 = LoadF32x4(x + i + 4);
      const F32x4 v2 = LoadF32x4(x + i + 8), v3 = LoadF32x4(x + i + 12);
      a0 = a0 < v0 ? v0 : a0;
      a1 = a1 < v1 ? v1 : a1;
      a2 = a2 < v2 ? v2 : a2;
      a3 = a3 < v3 ? v3 : a3;
    }
    a0 = a0 < a1 ? a1 : a0;
    a2 = a2 < a3 ? a3 : a2;
    a0 = a0 < a2 ? a2 : a0;
    m = a0[0];
    for (int lane = 1; lane < 4; ++lane) m = m < a0[lane] ? a0[lane] : m;
  }
  for (; i < n; ++i) m = m < x[i] ? x[i] : m;
  return m;
}

// Σ a[i]·b[i].
inline float DotF32(const float* __restrict a, const float* __restrict b, int64_t n) {
  F32x4 a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 += LoadF32x4(a + i) * LoadF32x4(b + i);
    a1 += LoadF32x4(a + i + 4) * LoadF32x4(b + i + 4);
    a2 += LoadF32x4(a + i + 8) * LoadF32x4(b + i + 8);
    a3 += LoadF32x4(a + i + 12) * LoadF32x4(b + i + 12);
  }
  for (; i + 4 <= n; i += 4) a0 += LoadF32x4(a + i) * LoadF32x4(b + i);
  float s = HorizontalSum((a0 + a1) + (a2 + a3));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Shifted moments of one row in one pass, added to m: m[0] += Σ (x − s),
// m[1] += Σ (x − s)². Centring on a value s of the same data (not 0) keeps
// the variance E[(x − s)²] − E[x − s]² free of cancellation unless s is many
// standard deviations from the mean.
inline void ShiftedMomentsF32(const float* __restrict x, int64_t n, float s, double m[2]) {
  const F32x4 sv = {s, s, s, s};
  F32x4 a0 = {}, a1 = {}, b0 = {}, b1 = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const F32x4 d0 = LoadF32x4(x + i) - sv, d1 = LoadF32x4(x + i + 4) - sv;
    a0 += d0;
    a1 += d1;
    b0 += d0 * d0;
    b1 += d1 * d1;
  }
  float s0 = HorizontalSum(a0 + a1), s1 = HorizontalSum(b0 + b1);
  for (; i < n; ++i) {
    const float d = x[i] - s;
    s0 += d;
    s1 += d * d;
  }
  m[0] += s0;
  m[1] += s1;
}

// As ShiftedMomentsF32, and with dy: m[2] += Σ dy, m[3] += Σ dy·(x − s).
inline void ShiftedMomentsWithGradF32(const float* __restrict x, const float* __restrict dy,
                                      int64_t n, float s, double m[4]) {
  const F32x4 sv = {s, s, s, s};
  F32x4 a0 = {}, a1 = {}, b0 = {}, b1 = {}, c0 = {}, c1 = {}, e0 = {}, e1 = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const F32x4 d0 = LoadF32x4(x + i) - sv, d1 = LoadF32x4(x + i + 4) - sv;
    const F32x4 g0 = LoadF32x4(dy + i), g1 = LoadF32x4(dy + i + 4);
    a0 += d0;
    a1 += d1;
    b0 += d0 * d0;
    b1 += d1 * d1;
    c0 += g0;
    c1 += g1;
    e0 += g0 * d0;
    e1 += g1 * d1;
  }
  float s0 = HorizontalSum(a0 + a1), s1 = HorizontalSum(b0 + b1);
  float s2 = HorizontalSum(c0 + c1), s3 = HorizontalSum(e0 + e1);
  for (; i < n; ++i) {
    const float d = x[i] - s;
    s0 += d;
    s1 += d * d;
    s2 += dy[i];
    s3 += dy[i] * d;
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
