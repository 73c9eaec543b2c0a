#include "engine/kernels/batch_norm.h"

#include <algorithm>
#include <cmath>

#include "engine/kernels/isa.h"
#include "engine/kernels/parallel.h"
#include "engine/kernels/vec.h"
#include "engine/kernels/vec_math.h"

// 8- and 16-lane vectors are only ever used inside functions compiled for
// AVX2 or AVX-512 (see vec_math.h).
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fleettune::engine::kernels {
namespace {

const float* Row(const ChannelLayout& l, const float* base, int64_t n, int64_t c) {
  return base + (n * l.channels + c) * l.inner;
}
float* Row(const ChannelLayout& l, float* base, int64_t n, int64_t c) {
  return base + (n * l.channels + c) * l.inner;
}

// Batch statistics of channel c in one pass over x, shifted by the channel's
// first value; rows are summed in f32 lanes, rows added in double. With dy,
// a second pass (x is then cache-resident) sums dy and dy·(x − mean) centred
// on the mean itself: centring on the shift instead would leave
// Σ dy·(x − mean) as a difference of two large terms when Σ dy is large.
struct Moments {
  double mean = 0.0, var = 0.0;  // biased variance
  double sum_dy = 0.0;           // Σ dy
  double sum_dy_xc = 0.0;        // Σ dy·(x − mean)
};

Moments ChannelMoments(const ChannelLayout& l, const float* x, const float* dy, int64_t c) {
  const float shift = Row(l, x, 0, c)[0];
  double m[2] = {};
  for (int64_t n = 0; n < l.outer; ++n) ShiftedMomentsF32(Row(l, x, n, c), l.inner, shift, m);
  const double count = static_cast<double>(l.per_channel());
  const double mean_shifted = m[0] / count;
  Moments r;
  r.mean = shift + mean_shifted;
  r.var = std::max(0.0, m[1] / count - mean_shifted * mean_shifted);
  if (dy == nullptr) return r;
  const float mf = static_cast<float>(r.mean);
  double g[4] = {};
  for (int64_t n = 0; n < l.outer; ++n) {
    ShiftedMomentsWithGradF32(Row(l, x, n, c), Row(l, dy, n, c), l.inner, mf, g);
  }
  r.sum_dy = g[2];
  // Σ dy·(x − mean) = Σ dy·(x − mf) + (mf − mean)·Σ dy.
  r.sum_dy_xc = g[3] + (mf - r.mean) * g[2];
  return r;
}

template <typename Fn>
void ForChannels(const ChannelLayout& l, int64_t passes, const Fn& fn) {
  ParallelFor(l.channels, passes * l.per_channel(), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) fn(c);
  });
}

// out[c] = Σ_{r0 <= r < r1} x[r, c] for x [*, cols], each column's rows added
// in order. The sums stay in registers, kRegs vectors of columns at a time
// walking down the rows: accumulating into a partial row in memory instead
// chains every row's add through a store and a reload, 4–6× slower on BERT's
// [1024, 256] bias gradients.
template <typename V>
FLEETTUNE_VEC_INLINE void ColumnSumsV(const float* x, int64_t r0, int64_t r1, int64_t cols,
                                      float* out) {
  constexpr int64_t kLanes = sizeof(V) / sizeof(float);
  constexpr int kRegs = 8;
  int64_t c = 0;
  for (; c + kRegs * kLanes <= cols; c += kRegs * kLanes) {
    V acc[kRegs] = {};
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = x + r * cols + c;
      for (int j = 0; j < kRegs; ++j) {
        V v;
        __builtin_memcpy(&v, row + j * kLanes, sizeof v);
        acc[j] += v;
      }
    }
    __builtin_memcpy(out + c, acc, sizeof acc);
  }
  for (; c + kLanes <= cols; c += kLanes) {
    V acc = {};
    for (int64_t r = r0; r < r1; ++r) {
      V v;
      __builtin_memcpy(&v, x + r * cols + c, sizeof v);
      acc += v;
    }
    __builtin_memcpy(out + c, &acc, sizeof acc);
  }
  for (; c < cols; ++c) {
    float sum = 0.0f;
    for (int64_t r = r0; r < r1; ++r) sum += x[r * cols + c];
    out[c] = sum;
  }
}

void ColumnSumsGeneric(const float* x, int64_t r0, int64_t r1, int64_t cols, float* out) {
  ColumnSumsV<F32x4>(x, r0, r1, cols, out);
}
#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) void ColumnSumsAvx2(const float* x, int64_t r0, int64_t r1,
                                                        int64_t cols, float* out) {
  ColumnSumsV<F32x8>(x, r0, r1, cols, out);
}
__attribute__((target("avx512f"))) void ColumnSumsAvx512(const float* x, int64_t r0, int64_t r1,
                                                         int64_t cols, float* out) {
  ColumnSumsV<F32x16>(x, r0, r1, cols, out);
}
#endif

