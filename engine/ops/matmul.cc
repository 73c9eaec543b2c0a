// kMatMul: y = op(a) · op(b) with op = identity or transpose of the last two
// dimensions, batched like torch.matmul.
//
// Shapes: a [..., M, K] (or [..., K, M] with transpose_a), b [..., K, N] (or
// [..., N, K] with transpose_b), y [..., M, N]; both operands have rank >= 2.
// The leading (batch) dimensions broadcast numpy-style, so attention can
// multiply q [B, Hkv, R, T, D] by k [B, Hkv, 1, S, D] without copying k R
// times (grouped-query attention), and x [B, T, K] by a weight [K, N].
// The fast kernel is kernels::Sgemm (see engine/kernels/gemm.h for why that
// library), one call per block of matrices that share their b matrix
// (FoldableBatchDims), else one call per matrix; many small matrices are
// spread over the threads, one single-threaded call each.
//
// After autodiff the fuse pass may fold neighbours in (MatMulAttrs, and
// engine/passes/fold_matmul.h): y = alpha · op(a) · op(b), with an operand or
// y stored [..., T, H1..Hk, D] and taken as [..., H1..Hk, T, D] (k head dims,
// MatMulAttrs). Shapes above are the taken ones; each matrix is then a
// strided view (MatrixLayout) handed to the same GEMM, so nothing is copied.
// Such a matmul has no gradient rule.
#include <array>
#include <cmath>
#include <utility>

#include "engine/base/status_macros.h"
#include "engine/kernels/gemm.h"
#include "engine/kernels/parallel.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

struct Dims {
  int64_t m, k, n;
};

// The shape a matmul takes an operand (or y) as: interleaved over k heads,
// the stored [..., T, H1..Hk, D] is taken as [..., H1..Hk, T, D]. Shape
// inference only: kernels must not allocate, they use LogicalDim.
Shape Logical(const Shape& stored, int heads) {
  const int r = static_cast<int>(stored.size());
  Shape logical(stored.size());
  for (int d = 0; d < r; ++d) logical[d] = stored[InterleavedStoredDim(r, heads, d)];
  return logical;
}

// The inverse: how a logical shape (y's) is stored.
Shape Stored(const Shape& logical, int heads) {
  const int r = static_cast<int>(logical.size());
  Shape stored(logical.size());
  for (int d = 0; d < r; ++d) stored[d] = logical[InterleavedLogicalDim(r, heads, d)];
  return stored;
}

// Logical dimension d of `stored` (see Logical).
int64_t LogicalDim(const Shape& stored, int heads, int d) {
  return stored[InterleavedStoredDim(static_cast<int>(stored.size()), heads, d)];
}

// An operand (or y) of rank r interleaved over k heads needs r >= k + 2.
absl::Status CheckInterleaving(const Node& node, const char* what, int heads, size_t rank) {
  if (heads < 0 || (heads > 0 && static_cast<size_t>(heads) + 2 > rank)) {
    return OpError(node, what, " interleaved over ", heads, " head dims needs rank >= ", heads + 2,
                   ", got rank ", rank);
  }
  return absl::OkStatus();
}

