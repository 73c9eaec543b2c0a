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

float Generic(const float* x, int64_t n, float shift, float* y) {
  return ExpShiftedSumV<F32x4>(x, n, shift, y);
}
#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) float Avx2(const float* x, int64_t n, float shift, float* y) {
  return ExpShiftedSumV<F32x8>(x, n, shift, y);
}
__attribute__((target("avx512f"))) float Avx512(const float* x, int64_t n, float shift, float* y) {
  return ExpShiftedSumV<F32x16>(x, n, shift, y);
}
#endif

}  // namespace

float ExpShiftedSum(const float* x, int64_t n, float shift, float* y) {
#if defined(__x86_64__)
  switch (KernelIsa()) {
    case Isa::kAvx512:
      return Avx512(x, n, shift, y);
    case Isa::kAvx2:
      return Avx2(x, n, shift, y);
    case Isa::kGeneric:
      break;
  }
#endif
  return Generic(x, n, shift, y);
}

}  // namespace fleettune::engine::kernels
