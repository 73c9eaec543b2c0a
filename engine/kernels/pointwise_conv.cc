#include "engine/kernels/pointwise_conv.h"

#include <algorithm>

#include "engine/kernels/isa.h"
#include "engine/kernels/parallel.h"
#include "engine/kernels/vec_math.h"

// GCC warns that 8- and 16-lane vectors passed by value change the ABI
// without AVX; the templates taking them are always inlined.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fleettune::engine::kernels {
namespace {

// The longest reduction a thread's packed rows of A hold (on its stack), and
// the longest worth packing (PointwiseConvApplies).
constexpr int64_t kMaxK = 1536;
constexpr int64_t kMaxPackedK = 576;

template <typename V>
constexpr int64_t kLanesOf = sizeof(V) / sizeof(float);

// Rows × vectors of a register tile: R·NV accumulators, NV loads of x and R
// broadcasts of A per step of k. AVX-512's 32 registers hold 12 × 2; AVX2's
// and SSE's 16 hold 6 × 2. The last block of rows takes the narrowest tile
// that covers it: a third of the widest, or two thirds.
template <typename V>
struct TileShape {
  static constexpr int kRows = sizeof(V) == 64 ? 12 : 6;
  static constexpr int kVectors = 2;
};

template <typename V>
FLEETTUNE_VEC_INLINE V Load(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

// One tile: R rows (A(r0 + i, kk) = panel[kk·panel_stride + i]) × NV vectors of columns
// starting at x_col[j] (row 0 of x) and y_col[j] (row 0 of y); row i of the
// tile is y's row at y_row[i] floats from there. Sums k in order; with
// `accumulate`, adds the sum to y, every y of the tile read before any is
// written (a repeated row or vector then stores the same value twice).
template <typename V, int R, int NV>
FLEETTUNE_VEC_INLINE void Tile(const float* panel, int64_t panel_stride, int64_t k, int64_t plane,
                               const float* const* x_col, const float* bias_rows,
                               const int64_t* y_row, float* const* y_col, bool accumulate) {
  V acc[R][NV] = {};
  const float* xp[NV];
  for (int j = 0; j < NV; ++j) xp[j] = x_col[j];
  for (int64_t kk = 0; kk < k; ++kk) {
    V xv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      xv[j] = Load<V>(xp[j]);
      xp[j] += plane;
    }
    const float* w = panel + kk * panel_stride;
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const V wi = Splat<V>(w[i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] += wi * xv[j];
    }
  }
  if (accumulate) {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = Load<V>(y_col[j] + y_row[i]) + acc[i][j];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      V out = acc[i][j];
      if (bias_rows != nullptr) out += Splat<V>(bias_rows[i]);
      __builtin_memcpy(y_col[j] + y_row[i], &out, sizeof out);
    }
  }
}

// Rows [r0, r0 + R) of y (the last repeated past the end) over columns of
// vectors [0, vectors) of the samples from s0; panel holds those rows of A.
template <typename V, int R>
FLEETTUNE_VEC_INLINE void Block(const PointwiseGeometry& g, const float* panel,
                                int64_t panel_stride, const float* x, const float* bias, int64_t s0,
                                int64_t r0, int64_t vectors, float* y) {
  constexpr int NV = TileShape<V>::kVectors;
  constexpr int64_t L = kLanesOf<V>;
  const int64_t per_sample = g.plane / L;
  int64_t y_row[R];
  float bias_rows[R];
  for (int i = 0; i < R; ++i) {
    const int64_t r = std::min(r0 + i, g.rows - 1);
    y_row[i] = r * g.plane;
    if (bias != nullptr) bias_rows[i] = bias[r];
  }
  for (int64_t v0 = 0; v0 < vectors; v0 += NV) {
    const float* x_col[NV];
    float* y_col[NV];
    for (int j = 0; j < NV; ++j) {
      const int64_t v = std::min(v0 + j, vectors - 1);
      const int64_t s = s0 + v / per_sample, p = v % per_sample * L;
      x_col[j] = x + s * g.k * g.plane + p;
      y_col[j] = y + s * g.rows * g.plane + p;
    }
    Tile<V, R, NV>(panel, panel_stride, g.k, g.plane, x_col, bias != nullptr ? bias_rows : nullptr,
                   y_row, y_col, g.accumulate);
  }
}

