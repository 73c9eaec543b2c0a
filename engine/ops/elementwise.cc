// Elementwise ops: kAdd, kMul, kSub and kDiv (numpy broadcasting), kScale,
// kRelu and the backward-only kReluGrad.
#include <algorithm>

#include "engine/base/status_macros.h"
#include "engine/kernels/parallel.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

absl::StatusOr<TensorType> InferBinary(const Node& node, absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "a"));
  RETURN_IF_ERROR(ExpectDType(node, *in[1], DType::kF32, "b"));
  absl::StatusOr<Shape> shape = BroadcastShapes(in[0]->shape, in[1]->shape);
  if (!shape.ok()) return OpError(node, shape.status().message());
  return TensorType{DType::kF32, *shape};
}

absl::StatusOr<TensorType> InferUnary(const Node& node, absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "x"));
  return *in[0];
}

template <typename F>
void BinaryKernel(const KernelArgs& args, F f) {
  const float* a = args.in(0).f32();
  const float* b = args.in(1).f32();
  float* y = args.output.f32();
  const Shape& as = *args.in(0).shape;
  const Shape& bs = *args.in(1).shape;
  if (as == bs) {
    const int64_t n = args.output.num_elements();
    for (int64_t i = 0; i < n; ++i) y[i] = f(a[i], b[i]);
    return;
  }
  ForEachBroadcast(as, bs, *args.output.shape,
                   [&](int64_t o, int64_t ia, int64_t ib) { y[o] = f(a[ia], b[ib]); });
}

void AddKernel(const KernelArgs& args) {
  BinaryKernel(args, [](float a, float b) { return a + b; });
}
void MulKernel(const KernelArgs& args) {
  BinaryKernel(args, [](float a, float b) { return a * b; });
}
void SubKernel(const KernelArgs& args) {
  BinaryKernel(args, [](float a, float b) { return a - b; });
}
// IEEE division: b == 0 gives ±inf or NaN, as in PyTorch.
void DivKernel(const KernelArgs& args) {
  BinaryKernel(args, [](float a, float b) { return a / b; });
}

// Whether `shape`, without its leading 1s, equals the trailing dims of `out`:
// then it repeats along out with period NumElements(shape) (a bias row, a
// scalar).
bool IsTrailingBlock(const Shape& shape, const Shape& out) {
  size_t first = 0;
  while (first < shape.size() && shape[first] == 1) ++first;
  const size_t len = shape.size() - first;
  if (len > out.size()) return false;
  return std::equal(shape.begin() + first, shape.end(), out.end() - len);
}

// Same shapes and trailing-block broadcasts as contiguous loops over rows,
// split over the threads; other broadcasts take the reference's iterator.
template <typename F>
void FastBinaryKernel(const KernelArgs& args, F f) {
  const float* a = args.in(0).f32();
  const float* b = args.in(1).f32();
  float* y = args.output.f32();
  const Shape& as = *args.in(0).shape;
  const Shape& bs = *args.in(1).shape;
  const Shape& ys = *args.output.shape;
  const int64_t n = NumElements(ys);
  if (n == 0) return;
  if (as == bs) {
    kernels::ParallelFor(n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) y[i] = f(a[i], b[i]);
    });
    return;
  }
  const bool b_repeats = NumElements(as) == n && IsTrailingBlock(bs, ys);
  const bool a_repeats = NumElements(bs) == n && IsTrailingBlock(as, ys);
  if (!a_repeats && !b_repeats) return BinaryKernel(args, f);
  const int64_t period = b_repeats ? NumElements(bs) : NumElements(as);
  kernels::ParallelFor(n / period, period, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t o = r * period;
      if (b_repeats) {
        for (int64_t i = 0; i < period; ++i) y[o + i] = f(a[o + i], b[i]);
      } else {
        for (int64_t i = 0; i < period; ++i) y[o + i] = f(a[i], b[o + i]);
      }
    }
  });
}

void AddFast(const KernelArgs& args) {
  FastBinaryKernel(args, [](float a, float b) { return a + b; });
}
void MulFast(const KernelArgs& args) {
  FastBinaryKernel(args, [](float a, float b) { return a * b; });
}
void SubFast(const KernelArgs& args) {
  FastBinaryKernel(args, [](float a, float b) { return a - b; });
}
void DivFast(const KernelArgs& args) {
  FastBinaryKernel(args, [](float a, float b) { return a / b; });
}

