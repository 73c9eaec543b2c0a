// Vectorized f32 exp and erf on F32x4 (GCC/Clang vector extensions), for
// activation kernels whose libm calls cost more than the rest of the step.
// Accuracy against libm: exp within about 2e-7 relative for x in [-87, 88]
// (clamped outside), erf within about 3e-7 absolute (Abramowitz & Stegun
// 7.1.26). Thread-compatible, no state.
#ifndef FLEETTUNE_ENGINE_KERNELS_VEC_MATH_H_
#define FLEETTUNE_ENGINE_KERNELS_VEC_MATH_H_

#include <cstdint>

#include "engine/kernels/vec.h"

namespace fleettune::engine::kernels {

using I32x4 = int32_t __attribute__((vector_size(16)));

inline F32x4 SplatF32x4(float v) { return F32x4{v, v, v, v}; }

// e^x: x = k·ln2 + r with |r| <= ln2/2, e^r by its degree-6 Taylor polynomial,
// 2^k assembled in the exponent bits.
inline F32x4 ExpF32x4(F32x4 x) {
  x = x < SplatF32x4(-87.0f) ? SplatF32x4(-87.0f) : x;
  x = x > SplatF32x4(88.0f) ? SplatF32x4(88.0f) : x;
  const F32x4 kRound = SplatF32x4(12582912.0f);  // 1.5·2^23: adding it rounds to an integer
  const F32x4 k = (x * SplatF32x4(1.44269504f) + kRound) - kRound;
  F32x4 r = x - k * SplatF32x4(0.693359375f);  // ln2 in two parts (Cody–Waite)
  r = r - k * SplatF32x4(-2.12194440e-4f);
  F32x4 p = SplatF32x4(1.0f / 720.0f);
  p = p * r + SplatF32x4(1.0f / 120.0f);
  p = p * r + SplatF32x4(1.0f / 24.0f);
  p = p * r + SplatF32x4(1.0f / 6.0f);
  p = p * r + SplatF32x4(0.5f);
  p = p * r + SplatF32x4(1.0f);
  p = p * r + SplatF32x4(1.0f);
  const I32x4 bits = (__builtin_convertvector(k, I32x4) + 127) << 23;
  return p * __builtin_bit_cast(F32x4, bits);
}

// erf(x) = sign(x)·(1 − t·P(t)·e^(−x²)), t = 1/(1 + 0.3275911·|x|).
inline F32x4 ErfF32x4(F32x4 x) {
  const F32x4 zero = {};
  const F32x4 ax = x < zero ? -x : x;
  const F32x4 t = SplatF32x4(1.0f) / (SplatF32x4(1.0f) + SplatF32x4(0.3275911f) * ax);
  F32x4 p = SplatF32x4(1.061405429f);
  p = p * t + SplatF32x4(-1.453152027f);
  p = p * t + SplatF32x4(1.421413741f);
  p = p * t + SplatF32x4(-0.284496736f);
  p = p * t + SplatF32x4(0.254829592f);
  const F32x4 y = SplatF32x4(1.0f) - p * t * ExpF32x4(-(ax * ax));
  return x < zero ? -y : y;
}

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
