// Verified scheme search (issue #7): a shortlist fine-tuned jointly.
//
// SelectScheme maximizes the sum of candidates' gains, each measured alone.
// Gains overlap (a retrained head and a retrained last conv fix much the same
// error), so the additive optimum can pay for candidates that add nothing
// together. Verification measures instead of adding: a shortlist of sets that
// fit the budget is fine-tuned jointly on the calibration data, each set's
// held-out result is recorded in the profile (ContributionProfile::joint),
// and a set that beat the selection by more than the calibration set's noise
// replaces it.
//
// The shortlist for a budget B:
//   "selection"       SelectScheme under B with accuracy gains,
//   "selection@1/2"   … and "selection@1/4": with a half and a quarter of
//                     what B adds to inference (fewer, cheaper candidates
//                     overlap less),
//   "selection-loss"  SelectScheme under B with loss gains (smoother),
//   "full", "bias-only", "last-k:N"
//                     the classic presets that fit B and that candidates can
//                     express (every trained tensor a candidate),
// deduplicated by candidate set. So the search never keeps a scheme that did
// clearly worse on the calibration data than a preset that fits.
//
//   VerifyOptions v;  v.steps = 120;
//   ASSIGN_OR_RETURN(Selection s, SearchVerified(build, base, data, model, costs,
//                                                {budget}, copts, v, &profile));
//   // s.origin: which shortlist entry won; profile.joint grew by what was new.
//
// SelectVerified alone (no data needed) decides from a profile's joint
// results: the coordinator uses it on a profile `fleettune search` verified.
// Deterministic for a seed. Not thread-safe (it uses the CostModel).
#ifndef FLEETTUNE_ENGINE_SEARCH_VERIFY_H_
#define FLEETTUNE_ENGINE_SEARCH_VERIFY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/models/model.h"
#include "engine/runtime/executable.h"
#include "engine/search/candidates.h"
#include "engine/search/contribution.h"
#include "engine/search/cost_model.h"
#include "engine/search/select.h"
#include "engine/train/trainer.h"

namespace fleettune::engine::search {

struct VerifyOptions {
  int64_t steps = 120;  // joint fine-tuning steps per shortlisted set (> 0)
  std::vector<double> budget_fractions = {1.0, 0.5, 0.25};  // for "selection[@f]"
  bool loss_selection = true;                               // "selection-loss"
  bool presets = true;                                      // "full", "bias-only", "last-k:N"
  double standard_errors = 1.0;                             // SelectVerified's margin
  GainMetric metric = GainMetric::kAccuracy;                // the selection's gains
  SelectOptions select;
};

struct ShortlistEntry {
  std::string origin;
  std::vector<Candidate> set;
};

// The shortlist for `budget` (see the file comment), every entry compiled and
// within the budget. Errors: SelectScheme's, except that a fraction of the
// budget fitting nothing only drops that entry; ResourceExhausted when no
// entry fits at all.
absl::StatusOr<std::vector<ShortlistEntry>> Shortlist(const models::Model& model,
                                                      const ContributionProfile& profile,
                                                      CostModel& costs, const Budget& budget,
                                                      const VerifyOptions& options);

// The preset as a candidate set, or NotFound when the preset trains a tensor
// that is not a candidate (an embedding) or trains nothing expressible.
absl::StatusOr<std::vector<Candidate>> PresetCandidates(const models::Model& model,
                                                        absl::string_view preset);

// The verified choice for `budget`: the additive selection (`incumbent`,
// SelectScheme's set for this budget) unless a jointly measured set that fits
// did better on the calibration hold-out by more than `standard_errors`
// binomial standard errors of the incumbent's accuracy a (√(a(1−a)/n), n =
// profile.heldout_samples; any margin when n is 0); then the best measured set
// (accuracy, then loss, then memory). Only measurements of `steps` steps count
// (0: the incumbent's longest). Calibration sets are small and runs short, so
// measurements understate what larger sets gain from a device's data: a
// challenger needs evidence beyond noise (BENCHMARKS.md, issue #7, has the
// runs that led here). The Selection carries the set, named "searched", its
// compiled cost, `verified` set and the origin and measurement of the set
// picked. NotFound when the incumbent was not measured (nothing to compare
// against); InvalidArgument for a joint set naming something that is not a
// candidate of `model`.
absl::StatusOr<Selection> SelectVerified(const models::Model& model,
                                         const ContributionProfile& profile, CostModel& costs,
                                         const Budget& budget,
                                         const std::vector<Candidate>& incumbent, int64_t steps = 0,
                                         double standard_errors = 1.0);

// SelectScheme (the incumbent), Shortlist, then AnalyzeJoint for the entries
// `profile->joint` lacks (same set and steps; `contribution` gives batch,
// seed, threads and optimizer, options.steps the steps), appended to it, then
// SelectVerified.
absl::StatusOr<Selection> SearchVerified(const train::ModelBuilder& build,
                                         const runtime::ParameterStore& base,
                                         const CalibrationData& data, const models::Model& model,
                                         CostModel& costs, const Budget& budget,
                                         const ContributionOptions& contribution,
                                         const VerifyOptions& options,
                                         ContributionProfile* profile);

}  // namespace fleettune::engine::search

#endif  // FLEETTUNE_ENGINE_SEARCH_VERIFY_H_
