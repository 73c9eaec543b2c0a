// kConv2d and its backward-only companions kConv2dBackwardInput and
// kConv2dBackwardWeight: PyTorch's nn.Conv2d (a cross-correlation, NCHW).
//
// Shapes: x [N, C, H, W], weight [O, C/groups, KH, KW], bias [O] (optional
// third input), y [N, O, HO, WO] with
//   HO = ⌊(H + 2·pad_h − dilation_h·(KH − 1) − 1) / stride_h⌋ + 1   (WO alike).
// Group g maps input channels [g·C/groups, (g+1)·C/groups) to output channels
// [g·O/groups, (g+1)·O/groups); groups = C = O is a depthwise convolution.
//
// kConv2dBackwardInput takes an optional third input, the bit mask of the
// ReLU or ReLU6 in front of the convolution (activation_mask's layout over
// dx): dx is then masked_grad(dx, mask), each block masked right after it is
// written. The pack_masks pass folds a masked_grad of the input gradient in.
// Its fast kernel can also sum dx per channel (a bias gradient the runtime
// absorbed, KernelArgs::channel_sums) plane by plane as it writes them.
//
// Kernels: the reference kernels are direct loops accumulating in double. The
// fast kernels lower each (sample, group) to one GEMM on an im2col buffer
// (kernels::Sgemm; a 1×1, stride-1, unpadded convolution reads x directly),
// except when a group has one input channel (depthwise), where a GEMM with one
// inner dimension would waste the library: those run direct loops over
// contiguous output rows. The im2col buffer is the op's scratch workspace.
#include <algorithm>
#include <cstring>
#include <limits>

#include "engine/base/status_macros.h"
#include "engine/kernels/batch_norm.h"
#include "engine/kernels/depthwise_conv.h"
#include "engine/kernels/gemm.h"
#include "engine/kernels/parallel.h"
#include "engine/kernels/pointwise_conv.h"
#include "engine/kernels/stem_conv.h"
#include "engine/kernels/vec.h"
#include "engine/ops/kernel_parts.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

// Everything a kernel needs to know about one convolution.
struct Geometry {
  int64_t n, c, h, w;      // input
  int64_t o, kh, kw;       // weight: [o, c / groups, kh, kw]
  int64_t ho, wo;          // output spatial size
  int64_t groups, cg, og;  // groups, input and output channels per group
  int64_t sh, sw, ph, pw, dh, dw;

