// kConcat, kSlice and the backward-only kSliceGrad. f32 or i32.
//
// concat: inputs x_i [..., n_i, ...] along AxisAttrs::axis (all other
//   dimensions equal, one dtype) → y [..., Σ n_i, ...].
// slice:  x → y = x[begin[d] : end[d] : step[d]] on every axis d, with
//   0 <= begin <= end <= dim and step >= 1 (builders normalize Python-style
//   negative or open bounds before they reach the op).
// Splitting a tensor is a slice per piece (models/transformer.h: Split), since
// a node produces one value.
#include <algorithm>
#include <array>
#include <cstring>

#include "engine/base/status_macros.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

// Max inputs of one concat node; a wider concat is a tree of them.
constexpr int kMaxConcatInputs = 256;

absl::StatusOr<TensorType> InferConcat(const Node& node, absl::Span<const TensorType* const> in) {
  const int axis = std::get<AxisAttrs>(node.attrs).axis;
  const TensorType& first = *in[0];
  const int rank = static_cast<int>(first.shape.size());
  if (axis < 0 || axis >= rank) {
    return OpError(node, "axis ", axis, " out of range for ", TypeToString(first));
  }
  Shape out = first.shape;
  for (size_t i = 1; i < in.size(); ++i) {
    const TensorType& t = *in[i];
    bool fits = t.dtype == first.dtype && t.shape.size() == first.shape.size();
    for (int d = 0; fits && d < rank; ++d) fits = d == axis || t.shape[d] == first.shape[d];
    if (!fits) {
      return OpError(node, "input ", i, " ", TypeToString(t), " does not fit input 0 ",
                     TypeToString(first), " along axis ", axis);
    }
    out[axis] += t.shape[axis];
  }
  if (absl::Status s = ValidateShape(out); !s.ok()) return OpError(node, s.message());
  return TensorType{first.dtype, out};
}

// Elements per index of dims [0, axis) and per index of dims (axis, rank).
void OuterInner(const Shape& s, int axis, int64_t* outer, int64_t* inner) {
  *outer = 1;
  *inner = 1;
  for (int d = 0; d < axis; ++d) *outer *= s[d];
  for (size_t d = axis + 1; d < s.size(); ++d) *inner *= s[d];
}

void ConcatKernel(const KernelArgs& args) {
  const int axis = args.attrs<AxisAttrs>().axis;
  const Shape& ys = *args.output.shape;
  int64_t outer, inner;
  OuterInner(ys, axis, &outer, &inner);
  const int64_t y_row = ys[axis] * inner;
  auto* y = static_cast<std::byte*>(args.output.data);
  int64_t offset = 0;  // elements into a y row
  for (int i = 0; i < args.num_inputs; ++i) {
    const int64_t row = (*args.in(i).shape)[axis] * inner;
    const auto* x = static_cast<const std::byte*>(args.in(i).data);
    for (int64_t o = 0; o < outer; ++o) {
      std::memcpy(y + (o * y_row + offset) * 4, x + o * row * 4, row * 4);
    }
    offset += row;
  }
}

// dx_i = slice of dy along the axis: [Σ_{k<i} n_k, Σ_{k<=i} n_k)
absl::Status ConcatGradient(GradContext& ctx) {
  const int axis = std::get<AxisAttrs>(ctx.node().attrs).axis;
  const Shape& ys = ctx.type(ctx.self()).shape;
  int64_t offset = 0;
  for (int i = 0; i < static_cast<int>(ctx.node().inputs.size()); ++i) {
    const int64_t n = ctx.type(ctx.input(i)).shape[axis];
    if (ctx.NeedsGrad(i)) {
      SliceAttrs slice;
      slice.begin.assign(ys.size(), 0);
      slice.end = ys;
      slice.step.assign(ys.size(), 1);
      slice.begin[axis] = offset;
      slice.end[axis] = offset + n;
      ASSIGN_OR_RETURN(ValueId dx, ctx.Emit(OpKind::kSlice, {ctx.dy()}, slice));
      ctx.SetGrad(i, dx);
    }
    offset += n;
  }
  return absl::OkStatus();
}

std::vector<OpTestCase> ConcatTestCases() {
  auto make = [](std::vector<Shape> shapes, int axis) {
    OpTestCase c;
    for (Shape& s : shapes) c.inputs.push_back({DType::kF32, std::move(s)});
    c.attrs = AxisAttrs{axis};
    return c;
  };
  return {make({{2, 3}, {2, 4}}, 1), make({{1, 3, 2}, {2, 3, 2}, {3, 3, 2}}, 0),
          make({{2, 1, 3}, {2, 2, 3}}, 1), make({{4}}, 0)};
}

// Validates `slice` for an input of shape `x` and returns the sliced shape.
absl::StatusOr<Shape> SlicedShape(const Node& node, const Shape& x, const SliceAttrs& slice) {
  const size_t rank = x.size();
  if (slice.begin.size() != rank || slice.end.size() != rank || slice.step.size() != rank) {
    return OpError(node, "begin, end and step need ", rank, " entries each for ", ShapeToString(x),
                   ", got ", slice.begin.size(), ", ", slice.end.size(), ", ", slice.step.size());
  }
  Shape out(rank);
  for (size_t d = 0; d < rank; ++d) {
    const int64_t b = slice.begin[d], e = slice.end[d], s = slice.step[d];
    if (b < 0 || b > e || e > x[d] || s < 1) {
      return OpError(node, "axis ", d, ": need 0 <= begin <= end <= ", x[d], " and step >= 1, got ",
                     b, ":", e, ":", s);
    }
    out[d] = e == b ? 0 : (e - b - 1) / s + 1;  // ⌈(e − b) / s⌉ without overflow
  }
  return out;
}

