// fleettune half of the side-by-side BERT-mini fine-tuning benchmark
// (bench/compare_bert.sh runs it next to bench/pytorch_bert.py and prints the
// ratios).
//
//   bazel run -c opt //bench:bert_bench -- --threads=2 --batch=8 --seq_len=128 --profile
//
// Workload: BertForSequenceClassification layout (engine/models/bert.h), 4
// layers, hidden 256, 4 heads, FFN 1024, vocab 30522, 512 positions, 2 token
// types, 2 labels, dropout 0 (eval-mode structure), every weight trained with
// SGD(lr=0.01, momentum=0.9) (full fine-tuning), one fixed random batch
// (input_ids uniform in the vocabulary, token_type_ids 0, labels uniform).
// Weights: InitializeBert (HF's _init_weights, N(0, 0.02²)).
// A timed step is FillBertPositions + one Executable::Run (forward, loss,
// backward, in-place updates); ms_per_step is the median over --steps after
// --warmup. train_bytes is the static arena (batch, activations, gradients,
// temporaries) plus optimizer state. --profile prints the time per op kind to
// stderr (summed over warm-up and timed steps).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "engine/base/status_macros.h"
#include "engine/models/bert.h"
#include "engine/passes/pipeline.h"
#include "engine/train/trainer.h"

ABSL_FLAG(int, threads, 2, "GEMM threads.");
ABSL_FLAG(int, batch, 8, "Batch size.");
ABSL_FLAG(int, seq_len, 128, "Tokens per sequence.");
ABSL_FLAG(int, layers, 4, "Encoder layers.");
ABSL_FLAG(int, hidden, 256, "Hidden size.");
ABSL_FLAG(int, heads, 4, "Attention heads.");
ABSL_FLAG(int, ffn, 1024, "Feed-forward size.");
ABSL_FLAG(int, vocab, 30522, "Vocabulary size.");
ABSL_FLAG(int, labels, 2, "Number of labels.");
ABSL_FLAG(int, steps, 10, "Timed steps.");
ABSL_FLAG(int, warmup, 3, "Untimed steps.");
ABSL_FLAG(bool, profile, false, "Print time per op kind to stderr (adds timer overhead).");
ABSL_FLAG(std::string, passes, "none",
          "Graph passes (engine/passes/pipeline.h): all, none, or a comma list.");
ABSL_FLAG(bool, pass_report, false, "Print the pass report to stderr.");
ABSL_FLAG(std::string, scheme, "full", "Trained weights (train::SelectTrainable scheme).");

