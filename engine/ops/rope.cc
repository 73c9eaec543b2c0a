// kRope: rotary position embedding, in the Llama / Hugging Face convention.
//
// x f32 [..., D] (D even), positions i32 broadcastable to x's shape without
// its last dimension (e.g. [T] for x [B, H, T, D], or [B, 1, T] for
// per-sequence positions) → y, same shape as x. With h = D/2, for j < h:
//   θ_j = p · base^(−2j/D)
//   y_j     = x_j · cos θ_j − x_{j+h} · sin θ_j
//   y_{j+h} = x_{j+h} · cos θ_j + x_j · sin θ_j
// i.e. y = x ⊙ cos + rotate_half(x) ⊙ sin with rotate_half(x) = [−x₂, x₁]
// and cos/sin repeated over both halves (HF's apply_rotary_pos_emb).
// RopeAttrs::inverse rotates by −θ: the inverse map, and the transpose, which
// is what the gradient needs. θ is computed like HF in float32
// (inv_freq = 1 / base^(2j/D), then p · inv_freq) so that large positions
// round the same way. Any i32 position is valid; positions are not
// differentiable.
#include <array>
#include <cmath>

#include "engine/base/status_macros.h"
#include "engine/kernels/parallel.h"
#include "engine/kernels/vec_math.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  const auto& attrs = std::get<RopeAttrs>(node.attrs);
  if (!(attrs.base > 1.0f) || !std::isfinite(attrs.base)) {
    return OpError(node, "base must be finite and > 1, got ", attrs.base);
  }
  const TensorType& x = *in[0];
  const TensorType& pos = *in[1];
  RETURN_IF_ERROR(ExpectDType(node, x, DType::kF32, "x"));
  RETURN_IF_ERROR(ExpectDType(node, pos, DType::kI32, "positions"));
  if (x.shape.empty() || x.shape.back() % 2 != 0) {
    return OpError(node, "x needs an even last dimension, got ", TypeToString(x));
  }
  const Shape rows(x.shape.begin(), x.shape.end() - 1);
  absl::StatusOr<Shape> b = BroadcastShapes(pos.shape, rows);
  if (!b.ok() || *b != rows) {
    return OpError(node, "positions ", TypeToString(pos), " do not broadcast to ",
                   ShapeToString(rows), " (x ", TypeToString(x), " without its last dimension)");
  }
  return x;
}

// Broadcast strides of the positions over x's row dimensions (x without its
// last one); returns the number of rows. Computed by hand: forming the row
// shape as a Shape would allocate.
int64_t PositionStrides(const Shape& xs, const Shape& ps, Strides* pos_stride) {
  const int rank = static_cast<int>(xs.size());
  *pos_stride = Strides{};
  int64_t pstride = 1, num_rows = 1;
  for (int k = 0; k < rank - 1; ++k) {
    const int dim = rank - 2 - k;
    const int pdim = static_cast<int>(ps.size()) - 1 - k;
    const int64_t np = pdim >= 0 ? ps[pdim] : 1;
    (*pos_stride)[dim] = (np == 1) ? 0 : pstride;
    pstride *= np;
    num_rows *= xs[dim];
  }
  return num_rows;
}

// The positions element of consecutive rows of x, from row `first` on: an
// odometer over the row dims (x's dims but the last) stepping the broadcast
// position offset.
class RowPositions {
 public:
  RowPositions(const Shape& xs, const Strides& pos_stride, int64_t first)
      : xs_(xs), stride_(pos_stride), rank_(static_cast<int>(xs.size())) {
    for (int dim = rank_ - 2; dim >= 0; --dim) {
      idx_[dim] = first % xs_[dim];
      first /= xs_[dim];
      offset_ += idx_[dim] * stride_[dim];
    }
  }
  int64_t offset() const { return offset_; }
  void Next() {
    for (int dim = rank_ - 2; dim >= 0; --dim) {
      ++idx_[dim];
      offset_ += stride_[dim];
      if (idx_[dim] < xs_[dim]) return;
      offset_ -= stride_[dim] * idx_[dim];
      idx_[dim] = 0;
    }
  }

 private:
  const Shape& xs_;
  const Strides& stride_;
  const int rank_;
  std::array<int64_t, kMaxRank> idx_{};
  int64_t offset_ = 0;
};

