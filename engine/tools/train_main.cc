// fleettune-train: trains a model on a dataset with the embedded engine.
//
//   fleettune-train --dataset=fashion-mnist --model=mlp --hidden=256,128
//       --epochs=5 --scheme=full --optimizer=sgd --lr=0.05 --momentum=0.9
//
// Shows a progress bar with the running loss, then test accuracy, ms/step
// (time inside the engine's step) and the peak arena bytes of the training
// plan. Exits non-zero with a message on any error.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/base/status_macros.h"
#include "engine/io/idx.h"
#include "engine/models/mlp.h"
#include "engine/train/trainer.h"

ABSL_FLAG(std::string, dataset, "fashion-mnist", "Dataset: fashion-mnist.");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist",
          "Directory with the dataset's gzip'd IDX files.");
ABSL_FLAG(std::string, model, "mlp", "Model: mlp.");
ABSL_FLAG(std::string, hidden, "256,128", "Hidden layer sizes of the MLP.");
ABSL_FLAG(std::string, scheme, "full",
          "Update scheme: full, bias-only, last-k:N or freeze:LAYER[,LAYER...].");
ABSL_FLAG(std::string, optimizer, "sgd", "sgd or adamw.");
ABSL_FLAG(double, lr, 0.05, "Learning rate.");
ABSL_FLAG(double, momentum, 0.9, "SGD momentum.");
ABSL_FLAG(double, weight_decay, 0.0, "Weight decay (L2 for SGD, decoupled for AdamW).");
ABSL_FLAG(int, epochs, 5, "Passes over the training set.");
ABSL_FLAG(int, batch, 64, "Training batch size.");
ABSL_FLAG(int, threads, 2, "Threads for the engine's GEMM.");
ABSL_FLAG(uint64_t, seed, 0, "Seed for weight initialization and shuffling.");
ABSL_FLAG(int64_t, train_limit, 0, "Use only the first N training samples (0 = all).");

namespace fleettune::engine {
namespace {

absl::StatusOr<std::vector<int64_t>> ParseSizes(const std::string& text) {
  std::vector<int64_t> sizes;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad layer size '", part, "' in '", text, "'"));
    }
    sizes.push_back(v);
  }
  return sizes;
}

// Keeps the first `limit` samples of a dataset split.
absl::StatusOr<Tensor> Head(const Tensor& t, int64_t limit) {
  if (limit <= 0 || limit >= t.shape()[0]) return t;
  Shape shape = t.shape();
  const int64_t per_sample = t.num_elements() / shape[0];
  shape[0] = limit;
  Tensor out(t.dtype(), shape);
  std::memcpy(out.raw(), t.raw(), limit * per_sample * 4);
  return out;
}

class ProgressBar {
 public:
  explicit ProgressBar(bool tty) : tty_(tty) {}
  void Update(int epoch, int epochs, int64_t step, int64_t total, float loss) {
    smoothed_ = step == 0 ? loss : 0.95f * smoothed_ + 0.05f * loss;
    const bool last = step + 1 == total;
    if (!tty_ && !last) return;
    if (tty_ && !last && step % 20 != 0) return;
    const int width = 30;
    const int filled = static_cast<int>(width * (step + 1) / total);
    std::fprintf(stderr, "%sepoch %d/%d [%s%s] %3d%%  loss %.4f%s", tty_ ? "\r" : "", epoch, epochs,
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                 static_cast<int>(100 * (step + 1) / total), smoothed_, last ? "\n" : "");
    std::fflush(stderr);
  }

 private:
  bool tty_;
  float smoothed_ = 0.0f;
};