// How F32PointwiseConv splits g into work items, each one block of rows over
// one group of samples. A group's columns are its samples' planes cut into
// vectors, NV to a tile; planes narrower than a tile put several samples in
// one group. Items run group by group when a group has many tiles (a
// sample's x stays in cache across blocks of rows), else block by block (one
// packing of A serves every group).
struct Split {
  int64_t group;  // samples per group
  int64_t groups;
  int64_t row_blocks;
  bool rows_outer;

  Split(const PointwiseGeometry& g, int64_t lanes, int64_t rows, int64_t vectors) {
    group = std::max<int64_t>(1, vectors * lanes / g.plane);
    groups = (g.n + group - 1) / group;
    row_blocks = (g.rows + rows - 1) / rows;
    rows_outer = group * g.plane / lanes < 8 * vectors;
  }
  int64_t items() const { return groups * row_blocks; }
  int64_t GroupOf(int64_t item) const { return rows_outer ? item % groups : item / row_blocks; }
  int64_t RowBlockOf(int64_t item) const { return rows_outer ? item / groups : item % row_blocks; }
};

// Work items [begin, end). A tile or block running past the end repeats the
// last vector or row: the repeat computes and stores the same value to the
// same place, and spares a remainder kernel per shape.
template <typename V>
FLEETTUNE_VEC_INLINE void Run(const PointwiseGeometry& g, const float* a, const float* row_scale,
                              const float* x, const float* bias, float* y, PlaneEpilogue epilogue,
                              int64_t begin, int64_t end) {
  constexpr int R = TileShape<V>::kRows;
  constexpr int64_t L = kLanesOf<V>;
  const Split split(g, L, R, TileShape<V>::kVectors);
  const int64_t per_sample = g.plane / L;
  alignas(64) float panel[kMaxK * R];
  int64_t packed = -1;  // the row block in panel
  for (int64_t item = begin; item < end; ++item) {
    const int64_t s0 = split.GroupOf(item) * split.group;
    const int64_t r0 = split.RowBlockOf(item) * R;
    const int64_t rows = std::min<int64_t>(R, g.rows - r0);
    // The narrowest tile covering the block, panel rows R apart either way.
    const int tile_rows = rows <= R / 3 ? R / 3 : rows <= 2 * R / 3 ? 2 * R / 3 : R;
    // A transposed (the input gradient's Wᵀ) has a block's rows side by side:
    // read in place unless the tile runs past the last row.
    const float* rows_of_a = panel;
    int64_t panel_stride = R;
    if (g.a_row_stride == 1 && r0 + tile_rows <= g.rows && row_scale == nullptr) {
      rows_of_a = a + r0;
      panel_stride = g.a_k_stride;
    } else if (packed != r0) {
      for (int i = 0; i < R; ++i) {
        const int64_t r = std::min(r0 + i, g.rows - 1);
        const float* ar = a + r * g.a_row_stride;
        if (row_scale == nullptr) {
          for (int64_t kk = 0; kk < g.k; ++kk) panel[kk * R + i] = ar[kk * g.a_k_stride];
        } else {
          const float scale = row_scale[r];
          for (int64_t kk = 0; kk < g.k; ++kk) panel[kk * R + i] = ar[kk * g.a_k_stride] * scale;
        }
      }
      packed = r0;
    }
    const int64_t samples = std::min(split.group, g.n - s0);
    const int64_t vectors = samples * per_sample;
    switch (tile_rows) {
      case R / 3:
        Block<V, R / 3>(g, rows_of_a, panel_stride, x, bias, s0, r0, vectors, y);
        break;
      case 2 * R / 3:
        Block<V, 2 * R / 3>(g, rows_of_a, panel_stride, x, bias, s0, r0, vectors, y);
        break;
      default:
        Block<V, R>(g, rows_of_a, panel_stride, x, bias, s0, r0, vectors, y);
    }
    if (epilogue.fn == nullptr) continue;
    for (int64_t s = s0; s < s0 + samples; ++s) {
      epilogue.fn(epilogue.ctx, y + (s * g.rows + r0) * g.plane, rows * g.plane);
    }
  }
}