// y = a + b:  da = reduce(dy),  db = reduce(dy)   (reduce = sum over broadcast axes)
absl::Status AddGradient(GradContext& ctx) {
  for (int i = 0; i < 2; ++i) {
    if (!ctx.NeedsGrad(i)) continue;
    ASSIGN_OR_RETURN(ValueId g, ReduceToShape(ctx, ctx.dy(), ctx.type(ctx.input(i)).shape));
    ctx.SetGrad(i, g);
  }
  return absl::OkStatus();
}

// y = a ⊙ b:  da = reduce(dy ⊙ b),  db = reduce(dy ⊙ a)
absl::Status MulGradient(GradContext& ctx) {
  for (int i = 0; i < 2; ++i) {
    if (!ctx.NeedsGrad(i)) continue;
    ASSIGN_OR_RETURN(ValueId prod, ctx.Emit(OpKind::kMul, {ctx.dy(), ctx.input(1 - i)}));
    ASSIGN_OR_RETURN(ValueId g, ReduceToShape(ctx, prod, ctx.type(ctx.input(i)).shape));
    ctx.SetGrad(i, g);
  }
  return absl::OkStatus();
}

// y = a − b:  da = reduce(dy),  db = −reduce(dy)
absl::Status SubGradient(GradContext& ctx) {
  if (ctx.NeedsGrad(0)) {
    ASSIGN_OR_RETURN(ValueId g, ReduceToShape(ctx, ctx.dy(), ctx.type(ctx.input(0)).shape));
    ctx.SetGrad(0, g);
  }
  if (ctx.NeedsGrad(1)) {
    ASSIGN_OR_RETURN(ValueId g, ReduceToShape(ctx, ctx.dy(), ctx.type(ctx.input(1)).shape));
    ASSIGN_OR_RETURN(g, ctx.Emit(OpKind::kScale, {g}, ScalarAttrs{-1.0f}));
    ctx.SetGrad(1, g);
  }
  return absl::OkStatus();
}

// y = a / b:  da = reduce(dy / b),  db = −reduce(dy ⊙ y / b)   (y / b = a / b²)
absl::Status DivGradient(GradContext& ctx) {
  const ValueId b = ctx.input(1);
  ASSIGN_OR_RETURN(ValueId dy_over_b, ctx.Emit(OpKind::kDiv, {ctx.dy(), b}));
  if (ctx.NeedsGrad(0)) {
    ASSIGN_OR_RETURN(ValueId g, ReduceToShape(ctx, dy_over_b, ctx.type(ctx.input(0)).shape));
    ctx.SetGrad(0, g);
  }
  if (ctx.NeedsGrad(1)) {
    ASSIGN_OR_RETURN(ValueId prod, ctx.Emit(OpKind::kMul, {dy_over_b, ctx.self()}));
    ASSIGN_OR_RETURN(ValueId g, ReduceToShape(ctx, prod, ctx.type(b).shape));
    ASSIGN_OR_RETURN(g, ctx.Emit(OpKind::kScale, {g}, ScalarAttrs{-1.0f}));
    ctx.SetGrad(1, g);
  }
  return absl::OkStatus();
}

std::vector<OpTestCase> BinaryTestCases() {
  auto make = [](Shape a, Shape b) {
    OpTestCase c;
    c.inputs = {{DType::kF32, std::move(a)}, {DType::kF32, std::move(b)}};
    return c;
  };
  return {make({3, 4}, {3, 4}),      make({3, 4}, {4}),    make({2, 1, 4}, {3, 1}),
          make({}, {2, 3}),          make({2, 3}, {1, 1}), make({1, 3}, {2, 2, 3}),
          make({2, 3, 4}, {1, 3, 4})};
}

absl::StatusOr<TensorType> InferScale(const Node& node, absl::Span<const TensorType* const> in) {
  if (!std::holds_alternative<ScalarAttrs>(node.attrs)) return OpError(node, "needs ScalarAttrs");
  return InferUnary(node, in);
}

void ScaleKernel(const KernelArgs& args) {
  const float s = args.attrs<ScalarAttrs>().value;
  const float* x = args.in(0).f32();
  float* y = args.output.f32();
  const int64_t n = args.output.num_elements();
  for (int64_t i = 0; i < n; ++i) y[i] = s * x[i];
}

// y = s·x:  dx = s·dy
absl::Status ScaleGradient(GradContext& ctx) {
  if (!ctx.NeedsGrad(0)) return absl::OkStatus();
  ASSIGN_OR_RETURN(ValueId dx, ctx.Emit(OpKind::kScale, {ctx.dy()}, ctx.node().attrs));
  ctx.SetGrad(0, dx);
  return absl::OkStatus();
}

