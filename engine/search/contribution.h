// Contribution analysis for scheme search (issue #7): how much each update
// candidate helps on its own.
//
// From the same base weights, each candidate alone is fine-tuned for a fixed
// step budget on a calibration set, and its held-out accuracy and loss are
// compared with the base's. The profile is a per-model, per-task cache: a
// small line-oriented text file (ProfileToText / ParseProfileText).
//
//   ContributionOptions options;  options.steps = 50;
//   ASSIGN_OR_RETURN(ContributionProfile p,
//                    AnalyzeContributions(build, base_params, candidates, data, options));
//   RETURN_IF_ERROR(WriteProfile("mlp.fmnist.profile", p));
//   ASSIGN_OR_RETURN(std::vector<ScoredCandidate> scored, ScoreCandidates(model, p));
//
// Deterministic for a seed (the trainer's shuffling and the step budget are
// seeded; kernels are deterministic). Not thread-safe; `base` is only read.
#ifndef FLEETTUNE_ENGINE_SEARCH_CONTRIBUTION_H_
#define FLEETTUNE_ENGINE_SEARCH_CONTRIBUTION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/autodiff/autodiff.h"
#include "engine/ir/tensor.h"
#include "engine/models/model.h"
#include "engine/runtime/executable.h"
#include "engine/search/candidates.h"
#include "engine/search/select.h"
#include "engine/train/trainer.h"

namespace fleettune::engine::search {

// images: [N, ...] f32 in the model's per-sample shape; labels: [N] i32.
struct CalibrationData {
  Tensor train_images, train_labels;
  Tensor heldout_images, heldout_labels;
};

struct ContributionOptions {
  std::string model_name;  // recorded in the profile
  std::string task;        // recorded in the profile
  int64_t steps = 50;      // fine-tuning steps per candidate (> 0)
  int64_t batch = 32;
  uint64_t seed = 0;
  int threads = 1;
  autodiff::OptimizerConfig optimizer = autodiff::OptimizerConfig::Sgd({0.05f, 0.9f});
};

struct Contribution {
  std::string id;              // Candidate::Id()
  double accuracy = 0.0;       // held-out top-1 after fine-tuning it alone
  double loss = 0.0;           // held-out mean cross-entropy after
  double accuracy_gain = 0.0;  // accuracy − base accuracy
  double loss_gain = 0.0;      // base loss − loss (positive: it helped)
};

// A candidate set fine-tuned jointly from the base (verify.h shortlists them):
// the additive model behind SelectScheme assumes candidates' gains add up, and
// they overlap, so a shortlist is measured together.
struct JointContribution {
  std::string origin;            // what proposed it: "selection", "selection@1/2", "last-k:2", …
  std::vector<std::string> ids;  // Candidate::Id()s
  int64_t steps = 0;             // joint fine-tuning steps
  double accuracy = 0.0;         // held-out top-1 after
  double loss = 0.0;             // held-out mean cross-entropy after
};

struct ContributionProfile {
  std::string model_name;
  std::string task;
  std::string key;  // ProfileKey (profile_cache.h) of what it was measured on; may be empty
  int64_t steps = 0;
  uint64_t seed = 0;
  double base_accuracy = 0.0;
  double base_loss = 0.0;
  int64_t heldout_samples = 0;           // the held-out set's size (0: unknown)
  std::vector<Contribution> entries;     // in the candidates' order
  std::vector<JointContribution> joint;  // in measurement order
};

// Held-out top-1 accuracy and mean cross-entropy of `params` under the
// model's evaluation graph. InvalidArgument on mismatched data.
struct Evaluation {
  double accuracy = 0.0;
  double loss = 0.0;
};
absl::StatusOr<Evaluation> EvaluateHeldOut(const train::ModelBuilder& build,
                                           runtime::ParameterStore* params, const Tensor& images,
                                           const Tensor& labels);

// The model's weights and buffers from `base`, without anything else the
// store holds: optimizer state from an earlier run would both leak momentum
// into a fine-tuning run and clash in shape with a partial-channel one.
// Buffers the store lacks are skipped (an evaluation graph may not read all).
// InvalidArgument naming a weight `base` lacks.
absl::StatusOr<runtime::ParameterStore> CopyModelState(const models::Model& model,
                                                       const runtime::ParameterStore& base);

// Fine-tunes each candidate alone from a copy of `base`'s model weights and
// buffers (other tensors, such as optimizer state from pre-training, are
// ignored) for options.steps steps (the calibration train set repeated and
// shuffled as needed). InvalidArgument for an empty candidate list, steps or
// batch < 1, an empty or mismatched data set, a model tensor `base` lacks, or
// a candidate the model lacks (messages name the tensor).
absl::StatusOr<ContributionProfile> AnalyzeContributions(const train::ModelBuilder& build,
                                                         const runtime::ParameterStore& base,
                                                         const std::vector<Candidate>& candidates,
                                                         const CalibrationData& data,
                                                         const ContributionOptions& options);

// Fine-tunes each set's candidates together from a copy of `base` for
// options.steps steps and evaluates it on the held-out set, as
// AnalyzeContributions does for one candidate. `origins` labels the sets (one
// per set, no whitespace). Errors as AnalyzeContributions, plus
// InvalidArgument for an empty set, two candidates on one tensor, or an
// origin with whitespace.
absl::StatusOr<std::vector<JointContribution>> AnalyzeJoint(
    const train::ModelBuilder& build, const runtime::ParameterStore& base,
    const std::vector<std::vector<Candidate>>& sets, const std::vector<std::string>& origins,
    const CalibrationData& data, const ContributionOptions& options);

// The profile as text, one fact per line; %.17g doubles, so it round-trips.
std::string ProfileToText(const ContributionProfile& profile);
// InvalidArgument naming the line for a malformed line or unknown key.
absl::StatusOr<ContributionProfile> ParseProfileText(absl::string_view text);
absl::Status WriteProfile(const std::string& path, const ContributionProfile& profile);
absl::StatusOr<ContributionProfile> ReadProfile(const std::string& path);

enum class GainMetric { kAccuracy, kLoss };
// The profile's entries as scored candidates of `model`. InvalidArgument
// naming the id for one that is not a candidate of the model.
absl::StatusOr<std::vector<ScoredCandidate>> ScoreCandidates(
    const models::Model& model, const ContributionProfile& profile,
    GainMetric metric = GainMetric::kAccuracy);

}  // namespace fleettune::engine::search

#endif  // FLEETTUNE_ENGINE_SEARCH_CONTRIBUTION_H_
