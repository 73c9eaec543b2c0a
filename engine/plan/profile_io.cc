#include "engine/plan/profile_io.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace fleettune::engine::plan {
namespace {

bool ValidAccuracy(double a) { return std::isfinite(a) && a >= 0.0 && a <= 1.0; }
bool ValidLoss(double l) { return std::isfinite(l) && l >= 0.0; }

}  // namespace

v1::ContributionProfile ProfileToProto(const search::ContributionProfile& p) {
  v1::ContributionProfile out;
  out.set_model(p.model_name);
  out.set_task(p.task);
  out.set_key(p.key);
  out.set_steps(p.steps);
  out.set_seed(p.seed);
  out.set_base_accuracy(p.base_accuracy);
  out.set_base_loss(p.base_loss);
  out.set_heldout_samples(p.heldout_samples);
  for (const search::Contribution& c : p.entries) {
    v1::ContributionProfile::Entry* e = out.add_entries();
    e->set_candidate(c.id);
    e->set_accuracy(c.accuracy);
    e->set_loss(c.loss);
  }
  for (const search::JointContribution& j : p.joint) {
    v1::ContributionProfile::Joint* e = out.add_joint();
    e->set_origin(j.origin);
    for (const std::string& id : j.ids) e->add_candidates(id);
    e->set_steps(j.steps);
    e->set_accuracy(j.accuracy);
    e->set_loss(j.loss);
  }
  return out;
}

absl::StatusOr<search::ContributionProfile> ProfileFromProto(const v1::ContributionProfile& proto) {
  if (proto.entries_size() == 0 || proto.entries_size() > kMaxProfileEntries) {
    return absl::InvalidArgumentError(absl::StrCat("contribution profile has ",
                                                   proto.entries_size(), " entries; 1 to ",
                                                   kMaxProfileEntries, " expected"));
  }
  if (!ValidAccuracy(proto.base_accuracy()) || !ValidLoss(proto.base_loss())) {
    return absl::InvalidArgumentError(absl::StrCat("contribution profile: base accuracy ",
                                                   proto.base_accuracy(), " or loss ",
                                                   proto.base_loss(), " is out of range"));
  }
  search::ContributionProfile p;
  p.model_name = proto.model();
  p.task = proto.task();
  p.key = proto.key();
  p.steps = proto.steps();
  p.seed = proto.seed();
  p.base_accuracy = proto.base_accuracy();
  p.base_loss = proto.base_loss();
  if (proto.heldout_samples() < 0 || proto.heldout_samples() > (int64_t{1} << 40)) {
    return absl::InvalidArgumentError(absl::StrCat("contribution profile: heldout_samples ",
                                                   proto.heldout_samples(), " is out of range"));
  }
  p.heldout_samples = proto.heldout_samples();
  std::set<std::string> seen;
  for (int i = 0; i < proto.entries_size(); ++i) {
    const v1::ContributionProfile::Entry& e = proto.entries(i);
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("contribution profile entry ", i, " ('",
                                                     absl::CHexEscape(e.candidate().substr(0, 200)),
                                                     "'): ", why));
    };
    if (e.candidate().empty()) return bad("empty candidate id");
    if (!seen.insert(e.candidate()).second) return bad("duplicate candidate");
    if (!ValidAccuracy(e.accuracy())) return bad("accuracy outside [0, 1]");
    if (!ValidLoss(e.loss())) return bad("loss negative or not finite");
    p.entries.push_back({e.candidate(), e.accuracy(), e.loss(), e.accuracy() - p.base_accuracy,
                         p.base_loss - e.loss()});
  }
  if (proto.joint_size() > kMaxJointSets) {
    return absl::InvalidArgumentError(absl::StrCat("contribution profile has ", proto.joint_size(),
                                                   " joint sets; at most ", kMaxJointSets));
  }
  for (int i = 0; i < proto.joint_size(); ++i) {
    const v1::ContributionProfile::Joint& j = proto.joint(i);
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("contribution profile joint set ", i, " ('",
                                                     absl::CHexEscape(j.origin().substr(0, 64)),
                                                     "'): ", why));
    };
    if (j.origin().empty() || j.origin().size() > kMaxOriginBytes ||
        std::any_of(j.origin().begin(), j.origin().end(),
                    [](char c) { return absl::ascii_isspace(static_cast<unsigned char>(c)); })) {
      return bad(
          absl::StrCat("origin must be 1 to ", kMaxOriginBytes, " bytes without whitespace"));
    }
    if (j.candidates_size() == 0 || j.candidates_size() > kMaxProfileEntries) {
      return bad(
          absl::StrCat(j.candidates_size(), " candidates; 1 to ", kMaxProfileEntries, " expected"));
    }
    if (j.steps() < 1) return bad("steps must be positive");
    if (!ValidAccuracy(j.accuracy())) return bad("accuracy outside [0, 1]");
    if (!ValidLoss(j.loss())) return bad("loss negative or not finite");
    search::JointContribution out;
    std::set<std::string> ids;
    for (const std::string& id : j.candidates()) {
      if (id.empty()) return bad("empty candidate id");
      if (!ids.insert(id).second) {
        return bad(absl::StrCat("candidate '", absl::CHexEscape(id.substr(0, 200)), "' twice"));
      }
      out.ids.push_back(id);
    }
    out.origin = j.origin();
    out.steps = j.steps();
    out.accuracy = j.accuracy();
    out.loss = j.loss();
    p.joint.push_back(std::move(out));
  }
  return p;
}

}  // namespace fleettune::engine::plan
