// fleettune half of the side-by-side MobileNetV2 training benchmark
// (bench/compare_vision.sh runs it next to bench/pytorch_vision.py and prints
// the ratios).
//
//   bazel run -c opt //bench:vision_bench -- --threads=2 --batch=8 --resolution=128 --profile
//
// Workload: MobileNetV2 (engine/models/mobilenet_v2.h, torchvision's layout),
// width 1.0, input [batch, 3, resolution, resolution], 10 classes, every weight
// trained with SGD(lr=0.01, momentum=0.9), one fixed random batch. Modes:
//   full       Mode::kTrain graph: BatchNorm with batch statistics (running
//              statistics updated), classifier dropout 0.2.
//   frozen-bn  Mode::kEval graph: BatchNorm normalizes with the frozen running
//              statistics (not updated), no dropout; BatchNorm's affine weight
//              and bias are still trained (torch: model.eval() + backward).
// Weights: Kaiming-uniform-style U(±1/sqrt(fan_in)) for convolutions and the
// classifier, BatchNorm weight 1 / bias 0 / running mean 0 / running var 1.
// A timed step is one Executable::Run (forward, loss, backward, in-place
// updates); ms_per_step is the median over --steps after --warmup (ms_min the
// fastest step, steadier on a shared machine). train_bytes
// is the static arena (batch, activations, gradients, temporaries) plus
// optimizer state. --profile prints the time per op kind to stderr (summed over
// warm-up and timed steps; adds two clock reads per instruction).
// --passes picks the graph optimizations (engine/passes/pipeline.h): "none"
// (default, the unoptimized graph), "all", or a list such as
// "reorder_updates,in_place"; --pass_report prints what each did to stderr.
// Several alternatives separated by '|' ("none|fuse|all") are compiled side by
// side and timed step-interleaved (one JSON line each), so load from other
// processes affects them alike.
// --scheme picks the trained weights (train::SelectTrainable; BatchNorm
// folding needs frozen γ, e.g. --scheme=last-k:3).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/base/status_macros.h"
#include "engine/models/mobilenet_v2.h"
#include "engine/models/zoo.h"
#include "engine/passes/pipeline.h"
#include "engine/train/trainer.h"

ABSL_FLAG(int, threads, 2, "GEMM threads.");
ABSL_FLAG(int, batch, 8, "Batch size.");
ABSL_FLAG(int, resolution, 128, "Input height and width.");
ABSL_FLAG(int, classes, 10, "Number of classes.");
ABSL_FLAG(double, width_mult, 1.0, "MobileNetV2 width multiplier.");
ABSL_FLAG(int, steps, 10, "Timed steps per mode.");
ABSL_FLAG(int, warmup, 3, "Untimed steps per mode.");
ABSL_FLAG(std::string, modes, "full,frozen-bn", "Modes to run (full, frozen-bn).");
ABSL_FLAG(bool, profile, false, "Print time per op kind to stderr (adds timer overhead).");
ABSL_FLAG(std::string, passes, "none",
          "Graph passes: all, none, or a comma list; alternatives separated by '|' "
          "(none|all) are timed step-interleaved.");
ABSL_FLAG(bool, pass_report, false, "Print the pass report to stderr.");
ABSL_FLAG(std::string, scheme, "full", "Trained weights (train::SelectTrainable scheme).");

