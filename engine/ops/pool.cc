// 2-D pooling, PyTorch's nn.MaxPool2d and nn.AvgPool2d (floor mode, dilation 1),
// and their backward-only companions kMaxPool2dGrad and kAvgPool2dGrad.
//
// x [N, C, H, W] → y [N, C, HO, WO], HO = ⌊(H + 2·pad_h − kernel_h) / stride_h⌋ + 1
// (WO alike). Padding is at most half the kernel (as torch requires), so every
// window holds at least one element of x. Max pooling ignores the padding;
// average pooling counts it as zeros when count_include_pad (torch's default),
// so in floor mode the divisor is kernel_h·kernel_w for every window.
//
// Global average pooling needs no op of its own: it is kReduceMean over axes
// {2, 3}, which already has shape inference, a gradient rule and tests.
#include <algorithm>
#include <limits>

#include "engine/base/status_macros.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

struct Geometry {
  int64_t n, c, h, w, ho, wo;
  int64_t kh, kw, sh, sw, ph, pw;
  bool count_include_pad;

  // Window (i, j) covers rows [r0, r1) and columns [c0, c1) of x, clipped to x.
  void Window(int64_t i, int64_t j, int64_t* r0, int64_t* r1, int64_t* c0, int64_t* c1) const {
    const int64_t top = i * sh - ph, left = j * sw - pw;
    *r0 = std::max<int64_t>(top, 0);
    *r1 = std::min(top + kh, h);
    *c0 = std::max<int64_t>(left, 0);
    *c1 = std::min(left + kw, w);
  }
  float Divisor(int64_t r0, int64_t r1, int64_t c0, int64_t c1) const {
    return static_cast<float>(count_include_pad ? kh * kw : (r1 - r0) * (c1 - c0));
  }
};

Geometry MakeGeometry(const Shape& x, const Pool2dAttrs& a) {
  Geometry g;
  g.n = x[0], g.c = x[1], g.h = x[2], g.w = x[3];
  g.kh = a.kernel_h, g.kw = a.kernel_w, g.sh = a.stride_h, g.sw = a.stride_w;
  g.ph = a.pad_h, g.pw = a.pad_w;
  g.count_include_pad = a.count_include_pad;
  g.ho = (g.h + 2 * g.ph - g.kh) / g.sh + 1;
  g.wo = (g.w + 2 * g.pw - g.kw) / g.sw + 1;
  return g;
}

absl::StatusOr<TensorType> InferPool(const Node& node, const TensorType& x, const Pool2dAttrs& a) {
  constexpr int32_t kLimit = 1 << 16;
  if (a.kernel_h < 1 || a.kernel_w < 1 || a.stride_h < 1 || a.stride_w < 1 || a.pad_h < 0 ||
      a.pad_w < 0 || a.kernel_h > kLimit || a.kernel_w > kLimit || a.stride_h > kLimit ||
      a.stride_w > kLimit) {
    return OpError(node, "needs kernel and stride in [1, ", kLimit,
                   "] and padding >= 0, got kernel ", a.kernel_h, "x", a.kernel_w, ", stride ",
                   a.stride_h, "x", a.stride_w, ", padding ", a.pad_h, "x", a.pad_w);
  }
  if (2 * a.pad_h > a.kernel_h || 2 * a.pad_w > a.kernel_w) {
    return OpError(node, "padding ", a.pad_h, "x", a.pad_w, " exceeds half the kernel ", a.kernel_h,
                   "x", a.kernel_w);
  }
  RETURN_IF_ERROR(ExpectDType(node, x, DType::kF32, "x"));
  RETURN_IF_ERROR(ExpectRank(node, x, 4, "x"));
  if (x.shape[2] + 2 * a.pad_h < a.kernel_h || x.shape[3] + 2 * a.pad_w < a.kernel_w) {
    return OpError(node, "kernel ", a.kernel_h, "x", a.kernel_w, " does not fit the padded x ",
                   TypeToString(x));
  }
  const Geometry g = MakeGeometry(x.shape, a);
  return TensorType{DType::kF32, {g.n, g.c, g.ho, g.wo}};
}

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  return InferPool(node, *in[0], std::get<Pool2dAttrs>(node.attrs));
}

// Calls fn(plane offset of x, plane offset of y, window geometry) per window.
template <typename Fn>
void ForEachWindow(const Geometry& g, Fn&& fn) {
  for (int64_t p = 0; p < g.n * g.c; ++p) {
    for (int64_t i = 0; i < g.ho; ++i) {
      for (int64_t j = 0; j < g.wo; ++j) {
        int64_t r0, r1, c0, c1;
        g.Window(i, j, &r0, &r1, &c0, &c1);
        fn(p * g.h * g.w, (p * g.ho + i) * g.wo + j, r0, r1, c0, c1);
      }
    }
  }
}

