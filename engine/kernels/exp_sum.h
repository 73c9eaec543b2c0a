// The exponential sums of softmax rows, at the kernel ISA's vector width.
//
//   const float sum = ExpShiftedSum(x, n, max, y);  // y[j] = e^(x[j] − max), Σ y[j]
//
// Softmax and softmax cross-entropy spend their time here (Llama-mini's loss
// takes 8M exps a step over its 8192-word vocabulary). Compiled once per level
// of engine/kernels/isa.h and dispatched on KernelIsa(); lanes are summed in a
// fixed order, so results depend only on the level. Thread-compatible.
#ifndef FLEETTUNE_ENGINE_KERNELS_EXP_SUM_H_
#define FLEETTUNE_ENGINE_KERNELS_EXP_SUM_H_

#include <cstdint>

namespace fleettune::engine::kernels {

// Σ_{j<n} e^(x[j] − shift), writing each term to y[j] when y is not null (y
// may be x). e^ is vec_math.h's Exp (about 2e-7 relative).
float ExpShiftedSum(const float* x, int64_t n, float shift, float* y);

// max_j x[j] at the kernel ISA's width; n >= 1. std::max's result when no
// x[j] is NaN (the maximum is exact, whatever the order of comparisons).
float RowMax(const float* x, int64_t n);

// A softmax row scaled, in three passes at the kernel ISA's width: the
// maximum m, the exponentials e^(x[j] − m) into y with their sum s, and
// y[j] *= scale / s. Returns m and s (a cross-entropy loss needs both).
// n >= 1; y may be x. The row stays in L1 between passes for rows up to a few
// thousand floats (Llama-mini's 8192-word vocabulary: 32 KiB).
struct SoftmaxRowStats {
  float max;
  float sum;
};
SoftmaxRowStats ScaledSoftmaxRow(const float* x, int64_t n, float scale, float* y);

}  // namespace fleettune::engine::kernels

#endif  // FLEETTUNE_ENGINE_KERNELS_EXP_SUM_H_
