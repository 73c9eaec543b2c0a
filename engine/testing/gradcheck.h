// Central-difference gradient checking for whole graphs.
//
//   GradCheckResult r = CheckGradients(graph, loss, trainable, params, inputs);
//   EXPECT_LE(r.worst_excess, 0.0) << r.worst;
//
// Builds the backward graph with autodiff, runs it once with the reference
// kernels, then perturbs every element of every trainable parameter by ±eps
// and compares (L(p+eps) − L(p−eps)) / 2eps with the analytic gradient.
// Where the one-sided slopes disagree by more than the tolerance, a ReLU-like
// kink lies within ±eps and central differences mean nothing; such elements
// are counted in `kinks` and skipped (tests bound how many may be).
// Test-only.
#ifndef FLEETTUNE_ENGINE_TESTING_GRADCHECK_H_
#define FLEETTUNE_ENGINE_TESTING_GRADCHECK_H_

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/ir/graph.h"
#include "engine/runtime/executable.h"

namespace fleettune::engine::testing {

struct GradCheckOptions {
  float eps = 1e-3f;
  float atol = 1e-3f;
  float rtol = 1e-2f;
};

struct GradCheckResult {
  int64_t checked = 0;        // elements compared
  int64_t kinks = 0;          // elements skipped: the loss is not smooth within ±eps there
  double worst_excess = 0.0;  // max over elements of |num − ana| − (atol + rtol·|ana|); ≤ 0 passes
  std::string worst;          // description of the worst element
};

// `params` holds every parameter of `graph`; `inputs` every kInput.
absl::StatusOr<GradCheckResult> CheckGradients(const Graph& graph, ValueId loss,
                                               const std::vector<ValueId>& trainable,
                                               runtime::ParameterStore& params,
                                               const std::map<std::string, Tensor>& inputs,
                                               const GradCheckOptions& options = {});

// Random test data: f32 values with |x| in [0.1, 1] and random sign (away from
// ReLU's kink), i32 values in [0, int_upper).
Tensor RandomTensor(const TensorType& type, std::mt19937_64& rng, int32_t int_upper = 1);

}  // namespace fleettune::engine::testing

#endif  // FLEETTUNE_ENGINE_TESTING_GRADCHECK_H_
