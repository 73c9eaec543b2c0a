// kActivation: elementwise activation functions chosen by ActivationAttrs::fn
// (ReLU6, SiLU, GELU with the tanh or erf formula, sigmoid, tanh), PyTorch's
// definitions; and the backward-only kActivationGrad.
//
// kActivationGrad takes (dy, v) with the same attributes, where v is the
// forward's output y for the functions whose derivative y determines (ReLU6,
// sigmoid, tanh) and its input x for the others (SiLU, GELU). Reading y where
// possible lets x die right after the forward op: the next layer usually keeps
// y alive for its own gradient anyway.
#include <algorithm>
#include <cmath>

#include "engine/base/status_macros.h"
#include "engine/kernels/isa.h"
#include "engine/kernels/parallel.h"
#include "engine/kernels/vec_math.h"
#include "engine/ops/kernel_parts.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608f;  // √(2/π)
constexpr float kGeluCubic = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067812f;
constexpr float kInvSqrt2Pi = 0.3989422804f;  // 1/√(2π)

bool DerivativeFromOutput(ActivationFn fn) {
  return fn == ActivationFn::kRelu6 || fn == ActivationFn::kSigmoid || fn == ActivationFn::kTanh;
}

absl::Status CheckFn(const Node& node) {
  const auto fn = std::get<ActivationAttrs>(node.attrs).fn;
  if (static_cast<int>(fn) > static_cast<int>(ActivationFn::kTanh)) {
    return OpError(node, "unknown activation function ", static_cast<int>(fn));
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(CheckFn(node));
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "x"));
  return *in[0];
}

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

template <ActivationFn kFn>
float Apply(float x) {
  switch (kFn) {
    case ActivationFn::kRelu6:
      return std::min(std::max(x, 0.0f), 6.0f);
    case ActivationFn::kSilu:
      return x * Sigmoid(x);
    case ActivationFn::kGeluTanh:
      return 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * (x + kGeluCubic * x * x * x)));
    case ActivationFn::kGeluErf:
      return 0.5f * x * (1.0f + std::erf(x * kInvSqrt2));
    case ActivationFn::kSigmoid:
      return Sigmoid(x);
    case ActivationFn::kTanh:
      return std::tanh(x);
  }
  return x;
}

// dy · f'(x), with v = y or x as the file comment says.
template <ActivationFn kFn>
float Derivative(float dy, float v) {
  switch (kFn) {
    case ActivationFn::kRelu6:  // v = y
      return v > 0.0f && v < 6.0f ? dy : 0.0f;
    case ActivationFn::kSilu: {  // v = x: σ(x)·(1 + x·(1 − σ(x)))
      const float s = Sigmoid(v);
      return dy * s * (1.0f + v * (1.0f - s));
    }
    case ActivationFn::kGeluTanh: {  // v = x
      const float t = std::tanh(kSqrt2OverPi * (v + kGeluCubic * v * v * v));
      const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * v * v);
      return dy * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
    }
    case ActivationFn::kGeluErf: {  // v = x: Φ(x) + x·φ(x)
      const float cdf = 0.5f * (1.0f + std::erf(v * kInvSqrt2));
      const float pdf = kInvSqrt2Pi * std::exp(-0.5f * v * v);
      return dy * (cdf + v * pdf);
    }
    case ActivationFn::kSigmoid:  // v = y: y·(1 − y)
      return dy * v * (1.0f - v);
    case ActivationFn::kTanh:  // v = y: 1 − y²
      return dy * (1.0f - v * v);
  }
  return dy;
}

template <ActivationFn kFn>
void ApplyAll(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = Apply<kFn>(x[i]);
}

template <ActivationFn kFn>
void DerivativeAll(const float* dy, const float* v, float* dx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] = Derivative<kFn>(dy[i], v[i]);
}

