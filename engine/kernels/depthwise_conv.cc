#include "engine/kernels/depthwise_conv.h"

#include <algorithm>

#include "engine/kernels/isa.h"
#include "engine/kernels/parallel.h"
#include "engine/kernels/vec.h"
#include "engine/kernels/vec_math.h"

// GCC warns that 8- and 16-lane vectors passed by value change the ABI
// without AVX; the templates taking them are always inlined.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fleettune::engine::kernels {
namespace {

// Output columns j whose input column j·s + offset lies in [0, size): [lo, hi).
void ValidRange(int64_t size, int64_t out, int64_t s, int64_t offset, int64_t* lo, int64_t* hi) {
  const int64_t l = offset >= 0 ? 0 : (-offset + s - 1) / s;
  const int64_t h = size - offset <= 0 ? 0 : (size - offset - 1) / s + 1;
  *lo = std::min(l, out);
  *hi = std::max(*lo, std::min(h, out));
}

// out[j] += Σ_v k[v]·in[j·S − pw + v] over the valid taps, 3 taps, dilation 1.
// out[j] += Σ_r Σ_v k[r][v]·in[r][j·S − pw + v] over R input rows and the
// valid taps of a 3-wide kernel with dilation 1, in one pass over out. Taps
// are added one by one, rows then columns, as the row-at-a-time kernel did:
// summing them in another order moved a MobileNetV2 BatchNorm gradient in the
// golden test past its tolerance.
template <int S, int R>
void Rows3(const float* const* in, const float* const* k, int64_t w, int64_t wo, int64_t pw,
           float* __restrict out) {
  int64_t lo, hi;  // every tap valid
  ValidRange(w - 2, wo, S, -pw, &lo, &hi);
  float kv[R][3];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < 3; ++v) kv[r][v] = k[r][v];
  }
  auto edge = [&](int64_t j) {
    float acc = out[j];
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < 3; ++v) {
        const int64_t iw = j * S - pw + v;
        if (iw >= 0 && iw < w) acc += kv[r][v] * in[r][iw];
      }
    }
    out[j] = acc;
  };
  for (int64_t j = 0; j < lo; ++j) edge(j);
  const float* __restrict r0 = in[0];
  const float* __restrict r1 = in[R > 1 ? 1 : 0];
  const float* __restrict r2 = in[R > 2 ? 2 : 0];
  for (int64_t j = lo; j < hi; ++j) {
    const int64_t o = j * S - pw;
    float acc = out[j];
    acc += kv[0][0] * r0[o];
    acc += kv[0][1] * r0[o + 1];
    acc += kv[0][2] * r0[o + 2];
    if constexpr (R > 1) {
      acc += kv[1][0] * r1[o];
      acc += kv[1][1] * r1[o + 1];
      acc += kv[1][2] * r1[o + 2];
    }
    if constexpr (R > 2) {
      acc += kv[2][0] * r2[o];
      acc += kv[2][1] * r2[o + 1];
      acc += kv[2][2] * r2[o + 2];
    }
    out[j] = acc;
  }
  for (int64_t j = std::max(hi, lo); j < wo; ++j) edge(j);
}

template <int S>
void Rows3(int rows, const float* const* in, const float* const* k, int64_t w, int64_t wo,
           int64_t pw, float* out) {
  switch (rows) {
    case 1:
      return Rows3<S, 1>(in, k, w, wo, pw, out);
    case 2:
      return Rows3<S, 2>(in, k, w, wo, pw, out);
    case 3:
      return Rows3<S, 3>(in, k, w, wo, pw, out);
  }
}

// --- 3×3 planes as flat vectors ------------------------------------------------
//
// A 3×3 layer with padding 1, dilation 1 and stride 1 or 2 (every depthwise
// layer of MobileNet) reads each output's nine taps at fixed offsets once its
// input rows are laid out as wide as the output: for stride 1 the input rows
// themselves, between a zero row above and below; for stride 2 the input's
// four phases (even or odd rows × even or odd columns), each wo wide. A block
// of L consecutive outputs of the plane, flattened, is then nine loads and
// multiply-adds at constant offsets, whatever the plane's width: a 4×4 plane
// is one AVX-512 vector, where the row loops above spend most of their time
// on edge columns. Taps that fall off the left or right edge are zeroed by
// lane masks (only in a row's first and last block when rows are whole
// vectors); those above or below read zero rows. Each output sums bias, then
// the taps row by row, column by column, as the row loops do; a masked tap
// adds k·0, which leaves the sum as it is, so the generic level gives the row
// loops' bits. Planes are processed in bands of rows whose laid-out input fits
// kBandFloats (an L1-sized stack buffer). The weight gradient reads the same
// layout (dy times each tap), the stride-1 input gradient is the forward
// pass with the kernel flipped, and the stride-2 input gradient has a layout
// of its own (InputGradS2Planes).

constexpr int64_t kBandFloats = 8192;

template <typename V>
using LaneMask = decltype(V{} < V{});

template <typename V>
inline constexpr int64_t kWidthOf = sizeof(V) / sizeof(float);

