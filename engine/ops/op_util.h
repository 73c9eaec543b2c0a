// Helpers shared by op definitions: argument checks with uniform messages and
// a strided broadcast iterator used by the elementwise reference kernels.
#ifndef FLEETTUNE_ENGINE_OPS_OP_UTIL_H_
#define FLEETTUNE_ENGINE_OPS_OP_UTIL_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/ir/tensor.h"
#include "engine/ops/op_registry.h"

namespace fleettune::engine::ops {

template <typename... Args>
absl::Status OpError(const Node& node, const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(GetOpDef(node.op).name, ": ", args...));
}

inline absl::Status ExpectDType(const Node& node, const TensorType& t, DType dtype,
                                const char* what) {
  if (t.dtype != dtype) {
    return OpError(node, what, " must be ", DTypeName(dtype), ", got ", TypeToString(t));
  }
  return absl::OkStatus();
}

inline absl::Status ExpectRank(const Node& node, const TensorType& t, int rank, const char* what) {
  if (static_cast<int>(t.shape.size()) != rank) {
    return OpError(node, what, " must have rank ", rank, ", got ", TypeToString(t));
  }
  return absl::OkStatus();
}

// Row-major strides of `shape` as seen from an output of rank `out_rank`
// (right-aligned); broadcast dimensions (size 1 where the output is larger)
// get stride 0.
// Shapes are at most kMaxRank (checked when nodes are built), so the strides
// fit a fixed array and kernels do not allocate.
using Strides = std::array<int64_t, kMaxRank>;
Strides BroadcastStrides(const Shape& shape, const Shape& out_shape);

// Calls fn(out_index, a_offset, b_offset) for every element of out_shape,
// where a and b are addressed through per-dimension strides (0 = broadcast).
template <typename Fn>
void ForEachStrided(const Shape& out_shape, const Strides& sa, const Strides& sb, Fn&& fn) {
  const int rank = static_cast<int>(out_shape.size());
  const int64_t total = NumElements(out_shape);
  if (total == 0) return;
  if (rank == 0) {
    fn(0, 0, 0);
    return;
  }
  std::array<int64_t, kMaxRank> idx{};
  const int64_t inner = out_shape[rank - 1];
  const int64_t ia = sa[rank - 1], ib = sb[rank - 1];
  int64_t oa = 0, ob = 0;
  for (int64_t o = 0; o < total; o += inner) {
    for (int64_t i = 0; i < inner; ++i) fn(o + i, oa + i * ia, ob + i * ib);
    // Advance the outer counters (odometer over dims rank-2 .. 0).
    for (int d = rank - 2; d >= 0; --d) {
      ++idx[d];
      oa += sa[d];
      ob += sb[d];
      if (idx[d] < out_shape[d]) break;
      oa -= sa[d] * idx[d];
      ob -= sb[d] * idx[d];
      idx[d] = 0;
    }
  }
}

// Calls fn(out_index, a_offset, b_offset) for every output element, where the
// offsets follow numpy broadcasting of a_shape and b_shape into out_shape.
// Does not allocate.
template <typename Fn>
void ForEachBroadcast(const Shape& a_shape, const Shape& b_shape, const Shape& out_shape, Fn&& fn) {
  ForEachStrided(out_shape, BroadcastStrides(a_shape, out_shape),
                 BroadcastStrides(b_shape, out_shape), fn);
}

}  // namespace fleettune::engine::ops

#endif  // FLEETTUNE_ENGINE_OPS_OP_UTIL_H_
