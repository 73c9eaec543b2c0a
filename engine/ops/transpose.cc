// kTranspose: a general permutation of the axes (torch.permute), copying.
//
// x [d0, ..., dn-1] → y with y.shape[i] = x.shape[perm[i]] and
// y[i0, ..., in-1] = x at index j where j[perm[k]] = ik. f32 or i32.
// Attention uses it to move heads in front of the sequence:
// [B, T, H, D] → [B, H, T, D] is perm {0, 2, 1, 3}.
#include <array>
#include <cstring>

#include "engine/base/status_macros.h"
#include "engine/kernels/parallel.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  const std::vector<int>& perm = std::get<PermuteAttrs>(node.attrs).perm;
  const int rank = static_cast<int>(in[0]->shape.size());
  if (static_cast<int>(perm.size()) != rank) {
    return OpError(node, "perm has ", perm.size(), " axes for x ", TypeToString(*in[0]));
  }
  std::vector<bool> seen(rank, false);
  Shape out(rank);
  for (int i = 0; i < rank; ++i) {
    const int p = perm[i];
    if (p < 0 || p >= rank || seen[p]) {
      return OpError(node, "perm must be a permutation of [0, ", rank, "), got axis ", p,
                     " at position ", i);
    }
    seen[p] = true;
    out[i] = in[0]->shape[p];
  }
  return TensorType{in[0]->dtype, out};
}

void Kernel(const KernelArgs& args) {
  const std::vector<int>& perm = args.attrs<PermuteAttrs>().perm;
  const Shape& xs = *args.in(0).shape;
  const int rank = static_cast<int>(xs.size());
  // Row-major strides of x, read in y's axis order.
  std::array<int64_t, kMaxRank> x_strides{};
  int64_t stride = 1;
  for (int d = rank - 1; d >= 0; --d) {
    x_strides[d] = stride;
    stride *= xs[d];
  }
  Strides sx{}, none{};
  for (int i = 0; i < rank; ++i) sx[i] = x_strides[perm[i]];
  // Both dtypes are 4 bytes: copy bit patterns.
  const auto* x = static_cast<const uint32_t*>(args.in(0).data);
  auto* y = static_cast<uint32_t*>(args.output.data);
  ForEachStrided(*args.output.shape, sx, none,
                 [&](int64_t o, int64_t ix, int64_t) { y[o] = x[ix]; });
}

// When the permutation keeps trailing axes in place (attention's head moves
// keep the head dimension last), y is rows of `inner` elements each
// contiguous in x: rows are copied with memcpy, split over the threads. Other
// permutations run the reference loop.
void Fast(const KernelArgs& args) {
  const std::vector<int>& perm = args.attrs<PermuteAttrs>().perm;
  const Shape& xs = *args.in(0).shape;
  const Shape& ys = *args.output.shape;
  const int rank = static_cast<int>(xs.size());
  int kept = 0;  // trailing axes with perm[i] == i
  int64_t inner = 1;
  while (kept < rank && perm[rank - 1 - kept] == rank - 1 - kept) {
    inner *= xs[rank - 1 - kept];
    ++kept;
  }
  const int64_t total = args.output.num_elements();
  if (kept == 0 || kept == rank || total == 0) {
    if (kept == rank) std::memcpy(args.output.data, args.in(0).data, total * sizeof(float));
    if (kept == 0) Kernel(args);
    return;
  }
  const int outer_rank = rank - kept;
  std::array<int64_t, kMaxRank> x_strides{};
  int64_t stride = 1;
  for (int d = rank - 1; d >= 0; --d) {
    x_strides[d] = stride;
    stride *= xs[d];
  }
  const auto* x = static_cast<const uint32_t*>(args.in(0).data);
  auto* y = static_cast<uint32_t*>(args.output.data);
  kernels::ParallelFor(total / inner, inner, [&](int64_t begin, int64_t end) {
    // y's outer index of row `begin`, then stepped like an odometer.
    std::array<int64_t, kMaxRank> idx{};
    int64_t rest = begin, ix = 0;
    for (int i = outer_rank - 1; i >= 0; --i) {
      idx[i] = rest % ys[i];
      rest /= ys[i];
      ix += idx[i] * x_strides[perm[i]];
    }
    for (int64_t row = begin; row < end; ++row) {
      std::memcpy(y + row * inner, x + ix, inner * sizeof(uint32_t));
      for (int i = outer_rank - 1; i >= 0; --i) {
        ix += x_strides[perm[i]];
        if (++idx[i] < ys[i]) break;
        ix -= x_strides[perm[i]] * ys[i];
        idx[i] = 0;
      }
    }
  });
}

// dx = transpose(dy, perm⁻¹)
absl::Status Gradient(GradContext& ctx) {
  if (!ctx.NeedsGrad(0)) return absl::OkStatus();
  const std::vector<int>& perm = std::get<PermuteAttrs>(ctx.node().attrs).perm;
  PermuteAttrs inverse;
  inverse.perm.resize(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inverse.perm[perm[i]] = static_cast<int>(i);
  ASSIGN_OR_RETURN(ValueId dx, ctx.Emit(OpKind::kTranspose, {ctx.dy()}, inverse));
  ctx.SetGrad(0, dx);
  return absl::OkStatus();
}

std::vector<OpTestCase> TestCases() {
  auto make = [](Shape s, std::vector<int> perm) {
    OpTestCase c;
    c.inputs = {{DType::kF32, std::move(s)}};
    c.attrs = PermuteAttrs{std::move(perm)};
    return c;
  };
  return {make({3, 4}, {1, 0}),
          make({2, 3, 4, 5}, {0, 2, 1, 3}),
          make({2, 3, 4}, {2, 0, 1}),
          make({5}, {0}),
          make({3, 2, 4, 5}, {1, 0, 2, 3}),
          make({2, 3, 4, 2, 3}, {0, 3, 2, 1, 4}),
          make({2, 3, 4}, {0, 1, 2})};
}

}  // namespace

OpDef TransposeOpDef() {
  OpDef def;
  def.name = "transpose";
  def.attrs_index = AttrsIndexOf<PermuteAttrs>();
  def.min_inputs = def.max_inputs = 1;
  def.infer = Infer;
  def.reference = Kernel;
  def.fast = Fast;
  def.gradient = Gradient;
  def.test_cases = TestCases;
  return def;
}

}  // namespace fleettune::engine::ops