template <typename V>
FLEETTUNE_VEC_INLINE V LoadV(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

// v where keep, else 0; no-op unless kMask.
template <bool kMask, typename V>
FLEETTUNE_VEC_INLINE V Keep(LaneMask<V> keep, V v) {
  if constexpr (kMask) {
    return keep ? v : V{};
  } else {
    return v;
  }
}

// Each lane's column in rows `width` wide, for consecutive blocks of
// kWidthOf<V> flattened outputs starting at column 0.
template <typename V>
struct Columns {
  LaneMask<V> col;
  int32_t step, width;

  FLEETTUNE_VEC_INLINE explicit Columns(int64_t w) : width(static_cast<int32_t>(w)) {
    int32_t lanes[kWidthOf<V>], c = 0;  // lane % w, without dividing
    for (int64_t lane = 0; lane < kWidthOf<V>; ++lane) {
      lanes[lane] = c;
      if (++c == width) c = 0;
    }
    step = c;
    __builtin_memcpy(&col, lanes, sizeof col);
  }
  FLEETTUNE_VEC_INLINE LaneMask<V> NotFirst() const { return col != 0; }
  FLEETTUNE_VEC_INLINE LaneMask<V> NotLast() const { return col != width - 1; }
  FLEETTUNE_VEC_INLINE void Advance() {
    col += step;
    col = col >= width ? col - width : col;
  }
};

template <typename V>
FLEETTUNE_VEC_INLINE void Store(float* out, V v) {
  __builtin_memcpy(out, &v, sizeof v);
}

// dst[i] = src[i] for i < n, a vector at a time: the buffers' rows are too
// short for a call to memcpy to pay (GCC turns element loops into one).
template <typename V>
FLEETTUNE_VEC_INLINE void CopyFloats(const float* src, int64_t n, float* dst) {
  constexpr int64_t kL = kWidthOf<V>;
  if (n < kL) {
    for (int64_t i = 0; i < kL; ++i) {
      if (i < n) dst[i] = src[i];
    }
    return;
  }
  for (int64_t i = 0; i + kL <= n; i += kL) Store(dst + i, LoadV<V>(src + i));
  Store(dst + n - kL, LoadV<V>(src + n - kL));  // the tail, overlapping
}

// dst[i] = 0 for i < n rounded up to whole vectors: callers leave room.
template <typename V>
FLEETTUNE_VEC_INLINE void ZeroVectors(int64_t n, float* dst) {
  for (int64_t i = 0; i < n; i += kWidthOf<V>) Store(dst + i, V{});
}

// Stores the first n <= kWidthOf<V> lanes of v.
template <typename V>
FLEETTUNE_VEC_INLINE void StoreFirst(float* out, V v, int64_t n) {
  if (n == kWidthOf<V>) return Store(out, v);
  float lanes[kWidthOf<V>];
  __builtin_memcpy(lanes, &v, sizeof v);
  for (int64_t i = 0; i < n; ++i) out[i] = lanes[i];
}

// Calls visit.Block<kFirst, kLast>(q, not_first, not_last, count) for every
// block of outputs [q, q + count) of n flattened outputs in rows `cols.width`
// wide (cols: the first block's columns), count = L but for a last partial
// block; kFirst / kLast say whether some lane of the block is in the first /
// last column, and the masks which lanes are not.
template <typename V, typename Visitor>
FLEETTUNE_VEC_INLINE void ForEachBlock(int64_t n, Columns<V> cols, Visitor& visit) {
  constexpr int64_t kL = kWidthOf<V>;
  const int64_t w = cols.width;
  if (w % kL == 0) {  // whole vectors per row: only a row's ends need masks
    const LaneMask<V> not_first = cols.NotFirst();
    const LaneMask<V> not_last = cols.col != kL - 1;  // the row's last block
    for (int64_t row = 0; row < n; row += w) {
      if (w == kL) {
        visit.template Block<true, true>(row, not_first, not_last, kL);
        continue;
      }
      visit.template Block<true, false>(row, not_first, not_last, kL);
      for (int64_t q = row + kL; q < row + w - kL; q += kL) {
        visit.template Block<false, false>(q, not_first, not_last, kL);
      }
      visit.template Block<false, true>(row + w - kL, not_first, not_last, kL);
    }
    return;
  }
  for (int64_t q = 0; q < n; q += kL) {
    visit.template Block<true, true>(q, cols.NotFirst(), cols.NotLast(), std::min(kL, n - q));
    cols.Advance();
  }
}

// The nine taps x[3u + v] of a block of outputs, zero where they fall off the
// plane. Stride 1: tap (u, v) of output q is b[q + u·w + v].
template <typename V>
struct WindowS1 {
  const float* b;
  int64_t w;

  template <bool kFirst, bool kLast>
  FLEETTUNE_VEC_INLINE void Taps(int64_t q, LaneMask<V> not_first, LaneMask<V> not_last,
                                 V* x) const {
    for (int u = 0; u < 3; ++u) {
      const float* p = b + q + u * w;
      x[3 * u] = Keep<kFirst>(not_first, LoadV<V>(p));
      x[3 * u + 1] = LoadV<V>(p + 1);
      x[3 * u + 2] = Keep<kLast>(not_last, LoadV<V>(p + 2));
    }
  }
};

// Stride 2: output (i, j) reads input rows 2i − 1, 2i, 2i + 1 (odd-row phases
// at q, even-row ones at q, odd-row ones at q + wo) and columns 2j − 1, 2j,
// 2j + 1 (odd column j − 1, even j, odd j).
template <typename V>
struct WindowS2 {
  const float *ee, *eo, *oe, *oo;
  int64_t wo;

  template <bool kFirst, bool>
  FLEETTUNE_VEC_INLINE void Taps(int64_t q, LaneMask<V> not_first, LaneMask<V>, V* x) const {
    x[0] = Keep<kFirst>(not_first, LoadV<V>(oo + q - 1));
    x[1] = LoadV<V>(oe + q);
    x[2] = LoadV<V>(oo + q);
    x[3] = Keep<kFirst>(not_first, LoadV<V>(eo + q - 1));
    x[4] = LoadV<V>(ee + q);
    x[5] = LoadV<V>(eo + q);
    x[6] = Keep<kFirst>(not_first, LoadV<V>(oo + q + wo - 1));
    x[7] = LoadV<V>(oe + q + wo);
    x[8] = LoadV<V>(oo + q + wo);
  }
};

// out[q] = bias + Σ_t k[t]·tap t, taps added in order.
template <typename V, typename Window>
struct ForwardBlocks {
  Window window;
  float k[9];
  V bias;
  float* out;

  template <bool kFirst, bool kLast>
  FLEETTUNE_VEC_INLINE void Block(int64_t q, LaneMask<V> not_first, LaneMask<V> not_last,
                                  int64_t count) {
    V x[9];
    window.template Taps<kFirst, kLast>(q, not_first, not_last, x);
    V acc = bias;
    for (int t = 0; t < 9; ++t) acc += k[t] * x[t];
    StoreFirst(out + q, acc, count);
  }
};

// Σ_q dy[q]·tap t for each t: vector partial sums, and scalar ones for
// partial blocks, until Flush adds them to double sums.
template <typename V, typename Window>
struct WeightGradBlocks {
  Window window;
  const float* dy;
  V acc[9];
  float tail[9];

  template <bool kFirst, bool kLast>
  FLEETTUNE_VEC_INLINE void Block(int64_t q, LaneMask<V> not_first, LaneMask<V> not_last,
                                  int64_t count) {
    V x[9];
    window.template Taps<kFirst, kLast>(q, not_first, not_last, x);
    if (count == kWidthOf<V>) {
      const V d = LoadV<V>(dy + q);
      for (int t = 0; t < 9; ++t) acc[t] += d * x[t];
      return;
    }
    for (int64_t lane = 0; lane < count; ++lane) {
      for (int t = 0; t < 9; ++t) tail[t] += dy[q + lane] * x[t][lane];
    }
  }

  FLEETTUNE_VEC_INLINE void Flush(double* sum) {
    for (int t = 0; t < 9; ++t) {
      float s = tail[t];
      for (int64_t lane = 0; lane < kWidthOf<V>; ++lane) s += acc[t][lane];
      sum[t] += s;
      acc[t] = V{};
      tail[t] = 0.0f;
    }
  }
};

// Input row ih of a plane h × w split into even columns e[j] = row[2j] and odd
// ones o[j] = row[2j + 1], j < wo, zero past the row or outside the plane;
// writes whole vectors (callers leave room).
template <typename V>
FLEETTUNE_VEC_INLINE void SplitColumns(const float* x, int64_t h, int64_t w, int64_t ih, int64_t wo,
                                       float* __restrict e, float* __restrict o) {
  constexpr int64_t kL = kWidthOf<V>;
  if (ih < 0 || ih >= h) {
    ZeroVectors<V>(wo, e);
    ZeroVectors<V>(wo, o);
    return;
  }
  const float* __restrict row = x + ih * w;
  int64_t j = 0;
  for (; 2 * (j + kL) <= w; j += kL) {
    V even, odd;
    Deinterleave(LoadV<V>(row + 2 * j), LoadV<V>(row + 2 * j + kL), &even, &odd);
    Store(e + j, even);
    Store(o + j, odd);
  }
  for (; j < wo; ++j) {
    e[j] = 2 * j < w ? row[2 * j] : 0.0f;
    o[j] = 2 * j + 1 < w ? row[2 * j + 1] : 0.0f;
  }
}

// Channel *c's taps (flipped when `flip`) and bias; *c moves on to the next
// channel of `channels`.
FLEETTUNE_VEC_INLINE void NextChannel(int64_t channels, const float* weight, const float* bias,
                                      bool flip, int64_t* c, float* k, float* b) {
  const float* kc = weight + *c * 9;
  for (int t = 0; t < 9; ++t) k[t] = kc[flip ? 8 - t : t];
  *b = bias != nullptr ? bias[*c] : 0.0f;
  if (++*c == channels) *c = 0;
}

// Stride 1. A band of output rows [i0, i0 + rows) reads input rows i0 − 1 …
// i0 + rows, laid out after one leading float and followed by L floats.
struct BandS1 {
  template <typename V>
  using Window = WindowS1<V>;

  static int64_t Floats(const DepthwiseGeometry& g, int64_t rows, int64_t lanes) {
    return 1 + (rows + 2) * g.w + lanes;
  }
  static int64_t OutputWidth(const DepthwiseGeometry& g) { return g.w; }

  template <typename V>
  FLEETTUNE_VEC_INLINE static void LayOut(const DepthwiseGeometry& g, const float* x, int64_t i0,
                                          int64_t rows, float* b) {
    const int64_t h = g.h, w = g.w;
    b[0] = 0.0f;
    // b[1 + r·w + c] = x[i0 − 1 + r][c]: input rows [lo, hi) are in the
    // plane and contiguous, one copy; zeros around them.
    const int64_t lo = std::max<int64_t>(i0 - 1, 0), hi = std::min(i0 + rows + 1, h);
    if (lo > i0 - 1) ZeroVectors<V>(w, b + 1);  // before the copy: may run into it
    CopyFloats<V>(x + lo * w, (hi - lo) * w, b + 1 + (lo - (i0 - 1)) * w);
    ZeroVectors<V>((i0 + rows + 1 - hi) * w + kWidthOf<V>, b + 1 + (hi - (i0 - 1)) * w);
  }

  template <typename V>
  FLEETTUNE_VEC_INLINE static WindowS1<V> WindowOf(const DepthwiseGeometry& g, const float* b,
                                                   int64_t) {
    return {b, g.w};
  }
};

// Stride 2. A band of output rows [i0, i0 + rows) reads the four phases of
// input rows 2·i0 − 1 … 2(i0 + rows) − 1, each after one leading zero and
// followed by L zeros: ee/eo hold input rows 2(i0 + r) for r < rows, oe/oo
// rows 2(i0 + r) − 1 for r <= rows; e/o: even or odd columns.
struct BandS2 {
  template <typename V>
  using Window = WindowS2<V>;

  static int64_t EvenFloats(const DepthwiseGeometry& g, int64_t rows, int64_t lanes) {
    return 1 + rows * g.wo + lanes;
  }
  static int64_t Floats(const DepthwiseGeometry& g, int64_t rows, int64_t lanes) {
    return 2 * EvenFloats(g, rows, lanes) + 2 * (EvenFloats(g, rows, lanes) + g.wo);
  }
  static int64_t OutputWidth(const DepthwiseGeometry& g) { return g.wo; }

  template <typename V>
  FLEETTUNE_VEC_INLINE static void LayOut(const DepthwiseGeometry& g, const float* x, int64_t i0,
                                          int64_t rows, float* b) {
    constexpr int64_t kL = kWidthOf<V>;
    const int64_t n = rows * g.wo, even = EvenFloats(g, rows, kL), odd = even + g.wo;
    float* ee = b + 1;
    float* eo = ee + even;
    float* oe = eo + even;
    float* oo = oe + odd;
    for (int64_t r = 0; r < rows; ++r) {
      SplitColumns<V>(x, g.h, g.w, 2 * (i0 + r), g.wo, ee + r * g.wo, eo + r * g.wo);
    }
    for (int64_t r = 0; r <= rows; ++r) {
      SplitColumns<V>(x, g.h, g.w, 2 * (i0 + r) - 1, g.wo, oe + r * g.wo, oo + r * g.wo);
    }
    for (float* phase : {ee, eo}) ZeroVectors<V>(kL, phase + n), phase[-1] = 0.0f;
    for (float* phase : {oe, oo}) ZeroVectors<V>(kL, phase + n + g.wo), phase[-1] = 0.0f;
  }

  template <typename V>
  FLEETTUNE_VEC_INLINE static WindowS2<V> WindowOf(const DepthwiseGeometry& g, const float* b,
                                                   int64_t rows) {
    const int64_t even = EvenFloats(g, rows, kWidthOf<V>), odd = even + g.wo;
    return {b + 1, b + 1 + even, b + 1 + 2 * even, b + 1 + 2 * even + odd, g.wo};
  }
};

// The most output rows of a band whose laid-out input fits the buffer.
template <typename Band>
int64_t BandRows(const DepthwiseGeometry& g, int64_t lanes) {
  int64_t rows = 1;
  while (rows < g.ho && Band::Floats(g, rows + 1, lanes) <= kBandFloats) ++rows;
  return rows;
}

// Output planes [begin, end) (sample-major, one per input plane) of a
// Flat3x3 geometry, each followed by the epilogue; kernels flipped when
// `flip` (the input gradient as a forward convolution). Planes whose laid-out
// input fits the buffer whole are laid out several at a time, then computed:
// a vector load spanning floats just copied into the buffer waits for the
// copies to reach the cache (stores forward only to loads within one store),
// which cost small planes more than their arithmetic.
template <typename V, typename Band>
FLEETTUNE_VEC_INLINE void Planes(const DepthwiseGeometry& g, const float* x, const float* weight,
                                 const float* bias, bool flip, int64_t begin, int64_t end,
                                 PlaneEpilogue epilogue, float* y) {
  constexpr int64_t kL = kWidthOf<V>;
  float b[kBandFloats + kL];  // layouts may write up to a vector past their end
  const int64_t in_plane = g.h * g.w, out_plane = g.ho * g.wo;
  const Columns<V> cols(Band::OutputWidth(g));
  // No lambdas here: a lambda's body is compiled for the default ISA, not
  // this function's target.
  ForwardBlocks<V, typename Band::template Window<V>> blocks{};
  float b_c;
  int64_t c = begin % g.c;  // the channel of the next plane, kept without dividing
  const int64_t whole = Band::Floats(g, g.ho, kL);
  if (whole <= kBandFloats) {
    const int64_t group = kBandFloats / whole;
    for (int64_t p0 = begin; p0 < end; p0 += group) {
      const int64_t count = std::min(group, end - p0);
      for (int64_t i = 0; i < count; ++i) {
        Band::template LayOut<V>(g, x + (p0 + i) * in_plane, 0, g.ho, b + i * whole);
      }
      for (int64_t p = p0; p < p0 + count; ++p) {
        NextChannel(g.c, weight, bias, flip, &c, blocks.k, &b_c);
        blocks.bias = Splat<V>(b_c);
        blocks.window = Band::template WindowOf<V>(g, b + (p - p0) * whole, g.ho);
        blocks.out = y + p * out_plane;
        ForEachBlock<V>(out_plane, cols, blocks);
        if (epilogue.fn != nullptr) epilogue.fn(epilogue.ctx, y + p * out_plane, out_plane);
      }
    }
    return;
  }
  const int64_t band = BandRows<Band>(g, kL);
  for (int64_t p = begin; p < end; ++p) {
    NextChannel(g.c, weight, bias, flip, &c, blocks.k, &b_c);
    blocks.bias = Splat<V>(b_c);
    for (int64_t i0 = 0; i0 < g.ho; i0 += band) {
      const int64_t rows = std::min(band, g.ho - i0);
      Band::template LayOut<V>(g, x + p * in_plane, i0, rows, b);
      blocks.window = Band::template WindowOf<V>(g, b, rows);
      blocks.out = y + p * out_plane + i0 * g.wo;
      ForEachBlock<V>(rows * g.wo, cols, blocks);
    }
    if (epilogue.fn != nullptr) epilogue.fn(epilogue.ctx, y + p * out_plane, out_plane);
  }
}

// dweight of channels [begin, end) of a Flat3x3 geometry: for each, the
// samples' planes laid out as in Planes (several at a time when whole ones
// fit), f32 vector partial sums per group of planes (or per plane), added
// up in double.
template <typename V, typename Band>
FLEETTUNE_VEC_INLINE void WeightGradChannels(const DepthwiseGeometry& g, const float* x,
                                             const float* dy, int64_t begin, int64_t end,
                                             float* dweight) {
  constexpr int64_t kL = kWidthOf<V>;
  float b[kBandFloats + kL];
  const int64_t in_plane = g.h * g.w, out_plane = g.ho * g.wo;
  const Columns<V> cols(Band::OutputWidth(g));
  const int64_t whole = Band::Floats(g, g.ho, kL);
  const int64_t group = whole <= kBandFloats ? kBandFloats / whole : 0;
  const int64_t band = BandRows<Band>(g, kL);
  WeightGradBlocks<V, typename Band::template Window<V>> blocks{};
  for (int64_t c = begin; c < end; ++c) {
    double sum[9] = {};
    for (int t = 0; t < 9; ++t) blocks.acc[t] = V{}, blocks.tail[t] = 0.0f;
    if (group > 0) {
      for (int64_t n0 = 0; n0 < g.n; n0 += group) {
        const int64_t count = std::min(group, g.n - n0);
        for (int64_t i = 0; i < count; ++i) {
          Band::template LayOut<V>(g, x + ((n0 + i) * g.c + c) * in_plane, 0, g.ho, b + i * whole);
        }
        for (int64_t i = 0; i < count; ++i) {
          blocks.window = Band::template WindowOf<V>(g, b + i * whole, g.ho);
          blocks.dy = dy + ((n0 + i) * g.c + c) * out_plane;
          ForEachBlock<V>(out_plane, cols, blocks);
        }
        blocks.Flush(sum);
      }
    } else {
      for (int64_t n = 0; n < g.n; ++n) {
        for (int64_t i0 = 0; i0 < g.ho; i0 += band) {
          const int64_t rows = std::min(band, g.ho - i0);
          Band::template LayOut<V>(g, x + (n * g.c + c) * in_plane, i0, rows, b);
          blocks.window = Band::template WindowOf<V>(g, b, rows);
          blocks.dy = dy + (n * g.c + c) * out_plane + i0 * g.wo;
          ForEachBlock<V>(rows * g.wo, cols, blocks);
        }
        blocks.Flush(sum);
      }
    }
    for (int t = 0; t < 9; ++t) dweight[c * 9 + t] = static_cast<float>(sum[t]);
  }
}

template <typename V>
FLEETTUNE_VEC_INLINE void Planes3x3(const DepthwiseGeometry& g, const float* x, const float* weight,
                                    const float* bias, bool flip, int64_t begin, int64_t end,
                                    PlaneEpilogue epilogue, float* y) {
  if (g.sh == 1) {
    Planes<V, BandS1>(g, x, weight, bias, flip, begin, end, epilogue, y);
  } else {
    Planes<V, BandS2>(g, x, weight, bias, flip, begin, end, epilogue, y);
  }
}

template <typename V>
FLEETTUNE_VEC_INLINE void WeightGrad3x3(const DepthwiseGeometry& g, const float* x, const float* dy,
                                        int64_t begin, int64_t end, float* dweight) {
  if (g.sh == 1) {
    WeightGradChannels<V, BandS1>(g, x, dy, begin, end, dweight);
  } else {
    WeightGradChannels<V, BandS2>(g, x, dy, begin, end, dweight);
  }
}

// (a0, a1, …) and (b0, b1, …) interleaved: (a0, b0, a1, b1, …) in *lo, the
// rest in *hi.
template <typename V>
FLEETTUNE_VEC_INLINE void Interleave(V a, V b, V* lo, V* hi) {
  if constexpr (kWidthOf<V> == 4) {
    *lo = __builtin_shufflevector(a, b, 0, 4, 1, 5);
    *hi = __builtin_shufflevector(a, b, 2, 6, 3, 7);
  } else if constexpr (kWidthOf<V> == 8) {
    *lo = __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11);
    *hi = __builtin_shufflevector(a, b, 4, 12, 5, 13, 6, 14, 7, 15);
  } else {
    static_assert(kWidthOf<V> == 16);
    *lo = __builtin_shufflevector(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    *hi =
        __builtin_shufflevector(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  }
}

// row[2j] = e[j], row[2j + 1] = o[j] for the w columns of a row.
template <typename V>
FLEETTUNE_VEC_INLINE void InterleaveRow(const float* e, const float* o, int64_t wo, int64_t w,
                                        float* row) {
  constexpr int64_t kL = kWidthOf<V>;
  int64_t j = 0;
  for (; 2 * (j + kL) <= w; j += kL) {
    V lo, hi;
    Interleave(LoadV<V>(e + j), LoadV<V>(o + j), &lo, &hi);
    Store(row + 2 * j, lo);
    Store(row + 2 * j + kL, hi);
  }
  for (; j < wo; ++j) {
    row[2 * j] = e[j];
    if (2 * j + 1 < w) row[2 * j + 1] = o[j];
  }
}

// The stride-2 input gradient's four phases, dx[2a + r][2b + s] for r, s in
// {0, 1} (ee, eo, oe, oo), from dy laid out row-major with a zero row after
// it: dx[2a][2b] reads dy[a][b] through the centre tap; dx[2a][2b + 1]
// dy[a][b + 1] and dy[a][b] through taps (1, 0) and (1, 2); dx[2a + 1][2b]
// dy[a][b] and dy[a + 1][b] through (2, 1) and (0, 1); dx[2a + 1][2b + 1] all
// four. Terms are added in the row loops' order (dy rows ascending, then
// taps v = 0, 1, 2).
template <typename V>
struct InputGradS2Blocks {
  const float* d;
  int64_t wo;
  float k[9];
  float *ee, *eo, *oe, *oo;

  template <bool, bool kLast>
  FLEETTUNE_VEC_INLINE void Block(int64_t q, LaneMask<V>, LaneMask<V> not_last, int64_t) {
    const V d00 = LoadV<V>(d + q), d10 = LoadV<V>(d + q + wo);
    const V d01 = Keep<kLast>(not_last, LoadV<V>(d + q + 1));
    const V d11 = Keep<kLast>(not_last, LoadV<V>(d + q + wo + 1));
    const V zero = {};
    Store(ee + q, zero + k[4] * d00);
    Store(eo + q, (zero + k[3] * d01) + k[5] * d00);
    Store(oe + q, (zero + k[7] * d00) + k[1] * d10);
    Store(oo + q, (((zero + k[6] * d01) + k[8] * d00) + k[0] * d11) + k[2] * d10);
  }
};

// dx planes [begin, end) of a 3×3, stride-2, padding-1 layer (InputGradS2
// says which): for each band of dy rows, the band (and the row below it) laid
// out with a zero row past the plane, its phases computed a vector at a time,
// then interleaved into dx rows. Small planes are laid out several at a time,
// as in Planes.
template <typename V>
FLEETTUNE_VEC_INLINE void InputGradS2Planes(const DepthwiseGeometry& g, const float* dy,
                                            const float* weight, int64_t begin, int64_t end,
                                            float* dx) {
  constexpr int64_t kL = kWidthOf<V>;
  float b[kBandFloats + kL];
  float phases[kBandFloats + 4 * kL];
  const int64_t ho = g.ho, wo = g.wo, in_plane = g.h * g.w, out_plane = ho * wo;
  int64_t band = 1;
  while (band < ho && (band + 2) * wo + kL <= kBandFloats &&
         4 * ((band + 1) * wo + kL) <= kBandFloats) {
    ++band;
  }
  const int64_t whole = (ho + 1) * wo + kL;  // a laid-out plane
  const int64_t group = band == ho ? kBandFloats / whole : 1;
  const Columns<V> cols(wo);
  InputGradS2Blocks<V> blocks{};
  blocks.wo = wo;
  int64_t c = begin % g.c;
  for (int64_t p0 = begin; p0 < end; p0 += group) {
    const int64_t count = std::min(group, end - p0);
    for (int64_t i = 0; i < count && group > 1; ++i) {
      CopyFloats<V>(dy + (p0 + i) * out_plane, out_plane, b + i * whole);
      ZeroVectors<V>(wo + kL, b + i * whole + out_plane);
    }
    for (int64_t p = p0; p < p0 + count; ++p) {
      float unused_bias;
      NextChannel(g.c, weight, nullptr, false, &c, blocks.k, &unused_bias);
      for (int64_t a0 = 0; a0 < ho; a0 += band) {
        const int64_t rows = std::min(band, ho - a0), n = rows * wo;
        if (group > 1) {
          blocks.d = b + (p - p0) * whole;
        } else {  // dy rows a0 … a0 + rows, zero past the plane
          const int64_t have = std::min(rows + 1, ho - a0);
          CopyFloats<V>(dy + p * out_plane + a0 * wo, have * wo, b);
          ZeroVectors<V>((rows + 1 - have) * wo + kL, b + have * wo);
          blocks.d = b;
        }
        const int64_t stride = n + kL;
        blocks.ee = phases, blocks.eo = phases + stride;
        blocks.oe = phases + 2 * stride, blocks.oo = phases + 3 * stride;
        ForEachBlock<V>(n, cols, blocks);
        float* dxp = dx + p * in_plane;
        for (int64_t a = 0; a < rows; ++a) {
          const int64_t ih = 2 * (a0 + a);
          InterleaveRow<V>(blocks.ee + a * wo, blocks.eo + a * wo, wo, g.w, dxp + ih * g.w);
          if (ih + 1 < g.h) {
            InterleaveRow<V>(blocks.oe + a * wo, blocks.oo + a * wo, wo, g.w, dxp + (ih + 1) * g.w);
          }
        }
      }
    }
  }
}

// Whether InputGradS2Planes computes g's input gradient: 3×3, stride 2,
// padding 1, dilation 1, one output channel per input channel, rows narrow
// enough for a band of one row at every level.
bool InputGradS2(const DepthwiseGeometry& g) {
  constexpr int64_t kMaxL = 16;
  return g.sh == 2 && g.sw == 2 && g.kh == 3 && g.kw == 3 && g.dh == 1 && g.dw == 1 && g.ph == 1 &&
         g.pw == 1 && g.mult == 1 && g.ho == (g.h - 1) / 2 + 1 && g.wo == (g.w - 1) / 2 + 1 &&
         4 * (2 * g.wo + kMaxL) <= kBandFloats;
}

// Each at every level: generic (4 lanes), AVX2 + FMA (8), AVX-512 (16).
#define FLEETTUNE_DEPTHWISE_LEVEL(suffix, target, V)                                             \
  target void Planes3x3##suffix(const DepthwiseGeometry& g, const float* x, const float* weight, \
                                const float* bias, bool flip, int64_t begin, int64_t end,        \
                                PlaneEpilogue epilogue, float* y) {                              \
    Planes3x3<V>(g, x, weight, bias, flip, begin, end, epilogue, y);                             \
  }                                                                                              \
  target void WeightGrad3x3##suffix(const DepthwiseGeometry& g, const float* x, const float* dy, \
                                    int64_t begin, int64_t end, float* dweight) {                \
    WeightGrad3x3<V>(g, x, dy, begin, end, dweight);                                             \
  }                                                                                              \
  target void InputGradS2##suffix(const DepthwiseGeometry& g, const float* dy,                   \
                                  const float* weight, int64_t begin, int64_t end, float* dx) {  \
    InputGradS2Planes<V>(g, dy, weight, begin, end, dx);                                         \
  }