// m, k, n of a matmul from its operands' stored shapes (rank >= 2).
Dims GetDims(const Shape& a, const Shape& b, const MatMulAttrs& attrs) {
  const int ra = static_cast<int>(a.size()), rb = static_cast<int>(b.size());
  const int64_t a_rows = LogicalDim(a, attrs.interleaved_a, ra - 2), a_cols = a[ra - 1];
  const int64_t b_rows = LogicalDim(b, attrs.interleaved_b, rb - 2), b_cols = b[rb - 1];
  return {attrs.transpose_a ? a_cols : a_rows, attrs.transpose_a ? a_rows : a_cols,
          attrs.transpose_b ? b_rows : b_cols};
}

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  const auto* attrs = std::get_if<MatMulAttrs>(&node.attrs);
  if (attrs == nullptr) return OpError(node, "needs MatMulAttrs");
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "a"));
  RETURN_IF_ERROR(ExpectDType(node, *in[1], DType::kF32, "b"));
  RETURN_IF_ERROR(CheckInterleaving(node, "a", attrs->interleaved_a, in[0]->shape.size()));
  RETURN_IF_ERROR(CheckInterleaving(node, "b", attrs->interleaved_b, in[1]->shape.size()));
  if (!std::isfinite(attrs->alpha)) return OpError(node, "alpha must be finite");
  const Shape as = Logical(in[0]->shape, attrs->interleaved_a);
  const Shape bs = Logical(in[1]->shape, attrs->interleaved_b);
  if (as.size() < 2) return OpError(node, "a must have rank >= 2, got ", TypeToString(*in[0]));
  if (bs.size() < 2) return OpError(node, "b must have rank >= 2, got ", TypeToString(*in[1]));
  const Dims d = GetDims(in[0]->shape, in[1]->shape, *attrs);
  const int64_t kb = attrs->transpose_b ? bs[bs.size() - 1] : bs[bs.size() - 2];
  if (d.k != kb) {
    return OpError(node, "inner dims ", d.k, " vs ", kb, " (a ", TypeToString(*in[0]), ", b ",
                   TypeToString(*in[1]), ")");
  }
  absl::StatusOr<Shape> batch =
      BroadcastShapes(Shape(as.begin(), as.end() - 2), Shape(bs.begin(), bs.end() - 2));
  if (!batch.ok()) return OpError(node, "batch dimensions: ", batch.status().message());
  Shape out = *std::move(batch);
  out.push_back(d.m);
  out.push_back(d.n);
  RETURN_IF_ERROR(CheckInterleaving(node, "y", attrs->interleaved_y, out.size()));
  out = Stored(out, attrs->interleaved_y);
  if (absl::Status s = ValidateShape(out); !s.ok()) return OpError(node, s.message());
  return TensorType{DType::kF32, out};
}

// Where an operand's (or y's) matrices are in its storage: the stride between
// rows (ld) and, per batch dimension of y, the stride between matrices (0
// along a broadcast dimension), in elements. Columns are always adjacent.
struct MatrixLayout {
  int64_t ld = 0;
  std::array<int64_t, kMaxRank> batch_stride{};
};

// `stored` is the tensor's shape; `y_batch_rank` the rank of y's batch
// dimensions, which the operand's align to from the right (numpy
// broadcasting; the operand may have fewer).
MatrixLayout LayoutOf(const Shape& stored, int heads, int y_batch_rank) {
  const int r = static_cast<int>(stored.size());
  std::array<int64_t, kMaxRank> stride{};  // row-major strides of the storage
  int64_t s = 1;
  for (int d = r - 1; d >= 0; --d) {
    stride[d] = s;
    s *= stored[d];
  }
  // Logical dimension d is stored dimension perm(d).
  auto perm = [&](int d) { return InterleavedStoredDim(r, heads, d); };
  MatrixLayout l;
  l.ld = stride[perm(r - 2)];
  for (int k = 0; k < y_batch_rank; ++k) {
    const int d = r - 3 - k;  // the operand's batch dim under y's batch dim y_batch_rank-1-k
    if (d >= 0 && LogicalDim(stored, heads, d) != 1) {
      l.batch_stride[y_batch_rank - 1 - k] = stride[perm(d)];
    }
  }
  return l;
}

// The matrices of one matmul node: y's batch dimensions (logical) and where
// a, b and y keep theirs.
// Fixed-size state: does not allocate.
struct Batch {
  std::array<int64_t, kMaxRank> dims{};  // y's logical batch dimensions
  int rank = 0;
  MatrixLayout a, b, y;
  int64_t count = 1;

  // The last `folded` batch dimensions are not walked (FoldableBatchDims):
  // matrix i is then the first of a block along them.
  Batch(const Shape& as, const Shape& bs, const Shape& ys, const MatMulAttrs& attrs, int folded = 0)
      : rank(static_cast<int>(ys.size()) - 2) {
    for (int d = 0; d < rank; ++d) dims[d] = LogicalDim(ys, attrs.interleaved_y, d);
    a = LayoutOf(as, attrs.interleaved_a, rank);
    b = LayoutOf(bs, attrs.interleaved_b, rank);
    y = LayoutOf(ys, attrs.interleaved_y, rank);
    for (int k = 0; k < folded; ++k) dims[rank - 1 - k] = 1;
    for (int d = 0; d < rank; ++d) count *= dims[d];
  }