  int64_t k() const { return cg * kh * kw; }  // GEMM inner dimension
  int64_t out_plane() const { return ho * wo; }
  bool pointwise() const { return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
  bool depthwise() const { return cg == 1; }
};

Geometry MakeGeometry(const Shape& x, const Shape& weight, const Conv2dAttrs& a) {
  Geometry g;
  g.n = x[0], g.c = x[1], g.h = x[2], g.w = x[3];
  g.o = weight[0], g.kh = weight[2], g.kw = weight[3];
  g.groups = a.groups;
  g.cg = g.c / a.groups;
  g.og = g.o / a.groups;
  g.sh = a.stride_h, g.sw = a.stride_w, g.ph = a.pad_h, g.pw = a.pad_w;
  g.dh = a.dilation_h, g.dw = a.dilation_w;
  g.ho = (g.h + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.wo = (g.w + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  return g;
}

absl::Status CheckAttrs(const Node& node, const Conv2dAttrs& a) {
  if (a.stride_h < 1 || a.stride_w < 1 || a.dilation_h < 1 || a.dilation_w < 1 || a.pad_h < 0 ||
      a.pad_w < 0 || a.groups < 1) {
    return OpError(node,
                   "needs strides and dilations >= 1, paddings >= 0 and groups >= 1, got "
                   "stride ",
                   a.stride_h, "x", a.stride_w, ", padding ", a.pad_h, "x", a.pad_w, ", dilation ",
                   a.dilation_h, "x", a.dilation_w, ", groups ", a.groups);
  }
  // Keeps every index computation far from int64 overflow.
  constexpr int32_t kLimit = 1 << 16;
  if (a.stride_h > kLimit || a.stride_w > kLimit || a.dilation_h > kLimit ||
      a.dilation_w > kLimit || a.pad_h > kLimit || a.pad_w > kLimit) {
    return OpError(node, "stride, padding and dilation must be at most ", kLimit);
  }
  return absl::OkStatus();
}

// Checks x and weight against each other and the attributes; returns y's type.
absl::StatusOr<TensorType> InferConv(const Node& node, const TensorType& x, const TensorType& w,
                                     const Conv2dAttrs& a) {
  RETURN_IF_ERROR(CheckAttrs(node, a));
  RETURN_IF_ERROR(ExpectDType(node, x, DType::kF32, "x"));
  RETURN_IF_ERROR(ExpectDType(node, w, DType::kF32, "weight"));
  RETURN_IF_ERROR(ExpectRank(node, x, 4, "x"));
  RETURN_IF_ERROR(ExpectRank(node, w, 4, "weight"));
  if (x.shape[1] % a.groups != 0 || w.shape[0] % a.groups != 0) {
    return OpError(node, "groups ", a.groups, " must divide the ", x.shape[1], " input and the ",
                   w.shape[0], " output channels");
  }
  if (w.shape[1] != x.shape[1] / a.groups) {
    return OpError(node, "weight ", TypeToString(w), " needs ", x.shape[1] / a.groups,
                   " input channels per group for x ", TypeToString(x), " and groups ", a.groups);
  }
  if (w.shape[2] < 1 || w.shape[3] < 1) {
    return OpError(node, "kernel ", TypeToString(w), " is empty");
  }
  const Geometry g = MakeGeometry(x.shape, w.shape, a);
  if (g.h + 2 * g.ph < g.dh * (g.kh - 1) + 1 || g.w + 2 * g.pw < g.dw * (g.kw - 1) + 1) {
    return OpError(node, "kernel ", g.kh, "x", g.kw, " with dilation ", g.dh, "x", g.dw,
                   " does not fit the padded ", g.h, "x", g.w, " input");
  }
  return TensorType{DType::kF32, {g.n, g.o, g.ho, g.wo}};
}

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  const auto& a = std::get<Conv2dAttrs>(node.attrs);
  ASSIGN_OR_RETURN(TensorType y, InferConv(node, *in[0], *in[1], a));
  if (in.size() == 3) {
    RETURN_IF_ERROR(ExpectDType(node, *in[2], DType::kF32, "bias"));
    if (in[2]->shape != Shape{in[1]->shape[0]}) {
      return OpError(node, "bias must be f32[", in[1]->shape[0], "], got ", TypeToString(*in[2]));
    }
  }
  return y;
}

// The output columns ow whose input column ow·s − p + k·d lies in [0, size):
// [lo, hi). Lets the inner loops run without bounds checks.
void ValidRange(int64_t size, int64_t out, int64_t s, int64_t offset, int64_t* lo, int64_t* hi) {
  // offset = v·dw − pw; need 0 <= ow·s + offset < size.
  int64_t l = offset >= 0 ? 0 : (-offset + s - 1) / s;
  int64_t h = size - offset <= 0 ? 0 : (size - offset - 1) / s + 1;
  *lo = std::min(l, out);
  *hi = std::max(*lo, std::min(h, out));
}

// --- reference kernels -------------------------------------------------------

// y[n,o,i,j] = b[o] + Σ_{ci,u,v} x[n, g·cg+ci, i·sh−ph+u·dh, j·sw−pw+v·dw] · w[o,ci,u,v]
void Reference(const KernelArgs& args) {
  const Geometry g = MakeGeometry(*args.in(0).shape, *args.in(1).shape, args.attrs<Conv2dAttrs>());
  const float* x = args.in(0).f32();
  const float* w = args.in(1).f32();
  const float* b = args.num_inputs == 3 ? args.in(2).f32() : nullptr;
  float* y = args.output.f32();
  for (int64_t n = 0; n < g.n; ++n) {
    for (int64_t o = 0; o < g.o; ++o) {
      const int64_t group = o / g.og;
      for (int64_t i = 0; i < g.ho; ++i) {
        for (int64_t j = 0; j < g.wo; ++j) {
          double acc = b ? b[o] : 0.0;
          for (int64_t ci = 0; ci < g.cg; ++ci) {
            const int64_t c = group * g.cg + ci;
            for (int64_t u = 0; u < g.kh; ++u) {
              const int64_t ih = i * g.sh - g.ph + u * g.dh;
              if (ih < 0 || ih >= g.h) continue;
              for (int64_t v = 0; v < g.kw; ++v) {
                const int64_t iw = j * g.sw - g.pw + v * g.dw;
                if (iw < 0 || iw >= g.w) continue;
                acc += static_cast<double>(x[((n * g.c + c) * g.h + ih) * g.w + iw]) *
                       w[((o * g.cg + ci) * g.kh + u) * g.kw + v];
              }
            }
          }
          y[((n * g.o + o) * g.ho + i) * g.wo + j] = static_cast<float>(acc);
        }
      }
    }
  }
}

// dx[n,c,ih,iw] = Σ dy[n,o,i,j] · w[o,ci,u,v] over the (o, u, v, i, j) with
// i·sh − ph + u·dh = ih and j·sw − pw + v·dw = iw, o in c's group.
void BackwardInputReference(const KernelArgs& args) {
  const auto& a = args.attrs<Conv2dGradAttrs>();
  const Geometry g = MakeGeometry(a.shape, *args.in(1).shape, a.conv);
  const float* dy = args.in(0).f32();
  const float* w = args.in(1).f32();
  float* dx = args.output.f32();
  for (int64_t n = 0; n < g.n; ++n) {
    for (int64_t c = 0; c < g.c; ++c) {
      const int64_t group = c / g.cg, ci = c % g.cg;
      for (int64_t ih = 0; ih < g.h; ++ih) {
        for (int64_t iw = 0; iw < g.w; ++iw) {
          double acc = 0.0;
          for (int64_t o = group * g.og; o < (group + 1) * g.og; ++o) {
            for (int64_t u = 0; u < g.kh; ++u) {
              const int64_t ti = ih + g.ph - u * g.dh;
              if (ti < 0 || ti % g.sh != 0 || ti / g.sh >= g.ho) continue;
              for (int64_t v = 0; v < g.kw; ++v) {
                const int64_t tj = iw + g.pw - v * g.dw;
                if (tj < 0 || tj % g.sw != 0 || tj / g.sw >= g.wo) continue;
                acc +=
                    static_cast<double>(dy[((n * g.o + o) * g.ho + ti / g.sh) * g.wo + tj / g.sw]) *
                    w[((o * g.cg + ci) * g.kh + u) * g.kw + v];
              }
            }
          }
          dx[((n * g.c + c) * g.h + ih) * g.w + iw] = static_cast<float>(acc);
        }
      }
    }
  }
  if (args.num_inputs == 3) {
    const int32_t* mask = args.in(2).i32();
    for (int64_t i = 0; i < args.output.num_elements(); ++i) {
      if (!parts::MaskBit(mask, i)) dx[i] = 0.0f;
    }
  }
}

// dw[o,ci,u,v] = Σ_{n,i,j} dy[n,o,i,j] · x[n, g·cg+ci, i·sh−ph+u·dh, j·sw−pw+v·dw]
void BackwardWeightReference(const KernelArgs& args) {
  const auto& a = args.attrs<Conv2dGradAttrs>();
  const Geometry g = MakeGeometry(*args.in(0).shape, a.shape, a.conv);
  const float* x = args.in(0).f32();
  const float* dy = args.in(1).f32();
  float* dw = args.output.f32();
  for (int64_t o = 0; o < g.o; ++o) {
    const int64_t group = o / g.og;
    for (int64_t ci = 0; ci < g.cg; ++ci) {
      const int64_t c = group * g.cg + ci;
      for (int64_t u = 0; u < g.kh; ++u) {
        for (int64_t v = 0; v < g.kw; ++v) {
          double acc = 0.0;
          for (int64_t n = 0; n < g.n; ++n) {
            for (int64_t i = 0; i < g.ho; ++i) {
              const int64_t ih = i * g.sh - g.ph + u * g.dh;
              if (ih < 0 || ih >= g.h) continue;
              for (int64_t j = 0; j < g.wo; ++j) {
                const int64_t iw = j * g.sw - g.pw + v * g.dw;
                if (iw < 0 || iw >= g.w) continue;
                acc += static_cast<double>(dy[((n * g.o + o) * g.ho + i) * g.wo + j]) *
                       x[((n * g.c + c) * g.h + ih) * g.w + iw];
              }
            }
          }
          dw[((o * g.cg + ci) * g.kh + u) * g.kw + v] = static_cast<float>(acc);
        }
      }
    }
  }
}

// --- fast kernels --------------------------------------------------------------

// col[(ci·KH + u)·KW + v, i·WO + j] = x[ci, i·sh − ph + u·dh, j·sw − pw + v·dw]
// (0 outside the input), for the cg channels of one (sample, group) at x.
// The rows are split over the team: a stem convolution's GEMM (K = 27) takes
// less time than one thread's copy of its strided columns.
void Im2Col(const Geometry& g, const float* x, float* col) {
  const int64_t taps = g.kh * g.kw;
  kernels::ParallelFor(g.cg * taps, g.out_plane(), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t ci = r / taps, u = r % taps / g.kw, v = r % g.kw;
      const float* xc = x + ci * g.h * g.w;
      float* row = col + r * g.out_plane();
      const int64_t off_w = v * g.dw - g.pw;
      int64_t lo, hi;
      ValidRange(g.w, g.wo, g.sw, off_w, &lo, &hi);
      for (int64_t i = 0; i < g.ho; ++i) {
        float* out = row + i * g.wo;
        const int64_t ih = i * g.sh - g.ph + u * g.dh;
        if (ih < 0 || ih >= g.h) {
          std::fill_n(out, g.wo, 0.0f);
          continue;
        }
        const float* in = xc + ih * g.w;
        std::fill_n(out, lo, 0.0f);
        if (g.sw == 1) {
          if (hi > lo) std::memcpy(out + lo, in + lo + off_w, (hi - lo) * sizeof(float));
        } else {
          for (int64_t j = lo; j < hi; ++j) out[j] = in[j * g.sw + off_w];
        }
        std::fill(out + hi, out + g.wo, 0.0f);
      }
    }
  });
}

// The adjoint of Im2Col: dx[ci, ...] += col[...] for one (sample, group).
void Col2ImAdd(const Geometry& g, const float* col, float* dx) {
  for (int64_t ci = 0; ci < g.cg; ++ci) {
    float* dxc = dx + ci * g.h * g.w;
    for (int64_t u = 0; u < g.kh; ++u) {
      for (int64_t v = 0; v < g.kw; ++v) {
        const float* row = col + ((ci * g.kh + u) * g.kw + v) * g.out_plane();
        const int64_t off_w = v * g.dw - g.pw;
        int64_t lo, hi;
        ValidRange(g.w, g.wo, g.sw, off_w, &lo, &hi);
        for (int64_t i = 0; i < g.ho; ++i) {
          const int64_t ih = i * g.sh - g.ph + u * g.dh;
          if (ih < 0 || ih >= g.h) continue;
          const float* in = row + i * g.wo;
          float* out = dxc + ih * g.w;
          for (int64_t j = lo; j < hi; ++j) out[j * g.sw + off_w] += in[j];
        }
      }
    }
  }
}

