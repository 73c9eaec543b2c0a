#include "engine/search/contribution.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::search {
namespace {

constexpr char kHeader[] = "# fleettune contribution profile v1";
constexpr uint64_t kMaxProfileBytes = uint64_t{16} << 20;

absl::Status CheckData(const Tensor& images, const Tensor& labels, const char* what) {
  if (images.dtype() != DType::kF32 || labels.dtype() != DType::kI32 || images.shape().empty() ||
      labels.shape().size() != 1 || images.shape()[0] == 0 ||
      images.shape()[0] != labels.shape()[0]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "contribution: ", what, " set must be f32 images [N, ...] and i32 labels [N], N > 0"));
  }
  return absl::OkStatus();
}

// `steps · batch` samples: the train set repeated, then shuffled by the
// trainer, so TrainEpoch runs exactly `steps` steps.
void Repeat(const Tensor& x, const Tensor& y, int64_t count, Tensor* rx, Tensor* ry) {
  const int64_t n = x.shape()[0];
  const int64_t sample = x.num_elements() / n;
  Shape shape = x.shape();
  shape[0] = count;
  *rx = Tensor(DType::kF32, shape);
  *ry = Tensor(DType::kI32, {count});
  for (int64_t i = 0; i < count; ++i) {
    std::memcpy(rx->f32() + i * sample, x.f32() + (i % n) * sample, sample * sizeof(float));
    ry->i32()[i] = y.i32()[i % n];
  }
}

std::string Double(double v) { return absl::StrFormat("%.17g", v); }

}  // namespace

absl::StatusOr<runtime::ParameterStore> CopyModelState(const models::Model& model,
                                                       const runtime::ParameterStore& base) {
  runtime::ParameterStore out;
  auto copy = [&](const std::string& name) -> absl::Status {
    const Tensor* t = base.Find(name);
    if (t == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("contribution: base weights lack model tensor '", name, "'"));
    }
    return out.Set(name, *t);
  };
  for (const models::Layer& layer : model.layers) {
    for (const std::string& w : layer.weights) RETURN_IF_ERROR(copy(w));
  }
  for (const std::string& b : model.buffers) {
    if (base.Find(b) != nullptr) RETURN_IF_ERROR(copy(b));  // an eval graph may not read all
  }
  return out;
}

namespace {

// The evaluation graph compiled once, bound to `params`: later changes to the
// store's tensors (Set copies into the bound storage) are what it evaluates.
class HeldOutEvaluator {
 public:
  static absl::StatusOr<HeldOutEvaluator> Create(const train::ModelBuilder& build,
                                                 runtime::ParameterStore* params,
                                                 const Tensor& images, const Tensor& labels) {
    RETURN_IF_ERROR(CheckData(images, labels, "held-out"));
    HeldOutEvaluator e;
    e.n_ = images.shape()[0];
    e.batch_ = std::min<int64_t>(e.n_, 256);
    ASSIGN_OR_RETURN(models::Model model, build(e.batch_, models::Mode::kEval));
    ASSIGN_OR_RETURN(e.exe_, runtime::Executable::Compile(model.graph, params));
    const Shape& xs = model.graph.type(model.input).shape;
    e.sample_ = NumElements(xs) / xs[0];
    if (e.sample_ * e.n_ != images.num_elements()) {
      return absl::InvalidArgumentError(absl::StrCat("contribution: held-out samples have ",
                                                     images.num_elements() / e.n_,
                                                     " elements, the model takes ", e.sample_));
    }
    e.classes_ = model.graph.type(model.logits).shape.back();
    e.logits_id_ = model.logits;
    return e;
  }

  absl::StatusOr<Evaluation> Run(const Tensor& images, const Tensor& labels) {
    ASSIGN_OR_RETURN(TensorView x, exe_->Input("x"));
    ASSIGN_OR_RETURN(TensorView y, exe_->Input("labels"));
    ASSIGN_OR_RETURN(TensorView logits, exe_->Output(logits_id_));
    int64_t correct = 0;
    double loss = 0.0;
    for (int64_t start = 0; start < n_; start += batch_) {
      const int64_t rows = std::min(batch_, n_ - start);
      std::memset(x.f32(), 0, batch_ * sample_ * sizeof(float));
      std::memcpy(x.f32(), images.f32() + start * sample_, rows * sample_ * sizeof(float));
      for (int64_t r = 0; r < batch_; ++r) {
        y.i32()[r] = r < rows ? labels.i32()[start + r] : CrossEntropyAttrs{}.ignore_index;
      }
      RETURN_IF_ERROR(exe_->Run());
      for (int64_t r = 0; r < rows; ++r) {
        const float* row = logits.f32() + r * classes_;
        const int32_t label = labels.i32()[start + r];
        if (label < 0 || label >= classes_) {
          return absl::InvalidArgumentError(absl::StrCat("contribution: held-out label ", label,
                                                         " at ", start + r, " outside [0, ",
                                                         classes_, ")"));
        }
        const float* top = std::max_element(row, row + classes_);
        correct += (top - row) == label;
        // −log softmax(row)[label], stabilized by the max.
        double sum = 0.0;
        for (int64_t c = 0; c < classes_; ++c) sum += std::exp(static_cast<double>(row[c] - *top));
        loss += std::log(sum) - static_cast<double>(row[label] - *top);
      }
    }
    return Evaluation{static_cast<double>(correct) / n_, loss / n_};
  }