namespace fleettune::engine {
namespace {

absl::Status Main() {
  models::BertConfig config;
  config.vocab = absl::GetFlag(FLAGS_vocab);
  config.hidden = absl::GetFlag(FLAGS_hidden);
  config.layers = absl::GetFlag(FLAGS_layers);
  config.heads = absl::GetFlag(FLAGS_heads);
  config.ffn = absl::GetFlag(FLAGS_ffn);
  config.seq_len = absl::GetFlag(FLAGS_seq_len);
  config.max_positions = std::max<int64_t>(512, config.seq_len);
  config.batch = absl::GetFlag(FLAGS_batch);
  config.num_labels = absl::GetFlag(FLAGS_labels);
  config.dropout = 0.0f;
  if (absl::GetFlag(FLAGS_steps) < 1) return absl::InvalidArgumentError("--steps must be >= 1");

  ASSIGN_OR_RETURN(models::BertModel bert, models::BuildBert(config, models::Mode::kEval));
  ASSIGN_OR_RETURN(std::vector<std::string> trainable,
                   train::SelectTrainable(bert.model, absl::GetFlag(FLAGS_scheme)));
  ASSIGN_OR_RETURN(Graph graph,
                   train::BuildTrainingGraph(bert.model, trainable,
                                             autodiff::OptimizerConfig::Sgd({0.01f, 0.9f, 0.0f})));
  ASSIGN_OR_RETURN(passes::PassOptions pass_options,
                   passes::PassOptions::Parse(absl::GetFlag(FLAGS_passes)));
  pass_options.measure_memory = absl::GetFlag(FLAGS_pass_report);
  ASSIGN_OR_RETURN(passes::PassReport report, passes::RunPasses(graph, pass_options));
  if (absl::GetFlag(FLAGS_pass_report)) {
    std::fprintf(stderr, "passes:\n%s", report.ToString().c_str());
  }
  runtime::ParameterStore params;
  RETURN_IF_ERROR(models::InitializeBert(config, 0, &params));
  runtime::CompileOptions options;
  options.threads = absl::GetFlag(FLAGS_threads);
  options.profile = absl::GetFlag(FLAGS_profile);
  options.in_place = pass_options.in_place;
  options.fold_constants = pass_options.fold_constants;
  ASSIGN_OR_RETURN(auto exe, runtime::Executable::Compile(graph, &params, options));
  ASSIGN_OR_RETURN(TensorView ids, exe->Input("input_ids"));
  ASSIGN_OR_RETURN(TensorView types, exe->Input("token_type_ids"));
  ASSIGN_OR_RETURN(TensorView labels, exe->Input("labels"));
  ASSIGN_OR_RETURN(TensorView positions, exe->Input(models::kBertPositionsInput));
  std::mt19937_64 rng(0);
  for (int64_t i = 0; i < ids.num_elements(); ++i) {
    ids.i32()[i] = static_cast<int32_t>(rng() % config.vocab);
  }
  for (int64_t i = 0; i < types.num_elements(); ++i) types.i32()[i] = 0;
  for (int64_t i = 0; i < labels.num_elements(); ++i) {
    labels.i32()[i] = static_cast<int32_t>(rng() % config.num_labels);
  }
  auto step = [&]() -> absl::Status {
    models::FillBertPositions(positions.i32(), positions.num_elements());
    return exe->Run();
  };
  for (int i = 0; i < absl::GetFlag(FLAGS_warmup); ++i) RETURN_IF_ERROR(step());
  exe->ResetProfile();
  std::vector<double> ms;
  for (int i = 0; i < absl::GetFlag(FLAGS_steps); ++i) {
    const auto start = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(step());
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  const auto& mem = exe->memory();
  std::printf(
      "{\"framework\": \"fleettune\", \"model\": \"bert_mini\", \"mode\": \"full\", "
      "\"ms_per_step\": %.3f, \"train_bytes\": %zu, \"arena_bytes\": %zu, \"optim_bytes\": %zu, "
      "\"scratch_bytes\": %zu, \"weight_bytes\": %zu, \"threads\": %d, \"batch\": %lld, "
      "\"seq_len\": %lld, \"layers\": %lld, \"hidden\": %lld, \"steps\": %d, \"warmup\": %d, "
      "\"passes\": \"%s\", \"scheme\": \"%s\", \"constant_bytes\": %zu}\n",
      ms[ms.size() / 2], mem.arena_bytes + mem.optimizer_state_bytes, mem.arena_bytes,
      mem.optimizer_state_bytes, mem.scratch_bytes, mem.weight_bytes, absl::GetFlag(FLAGS_threads),
      static_cast<long long>(config.batch), static_cast<long long>(config.seq_len),
      static_cast<long long>(config.layers), static_cast<long long>(config.hidden),
      absl::GetFlag(FLAGS_steps), absl::GetFlag(FLAGS_warmup), absl::GetFlag(FLAGS_passes).c_str(),
      absl::GetFlag(FLAGS_scheme).c_str(), mem.constant_bytes);
  std::fflush(stdout);
  if (options.profile) std::fprintf(stderr, "full:\n%s", exe->ProfileReport().c_str());
  return absl::OkStatus();
}

}  // namespace
}  // namespace fleettune::engine

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  absl::Status s = fleettune::engine::Main();
  if (!s.ok()) {
    std::fprintf(stderr, "bert_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