std::vector<OpTestCase> ScaleTestCases() {
  OpTestCase c;
  c.inputs = {{DType::kF32, {3, 4}}};
  c.attrs = ScalarAttrs{-2.5f};
  return {c};
}

void ReluKernel(const KernelArgs& args) {
  const float* x = args.in(0).f32();
  float* y = args.output.f32();
  const int64_t n = args.output.num_elements();
  for (int64_t i = 0; i < n; ++i) y[i] = std::max(x[i], 0.0f);
}

// y = max(x, 0):  dx = dy ⊙ [y > 0]   (uses the output, so x need not stay alive)
absl::Status ReluGradient(GradContext& ctx) {
  if (!ctx.NeedsGrad(0)) return absl::OkStatus();
  ASSIGN_OR_RETURN(ValueId dx, ctx.Emit(OpKind::kReluGrad, {ctx.dy(), ctx.self()}));
  ctx.SetGrad(0, dx);
  return absl::OkStatus();
}

std::vector<OpTestCase> UnaryTestCases() {
  OpTestCase c;
  c.inputs = {{DType::kF32, {3, 4}}};
  return {c};
}

absl::StatusOr<TensorType> InferReluGrad(const Node& node, absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "dy"));
  if (*in[0] != *in[1]) {
    return OpError(node, "dy ", TypeToString(*in[0]), " and y ", TypeToString(*in[1]), " differ");
  }
  return *in[0];
}

void ReluGradKernel(const KernelArgs& args) {
  const float* dy = args.in(0).f32();
  const float* y = args.in(1).f32();
  float* dx = args.output.f32();
  const int64_t n = args.output.num_elements();
  // Both loads are unconditional so the compiler can turn the select into a
  // vector blend.
  for (int64_t i = 0; i < n; ++i) {
    const float g = dy[i];
    dx[i] = y[i] > 0.0f ? g : 0.0f;
  }
}

}  // namespace

OpDef AddOpDef() {
  OpDef def;
  def.name = "add";
  def.min_inputs = def.max_inputs = 2;
  def.infer = InferBinary;
  def.reference = AddKernel;
  def.fast = AddFast;
  def.gradient = AddGradient;
  def.test_cases = BinaryTestCases;
  return def;
}

OpDef MulOpDef() {
  OpDef def;
  def.name = "mul";
  def.min_inputs = def.max_inputs = 2;
  def.infer = InferBinary;
  def.reference = MulKernel;
  def.fast = MulFast;
  def.gradient = MulGradient;
  def.test_cases = BinaryTestCases;
  return def;
}

OpDef SubOpDef() {
  OpDef def;
  def.name = "sub";
  def.min_inputs = def.max_inputs = 2;
  def.infer = InferBinary;
  def.reference = SubKernel;
  def.fast = SubFast;
  def.gradient = SubGradient;
  def.test_cases = BinaryTestCases;
  return def;
}

OpDef DivOpDef() {
  OpDef def;
  def.name = "div";
  def.min_inputs = def.max_inputs = 2;
  def.infer = InferBinary;
  def.reference = DivKernel;
  def.fast = DivFast;
  def.gradient = DivGradient;
  def.test_cases = BinaryTestCases;
  return def;
}

OpDef ScaleOpDef() {
  OpDef def;
  def.name = "scale";
  def.attrs_index = AttrsIndexOf<ScalarAttrs>();
  def.min_inputs = def.max_inputs = 1;
  def.infer = InferScale;
  def.reference = ScaleKernel;
  def.gradient = ScaleGradient;
  def.test_cases = ScaleTestCases;
  return def;
}

OpDef ReluOpDef() {
  OpDef def;
  def.name = "relu";
  def.min_inputs = def.max_inputs = 1;
  def.infer = InferUnary;
  def.reference = ReluKernel;
  def.gradient = ReluGradient;
  def.test_cases = UnaryTestCases;
  return def;
}

// Not differentiable: only emitted by Relu's gradient rule, and fleettune does
// not build second-order gradients.
OpDef ReluGradOpDef() {
  OpDef def;
  def.name = "relu_grad";
  def.min_inputs = def.max_inputs = 2;
  def.infer = InferReluGrad;
  def.reference = ReluGradKernel;
  return def;
}

}  // namespace fleettune::engine::ops
