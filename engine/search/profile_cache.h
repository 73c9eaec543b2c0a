// A cache of contribution profiles (issue #7), keyed by what a profile
// depends on.
//
// Contribution analysis fine-tunes every candidate, which is the slow part of
// a search (minutes for MobileNetV2-sized models); its result depends only on
// the model, the base weights, the calibration data and the fine-tuning
// options. ProfileKey hashes exactly those (SHA-256), so a profile is reused
// for any device class and budget, and recomputed whenever any input changes.
//
//   ASSIGN_OR_RETURN(CachedProfile cached,
//                    AnalyzeContributionsCached(build, base, candidates, data, options,
//                                               "/var/cache/fleettune/profiles"));
//   // cached.hit: read from cached.path; otherwise computed and written there.
//
// Files are named <model>.<task>.<first 16 hex of the key>.profile and carry
// the whole key, which is checked on read: a file whose key (or contents)
// does not match is recomputed and replaced, never trusted. Writes are atomic.
// Not thread-safe per directory (two writers of one key both write the same
// profile; the last rename wins).
#ifndef FLEETTUNE_ENGINE_SEARCH_PROFILE_CACHE_H_
#define FLEETTUNE_ENGINE_SEARCH_PROFILE_CACHE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/models/model.h"
#include "engine/runtime/executable.h"
#include "engine/search/candidates.h"
#include "engine/search/contribution.h"

namespace fleettune::engine::search {

// 64 hex characters: SHA-256 over the profile format's revision, the model's
// weight names and shapes (from `base`), the candidate ids, the base weights'
// and buffers' bytes, the four calibration tensors (shapes and bytes) and the
// options that change the result (steps, batch, seed, optimizer and its
// hyper-parameters). Not the thread count (kernels are deterministic per
// thread count, and a profile is a measurement, not a bit-exact artefact) and
// not the task label (it only names the file). InvalidArgument when `base`
// lacks a model weight.
absl::StatusOr<std::string> ProfileKey(const models::Model& model,
                                       const runtime::ParameterStore& base,
                                       const std::vector<Candidate>& candidates,
                                       const CalibrationData& data,
                                       const ContributionOptions& options);

struct CachedProfile {
  ContributionProfile profile;  // profile.key is the ProfileKey
  bool hit = false;             // read from the cache rather than computed
  std::string path;             // the cache file (read or written)
};

// ProfileKey, then the profile from `cache_dir` when a file with that key is
// there; otherwise AnalyzeContributions, written to `cache_dir` (created if
// missing). An empty cache_dir computes without caching. Errors: those of
// AnalyzeContributions, and the file system's when the profile cannot be
// written (a computed profile is not thrown away silently).
absl::StatusOr<CachedProfile> AnalyzeContributionsCached(const train::ModelBuilder& build,
                                                         const runtime::ParameterStore& base,
                                                         const std::vector<Candidate>& candidates,
                                                         const CalibrationData& data,
                                                         const ContributionOptions& options,
                                                         const std::string& cache_dir);

}  // namespace fleettune::engine::search

#endif  // FLEETTUNE_ENGINE_SEARCH_PROFILE_CACHE_H_