FLEETTUNE_DEPTHWISE_LEVEL(Generic, , F32x4)
#if defined(__x86_64__)
FLEETTUNE_DEPTHWISE_LEVEL(Avx2, __attribute__((target("avx2,fma"))), F32x8)
FLEETTUNE_DEPTHWISE_LEVEL(Avx512, __attribute__((target("avx512f"))), F32x16)
#endif
#undef FLEETTUNE_DEPTHWISE_LEVEL

// Whether Planes3x3 and WeightGrad3x3 compute g: 3×3, padding 1, dilation 1,
// stride 1 or 2 both ways, one output channel per input channel, and rows
// narrow enough for a band of one output row at every level.
bool Flat3x3(const DepthwiseGeometry& g) {
  constexpr int64_t kMaxL = 16;
  if (g.kh != 3 || g.kw != 3 || g.ph != 1 || g.pw != 1 || g.dh != 1 || g.dw != 1) return false;
  if (g.mult != 1 || g.sh != g.sw || (g.sh != 1 && g.sh != 2)) return false;
  if (g.sh == 1) {
    return g.ho == g.h && g.wo == g.w && BandS1::Floats(g, 1, kMaxL) <= kBandFloats;
  }
  return g.ho == (g.h - 1) / 2 + 1 && g.wo == (g.w - 1) / 2 + 1 &&
         BandS2::Floats(g, 1, kMaxL) <= kBandFloats;
}

