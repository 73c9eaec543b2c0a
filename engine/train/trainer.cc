#include "engine/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>
#include <optional>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::train {

absl::StatusOr<scheme::ResolvedScheme> ResolvePreset(const models::Model& model,
                                                     absl::string_view preset) {
  ASSIGN_OR_RETURN(scheme::UpdateScheme s, scheme::PresetScheme(model, preset));
  return scheme::ResolveScheme(model, s);
}

absl::StatusOr<std::vector<std::string>> SelectTrainable(const models::Model& model,
                                                         absl::string_view scheme) {
  ASSIGN_OR_RETURN(scheme::ResolvedScheme resolved, ResolvePreset(model, scheme));
  return resolved.TrainableNames();
}

namespace {

absl::StatusOr<Graph> BuildFromParams(const models::Model& model,
                                      const std::vector<std::pair<std::string, int64_t>>& params,
                                      const autodiff::OptimizerConfig& optimizer) {
  Graph graph = model.graph;
  std::vector<autodiff::TrainableParam> trainable;
  for (const auto& [name, rows] : params) {
    std::optional<ValueId> id = graph.FindByName(name);
    if (!id.has_value() || graph.node(*id).op != OpKind::kParameter) {
      return absl::InvalidArgumentError(absl::StrCat("the model has no weight '", name, "'"));
    }
    trainable.push_back({*id, rows});
  }
  ASSIGN_OR_RETURN(autodiff::GradientMap grads,
                   autodiff::BuildPartialBackward(graph, model.loss, trainable));
  RETURN_IF_ERROR(autodiff::AddOptimizerUpdates(graph, grads, optimizer));
  return graph;
}

}  // namespace

absl::StatusOr<Graph> BuildSchemeTrainingGraph(const models::Model& model,
                                               const scheme::ResolvedScheme& scheme,
                                               const autodiff::OptimizerConfig& optimizer) {
  std::vector<std::pair<std::string, int64_t>> params;
  for (const scheme::ParamPlan& p : scheme.params) {
    if (p.mode == scheme::UpdateMode::kFull) params.push_back({p.name, 0});
    if (p.mode == scheme::UpdateMode::kChannels) params.push_back({p.name, p.rows});
  }
  if (params.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("scheme '", scheme.name, "' trains nothing"));
  }
  return BuildFromParams(model, params, optimizer);
}

absl::StatusOr<Graph> BuildTrainingGraph(const models::Model& model,
                                         const std::vector<std::string>& trainable,
                                         const autodiff::OptimizerConfig& optimizer) {
  std::vector<std::pair<std::string, int64_t>> params;
  for (const std::string& name : trainable) params.push_back({name, 0});
  return BuildFromParams(model, params, optimizer);
}

passes::PassOptions DefaultTrainingPasses() {
  passes::PassOptions options;
  options.fold_constants = false;
  return options;
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const ModelBuilder& build,
                                                         runtime::ParameterStore* params,
                                                         const TrainerOptions& options) {
  std::unique_ptr<Trainer> t(new Trainer());
  t->options_ = options;
  ASSIGN_OR_RETURN(t->train_model_, build(options.batch, models::Mode::kTrain));
  ASSIGN_OR_RETURN(t->eval_model_, build(options.eval_batch, models::Mode::kEval));
  Graph train_graph;
  if (options.scheme.has_value()) {
    ASSIGN_OR_RETURN(train_graph,
                     BuildSchemeTrainingGraph(t->train_model_, *options.scheme, options.optimizer));
  } else {
    ASSIGN_OR_RETURN(train_graph,
                     BuildTrainingGraph(t->train_model_, options.trainable, options.optimizer));
  }
  passes::PassOptions pass_options = options.passes;
  pass_options.measure_memory = false;
  ASSIGN_OR_RETURN(passes::PassReport report, passes::RunPasses(train_graph, pass_options));
  t->train_loss_ = report.Map(t->train_model_.loss);
  runtime::CompileOptions compile;
  compile.threads = options.threads;
  compile.fold_constants = pass_options.fold_constants;
  compile.in_place = pass_options.in_place;
  ASSIGN_OR_RETURN(t->train_, runtime::Executable::Compile(train_graph, params, compile));
  // The evaluation graph shares the weights the training graph updates: no
  // folded constants there, whatever the options say (they would go stale).
  compile.fold_constants = false;
  ASSIGN_OR_RETURN(t->eval_, runtime::Executable::Compile(t->eval_model_.graph, params, compile));
  const Shape& x = t->train_model_.graph.type(t->train_model_.input).shape;
  t->sample_size_ = NumElements(x) / x[0];
  t->classes_ = t->train_model_.graph.type(t->train_model_.logits).shape.back();
  t->rng_.seed(options.seed);
  return t;
}