// One switch per call, outside the element loop.
void ApplyN(ActivationFn fn, const float* x, float* y, int64_t n) {
  switch (fn) {
    case ActivationFn::kRelu6:
      return ApplyAll<ActivationFn::kRelu6>(x, y, n);
    case ActivationFn::kSilu:
      return ApplyAll<ActivationFn::kSilu>(x, y, n);
    case ActivationFn::kGeluTanh:
      return ApplyAll<ActivationFn::kGeluTanh>(x, y, n);
    case ActivationFn::kGeluErf:
      return ApplyAll<ActivationFn::kGeluErf>(x, y, n);
    case ActivationFn::kSigmoid:
      return ApplyAll<ActivationFn::kSigmoid>(x, y, n);
    case ActivationFn::kTanh:
      return ApplyAll<ActivationFn::kTanh>(x, y, n);
  }
}

void DerivativeN(ActivationFn fn, const float* dy, const float* v, float* dx, int64_t n) {
  switch (fn) {
    case ActivationFn::kRelu6:
      return DerivativeAll<ActivationFn::kRelu6>(dy, v, dx, n);
    case ActivationFn::kSilu:
      return DerivativeAll<ActivationFn::kSilu>(dy, v, dx, n);
    case ActivationFn::kGeluTanh:
      return DerivativeAll<ActivationFn::kGeluTanh>(dy, v, dx, n);
    case ActivationFn::kGeluErf:
      return DerivativeAll<ActivationFn::kGeluErf>(dy, v, dx, n);
    case ActivationFn::kSigmoid:
      return DerivativeAll<ActivationFn::kSigmoid>(dy, v, dx, n);
    case ActivationFn::kTanh:
      return DerivativeAll<ActivationFn::kTanh>(dy, v, dx, n);
  }
}

void Kernel(const KernelArgs& args) {
  ApplyN(args.attrs<ActivationAttrs>().fn, args.in(0).f32(), args.output.f32(),
         args.output.num_elements());
}

void GradKernel(const KernelArgs& args) {
  DerivativeN(args.attrs<ActivationAttrs>().fn, args.in(0).f32(), args.in(1).f32(),
              args.output.f32(), args.output.num_elements());
}

// Fast kernels: GELU (erf), SiLU and sigmoid on the vectorized exp/erf of
// engine/kernels/vec_math.h (libm per element cost more than BERT's
// matmuls), 4, 8 or 16 lanes wide by the device class's ISA
// (engine/kernels/isa.h); the others are the reference loops (ReLU6's
// vectorize). Split
// over the threads in contiguous chunks; the per-element cost estimate keeps
// small tensors on the calling thread.
int64_t CostPerElement(ActivationFn fn) { return fn == ActivationFn::kRelu6 ? 1 : 16; }

// The vectorized activations at any vector width V (engine/kernels/vec_math.h),
// as ops for MapV/Map2V; always inlined into each ISA's loop below. (GCC
// warns that 8- and 16-lane vectors passed by value change the ABI without
// AVX; being inlined into functions compiled for AVX, none is ever passed.)
#pragma GCC diagnostic ignored "-Wpsabi"
using kernels::Splat;

template <typename V>
FLEETTUNE_VEC_INLINE V SigmoidV(V x) {
  return Splat<V>(1.0f) / (Splat<V>(1.0f) + kernels::Exp(-x));
}
struct GeluOp {
  template <typename V>
  static FLEETTUNE_VEC_INLINE V Apply(V v) {
    return Splat<V>(0.5f) * v * (Splat<V>(1.0f) + kernels::Erf(v * Splat<V>(kInvSqrt2)));
  }
};
struct SiluOp {
  template <typename V>
  static FLEETTUNE_VEC_INLINE V Apply(V v) {
    return v * SigmoidV(v);
  }
};
struct SigmoidOp {
  template <typename V>
  static FLEETTUNE_VEC_INLINE V Apply(V v) {
    return SigmoidV(v);
  }
};
struct GeluGradOp {  // Φ(x) + x·φ(x), φ(x) = e^(−u²)/√(2π) with u = x/√2 from erf(u)
  template <typename V>
  static FLEETTUNE_VEC_INLINE V Apply(V d, V x) {
    V gauss;
    const V erf = kernels::ErfAndGauss(x * Splat<V>(kInvSqrt2), &gauss);
    const V cdf = Splat<V>(0.5f) * (Splat<V>(1.0f) + erf);
    const V pdf = Splat<V>(kInvSqrt2Pi) * gauss;
    return d * (cdf + x * pdf);
  }
};
struct SiluGradOp {  // σ(x)·(1 + x·(1 − σ(x)))
  template <typename V>
  static FLEETTUNE_VEC_INLINE V Apply(V d, V x) {
    const V s = SigmoidV(x);
    return d * s * (Splat<V>(1.0f) + x * (Splat<V>(1.0f) - s));
  }
};