// Planes3x3 and WeightGrad3x3 at the kernel ISA's width.
void Planes3x3(const DepthwiseGeometry& g, const float* x, const float* weight, const float* bias,
               bool flip, int64_t begin, int64_t end, PlaneEpilogue epilogue, float* y) {
#if defined(__x86_64__)
  switch (KernelIsa()) {
    case Isa::kAvx512:
      return Planes3x3Avx512(g, x, weight, bias, flip, begin, end, epilogue, y);
    case Isa::kAvx2:
      return Planes3x3Avx2(g, x, weight, bias, flip, begin, end, epilogue, y);
    case Isa::kGeneric:
      break;
  }
#endif
  Planes3x3Generic(g, x, weight, bias, flip, begin, end, epilogue, y);
}

void InputGradS2(const DepthwiseGeometry& g, const float* dy, const float* weight, int64_t begin,
                 int64_t end, float* dx) {
#if defined(__x86_64__)
  switch (KernelIsa()) {
    case Isa::kAvx512:
      return InputGradS2Avx512(g, dy, weight, begin, end, dx);
    case Isa::kAvx2:
      return InputGradS2Avx2(g, dy, weight, begin, end, dx);
    case Isa::kGeneric:
      break;
  }
#endif
  InputGradS2Generic(g, dy, weight, begin, end, dx);
}

