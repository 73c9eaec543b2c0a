#include "engine/kernels/stem_conv.h"

#include <algorithm>

#include "engine/kernels/isa.h"
#include "engine/kernels/parallel.h"
#include "engine/kernels/vec_math.h"

// GCC warns that 8- and 16-lane vectors passed by value change the ABI
// without AVX; the templates taking them are always inlined.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fleettune::engine::kernels {
namespace {

constexpr int64_t kMaxChannels = 4;
constexpr int64_t kMaxWidth = 512;  // output columns
constexpr int64_t kBandRows = 8;    // output rows per work item

template <typename V>
constexpr int64_t kLanesOf = sizeof(V) / sizeof(float);

// Output channels a block of accumulators covers: 16 vectors of AVX-512's
// 32 registers, 8 of AVX2's and SSE's 16.
template <typename V>
constexpr int kChannelBlock = sizeof(V) == 64 ? 16 : 8;

// One input row split for stride 2: even[j] = row[2j] and, one float on,
// odd[j + 1] = row[2j + 1] with odd[0] = 0, so that output column j's taps
// are odd[j] (column 2j − 1), even[j] (2j) and odd[j + 1] (2j + 1); zeros
// past the row's end and for rows outside the plane.
struct SplitRow {
  float even[kMaxWidth];
  float odd[kMaxWidth + 1];
};

// Whole vectors by shuffles while the row has two of them left, then one
// column at a time.
template <typename V>
FLEETTUNE_VEC_INLINE void Split(const float* row, int64_t w, int64_t wo, SplitRow* s) {
  constexpr int64_t L = sizeof(V) / sizeof(float);
  s->odd[0] = 0.0f;
  int64_t j = 0;
  for (; j + L <= wo && 2 * (j + L) <= w; j += L) {
    V a, b, even, odd;
    __builtin_memcpy(&a, row + 2 * j, sizeof a);
    __builtin_memcpy(&b, row + 2 * j + L, sizeof b);
    Deinterleave(a, b, &even, &odd);
    __builtin_memcpy(s->even + j, &even, sizeof even);
    __builtin_memcpy(s->odd + 1 + j, &odd, sizeof odd);
  }
  for (; j < wo; ++j) {
    s->even[j] = 2 * j < w ? row[2 * j] : 0.0f;
    s->odd[j + 1] = 2 * j + 1 < w ? row[2 * j + 1] : 0.0f;
  }
}

void Zero(int64_t wo, SplitRow* s) {
  std::fill_n(s->even, wo, 0.0f);
  std::fill_n(s->odd, wo + 1, 0.0f);
}

template <typename V>
FLEETTUNE_VEC_INLINE V Load(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

// Output rows [i0, i1) of sample s. A block of output channels past the
// last repeats it: the same value stored to the same place.
template <typename V>
FLEETTUNE_VEC_INLINE void Band(const StemGeometry& g, const float* x, const float* weight,
                               const float* bias, int64_t s, int64_t i0, int64_t i1, float* y) {
  constexpr int64_t L = kLanesOf<V>;
  constexpr int B = kChannelBlock<V>;
  const int64_t ho = (g.h + 1) / 2, wo = (g.w + 1) / 2, taps = g.c * 9;
  SplitRow rows[kMaxChannels][3];
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t c = 0; c < g.c; ++c) {
      for (int u = 0; u < 3; ++u) {
        const int64_t ih = 2 * i - 1 + u;
        if (ih < 0 || ih >= g.h) {
          Zero(wo, &rows[c][u]);
        } else {
          Split<V>(x + ((s * g.c + c) * g.h + ih) * g.w, g.w, wo, &rows[c][u]);
        }
      }
    }
    for (int64_t o0 = 0; o0 < g.o; o0 += B) {
      const float* w[B];
      int64_t out[B];
      float b[B];
      for (int k = 0; k < B; ++k) {
        const int64_t o = std::min(o0 + k, g.o - 1);
        w[k] = weight + o * taps;
        out[k] = ((s * g.o + o) * ho + i) * wo;
        b[k] = bias != nullptr ? bias[o] : 0.0f;
      }
      for (int64_t j = 0; j < wo; j += L) {
        V acc[B];
#pragma GCC unroll 16
        for (int k = 0; k < B; ++k) acc[k] = V{} + b[k];  // (Splat: a false uninitialized warning)
        for (int64_t c = 0; c < g.c; ++c) {
          for (int u = 0; u < 3; ++u) {
            const SplitRow& r = rows[c][u];
            const int64_t t = (c * 3 + u) * 3;
            const V left = Load<V>(r.odd + j), mid = Load<V>(r.even + j),
                    right = Load<V>(r.odd + j + 1);
#pragma GCC unroll 16
            for (int k = 0; k < B; ++k) {
              acc[k] += w[k][t] * left;
              acc[k] += w[k][t + 1] * mid;
              acc[k] += w[k][t + 2] * right;
            }
          }
        }
#pragma GCC unroll 16
        for (int k = 0; k < B; ++k) __builtin_memcpy(y + out[k] + j, &acc[k], sizeof acc[k]);
      }
    }
  }
}

