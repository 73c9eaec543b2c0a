// fleettune half of the side-by-side MLP training benchmark (bench/compare_mlp.sh
// runs it next to bench/pytorch_mlp.py and prints the ratios).
//
//   bazel run -c opt //bench:mlp_bench -- --threads=2 --batch=64 --sizes=784,512,512,10
//
// Same workload as the PyTorch half: MLP with ReLU, SGD(lr=0.01, momentum=0.9),
// one fixed random batch, modes "full" and "frozen1" (first layer frozen). A
// timed step is one Executable::Run (forward, loss, pruned backward, in-place
// updates); ms_per_step is the median over --steps after --warmup. train_bytes
// is the static arena (input batch, activations, gradients, temporaries: all of
// it, not only what is saved for backward) plus optimizer state.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/base/status_macros.h"
#include "engine/models/mlp.h"
#include "engine/train/trainer.h"

ABSL_FLAG(int, threads, 2, "GEMM threads.");
ABSL_FLAG(int, batch, 64, "Batch size.");
ABSL_FLAG(std::string, sizes, "784,512,512,10", "Layer sizes.");
ABSL_FLAG(int, steps, 200, "Timed steps per mode.");
ABSL_FLAG(int, warmup, 20, "Untimed steps per mode.");
ABSL_FLAG(std::string, modes, "full,frozen1", "Modes to run.");
ABSL_FLAG(bool, profile, false, "Print time per op kind to stderr (adds timer overhead).");

namespace fleettune::engine {
namespace {

absl::Status RunMode(const models::MlpConfig& config, const std::string& mode) {
  ASSIGN_OR_RETURN(models::Model model, models::BuildMlp(config));
  ASSIGN_OR_RETURN(std::vector<std::string> trainable,
                   train::SelectTrainable(model, mode == "full" ? "full" : "freeze:fc1"));
  ASSIGN_OR_RETURN(Graph graph,
                   train::BuildTrainingGraph(model, trainable,
                                             autodiff::OptimizerConfig::Sgd({0.01f, 0.9f, 0.0f})));
  runtime::ParameterStore params;
  RETURN_IF_ERROR(models::InitializeMlp(config, 0, &params));
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
    labels.i32()[i] = static_cast<int32_t>(rng() % config.sizes.back());
  }
  for (int i = 0; i < absl::GetFlag(FLAGS_warmup); ++i) RETURN_IF_ERROR(exe->Run());
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
      "{\"framework\": \"fleettune\", \"mode\": \"%s\", \"ms_per_step\": %.4f, "
      "\"train_bytes\": %zu, \"arena_bytes\": %zu, \"optim_bytes\": %zu, \"threads\": %d, "
      "\"batch\": %d, \"sizes\": [%s]}\n",
      mode.c_str(), ms[ms.size() / 2], mem.arena_bytes + mem.optimizer_state_bytes, mem.arena_bytes,
      mem.optimizer_state_bytes, absl::GetFlag(FLAGS_threads), absl::GetFlag(FLAGS_batch),
      absl::StrJoin(config.sizes, ", ").c_str());
  std::fflush(stdout);
  if (options.profile) std::fprintf(stderr, "%s:\n%s", mode.c_str(), exe->ProfileReport().c_str());
  return absl::OkStatus();
}

absl::Status Main() {
  models::MlpConfig config;
  config.batch = absl::GetFlag(FLAGS_batch);
  config.sizes.clear();
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_sizes), ',')) {
    int64_t v;
    if (!absl::SimpleAtoi(s, &v)) return absl::InvalidArgumentError("bad --sizes");
    config.sizes.push_back(v);
  }
  for (absl::string_view mode : absl::StrSplit(absl::GetFlag(FLAGS_modes), ',')) {
    if (mode != "full" && mode != "frozen1") {
      return absl::InvalidArgumentError(absl::StrCat("unknown mode '", mode, "'"));
    }
    RETURN_IF_ERROR(RunMode(config, std::string(mode)));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace fleettune::engine

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  absl::Status s = fleettune::engine::Main();
  if (!s.ok()) {
    std::fprintf(stderr, "mlp_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