// HF's inv_freq_j = 1 / base^(2j/D), in float32.
float InvFreq(int64_t j, int64_t d, float base) {
  return 1.0f / std::pow(base, static_cast<float>(2 * j) / static_cast<float>(d));
}

void Kernel(const KernelArgs& args) {
  const auto& attrs = args.attrs<RopeAttrs>();
  const Shape& xs = *args.in(0).shape;
  const Shape& ps = *args.in(1).shape;
  const int64_t d = xs.back(), h = d / 2;
  const float* x = args.in(0).f32();
  const int32_t* pos = args.in(1).i32();
  float* y = args.output.f32();
  const float sign = attrs.inverse ? -1.0f : 1.0f;
  // Rows (x without its last dim) are contiguous; positions are read through
  // their broadcast strides over the row dims.
  Strides pos_stride;
  const int64_t num_rows = PositionStrides(xs, ps, &pos_stride);
  // inv_freq depends on j only: computed once when it fits the stack buffer
  // (head dims up to 512; larger ones recompute it per element).
  constexpr int64_t kMaxHalf = 256;
  std::array<float, kMaxHalf> inv_freq_table;
  auto inv_freq = [&](int64_t j) { return InvFreq(j, d, attrs.base); };
  const bool tabled = h <= kMaxHalf;
  if (tabled) {
    for (int64_t j = 0; j < h; ++j) inv_freq_table[j] = inv_freq(j);
  }
  RowPositions positions(xs, pos_stride, 0);
  for (int64_t r = 0; r < num_rows; ++r, positions.Next()) {
    const float p = static_cast<float>(pos[positions.offset()]);
    const float* xr = x + r * d;
    float* yr = y + r * d;
    for (int64_t j = 0; j < h; ++j) {
      const float theta = p * (tabled ? inv_freq_table[j] : inv_freq(j));
      const float c = std::cos(theta), s = sign * std::sin(theta);
      const float a = xr[j], b = xr[j + h];
      yr[j] = a * c - b * s;
      yr[j + h] = b * c + a * s;
    }
  }
}

// The fast kernel computes cos θ and sin θ once per position element and
// frequency into a table ([positions][h] cosines, then as many sines), four
// frequencies at a time (kernels::SinCos: within 3e-7 of libm's, which Kernel
// calls, for θ up to 8192); rows then rotate with table lookups, split over
// the threads. Rows of every head and example share a position's table row,
// so the sin/cos calls drop by B·H. libm's sinf and cosf, one pair per table
// entry, took most of Llama-mini's rope time. The table is in scratch, or,
// where the runtime gives rope nodes of the same positions one table
// (KernelArgs::rope_table), computed by the first of them only: a decoder's
// layers, forward and backward, rotate by the same positions.
size_t FastScratchBytes(const Node&, absl::Span<const TensorType* const> in) {
  return static_cast<size_t>(in[1]->num_elements()) * static_cast<size_t>(in[0]->shape.back()) *
         sizeof(float);  // 2 tables of h = D/2 floats per position element
}

// The table of `num_pos` positions for head dim d: cosines, then sines.
void FillTable(const int32_t* pos, int64_t num_pos, int64_t d, float base, float* table) {
  const int64_t h = d / 2;
  float* cos_table = table;
  float* sin_table = table + num_pos * h;
  // One pow per frequency, not per table entry (they cost more than the
  // sines and cosines).
  constexpr int64_t kMaxHalf = 256;
  std::array<float, kMaxHalf> inv_freq_table;
  const bool tabled = h <= kMaxHalf;
  if (tabled) {
    for (int64_t j = 0; j < h; ++j) inv_freq_table[j] = InvFreq(j, d, base);
  }
  kernels::ParallelFor(num_pos, 10 * h, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float p = static_cast<float>(pos[i]);
      int64_t j = 0;
      if (tabled) {
        const kernels::F32x4 pv = kernels::SplatF32x4(p);
        for (; j + 4 <= h; j += 4) {
          kernels::F32x4 sin_theta, cos_theta;
          kernels::SinCos(pv * kernels::LoadF32x4(inv_freq_table.data() + j), &sin_theta,
                          &cos_theta);
          __builtin_memcpy(cos_table + i * h + j, &cos_theta, sizeof cos_theta);
          __builtin_memcpy(sin_table + i * h + j, &sin_theta, sizeof sin_theta);
        }
      }
      for (; j < h; ++j) {
        const float theta = p * (tabled ? inv_freq_table[j] : InvFreq(j, d, base));
        cos_table[i * h + j] = std::cos(theta);
        sin_table[i * h + j] = std::sin(theta);
      }
    }
  });
}