 private:
  std::unique_ptr<runtime::Executable> exe_;
  int64_t n_ = 0, batch_ = 0, sample_ = 0, classes_ = 0;
  ValueId logits_id_ = kNoValue;
};

}  // namespace

absl::StatusOr<Evaluation> EvaluateHeldOut(const train::ModelBuilder& build,
                                           runtime::ParameterStore* params, const Tensor& images,
                                           const Tensor& labels) {
  ASSIGN_OR_RETURN(HeldOutEvaluator e, HeldOutEvaluator::Create(build, params, images, labels));
  return e.Run(images, labels);
}

namespace {

absl::Status CheckOptions(const CalibrationData& data, const ContributionOptions& options) {
  if (options.steps < 1 || options.batch < 1) {
    return absl::InvalidArgumentError(absl::StrCat("contribution: steps (", options.steps,
                                                   ") and batch (", options.batch,
                                                   ") must be positive"));
  }
  RETURN_IF_ERROR(CheckData(data.train_images, data.train_labels, "train"));
  return CheckData(data.heldout_images, data.heldout_labels, "held-out");
}

// Fine-tunes candidate sets from the base and evaluates them. One evaluation
// graph serves the base and every set: after a run the tensors it changed are
// copied in, evaluated, and restored.
class SetRunner {
 public:
  static absl::StatusOr<std::unique_ptr<SetRunner>> Create(const train::ModelBuilder& build,
                                                           const runtime::ParameterStore& base,
                                                           const CalibrationData& data,
                                                           const ContributionOptions& options) {
    RETURN_IF_ERROR(CheckOptions(data, options));
    auto r = std::unique_ptr<SetRunner>(new SetRunner(build, base, data, options));
    ASSIGN_OR_RETURN(r->probe_, build(1, models::Mode::kTrain));
    ASSIGN_OR_RETURN(r->eval_params_, CopyModelState(r->probe_, base));
    ASSIGN_OR_RETURN(HeldOutEvaluator evaluator,
                     HeldOutEvaluator::Create(build, &r->eval_params_, data.heldout_images,
                                              data.heldout_labels));
    r->evaluator_ = std::make_unique<HeldOutEvaluator>(std::move(evaluator));
    Repeat(data.train_images, data.train_labels, options.steps * options.batch, &r->train_x_,
           &r->train_y_);
    return r;
  }

  absl::StatusOr<Evaluation> EvaluateBase() {
    return evaluator_->Run(data_.heldout_images, data_.heldout_labels);
  }

  // `label` names the set in errors.
  absl::StatusOr<Evaluation> Run(const std::vector<Candidate>& set, const std::string& label) {
    auto s = ToScheme(probe_, set, label);
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("contribution: candidate ", label, ": ", s.status().message()));
    }
    train::TrainerOptions topts;
    ASSIGN_OR_RETURN(topts.scheme, scheme::ResolveScheme(probe_, *s));
    topts.batch = options_.batch;
    // The trainer's own evaluation graph goes unused (the shared evaluator also
    // gives the loss): the smallest one, so that no large arena is allocated.
    topts.eval_batch = 1;
    topts.seed = options_.seed;
    topts.threads = options_.threads;
    topts.optimizer = options_.optimizer;
    ASSIGN_OR_RETURN(runtime::ParameterStore params, CopyModelState(probe_, base_));
    ASSIGN_OR_RETURN(std::unique_ptr<train::Trainer> trainer,
                     train::Trainer::Create(build_, &params, topts));
    RETURN_IF_ERROR(trainer->TrainEpoch(train_x_, train_y_).status());
    trainer.reset();
    // What the run changed: the set's tensors, and BatchNorm statistics when
    // `build` trains them.
    std::vector<std::string> changed;
    for (const Candidate& c : set) changed.push_back(c.tensor);
    for (const std::string& b : probe_.buffers) {
      if (params.Find(b) != nullptr) changed.push_back(b);
    }
    for (const std::string& name : changed) {
      RETURN_IF_ERROR(eval_params_.Set(name, *params.Find(name)));
    }
    auto evaluated = evaluator_->Run(data_.heldout_images, data_.heldout_labels);
    for (const std::string& name : changed) {
      RETURN_IF_ERROR(eval_params_.Set(name, *base_.Find(name)));
    }
    return evaluated;
  }

 private:
  SetRunner(const train::ModelBuilder& build, const runtime::ParameterStore& base,
            const CalibrationData& data, const ContributionOptions& options)
      : build_(build), base_(base), data_(data), options_(options) {}

  const train::ModelBuilder& build_;
  const runtime::ParameterStore& base_;
  const CalibrationData& data_;
  const ContributionOptions& options_;
  models::Model probe_;
  runtime::ParameterStore eval_params_;
  std::unique_ptr<HeldOutEvaluator> evaluator_;
  Tensor train_x_, train_y_;
};

}  // namespace

