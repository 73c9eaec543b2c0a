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
#include <array>

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

Dims GetDims(const Shape& a, const Shape& b, const MatMulAttrs& attrs) {
  const size_t ra = a.size(), rb = b.size();
  Dims d;
  d.m = attrs.transpose_a ? a[ra - 1] : a[ra - 2];
  d.k = attrs.transpose_a ? a[ra - 2] : a[ra - 1];
  d.n = attrs.transpose_b ? b[rb - 2] : b[rb - 1];
  return d;
}

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  const auto* attrs = std::get_if<MatMulAttrs>(&node.attrs);
  if (attrs == nullptr) return OpError(node, "needs MatMulAttrs");
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "a"));
  RETURN_IF_ERROR(ExpectDType(node, *in[1], DType::kF32, "b"));
  const Shape& as = in[0]->shape;
  const Shape& bs = in[1]->shape;
  if (as.size() < 2) return OpError(node, "a must have rank >= 2, got ", TypeToString(*in[0]));
  if (bs.size() < 2) return OpError(node, "b must have rank >= 2, got ", TypeToString(*in[1]));
  const Dims d = GetDims(as, bs, *attrs);
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
  if (absl::Status s = ValidateShape(out); !s.ok()) return OpError(node, s.message());
  return TensorType{DType::kF32, out};
}

// Where each matrix of y reads its a and b matrices under numpy broadcasting
// of the batch dimensions. The last `folded` batch dimensions are not walked:
// a "matrix" is then a block of y matrices along them, located by its first.
// Fixed-size state: does not allocate.
class BatchWalk {
 public:
  BatchWalk(const Shape& as, const Shape& bs, const Shape& ys, int folded)
      : outer_(static_cast<int>(ys.size()) - 2 - folded) {
    const int rank = static_cast<int>(ys.size()) - 2;
    int64_t stride_a = 1, stride_b = 1;
    for (int k = 0; k < rank; ++k) {
      const int d = rank - 1 - k;
      const int da = static_cast<int>(as.size()) - 3 - k;
      const int db = static_cast<int>(bs.size()) - 3 - k;
      const int64_t na = da >= 0 ? as[da] : 1;
      const int64_t nb = db >= 0 ? bs[db] : 1;
      sa_[d] = na == 1 ? 0 : stride_a;
      sb_[d] = nb == 1 ? 0 : stride_b;
      dims_[d] = ys[d];
      stride_a *= na;
      stride_b *= nb;
      (k < folded ? block_ : count_) *= ys[d];
    }
  }

  int64_t count() const { return count_; }  // matrices (blocks) to compute
  int64_t block() const { return block_; }  // y matrices per block

  // The a and b matrices block i reads.
  void Locate(int64_t i, int64_t* ia, int64_t* ib) const {
    *ia = *ib = 0;
    for (int d = outer_ - 1; d >= 0; --d) {
      const int64_t idx = i % dims_[d];
      i /= dims_[d];
      *ia += idx * sa_[d];
      *ib += idx * sb_[d];
    }
  }

 private:
  int outer_;
  std::array<int64_t, kMaxRank> sa_{}, sb_{}, dims_{};
  int64_t count_ = 1, block_ = 1;
};

// Calls fn(y_matrix, a_matrix, b_matrix) for every block of y (BatchWalk),
// with the indices of the block's first y, a and b matrices.
template <typename Fn>
void ForEachMatrix(const Shape& as, const Shape& bs, const Shape& ys, int folded, Fn&& fn) {
  const BatchWalk walk(as, bs, ys, folded);
  for (int64_t i = 0; i < walk.count(); ++i) {
    int64_t ia, ib;
    walk.Locate(i, &ia, &ib);
    fn(i * walk.block(), ia, ib);
  }
}