// At the device class's vector width (isa.h); every width adds each column's
// rows in the same order, so the sums are the same bits.
void ColumnSums(const float* x, int64_t r0, int64_t r1, int64_t cols, float* out) {
#if defined(__x86_64__)
  switch (KernelIsa()) {
    case Isa::kAvx512:
      return ColumnSumsAvx512(x, r0, r1, cols, out);
    case Isa::kAvx2:
      return ColumnSumsAvx2(x, r0, r1, cols, out);
    case Isa::kGeneric:
      break;
  }
#endif
  ColumnSumsGeneric(x, r0, r1, cols, out);
}

}  // namespace

void F32BatchNormTrain(const ChannelLayout& l, const float* x, const float* gamma,
                       const float* beta, float eps, float* y) {
  ForChannels(l, 2, [&](int64_t c) {
    const Moments s = ChannelMoments(l, x, nullptr, c);
    const float scale = static_cast<float>(gamma[c] / std::sqrt(s.var + eps));
    const float shift = static_cast<float>(beta[c] - s.mean * scale);
    for (int64_t n = 0; n < l.outer; ++n) {
      ScaleShiftF32(Row(l, x, n, c), l.inner, scale, shift, Row(l, y, n, c));
    }
  });
}

void F32BatchNormTrainGrad(const ChannelLayout& l, const float* dy, const float* x,
                           const float* gamma, float eps, float* dx) {
  const double m = static_cast<double>(l.per_channel());
  ForChannels(l, 4, [&](int64_t c) {
    const Moments s = ChannelMoments(l, x, dy, c);
    const double mean = s.mean;
    const double inv = 1.0 / std::sqrt(s.var + eps);
    const double sum_dy = s.sum_dy, sum_dy_xc = s.sum_dy_xc;
    // dx = a·dy + k·x + k0 (see the reference kernel).
    const double a = gamma[c] * inv;
    const double mean_dy = sum_dy / m, mean_dy_xhat = sum_dy_xc * inv / m;
    const float fa = static_cast<float>(a);
    const float fk = static_cast<float>(-a * mean_dy_xhat * inv);
    const float fk0 = static_cast<float>(a * (mean_dy_xhat * inv * mean - mean_dy));
    for (int64_t n = 0; n < l.outer; ++n) {
      const float* __restrict dyr = Row(l, dy, n, c);
      const float* __restrict xr = Row(l, x, n, c);
      float* dxr = Row(l, dx, n, c);
      for (int64_t i = 0; i < l.inner; ++i) dxr[i] = fa * dyr[i] + fk * xr[i] + fk0;
    }
  });
}

void F32BatchNormWeightGrad(const ChannelLayout& l, const float* dy, const float* x,
                            const float* running_mean, const float* running_var, float eps,
                            float* dgamma) {
  ForChannels(l, 2, [&](int64_t c) {
    if (running_mean == nullptr) {
      const Moments s = ChannelMoments(l, x, dy, c);
      dgamma[c] = static_cast<float>(s.sum_dy_xc / std::sqrt(s.var + eps));
      return;
    }
    const float mf = running_mean[c];
    double sum_dy_xc = 0.0;
    for (int64_t n = 0; n < l.outer; ++n) {
      double m[4] = {};
      ShiftedMomentsWithGradF32(Row(l, x, n, c), Row(l, dy, n, c), l.inner, mf, m);
      sum_dy_xc += m[3];
    }
    dgamma[c] =
        static_cast<float>(sum_dy_xc / std::sqrt(static_cast<double>(running_var[c]) + eps));
  });
}

void F32BatchNormStatsUpdate(const ChannelLayout& l, const float* x, float momentum,
                             float* running_mean, float* running_var) {
  const double m = static_cast<double>(l.per_channel());
  const double mom = momentum;
  ForChannels(l, 1, [&](int64_t c) {
    const Moments s = ChannelMoments(l, x, nullptr, c);
    const double unbiased = s.var * m / (m - 1.0);
    running_mean[c] = static_cast<float>((1.0 - mom) * running_mean[c] + mom * s.mean);
    running_var[c] = static_cast<float>((1.0 - mom) * running_var[c] + mom * unbiased);
  });
}

