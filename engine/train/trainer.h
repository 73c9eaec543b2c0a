// Supervised training loop over an in-memory classification dataset.
//
//   ASSIGN_OR_RETURN(scheme::UpdateScheme s, scheme::PresetScheme(model, "pockengine"));
//   TrainerOptions opts;
//   ASSIGN_OR_RETURN(opts.scheme, scheme::ResolveScheme(model, s));  ...
//   // (or opts.trainable = names, from SelectTrainable(model, "freeze:fc1"))
//   ASSIGN_OR_RETURN(auto trainer, Trainer::Create(build_model, &params, opts));
//   ASSIGN_OR_RETURN(EpochStats s, trainer->TrainEpoch(images, labels, progress));
//   ASSIGN_OR_RETURN(double acc, trainer->Evaluate(test_images, test_labels));
//
// Create() compiles two executables over one ParameterStore: the training
// graph (forward, pruned backward, optimizer updates) and a forward-only
// evaluation graph. Batches are copied into the arena; the step loop does not
// allocate. Shuffling uses a seeded generator, so a seed fixes the run.
// Not thread-safe.
#ifndef FLEETTUNE_ENGINE_TRAIN_TRAINER_H_
#define FLEETTUNE_ENGINE_TRAIN_TRAINER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/autodiff/autodiff.h"
#include "engine/models/model.h"
#include "engine/passes/pipeline.h"
#include "engine/runtime/executable.h"
#include "engine/scheme/scheme.h"

namespace fleettune::engine::train {

// Names of the weight tensors a preset scheme trains (fully or partially),
// in layer order: a thin wrapper over scheme::PresetScheme + ResolveScheme
// (engine/scheme/scheme.h lists the presets: full, bias-only, last-k:N,
// freeze:A,B, sparse, pockengine). The names alone lose partial channels; use
// ResolvePreset and BuildSchemeTrainingGraph to keep them. InvalidArgument for an unknown scheme or
// layer, or a scheme that trains nothing.
absl::StatusOr<std::vector<std::string>> SelectTrainable(const models::Model& model,
                                                         absl::string_view scheme);

// PresetScheme + ResolveScheme.
absl::StatusOr<scheme::ResolvedScheme> ResolvePreset(const models::Model& model,
                                                     absl::string_view preset);

// Forward graph + backward for `trainable` (every element) + optimizer updates.
absl::StatusOr<Graph> BuildTrainingGraph(const models::Model& model,
                                         const std::vector<std::string>& trainable,
                                         const autodiff::OptimizerConfig& optimizer);

// Forward graph + backward for the scheme's trainable tensors, partial-channel
// ones computing and updating only their first `rows` rows (the update ops get
// attrs.rows, their optimizer state has `rows` rows). InvalidArgument if the
// model lacks a tensor of the scheme or a hyper-parameter is out of domain;
// Unimplemented as autodiff::BuildPartialBackward.
absl::StatusOr<Graph> BuildSchemeTrainingGraph(const models::Model& model,
                                               const scheme::ResolvedScheme& scheme,
                                               const autodiff::OptimizerConfig& optimizer);

// The passes trainers and compiled plans run: all but constant folding
// (folded weights would double the frozen weights' memory).
passes::PassOptions DefaultTrainingPasses();

struct TrainerOptions {
  int64_t batch = 64;
  int64_t eval_batch = 500;
  uint64_t seed = 0;
  int threads = 1;
  autodiff::OptimizerConfig optimizer;
  // What trains: `scheme` when set (partial channels included), else every
  // element of the `trainable` tensors.
  std::optional<scheme::ResolvedScheme> scheme;
  std::vector<std::string> trainable;
  // Graph passes over the training graph (engine/passes/pipeline.h), as in
  // compiled plans: every pass, constants not folded.
  passes::PassOptions passes = DefaultTrainingPasses();
};

struct EpochStats {
  double mean_loss = 0.0;
  int64_t steps = 0;
  double step_seconds = 0.0;  // time inside Executable::Run, summed
};

// Builds the model for a batch size: Mode::kTrain for the training graph,
// Mode::kEval for the evaluation graph.
using ModelBuilder = std::function<absl::StatusOr<models::Model>(int64_t batch, models::Mode mode)>;
// step (0-based), steps in the epoch, this step's loss.
using ProgressFn = std::function<void(int64_t step, int64_t total, float loss)>;

class Trainer {
 public:
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const ModelBuilder& build,
                                                         runtime::ParameterStore* params,
                                                         const TrainerOptions& options);

  // One pass over a shuffled order of the samples; the last partial batch is
  // dropped. images: [N, ...] f32 with the model's per-sample size; labels:
  // [N] i32 in [0, classes). InvalidArgument on mismatched data.
  absl::StatusOr<EpochStats> TrainEpoch(const Tensor& images, const Tensor& labels,
                                        const ProgressFn& progress = nullptr);

  // Top-1 accuracy in [0, 1] over every sample (the last batch is padded with
  // ignored rows).
  absl::StatusOr<double> Evaluate(const Tensor& images, const Tensor& labels);

  const runtime::Executable& train_executable() const { return *train_; }
  const runtime::Executable& eval_executable() const { return *eval_; }

 private:
  Trainer() = default;
  absl::Status CheckData(const Tensor& images, const Tensor& labels) const;

  TrainerOptions options_;
  models::Model train_model_, eval_model_;
  ValueId train_loss_ = kNoValue;  // train_model_.loss in the optimized training graph
  std::unique_ptr<runtime::Executable> train_, eval_;
  int64_t sample_size_ = 0;
  int64_t classes_ = 0;
  std::mt19937_64 rng_;
  std::vector<int64_t> order_;
};

}  // namespace fleettune::engine::train

#endif  // FLEETTUNE_ENGINE_TRAIN_TRAINER_H_