using BandFn = void (*)(const StemGeometry&, const float*, const float*, const float*, int64_t,
                        int64_t, int64_t, float*);

// Band at every level: generic (4 lanes), AVX2 + FMA (8), AVX-512 (16).
#define FLEETTUNE_STEM_LEVEL(suffix, target, V)                                              \
  target void Band##suffix(const StemGeometry& g, const float* x, const float* weight,       \
                           const float* bias, int64_t s, int64_t i0, int64_t i1, float* y) { \
    Band<V>(g, x, weight, bias, s, i0, i1, y);                                               \
  }

FLEETTUNE_STEM_LEVEL(Generic, , F32x4)
#if defined(__x86_64__)
FLEETTUNE_STEM_LEVEL(Avx2, __attribute__((target("avx2,fma"))), F32x8)
FLEETTUNE_STEM_LEVEL(Avx512, __attribute__((target("avx512f"))), F32x16)
#endif
#undef FLEETTUNE_STEM_LEVEL

struct Level {
  BandFn band;
  int64_t lanes;
};

Level CurrentLevel() {
#if defined(__x86_64__)
  switch (KernelIsa()) {
    case Isa::kAvx512:
      return {BandAvx512, 16};
    case Isa::kAvx2:
      return {BandAvx2, 8};
    case Isa::kGeneric:
      break;
  }
#endif
  return {BandGeneric, 4};
}

}  // namespace

bool StemConvApplies(const StemGeometry& g) {
  const int64_t wo = (g.w + 1) / 2;
  return g.n > 0 && g.c > 0 && g.c <= kMaxChannels && g.h > 0 && g.o > 0 && wo <= kMaxWidth &&
         wo % CurrentLevel().lanes == 0;
}

void F32StemConv(const StemGeometry& g, const float* x, const float* weight, const float* bias,
                 float* y, PlaneEpilogue epilogue) {
  const Level level = CurrentLevel();
  const int64_t ho = (g.h + 1) / 2, wo = (g.w + 1) / 2;
  const int64_t bands = (ho + kBandRows - 1) / kBandRows;
  ParallelFor(g.n * bands, kBandRows * wo * g.o * g.c * 9, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t s = item / bands, i0 = item % bands * kBandRows;
      const int64_t i1 = std::min(ho, i0 + kBandRows);
      level.band(g, x, weight, bias, s, i0, i1, y);
      if (epilogue.fn == nullptr) continue;
      for (int64_t o = 0; o < g.o; ++o) {
        epilogue.fn(epilogue.ctx, y + ((s * g.o + o) * ho + i0) * wo, (i1 - i0) * wo);
      }
    }
  });
}

}  // namespace fleettune::engine::kernels
