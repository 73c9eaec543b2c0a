// kActivationMask and kMaskedGrad: a ReLU's or ReLU6's saved output, packed
// to one bit per element for its gradient.
//
// The derivative of ReLU is 1 where y > 0, that of ReLU6 where 0 < y < 6, and
// 0 elsewhere, so the f32 output that relu_grad / activation_grad keep alive
// until the backward pass carries one bit of information per element. The
// pack_masks pass (engine/passes/pack_masks.h) replaces
//
//   y = relu6(...) ... dx = activation_grad{fn=relu6}(dy, y)
// with
//   y = relu6(...); m = activation_mask{6}(y) ... dx = masked_grad(dy, m)
//
// (ReLU: relu_grad(dy, y) and activation_mask{inf}), so y dies as soon as the
// forward pass is done with it and the backward keeps 1/32 of its bytes. Both
// are exact: masked_grad gives the same bits as the gradient it replaces.
//
// kActivationMask{upper} (ScalarAttrs: the ReLU's upper clamp, 6 or +inf):
// y f32[...] → m i32[ceil(n / 32)], n = y's element count; bit b of word w is
// element 32·w + b of y, in row-major order, set where y > 0 and, for a
// finite upper, y < upper; the unused high bits of the last word are 0.
// kMaskedGrad: (dy f32[...], m i32[ceil(n / 32)]) → dx = dy where the bit is
// set, else +0.
// Neither is differentiable: both exist only in backward graphs.
//
// With the fast kernels, the runtime has a ReLU or ReLU6 convolution write
// its activation_mask's words itself, as it activates each plane
// (runtime::AbsorbedMasks), and conv2d_backward_input applies a mask it
// takes as a third operand (the pack_masks pass folds masked_grad in).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "engine/base/status_macros.h"
#include "engine/kernels/parallel.h"
#include "engine/ops/kernel_parts.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include "engine/kernels/isa.h"
#endif

namespace fleettune::engine::ops {
namespace {

constexpr int64_t kBits = parts::kMaskBits;
using parts::MaskWords;

// The derivative of a ReLU clamped to [0, upper] at its output y (+inf: no
// clamp). NaN fails every comparison, as in relu_grad and activation_grad.
struct Derivative {
  float upper;
  bool operator()(float y) const { return y > 0.0f && (y < upper || std::isinf(upper)); }
};

Derivative DerivativeOf(const KernelArgs& args) {
  return Derivative{args.attrs<ScalarAttrs>().value};
}

absl::StatusOr<TensorType> InferMask(const Node& node, absl::Span<const TensorType* const> in) {
  const float upper = std::get<ScalarAttrs>(node.attrs).value;
  if (!(upper > 0.0f)) {
    return OpError(node, "upper clamp must be > 0 (6 for ReLU6, inf for ReLU), got ", upper);
  }
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "y"));
  return TensorType{DType::kI32, {MaskWords(in[0]->num_elements())}};
}

absl::StatusOr<TensorType> InferMaskedGrad(const Node& node,
                                           absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kF32, "dy"));
  RETURN_IF_ERROR(ExpectDType(node, *in[1], DType::kI32, "mask"));
  const Shape want{MaskWords(in[0]->num_elements())};
  if (in[1]->shape != want) {
    return OpError(node, "mask for dy ", TypeToString(*in[0]), " must be i32[", want[0], "], got ",
                   TypeToString(*in[1]));
  }
  return *in[0];
}

// Word w of the mask from y[32w, min(32w + 32, n)).
uint32_t PackWord(Derivative passes, const float* y, int64_t count) {
  uint32_t word = 0;
  for (int64_t b = 0; b < count; ++b) word |= static_cast<uint32_t>(passes(y[b])) << b;
  return word;
}

void PackReference(const KernelArgs& args) {
  const int64_t n = args.in(0).num_elements();
  const float* y = args.in(0).f32();
  int32_t* m = args.output.i32();
  const Derivative passes = DerivativeOf(args);
  for (int64_t w = 0; w < MaskWords(n); ++w) {
    const uint32_t word = PackWord(passes, y + w * kBits, std::min(kBits, n - w * kBits));
    std::memcpy(m + w, &word, sizeof(word));
  }
}

void MaskedGradReference(const KernelArgs& args) {
  const int64_t n = args.output.num_elements();
  const float* dy = args.in(0).f32();
  const int32_t* m = args.in(1).i32();
  float* dx = args.output.f32();
  for (int64_t i = 0; i < n; ++i) dx[i] = parts::MaskBit(m, i) ? dy[i] : 0.0f;
}

