// Cost of an update scheme on a device class, for scheme search (issue #7).
//
// Memory is exact: TrainingBytes of the plan CompileTraining makes for the
// scheme (the planner's arena, scratch, weights, optimizer state). Time is
// modelled: FLOPs per step (plan metadata) / the class's throughput.
// Compiled costs are cached by the scheme's rule text, so re-costing a set is
// a map look-up.
//
//   CostModel costs(model, {.threads = 4, .flops_per_second = 2e9});
//   ASSIGN_OR_RETURN(SchemeCost c, costs.Cost(scheme));
//   ASSIGN_OR_RETURN(SchemeCost d, costs.Marginal(base_set, candidate));
//
// Not thread-safe (the cache); `model` must outlive the CostModel.
#ifndef FLEETTUNE_ENGINE_SEARCH_COST_MODEL_H_
#define FLEETTUNE_ENGINE_SEARCH_COST_MODEL_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/autodiff/autodiff.h"
#include "engine/models/model.h"
#include "engine/scheme/scheme.h"
#include "engine/search/candidates.h"

namespace fleettune::engine::search {

struct DeviceClass {
  std::string name = "generic";
  int threads = 1;
  double flops_per_second = 1e9;  // sustained training throughput (> 0)
};

struct SchemeCost {
  int64_t memory_bytes = 0;  // TrainingBytes; a difference for Marginal
  int64_t flops_per_step = 0;
  double step_seconds = 0.0;  // flops_per_step / flops_per_second
};

class CostModel {
 public:
  CostModel(const models::Model& model, DeviceClass device,
            autodiff::OptimizerConfig optimizer = autodiff::OptimizerConfig::Sgd({0.01f, 0.9f}))
      : model_(model), device_(std::move(device)), optimizer_(optimizer) {}

  // The compiled cost of `scheme`. InvalidArgument as ResolveScheme /
  // CompileTraining (unknown tensor, nothing trained, threads < 1) or for a
  // non-positive throughput.
  absl::StatusOr<SchemeCost> Cost(const scheme::UpdateScheme& scheme);
  // The cost of a candidate set (ToScheme's errors included).
  absl::StatusOr<SchemeCost> Cost(const std::vector<Candidate>& set);
  // cost(base + candidate) − cost(base); an empty base costs what training
  // nothing would: CompileTraining rejects it, so `candidate` alone is
  // returned whole. A candidate on a tensor of `base` replaces that entry.
  absl::StatusOr<SchemeCost> Marginal(const std::vector<Candidate>& base,
                                      const Candidate& candidate);

  // Memory to run the forward pass and loss alone (inference at the
  // training batch): arena, scratch and weights. What a scheme costs beyond
  // this (saved activations, gradients, optimizer state) is its training
  // overhead. Cached.
  absl::StatusOr<int64_t> InferenceBytes();

  size_t cache_size() const { return cache_.size(); }
  int64_t compiles() const { return compiles_; }
  const DeviceClass& device() const { return device_; }

 private:
  const models::Model& model_;
  DeviceClass device_;
  autodiff::OptimizerConfig optimizer_;
  std::map<std::string, SchemeCost> cache_;
  int64_t inference_bytes_ = -1;
  int64_t compiles_ = 0;
};

// A memory budget that allows `fraction` of full fine-tuning's training
// overhead on top of inference:
//   InferenceBytes + fraction × (Cost(full).memory_bytes − InferenceBytes).
// This is how "a third of full fine-tuning's training memory" is read: the
// weights and the forward pass are paid by inference already (for a small
// MLP the weights alone exceed a third of full fine-tuning's total), and what
// a scheme chooses is what backpropagation adds. InvalidArgument for a
// fraction outside (0, 1].
absl::StatusOr<int64_t> OverheadFractionBudget(CostModel& costs, const models::Model& model,
                                               double fraction);

}  // namespace fleettune::engine::search

#endif  // FLEETTUNE_ENGINE_SEARCH_COST_MODEL_H_