void WeightGrad3x3(const DepthwiseGeometry& g, const float* x, const float* dy, int64_t begin,
                   int64_t end, float* dweight) {
#if defined(__x86_64__)
  switch (KernelIsa()) {
    case Isa::kAvx512:
      return WeightGrad3x3Avx512(g, x, dy, begin, end, dweight);
    case Isa::kAvx2:
      return WeightGrad3x3Avx2(g, x, dy, begin, end, dweight);
    case Isa::kGeneric:
      break;
  }
#endif
  WeightGrad3x3Generic(g, x, dy, begin, end, dweight);
}

// One output plane from one input plane; adds to `out` when accumulate.
void ForwardPlane(const DepthwiseGeometry& g, const float* xc, const float* k, float bias,
                  bool accumulate, float* yo) {
  const bool row3 = g.kw == 3 && g.dw == 1 && (g.sw == 1 || g.sw == 2);
  for (int64_t i = 0; i < g.ho; ++i) {
    float* out = yo + i * g.wo;
    if (!accumulate) std::fill_n(out, g.wo, bias);
    // Up to three valid input rows at a time through Rows3.
    const float* rows[3];
    const float* ks[3];
    int count = 0;
    for (int64_t u = 0; u < g.kh; ++u) {
      const int64_t ih = i * g.sh - g.ph + u * g.dh;
      if (ih < 0 || ih >= g.h) continue;
      const float* in = xc + ih * g.w;
      const float* ku = k + u * g.kw;
      if (row3) {
        rows[count] = in;
        ks[count] = ku;
        if (++count == 3) {
          g.sw == 1 ? Rows3<1>(count, rows, ks, g.w, g.wo, g.pw, out)
                    : Rows3<2>(count, rows, ks, g.w, g.wo, g.pw, out);
          count = 0;
        }
        continue;
      }
      for (int64_t v = 0; v < g.kw; ++v) {
        const float wv = ku[v];
        const int64_t off = v * g.dw - g.pw;
        int64_t lo, hi;
        ValidRange(g.w, g.wo, g.sw, off, &lo, &hi);
        for (int64_t j = lo; j < hi; ++j) out[j] += wv * in[j * g.sw + off];
      }
    }
    if (count > 0) {
      g.sw == 1 ? Rows3<1>(count, rows, ks, g.w, g.wo, g.pw, out)
                : Rows3<2>(count, rows, ks, g.w, g.wo, g.pw, out);
    }
  }
}