absl::StatusOr<TensorType> InferSlice(const Node& node, absl::Span<const TensorType* const> in) {
  ASSIGN_OR_RETURN(Shape out, SlicedShape(node, in[0]->shape, std::get<SliceAttrs>(node.attrs)));
  return TensorType{in[0]->dtype, out};
}

// Strides in the full tensor of shape `full` for walking the slice, and the
// offset of its first element.
void SliceWalk(const Shape& full, const SliceAttrs& slice, Strides* strides, int64_t* base) {
  *base = 0;
  int64_t stride = 1;
  for (int d = static_cast<int>(full.size()) - 1; d >= 0; --d) {
    (*strides)[d] = stride * slice.step[d];
    *base += stride * slice.begin[d];
    stride *= full[d];
  }
}

void SliceKernel(const KernelArgs& args) {
  Strides sx{}, none{};
  int64_t base;
  SliceWalk(*args.in(0).shape, args.attrs<SliceAttrs>(), &sx, &base);
  const auto* x = static_cast<const uint32_t*>(args.in(0).data) + base;
  auto* y = static_cast<uint32_t*>(args.output.data);
  ForEachStrided(*args.output.shape, sx, none,
                 [&](int64_t o, int64_t ix, int64_t) { y[o] = x[ix]; });
}

// dx = zeros of x's shape with dy written at the sliced positions.
absl::Status SliceGradient(GradContext& ctx) {
  if (!ctx.NeedsGrad(0)) return absl::OkStatus();
  SliceGradAttrs attrs{std::get<SliceAttrs>(ctx.node().attrs), ctx.type(ctx.input(0)).shape};
  ASSIGN_OR_RETURN(ValueId dx, ctx.Emit(OpKind::kSliceGrad, {ctx.dy()}, std::move(attrs)));
  ctx.SetGrad(0, dx);
  return absl::OkStatus();
}

std::vector<OpTestCase> SliceTestCases() {
  auto make = [](Shape s, std::vector<int64_t> b, std::vector<int64_t> e, std::vector<int64_t> st) {
    OpTestCase c;
    c.inputs = {{DType::kF32, std::move(s)}};
    c.attrs = SliceAttrs{std::move(b), std::move(e), std::move(st)};
    return c;
  };
  return {make({4, 6}, {1, 0}, {3, 6}, {1, 1}), make({3, 7}, {0, 1}, {3, 7}, {2, 3}),
          make({2, 5, 4}, {0, 2, 1}, {2, 2, 4}, {1, 1, 2}),  // an empty axis
          make({2, 3, 8}, {1, 0, 4}, {2, 3, 8}, {1, 1, 1})};
}

absl::StatusOr<TensorType> InferSliceGrad(const Node& node,
                                          absl::Span<const TensorType* const> in) {
  const auto& attrs = std::get<SliceGradAttrs>(node.attrs);
  if (absl::Status s = ValidateShape(attrs.input_shape); !s.ok()) {
    return OpError(node, s.message());
  }
  ASSIGN_OR_RETURN(Shape sliced, SlicedShape(node, attrs.input_shape, attrs.slice));
  if (in[0]->shape != sliced) {
    return OpError(node, "dy must have the sliced shape ", ShapeToString(sliced), ", got ",
                   TypeToString(*in[0]));
  }
  return TensorType{in[0]->dtype, attrs.input_shape};
}

void SliceGradKernel(const KernelArgs& args) {
  const auto& attrs = args.attrs<SliceGradAttrs>();
  std::memset(args.output.data, 0, args.output.num_elements() * 4);
  Strides sx{}, none{};
  int64_t base;
  SliceWalk(attrs.input_shape, attrs.slice, &sx, &base);
  const auto* dy = static_cast<const uint32_t*>(args.in(0).data);
  auto* dx = static_cast<uint32_t*>(args.output.data) + base;
  ForEachStrided(*args.in(0).shape, sx, none,
                 [&](int64_t o, int64_t ix, int64_t) { dx[ix] = dy[o]; });
}

}  // namespace

OpDef ConcatOpDef() {
  OpDef def;
  def.name = "concat";
  def.attrs_index = AttrsIndexOf<AxisAttrs>();
  def.min_inputs = 1;
  def.max_inputs = kMaxConcatInputs;
  def.infer = InferConcat;
  def.reference = ConcatKernel;
  def.gradient = ConcatGradient;
  def.test_cases = ConcatTestCases;
  return def;
}

OpDef SliceOpDef() {
  OpDef def;
  def.name = "slice";
  def.attrs_index = AttrsIndexOf<SliceAttrs>();
  def.min_inputs = def.max_inputs = 1;
  def.infer = InferSlice;
  def.reference = SliceKernel;
  def.gradient = SliceGradient;
  def.test_cases = SliceTestCases;
  return def;
}

// Not differentiable: emitted only by slice's gradient rule (no second order).
OpDef SliceGradOpDef() {
  OpDef def;
  def.name = "slice_grad";
  def.attrs_index = AttrsIndexOf<SliceGradAttrs>();
  def.min_inputs = def.max_inputs = 1;
  def.infer = InferSliceGrad;
  def.reference = SliceGradKernel;
  return def;
}

}  // namespace fleettune::engine::ops