absl::StatusOr<ContributionProfile> AnalyzeContributions(const train::ModelBuilder& build,
                                                         const runtime::ParameterStore& base,
                                                         const std::vector<Candidate>& candidates,
                                                         const CalibrationData& data,
                                                         const ContributionOptions& options) {
  if (candidates.empty()) return absl::InvalidArgumentError("contribution: empty candidate list");
  ASSIGN_OR_RETURN(std::unique_ptr<SetRunner> runner,
                   SetRunner::Create(build, base, data, options));
  ContributionProfile profile;
  profile.model_name = options.model_name;
  profile.task = options.task;
  profile.steps = options.steps;
  profile.seed = options.seed;
  ASSIGN_OR_RETURN(Evaluation b, runner->EvaluateBase());
  profile.base_accuracy = b.accuracy;
  profile.base_loss = b.loss;
  profile.heldout_samples = data.heldout_labels.shape()[0];
  for (const Candidate& c : candidates) {
    ASSIGN_OR_RETURN(Evaluation e, runner->Run({c}, c.Id()));
    profile.entries.push_back({c.Id(), e.accuracy, e.loss, e.accuracy - profile.base_accuracy,
                               profile.base_loss - e.loss});
  }
  return profile;
}

absl::StatusOr<std::vector<JointContribution>> AnalyzeJoint(
    const train::ModelBuilder& build, const runtime::ParameterStore& base,
    const std::vector<std::vector<Candidate>>& sets, const std::vector<std::string>& origins,
    const CalibrationData& data, const ContributionOptions& options) {
  if (sets.size() != origins.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("contribution: ", sets.size(), " sets but ", origins.size(), " origins"));
  }
  for (size_t i = 0; i < sets.size(); ++i) {
    if (origins[i].empty() || std::any_of(origins[i].begin(), origins[i].end(), [](char ch) {
          return absl::ascii_isspace(static_cast<unsigned char>(ch));
        })) {
      return absl::InvalidArgumentError(absl::StrCat("contribution: set origin '",
                                                     absl::CEscape(origins[i]),
                                                     "' must be non-empty without whitespace"));
    }
    if (sets[i].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("contribution: set '", origins[i], "' is empty"));
    }
  }
  ASSIGN_OR_RETURN(std::unique_ptr<SetRunner> runner,
                   SetRunner::Create(build, base, data, options));
  std::vector<JointContribution> out;
  for (size_t i = 0; i < sets.size(); ++i) {
    ASSIGN_OR_RETURN(Evaluation e, runner->Run(sets[i], origins[i]));
    JointContribution j;
    j.origin = origins[i];
    for (const Candidate& c : sets[i]) j.ids.push_back(c.Id());
    j.steps = options.steps;
    j.accuracy = e.accuracy;
    j.loss = e.loss;
    out.push_back(std::move(j));
  }
  return out;
}

std::string ProfileToText(const ContributionProfile& p) {
  std::string out = absl::StrCat(kHeader, "\n");
  // Names are free text: C-escaped, so a newline cannot start a line of its own.
  absl::StrAppend(&out, "model ", p.model_name.empty() ? "-" : absl::CEscape(p.model_name), "\n");
  absl::StrAppend(&out, "task ", p.task.empty() ? "-" : absl::CEscape(p.task), "\n");
  if (!p.key.empty()) absl::StrAppend(&out, "key ", p.key, "\n");
  absl::StrAppend(&out, "steps ", p.steps, "\nseed ", p.seed, "\n");
  absl::StrAppend(&out, "base ", Double(p.base_accuracy), " ", Double(p.base_loss), "\n");
  if (p.heldout_samples > 0) absl::StrAppend(&out, "heldout ", p.heldout_samples, "\n");
  for (const Contribution& c : p.entries) {
    absl::StrAppend(&out, "candidate ", c.id, " ", Double(c.accuracy), " ", Double(c.loss), "\n");
  }
  for (const JointContribution& j : p.joint) {
    absl::StrAppend(&out, "joint ", j.origin, " ", j.steps, " ", Double(j.accuracy), " ",
                    Double(j.loss), " ", absl::StrJoin(j.ids, ","), "\n");
  }
  return out;
}

