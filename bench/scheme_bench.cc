// fleettune half of the update-scheme benchmark (issue #6): one training step
// of MobileNetV2, BERT-mini or a Llama-style decoder under the full, bias-only
// and sparse schemes. bench/compare_schemes.sh runs it next to
// bench/pytorch_schemes.py, whose docstring defines the shared workloads and
// schemes, and prints the ratios.
//
//   bazel run -c opt //bench:scheme_bench -- --model=mobilenet_v2 --schemes=full,sparse --profile
//
// Prints one JSON line per scheme: ms_per_step (median over --steps after
// --warmup), peak_bytes (static arena + kernel scratch + optimizer state: all
// training memory besides the weights) and trainable_elements (to check that
// both frameworks train the same parameters). --profile prints the time per op
// kind to stderr (adds two clock reads per instruction).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/base/status_macros.h"
#include "engine/models/bert.h"
#include "engine/models/llama.h"
#include "engine/models/mobilenet_v2.h"
#include "engine/train/trainer.h"

ABSL_FLAG(std::string, model, "mobilenet_v2", "mobilenet_v2, bert_mini or llama.");
ABSL_FLAG(std::string, schemes, "full,bias-only,sparse", "Update schemes to run.");
ABSL_FLAG(int, threads, 2, "Kernel threads.");
ABSL_FLAG(int, steps, 10, "Timed steps per scheme.");
ABSL_FLAG(int, warmup, 3, "Untimed steps per scheme.");
ABSL_FLAG(bool, profile, false, "Print time per op kind to stderr (adds timer overhead).");