namespace fleettune::engine {
namespace {

// One compiled variant of the training step (a --passes alternative).
struct Variant {
  std::string passes;
  runtime::ParameterStore params;
  std::unique_ptr<runtime::Executable> exe;
  std::vector<double> ms;
};

absl::Status RunMode(const models::MobileNetV2Config& config, const std::string& mode) {
  const models::Mode model_mode = mode == "full" ? models::Mode::kTrain : models::Mode::kEval;
  ASSIGN_OR_RETURN(models::Model model, models::BuildMobileNetV2(config, model_mode));
  ASSIGN_OR_RETURN(std::vector<std::string> trainable,
                   train::SelectTrainable(model, absl::GetFlag(FLAGS_scheme)));
  ASSIGN_OR_RETURN(Graph unoptimized,
                   train::BuildTrainingGraph(model, trainable,
                                             autodiff::OptimizerConfig::Sgd({0.01f, 0.9f, 0.0f})));
  // Alternatives separated by '|' are compiled side by side and timed
  // step-interleaved, so load from other processes hits them alike.
  std::vector<std::unique_ptr<Variant>> variants;
  for (absl::string_view spec : absl::StrSplit(absl::GetFlag(FLAGS_passes), '|')) {
    auto v = std::make_unique<Variant>();
    v->passes = std::string(spec);
    Graph graph = unoptimized;
    ASSIGN_OR_RETURN(passes::PassOptions pass_options, passes::PassOptions::Parse(spec));
    pass_options.measure_memory = absl::GetFlag(FLAGS_pass_report);
    ASSIGN_OR_RETURN(passes::PassReport report, passes::RunPasses(graph, pass_options));
    if (absl::GetFlag(FLAGS_pass_report)) {
      std::fprintf(stderr, "%s passes=%s:\n%s", mode.c_str(), v->passes.c_str(),
                   report.ToString().c_str());
    }
    // The zoo's MobileNetV2 weights (engine/models/zoo.h), for any width and resolution.
    ASSIGN_OR_RETURN(const models::ZooEntry* zoo, models::FindZooModel("mobilenet_v2"));
    RETURN_IF_ERROR(zoo->initialize(model, 0, &v->params));
    runtime::CompileOptions options;
    options.threads = absl::GetFlag(FLAGS_threads);
    options.profile = absl::GetFlag(FLAGS_profile);
    options.in_place = pass_options.in_place;
    options.fold_constants = pass_options.fold_constants;
    ASSIGN_OR_RETURN(v->exe, runtime::Executable::Compile(graph, &v->params, options));
    ASSIGN_OR_RETURN(TensorView x, v->exe->Input("x"));
    ASSIGN_OR_RETURN(TensorView labels, v->exe->Input("labels"));
    std::mt19937_64 rng(0);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    for (int64_t i = 0; i < x.num_elements(); ++i) x.f32()[i] = u(rng);
    for (int64_t i = 0; i < labels.num_elements(); ++i) {
      labels.i32()[i] = static_cast<int32_t>(rng() % config.num_classes);
    }
    variants.push_back(std::move(v));
  }
  for (int i = 0; i < absl::GetFlag(FLAGS_warmup); ++i) {
    for (auto& v : variants) RETURN_IF_ERROR(v->exe->Run());
  }
  for (int i = 0; i < absl::GetFlag(FLAGS_steps); ++i) {
    for (auto& v : variants) {
      const auto start = std::chrono::steady_clock::now();
      RETURN_IF_ERROR(v->exe->Run());
      v->ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count());
    }
  }
  for (auto& v : variants) {
    std::vector<double>& ms = v->ms;
    const double ms_min = *std::min_element(ms.begin(), ms.end());
    std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
    const auto& mem = v->exe->memory();
    std::printf(
        "{\"framework\": \"fleettune\", \"model\": \"mobilenet_v2\", \"mode\": \"%s\", "
        "\"ms_per_step\": %.3f, \"ms_min\": %.3f, \"train_bytes\": %zu, \"arena_bytes\": %zu, "
        "\"optim_bytes\": %zu, "
        "\"scratch_bytes\": %zu, \"weight_bytes\": %zu, \"threads\": %d, \"batch\": %lld, "
        "\"resolution\": %lld, \"classes\": %lld, \"width_mult\": %g, \"steps\": %d, "
        "\"warmup\": %d, \"passes\": \"%s\", \"scheme\": \"%s\", \"constant_bytes\": %zu}\n",
        mode.c_str(), ms[ms.size() / 2], ms_min, mem.arena_bytes + mem.optimizer_state_bytes,
        mem.arena_bytes, mem.optimizer_state_bytes, mem.scratch_bytes, mem.weight_bytes,
        absl::GetFlag(FLAGS_threads), static_cast<long long>(config.batch),
        static_cast<long long>(config.resolution), static_cast<long long>(config.num_classes),
        config.width_mult, absl::GetFlag(FLAGS_steps), absl::GetFlag(FLAGS_warmup),
        v->passes.c_str(), absl::GetFlag(FLAGS_scheme).c_str(), mem.constant_bytes);
    std::fflush(stdout);
    if (absl::GetFlag(FLAGS_profile)) {
      std::fprintf(stderr, "%s passes=%s:\n%s", mode.c_str(), v->passes.c_str(),
                   v->exe->ProfileReport().c_str());
    }
  }
  return absl::OkStatus();
}

absl::Status Main() {
  models::MobileNetV2Config config;
  config.width_mult = absl::GetFlag(FLAGS_width_mult);
  config.resolution = absl::GetFlag(FLAGS_resolution);
  config.num_classes = absl::GetFlag(FLAGS_classes);
  config.batch = absl::GetFlag(FLAGS_batch);
  if (absl::GetFlag(FLAGS_steps) < 1) return absl::InvalidArgumentError("--steps must be >= 1");
  for (absl::string_view mode : absl::StrSplit(absl::GetFlag(FLAGS_modes), ',')) {
    if (mode != "full" && mode != "frozen-bn") {
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
    std::fprintf(stderr, "vision_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