// Running sums Σ_j d[j]·in[j·S − pw + v] for v = 0, 1, 2 over the rows of one
// plane: vector partial sums for the columns where every tap is valid, scalar
// ones for the edges, reduced once per plane.
struct Dot3Sums {
  F32x4 v[3] = {};
  float s[3] = {};

  void FlushInto(double* acc) {
    for (int t = 0; t < 3; ++t) {
      acc[t] += HorizontalSum(v[t]) + s[t];
      v[t] = F32x4{};
      s[t] = 0.0f;
    }
  }
};

// One row; [lo, hi) are the output columns where all three taps are valid.
template <int S>
void Dot3Row(const float* __restrict d, const float* __restrict in, int64_t w, int64_t wo,
             int64_t pw, int64_t lo, int64_t hi, Dot3Sums* sums) {
  int64_t j = lo;
  F32x4 a0 = sums->v[0], a1 = sums->v[1], a2 = sums->v[2];
  for (; j + 4 <= hi; j += 4) {
    const float* p = in + j * S - pw;
    const F32x4 dv = LoadF32x4(d + j);
    if constexpr (S == 1) {
      a0 += dv * LoadF32x4(p);
      a1 += dv * LoadF32x4(p + 1);
      a2 += dv * LoadF32x4(p + 2);
    } else {
      // Deinterleave stride-2 columns p[0, 2, 4, 6], p[1, 3, 5, 7] and
      // p[2, 4, 6, 8], loading nothing past p[8] (the last valid tap).
      const F32x4 x0 = LoadF32x4(p), x1 = LoadF32x4(p + 4);
      const F32x4 y0 = LoadF32x4(p + 2), y1 = LoadF32x4(p + 5);
      a0 += dv * __builtin_shufflevector(x0, x1, 0, 2, 4, 6);
      a1 += dv * __builtin_shufflevector(x0, x1, 1, 3, 5, 7);
      a2 += dv * __builtin_shufflevector(y0, y1, 0, 2, 5, 7);
    }
  }
  sums->v[0] = a0, sums->v[1] = a1, sums->v[2] = a2;
  float* s = sums->s;
  for (; j < hi; ++j) {
    const float* p = in + j * S - pw;
    s[0] += d[j] * p[0];
    s[1] += d[j] * p[1];
    s[2] += d[j] * p[2];
  }
  auto edge = [&](int64_t jj) {
    for (int v = 0; v < 3; ++v) {
      const int64_t iw = jj * S - pw + v;
      if (iw >= 0 && iw < w) s[v] += d[jj] * in[iw];
    }
  };
  for (int64_t jj = 0; jj < lo; ++jj) edge(jj);
  for (int64_t jj = std::max(hi, lo); jj < wo; ++jj) edge(jj);
}

