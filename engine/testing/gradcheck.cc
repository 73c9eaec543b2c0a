#include "engine/testing/gradcheck.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/autodiff/autodiff.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::testing {

Tensor RandomTensor(const TensorType& type, std::mt19937_64& rng, int32_t int_upper) {
  Tensor t(type.dtype, type.shape);
  if (type.dtype == DType::kI32) {
    std::uniform_int_distribution<int32_t> dist(0, std::max(int_upper, 1) - 1);
    for (int64_t i = 0; i < t.num_elements(); ++i) t.i32()[i] = dist(rng);
  } else {
    std::uniform_real_distribution<float> mag(0.1f, 1.0f);
    std::bernoulli_distribution sign(0.5);
    for (float& v : t.f32_span()) v = sign(rng) ? mag(rng) : -mag(rng);
  }
  return t;
}

absl::StatusOr<GradCheckResult> CheckGradients(const Graph& graph, ValueId loss,
                                               const std::vector<ValueId>& trainable,
                                               runtime::ParameterStore& params,
                                               const std::map<std::string, Tensor>& inputs,
                                               const GradCheckOptions& options) {
  Graph g = graph;
  ASSIGN_OR_RETURN(autodiff::GradientMap grads, autodiff::BuildBackward(g, loss, trainable));
  g.MarkOutput(loss);
  for (const auto& [param, grad] : grads) g.MarkOutput(grad);
  runtime::CompileOptions compile;
  compile.use_reference_kernels = true;
  ASSIGN_OR_RETURN(auto exe, runtime::Executable::Compile(g, &params, compile));
  for (const auto& [name, value] : inputs) RETURN_IF_ERROR(exe->SetInput(name, value));

  auto run_loss = [&]() -> absl::StatusOr<double> {
    RETURN_IF_ERROR(exe->Run());
    ASSIGN_OR_RETURN(TensorView l, exe->Output(loss));
    return static_cast<double>(l.f32()[0]);
  };
  ASSIGN_OR_RETURN(const double center, run_loss());
  // Copy analytic gradients before the perturbed runs overwrite the arena.
  std::map<ValueId, std::vector<float>> analytic;
  for (const auto& [param, grad] : grads) {
    ASSIGN_OR_RETURN(TensorView v, exe->Output(grad));
    analytic[param].assign(v.f32(), v.f32() + v.num_elements());
  }

  GradCheckResult result;
  result.worst_excess = -1e30;
  for (const auto& [param, ana] : analytic) {
    const std::string& name = g.node(param).name;
    Tensor* p = params.Find(name);
    for (int64_t i = 0; i < p->num_elements(); ++i) {
      const float saved = p->f32()[i];
      p->f32()[i] = saved + options.eps;
      ASSIGN_OR_RETURN(double up, run_loss());
      p->f32()[i] = saved - options.eps;
      ASSIGN_OR_RETURN(double down, run_loss());
      p->f32()[i] = saved;
      const double numeric = (up - down) / (2.0 * options.eps);
      const double right = (up - center) / options.eps, left = (center - down) / options.eps;
      if (std::abs(right - left) > 2.0 * (options.atol + options.rtol * std::abs(numeric))) {
        ++result.kinks;
        continue;
      }
      const double excess =
          std::abs(numeric - ana[i]) - (options.atol + options.rtol * std::abs(ana[i]));
      ++result.checked;
      if (excess > result.worst_excess) {
        result.worst_excess = excess;
        result.worst = absl::StrCat(name, "[", i, "]: numeric ", numeric, " analytic ", ana[i]);
      }
    }
  }
  return result;
}

}  // namespace fleettune::engine::testing