absl::Status Trainer::CheckData(const Tensor& images, const Tensor& labels) const {
  if (images.dtype() != DType::kF32 || images.shape().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("images must be f32 [N, ...], got ", TypeToString(images.type())));
  }
  const int64_t n = images.shape()[0];
  if (n == 0 || images.num_elements() / n != sample_size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("images ", TypeToString(images.type()), " do not have ", sample_size_,
                     " values per sample as the model input expects"));
  }
  if (labels.type() != TensorType{DType::kI32, {n}}) {
    return absl::InvalidArgumentError(
        absl::StrCat("labels must be i32[", n, "], got ", TypeToString(labels.type())));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (labels.i32()[i] < 0 || labels.i32()[i] >= classes_) {
      return absl::InvalidArgumentError(absl::StrCat("label ", labels.i32()[i], " of sample ", i,
                                                     " is outside [0, ", classes_, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<EpochStats> Trainer::TrainEpoch(const Tensor& images, const Tensor& labels,
                                               const ProgressFn& progress) {
  RETURN_IF_ERROR(CheckData(images, labels));
  const int64_t n = images.shape()[0];
  const int64_t batch = options_.batch;
  if (static_cast<int64_t>(order_.size()) != n) {
    order_.resize(n);
    std::iota(order_.begin(), order_.end(), 0);
  }
  std::shuffle(order_.begin(), order_.end(), rng_);
  ASSIGN_OR_RETURN(TensorView x, train_->Input("x"));
  ASSIGN_OR_RETURN(TensorView y, train_->Input("labels"));
  ASSIGN_OR_RETURN(TensorView loss_view, train_->Output(train_loss_));
  EpochStats stats;
  const int64_t steps = n / batch;
  double loss_sum = 0.0;
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t r = 0; r < batch; ++r) {
      const int64_t i = order_[s * batch + r];
      std::memcpy(x.f32() + r * sample_size_, images.f32() + i * sample_size_,
                  sample_size_ * sizeof(float));
      y.i32()[r] = labels.i32()[i];
    }
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

absl::StatusOr<double> Trainer::Evaluate(const Tensor& images, const Tensor& labels) {
  RETURN_IF_ERROR(CheckData(images, labels));
  const int64_t n = images.shape()[0];
  const int64_t batch = options_.eval_batch;
  ASSIGN_OR_RETURN(TensorView x, eval_->Input("x"));
  ASSIGN_OR_RETURN(TensorView y, eval_->Input("labels"));
  ASSIGN_OR_RETURN(TensorView logits, eval_->Output(eval_model_.logits));
  int64_t correct = 0;
  for (int64_t start = 0; start < n; start += batch) {
    const int64_t rows = std::min(batch, n - start);
    std::memcpy(x.f32(), images.f32() + start * sample_size_, rows * sample_size_ * sizeof(float));
    std::memcpy(y.i32(), labels.i32() + start, rows * sizeof(int32_t));
    for (int64_t r = rows; r < batch; ++r) y.i32()[r] = CrossEntropyAttrs{}.ignore_index;
    RETURN_IF_ERROR(eval_->Run());
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = logits.f32() + r * classes_;
      const int64_t pred = std::max_element(row, row + classes_) - row;
      correct += pred == labels.i32()[start + r];
    }
  }
  return static_cast<double>(correct) / static_cast<double>(n);
}

}  // namespace fleettune::engine::train
