// Runs one assignment's compiled plan on the device's private data.
//
//   PlanRunner::Inputs in;  in.plan_bytes = ...; in.base_weights = ...;
//   in.assignment = assignment;  in.data = &split;  in.state_dir = dir;
//   ASSIGN_OR_RETURN(v1::MetricsReport final_report,
//                    RunPlan(in, [&](const v1::MetricsReport& r) { Send(r); }, &cancelled));
//
// What it does, in order:
//  1. Parses and verifies the plan (untrusted), binds the base weights, and
//     checks that arena + weights + optimizer state fit the class's memory
//     budget (ResourceExhausted otherwise: the engine's memory is static, so
//     this is the true peak of training).
//  2. Measures accuracy on the local hold-out split with the base weights.
//  3. Measures the dense plan (full fine-tuning, derived from the same forward
//     graph) against this plan for a few steps on a copy of the weights, when
//     the dense plan fits the budget: the speedup and memory saving reported.
//  4. Trains for the assignment's epochs, checkpointing weights, optimizer
//     state and position every `checkpoint_every_steps` steps into the state
//     directory and calling `report` with a metrics report then; a restart
//     with the same state directory resumes from the last checkpoint.
//  5. Measures hold-out accuracy again, saves the personalized weights to
//     `<state_dir>/personalized/<job_id>.safetensors`, and returns the final
//     report. The weights never leave the device.
// Stops early (Cancelled) when `*cancelled` becomes true.
#ifndef FLEETTUNE_AGENT_RUNNER_PLAN_RUNNER_H_
#define FLEETTUNE_AGENT_RUNNER_PLAN_RUNNER_H_

#include <atomic>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "agent/data/local_dataset.h"
#include "proto/fleettune/v1/job.pb.h"

namespace fleettune::agent {

struct PlanRunInputs {
  std::string plan_bytes;    // serialized v1::CompiledPlan
  std::string base_weights;  // safetensors; empty = seeded initialization
  v1::Assignment assignment;
  const SplitData* data = nullptr;
  std::string state_dir;
  int checkpoint_every_steps = 20;
  int threads = 1;
};

using ReportFn = std::function<void(const v1::MetricsReport&)>;

// The final report (also passed to `report`). Errors: InvalidArgument for a
// plan that does not verify or weights that do not fit it, or data whose
// shape does not match the plan's input; ResourceExhausted when the plan
// exceeds the budget; Cancelled.
absl::StatusOr<v1::MetricsReport> RunPlan(const PlanRunInputs& inputs, const ReportFn& report,
                                          const std::atomic<bool>* cancelled);

// Where RunPlan keeps the personalized weights of `job_id`.
std::string PersonalizedWeightsPath(const std::string& state_dir, const std::string& job_id);

}  // namespace fleettune::agent

#endif  // FLEETTUNE_AGENT_RUNNER_PLAN_RUNNER_H_
