// Vectorized f32 exp and erf on GCC vector extensions of 4, 8 or 16 lanes
// (templates; F32x4 wrappers), for activation kernels whose libm calls cost
// more than the rest of the step.
// Accuracy against libm: exp within about 2e-7 relative for x in [-87, 88]
// (clamped outside), erf within about 3e-7 absolute (Abramowitz & Stegun
// 7.1.26). Thread-compatible, no state.
#ifndef FLEETTUNE_ENGINE_KERNELS_VEC_MATH_H_
#define FLEETTUNE_ENGINE_KERNELS_VEC_MATH_H_

#include <cstdint>

#include "engine/kernels/vec.h"

namespace fleettune::engine::kernels {

// Always inlined, so that a kernel compiled for a wider ISA
// (`__attribute__((target("avx2,fma")))`, isa.h) inlines these templates
// with that ISA's registers instead of calling a generic copy.
#define FLEETTUNE_VEC_INLINE inline __attribute__((always_inline))

// GCC warns that 8- and 16-lane vectors passed by value change the ABI
// without AVX; these templates are always inlined, so none is ever passed.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

// Vector types of 4, 8 and 16 f32 lanes: SSE or NEON, AVX2, AVX-512. The
// templates below take any of them; lanes(V) = sizeof(V) / 4.
using F32x8 = float __attribute__((vector_size(32)));
using F32x16 = float __attribute__((vector_size(64)));
using I32x4 = int32_t __attribute__((vector_size(16)));

// v in every lane, as one broadcast instruction (`V{} + v` costs an add as
// well, and a lane-by-lane fill compiles to one insert per lane).
template <typename V>
FLEETTUNE_VEC_INLINE V Splat(float v) {
  const V first = {v};
  if constexpr (sizeof(V) == 4 * sizeof(float)) {
    return __builtin_shufflevector(first, first, 0, 0, 0, 0);
  } else if constexpr (sizeof(V) == 8 * sizeof(float)) {
    return __builtin_shufflevector(first, first, 0, 0, 0, 0, 0, 0, 0, 0);
  } else {
    static_assert(sizeof(V) == 16 * sizeof(float));
    return __builtin_shufflevector(first, first, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  }
}

// (a0, a1, …) and (b0, b1, …) as their even lanes (a0, a2, …, b0, b2, …)
// and odd ones: a stride-2 convolution's input columns.
template <typename V>
FLEETTUNE_VEC_INLINE void Deinterleave(V a, V b, V* even, V* odd) {
  if constexpr (sizeof(V) == 4 * sizeof(float)) {
    *even = __builtin_shufflevector(a, b, 0, 2, 4, 6);
    *odd = __builtin_shufflevector(a, b, 1, 3, 5, 7);
  } else if constexpr (sizeof(V) == 8 * sizeof(float)) {
    *even = __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
    *odd = __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
  } else {
    static_assert(sizeof(V) == 16 * sizeof(float));
    *even =
        __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    *odd = __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  }
}

// e^x: x = k·ln2 + r with |r| <= ln2/2, e^r by its degree-6 Taylor polynomial,
// 2^k assembled in the exponent bits.
template <typename V>
FLEETTUNE_VEC_INLINE V Exp(V x) {
  using I = decltype(x < x);  // the i32 vector of the same width
  x = x < Splat<V>(-87.0f) ? Splat<V>(-87.0f) : x;
  x = x > Splat<V>(88.0f) ? Splat<V>(88.0f) : x;
  const V kRound = Splat<V>(12582912.0f);  // 1.5·2^23: adding it rounds to an integer
  const V k = (x * Splat<V>(1.44269504f) + kRound) - kRound;
  V r = x - k * Splat<V>(0.693359375f);  // ln2 in two parts (Cody–Waite)
  r = r - k * Splat<V>(-2.12194440e-4f);
  V p = Splat<V>(1.0f / 720.0f);
  p = p * r + Splat<V>(1.0f / 120.0f);
  p = p * r + Splat<V>(1.0f / 24.0f);
  p = p * r + Splat<V>(1.0f / 6.0f);
  p = p * r + Splat<V>(0.5f);
  p = p * r + Splat<V>(1.0f);
  p = p * r + Splat<V>(1.0f);
  const I bits = (__builtin_convertvector(k, I) + 127) << 23;
  return p * __builtin_bit_cast(V, bits);
}

// sin x and cos x together: x = j·π/2 + r with |r| <= π/4 (Cody–Waite, π/2
// in three parts), Cephes' sinf and cosf polynomials on r, then the quadrant
// j mod 4 swaps and negates them. Within 3e-7 absolute of libm for
// |x| <= 8192 (vec_math_test); the reduction loses accuracy beyond that.
template <typename V>
FLEETTUNE_VEC_INLINE void SinCos(V x, V* sin_out, V* cos_out) {
  using I = decltype(x < x);
  const V kRound = Splat<V>(12582912.0f);  // 1.5·2^23: adding it rounds to an integer
  const V j = (x * Splat<V>(0.636619772f) + kRound) - kRound;
  V r = x - j * Splat<V>(1.5703125f);
  r = r - j * Splat<V>(4.837512969970703125e-4f);
  r = r - j * Splat<V>(7.54978995489188216e-8f);
  const V z = r * r;
  V s = Splat<V>(-1.9515295891e-4f);
  s = s * z + Splat<V>(8.3321608736e-3f);
  s = s * z + Splat<V>(-1.6666654611e-1f);
  s = s * z * r + r;
  V c = Splat<V>(2.443315711809948e-5f);
  c = c * z + Splat<V>(-1.388731625493765e-3f);
  c = c * z + Splat<V>(4.166664568298827e-2f);
  c = c * z * z - Splat<V>(0.5f) * z + Splat<V>(1.0f);
  // sin x: sin r, cos r, −sin r, −cos r by quadrant; cos x: cos r, −sin r,
  // −cos r, sin r. The & of a negative j is its value mod 4 in two's complement.
  const I q = __builtin_convertvector(j, I);
  const I odd = (q & 1) != 0;
  const V sin_r_or_cos_r = odd ? c : s;
  const V cos_r_or_sin_r = odd ? s : c;
  *sin_out = (q & 2) != 0 ? -sin_r_or_cos_r : sin_r_or_cos_r;
  *cos_out = ((q + 1) & 2) != 0 ? -cos_r_or_sin_r : cos_r_or_sin_r;
}

// erf(x) = sign(x)·(1 − t·P(t)·e^(−x²)), t = 1/(1 + 0.3275911·|x|); also
// stores the e^(−x²) it computes in *gauss (GELU's gradient needs both).
template <typename V>
FLEETTUNE_VEC_INLINE V ErfAndGauss(V x, V* gauss) {
  const V zero = {};
  const V ax = x < zero ? -x : x;
  const V t = Splat<V>(1.0f) / (Splat<V>(1.0f) + Splat<V>(0.3275911f) * ax);
  V p = Splat<V>(1.061405429f);
  p = p * t + Splat<V>(-1.453152027f);
  p = p * t + Splat<V>(1.421413741f);
  p = p * t + Splat<V>(-0.284496736f);
  p = p * t + Splat<V>(0.254829592f);
  *gauss = Exp(-(ax * ax));
  const V y = Splat<V>(1.0f) - p * t * *gauss;
  return x < zero ? -y : y;
}

template <typename V>
FLEETTUNE_VEC_INLINE V Erf(V x) {
  V gauss;
  return ErfAndGauss(x, &gauss);
}

// Op::Apply(V) → V over n values: whole vectors, then the tail through a
// zero-padded vector. y may be x.
template <typename V, typename Op>
FLEETTUNE_VEC_INLINE void MapV(const float* x, float* y, int64_t n) {
  constexpr int64_t kWidth = sizeof(V) / sizeof(float);
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    V v;
    __builtin_memcpy(&v, x + i, sizeof v);
    const V r = Op::Apply(v);
    __builtin_memcpy(y + i, &r, sizeof r);
  }
  if (i < n) {
    float in[kWidth] = {}, out[kWidth];
    for (int64_t k = i; k < n; ++k) in[k - i] = x[k];
    V v;
    __builtin_memcpy(&v, in, sizeof v);
    const V r = Op::Apply(v);
    __builtin_memcpy(out, &r, sizeof r);
    for (int64_t k = i; k < n; ++k) y[k] = out[k - i];
  }
}

// Op::Apply(V a, V b) → V over n pairs (dy, v).
template <typename V, typename Op>
FLEETTUNE_VEC_INLINE void Map2V(const float* a, const float* b, float* y, int64_t n) {
  constexpr int64_t kWidth = sizeof(V) / sizeof(float);
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    V va, vb;
    __builtin_memcpy(&va, a + i, sizeof va);
    __builtin_memcpy(&vb, b + i, sizeof vb);
    const V r = Op::Apply(va, vb);
    __builtin_memcpy(y + i, &r, sizeof r);
  }
  if (i < n) {
    float in_a[kWidth] = {}, in_b[kWidth] = {}, out[kWidth];
    for (int64_t k = i; k < n; ++k) in_a[k - i] = a[k], in_b[k - i] = b[k];
    V va, vb;
    __builtin_memcpy(&va, in_a, sizeof va);
    __builtin_memcpy(&vb, in_b, sizeof vb);
    const V r = Op::Apply(va, vb);
    __builtin_memcpy(out, &r, sizeof r);
    for (int64_t k = i; k < n; ++k) y[k] = out[k - i];
  }
}