// Rows [begin, end) of x rotated by the table's angles, or by their negatives
// (kInverse): y_j = a·c ∓ b·s, y_{j+h} = b·c ± a·s for (a, b) = (x_j, x_{j+h}).
template <bool kInverse>
void RotateRows(const float* x, const Shape& xs, const Strides& pos_stride, const float* table,
                int64_t num_pos, float* y, int64_t begin, int64_t end) {
  const int64_t d = xs.back(), h = d / 2;
  const float* cos_table = table;
  const float* sin_table = table + num_pos * h;
  RowPositions positions(xs, pos_stride, begin);
  for (int64_t r = begin; r < end; ++r, positions.Next()) {
    const float* __restrict xr = x + r * d;
    float* __restrict yr = y + r * d;
    const float* __restrict c = cos_table + positions.offset() * h;
    const float* __restrict sn = sin_table + positions.offset() * h;
    for (int64_t j = 0; j < h; ++j) {
      const float a = xr[j], b = xr[j + h];
      if constexpr (kInverse) {
        yr[j] = a * c[j] + b * sn[j];
        yr[j + h] = b * c[j] - a * sn[j];
      } else {
        yr[j] = a * c[j] - b * sn[j];
        yr[j + h] = b * c[j] + a * sn[j];
      }
    }
  }
}

void Fast(const KernelArgs& args) {
  const auto& attrs = args.attrs<RopeAttrs>();
  const Shape& xs = *args.in(0).shape;
  const Shape& ps = *args.in(1).shape;
  const int64_t d = xs.back();
  const int64_t num_pos = args.in(1).num_elements();
  float* table = args.rope_table != nullptr ? args.rope_table : args.scratch;
  if (args.rope_table == nullptr || args.rope_table_owner) {
    FillTable(args.in(1).i32(), num_pos, d, attrs.base, table);
  }
  Strides pos_stride;
  const int64_t num_rows = PositionStrides(xs, ps, &pos_stride);
  const float* x = args.in(0).f32();
  float* y = args.output.f32();
  kernels::ParallelFor(num_rows, 4 * d, [&](int64_t begin, int64_t end) {
    (attrs.inverse ? RotateRows<true> : RotateRows<false>)(x, xs, pos_stride, table, num_pos, y,
                                                           begin, end);
  });
}

// y = R(θ)·x per pair (x_j, x_{j+h}), R a rotation: dx = R(θ)ᵀ·dy = R(−θ)·dy,
// the same op with `inverse` flipped.
absl::Status Gradient(GradContext& ctx) {
  if (!ctx.NeedsGrad(0)) return absl::OkStatus();
  RopeAttrs attrs = std::get<RopeAttrs>(ctx.node().attrs);
  attrs.inverse = !attrs.inverse;
  ASSIGN_OR_RETURN(ValueId dx, ctx.Emit(OpKind::kRope, {ctx.dy(), ctx.input(1)}, attrs));
  ctx.SetGrad(0, dx);
  return absl::OkStatus();
}

std::vector<bool> DifferentiableInputs(const Node&) { return {true, false}; }

std::vector<OpTestCase> TestCases() {
  auto make = [](Shape x, Shape pos, bool inverse) {
    OpTestCase c;
    c.inputs = {{DType::kF32, std::move(x)}, {DType::kI32, std::move(pos)}};
    c.attrs = RopeAttrs{10000.0f, inverse};
    c.int_upper = 50;
    return c;
  };
  return {make({2, 3, 4}, {3}, false), make({2, 2, 3, 6}, {2, 1, 3}, false),
          make({3, 8}, {3}, true), make({4, 2}, {1}, false)};
}

}  // namespace

OpDef RopeOpDef() {
  OpDef def;
  def.name = "rope";
  def.attrs_index = AttrsIndexOf<RopeAttrs>();
  def.min_inputs = def.max_inputs = 2;
  def.infer = Infer;
  def.reference = Kernel;
  def.fast = Fast;
  def.scratch_bytes = FastScratchBytes;
  def.gradient = Gradient;
  def.differentiable_inputs = DifferentiableInputs;
  def.test_cases = TestCases;
  return def;
}

}  // namespace fleettune::engine::ops
