// kMatMul: y = op(a) · op(b) with op = identity or transpose. 2-D only.
//
// Shapes: a [M, K] (or [K, M] with transpose_a), b [K, N] (or [N, K] with
// transpose_b), y [M, N]. The fast kernel is kernels::Sgemm (see
// engine/kernels/gemm.h for why that library).
#include "engine/base/status_macros.h"
#include "engine/kernels/gemm.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

struct Dims {
  int64_t m, k, n;
};

Dims GetDims(const Shape& a, const Shape& b, const MatMulAttrs& attrs) {
  Dims d;
  d.m = attrs.transpose_a ? a[1] : a[0];
  d.k = attrs.transpose_a ? a[0] : a[1];
  d.n = attrs.transpose_b ? b[0] : b[1];
  return d;
}

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  const auto* attrs = std::get_if<MatMulAttrs>(&node.attrs);
  if (attrs == nullptr) return OpError(node, "needs MatMulAttrs");
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "a"));
  RETURN_IF_ERROR(ExpectDType(node, *in[1], DType::kF32, "b"));
  RETURN_IF_ERROR(ExpectRank(node, *in[0], 2, "a"));
  RETURN_IF_ERROR(ExpectRank(node, *in[1], 2, "b"));
  Dims d = GetDims(in[0]->shape, in[1]->shape, *attrs);
  const int64_t kb = attrs->transpose_b ? in[1]->shape[1] : in[1]->shape[0];
  if (d.k != kb) {
    return OpError(node, "inner dims ", d.k, " vs ", kb, " (a ", TypeToString(*in[0]), ", b ",
                   TypeToString(*in[1]), ")");
  }
  return TensorType{DType::kF32, {d.m, d.n}};
}

void Reference(const KernelArgs& args) {
  const auto& attrs = args.attrs<MatMulAttrs>();
  const Shape& as = *args.in(0).shape;
  const Shape& bs = *args.in(1).shape;
  const Dims d = GetDims(as, bs, attrs);
  const float* a = args.in(0).f32();
  const float* b = args.in(1).f32();
  float* y = args.output.f32();
  for (int64_t i = 0; i < d.m; ++i) {
    for (int64_t j = 0; j < d.n; ++j) {
      double acc = 0.0;
      for (int64_t p = 0; p < d.k; ++p) {
        const float av = attrs.transpose_a ? a[p * as[1] + i] : a[i * as[1] + p];
        const float bv = attrs.transpose_b ? b[j * bs[1] + p] : b[p * bs[1] + j];
        acc += static_cast<double>(av) * bv;
      }
      y[i * d.n + j] = static_cast<float>(acc);
    }
  }
}

void Fast(const KernelArgs& args) {
  const auto& attrs = args.attrs<MatMulAttrs>();
  const Shape& as = *args.in(0).shape;
  const Shape& bs = *args.in(1).shape;
  const Dims d = GetDims(as, bs, attrs);
  kernels::Sgemm(attrs.transpose_a, attrs.transpose_b, d.m, d.n, d.k, 1.0f, args.in(0).f32(), as[1],
                 args.in(1).f32(), bs[1], 0.0f, args.output.f32(), d.n);
}

// With Y = op(A)·op(B):
//   plain:   dA = dY·Bᵀ      dB = Aᵀ·dY
//   ta:      dA = B·dYᵀ      dB = A·dY
//   tb:      dA = dY·B       dB = dYᵀ·A
//   ta, tb:  dA = Bᵀ·dYᵀ     dB = dYᵀ·Aᵀ
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
    ctx.SetGrad(0, da);
  }
  if (ctx.NeedsGrad(1)) {
    ValueId db;
    if (!tb) {
      ASSIGN_OR_RETURN(db, ctx.Emit(OpKind::kMatMul, {a, dy}, MatMulAttrs{!ta, false}));
    } else {
      ASSIGN_OR_RETURN(db, ctx.Emit(OpKind::kMatMul, {dy, a}, MatMulAttrs{true, ta}));
    }
    ctx.SetGrad(1, db);
  }
  return absl::OkStatus();
}

std::vector<OpTestCase> TestCases() {
  std::vector<OpTestCase> cases;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      OpTestCase c;
      c.inputs = {{DType::kF32, ta ? Shape{4, 3} : Shape{3, 4}},
                  {DType::kF32, tb ? Shape{5, 4} : Shape{4, 5}}};
      c.attrs = MatMulAttrs{ta, tb};
      cases.push_back(c);
    }
  }
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