// Calls sample(n) for every sample n of the batch. Pointwise
// convolutions whose per-sample GEMM is small (late layers' 8×8 and 4×4
// planes) run one sample per thread; the rest one sample at a time, each GEMM
// split over the team. (im2col shares one scratch buffer, so only pointwise
// ones can.)
template <typename Fn>
void ForEachSample(const Geometry& g, const Fn& sample) {
  const int64_t macs = g.o * g.out_plane() * g.k();
  if (g.pointwise() && kernels::GemmsPerThread(g.n, macs)) {
    kernels::ParallelFor(g.n, macs, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) sample(n);
    });
    return;
  }
  for (int64_t n = 0; n < g.n; ++n) sample(n);
}

kernels::DepthwiseGeometry Depthwise(const Geometry& g) {
  return {g.n, g.c, g.h, g.w, g.og, g.kh, g.kw, g.ho, g.wo, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw};
}

// row[i] += v, i < n.
void AddScalar(float v, float* __restrict row, int64_t n) {
  for (int64_t i = 0; i < n; ++i) row[i] += v;
}

// A 3×3 convolution with stride 2 and padding 1, one group (kernels/stem_conv.h).
bool Stem(const Geometry& g) {
  return g.kh == 3 && g.kw == 3 && g.sh == 2 && g.sw == 2 && g.ph == 1 && g.pw == 1 && g.dh == 1 &&
         g.dw == 1 && g.groups == 1 && g.ho == (g.h + 1) / 2 && g.wo == (g.w + 1) / 2;
}

// The im2col buffer of one (sample, group); none for pointwise or depthwise.
size_t ColumnBytes(const Geometry& g) {
  if (g.pointwise() || g.depthwise()) return 0;
  return static_cast<size_t>(g.k() * g.out_plane()) * sizeof(float);
}

// Where the per-plane sums of absorbed channel sums start in the input
// gradient's scratch: past the im2col buffer, 64-byte aligned.
size_t PlaneSumsOffset(const Geometry& g) { return (ColumnBytes(g) + 63) / 64 * 64; }

// The scratch a convolution's own kernel uses (the im2col buffer; for an
// input gradient, then a double per dx plane for absorbed channel sums),
// rounded up to 64 bytes: an absorbed weight scaling's output goes after it.
size_t OwnScratchBytes(OpKind op, const Geometry& g) {
  const size_t bytes = op == OpKind::kConv2dBackwardInput
                           ? PlaneSumsOffset(g) + static_cast<size_t>(g.n * g.c) * sizeof(double)
                           : ColumnBytes(g);
  return (bytes + 63) / 64 * 64;
}

// The scratch past the convolution's own, where an absorbed weight
// scaling's scales, s·dY or W·s go.
float* ScalingScratch(const KernelArgs& args, OpKind op, const Geometry& g) {
  return reinterpret_cast<float*>(reinterpret_cast<char*>(args.scratch) + OwnScratchBytes(op, g));
}

// The convolution's weight: its operand, or with an absorbed weight scaling
// (parts::IsWeightScaling) W·s, which that node's fast kernel writes into
// ScalingScratch.
const float* WeightOf(const KernelArgs& args, OpKind op, const Geometry& g) {
  if (!parts::IsWeightScaling(args.producer)) return args.in(1).f32();
  KernelArgs scaling = *args.producer;
  float* w = ScalingScratch(args, op, g);
  scaling.output = TensorView{w, scaling.output.shape, DType::kF32};
  GetOpDef(OpKind::kBatchNormInference).fast(scaling);
  return w;
}

// s[o] = γ[o]/√(σ²[o] + eps) of an absorbed weight scaling (its
// batch_norm_inference's arguments), o < channels, as that node's kernel
// computes each channel's scale.
void WeightScales(const KernelArgs& scaling, int64_t channels, float* s) {
  const float* var = scaling.in(2).f32();
  const float* gamma = scaling.in(3).f32();
  const float eps = scaling.attrs<BatchNormAttrs>().eps;
  for (int64_t o = 0; o < channels; ++o) s[o] = kernels::FrozenScale(gamma[o], var[o], eps);
}

// The convolution, with `epilogue` called on each output plane: as soon as
// it is written (depthwise), on a sample's planes after its GEMM, on blocks
// of whole planes (pointwise_conv.h), or on bands of 8 rows of each plane
// (stem_conv.h; whole mask words where the planes are).
void FastWithEpilogue(const KernelArgs& args, kernels::PlaneEpilogue epilogue) {
  const Geometry g = MakeGeometry(*args.in(0).shape, *args.in(1).shape, args.attrs<Conv2dAttrs>());
  const float* x = args.in(0).f32();
  const float* b = args.num_inputs == 3 ? args.in(2).f32() : nullptr;
  float* y = args.output.f32();
  const kernels::PointwiseGeometry pg{g.n, g.o, g.c, g.out_plane(), g.c, 1};
  const bool gemm_per_sample =
      g.pointwise() && (g.groups > 1 || !kernels::PointwiseConvApplies(pg));
  // An absorbed weight scaling, at no pass over W: on the GEMM path (W·x)·s,
  // s in the epilogue with the bias; on the direct one, W·s as the kernel
  // packs W (the values the scaling node writes). Elsewhere W·s in scratch.
  const float* scales = nullptr;
  const float* w;
  if (parts::IsWeightScaling(args.producer) && g.pointwise() && g.groups == 1) {
    float* s = ScalingScratch(args, OpKind::kConv2d, g);
    WeightScales(*args.producer, g.o, s);
    scales = s;
    w = args.producer->in(0).f32();
  } else {
    w = WeightOf(args, OpKind::kConv2d, g);
  }
  if (g.depthwise()) {
    kernels::F32DepthwiseConv(Depthwise(g), x, w, b, y, epilogue);
    return;
  }
  const int64_t k = g.k(), plane = g.out_plane();
  if (Stem(g)) {
    const kernels::StemGeometry sg{g.n, g.c, g.h, g.w, g.o};
    if (kernels::StemConvApplies(sg)) {
      kernels::F32StemConv(sg, x, w, b, y, epilogue);
      return;
    }
  }
  if (g.pointwise() && !gemm_per_sample) {
    // Y [o, plane] = W [o, c] · X [c, plane] per sample
    kernels::F32PointwiseConv(pg, w, x, b, y, epilogue, scales);
    return;
  }
  ForEachSample(g, [&](int64_t n) {
    for (int64_t group = 0; group < g.groups; ++group) {
      const float* xg = x + (n * g.c + group * g.cg) * g.h * g.w;
      const float* col = xg;
      if (!g.pointwise()) {
        Im2Col(g, xg, args.scratch);
        col = args.scratch;
      }
      // Y_g [og, plane] = W_g [og, k] · col [k, plane]
      kernels::Sgemm(false, false, g.og, plane, k, 1.0f, w + group * g.og * k, k, col, plane, 0.0f,
                     y + (n * g.o + group * g.og) * plane, plane);
    }
    if (b == nullptr && scales == nullptr && epilogue.fn == nullptr) return;
    // The sample's bias and epilogue while its output (at most a few MiB) is
    // still in cache, instead of a pass to fill the whole output with the
    // bias before the GEMMs and one to activate it after. Split over the
    // team unless this sample already has a thread to itself (ParallelFor
    // nested in ForEachSample's runs serially).
    float* yn = y + n * g.o * plane;
    kernels::ParallelFor(g.o, 2 * plane, [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        float* row = yn + o * plane;
        if (scales != nullptr) {
          const float so = scales[o], bo = b == nullptr ? 0.0f : b[o];
          for (int64_t i = 0; i < plane; ++i) row[i] = row[i] * so + bo;
        } else if (b != nullptr) {
          AddScalar(b[o], row, plane);
        }
        if (epilogue.fn != nullptr) epilogue.fn(epilogue.ctx, row, plane);
      }
    });
  });
}