absl::Status Main() {
  if (absl::GetFlag(FLAGS_dataset) != "fashion-mnist") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown dataset '", absl::GetFlag(FLAGS_dataset), "'"));
  }
  if (absl::GetFlag(FLAGS_model) != "mlp") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown model '", absl::GetFlag(FLAGS_model), "'"));
  }
  if (absl::GetFlag(FLAGS_epochs) <= 0 || absl::GetFlag(FLAGS_batch) <= 0) {
    return absl::InvalidArgumentError("--epochs and --batch must be positive");
  }
  ASSIGN_OR_RETURN(io::ImageClassificationData data,
                   io::LoadFashionMnist(absl::GetFlag(FLAGS_data_dir)));
  ASSIGN_OR_RETURN(Tensor train_images, Head(data.train_images, absl::GetFlag(FLAGS_train_limit)));
  ASSIGN_OR_RETURN(Tensor train_labels, Head(data.train_labels, absl::GetFlag(FLAGS_train_limit)));

  ASSIGN_OR_RETURN(std::vector<int64_t> hidden, ParseSizes(absl::GetFlag(FLAGS_hidden)));
  models::MlpConfig config;
  config.sizes = {train_images.num_elements() / train_images.shape()[0]};
  config.sizes.insert(config.sizes.end(), hidden.begin(), hidden.end());
  config.sizes.push_back(data.num_classes);
  auto build = [&](int64_t batch) {
    models::MlpConfig c = config;
    c.batch = batch;
    return models::BuildMlp(c);
  };

  runtime::ParameterStore params;
  RETURN_IF_ERROR(models::InitializeMlp(config, absl::GetFlag(FLAGS_seed), &params));
  ASSIGN_OR_RETURN(models::Model probe, build(1));

  train::TrainerOptions options;
  options.batch = absl::GetFlag(FLAGS_batch);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.threads = absl::GetFlag(FLAGS_threads);
  ASSIGN_OR_RETURN(options.trainable, train::SelectTrainable(probe, absl::GetFlag(FLAGS_scheme)));
  const std::string opt = absl::GetFlag(FLAGS_optimizer);
  const float lr = static_cast<float>(absl::GetFlag(FLAGS_lr));
  const float wd = static_cast<float>(absl::GetFlag(FLAGS_weight_decay));
  if (opt == "sgd") {
    options.optimizer =
        autodiff::OptimizerConfig::Sgd({lr, static_cast<float>(absl::GetFlag(FLAGS_momentum)), wd});
  } else if (opt == "adamw") {
    AdamWAttrs a;
    a.lr = lr;
    a.weight_decay = wd;
    options.optimizer = autodiff::OptimizerConfig::AdamW(a);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown optimizer '", opt, "'"));
  }
  ASSIGN_OR_RETURN(auto trainer, train::Trainer::Create(build, &params, options));

  const auto& mem = trainer->train_executable().memory();
  std::printf("fleettune-train: MLP %s on %s (%lld train / %lld test), scheme %s, %s\n",
              absl::StrJoin(config.sizes, "-").c_str(), absl::GetFlag(FLAGS_dataset).c_str(),
              static_cast<long long>(train_images.shape()[0]),
              static_cast<long long>(data.test_images.shape()[0]),
              absl::GetFlag(FLAGS_scheme).c_str(), opt.c_str());
  std::printf("trainable: %s\n", absl::StrJoin(options.trainable, ", ").c_str());
  std::fflush(stdout);

  ASSIGN_OR_RETURN(double before, trainer->Evaluate(data.test_images, data.test_labels));
  ProgressBar bar(isatty(STDERR_FILENO));
  double seconds = 0.0;
  int64_t steps = 0;
  const int epochs = absl::GetFlag(FLAGS_epochs);
  for (int e = 1; e <= epochs; ++e) {
    ASSIGN_OR_RETURN(
        train::EpochStats stats,
        trainer->TrainEpoch(train_images, train_labels, [&](int64_t s, int64_t total, float loss) {
          bar.Update(e, epochs, s, total, loss);
        }));
    seconds += stats.step_seconds;
    steps += stats.steps;
    ASSIGN_OR_RETURN(double acc, trainer->Evaluate(data.test_images, data.test_labels));
    std::printf("epoch %d: mean loss %.4f, test accuracy %.2f%%\n", e, stats.mean_loss,
                100.0 * acc);
    std::fflush(stdout);
  }
  ASSIGN_OR_RETURN(double after, trainer->Evaluate(data.test_images, data.test_labels));
  std::printf("test accuracy: %.2f%% (before training %.2f%%)\n", 100.0 * after, 100.0 * before);
  std::printf("ms/step: %.3f over %lld steps, %d threads\n", steps ? 1000.0 * seconds / steps : 0.0,
              static_cast<long long>(steps), options.threads);
  std::printf("peak arena bytes: %zu (weights %zu, optimizer state %zu)\n", mem.arena_bytes,
              mem.weight_bytes, mem.optimizer_state_bytes);
  return absl::OkStatus();
}

}  // namespace
}  // namespace fleettune::engine

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Trains a model on a dataset with the fleettune engine.");
  absl::ParseCommandLine(argc, argv);
  absl::Status status = fleettune::engine::Main();
  if (!status.ok()) {
    std::fprintf(stderr, "fleettune-train: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