#if defined(__x86_64__)
// 32 elements per word as four 8-lane compares; movemask gives each lane's bit
// in element order. An infinite upper bound passes every y > 0.
__attribute__((target("avx2"))) void PackAvx2(Derivative passes, const float* y, int32_t* m,
                                              int64_t words) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 upper = _mm256_set1_ps(passes.upper);
  const __m256 unbounded =
      std::isinf(passes.upper) ? _mm256_castsi256_ps(_mm256_set1_epi32(-1)) : _mm256_setzero_ps();
  for (int64_t w = 0; w < words; ++w) {
    uint32_t word = 0;
    for (int q = 0; q < 4; ++q) {
      const __m256 v = _mm256_loadu_ps(y + w * kBits + 8 * q);
      const __m256 below = _mm256_or_ps(_mm256_cmp_ps(v, upper, _CMP_LT_OQ), unbounded);
      const __m256 in = _mm256_and_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ), below);
      word |= static_cast<uint32_t>(_mm256_movemask_ps(in)) << (8 * q);
    }
    std::memcpy(m + w, &word, sizeof(word));
  }
}

// Two 16-lane compares per word; an infinite upper bound passes every y > 0.
__attribute__((target("avx512f"))) void PackAvx512(Derivative passes, const float* y, int32_t* m,
                                                   int64_t words) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512 upper = _mm512_set1_ps(passes.upper);
  const bool unbounded = std::isinf(passes.upper);
  for (int64_t w = 0; w < words; ++w) {
    uint32_t word = 0;
    for (int h = 0; h < 2; ++h) {
      const __m512 v = _mm512_loadu_ps(y + w * kBits + 16 * h);
      const __mmask16 positive = _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ);
      const __mmask16 in =
          unbounded ? positive : _mm512_mask_cmp_ps_mask(positive, v, upper, _CMP_LT_OQ);
      word |= static_cast<uint32_t>(in) << (16 * h);
    }
    std::memcpy(m + w, &word, sizeof(word));
  }
}

// At the kernel ISA's width.
void PackWords(Derivative passes, const float* y, int32_t* m, int64_t words) {
  if (kernels::KernelIsa() == kernels::Isa::kAvx512) {
    PackAvx512(passes, y, m, words);
  } else {
    PackAvx2(passes, y, m, words);
  }
}

// Each lane tests its own bit of the word: (word & 1 << lane) != 0.
__attribute__((target("avx2"))) void MaskedGradAvx2(const float* dy, const int32_t* m, float* dx,
                                                    int64_t words) {
  const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  for (int64_t w = 0; w < words; ++w) {
    for (int q = 0; q < 4; ++q) {
      const __m256i byte = _mm256_set1_epi32((m[w] >> (8 * q)) & 0xff);
      const __m256i on = _mm256_cmpeq_epi32(_mm256_and_si256(byte, lane_bits), lane_bits);
      const __m256 g = _mm256_loadu_ps(dy + w * kBits + 8 * q);
      _mm256_storeu_ps(dx + w * kBits + 8 * q, _mm256_and_ps(g, _mm256_castsi256_ps(on)));
    }
  }
}
// The word's halves are the lanes' masks: a masked move per 16 elements.
__attribute__((target("avx512f"))) void MaskedGradAvx512(const float* dy, const int32_t* m,
                                                         float* dx, int64_t words) {
  for (int64_t w = 0; w < words; ++w) {
    const uint32_t word = static_cast<uint32_t>(m[w]);
    const __m512 lo =
        _mm512_maskz_mov_ps(static_cast<__mmask16>(word), _mm512_loadu_ps(dy + w * kBits));
    const __m512 hi = _mm512_maskz_mov_ps(static_cast<__mmask16>(word >> 16),
                                          _mm512_loadu_ps(dy + w * kBits + 16));
    _mm512_storeu_ps(dx + w * kBits, lo);
    _mm512_storeu_ps(dx + w * kBits + 16, hi);
  }
}

// At the kernel ISA's width.
void MaskedGradWords(const float* dy, const int32_t* m, float* dx, int64_t words) {
  if (kernels::KernelIsa() == kernels::Isa::kAvx512) {
    MaskedGradAvx512(dy, m, dx, words);
  } else {
    MaskedGradAvx2(dy, m, dx, words);
  }
}
#endif

