#include "engine/kernels/exp_sum.h"

#include "engine/kernels/isa.h"
#include "engine/kernels/vec_math.h"

// 8- and 16-lane vectors are only ever used inside functions compiled for
// AVX2 or AVX-512 (see vec_math.h).
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fleettune::engine::kernels {
namespace {

template <typename V>
FLEETTUNE_VEC_INLINE float ExpShiftedSumV(const float* x, int64_t n, float shift, float* y) {
  constexpr int64_t kWidth = sizeof(V) / sizeof(float);
  const V s = Splat<V>(shift);
  V acc = {};
  int64_t j = 0;
  for (; j + kWidth <= n; j += kWidth) {
    V v;
    __builtin_memcpy(&v, x + j, sizeof v);
    const V e = Exp(v - s);
    if (y != nullptr) __builtin_memcpy(y + j, &e, sizeof e);
    acc += e;
  }
  float sum = 0.0f;
  for (int64_t l = 0; l < kWidth; ++l) sum += acc[l];
  if (j < n) {
    // The tail through one padded vector; only its real lanes count.
    float in[kWidth] = {}, out[kWidth];
    for (int64_t k = j; k < n; ++k) in[k - j] = x[k];
    V v;
    __builtin_memcpy(&v, in, sizeof v);
    const V e = Exp(v - s);
    __builtin_memcpy(out, &e, sizeof e);
    for (int64_t k = j; k < n; ++k) {
      if (y != nullptr) y[k] = out[k - j];
      sum += out[k - j];
    }
  }
  return sum;
}

// max_j x[j] with four independent vector maxima (a serial chain waits out
// the compare's latency at every vector); n >= 1.
template <typename V>
FLEETTUNE_VEC_INLINE float MaxV(const float* x, int64_t n) {
  constexpr int64_t kWidth = sizeof(V) / sizeof(float);
  float m = x[0];
  int64_t j = 0;
  if (n >= 4 * kWidth) {
    V a[4];
    for (int q = 0; q < 4; ++q) __builtin_memcpy(&a[q], x + q * kWidth, sizeof(V));
    for (j = 4 * kWidth; j + 4 * kWidth <= n; j += 4 * kWidth) {
      for (int q = 0; q < 4; ++q) {
        V v;
        __builtin_memcpy(&v, x + j + q * kWidth, sizeof v);
        a[q] = a[q] < v ? v : a[q];
      }
    }
    a[0] = a[0] < a[1] ? a[1] : a[0];
    a[2] = a[2] < a[3] ? a[3] : a[2];
    a[0] = a[0] < a[2] ? a[2] : a[0];
    for (int64_t l = 0; l < kWidth; ++l) m = m < a[0][l] ? a[0][l] : m;
  }
  for (; j < n; ++j) m = m < x[j] ? x[j] : m;
  return m;
}

template <typename V>
FLEETTUNE_VEC_INLINE SoftmaxRowStats ScaledSoftmaxRowV(const float* x, int64_t n, float scale,
                                                       float* y) {
  constexpr int64_t kWidth = sizeof(V) / sizeof(float);
  const float m = MaxV<V>(x, n);
  const float sum = ExpShiftedSumV<V>(x, n, m, y);
  const float factor = scale / sum;
  const V f = Splat<V>(factor);
  int64_t j = 0;
  for (; j + kWidth <= n; j += kWidth) {
    V v;
    __builtin_memcpy(&v, y + j, sizeof v);
    v *= f;
    __builtin_memcpy(y + j, &v, sizeof v);
  }
  for (; j < n; ++j) y[j] *= factor;
  return {m, sum};
}

// The functions at one level: generic (4 lanes), AVX2 + FMA (8), AVX-512 (16).
struct Level {
  float (*exp_shifted_sum)(const float*, int64_t, float, float*);
  float (*row_max)(const float*, int64_t);
  SoftmaxRowStats (*scaled_softmax_row)(const float*, int64_t, float, float*);
};

#define FLEETTUNE_EXP_SUM_LEVEL(suffix, target, V)                                        \
  target float ExpShiftedSum##suffix(const float* x, int64_t n, float shift, float* y) {  \
    return ExpShiftedSumV<V>(x, n, shift, y);                                             \
  }                                                                                       \
  target float RowMax##suffix(const float* x, int64_t n) { return MaxV<V>(x, n); }        \
  target SoftmaxRowStats ScaledSoftmaxRow##suffix(const float* x, int64_t n, float scale, \
                                                  float* y) {                             \
    return ScaledSoftmaxRowV<V>(x, n, scale, y);                                          \
  }                                                                                       \
  constexpr Level k##suffix = {ExpShiftedSum##suffix, RowMax##suffix, ScaledSoftmaxRow##suffix};

FLEETTUNE_EXP_SUM_LEVEL(Generic, , F32x4)
#if defined(__x86_64__)
FLEETTUNE_EXP_SUM_LEVEL(Avx2, __attribute__((target("avx2,fma"))), F32x8)
FLEETTUNE_EXP_SUM_LEVEL(Avx512, __attribute__((target("avx512f"))), F32x16)
#endif
#undef FLEETTUNE_EXP_SUM_LEVEL

const Level& CurrentLevel() {
#if defined(__x86_64__)
  switch (KernelIsa()) {
    case Isa::kAvx512:
      return kAvx512;
    case Isa::kAvx2:
      return kAvx2;
    case Isa::kGeneric:
      break;
  }
#endif
  return kGeneric;
}

}  // namespace

float ExpShiftedSum(const float* x, int64_t n, float shift, float* y) {
  return CurrentLevel().exp_shifted_sum(x, n, shift, y);
}

float RowMax(const float* x, int64_t n) { return CurrentLevel().row_max(x, n); }

SoftmaxRowStats ScaledSoftmaxRow(const float* x, int64_t n, float scale, float* y) {
  return CurrentLevel().scaled_softmax_row(x, n, scale, y);
}

}  // namespace fleettune::engine::kernels
