#include "engine/kernels/vec_math.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/kernels/exp_sum.h"
#include "engine/kernels/isa.h"
#include "engine/kernels/vec.h"
#include "gtest/gtest.h"

namespace fleettune::engine::kernels {
namespace {

// Sweeps x over [lo, hi] and compares fn with the libm reference.
template <typename Vec, typename Ref>
double WorstError(float lo, float hi, Vec vec, Ref ref, bool relative) {
  std::vector<float> x, y;
  for (int i = 0; i <= 100003; ++i) x.push_back(lo + (hi - lo) * static_cast<float>(i) / 100003);
  y.resize(x.size());
  MapF32x4(x.data(), y.data(), static_cast<int64_t>(x.size()), vec);
  double worst = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double want = ref(static_cast<double>(x[i]));
    double err = std::abs(y[i] - want);
    if (relative) err /= std::abs(want);
    worst = std::max(worst, err);
  }
  return worst;
}

TEST(VecMath, ExpMatchesLibmToFewUlps) {
  EXPECT_LT(WorstError(
                -87.0f, 88.0f, ExpF32x4, [](double v) { return std::exp(v); }, true),
            4e-7);
}

TEST(VecMath, ErfMatchesLibm) {
  EXPECT_LT(WorstError(
                -9.0f, 9.0f, ErfF32x4, [](double v) { return std::erf(v); }, false),
            5e-7);
}

TEST(VecMath, SinCosMatchLibm) {
  double worst_sin = 0.0, worst_cos = 0.0;
  for (int i = 0; i <= 400003; ++i) {
    const float x = -8192.0f + 16384.0f * static_cast<float>(i) / 400003;
    const F32x4 v = SplatF32x4(x);
    F32x4 s, c;
    SinCos(v, &s, &c);
    worst_sin = std::max(worst_sin, std::abs(s[0] - std::sin(static_cast<double>(x))));
    worst_cos = std::max(worst_cos, std::abs(c[0] - std::cos(static_cast<double>(x))));
  }
  // Quadrant edges, both signs.
  for (int q = -8; q <= 8; ++q) {
    for (float d : {-1e-4f, 0.0f, 1e-4f}) {
      const float x = static_cast<float>(q) * 1.5707963267948966f + d;
      F32x4 s, c;
      SinCos(SplatF32x4(x), &s, &c);
      worst_sin = std::max(worst_sin, std::abs(s[0] - std::sin(static_cast<double>(x))));
      worst_cos = std::max(worst_cos, std::abs(c[0] - std::cos(static_cast<double>(x))));
    }
  }
  EXPECT_LT(worst_sin, 3e-7);
  EXPECT_LT(worst_cos, 3e-7);
}

TEST(VecMath, MapHandlesTailsAndInPlace) {
  std::vector<float> x = {0.0f, 1.0f, -1.0f, 2.0f, 0.5f, -3.0f, 4.0f};
  MapF32x4(x.data(), x.data(), static_cast<int64_t>(x.size()), ExpF32x4);
  const float want[] = {1.0f,           std::exp(1.0f),  std::exp(-1.0f), std::exp(2.0f),
                        std::exp(0.5f), std::exp(-3.0f), std::exp(4.0f)};
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], want[i], 1e-6f * want[i]) << i;
}

// Every length through two vector blocks and a tail, the maximum at every
// position, all values negative (so a maximum started at 0 would be wrong).
TEST(Vec, MaxF32FindsTheMaximumAtEveryPositionAndLength) {
  for (int64_t n = 1; n <= 40; ++n) {
    for (int64_t at = 0; at < n; ++at) {
      std::vector<float> x(n);
      for (int64_t i = 0; i < n; ++i) x[i] = -100.0f - static_cast<float>((i * 37) % 11);
      x[at] = -1.5f;
      ASSERT_EQ(MaxF32(x.data(), n), -1.5f) << "n " << n << " at " << at;
    }
  }
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x(33, -inf);
  EXPECT_EQ(MaxF32(x.data(), 33), -inf);
  x[32] = inf;
  EXPECT_EQ(MaxF32(x.data(), 33), inf);
}

// A scaled softmax row at every kernel ISA this host runs, in place and not,
// against a double-precision one: every length through four vector blocks of
// the widest ISA and a tail, the maximum at every position (it must be found
// exactly, or e^(x − m) could overflow), all values negative.
TEST(VecMath, ScaledSoftmaxRowMatchesDoublePrecision) {
  for (Isa isa : {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512}) {
    if (!HostSupports(isa)) continue;
    SCOPED_TRACE(IsaName(isa));
    SetKernelIsa(isa);
    for (int64_t n = 1; n <= 70; ++n) {
      for (int64_t at = 0; at < n; at += 1 + n / 8) {
        std::vector<float> x(n);
        for (int64_t i = 0; i < n; ++i) x[i] = -30.0f - static_cast<float>((i * 37) % 11);
        x[at] = -20.0f;
        double sum = 0.0;
        for (float v : x) sum += std::exp(static_cast<double>(v) + 20.0);
        std::vector<float> y(n), in_place = x;
        const SoftmaxRowStats stats = ScaledSoftmaxRow(x.data(), n, 0.25f, y.data());
        ScaledSoftmaxRow(in_place.data(), n, 0.25f, in_place.data());
        ASSERT_EQ(stats.max, -20.0f) << "n " << n << " at " << at;
        EXPECT_NEAR(stats.sum, sum, 1e-6 * sum);
        for (int64_t i = 0; i < n; ++i) {
          const double want = 0.25 * std::exp(static_cast<double>(x[i]) + 20.0) / sum;
          ASSERT_NEAR(y[i], want, 1e-6 * want + 1e-30) << "n " << n << " i " << i;
          ASSERT_EQ(in_place[i], y[i]) << "n " << n << " i " << i;
        }
      }
    }
  }
  SetKernelIsa(Isa::kGeneric);
}

}  // namespace
}  // namespace fleettune::engine::kernels