  // Element offsets of matrix i's a, b and y.
  void Locate(int64_t i, int64_t* ia, int64_t* ib, int64_t* iy) const {
    *ia = *ib = *iy = 0;
    for (int d = rank - 1; d >= 0; --d) {
      const int64_t idx = i % dims[d];
      i /= dims[d];
      *ia += idx * a.batch_stride[d];
      *ib += idx * b.batch_stride[d];
      *iy += idx * y.batch_stride[d];
    }
  }
};

// How many trailing batch dimensions of y can join the GEMM's rows: those
// along which b is broadcast while a is not (nor transposed), so the a (and
// y) matrices along them are consecutive rows multiplying the same b. Covers
// x [B, T, K] · W [K, N] and grouped-query attention's q [.., R, T, D] against
// k [.., 1, S, D] (which may be interleaved: its matrix is shared). None
// with a or y interleaved, whose rows are then not consecutive.
int FoldableBatchDims(const Shape& as, const Shape& bs, const Shape& ys, const MatMulAttrs& attrs) {
  if (attrs.transpose_a || attrs.interleaved_a != 0 || attrs.interleaved_y != 0) return 0;
  const int rank = static_cast<int>(ys.size()) - 2;
  int folded = 0;
  for (int k = 0; k < rank; ++k) {
    const int da = static_cast<int>(as.size()) - 3 - k;
    const int db = static_cast<int>(bs.size()) - 3 - k;
    const int64_t nb = db >= 0 ? LogicalDim(bs, attrs.interleaved_b, db) : 1;
    if (da < 0 || as[da] != ys[rank - 1 - k] || nb != 1) break;
    ++folded;
  }
  return folded;
}

void Reference(const KernelArgs& args) {
  const auto& attrs = args.attrs<MatMulAttrs>();
  const Shape& as = *args.in(0).shape;
  const Shape& bs = *args.in(1).shape;
  const Batch batch(as, bs, *args.output.shape, attrs);
  const Dims d = GetDims(as, bs, attrs);
  const float* a0 = args.in(0).f32();
  const float* b0 = args.in(1).f32();
  float* y0 = args.output.f32();
  const int64_t lda = batch.a.ld, ldb = batch.b.ld, ldy = batch.y.ld;
  for (int64_t m = 0; m < batch.count; ++m) {
    int64_t ia, ib, iy;
    batch.Locate(m, &ia, &ib, &iy);
    const float* a = a0 + ia;
    const float* b = b0 + ib;
    float* y = y0 + iy;
    for (int64_t i = 0; i < d.m; ++i) {
      for (int64_t j = 0; j < d.n; ++j) {
        double acc = 0.0;
        for (int64_t p = 0; p < d.k; ++p) {
          const float av = attrs.transpose_a ? a[p * lda + i] : a[i * lda + p];
          const float bv = attrs.transpose_b ? b[j * ldb + p] : b[p * ldb + j];
          acc += static_cast<double>(av) * bv;
        }
        y[i * ldy + j] = static_cast<float>(attrs.alpha * acc);
      }
    }
  }
}

void Fast(const KernelArgs& args) {
  const auto& attrs = args.attrs<MatMulAttrs>();
  const Shape& as = *args.in(0).shape;
  const Shape& bs = *args.in(1).shape;
  const Shape& ys = *args.output.shape;
  const Dims d = GetDims(as, bs, attrs);
  const float* a = args.in(0).f32();
  const float* b = args.in(1).f32();
  float* y = args.output.f32();
  // A block of consecutive matrices along the folded batch dims is one GEMM
  // with `block` times the rows.
  const int folded = FoldableBatchDims(as, bs, ys, attrs);
  int64_t block = 1;
  for (int k = 0; k < folded; ++k) block *= ys[ys.size() - 3 - k];
  const Batch batch(as, bs, ys, attrs, folded);
  const int64_t rows = d.m * block;
  auto gemm = [&](int64_t i) {
    int64_t ia, ib, iy;
    batch.Locate(i, &ia, &ib, &iy);
    kernels::Sgemm(attrs.transpose_a, attrs.transpose_b, rows, d.n, d.k, attrs.alpha, a + ia,
                   batch.a.ld, b + ib, batch.b.ld, 0.0f, y + iy, batch.y.ld);
  };
  // Many small GEMMs (attention's per-head products) run one per thread.
  const int64_t flops = rows * d.n * d.k;
  if (kernels::GemmsPerThread(batch.count, flops)) {
    kernels::ParallelFor(batch.count, flops, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) gemm(i);
    });
    return;
  }
  for (int64_t i = 0; i < batch.count; ++i) gemm(i);
}

