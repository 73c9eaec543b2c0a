// Reductions: kReduceSum and kReduceMean over a set of axes.
//
// x [d0, ..., dn-1] → y with the reduced axes removed (or kept as 1 with
// keep_dims). Axes must be sorted, unique and in range.
#include <algorithm>

#include "engine/base/status_macros.h"
#include "engine/kernels/batch_norm.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

Shape KeptShape(const Shape& x, const std::vector<int>& axes) {
  Shape kept = x;
  for (int a : axes) kept[a] = 1;
  return kept;
}

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  const auto* attrs = std::get_if<ReduceAttrs>(&node.attrs);
  if (attrs == nullptr) return OpError(node, "needs ReduceAttrs");
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "x"));
  const int rank = static_cast<int>(in[0]->shape.size());
  for (size_t i = 0; i < attrs->axes.size(); ++i) {
    const int a = attrs->axes[i];
    if (a < 0 || a >= rank || (i > 0 && a <= attrs->axes[i - 1])) {
      return OpError(node, "axes must be sorted, unique and in [0, ", rank, "), got axis ", a);
    }
  }
  Shape out;
  for (int d = 0; d < rank; ++d) {
    const bool reduced = std::find(attrs->axes.begin(), attrs->axes.end(), d) != attrs->axes.end();
    if (!reduced) {
      out.push_back(in[0]->shape[d]);
    } else if (attrs->keep_dims) {
      out.push_back(1);
    }
  }
  return TensorType{DType::kF32, out};
}

// Row-major strides of x's reduction target (x's shape with the reduced axes
// set to 1), with stride 0 on the reduced axes.
Strides ReduceTargetStrides(const Shape& xs, const std::vector<int>& axes) {
  Strides strides{};
  int64_t stride = 1;
  for (int d = static_cast<int>(xs.size()) - 1; d >= 0; --d) {
    if (std::find(axes.begin(), axes.end(), d) != axes.end()) continue;
    strides[d] = stride;
    stride *= xs[d];
  }
  return strides;
}

void SumInto(const KernelArgs& args, float scale) {
  const auto& attrs = args.attrs<ReduceAttrs>();
  const Shape& xs = *args.in(0).shape;
  const float* x = args.in(0).f32();
  float* y = args.output.f32();
  const int64_t n_out = args.output.num_elements();
  std::fill_n(y, n_out, 0.0f);
  // Walk x; each element lands at its position in the reduction target.
  ForEachStrided(xs, BroadcastStrides(xs, xs), ReduceTargetStrides(xs, attrs.axes),
                 [&](int64_t ix, int64_t, int64_t iy) { y[iy] += x[ix]; });
  if (scale != 1.0f) {
    for (int64_t i = 0; i < n_out; ++i) y[i] *= scale;
  }
}

int64_t ReducedCount(const Shape& xs, const std::vector<int>& axes) {
  int64_t n = 1;
  for (int a : axes) n *= xs[a];
  return n;
}

void SumKernel(const KernelArgs& args) { SumInto(args, 1.0f); }

void MeanKernel(const KernelArgs& args) {
  const int64_t n = ReducedCount(*args.in(0).shape, args.attrs<ReduceAttrs>().axes);
  SumInto(args, n == 0 ? 0.0f : 1.0f / static_cast<float>(n));
}

// Views x as [outer, kept, inner] when the kept axes are contiguous (bias
// gradients and pooling over N,H,W of NCHW; rows; columns; everything), so
// the fast kernel sums contiguous rows; false otherwise.
bool OuterKeptInner(const Shape& xs, const std::vector<int>& axes, kernels::ChannelLayout* l) {
  const int rank = static_cast<int>(xs.size());
  int first = rank, last = -1;  // the kept axes span [first, last]
  int64_t kept = 1;
  for (int d = 0; d < rank; ++d) {
    if (std::find(axes.begin(), axes.end(), d) != axes.end()) continue;
    first = std::min(first, d);
    last = d;
    kept *= xs[d];
  }
  if (last >= 0 && last - first + 1 != rank - static_cast<int>(axes.size())) return false;
  *l = {1, kept, 1};
  for (int d = 0; d < rank; ++d) {
    if (d < first) l->outer *= xs[d];
    if (d > last) l->inner *= xs[d];
  }
  if (last < 0) *l = {1, 1, NumElements(xs)};
  return true;
}

