// Conversion between fleettune.v1.ContributionProfile (scheme.proto), which
// jobs carry to the coordinator, and the engine's search::ContributionProfile
// (engine/search/contribution.h), which `fleettune search` measures and caches.
//
//   ASSIGN_OR_RETURN(search::ContributionProfile p, search::ReadProfile(path));
//   *spec.mutable_scheme()->mutable_contribution_profile() = ProfileToProto(p);
//   ...
//   ASSIGN_OR_RETURN(search::ContributionProfile q, ProfileFromProto(spec.scheme()
//                                                                        .contribution_profile()));
//
// Profiles from jobs are untrusted: ProfileFromProto bounds and checks them.
// Thread-safe (functions only).
#ifndef FLEETTUNE_ENGINE_PLAN_PROFILE_IO_H_
#define FLEETTUNE_ENGINE_PLAN_PROFILE_IO_H_

#include "absl/status/statusor.h"
#include "engine/search/contribution.h"
#include "proto/fleettune/v1/scheme.pb.h"

namespace fleettune::engine::plan {

// More candidates than any model fleettune trains on a device has (MobileNetV2:
// 317); the bound also bounds the compiles a coordinator's search may spend.
inline constexpr int kMaxProfileEntries = 4096;
// Jointly measured sets: a few per budget searched; each costs the
// coordinator one compile per class.
inline constexpr int kMaxJointSets = 256;
inline constexpr size_t kMaxOriginBytes = 64;

v1::ContributionProfile ProfileToProto(const search::ContributionProfile& profile);

// InvalidArgument, naming the entry, for no entries or more than
// kMaxProfileEntries, an empty candidate id, a duplicate id, or an accuracy
// outside [0, 1] or a loss that is negative or not finite (base included);
// and, naming the joint set, for more than kMaxJointSets, an empty or
// over-long origin or one with whitespace, no candidates, more than
// kMaxProfileEntries, an empty or repeated id, steps < 1, or a bad accuracy
// or loss.
// Gains are recomputed from the accuracies and losses. Candidate ids are
// checked against a model later (search::ScoreCandidates).
absl::StatusOr<search::ContributionProfile> ProfileFromProto(const v1::ContributionProfile& proto);

}  // namespace fleettune::engine::plan

#endif  // FLEETTUNE_ENGINE_PLAN_PROFILE_IO_H_