// Vectorized forms of Apply and Derivative at width V; false where there is none.
template <typename V>
FLEETTUNE_VEC_INLINE bool ApplyV(ActivationFn fn, const float* x, float* y, int64_t n) {
  switch (fn) {
    case ActivationFn::kGeluErf:
      kernels::MapV<V, GeluOp>(x, y, n);
      return true;
    case ActivationFn::kSilu:
      kernels::MapV<V, SiluOp>(x, y, n);
      return true;
    case ActivationFn::kSigmoid:
      kernels::MapV<V, SigmoidOp>(x, y, n);
      return true;
    default:
      return false;
  }
}

template <typename V>
FLEETTUNE_VEC_INLINE bool DerivativeV(ActivationFn fn, const float* dy, const float* v, float* dx,
                                      int64_t n) {
  switch (fn) {
    case ActivationFn::kGeluErf:
      kernels::Map2V<V, GeluGradOp>(dy, v, dx, n);
      return true;
    case ActivationFn::kSilu:
      kernels::Map2V<V, SiluGradOp>(dy, v, dx, n);
      return true;
    default:
      return false;
  }
}

// One copy of the loops per ISA (engine/kernels/isa.h); the device class's
// level picks one at run time.
bool ApplyGeneric(ActivationFn fn, const float* x, float* y, int64_t n) {
  return ApplyV<kernels::F32x4>(fn, x, y, n);
}
bool DerivativeGeneric(ActivationFn fn, const float* dy, const float* v, float* dx, int64_t n) {
  return DerivativeV<kernels::F32x4>(fn, dy, v, dx, n);
}
#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) bool ApplyAvx2(ActivationFn fn, const float* x, float* y,
                                                   int64_t n) {
  return ApplyV<kernels::F32x8>(fn, x, y, n);
}
__attribute__((target("avx2,fma"))) bool DerivativeAvx2(ActivationFn fn, const float* dy,
                                                        const float* v, float* dx, int64_t n) {
  return DerivativeV<kernels::F32x8>(fn, dy, v, dx, n);
}
__attribute__((target("avx512f"))) bool ApplyAvx512(ActivationFn fn, const float* x, float* y,
                                                    int64_t n) {
  return ApplyV<kernels::F32x16>(fn, x, y, n);
}
__attribute__((target("avx512f"))) bool DerivativeAvx512(ActivationFn fn, const float* dy,
                                                         const float* v, float* dx, int64_t n) {
  return DerivativeV<kernels::F32x16>(fn, dy, v, dx, n);
}
#endif

void Relu6(const float* x, float* y, int64_t n);

bool ApplyVectorized(ActivationFn fn, const float* x, float* y, int64_t n) {
  if (fn == ActivationFn::kRelu6) {
    Relu6(x, y, n);
    return true;
  }
#if defined(__x86_64__)
  switch (kernels::KernelIsa()) {
    case kernels::Isa::kAvx512:
      return ApplyAvx512(fn, x, y, n);
    case kernels::Isa::kAvx2:
      return ApplyAvx2(fn, x, y, n);
    case kernels::Isa::kGeneric:
      break;
  }
#endif
  return ApplyGeneric(fn, x, y, n);
}