void FastSumInto(const KernelArgs& args, float scale) {
  const Shape& xs = *args.in(0).shape;
  kernels::ChannelLayout l;
  if (!OuterKeptInner(xs, args.attrs<ReduceAttrs>().axes, &l)) return SumInto(args, scale);
  if (l.channels == 0) return;
  if (l.per_channel() == 0) {
    std::fill_n(args.output.f32(), l.channels, 0.0f);
    return;
  }
  kernels::F32SumOuterInner(l, args.in(0).f32(), scale, args.scratch, args.output.f32());
}

size_t FastScratchBytes(const Node& node, absl::Span<const TensorType* const> in) {
  const auto* attrs = std::get_if<ReduceAttrs>(&node.attrs);
  kernels::ChannelLayout l;
  if (attrs == nullptr || !OuterKeptInner(in[0]->shape, attrs->axes, &l)) return 0;
  return kernels::SumOuterInnerScratchFloats(l) * sizeof(float);
}

void SumFast(const KernelArgs& args) { FastSumInto(args, 1.0f); }

void MeanFast(const KernelArgs& args) {
  const int64_t n = ReducedCount(*args.in(0).shape, args.attrs<ReduceAttrs>().axes);
  FastSumInto(args, n == 0 ? 0.0f : 1.0f / static_cast<float>(n));
}

// sum:  dx = broadcast(reshape(dy, kept shape), shape(x))
// mean: dx = broadcast(...) / n
absl::Status GradientImpl(GradContext& ctx, bool mean) {
  if (!ctx.NeedsGrad(0)) return absl::OkStatus();
  const auto& attrs = std::get<ReduceAttrs>(ctx.node().attrs);
  const Shape& xs = ctx.type(ctx.input(0)).shape;
  ValueId g = ctx.dy();
  if (mean) {
    const int64_t n = ReducedCount(xs, attrs.axes);
    ASSIGN_OR_RETURN(g, ctx.Emit(OpKind::kScale, {g},
                                 ScalarAttrs{n == 0 ? 0.0f : 1.0f / static_cast<float>(n)}));
  }
  const Shape kept = KeptShape(xs, attrs.axes);
  if (ctx.type(g).shape != kept) {
    ASSIGN_OR_RETURN(g, ctx.Emit(OpKind::kReshape, {g}, ShapeAttrs{kept}));
  }
  if (kept != xs) {
    ASSIGN_OR_RETURN(g, ctx.Emit(OpKind::kBroadcastTo, {g}, ShapeAttrs{xs}));
  }
  ctx.SetGrad(0, g);
  return absl::OkStatus();
}

absl::Status SumGradient(GradContext& ctx) { return GradientImpl(ctx, false); }
absl::Status MeanGradient(GradContext& ctx) { return GradientImpl(ctx, true); }

std::vector<OpTestCase> TestCases() {
  auto make = [](Shape s, std::vector<int> axes, bool keep) {
    OpTestCase c;
    c.inputs = {{DType::kF32, std::move(s)}};
    c.attrs = ReduceAttrs{std::move(axes), keep};
    return c;
  };
  // Kept axes contiguous (rows, columns, N·H·W of NCHW, all) take the fast
  // path; {1, 3} of a rank-4 tensor keeps non-contiguous axes (the fallback).
  return {make({3, 4}, {0}, false),
          make({3, 4}, {1}, true),
          make({2, 3, 4}, {0, 2}, false),
          make({2, 3}, {0, 1}, false),
          make({2, 5, 3, 37}, {0, 2, 3}, false),
          make({2, 3, 4, 5}, {1, 3}, true),
          make({3, 70}, {0}, false),
          make({37, 70}, {0}, false),
          make({3, 5, 20}, {0, 1}, true),
          make({4, 2, 3}, {}, false)};
}

}  // namespace

OpDef ReduceSumOpDef() {
  OpDef def;
  def.name = "reduce_sum";
  def.attrs_index = AttrsIndexOf<ReduceAttrs>();
  def.min_inputs = def.max_inputs = 1;
  def.infer = Infer;
  def.reference = SumKernel;
  def.fast = SumFast;
  def.scratch_bytes = FastScratchBytes;
  def.gradient = SumGradient;
  def.test_cases = TestCases;
  return def;
}

OpDef ReduceMeanOpDef() {
  OpDef def;
  def.name = "reduce_mean";
  def.attrs_index = AttrsIndexOf<ReduceAttrs>();
  def.min_inputs = def.max_inputs = 1;
  def.infer = Infer;
  def.reference = MeanKernel;
  def.fast = MeanFast;
  def.scratch_bytes = FastScratchBytes;
  def.gradient = MeanGradient;
  def.test_cases = TestCases;
  return def;
}

}  // namespace fleettune::engine::ops
