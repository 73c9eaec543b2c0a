// f32 BatchNorm and per-channel reduction kernels on NC… tensors viewed as
// [outer, channels, inner] (channels on axis 1; inner = ∏ dims after it).
// Formulas are those of engine/ops/batch_norm.cc; statistics are per channel
// over the M = outer·inner values of that channel, the mean accumulated in
// double over rows, the variance in a second pass over the (cache-resident)
// channel. Work is split over channels with ParallelFor. No allocation;
// outputs may not alias inputs unless a function says so.
#ifndef FLEETTUNE_ENGINE_KERNELS_BATCH_NORM_H_
#define FLEETTUNE_ENGINE_KERNELS_BATCH_NORM_H_

#include <cmath>
#include <cstdint>

#include "engine/kernels/epilogue.h"

namespace fleettune::engine::kernels {

struct ChannelLayout {
  int64_t outer, channels, inner;
  int64_t per_channel() const { return outer * inner; }
};

// A frozen BatchNorm's scale of one channel, γ/√(σ² + eps) in double, then
// rounded: what F32BatchNormFrozen and F32BatchNormFrozenGrad multiply by,
// and what a convolution applying a folded scaling itself must use to agree.
inline float FrozenScale(float gamma, float var, float eps) {
  return static_cast<float>(gamma / std::sqrt(static_cast<double>(var) + eps));
}

// y = (x − μ_B)/√(σ²_B + eps)·γ + β with batch statistics. y may equal x.
void F32BatchNormTrain(const ChannelLayout& l, const float* x, const float* gamma,
                       const float* beta, float eps, float* y);

// dx = γ/(M·σ)·(M·dy − Σdy − x̂·Σ(dy·x̂)) with batch statistics.
void F32BatchNormTrainGrad(const ChannelLayout& l, const float* dy, const float* x,
                           const float* gamma, float eps, float* dx);

// dγ = Σ dy·(x − μ)/√(σ² + eps), with the batch statistics of x when
// running_mean is null, else with (running_mean, running_var).
void F32BatchNormWeightGrad(const ChannelLayout& l, const float* dy, const float* x,
                            const float* running_mean, const float* running_var, float eps,
                            float* dgamma);

// running = (1 − momentum)·running + momentum·batch (unbiased batch variance).
void F32BatchNormStatsUpdate(const ChannelLayout& l, const float* x, float momentum,
                             float* running_mean, float* running_var);

// y = (x − mean)/√(var + eps)·γ + β, then the epilogue on each row of `inner`
// outputs as soon as it is written (rows under 64 floats: on each sample's
// run of up to 256 channels' rows). y may equal x.
void F32BatchNormFrozen(const ChannelLayout& l, const float* x, const float* mean, const float* var,
                        const float* gamma, const float* beta, float eps, float* y,
                        PlaneEpilogue epilogue = {});

// dx = dy·γ/√(var + eps). dx may equal dy.
void F32BatchNormFrozenGrad(const ChannelLayout& l, const float* dy, const float* var,
                            const float* gamma, float eps, float* dx);

// Row blocks the column sums (inner = 1) split the rows into, each summed into
// its own partial row: a fixed count, so the order of additions, and so the
// result, does not depend on the thread count.
inline constexpr int64_t kColumnSumBlocks = 8;

// Rows at least this wide are column-summed in place, split over columns:
// each thread then reads long contiguous runs, and the partial rows would
// cost scratch memory (8 × 30522 floats for a vocabulary-wide bias).
inline constexpr int64_t kColumnSumMaxBlockedWidth = 4096;

// Scratch floats F32SumOuterInner needs for layout l.
inline int64_t SumOuterInnerScratchFloats(const ChannelLayout& l) {
  return l.inner == 1 && l.channels < kColumnSumMaxBlockedWidth ? kColumnSumBlocks * l.channels : 0;
}

// y[k] = scale · Σ_{a,b} x[a, k, b] for x viewed as [outer, channels, inner]:
// reduce_sum / reduce_mean over every axis but a contiguous block of kept ones.
// `scratch` holds SumOuterInnerScratchFloats(l) floats.
void F32SumOuterInner(const ChannelLayout& l, const float* x, float scale, float* scratch,
                      float* y);

}  // namespace fleettune::engine::kernels

#endif  // FLEETTUNE_ENGINE_KERNELS_BATCH_NORM_H_