// ReLU6 and its derivative at each ISA, with the scalar definitions'
// comparisons and operand order, so the same bits (NaN passes through, −0
// stays −0): y = min(max(x, 0), 6) as Apply<kRelu6>'s std::max then
// std::min, and dx = dy where 0 < y < 6 as Derivative<kRelu6>. The scalar
// loop took 0.9 µs per 4096 floats at AVX-512, and every ReLU6
// convolution's epilogue runs it. The selects are written out in each ISA's
// function rather than in an inline template like the ops above: GCC lowers
// a vector select on a comparison of other operands before inlining, with
// the template's own (baseline) target, to a compare per lane, which ran
// the derivative 13× slower than the scalar loop.
#define FLEETTUNE_RELU6(suffix, target, V)                                               \
  target void Relu6##suffix(const float* x, float* y, int64_t n) {                       \
    constexpr int64_t kWidth = sizeof(V) / sizeof(float);                                \
    const V zero = {};                                                                   \
    const V six = Splat<V>(6.0f);                                                        \
    int64_t i = 0;                                                                       \
    for (; i + kWidth <= n; i += kWidth) {                                               \
      V v;                                                                               \
      __builtin_memcpy(&v, x + i, sizeof v);                                             \
      const V m = v < zero ? zero : v;                                                   \
      const V r = six < m ? six : m;                                                     \
      __builtin_memcpy(y + i, &r, sizeof r);                                             \
    }                                                                                    \
    ApplyAll<ActivationFn::kRelu6>(x + i, y + i, n - i);                                 \
  }                                                                                      \
  target void Relu6Grad##suffix(const float* dy, const float* y, float* dx, int64_t n) { \
    constexpr int64_t kWidth = sizeof(V) / sizeof(float);                                \
    const V zero = {};                                                                   \
    const V six = Splat<V>(6.0f);                                                        \
    int64_t i = 0;                                                                       \
    for (; i + kWidth <= n; i += kWidth) {                                               \
      V vd, vy;                                                                          \
      __builtin_memcpy(&vd, dy + i, sizeof vd);                                          \
      __builtin_memcpy(&vy, y + i, sizeof vy);                                           \
      const V below_six = vy < six ? vd : zero;                                          \
      const V r = vy > zero ? below_six : zero;                                          \
      __builtin_memcpy(dx + i, &r, sizeof r);                                            \
    }                                                                                    \
    DerivativeAll<ActivationFn::kRelu6>(dy + i, y + i, dx + i, n - i);                   \
  }
FLEETTUNE_RELU6(Generic, , kernels::F32x4)
#if defined(__x86_64__)
FLEETTUNE_RELU6(Avx2, __attribute__((target("avx2,fma"))), kernels::F32x8)
FLEETTUNE_RELU6(Avx512, __attribute__((target("avx512f"))), kernels::F32x16)
#endif
#undef FLEETTUNE_RELU6

void Relu6(const float* x, float* y, int64_t n) {
#if defined(__x86_64__)
  switch (kernels::KernelIsa()) {
    case kernels::Isa::kAvx512:
      return Relu6Avx512(x, y, n);
    case kernels::Isa::kAvx2:
      return Relu6Avx2(x, y, n);
    case kernels::Isa::kGeneric:
      break;
  }
#endif
  Relu6Generic(x, y, n);
}

void Relu6Grad(const float* dy, const float* y, float* dx, int64_t n) {
#if defined(__x86_64__)
  switch (kernels::KernelIsa()) {
    case kernels::Isa::kAvx512:
      return Relu6GradAvx512(dy, y, dx, n);
    case kernels::Isa::kAvx2:
      return Relu6GradAvx2(dy, y, dx, n);
    case kernels::Isa::kGeneric:
      break;
  }
#endif
  Relu6GradGeneric(dy, y, dx, n);
}

bool DerivativeVectorized(ActivationFn fn, const float* dy, const float* v, float* dx, int64_t n) {
  if (fn == ActivationFn::kRelu6) {
    Relu6Grad(dy, v, dx, n);
    return true;
  }
#if defined(__x86_64__)
  switch (kernels::KernelIsa()) {
    case kernels::Isa::kAvx512:
      return DerivativeAvx512(fn, dy, v, dx, n);
    case kernels::Isa::kAvx2:
      return DerivativeAvx2(fn, dy, v, dx, n);
    case kernels::Isa::kGeneric:
      break;
  }
#endif
  return DerivativeGeneric(fn, dy, v, dx, n);
}

void FastKernel(const KernelArgs& args) {
  const ActivationFn fn = args.attrs<ActivationAttrs>().fn;
  const float* x = args.in(0).f32();
  float* y = args.output.f32();
  kernels::ParallelFor(args.output.num_elements(), CostPerElement(fn),
                       [&](int64_t begin, int64_t end) {
                         parts::ActivationFast(fn, x + begin, y + begin, end - begin);
                       });
}