// Whole words on the threads, then the tail word (fewer than 32 elements).
void PackFast(const KernelArgs& args) {
  const int64_t n = args.in(0).num_elements();
  const float* y = args.in(0).f32();
  int32_t* m = args.output.i32();
  const Derivative passes = DerivativeOf(args);
  const int64_t full = n / kBits;
  kernels::ParallelFor(full, kBits, [&](int64_t begin, int64_t end) {
#if defined(__x86_64__)
    if (kernels::KernelIsa() != kernels::Isa::kGeneric) {
      PackWords(passes, y + begin * kBits, m + begin, end - begin);
      return;
    }
#endif
    for (int64_t w = begin; w < end; ++w) {
      const uint32_t word = PackWord(passes, y + w * kBits, kBits);
      std::memcpy(m + w, &word, sizeof(word));
    }
  });
  if (full * kBits < n) {
    const uint32_t word = PackWord(passes, y + full * kBits, n - full * kBits);
    std::memcpy(m + full, &word, sizeof(word));
  }
}

void MaskedGradFast(const KernelArgs& args) {
  const int64_t n = args.output.num_elements();
  const float* dy = args.in(0).f32();
  const int32_t* m = args.in(1).i32();
  float* dx = args.output.f32();
  const int64_t full = n / kBits;
  kernels::ParallelFor(full, kBits, [&](int64_t begin, int64_t end) {
#if defined(__x86_64__)
    if (kernels::KernelIsa() != kernels::Isa::kGeneric) {
      MaskedGradWords(dy + begin * kBits, m + begin, dx + begin * kBits, end - begin);
      return;
    }
#endif
    for (int64_t i = begin * kBits; i < end * kBits; ++i) {
      dx[i] = parts::MaskBit(m, i) ? dy[i] : 0.0f;
    }
  });
  for (int64_t i = full * kBits; i < n; ++i) {
    dx[i] = parts::MaskBit(m, i) ? dy[i] : 0.0f;
  }
}

}  // namespace

void parts::PackMask(float upper, const float* y, int64_t first, int64_t n, int32_t* mask) {
  const Derivative passes{upper};
  int32_t* m = mask + first / kBits;
#if defined(__x86_64__)
  if (kernels::KernelIsa() != kernels::Isa::kGeneric) {
    PackWords(passes, y, m, n / kBits);
    return;
  }
#endif
  for (int64_t w = 0; w < n / kBits; ++w) {
    const uint32_t word = PackWord(passes, y + w * kBits, kBits);
    std::memcpy(m + w, &word, sizeof(word));
  }
}

void parts::MaskInPlace(const int32_t* mask, int64_t first, float* x, int64_t n) {
  auto scalar = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (!parts::MaskBit(mask, first + i)) x[i] = 0.0f;
    }
  };
  // Up to the first word boundary, whole words, then the rest.
  const int64_t head = std::min(n, (kBits - first % kBits) % kBits);
  scalar(0, head);
  const int64_t words = (n - head) / kBits;
#if defined(__x86_64__)
  if (kernels::KernelIsa() != kernels::Isa::kGeneric) {
    MaskedGradWords(x + head, mask + (first + head) / kBits, x + head, words);
    scalar(head + words * kBits, n);
    return;
  }
#endif
  scalar(head, n);
}

namespace {

// Element counts that leave a partial last word, and one of whole words.
std::vector<OpTestCase> MaskTestCases() {
  OpTestCase relu6;  // a partial last word
  relu6.inputs = {{DType::kF32, {3, 45}}};
  relu6.attrs = ScalarAttrs{6.0f};
  OpTestCase relu = relu6;  // whole words
  relu.inputs = {{DType::kF32, {2, 4, 16}}};
  relu.attrs = ScalarAttrs{std::numeric_limits<float>::infinity()};
  return {relu6, relu};
}

std::vector<OpTestCase> MaskedGradTestCases() {
  OpTestCase partial;
  partial.inputs = {{DType::kF32, {3, 45}}, {DType::kI32, {5}}};
  partial.int_upper = 1 << 30;  // random bits in all but the top two of each word
  OpTestCase whole = partial;
  whole.inputs = {{DType::kF32, {2, 4, 16}}, {DType::kI32, {4}}};
  return {partial, whole};
}

}  // namespace

OpDef ActivationMaskOpDef() {
  OpDef def;
  def.name = "activation_mask";
  def.attrs_index = AttrsIndexOf<ScalarAttrs>();
  def.min_inputs = def.max_inputs = 1;
  def.infer = InferMask;
  def.reference = PackReference;
  def.fast = PackFast;
  def.test_cases = MaskTestCases;
  return def;
}

OpDef MaskedGradOpDef() {
  OpDef def;
  def.name = "masked_grad";
  def.min_inputs = def.max_inputs = 2;
  def.infer = InferMaskedGrad;
  def.reference = MaskedGradReference;
  def.fast = MaskedGradFast;
  def.test_cases = MaskedGradTestCases;
  return def;
}

}  // namespace fleettune::engine::ops
