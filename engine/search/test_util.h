// Test fixtures shared by engine/search's tests: a learnable synthetic task
// and the small MLP that learns it.
//
//   Tensor x, y;
//   MakeArgmaxData(512, /*seed=*/1, &x, &y);
//   ASSERT_OK(models::InitializeMlp(kArgmaxMlp, 3, &base));
//   ... AnalyzeContributions(ArgmaxMlpBuilder(), base, ...)
#ifndef FLEETTUNE_ENGINE_SEARCH_TEST_UTIL_H_
#define FLEETTUNE_ENGINE_SEARCH_TEST_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <random>

#include "engine/ir/tensor.h"
#include "engine/models/mlp.h"
#include "engine/train/trainer.h"

namespace fleettune::engine::search {

// n samples of 16 features in [0, 1); the label is the argmax of the first 4.
inline void MakeArgmaxData(int64_t n, uint64_t seed, Tensor* images, Tensor* labels) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  *images = Tensor(DType::kF32, {n, 16});
  *labels = Tensor(DType::kI32, {n});
  for (int64_t i = 0; i < n; ++i) {
    float* x = images->f32() + i * 16;
    for (int j = 0; j < 16; ++j) x[j] = u(rng);
    labels->i32()[i] = static_cast<int32_t>(std::max_element(x, x + 4) - x);
  }
}

inline const models::MlpConfig kArgmaxMlp = {{16, 32, 4}, 1};

inline train::ModelBuilder ArgmaxMlpBuilder() {
  return [](int64_t batch, models::Mode) { return models::BuildMlp({kArgmaxMlp.sizes, batch}); };
}

}  // namespace fleettune::engine::search

#endif  // FLEETTUNE_ENGINE_SEARCH_TEST_UTIL_H_
