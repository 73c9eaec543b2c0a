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

}  // namespace fleettune::engine::kernels

#endif  // FLEETTUNE_ENGINE_KERNELS_EXP_SUM_H_