void Fast(const KernelArgs& args) {
  if (args.producer != nullptr && !parts::IsWeightScaling(args.producer)) {
    // an inverted residual block's depthwise layer, which computes its expand layer
    return parts::InvertedResidualFast(*args.producer->producer, *args.producer, args);
  }
  FastWithEpilogue(args, {});
}

// What the input gradient does to each block of whole dx planes once they
// are written: the mask of a masked input gradient, then each plane's sum
// for absorbed channel sums (kernels::SumF32, as reduce_sum's fast kernel
// sums a plane).
struct DxEpilogue {
  const float* dx;
  const int32_t* mask;  // or null
  int64_t plane;        // h·w
  double* plane_sums;   // [n·c], or null
  int64_t offset = 0;   // dx[0]'s index in the whole dx (a slot of scratch's)
};

void DxBlock(const void* ctx, float* block, int64_t n) {
  const auto* e = static_cast<const DxEpilogue*>(ctx);
  const int64_t first = e->offset + (block - e->dx);
  if (e->mask != nullptr) parts::MaskInPlace(e->mask, first, block, n);
  if (e->plane_sums == nullptr) return;
  for (int64_t at = 0; at < n; at += e->plane) {
    e->plane_sums[(first + at) / e->plane] = kernels::SumF32(block + at, e->plane);
  }
}

// reduce_sum's order: per channel, the planes' sums over samples in double.
void ChannelSums(const Geometry& g, const double* plane_sums, float* sums) {
  kernels::ParallelFor(g.c, g.n, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double sum = 0.0;
      for (int64_t n = 0; n < g.n; ++n) sum += plane_sums[n * g.c + c];
      sums[c] = static_cast<float>(sum);
    }
  });
}

// The epilogue on `planes` whole planes of dx from `first`, split over the
// team in whole planes (DxBlock sums planes) unless already on one thread of
// it (a nested ParallelFor runs serially).
void EpilogueOnPlanes(kernels::PlaneEpilogue epilogue, float* first, int64_t planes,
                      int64_t plane) {
  if (epilogue.fn == nullptr) return;
  kernels::ParallelFor(planes, 2 * plane, [&](int64_t begin, int64_t end) {
    epilogue.fn(epilogue.ctx, first + begin * plane, (end - begin) * plane);
  });
}

void BackwardInputWithEpilogue(const KernelArgs& args, const Geometry& g,
                               kernels::PlaneEpilogue epilogue) {
  const float* dy = args.in(0).f32();
  float* dx = args.output.f32();
  const int64_t k = g.k(), plane = g.out_plane();
  const kernels::PointwiseGeometry pg{g.n, g.c, g.o, plane, 1, g.c};
  const bool gemm_per_sample =
      g.pointwise() && (g.groups > 1 || !kernels::PointwiseConvApplies(pg));
  // An absorbed weight scaling (W·s)ᵀ·dY = Wᵀ·(s·dY): on the GEMM path, with
  // dY smaller than W (small planes), s·dY in scratch; elsewhere W·s.
  const float* w;
  if (parts::IsWeightScaling(args.producer) && gemm_per_sample && g.groups == 1 &&
      g.n * plane < g.c) {
    float* s = ScalingScratch(args, OpKind::kConv2dBackwardInput, g);
    float* scaled = s + g.o;  // n·o·plane floats: fewer than o·(c − 1)
    WeightScales(*args.producer, g.o, s);
    kernels::ParallelFor(g.n * g.o, plane, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float so = s[r % g.o];
        for (int64_t i = 0; i < plane; ++i) scaled[r * plane + i] = dy[r * plane + i] * so;
      }
    });
    dy = scaled;
    w = args.producer->in(0).f32();
  } else {
    w = WeightOf(args, OpKind::kConv2dBackwardInput, g);
  }
  if (g.depthwise()) {
    kernels::F32DepthwiseConvBackwardInput(Depthwise(g), dy, w, dx, epilogue);
    return;
  }
  if (g.pointwise() && !gemm_per_sample) {
    // dX [c, plane] = Wᵀ [c, o] · dY [o, plane] per sample
    kernels::F32PointwiseConv(pg, w, dy, nullptr, dx, epilogue);
    return;
  }
  if (g.pointwise()) {
    ForEachSample(g, [&](int64_t n) {
      for (int64_t group = 0; group < g.groups; ++group) {
        // dX_g [cg, plane] = W_gᵀ [cg, og] · dY_g [og, plane]
        float* dxg = dx + (n * g.c + group * g.cg) * g.h * g.w;
        kernels::Sgemm(true, false, k, plane, g.og, 1.0f, w + group * g.og * k, k,
                       dy + (n * g.o + group * g.og) * plane, plane, 0.0f, dxg, plane);
        EpilogueOnPlanes(epilogue, dxg, g.cg, plane);
      }
    });
    return;
  }
  for (int64_t n = 0; n < g.n; ++n) {
    for (int64_t group = 0; group < g.groups; ++group) {
      const float* dyg = dy + (n * g.o + group * g.og) * plane;
      const float* wg = w + group * g.og * k;
      float* dxg = dx + (n * g.c + group * g.cg) * g.h * g.w;
      // dcol [k, plane] = W_gᵀ · dY_g, then fold the columns back onto dx.
      kernels::Sgemm(true, false, k, plane, g.og, 1.0f, wg, k, dyg, plane, 0.0f, args.scratch,
                     plane);
      std::fill_n(dxg, g.cg * g.h * g.w, 0.0f);
      Col2ImAdd(g, args.scratch, dxg);
      EpilogueOnPlanes(epilogue, dxg, g.cg, g.h * g.w);
    }
  }
}

void BackwardInputFast(const KernelArgs& args) {
  if (args.producer != nullptr && !parts::IsWeightScaling(args.producer)) {
    if (args.producer->producer != nullptr) {  // the projection's input gradient too
      return parts::InvertedResidualGradFast(*args.producer->producer, *args.producer, args);
    }
    return parts::DepthwiseExpandGradFast(*args.producer, args);
  }
  const auto& a = args.attrs<Conv2dGradAttrs>();
  const Geometry g = MakeGeometry(a.shape, *args.in(1).shape, a.conv);
  double* plane_sums =
      args.channel_sums == nullptr
          ? nullptr
          : reinterpret_cast<double*>(reinterpret_cast<char*>(args.scratch) + PlaneSumsOffset(g));
  const DxEpilogue dx_epilogue{args.output.f32(), args.num_inputs == 3 ? args.in(2).i32() : nullptr,
                               g.h * g.w, plane_sums};
  kernels::PlaneEpilogue epilogue;
  if (dx_epilogue.mask != nullptr || plane_sums != nullptr) epilogue = {DxBlock, &dx_epilogue};
  BackwardInputWithEpilogue(args, g, epilogue);
  if (plane_sums != nullptr) ChannelSums(g, plane_sums, args.channel_sums);
}

// A pointwise weight gradient over 4×4 planes (MobileNetV2's last layers)
// runs as one GEMM over the whole batch, dW = dY·Xᵀ with dY and X gathered
// into [o, n·plane] and [c, n·plane] in scratch: its inner dimension is then
// n·plane, where a GEMM per sample has 16 and passes over all of dW (up to
// 1.6 MB) once per sample. On 8×8 planes the GEMMs per sample were faster.
bool GathersWeightGradient(const Geometry& g) {
  return g.pointwise() && g.groups == 1 && g.n > 1 && g.out_plane() >= 16 && g.out_plane() < 64;
}