void FastGradKernel(const KernelArgs& args) {
  const ActivationFn fn = args.attrs<ActivationAttrs>().fn;
  const float* dy = args.in(0).f32();
  const float* v = args.in(1).f32();
  float* dx = args.output.f32();
  kernels::ParallelFor(
      args.output.num_elements(), CostPerElement(fn), [&](int64_t begin, int64_t end) {
        parts::ActivationGradFast(fn, dy + begin, v + begin, dx + begin, end - begin);
      });
}

// y = f(x):  dx = dy ⊙ f'(x), f' computed from y (ReLU6, sigmoid, tanh) or x.
absl::Status Gradient(GradContext& ctx) {
  if (!ctx.NeedsGrad(0)) return absl::OkStatus();
  const auto fn = std::get<ActivationAttrs>(ctx.node().attrs).fn;
  const ValueId v = DerivativeFromOutput(fn) ? ctx.self() : ctx.input(0);
  ASSIGN_OR_RETURN(ValueId dx, ctx.Emit(OpKind::kActivationGrad, {ctx.dy(), v}, ctx.node().attrs));
  ctx.SetGrad(0, dx);
  return absl::OkStatus();
}

constexpr ActivationFn kAllFns[] = {ActivationFn::kRelu6,    ActivationFn::kSilu,
                                    ActivationFn::kGeluTanh, ActivationFn::kGeluErf,
                                    ActivationFn::kSigmoid,  ActivationFn::kTanh};

std::vector<OpTestCase> TestCases() {
  std::vector<OpTestCase> out;
  for (ActivationFn fn : kAllFns) {
    OpTestCase t;
    t.inputs = {{DType::kF32, {3, 4}}};
    t.attrs = ActivationAttrs{fn};
    out.push_back(t);
  }
  return out;
}

absl::StatusOr<TensorType> InferGrad(const Node& node, absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(CheckFn(node));
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "dy"));
  if (*in[0] != *in[1]) {
    return OpError(node, "dy ", TypeToString(*in[0]), " and its forward value ",
                   TypeToString(*in[1]), " differ");
  }
  return *in[0];
}

std::vector<OpTestCase> GradTestCases() {
  std::vector<OpTestCase> out;
  for (ActivationFn fn : kAllFns) {
    OpTestCase t;
    t.inputs = {{DType::kF32, {3, 4}}, {DType::kF32, {3, 4}}};
    t.attrs = ActivationAttrs{fn};
    out.push_back(t);
  }
  return out;
}

}  // namespace

namespace parts {

void ActivationFast(ActivationFn fn, const float* x, float* y, int64_t n) {
  if (!ApplyVectorized(fn, x, y, n)) ApplyN(fn, x, y, n);
}

void ActivationGradFast(ActivationFn fn, const float* dy, const float* v, float* dx, int64_t n) {
  if (!DerivativeVectorized(fn, dy, v, dx, n)) DerivativeN(fn, dy, v, dx, n);
}

int64_t ActivationCost(ActivationFn fn) { return CostPerElement(fn); }

}  // namespace parts

OpDef ActivationOpDef() {
  OpDef def;
  def.name = "activation";
  def.attrs_index = AttrsIndexOf<ActivationAttrs>();
  def.min_inputs = def.max_inputs = 1;
  def.infer = Infer;
  def.reference = Kernel;
  def.fast = FastKernel;
  def.gradient = Gradient;
  def.test_cases = TestCases;
  return def;
}

// Not differentiable: emitted only by Activation's gradient rule (no second order).
OpDef ActivationGradOpDef() {
  OpDef def;
  def.name = "activation_grad";
  def.attrs_index = AttrsIndexOf<ActivationAttrs>();
  def.min_inputs = def.max_inputs = 2;
  def.infer = InferGrad;
  def.reference = GradKernel;
  def.fast = FastGradKernel;
  def.test_cases = GradTestCases;
  return def;
}

}  // namespace fleettune::engine::ops