// --- max pooling -----------------------------------------------------------------

// Offset (in the plane) of the window's maximum; the first one on ties, like torch.
int64_t ArgMax(const Geometry& g, const float* plane, int64_t r0, int64_t r1, int64_t c0,
               int64_t c1) {
  int64_t best = r0 * g.w + c0;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c = c0; c < c1; ++c) {
      if (plane[r * g.w + c] > plane[best]) best = r * g.w + c;
    }
  }
  return best;
}

void MaxKernel(const KernelArgs& args) {
  const Geometry g = MakeGeometry(*args.in(0).shape, args.attrs<Pool2dAttrs>());
  const float* x = args.in(0).f32();
  float* y = args.output.f32();
  ForEachWindow(g, [&](int64_t xp, int64_t yi, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = c0; c < c1; ++c) m = std::max(m, x[xp + r * g.w + c]);
    }
    y[yi] = m;
  });
}

// y = max over the window:  dx[argmax] += dy  (argmax recomputed from x)
absl::Status MaxGradient(GradContext& ctx) {
  if (!ctx.NeedsGrad(0)) return absl::OkStatus();
  ASSIGN_OR_RETURN(ValueId dx,
                   ctx.Emit(OpKind::kMaxPool2dGrad, {ctx.dy(), ctx.input(0)}, ctx.node().attrs));
  ctx.SetGrad(0, dx);
  return absl::OkStatus();
}

absl::StatusOr<TensorType> InferMaxGrad(const Node& node, absl::Span<const TensorType* const> in) {
  ASSIGN_OR_RETURN(TensorType y, InferPool(node, *in[1], std::get<Pool2dAttrs>(node.attrs)));
  if (*in[0] != y) {
    return OpError(node, "dy must be ", TypeToString(y), ", got ", TypeToString(*in[0]));
  }
  return *in[1];
}

// Inputs (dy, x).
void MaxGradKernel(const KernelArgs& args) {
  const Geometry g = MakeGeometry(*args.in(1).shape, args.attrs<Pool2dAttrs>());
  const float* dy = args.in(0).f32();
  const float* x = args.in(1).f32();
  float* dx = args.output.f32();
  std::fill_n(dx, args.output.num_elements(), 0.0f);
  ForEachWindow(g, [&](int64_t xp, int64_t yi, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    dx[xp + ArgMax(g, x + xp, r0, r1, c0, c1)] += dy[yi];
  });
}

// --- average pooling -------------------------------------------------------------

void AvgKernel(const KernelArgs& args) {
  const Geometry g = MakeGeometry(*args.in(0).shape, args.attrs<Pool2dAttrs>());
  const float* x = args.in(0).f32();
  float* y = args.output.f32();
  ForEachWindow(g, [&](int64_t xp, int64_t yi, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    float sum = 0.0f;
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = c0; c < c1; ++c) sum += x[xp + r * g.w + c];
    }
    y[yi] = sum / g.Divisor(r0, r1, c0, c1);
  });
}

// y = Σ_window x / divisor:  dx[e] = Σ over the windows holding e of dy / divisor
absl::Status AvgGradient(GradContext& ctx) {
  if (!ctx.NeedsGrad(0)) return absl::OkStatus();
  ASSIGN_OR_RETURN(ValueId dx, ctx.Emit(OpKind::kAvgPool2dGrad, {ctx.dy()},
                                        Pool2dGradAttrs{std::get<Pool2dAttrs>(ctx.node().attrs),
                                                        ctx.type(ctx.input(0)).shape}));
  ctx.SetGrad(0, dx);
  return absl::OkStatus();
}

absl::StatusOr<TensorType> InferAvgGrad(const Node& node, absl::Span<const TensorType* const> in) {
  const auto& a = std::get<Pool2dGradAttrs>(node.attrs);
  absl::Status valid = ValidateShape(a.input_shape);
  if (!valid.ok()) return OpError(node, "input shape: ", valid.message());
  const TensorType x{DType::kF32, a.input_shape};
  ASSIGN_OR_RETURN(TensorType y, InferPool(node, x, a.pool));
  if (*in[0] != y) {
    return OpError(node, "dy must be ", TypeToString(y), ", got ", TypeToString(*in[0]));
  }
  return x;
}

