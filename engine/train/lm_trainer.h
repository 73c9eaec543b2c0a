// A training loop for causal language models (models/llama.h) over
// next-token windows (text/fortunes.h's LanguageModelData).
//
//   LmTrainerOptions options;  // AdamW, every weight trained
//   options.batch = 16;
//   ASSIGN_OR_RETURN(auto trainer, LmTrainer::Create(config, &params, options));
//   ASSIGN_OR_RETURN(double before, trainer->Evaluate(split.validation));
//   ASSIGN_OR_RETURN(EpochStats s, trainer->TrainEpoch(split.train));
//   ASSIGN_OR_RETURN(double after, trainer->Evaluate(split.validation));
//
// Create() compiles two executables over one ParameterStore: the training
// graph (forward, pruned backward, optimizer updates) for options.batch
// windows and a forward-only evaluation graph for options.eval_batch windows.
// Windows are copied into the arena; the step loop does not allocate. The
// window order is shuffled by a seeded generator, so a seed fixes the run.
// Not thread-safe.
#ifndef FLEETTUNE_ENGINE_TRAIN_LM_TRAINER_H_
#define FLEETTUNE_ENGINE_TRAIN_LM_TRAINER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/autodiff/autodiff.h"
#include "engine/models/llama.h"
#include "engine/runtime/executable.h"
#include "engine/text/fortunes.h"
#include "engine/train/trainer.h"

namespace fleettune::engine::train {

struct LmTrainerOptions {
  int64_t batch = 16;       // training windows per step (overrides the config's)
  int64_t eval_batch = 16;  // validation windows per Run()
  uint64_t seed = 0;        // shuffling
  int threads = 1;
  // AdamW with lr 1e-3, weight decay 0.01 (torch.optim.AdamW's defaults).
  autodiff::OptimizerConfig optimizer = autodiff::OptimizerConfig::AdamW(AdamWAttrs{});
  // What trains: `scheme` when set (resolved against a model of the same
  // config; partial channels included), else every element of the
  // `trainable` weights; both unset trains every weight of the model.
  std::optional<scheme::ResolvedScheme> scheme;
  std::vector<std::string> trainable;
  // Graph passes over the training graph, as for Trainer.
  passes::PassOptions passes = DefaultTrainingPasses();
};

class LmTrainer {
 public:
  // InvalidArgument for a bad config (models::BuildLlama), a non-positive
  // batch or an unknown trainable name.
  static absl::StatusOr<std::unique_ptr<LmTrainer>> Create(const models::LlamaConfig& config,
                                                           runtime::ParameterStore* params,
                                                           const LmTrainerOptions& options);

  // One pass over a shuffled order of the windows; the last partial batch is
  // dropped. data: inputs and targets i32 [N, seq_len] with ids in
  // [0, vocab). InvalidArgument on mismatched data (wrong shape or dtype, an
  // id out of range, fewer windows than one batch).
  absl::StatusOr<EpochStats> TrainEpoch(const text::LanguageModelData& data,
                                        const ProgressFn& progress = nullptr);

  // Mean over the windows of each window's mean next-token loss (nats). The
  // last batch is padded with ignored rows. InvalidArgument as TrainEpoch(),
  // except that any N >= 1 is fine.
  absl::StatusOr<double> Evaluate(const text::LanguageModelData& data);

  const runtime::Executable& train_executable() const { return *train_; }
  const runtime::Executable& eval_executable() const { return *eval_; }
  const std::vector<std::string>& trainable() const { return options_.trainable; }

 private:
  LmTrainer() = default;
  absl::Status CheckData(const text::LanguageModelData& data) const;

  models::LlamaConfig config_;
  LmTrainerOptions options_;
  models::LlamaModel train_model_, eval_model_;
  ValueId train_loss_ = kNoValue;  // the loss in the optimized training graph
  std::unique_ptr<runtime::Executable> train_, eval_;
  std::mt19937_64 rng_;
  std::vector<int64_t> order_;
};

}  // namespace fleettune::engine::train

#endif  // FLEETTUNE_ENGINE_TRAIN_LM_TRAINER_H_