// Rows shorter than 64 floats (MobileNetV2's last 4×4 planes: 16) go in
// blocks of channels, each sample's rows of a block as one run for the
// epilogue: channel by channel, such rows cost a strided pass and an epilogue
// call per 16 outputs, 4× as long. Longer rows go channel by channel, each
// row's epilogue right after it (blocks ran 10–40% slower on 8×8 to 32×32
// planes).
void F32BatchNormFrozen(const ChannelLayout& l, const float* x, const float* mean, const float* var,
                        const float* gamma, const float* beta, float eps, float* y,
                        PlaneEpilogue epilogue) {
  auto scale_of = [&](int64_t c) { return FrozenScale(gamma[c], var[c], eps); };
  if (l.inner >= 64) {
    ForChannels(l, 1, [&](int64_t c) {
      const float scale = scale_of(c);
      const float shift = beta[c] - mean[c] * scale;
      for (int64_t n = 0; n < l.outer; ++n) {
        ScaleShiftF32(Row(l, x, n, c), l.inner, scale, shift, Row(l, y, n, c));
        if (epilogue.fn != nullptr) epilogue.fn(epilogue.ctx, Row(l, y, n, c), l.inner);
      }
    });
    return;
  }
  constexpr int64_t kBlock = 256;
  ParallelFor(l.channels, l.per_channel(), [&](int64_t begin, int64_t end) {
    float scale[kBlock], shift[kBlock];
    for (int64_t c0 = begin; c0 < end; c0 += kBlock) {
      const int64_t c1 = std::min(end, c0 + kBlock);
      for (int64_t c = c0; c < c1; ++c) {
        scale[c - c0] = scale_of(c);
        shift[c - c0] = beta[c] - mean[c] * scale[c - c0];
      }
      for (int64_t n = 0; n < l.outer; ++n) {
        for (int64_t c = c0; c < c1; ++c) {
          ScaleShiftF32(Row(l, x, n, c), l.inner, scale[c - c0], shift[c - c0], Row(l, y, n, c));
        }
        if (epilogue.fn != nullptr) {
          epilogue.fn(epilogue.ctx, Row(l, y, n, c0), (c1 - c0) * l.inner);
        }
      }
    }
  });
}

void F32BatchNormFrozenGrad(const ChannelLayout& l, const float* dy, const float* var,
                            const float* gamma, float eps, float* dx) {
  ForChannels(l, 1, [&](int64_t c) {
    const float scale = FrozenScale(gamma[c], var[c], eps);
    for (int64_t n = 0; n < l.outer; ++n) {
      ScaleShiftF32(Row(l, dy, n, c), l.inner, scale, 0.0f, Row(l, dx, n, c));
    }
  });
}

void F32SumOuterInner(const ChannelLayout& l, const float* x, float scale, float* scratch,
                      float* y) {
  if (l.inner == 1 && l.channels >= kColumnSumMaxBlockedWidth) {
    // Column sums of wide rows: accumulate whole rows, split over columns.
    ParallelFor(l.channels, l.outer, [&](int64_t begin, int64_t end) {
      float* __restrict out = y + begin;
      const int64_t width = end - begin;
      std::fill_n(out, width, 0.0f);
      for (int64_t a = 0; a < l.outer; ++a) {
        const float* __restrict row = x + a * l.channels + begin;
        for (int64_t k = 0; k < width; ++k) out[k] += row[k];
      }
      if (scale != 1.0f) {
        for (int64_t k = 0; k < width; ++k) out[k] *= scale;
      }
    });
    return;
  }
  if (l.inner == 1) {
    // Column sums of [outer, channels] (bias gradients): each block of rows is
    // summed into its own partial row (ColumnSums), then the partial rows are
    // added in block order. Splitting over columns instead had each thread
    // read half of every 256–1024-float row, 3–4× slower.
    const int64_t rows = l.outer, cols = l.channels;
    const int64_t blocks = std::min(kColumnSumBlocks, rows);
    ParallelFor(blocks, rows / blocks * cols, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        ColumnSums(x, rows * b / blocks, rows * (b + 1) / blocks, cols, scratch + b * cols);
      }
    });
    ParallelFor(cols, blocks, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        float sum = 0.0f;
        for (int64_t b = 0; b < blocks; ++b) sum += scratch[b * cols + k];
        y[k] = scale == 1.0f ? sum : sum * scale;
      }
    });
    return;
  }
  ForChannels(l, 1, [&](int64_t c) {
    double sum = 0.0;
    for (int64_t n = 0; n < l.outer; ++n) sum += SumF32(Row(l, x, n, c), l.inner);
    y[c] = static_cast<float>(sum * scale);
  });
}

}  // namespace fleettune::engine::kernels