// rows [channels, n·plane] from x [n, channels, plane]: each sample's planes
// side by side, split over the team by channel.
void GatherPlanes(const float* x, int64_t n, int64_t channels, int64_t plane, float* rows) {
  kernels::ParallelFor(channels, n * plane, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t s = 0; s < n; ++s) {
        std::copy_n(x + (s * channels + c) * plane, plane, rows + (c * n + s) * plane);
      }
    }
  });
}

void BackwardWeightFast(const KernelArgs& args) {
  const auto& a = args.attrs<Conv2dGradAttrs>();
  const Geometry g = MakeGeometry(*args.in(0).shape, a.shape, a.conv);
  const float* x = args.in(0).f32();
  const float* dy = args.in(1).f32();
  float* dw = args.output.f32();
  const int64_t k = g.k(), plane = g.out_plane();
  if (g.depthwise()) {
    kernels::F32DepthwiseConvBackwardWeight(Depthwise(g), x, dy, dw);
    return;
  }
  if (GathersWeightGradient(g)) {
    const int64_t columns = g.n * plane;
    float* dy_rows = args.scratch;
    float* x_rows = args.scratch + g.o * columns;
    GatherPlanes(dy, g.n, g.o, plane, dy_rows);
    GatherPlanes(x, g.n, g.c, plane, x_rows);
    // dW [o, c] = dY [o, n·plane] · Xᵀ [n·plane, c]
    kernels::Sgemm(false, true, g.o, g.c, columns, 1.0f, dy_rows, columns, x_rows, columns, 0.0f,
                   dw, g.c);
    return;
  }
  std::fill_n(dw, g.o * k, 0.0f);
  for (int64_t n = 0; n < g.n; ++n) {
    for (int64_t group = 0; group < g.groups; ++group) {
      const float* xg = x + (n * g.c + group * g.cg) * g.h * g.w;
      const float* col = xg;
      if (!g.pointwise()) {
        Im2Col(g, xg, args.scratch);
        col = args.scratch;
      }
      // dW_g [og, k] += dY_g [og, plane] · colᵀ [plane, k]
      kernels::Sgemm(false, true, g.og, k, plane, 1.0f, dy + (n * g.o + group * g.og) * plane,
                     plane, col, plane, 1.0f, dw + group * g.og * k, k);
    }
  }
}

size_t ScratchBytes(const Node& node, absl::Span<const TensorType* const> in) {
  return ColumnBytes(MakeGeometry(in[0]->shape, in[1]->shape, std::get<Conv2dAttrs>(node.attrs)));
}

// The im2col buffer, then a double per dx plane for absorbed channel sums.
size_t BackwardInputScratchBytes(const Node& node, absl::Span<const TensorType* const> in) {
  const auto& a = std::get<Conv2dGradAttrs>(node.attrs);
  const Geometry g = MakeGeometry(a.shape, in[1]->shape, a.conv);
  return PlaneSumsOffset(g) + static_cast<size_t>(g.n * g.c) * sizeof(double);
}

// The im2col buffer, or the gathered dY and X of GathersWeightGradient.
size_t BackwardWeightScratchBytes(const Node& node, absl::Span<const TensorType* const> in) {
  const auto& a = std::get<Conv2dGradAttrs>(node.attrs);
  const Geometry g = MakeGeometry(in[0]->shape, a.shape, a.conv);
  if (GathersWeightGradient(g)) {
    return static_cast<size_t>((g.o + g.c) * g.n * g.out_plane()) * sizeof(float);
  }
  return ColumnBytes(g);
}

// --- gradient ------------------------------------------------------------------

// y = conv(x, W) + b:
//   dx = conv_backward_input(dy, W)    (the transposed convolution of dy)
//   dW = conv_backward_weight(x, dy)   dW[o,ci,u,v] = Σ_{n,i,j} dy[n,o,i,j]·x[n,c,i·s−p+u·d,…]
//   db = Σ_{n,i,j} dy[n,:,i,j]
absl::Status Gradient(GradContext& ctx) {
  const auto& a = std::get<Conv2dAttrs>(ctx.node().attrs);
  if (ctx.NeedsGrad(0)) {
    ASSIGN_OR_RETURN(ValueId dx, ctx.Emit(OpKind::kConv2dBackwardInput, {ctx.dy(), ctx.input(1)},
                                          Conv2dGradAttrs{a, ctx.type(ctx.input(0)).shape}));
    ctx.SetGrad(0, dx);
  }
  if (ctx.NeedsGrad(1)) {
    ASSIGN_OR_RETURN(ValueId dw, ctx.Emit(OpKind::kConv2dBackwardWeight, {ctx.input(0), ctx.dy()},
                                          Conv2dGradAttrs{a, ctx.type(ctx.input(1)).shape}));
    ctx.SetGrad(1, dw);
  }
  if (ctx.node().inputs.size() == 3 && ctx.NeedsGrad(2)) {
    ASSIGN_OR_RETURN(ValueId db,
                     ctx.Emit(OpKind::kReduceSum, {ctx.dy()}, ReduceAttrs{{0, 2, 3}, false}));
    ctx.SetGrad(2, db);
  }
  return absl::OkStatus();
}

// --- backward ops: shape inference ---------------------------------------------

absl::StatusOr<TensorType> InferBackwardInput(const Node& node,
                                              absl::Span<const TensorType* const> in) {
  const auto& a = std::get<Conv2dGradAttrs>(node.attrs);
  absl::Status valid = ValidateShape(a.shape);
  if (!valid.ok()) return OpError(node, "x shape: ", valid.message());
  const TensorType x{DType::kF32, a.shape};
  ASSIGN_OR_RETURN(TensorType y, InferConv(node, x, *in[1], a.conv));
  if (*in[0] != y) {
    return OpError(node, "dy must be ", TypeToString(y), ", got ", TypeToString(*in[0]));
  }
  if (in.size() == 3) {
    const TensorType mask{DType::kI32, {parts::MaskWords(x.num_elements())}};
    if (*in[2] != mask) {
      return OpError(node, "mask for dx ", TypeToString(x), " must be ", TypeToString(mask),
                     ", got ", TypeToString(*in[2]));
    }
  }
  return x;
}

absl::StatusOr<TensorType> InferBackwardWeight(const Node& node,
                                               absl::Span<const TensorType* const> in) {
  const auto& a = std::get<Conv2dGradAttrs>(node.attrs);
  absl::Status valid = ValidateShape(a.shape);
  if (!valid.ok()) return OpError(node, "weight shape: ", valid.message());
  const TensorType w{DType::kF32, a.shape};
  ASSIGN_OR_RETURN(TensorType y, InferConv(node, *in[0], w, a.conv));
  if (*in[1] != y) {
    return OpError(node, "dy must be ", TypeToString(y), ", got ", TypeToString(*in[1]));
  }
  return w;
}

// --- test cases ----------------------------------------------------------------

struct ConvCase {
  Shape x, w;
  Conv2dAttrs attrs;
  bool bias;
};