// With Y = op(A)·op(B), per matrix of the batch:
//   plain:   dA = dY·Bᵀ      dB = Aᵀ·dY
//   ta:      dA = B·dYᵀ      dB = A·dY
//   tb:      dA = dY·B       dB = dYᵀ·A
//   ta, tb:  dA = Bᵀ·dYᵀ     dB = dYᵀ·Aᵀ
// then summed over the batch dimensions an operand was broadcast along.
absl::Status Gradient(GradContext& ctx) {
  const auto& attrs = std::get<MatMulAttrs>(ctx.node().attrs);
  if (attrs.folded()) {
    return absl::UnimplementedError(
        "matmul with folded alpha or interleaved operands has no gradient rule (the fuse pass "
        "emits it after autodiff)");
  }
  const ValueId a = ctx.input(0), b = ctx.input(1), dy = ctx.dy();
  const bool ta = attrs.transpose_a, tb = attrs.transpose_b;
  if (ctx.NeedsGrad(0)) {
    ValueId da;
    if (!ta) {
      ASSIGN_OR_RETURN(da, ctx.Emit(OpKind::kMatMul, {dy, b}, MatMulAttrs{false, !tb}));
    } else {
      ASSIGN_OR_RETURN(da, ctx.Emit(OpKind::kMatMul, {b, dy}, MatMulAttrs{tb, true}));
    }
    ASSIGN_OR_RETURN(da, ReduceToShape(ctx, da, ctx.type(a).shape));
    ctx.SetGrad(0, da);
  }
  if (ctx.NeedsGrad(1)) {
    ValueId db;
    if (!tb) {
      ASSIGN_OR_RETURN(db, ctx.Emit(OpKind::kMatMul, {a, dy}, MatMulAttrs{!ta, false}));
    } else {
      ASSIGN_OR_RETURN(db, ctx.Emit(OpKind::kMatMul, {dy, a}, MatMulAttrs{true, ta}));
    }
    ASSIGN_OR_RETURN(db, ReduceToShape(ctx, db, ctx.type(b).shape));
    ctx.SetGrad(1, db);
  }
  return absl::OkStatus();
}

std::vector<OpTestCase> TestCases() {
  // a's logical [..., 3, 4], b's logical [..., 4, 5], stored transposed when flagged.
  auto make = [](Shape a_batch, Shape b_batch, bool ta, bool tb) {
    Shape a = a_batch, b = b_batch;
    a.insert(a.end(), {ta ? 4 : 3, ta ? 3 : 4});
    b.insert(b.end(), {tb ? 5 : 4, tb ? 4 : 5});
    OpTestCase c;
    c.inputs = {{DType::kF32, a}, {DType::kF32, b}};
    c.attrs = MatMulAttrs{ta, tb};
    return c;
  };
  std::vector<OpTestCase> cases;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      cases.push_back(make({}, {}, ta, tb));
      cases.push_back(make({2, 1}, {3}, ta, tb));  // both broadcast: batch [2, 3]
    }
  }
  cases.push_back(make({2, 3}, {}, false, true));  // x [..., K] · Wᵀ: one GEMM
  cases.push_back(make({2}, {2}, false, false));
  cases.push_back(make({}, {2}, true, false));  // a shared by every matrix of b
  // b broadcast along the inner batch dim (grouped-query attention): blocks of 3.
  cases.push_back(make({2, 3}, {2, 1}, false, true));
  cases.push_back(make({2, 2, 3}, {2, 1, 1}, false, false));  // two dims folded
  cases.push_back(make({8, 2}, {8, 2}, false, true));         // 16 small GEMMs over the threads
  return cases;
}

}  // namespace

OpDef MatMulOpDef() {
  OpDef def;
  def.name = "matmul";
  def.attrs_index = AttrsIndexOf<MatMulAttrs>();
  def.min_inputs = def.max_inputs = 2;
  def.infer = Infer;
  def.reference = Reference;
  def.fast = Fast;
  def.gradient = Gradient;
  def.test_cases = TestCases;
  return def;
}

}  // namespace fleettune::engine::ops
