// The coordinator's plan compiler: one job, one device class → one CompiledPlan, cached by
// content.
//
//   PlanCompiler compiler;
//   ASSIGN_OR_RETURN(const v1::DeviceClass* rpi4, registry.Find("rpi4"));
//   ASSIGN_OR_RETURN(CompiledClassPlan plan, compiler.Compile(job_spec, *rpi4));
//   // plan.plan_bytes: a serialized v1::CompiledPlan, addressed by plan.summary.plan_digest.
//
// Compile() validates the request (the spec is untrusted operator input; base weights are
// parsed and checked tensor by tensor), builds the model's training graph for the job's batch
// size, picks the update scheme, measures the plan's memory (static arena + weights +
// optimizer state) and refuses a plan that does not fit the class's
// training_memory_budget_bytes. scheme.preset names a preset of engine/scheme/scheme.h;
// scheme.scheme is an explicit per-tensor UpdateScheme (FROZEN / FULL / a fraction of output
// channels), checked against the model, labelled by its name ("custom" when unnamed), and
// cached by its exact content. With scheme.fit_class_budget it tries, in order, "full",
// "last-k:N" for N = layers-1 down to 1, and "bias-only", and takes the first that fits: the
// one that trains most within the budget.
//
// Plans are deterministic: the same request gives byte-identical plan_bytes, hence the same
// digest. The cache key is the SHA-256 of a canonical encoding of exactly the inputs that
// shape the plan: the model (architecture, layer sizes, SHA-256 of the base weights), the
// optimizer and its hyper-parameters, the batch size, the scheme, and the class's name, arch,
// ISA, accelerator, threads and budget. Job name, dataset, epochs, seeds and targets do not
// change the plan and so share one cache entry.
//
// Thread-safety: Compile() may be called from any thread. Concurrent identical requests
// compile once; the others wait for that result.
#ifndef FLEETTUNE_SERVER_COMPILER_PLAN_COMPILER_H_
#define FLEETTUNE_SERVER_COMPILER_PLAN_COMPILER_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "proto/fleettune/v1/device.pb.h"
#include "proto/fleettune/v1/job.pb.h"

namespace fleettune::server {

// Largest base-weights blob a ModelSpec may carry.
inline constexpr int64_t kMaxBaseWeightsBytes = int64_t{256} << 20;
// Bounds on hyper_parameters.batch_size.
inline constexpr int32_t kMaxBatchSize = 65536;

struct CompiledClassPlan {
  // plan_digest = Sha256Hex(plan_bytes); byte figures as in PlanMetadata.
  v1::PlanSummary summary;
  // A serialized v1::CompiledPlan (deterministic serialization).
  std::string plan_bytes;
};

class PlanCompiler {
 public:
  struct Options {
    // Successful plans kept; the oldest is dropped first. 0 disables the cache.
    size_t max_cached_plans = 256;
  };

  PlanCompiler() : PlanCompiler(Options{}) {}
  explicit PlanCompiler(Options options) : options_(options) {}

  PlanCompiler(const PlanCompiler&) = delete;
  PlanCompiler& operator=(const PlanCompiler&) = delete;

  // -------------------------------------------------------------------------
  // Compile()
  //
  // The plan of `spec` for `device_class`, from the cache when an identical request was
  // compiled before. Failures are not cached.
  // Errors (messages name the field or tensor, e.g. "base_model.safetensors_weights: tensor
  // 'fc1.weight' is f32[256, 780], expected f32[256, 784]"):
  //   InvalidArgument     an invalid spec: architecture other than "mlp", bad layer_sizes,
  //                       weights that do not parse, miss or add tensors, have the wrong
  //                       shape or dtype, hold non-finite values, or exceed
  //                       kMaxBaseWeightsBytes; optimizer unset; learning_rate not > 0;
  //                       momentum outside [0, 1) (SGD) or non-zero (AdamW); weight_decay < 0;
  //                       batch_size outside [1, kMaxBatchSize]; epochs < 1; scheme unset or
  //                       an unknown preset; an explicit scheme without rules, with an
  //                       unset mode, or that ResolveScheme rejects (an unknown tensor,
  //                       CHANNELS on a bias, a bad fraction, ...; "scheme.scheme: ..." naming
  //                       the tensor). Also an invalid device class (ValidateDeviceClass).
  //   Unimplemented       base_model.registered_model (not supported yet).
  //   FailedPrecondition  the plan does not fit the class's budget, with the figures:
  //                       "scheme 'full' needs 2.9 MiB (3090896 bytes) on class rpi4,
  //                       970.5 KiB (993744 bytes) over its 2 MiB (2097152 bytes) budget
  //                       (arena ... + weights ... + optimizer state ...)"; with
  //                       fit_class_budget, when no scheme fits (naming the smallest need).
  absl::StatusOr<CompiledClassPlan> Compile(const v1::JobSpec& spec,
                                            const v1::DeviceClass& device_class)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Compilations started so far (cache misses), for tests and metrics.
  int compilations() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Entry {
    bool done = false;
    absl::StatusOr<CompiledClassPlan> result;
  };

  const Options options_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> cache_ ABSL_GUARDED_BY(mu_);
  // Keys of completed, cached plans, oldest first.
  std::deque<std::string> order_ ABSL_GUARDED_BY(mu_);
  int compilations_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace fleettune::server

#endif  // FLEETTUNE_SERVER_COMPILER_PLAN_COMPILER_H_