namespace fleettune::engine {
namespace {

constexpr int64_t kBatch = 8;

// A model ready to train: the forward graph, and how to fill its weights and
// one step's inputs.
struct Workload {
  models::Model model;
  // Names of the last two blocks and the head, for the sparse scheme.
  std::vector<std::string> sparse_prefixes;
  std::function<absl::Status(const Graph&, runtime::ParameterStore*)> init;
  std::function<absl::Status(runtime::Executable&, std::mt19937_64&)> fill_inputs;
};

// Kaiming-uniform-style U(±1/sqrt(fan_in)) for convolutions and the
// classifier; BatchNorm weight 1, bias 0, running mean 0, running var 1.
absl::Status InitializeVision(const Graph& graph, runtime::ParameterStore* params) {
  std::mt19937_64 rng(0);
  for (const Node& n : graph.nodes()) {
    if (n.op != OpKind::kParameter) continue;
    Tensor t(n.type.dtype, n.type.shape);
    if (n.type.dtype == DType::kF32) {
      const Shape& shape = n.type.shape;
      if (shape.size() >= 2) {
        int64_t fan_in = 1;
        for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
        const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
        std::uniform_real_distribution<float> dist(-bound, bound);
        for (float& v : t.f32_span()) v = dist(rng);
      } else {
        const bool one = absl::EndsWith(n.name, ".running_var") ||
                         (absl::EndsWith(n.name, ".weight") && !absl::StartsWith(n.name, "class"));
        for (float& v : t.f32_span()) v = one ? 1.0f : 0.0f;
      }
    }
    RETURN_IF_ERROR(params->Set(n.name, t));
  }
  return absl::OkStatus();
}

absl::Status FillIds(runtime::Executable& exe, const std::string& input, int64_t bound,
                     std::mt19937_64& rng) {
  ASSIGN_OR_RETURN(TensorView v, exe.Input(input));
  for (int64_t i = 0; i < v.num_elements(); ++i) v.i32()[i] = static_cast<int32_t>(rng() % bound);
  return absl::OkStatus();
}

absl::StatusOr<Workload> MakeWorkload(const std::string& name) {
  Workload w;
  if (name == "mobilenet_v2") {
    models::MobileNetV2Config config;
    config.resolution = 128;
    config.num_classes = 10;
    config.batch = kBatch;
    ASSIGN_OR_RETURN(w.model, models::BuildMobileNetV2(config, models::Mode::kEval));
    w.sparse_prefixes = {"features.17.", "features.18.", "classifier."};
    w.init = InitializeVision;
    w.fill_inputs = [](runtime::Executable& exe, std::mt19937_64& rng) -> absl::Status {
      ASSIGN_OR_RETURN(TensorView x, exe.Input("x"));
      std::uniform_real_distribution<float> u(0.0f, 1.0f);
      for (int64_t i = 0; i < x.num_elements(); ++i) x.f32()[i] = u(rng);
      return FillIds(exe, "labels", 10, rng);
    };
  } else if (name == "bert_mini") {
    models::BertConfig config;
    config.vocab = 30522;
    config.hidden = 256;
    config.layers = 4;
    config.heads = 4;
    config.ffn = 1024;
    config.max_positions = 512;
    config.seq_len = 128;
    config.batch = kBatch;
    config.num_labels = 2;
    config.dropout = 0.0f;
    ASSIGN_OR_RETURN(models::BertModel bert, models::BuildBert(config, models::Mode::kEval));
    w.model = std::move(bert.model);
    w.sparse_prefixes = {"bert.encoder.layer.2.", "bert.encoder.layer.3.", "bert.pooler.",
                         "classifier."};
    w.init = [config](const Graph&, runtime::ParameterStore* p) {
      return models::InitializeBert(config, 0, p);
    };
    w.fill_inputs = [config](runtime::Executable& exe, std::mt19937_64& rng) -> absl::Status {
      RETURN_IF_ERROR(FillIds(exe, "input_ids", config.vocab, rng));
      RETURN_IF_ERROR(FillIds(exe, "token_type_ids", 1, rng));
      RETURN_IF_ERROR(FillIds(exe, "labels", config.num_labels, rng));
      ASSIGN_OR_RETURN(TensorView positions, exe.Input(models::kBertPositionsInput));
      models::FillBertPositions(positions.i32(), positions.num_elements());
      return absl::OkStatus();
    };
  } else if (name == "llama") {
    models::LlamaConfig config;
    config.vocab = 8192;
    config.dim = 256;
    config.layers = 4;
    config.heads = 4;
    config.kv_heads = 2;
    config.ffn_dim = 704;
    config.seq_len = 128;
    config.batch = kBatch;
    ASSIGN_OR_RETURN(models::LlamaModel lm, models::BuildLlama(config));
    w.model = std::move(lm.model);
    w.sparse_prefixes = {"model.layers.2.", "model.layers.3.", "model.norm.", "lm_head."};
    w.init = [config](const Graph&, runtime::ParameterStore* p) {
      return models::InitializeLlama(config, 0, p);
    };
    w.fill_inputs = [config](runtime::Executable& exe, std::mt19937_64& rng) -> absl::Status {
      RETURN_IF_ERROR(FillIds(exe, "tokens", config.vocab, rng));
      RETURN_IF_ERROR(FillIds(exe, "targets", config.vocab, rng));
      ASSIGN_OR_RETURN(TensorView positions, exe.Input(models::kLlamaPositionsInput));
      models::FillLlamaPositions(positions.i32(), positions.num_elements());
      return absl::OkStatus();
    };
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown --model '", name, "' (mobilenet_v2, bert_mini or llama)"));
  }
  return w;
}

// The weights `scheme` trains. "sparse": every bias plus every weight of the
// last two blocks and the head.
absl::StatusOr<std::vector<std::string>> Trainable(const Workload& w, const std::string& scheme) {
  if (scheme != "sparse") return train::SelectTrainable(w.model, scheme);
  std::vector<std::string> out;
  for (const models::Layer& layer : w.model.layers) {
    for (const std::string& name : layer.weights) {
      const bool in_block =
          std::any_of(w.sparse_prefixes.begin(), w.sparse_prefixes.end(),
                      [&](const std::string& p) { return absl::StartsWith(name, p); });
      if (in_block || absl::EndsWith(name, ".bias")) out.push_back(name);
    }
  }
  return out;
}

absl::Status RunScheme(const std::string& model_name, const std::string& scheme) {
  ASSIGN_OR_RETURN(Workload w, MakeWorkload(model_name));
  auto trainable = Trainable(w, scheme);
  if (!trainable.ok() && absl::StrContains(trainable.status().message(), "trains nothing")) {
    std::fprintf(stderr, "%s: scheme %s trains nothing; skipped\n", model_name.c_str(),
                 scheme.c_str());
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(trainable.status());
  ASSIGN_OR_RETURN(Graph graph,
                   train::BuildTrainingGraph(w.model, *trainable,
                                             autodiff::OptimizerConfig::Sgd({0.01f, 0.9f, 0.0f})));
  runtime::ParameterStore params;
  RETURN_IF_ERROR(w.init(w.model.graph, &params));
  int64_t trainable_elements = 0;
  for (const std::string& name : *trainable) {
    trainable_elements += params.Find(name)->num_elements();
  }
  runtime::CompileOptions options;
  options.threads = absl::GetFlag(FLAGS_threads);
  options.profile = absl::GetFlag(FLAGS_profile);
  ASSIGN_OR_RETURN(auto exe, runtime::Executable::Compile(graph, &params, options));
  std::mt19937_64 rng(0);
  RETURN_IF_ERROR(w.fill_inputs(*exe, rng));
  for (int i = 0; i < absl::GetFlag(FLAGS_warmup); ++i) RETURN_IF_ERROR(exe->Run());
  std::vector<double> ms;
  for (int i = 0; i < absl::GetFlag(FLAGS_steps); ++i) {
    const auto start = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(exe->Run());
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  const runtime::MemoryStats& mem = exe->memory();
  const size_t peak = mem.arena_bytes + mem.scratch_bytes + mem.optimizer_state_bytes;
  std::printf(
      "{\"framework\": \"fleettune\", \"model\": \"%s\", \"mode\": \"%s\", \"ms_per_step\": %.3f, "
      "\"peak_bytes\": %zu, \"train_bytes\": %zu, \"arena_bytes\": %zu, \"scratch_bytes\": %zu, "
      "\"optim_bytes\": %zu, \"weight_bytes\": %zu, \"trainable_elements\": %lld, "
      "\"threads\": %d, \"steps\": %d, \"warmup\": %d}\n",
      model_name.c_str(), scheme.c_str(), ms[ms.size() / 2], peak, peak, mem.arena_bytes,
      mem.scratch_bytes, mem.optimizer_state_bytes, mem.weight_bytes,
      static_cast<long long>(trainable_elements), options.threads, absl::GetFlag(FLAGS_steps),
      absl::GetFlag(FLAGS_warmup));
  std::fflush(stdout);
  if (options.profile) {
    std::fprintf(stderr, "%s %s:\n%s", model_name.c_str(), scheme.c_str(),
                 exe->ProfileReport().c_str());
  }
  return absl::OkStatus();
}

absl::Status Main() {
  if (absl::GetFlag(FLAGS_steps) < 1) return absl::InvalidArgumentError("--steps must be >= 1");
  for (absl::string_view scheme :
       absl::StrSplit(absl::GetFlag(FLAGS_schemes), ',', absl::SkipEmpty())) {
    RETURN_IF_ERROR(RunScheme(absl::GetFlag(FLAGS_model), std::string(scheme)));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace fleettune::engine

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = fleettune::engine::Main();
  if (!status.ok()) {
    std::fprintf(stderr, "scheme_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
