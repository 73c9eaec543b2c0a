#include "engine/search/profile_cache.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "engine/base/sha256.h"
#include "engine/base/status_macros.h"
#include "engine/ir/printer.h"

namespace fleettune::engine::search {
namespace {

// Bump when contribution analysis changes what it measures for the same
// inputs, so that older profiles are recomputed.
constexpr char kProfileRevision[] = "fleettune contribution profile key v1";

void HashString(Sha256& hash, absl::string_view s) {
  hash.UpdateInt(s.size());
  hash.Update(s);
}

void HashFloat(Sha256& hash, float v) { hash.Update(&v, sizeof(v)); }

void HashTensor(Sha256& hash, const Tensor& t) {
  hash.UpdateInt(static_cast<uint64_t>(t.dtype()));
  hash.UpdateInt(t.shape().size());
  for (int64_t d : t.shape()) hash.UpdateInt(static_cast<uint64_t>(d));
  hash.UpdateInt(t.bytes());
  if (t.bytes() > 0) hash.Update(t.raw(), t.bytes());
}

// A file name part: the characters [A-Za-z0-9_-] of `s`, others as '_'.
std::string FilePart(absl::string_view s) {
  std::string out = s.empty() ? "-" : std::string(s.substr(0, 64));
  for (char& c : out) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-';
    if (!ok) c = '_';
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> ProfileKey(const models::Model& model,
                                       const runtime::ParameterStore& base,
                                       const std::vector<Candidate>& candidates,
                                       const CalibrationData& data,
                                       const ContributionOptions& options) {
  Sha256 hash;
  HashString(hash, kProfileRevision);
  // The architecture: the forward graph's text names every op, attribute and
  // shape (at the builder's batch, which is part of the model's identity here).
  HashString(hash, PrintGraph(model.graph));
  for (const models::Layer& layer : model.layers) {
    for (const std::string& w : layer.weights) {
      const Tensor* t = base.Find(w);
      if (t == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("profile key: base weights lack model tensor '", w, "'"));
      }
      HashString(hash, w);
      HashTensor(hash, *t);
    }
  }
  for (const std::string& b : model.buffers) {
    const Tensor* t = base.Find(b);
    HashString(hash, b);
    if (t != nullptr) HashTensor(hash, *t);
  }
  hash.UpdateInt(candidates.size());
  for (const Candidate& c : candidates) HashString(hash, c.Id());
  HashTensor(hash, data.train_images);
  HashTensor(hash, data.train_labels);
  HashTensor(hash, data.heldout_images);
  HashTensor(hash, data.heldout_labels);
  hash.UpdateInt(static_cast<uint64_t>(options.steps));
  hash.UpdateInt(static_cast<uint64_t>(options.batch));
  hash.UpdateInt(options.seed);
  const autodiff::OptimizerConfig& o = options.optimizer;
  hash.UpdateInt(static_cast<uint64_t>(o.kind));
  if (o.kind == autodiff::OptimizerConfig::Kind::kSgd) {
    for (float v : {o.sgd.lr, o.sgd.momentum, o.sgd.weight_decay}) HashFloat(hash, v);
  } else {
    for (float v : {o.adamw.lr, o.adamw.beta1, o.adamw.beta2, o.adamw.eps, o.adamw.weight_decay}) {
      HashFloat(hash, v);
    }
  }
  return hash.HexDigest();
}

absl::StatusOr<CachedProfile> AnalyzeContributionsCached(const train::ModelBuilder& build,
                                                         const runtime::ParameterStore& base,
                                                         const std::vector<Candidate>& candidates,
                                                         const CalibrationData& data,
                                                         const ContributionOptions& options,
                                                         const std::string& cache_dir) {
  ASSIGN_OR_RETURN(models::Model probe, build(1, models::Mode::kTrain));
  ASSIGN_OR_RETURN(std::string key, ProfileKey(probe, base, candidates, data, options));
  CachedProfile out;
  if (!cache_dir.empty()) {
    out.path = absl::StrCat(cache_dir, "/", FilePart(options.model_name), ".",
                            FilePart(options.task), ".", key.substr(0, 16), ".profile");
    // A missing, unreadable or stale file is a miss: the profile is recomputed
    // and the file replaced.
    auto cached = ReadProfile(out.path);
    if (cached.ok() && cached->key == key && cached->entries.size() == candidates.size()) {
      out.profile = *std::move(cached);
      out.hit = true;
      return out;
    }
  }
  ASSIGN_OR_RETURN(out.profile, AnalyzeContributions(build, base, candidates, data, options));
  out.profile.key = key;
  if (!cache_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(cache_dir, ec);
    if (ec) {
      return absl::PermissionDeniedError(
          absl::StrCat(cache_dir, ": cannot create the profile cache: ", ec.message()));
    }
    RETURN_IF_ERROR(WriteProfile(out.path, out.profile));
  }
  return out;
}

}  // namespace fleettune::engine::search