// dweight of output channel o for a 3-wide kernel with dilation 1.
template <int S>
void WeightGrad3(const DepthwiseGeometry& g, const float* x, const float* dy, int64_t o,
                 float* dk) {
  const int64_t o_count = g.c * g.mult, in_plane = g.h * g.w, out_plane = g.ho * g.wo;
  int64_t lo, hi;
  ValidRange(g.w - 2, g.wo, S, -g.pw, &lo, &hi);
  for (int64_t u = 0; u < g.kh; ++u) {
    double acc[3] = {};
    Dot3Sums sums;
    for (int64_t n = 0; n < g.n; ++n) {
      const float* xc = x + (n * g.c + o / g.mult) * in_plane;
      const float* dyo = dy + (n * o_count + o) * out_plane;
      for (int64_t i = 0; i < g.ho; ++i) {
        const int64_t ih = i * g.sh - g.ph + u * g.dh;
        if (ih < 0 || ih >= g.h) continue;
        Dot3Row<S>(dyo + i * g.wo, xc + ih * g.w, g.w, g.wo, g.pw, lo, hi, &sums);
      }
      sums.FlushInto(acc);  // f32 sums over one plane, planes added in double
    }
    for (int v = 0; v < 3; ++v) dk[u * 3 + v] = static_cast<float>(acc[v]);
  }
}

// dx of one channel for a 3×3 kernel, stride 2, padding 1, dilation 1 (the
// downsampling depthwise layers of MobileNet-style networks), as a gather:
// each dx element is written once instead of read and written for each of
// the nine taps. Input row ih reads dy row ih/2 through kernel row 1 (even
// ih), or rows (ih − 1)/2 and (ih + 1)/2 through kernel rows 2 and 0 (odd
// ih); columns likewise. Terms are added in the order the scatter adds them
// (dy rows ascending, then taps v = 0, 1, 2), so the bits are the same.
void BackwardInputPlaneS2K3(const DepthwiseGeometry& g, const float* dy, const float* k,
                            float* dx) {
  for (int64_t ih = 0; ih < g.h; ++ih) {
    float* __restrict row = dx + ih * g.w;
    std::fill_n(row, g.w, 0.0f);
    // (dy row, kernel row) pairs in ascending dy-row order.
    const int64_t first = (ih - 1) / 2, second = (ih + 1) / 2;  // odd ih
    const int64_t rows[2] = {ih % 2 == 0 ? ih / 2 : first, second};
    const int64_t taps[2] = {ih % 2 == 0 ? 1 : 2, 0};
    const int count = ih % 2 == 0 ? 1 : 2;
    for (int r = 0; r < count; ++r) {
      if (rows[r] < 0 || rows[r] >= g.ho) continue;
      const float* __restrict d = dy + rows[r] * g.wo;
      const float k0 = k[taps[r] * 3], k1 = k[taps[r] * 3 + 1], k2 = k[taps[r] * 3 + 2];
      // Column 2m reads d[m] through k1; column 2m + 1 reads d[m + 1]
      // through k0, then d[m] through k2. Four m at a time: the even and odd
      // columns' terms interleaved into two vectors of the row, added in the
      // scalar loop's order (the even columns' second term is +0).
      int64_t m = 0;
      for (; 2 * m + 7 < g.w && m + 4 < g.wo; m += 4) {
        const F32x4 d0 = LoadF32x4(d + m), d1 = LoadF32x4(d + m + 1);
        const F32x4 even = k1 * d0, odd_first = k0 * d1, odd_second = k2 * d0, zero = {};
        const F32x4 first_lo = __builtin_shufflevector(even, odd_first, 0, 4, 1, 5);
        const F32x4 first_hi = __builtin_shufflevector(even, odd_first, 2, 6, 3, 7);
        const F32x4 second_lo = __builtin_shufflevector(zero, odd_second, 0, 4, 1, 5);
        const F32x4 second_hi = __builtin_shufflevector(zero, odd_second, 2, 6, 3, 7);
        const F32x4 lo = (LoadF32x4(row + 2 * m) + first_lo) + second_lo;
        const F32x4 hi = (LoadF32x4(row + 2 * m + 4) + first_hi) + second_hi;
        __builtin_memcpy(row + 2 * m, &lo, sizeof lo);
        __builtin_memcpy(row + 2 * m + 4, &hi, sizeof hi);
      }
      for (; 2 * m + 1 < g.w && m + 1 < g.wo; ++m) {
        row[2 * m] += k1 * d[m];
        float odd = row[2 * m + 1];
        odd += k0 * d[m + 1];
        odd += k2 * d[m];
        row[2 * m + 1] = odd;
      }
      for (; m < g.wo && 2 * m < g.w; ++m) {
        row[2 * m] += k1 * d[m];
        if (2 * m + 1 < g.w) row[2 * m + 1] += k2 * d[m];
      }
    }
  }
}

}  // namespace