absl::StatusOr<ContributionProfile> ParseProfileText(absl::string_view text) {
  ContributionProfile p;
  int line_no = 0;
  bool header = false, base = false;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (line.empty()) continue;
    if (line_no == 1) {
      if (line != kHeader) break;
      header = true;
      continue;
    }
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat("contribution profile line ", line_no, ": ", why));
    };
    if (f.size() < 2) return bad("expected 'key value...'");
    const absl::string_view key = f[0];
    const std::string value = f[1] == "-" ? "" : std::string(f[1]);
    if (key == "model" || key == "task") {
      // The rest of the line, C-escaped by ProfileToText.
      const absl::string_view rest = absl::StripAsciiWhitespace(line.substr(key.size()));
      std::string name;
      if (rest != "-" && !absl::CUnescape(rest, &name)) return bad("bad escape in name");
      (key == "model" ? p.model_name : p.task) = std::move(name);
    } else if (key == "key" && f.size() == 2) {
      p.key = value;
    } else if (key == "steps" && f.size() == 2) {
      if (!absl::SimpleAtoi(f[1], &p.steps)) return bad("bad steps");
    } else if (key == "seed" && f.size() == 2) {
      if (!absl::SimpleAtoi(f[1], &p.seed)) return bad("bad seed");
    } else if (key == "base" && f.size() == 3) {
      if (!absl::SimpleAtod(f[1], &p.base_accuracy) || !absl::SimpleAtod(f[2], &p.base_loss)) {
        return bad("bad base accuracy or loss");
      }
      base = true;
    } else if (key == "heldout" && f.size() == 2) {
      if (!absl::SimpleAtoi(f[1], &p.heldout_samples) || p.heldout_samples < 0) {
        return bad("bad heldout");
      }
    } else if (key == "candidate" && f.size() == 4) {
      if (!base) return bad("candidate before base");
      Contribution c;
      c.id = std::string(f[1]);
      if (!absl::SimpleAtod(f[2], &c.accuracy) || !absl::SimpleAtod(f[3], &c.loss)) {
        return bad(absl::StrCat("bad accuracy or loss for ", c.id));
      }
      c.accuracy_gain = c.accuracy - p.base_accuracy;
      c.loss_gain = p.base_loss - c.loss;
      p.entries.push_back(std::move(c));
    } else if (key == "joint" && f.size() == 6) {
      if (!base) return bad("joint before base");
      JointContribution j;
      j.origin = std::string(f[1]);
      if (!absl::SimpleAtoi(f[2], &j.steps) || j.steps < 1) return bad("bad joint steps");
      if (!absl::SimpleAtod(f[3], &j.accuracy) || !absl::SimpleAtod(f[4], &j.loss)) {
        return bad(absl::StrCat("bad accuracy or loss for joint set ", j.origin));
      }
      j.ids = absl::StrSplit(f[5], ',');
      p.joint.push_back(std::move(j));
    } else {
      return bad(absl::StrCat("unknown key or field count: '", key, "'"));
    }
  }
  if (!header) {
    return absl::InvalidArgumentError(
        absl::StrCat("contribution profile: missing header '", kHeader, "'"));
  }
  if (!base) return absl::InvalidArgumentError("contribution profile: missing 'base' line");
  return p;
}

absl::Status WriteProfile(const std::string& path, const ContributionProfile& profile) {
  return WriteFileAtomically(path, ProfileToText(profile));
}

absl::StatusOr<ContributionProfile> ReadProfile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, kMaxProfileBytes));
  auto p = ParseProfileText(text);
  if (!p.ok())
    return absl::Status(p.status().code(), absl::StrCat(path, ": ", p.status().message()));
  return p;
}

absl::StatusOr<std::vector<ScoredCandidate>> ScoreCandidates(const models::Model& model,
                                                             const ContributionProfile& profile,
                                                             GainMetric metric) {
  ASSIGN_OR_RETURN(std::vector<Candidate> all, ListCandidates(model));
  std::map<std::string, const Candidate*> by_id;
  for (const Candidate& c : all) by_id[c.Id()] = &c;
  std::vector<ScoredCandidate> out;
  for (const Contribution& e : profile.entries) {
    auto it = by_id.find(e.id);
    if (it == by_id.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("contribution profile: '", e.id, "' is not a candidate of the model"));
    }
    out.push_back({*it->second, metric == GainMetric::kAccuracy ? e.accuracy_gain : e.loss_gain});
  }
  if (out.empty()) return absl::InvalidArgumentError("contribution profile: no candidates");
  return out;
}

}  // namespace fleettune::engine::search