#pragma GCC diagnostic pop

inline F32x4 SplatF32x4(float v) { return Splat<F32x4>(v); }
inline F32x4 ExpF32x4(F32x4 x) { return Exp(x); }
inline F32x4 ErfF32x4(F32x4 x) { return Erf(x); }

// Applies fn (F32x4 → F32x4) to n values: whole vectors, then the tail
// through a zero-padded vector.
template <typename Fn>
void MapF32x4(const float* x, float* y, int64_t n, const Fn& fn) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const F32x4 r = fn(LoadF32x4(x + i));
    __builtin_memcpy(y + i, &r, sizeof r);
  }
  if (i < n) {
    float in[4] = {}, out[4];
    for (int64_t k = i; k < n; ++k) in[k - i] = x[k];
    const F32x4 r = fn(LoadF32x4(in));
    __builtin_memcpy(out, &r, sizeof r);
    for (int64_t k = i; k < n; ++k) y[k] = out[k - i];
  }
}

// As MapF32x4 with two inputs (dy, v).
template <typename Fn>
void Map2F32x4(const float* a, const float* b, float* y, int64_t n, const Fn& fn) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const F32x4 r = fn(LoadF32x4(a + i), LoadF32x4(b + i));
    __builtin_memcpy(y + i, &r, sizeof r);
  }
  if (i < n) {
    float in_a[4] = {}, in_b[4] = {}, out[4];
    for (int64_t k = i; k < n; ++k) in_a[k - i] = a[k], in_b[k - i] = b[k];
    const F32x4 r = fn(LoadF32x4(in_a), LoadF32x4(in_b));
    __builtin_memcpy(out, &r, sizeof r);
    for (int64_t k = i; k < n; ++k) y[k] = out[k - i];
  }
}

}  // namespace fleettune::engine::kernels

#endif  // FLEETTUNE_ENGINE_KERNELS_VEC_MATH_H_