// How many trailing batch dimensions of y can join the GEMM's rows: those
// along which b is broadcast while a is not (nor transposed), so the a (and
// y) matrices along them are consecutive rows multiplying the same b. Covers
// x [B, T, K] · W [K, N] and grouped-query attention's q [.., R, T, D] against
// k [.., 1, S, D].
int FoldableBatchDims(const Shape& as, const Shape& bs, const Shape& ys, bool transpose_a) {
  if (transpose_a) return 0;
  const int rank = static_cast<int>(ys.size()) - 2;
  int folded = 0;
  for (int k = 0; k < rank; ++k) {
    const int da = static_cast<int>(as.size()) - 3 - k;
    const int db = static_cast<int>(bs.size()) - 3 - k;
    const int64_t nb = db >= 0 ? bs[db] : 1;
    if (da < 0 || as[da] != ys[rank - 1 - k] || nb != 1) break;
    ++folded;
  }
  return folded;
}

void Reference(const KernelArgs& args) {
  const auto& attrs = args.attrs<MatMulAttrs>();
  const Shape& as = *args.in(0).shape;
  const Shape& bs = *args.in(1).shape;
  const Dims d = GetDims(as, bs, attrs);
  const int64_t lda = as.back(), ldb = bs.back();
  const float* a0 = args.in(0).f32();
  const float* b0 = args.in(1).f32();
  float* y0 = args.output.f32();
  ForEachMatrix(as, bs, *args.output.shape, 0, [&](int64_t iy, int64_t ia, int64_t ib) {
    const float* a = a0 + ia * d.m * d.k;
    const float* b = b0 + ib * d.k * d.n;
    float* y = y0 + iy * d.m * d.n;
    for (int64_t i = 0; i < d.m; ++i) {
      for (int64_t j = 0; j < d.n; ++j) {
        double acc = 0.0;
        for (int64_t p = 0; p < d.k; ++p) {
          const float av = attrs.transpose_a ? a[p * lda + i] : a[i * lda + p];
          const float bv = attrs.transpose_b ? b[j * ldb + p] : b[p * ldb + j];
          acc += static_cast<double>(av) * bv;
        }
        y[i * d.n + j] = static_cast<float>(acc);
      }
    }
  });
}

void Fast(const KernelArgs& args) {
  const auto& attrs = args.attrs<MatMulAttrs>();
  const Shape& as = *args.in(0).shape;
  const Shape& bs = *args.in(1).shape;
  const Shape& ys = *args.output.shape;
  const Dims d = GetDims(as, bs, attrs);
  const int64_t lda = as.back(), ldb = bs.back();
  const float* a = args.in(0).f32();
  const float* b = args.in(1).f32();
  float* y = args.output.f32();
  const int folded = FoldableBatchDims(as, bs, ys, attrs.transpose_a);
  const BatchWalk walk(as, bs, ys, folded);
  const int64_t rows = d.m * walk.block();
  auto gemm = [&](int64_t i) {
    int64_t ia, ib;
    walk.Locate(i, &ia, &ib);
    kernels::Sgemm(attrs.transpose_a, attrs.transpose_b, rows, d.n, d.k, 1.0f, a + ia * d.m * d.k,
                   lda, b + ib * d.k * d.n, ldb, 0.0f, y + i * walk.block() * d.m * d.n, d.n);
  };
  // Many small GEMMs (attention's per-head products) run one per thread.
  const int64_t flops = rows * d.n * d.k;
  if (kernels::GemmsPerThread(walk.count(), flops)) {
    kernels::ParallelFor(walk.count(), flops, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) gemm(i);
    });
    return;
  }
  for (int64_t i = 0; i < walk.count(); ++i) gemm(i);
}

// With Y = op(A)·op(B), per matrix of the batch:
//   plain:   dA = dY·Bᵀ      dB = Aᵀ·dY
//   ta:      dA = B·dYᵀ      dB = A·dY
//   tb:      dA = dY·B       dB = dYᵀ·A
//   ta, tb:  dA = Bᵀ·dYᵀ     dB = dYᵀ·Aᵀ
// then summed over the batch dimensions an operand was broadcast along.
absl::Status Gradient(GradContext& ctx) {
  const auto& attrs = std::get<MatMulAttrs>(ctx.node().attrs);
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