void F32DepthwiseConv(const DepthwiseGeometry& g, const float* x, const float* weight,
                      const float* bias, float* y, PlaneEpilogue epilogue) {
  const int64_t o_count = g.c * g.mult, plane = g.ho * g.wo;
  if (Flat3x3(g)) {
    ParallelFor(g.n * o_count, plane * 9, [&](int64_t begin, int64_t end) {
      Planes3x3(g, x, weight, bias, /*flip=*/false, begin, end, epilogue, y);
    });
    return;
  }
  ParallelFor(g.n * o_count, plane * g.kh * g.kw, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / o_count, o = p % o_count;
      ForwardPlane(g, x + (n * g.c + o / g.mult) * g.h * g.w, weight + o * g.kh * g.kw,
                   bias ? bias[o] : 0.0f, false, y + p * plane);
      if (epilogue.fn != nullptr) epilogue.fn(epilogue.ctx, y + p * plane, plane);
    }
  });
}

void F32DepthwiseConvBackwardInput(const DepthwiseGeometry& g, const float* dy, const float* weight,
                                   float* dx, PlaneEpilogue epilogue) {
  const int64_t o_count = g.c * g.mult, in_plane = g.h * g.w, out_plane = g.ho * g.wo;
  const int64_t kk = g.kh * g.kw;
  // With stride 1, dx is the convolution of dy with the flipped kernel and
  // padding dilation·(k − 1) − padding, which reuses the forward rows.
  constexpr int64_t kMaxTaps = 64;
  DepthwiseGeometry t = g;
  t.h = g.ho, t.w = g.wo, t.ho = g.h, t.wo = g.w;
  t.ph = g.dh * (g.kh - 1) - g.ph, t.pw = g.dw * (g.kw - 1) - g.pw;
  const bool transposed_forward =
      g.sh == 1 && g.sw == 1 && t.ph >= 0 && t.pw >= 0 && kk <= kMaxTaps;
  const bool stride2_3x3 = g.sh == 2 && g.sw == 2 && g.kh == 3 && g.kw == 3 && g.dh == 1 &&
                           g.dw == 1 && g.ph == 1 && g.pw == 1 && g.mult == 1;
  if (transposed_forward && Flat3x3(t)) {
    ParallelFor(g.n * g.c, in_plane * 9, [&](int64_t begin, int64_t end) {
      Planes3x3(t, dy, weight, nullptr, /*flip=*/true, begin, end, epilogue, dx);
    });
    return;
  }
  if (InputGradS2(g)) {
    // The epilogue on groups of planes of at most 64 KiB, while in cache.
    const int64_t group = std::max<int64_t>(1, (int64_t{16} << 10) / in_plane);
    ParallelFor(g.n * g.c, in_plane * 3, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; p += group) {
        const int64_t q = std::min(end, p + group);
        InputGradS2(g, dy, weight, p, q, dx);
        if (epilogue.fn != nullptr)
          epilogue.fn(epilogue.ctx, dx + p * in_plane, (q - p) * in_plane);
      }
    });
    return;
  }
  ParallelFor(g.n * g.c, in_plane * g.mult * kk, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.c, c = p % g.c;
      float* dxc = dx + p * in_plane;
      if (stride2_3x3) {
        BackwardInputPlaneS2K3(g, dy + (n * o_count + c) * out_plane, weight + c * kk, dxc);
        if (epilogue.fn != nullptr) epilogue.fn(epilogue.ctx, dxc, in_plane);
        continue;
      }
      for (int64_t m = 0; m < g.mult; ++m) {
        const int64_t o = c * g.mult + m;
        const float* k = weight + o * kk;
        const float* dyo = dy + (n * o_count + o) * out_plane;
        if (transposed_forward) {
          float flipped[kMaxTaps];
          for (int64_t i = 0; i < kk; ++i) flipped[i] = k[kk - 1 - i];
          ForwardPlane(t, dyo, flipped, 0.0f, m > 0, dxc);
          continue;
        }
        if (m == 0) std::fill_n(dxc, in_plane, 0.0f);
        // Scatter each dy row back onto the rows it read.
        for (int64_t i = 0; i < g.ho; ++i) {
          const float* d = dyo + i * g.wo;
          for (int64_t u = 0; u < g.kh; ++u) {
            const int64_t ih = i * g.sh - g.ph + u * g.dh;
            if (ih < 0 || ih >= g.h) continue;
            float* row = dxc + ih * g.w;
            for (int64_t v = 0; v < g.kw; ++v) {
              const float wv = k[u * g.kw + v];
              const int64_t off = v * g.dw - g.pw;
              int64_t lo, hi;
              ValidRange(g.w, g.wo, g.sw, off, &lo, &hi);
              for (int64_t j = lo; j < hi; ++j) row[j * g.sw + off] += wv * d[j];
            }
          }
        }
      }
      if (epilogue.fn != nullptr) epilogue.fn(epilogue.ctx, dxc, in_plane);
    }
  });
}

void F32DepthwiseConvBackwardWeight(const DepthwiseGeometry& g, const float* x, const float* dy,
                                    float* dweight) {
  const int64_t o_count = g.c * g.mult, in_plane = g.h * g.w, out_plane = g.ho * g.wo;
  const bool row3 = g.kw == 3 && g.dw == 1 && (g.sw == 1 || g.sw == 2);
  if (Flat3x3(g)) {
    ParallelFor(o_count, g.n * out_plane * 9,
                [&](int64_t begin, int64_t end) { WeightGrad3x3(g, x, dy, begin, end, dweight); });
    return;
  }
  ParallelFor(o_count, g.n * out_plane * g.kh * g.kw, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      float* dk = dweight + o * g.kh * g.kw;
      if (row3) {
        if (g.sw == 1) {
          WeightGrad3<1>(g, x, dy, o, dk);
        } else {
          WeightGrad3<2>(g, x, dy, o, dk);
        }
        continue;
      }
      for (int64_t u = 0; u < g.kh; ++u) {
        for (int64_t v = 0; v < g.kw; ++v) {
          const int64_t off = v * g.dw - g.pw;
          int64_t lo, hi;
          ValidRange(g.w, g.wo, g.sw, off, &lo, &hi);
          double acc = 0.0;
          for (int64_t n = 0; n < g.n; ++n) {
            const float* xc = x + (n * g.c + o / g.mult) * in_plane;
            const float* dyo = dy + (n * o_count + o) * out_plane;
            for (int64_t i = 0; i < g.ho; ++i) {
              const int64_t ih = i * g.sh - g.ph + u * g.dh;
              if (ih < 0 || ih >= g.h) continue;
              const float* in = xc + ih * g.w;
              const float* d = dyo + i * g.wo;
              if (g.sw == 1) {
                acc += DotF32(d + lo, in + lo + off, hi - lo);
              } else {
                float s = 0.0f;
                for (int64_t j = lo; j < hi; ++j) s += d[j] * in[j * g.sw + off];
                acc += s;
              }
            }
          }
          dk[u * g.kw + v] = static_cast<float>(acc);
        }
      }
    }
  });
}

}  // namespace fleettune::engine::kernels
