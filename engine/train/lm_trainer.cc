#include "engine/train/lm_trainer.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::train {

absl::StatusOr<std::unique_ptr<LmTrainer>> LmTrainer::Create(const models::LlamaConfig& config,
                                                             runtime::ParameterStore* params,
                                                             const LmTrainerOptions& options) {
  if (options.batch <= 0 || options.eval_batch <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("batch ", options.batch, " and eval_batch ",
                                                   options.eval_batch, " must be positive"));
  }
  std::unique_ptr<LmTrainer> t(new LmTrainer());
  t->config_ = config;
  t->options_ = options;
  models::LlamaConfig c = config;
  c.batch = options.batch;
  ASSIGN_OR_RETURN(t->train_model_, models::BuildLlama(c));
  c.batch = options.eval_batch;
  ASSIGN_OR_RETURN(t->eval_model_, models::BuildLlama(c));
  Graph train_graph;
  if (options.scheme.has_value()) {
    t->options_.trainable = options.scheme->TrainableNames();
    ASSIGN_OR_RETURN(train_graph, BuildSchemeTrainingGraph(t->train_model_.model, *options.scheme,
                                                           options.optimizer));
  } else {
    if (t->options_.trainable.empty()) {
      ASSIGN_OR_RETURN(t->options_.trainable, SelectTrainable(t->train_model_.model, "full"));
    }
    ASSIGN_OR_RETURN(train_graph, BuildTrainingGraph(t->train_model_.model, t->options_.trainable,
                                                     options.optimizer));
  }
  passes::PassOptions pass_options = options.passes;
  pass_options.measure_memory = false;
  ASSIGN_OR_RETURN(passes::PassReport report, passes::RunPasses(train_graph, pass_options));
  t->train_loss_ = report.Map(t->train_model_.model.loss);
  runtime::CompileOptions compile;
  compile.threads = options.threads;
  compile.fold_constants = pass_options.fold_constants;
  compile.in_place = pass_options.in_place;
  ASSIGN_OR_RETURN(t->train_, runtime::Executable::Compile(train_graph, params, compile));
  compile.fold_constants = false;  // the evaluation graph reads the weights training changes
  ASSIGN_OR_RETURN(t->eval_,
                   runtime::Executable::Compile(t->eval_model_.model.graph, params, compile));
  t->rng_.seed(options.seed);
  return t;
}

absl::Status LmTrainer::CheckData(const text::LanguageModelData& data) const {
  const int64_t n = data.size();
  const TensorType want{DType::kI32, {n, config_.seq_len}};
  if (n == 0 || data.inputs.type() != want || data.targets.type() != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "language-model data: inputs ", TypeToString(data.inputs.type()), " and targets ",
        TypeToString(data.targets.type()), " must both be i32[N, ", config_.seq_len, "], N >= 1"));
  }
  for (const Tensor* t : {&data.inputs, &data.targets}) {
    const int32_t* ids = t->i32();
    for (int64_t i = 0; i < t->num_elements(); ++i) {
      if (ids[i] < 0 || ids[i] >= config_.vocab) {
        return absl::InvalidArgumentError(absl::StrCat(
            "language-model data: ", t == &data.inputs ? "input" : "target", " id ", ids[i],
            " at window ", i / config_.seq_len, " is outside [0, ", config_.vocab, ")"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<EpochStats> LmTrainer::TrainEpoch(const text::LanguageModelData& data,
                                                 const ProgressFn& progress) {
  RETURN_IF_ERROR(CheckData(data));
  const int64_t n = data.size(), batch = options_.batch, t = config_.seq_len;
  if (n < batch) {
    return absl::InvalidArgumentError(
        absl::StrCat("language-model data: ", n, " windows, fewer than one batch of ", batch));
  }
  if (static_cast<int64_t>(order_.size()) != n) {
    order_.resize(n);
    std::iota(order_.begin(), order_.end(), 0);
  }
  std::shuffle(order_.begin(), order_.end(), rng_);
  ASSIGN_OR_RETURN(TensorView tokens, train_->Input("tokens"));
  ASSIGN_OR_RETURN(TensorView targets, train_->Input("targets"));
  ASSIGN_OR_RETURN(TensorView positions, train_->Input(models::kLlamaPositionsInput));
  ASSIGN_OR_RETURN(TensorView loss_view, train_->Output(train_loss_));
  EpochStats stats;
  const int64_t steps = n / batch;
  double loss_sum = 0.0;
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t r = 0; r < batch; ++r) {
      const int64_t i = order_[s * batch + r];
      std::memcpy(tokens.i32() + r * t, data.inputs.i32() + i * t, t * sizeof(int32_t));
      std::memcpy(targets.i32() + r * t, data.targets.i32() + i * t, t * sizeof(int32_t));
    }
    models::FillLlamaPositions(positions.i32(), t);
    const auto start = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(train_->Run());
    stats.step_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const float loss = loss_view.f32()[0];
    loss_sum += loss;
    if (progress) progress(s, steps, loss);
  }
  stats.steps = steps;
  stats.mean_loss = steps == 0 ? 0.0 : loss_sum / steps;
  return stats;
}

absl::StatusOr<double> LmTrainer::Evaluate(const text::LanguageModelData& data) {
  RETURN_IF_ERROR(CheckData(data));
  const int64_t n = data.size(), batch = options_.eval_batch, t = config_.seq_len;
  ASSIGN_OR_RETURN(TensorView tokens, eval_->Input("tokens"));
  ASSIGN_OR_RETURN(TensorView targets, eval_->Input("targets"));
  ASSIGN_OR_RETURN(TensorView positions, eval_->Input(models::kLlamaPositionsInput));
  ASSIGN_OR_RETURN(TensorView loss_view, eval_->Output(eval_model_.model.loss));
  // Every target of a real window counts, so a batch's loss (the mean over its
  // counted positions) times its rows sums the windows' means.
  double sum = 0.0;
  for (int64_t start = 0; start < n; start += batch) {
    const int64_t rows = std::min(batch, n - start);
    std::memcpy(tokens.i32(), data.inputs.i32() + start * t, rows * t * sizeof(int32_t));
    std::memcpy(targets.i32(), data.targets.i32() + start * t, rows * t * sizeof(int32_t));
    std::fill(tokens.i32() + rows * t, tokens.i32() + batch * t, 0);
    std::fill(targets.i32() + rows * t, targets.i32() + batch * t,
              CrossEntropyAttrs{}.ignore_index);
    models::FillLlamaPositions(positions.i32(), t);
    RETURN_IF_ERROR(eval_->Run());
    sum += static_cast<double>(loss_view.f32()[0]) * static_cast<double>(rows);
  }
  return sum / static_cast<double>(n);
}

}  // namespace fleettune::engine::train
