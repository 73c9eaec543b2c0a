// Step time of the small CNN (engine/models/cnn.h): one training step
// (forward with batch-statistics BatchNorm, pruned backward, SGD-momentum
// updates, running-statistics updates) and one evaluation forward.
//
//   bazel run -c opt //bench:cnn_bench -- --threads=2 --batch=64 --profile
//
// ms_per_step is the median over --steps after --warmup; --profile prints the
// time per op kind to stderr.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/base/status_macros.h"
#include "engine/models/cnn.h"
#include "engine/train/trainer.h"

ABSL_FLAG(int, threads, 2, "GEMM threads.");
ABSL_FLAG(int, batch, 64, "Training batch size.");
ABSL_FLAG(int, eval_batch, 500, "Evaluation batch size.");
ABSL_FLAG(std::string, channels, "32,64,64", "Conv block channels.");
ABSL_FLAG(bool, global_pool, false, "Global average pooling head.");
ABSL_FLAG(int, steps, 30, "Timed steps per mode.");
ABSL_FLAG(int, warmup, 3, "Untimed steps per mode.");
ABSL_FLAG(bool, profile, false, "Print time per op kind to stderr (adds timer overhead).");

namespace fleettune::engine {
namespace {

absl::Status RunMode(models::CnnConfig config, models::Mode mode) {
  config.mode = mode;
  const bool train = mode == models::Mode::kTrain;
  config.batch = train ? absl::GetFlag(FLAGS_batch) : absl::GetFlag(FLAGS_eval_batch);
  ASSIGN_OR_RETURN(models::Model model, models::BuildCnn(config));
  Graph graph = model.graph;
  if (train) {
    ASSIGN_OR_RETURN(std::vector<std::string> trainable, train::SelectTrainable(model, "full"));
    ASSIGN_OR_RETURN(
        graph, train::BuildTrainingGraph(model, trainable,
                                         autodiff::OptimizerConfig::Sgd({0.01f, 0.9f, 0.0f})));
  }
  runtime::ParameterStore params;
  RETURN_IF_ERROR(models::InitializeCnn(config, 0, &params));
  runtime::CompileOptions options;
  options.threads = absl::GetFlag(FLAGS_threads);
  options.profile = absl::GetFlag(FLAGS_profile);
  ASSIGN_OR_RETURN(auto exe, runtime::Executable::Compile(graph, &params, options));
  ASSIGN_OR_RETURN(TensorView x, exe->Input("x"));
  ASSIGN_OR_RETURN(TensorView labels, exe->Input("labels"));
  std::mt19937_64 rng(0);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (int64_t i = 0; i < x.num_elements(); ++i) x.f32()[i] = u(rng);
  for (int64_t i = 0; i < labels.num_elements(); ++i) {
    labels.i32()[i] = static_cast<int32_t>(rng() % config.classes);
  }
  for (int i = 0; i < absl::GetFlag(FLAGS_warmup); ++i) RETURN_IF_ERROR(exe->Run());
  exe->ResetProfile();
  std::vector<double> ms;
  for (int i = 0; i < absl::GetFlag(FLAGS_steps); ++i) {
    const auto start = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(exe->Run());
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  const auto& mem = exe->memory();
  std::printf(
      "{\"framework\": \"fleettune\", \"model\": \"%s\", \"mode\": \"%s\", \"ms_per_step\": %.3f, "
      "\"arena_bytes\": %zu, \"scratch_bytes\": %zu, \"threads\": %d, \"batch\": %lld}\n",
      models::CnnName(config).c_str(), train ? "train" : "eval", ms[ms.size() / 2], mem.arena_bytes,
      mem.scratch_bytes, absl::GetFlag(FLAGS_threads), static_cast<long long>(config.batch));
  std::fflush(stdout);
  if (options.profile) {
    std::fprintf(stderr, "%s:\n%s", train ? "train" : "eval", exe->ProfileReport().c_str());
  }
  return absl::OkStatus();
}

absl::Status Main() {
  models::CnnConfig config;
  config.channels.clear();
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_channels), ',')) {
    int64_t c = 0;
    if (!absl::SimpleAtoi(part, &c)) {
      return absl::InvalidArgumentError(std::string("bad channel count ") + std::string(part));
    }
    config.channels.push_back(c);
  }
  config.global_pool = absl::GetFlag(FLAGS_global_pool);
  RETURN_IF_ERROR(RunMode(config, models::Mode::kTrain));
  return RunMode(config, models::Mode::kEval);
}

}  // namespace
}  // namespace fleettune::engine

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  absl::Status status = fleettune::engine::Main();
  if (!status.ok()) {
    std::fprintf(stderr, "cnn_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