// Plain, strided, dilated, grouped, depthwise (multiplier 1 and 2) and
// pointwise convolutions: every kernel path, each small enough for the
// element-by-element gradient check.
std::vector<ConvCase> ConvCases() {
  auto attrs = [](int sh, int sw, int ph, int pw, int dh, int dw, int groups) {
    return Conv2dAttrs{sh, sw, ph, pw, dh, dw, groups};
  };
  return {
      {{2, 3, 4, 4}, {4, 3, 3, 3}, attrs(1, 1, 1, 1, 1, 1, 1), true},
      {{1, 2, 7, 6}, {3, 2, 3, 2}, attrs(2, 2, 1, 0, 1, 1, 1), false},
      {{1, 2, 6, 6}, {3, 2, 3, 3}, attrs(1, 1, 2, 2, 2, 2, 1), true},
      {{2, 4, 4, 5}, {4, 2, 3, 3}, attrs(1, 2, 1, 1, 1, 1, 2), true},
      {{2, 3, 5, 5}, {3, 1, 3, 3}, attrs(1, 1, 1, 1, 1, 1, 3), true},
      {{1, 2, 7, 7}, {4, 1, 3, 3}, attrs(2, 2, 1, 1, 1, 1, 2), false},
      {{2, 4, 3, 3}, {3, 4, 1, 1}, attrs(1, 1, 0, 0, 1, 1, 1), true},
      // Depthwise rows wider than the kernels' 16 lanes (stride 1 and 2), a
      // dilated one (generic rows) and one padded beyond its kernel (dx by
      // scatter instead of the flipped-kernel convolution).
      // (Small planes: central differences of a larger loss drown in f32 rounding.)
      {{1, 1, 3, 21}, {1, 1, 3, 3}, attrs(1, 1, 1, 1, 1, 1, 1), true},
      {{1, 1, 4, 36}, {1, 1, 3, 3}, attrs(2, 2, 1, 1, 1, 1, 1), false},
      {{1, 2, 5, 9}, {2, 1, 3, 3}, attrs(2, 2, 1, 1, 1, 1, 2), true},  // odd sizes
      {{1, 2, 6, 7}, {2, 1, 3, 3}, attrs(1, 1, 2, 2, 2, 2, 2), true},
      {{1, 2, 4, 4}, {2, 1, 2, 2}, attrs(1, 1, 2, 2, 1, 1, 2), false},
  };
}

Shape OutputShape(const ConvCase& c) {
  const Geometry g = MakeGeometry(c.x, c.w, c.attrs);
  return {g.n, g.o, g.ho, g.wo};
}

std::vector<OpTestCase> TestCases() {
  std::vector<OpTestCase> out;
  for (const ConvCase& c : ConvCases()) {
    OpTestCase t;
    t.inputs = {{DType::kF32, c.x}, {DType::kF32, c.w}};
    if (c.bias) t.inputs.push_back({DType::kF32, {c.w[0]}});
    t.attrs = c.attrs;
    out.push_back(t);
  }
  return out;
}

// Every case plain and with a mask (random bits) over dx.
std::vector<OpTestCase> BackwardInputTestCases() {
  std::vector<OpTestCase> out;
  for (const ConvCase& c : ConvCases()) {
    OpTestCase t;
    t.inputs = {{DType::kF32, OutputShape(c)}, {DType::kF32, c.w}};
    t.attrs = Conv2dGradAttrs{c.attrs, c.x};
    out.push_back(t);
    int64_t elements = 1;
    for (int64_t d : c.x) elements *= d;
    t.inputs.push_back({DType::kI32, {parts::MaskWords(elements)}});
    t.int_upper = 1 << 30;  // random bits in all but the top two of each word
    out.push_back(t);
  }
  return out;
}

std::vector<OpTestCase> BackwardWeightTestCases() {
  std::vector<OpTestCase> out;
  for (const ConvCase& c : ConvCases()) {
    OpTestCase t;
    t.inputs = {{DType::kF32, c.x}, {DType::kF32, OutputShape(c)}};
    t.attrs = Conv2dGradAttrs{c.attrs, c.w};
    out.push_back(t);
  }
  return out;
}

}  // namespace

namespace {

// The activation, then the plane's mask bits, on each block of y.
struct ActivateAndPack {
  FusedActivationFn act;
  float upper;
  const float* y;
  int32_t* mask;
  int64_t offset = 0;  // y[0]'s index in the whole output (a slot of scratch's)
};

void ActivateAndPackBlock(const void* ctx, float* block, int64_t n) {
  const auto* c = static_cast<const ActivateAndPack*>(ctx);
  parts::FusedActivationInPlace(c->act, block, n);
  if (c->mask != nullptr) parts::PackMask(c->upper, block, c->offset + (block - c->y), n, c->mask);
}

float UpperOf(FusedActivationFn act) {
  return act == FusedActivationFn::kRelu6 ? 6.0f : std::numeric_limits<float>::infinity();
}

// The fused convolutions' blocks: channels of the tensor between the two
// convolutions per block, and per-thread scratch slots of that many planes
// (threads past the slots idle). 48 channels of MobileNetV2's 64×64 and
// 32×32 planes ran its fused nodes 0.25 ms a step faster than 12 (fewer
// calls into the two kernels), for 2.4 MB more scratch.
constexpr int64_t kFusedRows = 48;
constexpr int64_t kFusedSlots = 4;

// Where the fused input gradients' slots start in scratch: past the plane
// sums of each input gradient (n samples of k channels for the expand
// layer's, first, where BackwardInputFast keeps them: a pointwise
// convolution has no columns; c for the depthwise layer's; with the
// projection's, c more), 64-byte aligned.
size_t GradSlotsOffset(int64_t n, int64_t k, int64_t c, bool projection) {
  return (static_cast<size_t>(n * (k + c + (projection ? c : 0))) * sizeof(double) + 63) / 64 * 64;
}

// A block of `rows` channels of one sample of depthwise convolution g (the
// caller offsets the operands to the block's first channel).
kernels::DepthwiseGeometry BlockOfChannels(const Geometry& g, int64_t rows) {
  kernels::DepthwiseGeometry block = Depthwise(g);
  block.n = 1;
  block.c = rows;
  return block;
}

// Runs fn(slot, item) for items [0, items) on min(kFusedSlots, threads)
// threads, each with a slot of its own, items round robin.
template <typename Fn>
void ForEachItemWithSlot(int64_t items, const Fn& fn) {
  const int64_t slots = std::min<int64_t>(kFusedSlots, kernels::MaxThreads());
  kernels::ParallelFor(slots, kernels::kMinParallelWork, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      for (int64_t item = s; item < items; item += slots) fn(s, item);
    }
  });
}

// Expanded channels [r0, r0 + rows) of sample n, activated and their mask
// bits written, into `out` (rows planes): the expand layer's part of a fused
// block (`expand`: its kernel arguments, `direct`: whether it takes the
// direct pointwise kernel).
void ExpandBlock(const KernelArgs& expand, const Geometry& ge, bool direct, int64_t n, int64_t r0,
                 int64_t rows, float* out) {
  const FusedActivationFn act = std::get<FusedConvAttrs>(expand.node->attrs).act;
  const int64_t k = ge.c, plane = ge.out_plane();
  const float* xn = expand.in(0).f32() + n * k * plane;
  const float* w = expand.in(1).f32() + r0 * k;
  const float* bias = expand.num_inputs == 3 ? expand.in(2).f32() + r0 : nullptr;
  const ActivateAndPack pack{act, UpperOf(act), out, expand.activation_mask,
                             (n * ge.o + r0) * plane};
  const kernels::PlaneEpilogue epilogue{ActivateAndPackBlock, &pack};
  if (direct) {
    kernels::F32PointwiseConv({1, rows, k, plane, k, 1}, w, xn, bias, out, epilogue);
    return;
  }
  kernels::Sgemm(false, false, rows, plane, k, 1.0f, w, k, xn, plane, 0.0f, out, plane);
  if (bias != nullptr) {
    for (int64_t r = 0; r < rows; ++r) AddScalar(bias[r], out + r * plane, plane);
  }
  epilogue.fn(epilogue.ctx, out, rows * plane);
}

}  // namespace

