#include "engine/search/cost_model.h"

#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "engine/compile/compiler.h"
#include "engine/runtime/executable.h"

namespace fleettune::engine::search {

absl::StatusOr<SchemeCost> CostModel::Cost(const scheme::UpdateScheme& scheme) {
  if (!(device_.flops_per_second > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cost model: device class '", device_.name, "' has non-positive throughput"));
  }
  // The name is a label: schemes with equal rules cost the same.
  std::string key;
  for (const scheme::Rule& r : scheme.rules) absl::StrAppend(&key, scheme::RuleToString(r), "\n");
  auto it = cache_.find(key);
  if (it != cache_.end()) return it->second;
  compile::CompileOptions options;
  options.model_name = "search";
  ASSIGN_OR_RETURN(options.scheme, scheme::ResolveScheme(model_, scheme));
  options.optimizer = optimizer_;
  options.device_class = device_.name;
  options.threads = device_.threads;
  ASSIGN_OR_RETURN(compile::CompiledTraining compiled, compile::CompileTraining(model_, options));
  ++compiles_;
  const v1::PlanMetadata& m = compiled.plan.metadata();
  SchemeCost cost;
  cost.memory_bytes = static_cast<int64_t>(compile::TrainingBytes(m));
  cost.flops_per_step = static_cast<int64_t>(m.flops_per_step());
  cost.step_seconds = static_cast<double>(cost.flops_per_step) / device_.flops_per_second;
  cache_.emplace(key, cost);
  return cost;
}

absl::StatusOr<SchemeCost> CostModel::Cost(const std::vector<Candidate>& set) {
  ASSIGN_OR_RETURN(scheme::UpdateScheme s, ToScheme(model_, set, "cost"));
  return Cost(s);
}

absl::StatusOr<SchemeCost> CostModel::Marginal(const std::vector<Candidate>& base,
                                               const Candidate& candidate) {
  std::vector<Candidate> with;
  for (const Candidate& c : base) {
    if (c.tensor != candidate.tensor) with.push_back(c);
  }
  with.push_back(candidate);
  ASSIGN_OR_RETURN(SchemeCost after, Cost(with));
  if (base.empty()) return after;
  ASSIGN_OR_RETURN(SchemeCost before, Cost(base));
  SchemeCost d;
  d.memory_bytes = after.memory_bytes - before.memory_bytes;
  d.flops_per_step = after.flops_per_step - before.flops_per_step;
  d.step_seconds = after.step_seconds - before.step_seconds;
  return d;
}

absl::StatusOr<int64_t> CostModel::InferenceBytes() {
  if (inference_bytes_ < 0) {
    runtime::CompileOptions options;
    options.threads = device_.threads;
    ASSIGN_OR_RETURN(runtime::MemoryStats m, runtime::EstimateMemory(model_.graph, options));
    inference_bytes_ = static_cast<int64_t>(m.total_bytes());
  }
  return inference_bytes_;
}

absl::StatusOr<int64_t> OverheadFractionBudget(CostModel& costs, const models::Model& model,
                                               double fraction) {
  if (!(fraction > 0.0 && fraction <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("budget fraction ", fraction, " is outside (0, 1]"));
  }
  ASSIGN_OR_RETURN(scheme::UpdateScheme full, scheme::PresetScheme(model, "full"));
  ASSIGN_OR_RETURN(SchemeCost full_cost, costs.Cost(full));
  ASSIGN_OR_RETURN(int64_t inference, costs.InferenceBytes());
  const double overhead = static_cast<double>(full_cost.memory_bytes - inference);
  return inference + static_cast<int64_t>(fraction * overhead);
}

}  // namespace fleettune::engine::search