void AvgGradKernel(const KernelArgs& args) {
  const auto& a = args.attrs<Pool2dGradAttrs>();
  const Geometry g = MakeGeometry(a.input_shape, a.pool);
  const float* dy = args.in(0).f32();
  float* dx = args.output.f32();
  std::fill_n(dx, args.output.num_elements(), 0.0f);
  ForEachWindow(g, [&](int64_t xp, int64_t yi, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    const float share = dy[yi] / g.Divisor(r0, r1, c0, c1);
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = c0; c < c1; ++c) dx[xp + r * g.w + c] += share;
    }
  });
}

// --- test cases --------------------------------------------------------------------

struct PoolCase {
  Shape x;
  Pool2dAttrs attrs;
};

std::vector<PoolCase> PoolCases() {
  auto attrs = [](int kh, int kw, int sh, int sw, int ph, int pw, bool include_pad) {
    return Pool2dAttrs{kh, kw, sh, sw, ph, pw, include_pad};
  };
  return {
      {{2, 3, 4, 4}, attrs(2, 2, 2, 2, 0, 0, true)},
      {{1, 2, 5, 5}, attrs(3, 3, 2, 2, 1, 1, true)},
      {{1, 2, 4, 5}, attrs(3, 2, 1, 2, 1, 1, false)},
      {{2, 1, 5, 4}, attrs(2, 3, 3, 1, 0, 1, true)},
  };
}

std::vector<OpTestCase> PoolTestCases() {
  std::vector<OpTestCase> out;
  for (const PoolCase& p : PoolCases()) {
    OpTestCase t;
    t.inputs = {{DType::kF32, p.x}};
    t.attrs = p.attrs;
    out.push_back(t);
  }
  return out;
}

Shape PoolOutput(const PoolCase& p) {
  const Geometry g = MakeGeometry(p.x, p.attrs);
  return {g.n, g.c, g.ho, g.wo};
}

std::vector<OpTestCase> MaxGradTestCases() {
  std::vector<OpTestCase> out;
  for (const PoolCase& p : PoolCases()) {
    OpTestCase t;
    t.inputs = {{DType::kF32, PoolOutput(p)}, {DType::kF32, p.x}};
    t.attrs = p.attrs;
    out.push_back(t);
  }
  return out;
}

std::vector<OpTestCase> AvgGradTestCases() {
  std::vector<OpTestCase> out;
  for (const PoolCase& p : PoolCases()) {
    OpTestCase t;
    t.inputs = {{DType::kF32, PoolOutput(p)}};
    t.attrs = Pool2dGradAttrs{p.attrs, p.x};
    out.push_back(t);
  }
  return out;
}

}  // namespace

OpDef MaxPool2dOpDef() {
  OpDef def;
  def.name = "max_pool2d";
  def.attrs_index = AttrsIndexOf<Pool2dAttrs>();
  def.min_inputs = def.max_inputs = 1;
  def.infer = Infer;
  def.reference = MaxKernel;
  def.gradient = MaxGradient;
  def.test_cases = PoolTestCases;
  return def;
}

// Not differentiable: emitted only by MaxPool2d's gradient rule (no second
// order). Inputs (dy, x).
OpDef MaxPool2dGradOpDef() {
  OpDef def;
  def.name = "max_pool2d_grad";
  def.attrs_index = AttrsIndexOf<Pool2dAttrs>();
  def.min_inputs = def.max_inputs = 2;
  def.infer = InferMaxGrad;
  def.reference = MaxGradKernel;
  def.test_cases = MaxGradTestCases;
  return def;
}

OpDef AvgPool2dOpDef() {
  OpDef def;
  def.name = "avg_pool2d";
  def.attrs_index = AttrsIndexOf<Pool2dAttrs>();
  def.min_inputs = def.max_inputs = 1;
  def.infer = Infer;
  def.reference = AvgKernel;
  def.gradient = AvgGradient;
  def.test_cases = PoolTestCases;
  return def;
}

// Not differentiable: emitted only by AvgPool2d's gradient rule. Input dy;
// attrs carry x's shape.
OpDef AvgPool2dGradOpDef() {
  OpDef def;
  def.name = "avg_pool2d_grad";
  def.attrs_index = AttrsIndexOf<Pool2dGradAttrs>();
  def.min_inputs = def.max_inputs = 1;
  def.infer = InferAvgGrad;
  def.reference = AvgGradKernel;
  def.test_cases = AvgGradTestCases;
  return def;
}

}  // namespace fleettune::engine::ops