size_t parts::FusedConvolutionScratchBytes(OpKind later, const Shape& between,
                                           const Shape& later_output) {
  const size_t slots =
      static_cast<size_t>(kFusedSlots * kFusedRows * between[2] * between[3]) * sizeof(float);
  if (later == OpKind::kConv2dActivation) return slots;
  return GradSlotsOffset(later_output[0], later_output[1], between[1], false) + slots;
}

size_t parts::InvertedResidualScratchBytes(const Shape& expanded, const Shape& depthwise_output) {
  return static_cast<size_t>(
             kFusedSlots * kFusedRows *
             (expanded[2] * expanded[3] + depthwise_output[2] * depthwise_output[3])) *
         sizeof(float);
}

void parts::InvertedResidualFast(const KernelArgs& expand, const KernelArgs& depthwise,
                                 const KernelArgs& project) {
  const auto& ea = std::get<FusedConvAttrs>(expand.node->attrs);
  const auto& da = std::get<FusedConvAttrs>(depthwise.node->attrs);
  const Geometry ge = MakeGeometry(*expand.in(0).shape, *expand.in(1).shape, ea.conv);
  const Geometry gd = MakeGeometry({ge.n, ge.o, ge.ho, ge.wo}, *depthwise.in(1).shape, da.conv);
  const Geometry gp =
      MakeGeometry({gd.n, gd.o, gd.ho, gd.wo}, *project.in(1).shape, project.attrs<Conv2dAttrs>());
  const float* w2 = depthwise.in(1).f32();
  const float* b2 = depthwise.num_inputs == 3 ? depthwise.in(2).f32() : nullptr;
  const float* w3 = project.in(1).f32();
  const float* b3 = project.num_inputs == 3 ? project.in(2).f32() : nullptr;
  float* y = project.output.f32();
  const int64_t plane = ge.out_plane(), plane2 = gd.out_plane(), taps = gd.kh * gd.kw;
  const bool direct = kernels::PointwiseConvApplies({ge.n, ge.o, ge.c, plane, ge.c, 1});
  const int64_t blocks = (ge.o + kFusedRows - 1) / kFusedRows;
  // One sample per item: its blocks of channels add into its projection in turn.
  ForEachItemWithSlot(ge.n, [&](int64_t s, int64_t n) {
    float* expanded = project.scratch + s * kFusedRows * (plane + plane2);
    float* filtered = expanded + kFusedRows * plane;
    float* yn = y + n * gp.o * plane2;
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t r0 = block * kFusedRows, rows = std::min(kFusedRows, ge.o - r0);
      ExpandBlock(expand, ge, direct, n, r0, rows, expanded);
      // Their depthwise convolution, activated, its mask packed.
      const ActivateAndPack dw_pack{da.act, UpperOf(da.act), filtered, depthwise.activation_mask,
                                    (n * gd.o + r0) * plane2};
      kernels::F32DepthwiseConv(BlockOfChannels(gd, rows), expanded, w2 + r0 * taps,
                                b2 != nullptr ? b2 + r0 : nullptr, filtered,
                                {ActivateAndPackBlock, &dw_pack});
      // Y_n [o, plane2] (+)= W3[:, r0 : r0 + rows] · filtered [rows, plane2],
      // the bias with the first block (the direct kernel where it applies).
      kernels::PointwiseGeometry pg{1, gp.o, rows, plane2, gp.c, 1, block > 0};
      if (kernels::PointwiseConvApplies(pg)) {
        kernels::F32PointwiseConv(pg, w3 + r0, filtered, block == 0 ? b3 : nullptr, yn);
        continue;
      }
      kernels::Sgemm(false, false, gp.o, plane2, rows, 1.0f, w3 + r0, gp.c, filtered, plane2,
                     block == 0 ? 0.0f : 1.0f, yn, plane2);
      if (block == 0 && b3 != nullptr) {
        for (int64_t o = 0; o < gp.o; ++o) AddScalar(b3[o], yn + o * plane2, plane2);
      }
    }
  });
}

void parts::ExpandDepthwiseFast(const KernelArgs& expand, const KernelArgs& depthwise) {
  const auto& ea = std::get<FusedConvAttrs>(expand.node->attrs);
  const auto& da = std::get<FusedConvAttrs>(depthwise.node->attrs);
  const Geometry ge = MakeGeometry(*expand.in(0).shape, *expand.in(1).shape, ea.conv);
  const Geometry gd = MakeGeometry({ge.n, ge.o, ge.ho, ge.wo}, *depthwise.in(1).shape, da.conv);
  const float* w2 = depthwise.in(1).f32();
  const float* b2 = depthwise.num_inputs == 3 ? depthwise.in(2).f32() : nullptr;
  float* y = depthwise.output.f32();
  const int64_t plane = ge.out_plane(), taps = gd.kh * gd.kw;
  const bool direct = kernels::PointwiseConvApplies({ge.n, ge.o, ge.c, plane, ge.c, 1});
  // The depthwise layer's epilogue, as Conv2dActivationFast gives it.
  const ActivateAndPack dw_pack{da.act, UpperOf(da.act), y, depthwise.activation_mask};
  const kernels::PlaneEpilogue dw_epilogue{ActivateAndPackBlock, &dw_pack};
  const int64_t blocks = (ge.o + kFusedRows - 1) / kFusedRows;
  ForEachItemWithSlot(ge.n * blocks, [&](int64_t s, int64_t item) {
    float* slot = depthwise.scratch + s * kFusedRows * plane;
    const int64_t n = item / blocks, r0 = item % blocks * kFusedRows;
    const int64_t rows = std::min(kFusedRows, ge.o - r0);
    ExpandBlock(expand, ge, direct, n, r0, rows, slot);
    kernels::F32DepthwiseConv(BlockOfChannels(gd, rows), slot, w2 + r0 * taps,
                              b2 != nullptr ? b2 + r0 : nullptr,
                              y + (n * gd.o + r0) * gd.out_plane(), dw_epilogue);
  });
}

size_t parts::InvertedResidualGradScratchBytes(const Shape& dx, const Shape& depthwise_dx,
                                               const Shape& project_dx) {
  const int64_t planes = depthwise_dx[2] * depthwise_dx[3] + project_dx[2] * project_dx[3];
  return GradSlotsOffset(dx[0], dx[1], depthwise_dx[1], true) +
         static_cast<size_t>(kFusedSlots * kFusedRows * planes) * sizeof(float);
}