using RunFn = void (*)(const PointwiseGeometry&, const float*, const float*, const float*,
                       const float*, float*, PlaneEpilogue, int64_t, int64_t);

// Run at every level: generic (4 lanes), AVX2 + FMA (8), AVX-512 (16).
#define FLEETTUNE_POINTWISE_LEVEL(suffix, target, V)                                           \
  target void Run##suffix(const PointwiseGeometry& g, const float* a, const float* row_scale,  \
                          const float* x, const float* bias, float* y, PlaneEpilogue epilogue, \
                          int64_t begin, int64_t end) {                                        \
    Run<V>(g, a, row_scale, x, bias, y, epilogue, begin, end);                                 \
  }

FLEETTUNE_POINTWISE_LEVEL(Generic, , F32x4)
#if defined(__x86_64__)
FLEETTUNE_POINTWISE_LEVEL(Avx2, __attribute__((target("avx2,fma"))), F32x8)
FLEETTUNE_POINTWISE_LEVEL(Avx512, __attribute__((target("avx512f"))), F32x16)
#endif
#undef FLEETTUNE_POINTWISE_LEVEL

struct Level {
  RunFn run;
  int64_t lanes, rows, vectors;
};

template <typename V>
Level LevelOf(RunFn run) {
  return {run, kLanesOf<V>, TileShape<V>::kRows, TileShape<V>::kVectors};
}

Level CurrentLevel() {
#if defined(__x86_64__)
  switch (KernelIsa()) {
    case Isa::kAvx512:
      return LevelOf<F32x16>(RunAvx512);
    case Isa::kAvx2:
      return LevelOf<F32x8>(RunAvx2);
    case Isa::kGeneric:
      break;
  }
#endif
  return LevelOf<F32x4>(RunGeneric);
}

}  // namespace

bool PointwiseConvApplies(const PointwiseGeometry& g) {
  // Measured in MobileNetV2's training step against oneDNN's sgemm per
  // sample plus a bias pass (BENCHMARKS.md), at AVX-512 only: AVX2 and SSE
  // levels would be measured against an AVX-512 oneDNN on this host, where
  // they lose; an AVX2-only machine is yet to measure them on.
  //  - Forward (A = W, packed): wins with few input channels (16–64:
  //    1.3–1.7×) and where y has at least twice x's channels on small planes
  //    (the 4×4 and 8×8 expand layers, 1.2–1.3×). It loses where x is the
  //    larger (projections, 576 → 96: 0.65×): the GEMM packs x, which here
  //    streams from its strided rows once per block of rows.
  //  - Input gradient (A = Wᵀ, read in place): wins only with few channels
  //    on big planes (32×32 and 64×64: 1.1×); on 8×8 ones a sample's GEMM
  //    is as fast.
  if (KernelIsa() != Isa::kAvx512) return false;
  if (g.n <= 0 || g.rows <= 0 || g.k <= 0 || g.plane <= 0 || g.plane % 16 != 0) return false;
  if (g.a_row_stride == 1) return g.k <= 64 && g.plane >= 1024;
  if (g.k > kMaxPackedK) return false;
  return g.k <= 64 || (g.rows >= 2 * g.k && g.k * g.plane <= 48 * 1024);
}

void F32PointwiseConv(const PointwiseGeometry& g, const float* a, const float* x, const float* bias,
                      float* y, PlaneEpilogue epilogue, const float* row_scale) {
  const Level level = CurrentLevel();
  const Split split(g, level.lanes, level.rows, level.vectors);
  ParallelFor(split.items(), level.rows * split.group * g.plane * g.k / 8,
              [&](int64_t begin, int64_t end) {
                level.run(g, a, row_scale, x, bias, y, epilogue, begin, end);
              });
}

}  // namespace fleettune::engine::kernels