namespace {
// DepthwiseExpandGradFast, and with `project` InvertedResidualGradFast: the
// input gradients block of channels by block, into the expand node's dx.
void ExpandGradInBlocks(const KernelArgs* project, const KernelArgs& depthwise,
                        const KernelArgs& expand) {
  const auto& da = std::get<Conv2dGradAttrs>(depthwise.node->attrs);
  const auto& ea = std::get<Conv2dGradAttrs>(expand.node->attrs);
  const Geometry gd = MakeGeometry(da.shape, *depthwise.in(1).shape, da.conv);
  const Geometry ge = MakeGeometry(ea.shape, *expand.in(1).shape, ea.conv);
  const float* w_dw = depthwise.in(1).f32();
  const int32_t* mask_dw = depthwise.num_inputs == 3 ? depthwise.in(2).i32() : nullptr;
  const float* w_e = expand.in(1).f32();  // [c, k, 1, 1]: dX = Wᵀ · dY
  float* dx = expand.output.f32();
  const int64_t c = gd.c, k = ge.c, plane = gd.h * gd.w, plane2 = gd.out_plane();
  const int64_t taps = gd.kh * gd.kw;
  // Scratch: the plane sums of the expand layer's, the depthwise layer's and
  // the projection's input gradients, then the slots: a block's depthwise dx,
  // then (with the projection) its dY.
  double* sums_e = reinterpret_cast<double*>(expand.scratch);
  double* sums_dw = sums_e + ge.n * k;
  double* sums_p = sums_dw + gd.n * c;
  float* slots = reinterpret_cast<float*>(reinterpret_cast<char*>(expand.scratch) +
                                          GradSlotsOffset(ge.n, k, c, project != nullptr));
  const int64_t slot_floats = kFusedRows * (plane + (project != nullptr ? plane2 : 0));
  const DxEpilogue e_epilogue{dx, expand.num_inputs == 3 ? expand.in(2).i32() : nullptr, plane,
                              expand.channel_sums != nullptr ? sums_e : nullptr};
  const int64_t blocks = (c + kFusedRows - 1) / kFusedRows;
  // A sample per item: its dx sums every block of channels in turn.
  ForEachItemWithSlot(gd.n, [&](int64_t s, int64_t n) {
    float* slot = slots + s * slot_floats;
    float* dxn = dx + n * k * plane;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * kFusedRows, rows = std::min(kFusedRows, c - r0);
      // The depthwise layer's dY for channels [r0, r0 + rows): in memory, or
      // the projection's input gradient Wᵀ [rows, o] · dY_n [o, plane2],
      // masked and summed per plane as BackwardInputFast would (the direct
      // kernel where it applies).
      const float* dy = depthwise.in(0).f32() + (n * c + r0) * plane2;
      if (project != nullptr) {
        const int64_t o = project->in(1).shape->front();
        const float* w_p = project->in(1).f32() + r0;  // [o, c, 1, 1]
        const float* dy_p = project->in(0).f32() + n * o * plane2;
        const int32_t* mask_p = project->num_inputs == 3 ? project->in(2).i32() : nullptr;
        float* filtered = slot + kFusedRows * plane;
        const DxEpilogue p_epilogue{filtered, mask_p, plane2,
                                    project->channel_sums != nullptr ? sums_p : nullptr,
                                    (n * c + r0) * plane2};
        const kernels::PlaneEpilogue epilogue =
            mask_p != nullptr || p_epilogue.plane_sums != nullptr
                ? kernels::PlaneEpilogue{DxBlock, &p_epilogue}
                : kernels::PlaneEpilogue{};
        const kernels::PointwiseGeometry pg{1, rows, o, plane2, 1, c};
        if (kernels::PointwiseConvApplies(pg)) {
          kernels::F32PointwiseConv(pg, w_p, dy_p, nullptr, filtered, epilogue);
        } else {
          kernels::Sgemm(true, false, rows, plane2, o, 1.0f, w_p, c, dy_p, plane2, 0.0f, filtered,
                         plane2);
          if (epilogue.fn != nullptr) epilogue.fn(epilogue.ctx, filtered, rows * plane2);
        }
        dy = filtered;
      }
      // The depthwise layer's input gradient, masked and summed per plane.
      const DxEpilogue dw_epilogue{slot, mask_dw, plane,
                                   depthwise.channel_sums != nullptr ? sums_dw : nullptr,
                                   (n * c + r0) * plane};
      kernels::F32DepthwiseConvBackwardInput(BlockOfChannels(gd, rows), dy, w_dw + r0 * taps, slot,
                                             {DxBlock, &dw_epilogue});
      // dX [k, plane] += Wᵀ [k, rows] · slot [rows, plane]
      kernels::Sgemm(true, false, k, plane, rows, 1.0f, w_e + r0 * k, k, slot, plane,
                     b == 0 ? 0.0f : 1.0f, dxn, plane);
    }
    if (e_epilogue.mask != nullptr || e_epilogue.plane_sums != nullptr) {
      DxBlock(&e_epilogue, dxn, k * plane);
    }
  });
  if (project != nullptr && project->channel_sums != nullptr) {
    const auto& pa = std::get<Conv2dGradAttrs>(project->node->attrs);
    ChannelSums(MakeGeometry(pa.shape, *project->in(1).shape, pa.conv), sums_p,
                project->channel_sums);
  }
  if (depthwise.channel_sums != nullptr) ChannelSums(gd, sums_dw, depthwise.channel_sums);
  if (expand.channel_sums != nullptr) ChannelSums(ge, sums_e, expand.channel_sums);
}

}  // namespace

void parts::InvertedResidualGradFast(const KernelArgs& project, const KernelArgs& depthwise,
                                     const KernelArgs& expand) {
  ExpandGradInBlocks(&project, depthwise, expand);
}

void parts::DepthwiseExpandGradFast(const KernelArgs& depthwise, const KernelArgs& expand) {
  ExpandGradInBlocks(nullptr, depthwise, expand);
}

bool parts::IsWeightScaling(const KernelArgs* producer) {
  return producer != nullptr && producer->node->op == OpKind::kBatchNormInference;
}

size_t parts::ScaledWeightOffset(const Node& conv, absl::Span<const TensorType* const> in) {
  if (conv.op == OpKind::kConv2dBackwardInput) {
    const auto& a = std::get<Conv2dGradAttrs>(conv.attrs);
    return OwnScratchBytes(conv.op, MakeGeometry(a.shape, in[1]->shape, a.conv));
  }
  const Conv2dAttrs& a = conv.op == OpKind::kConv2d ? std::get<Conv2dAttrs>(conv.attrs)
                                                    : std::get<FusedConvAttrs>(conv.attrs).conv;
  return OwnScratchBytes(OpKind::kConv2d, MakeGeometry(in[0]->shape, in[1]->shape, a));
}

void parts::Conv2dActivationFast(const KernelArgs& conv_args, FusedActivationFn act,
                                 int32_t* mask) {
  if (mask == nullptr) {
    FastWithEpilogue(conv_args, parts::ActivationEpilogue(&act));
    return;
  }
  const ActivateAndPack ctx{act, UpperOf(act), conv_args.output.f32(), mask};
  FastWithEpilogue(conv_args, {ActivateAndPackBlock, &ctx});
}

OpDef Conv2dOpDef() {
  OpDef def;
  def.name = "conv2d";
  def.attrs_index = AttrsIndexOf<Conv2dAttrs>();
  def.min_inputs = 2;
  def.max_inputs = 3;
  def.infer = Infer;
  def.reference = Reference;
  def.fast = Fast;
  def.gradient = Gradient;
  def.test_cases = TestCases;
  def.scratch_bytes = ScratchBytes;
  return def;
}

// Not differentiable: emitted only by Conv2d's gradient rule (no second
// order). Inputs (dy, weight[, mask]); attrs carry x's shape.
OpDef Conv2dBackwardInputOpDef() {
  OpDef def;
  def.name = "conv2d_backward_input";
  def.attrs_index = AttrsIndexOf<Conv2dGradAttrs>();
  def.min_inputs = 2;
  def.max_inputs = 3;
  def.infer = InferBackwardInput;
  def.reference = BackwardInputReference;
  def.fast = BackwardInputFast;
  def.test_cases = BackwardInputTestCases;
  def.scratch_bytes = BackwardInputScratchBytes;
  return def;
}

// Not differentiable: emitted only by Conv2d's gradient rule. Inputs (x, dy);
// attrs carry the weight's shape.
OpDef Conv2dBackwardWeightOpDef() {
  OpDef def;
  def.name = "conv2d_backward_weight";
  def.attrs_index = AttrsIndexOf<Conv2dGradAttrs>();
  def.min_inputs = def.max_inputs = 2;
  def.infer = InferBackwardWeight;
  def.reference = BackwardWeightReference;
  def.fast = BackwardWeightFast;
  def.test_cases = BackwardWeightTestCases;
  def.scratch_bytes = BackwardWeightScratchBytes;
  return def;
}

}  // namespace fleettune::engine::ops
