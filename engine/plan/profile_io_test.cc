#include "engine/plan/profile_io.h"

#include <limits>

#include "engine/base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::plan {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

search::ContributionProfile Sample() {
  search::ContributionProfile p;
  p.model_name = "mlp";
  p.task = "opencv digits";
  p.key = std::string(64, 'e');
  p.steps = 60;
  p.seed = 3;
  p.base_accuracy = 0.5;
  p.base_loss = 1.5;
  p.heldout_samples = 500;
  p.entries = {{"fc1.bias", 0.75, 1.0, 0.25, 0.5}, {"fc2.weight@1/4", 0.25, 2.0, -0.25, -0.5}};
  p.joint = {{"selection", {"fc1.bias", "fc2.weight@1/4"}, 120, 0.8, 0.9},
             {"last-k:1", {"fc2.weight@1", "fc2.bias"}, 120, 0.7, 1.1}};
  return p;
}

TEST(ProfileIo, RoundTripsAndRecomputesGains) {
  const search::ContributionProfile p = Sample();
  ASSERT_OK_AND_ASSIGN(search::ContributionProfile q, ProfileFromProto(ProfileToProto(p)));
  EXPECT_EQ(search::ProfileToText(q), search::ProfileToText(p));
  EXPECT_EQ(q.entries[1].accuracy_gain, -0.25);
  EXPECT_EQ(q.entries[0].loss_gain, 0.5);
  ASSERT_EQ(q.joint.size(), 2u);
  EXPECT_EQ(q.joint[1].origin, "last-k:1");
  EXPECT_EQ(q.joint[1].ids, (std::vector<std::string>{"fc2.weight@1", "fc2.bias"}));

  v1::ContributionProfile lying = ProfileToProto(p);  // gains are not carried, so cannot lie
  ASSERT_OK_AND_ASSIGN(q, ProfileFromProto(lying));
  EXPECT_EQ(q.entries[0].accuracy_gain, 0.25);
}

TEST(ProfileIo, RejectsBadProfilesNamingTheEntry) {
  v1::ContributionProfile empty;
  EXPECT_THAT(ProfileFromProto(empty),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("0 entries")));

  auto with = [](auto edit) {
    v1::ContributionProfile proto = ProfileToProto(Sample());
    edit(proto);
    return ProfileFromProto(proto);
  };
  EXPECT_THAT(with([](v1::ContributionProfile& p) { p.mutable_entries(1)->set_accuracy(1.5); }),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("entry 1 ('fc2.weight@1/4'): accuracy")));
  EXPECT_THAT(with([](v1::ContributionProfile& p) {
                p.mutable_entries(0)->set_loss(std::numeric_limits<double>::quiet_NaN());
              }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("entry 0")));
  EXPECT_THAT(with([](v1::ContributionProfile& p) { p.mutable_entries(1)->set_candidate(""); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty candidate")));
  EXPECT_THAT(
      with([](v1::ContributionProfile& p) { p.mutable_entries(1)->set_candidate("fc1.bias"); }),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("duplicate")));
  EXPECT_THAT(with([](v1::ContributionProfile& p) { p.set_heldout_samples(-3); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("heldout_samples")));
  EXPECT_THAT(with([](v1::ContributionProfile& p) { p.set_base_loss(-1); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("base")));
  EXPECT_THAT(with([](v1::ContributionProfile& p) {
                for (int i = 0; i < kMaxProfileEntries; ++i) p.add_entries();
              }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("entries")));

  // Joint sets are named by index and origin.
  EXPECT_THAT(with([](v1::ContributionProfile& p) { p.mutable_joint(1)->set_origin("a b"); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("joint set 1")));
  EXPECT_THAT(with([](v1::ContributionProfile& p) { p.mutable_joint(0)->set_origin(""); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("whitespace")));
  EXPECT_THAT(
      with([](v1::ContributionProfile& p) { p.mutable_joint(0)->clear_candidates(); }),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("('selection'): 0 candidates")));
  EXPECT_THAT(
      with([](v1::ContributionProfile& p) { p.mutable_joint(0)->add_candidates("fc1.bias"); }),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'fc1.bias' twice")));
  EXPECT_THAT(with([](v1::ContributionProfile& p) { p.mutable_joint(0)->add_candidates(""); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty candidate")));
  EXPECT_THAT(with([](v1::ContributionProfile& p) { p.mutable_joint(0)->set_steps(0); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("steps")));
  EXPECT_THAT(with([](v1::ContributionProfile& p) { p.mutable_joint(1)->set_accuracy(-0.1); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("accuracy")));
  EXPECT_THAT(with([](v1::ContributionProfile& p) {
                p.mutable_joint(1)->set_loss(std::numeric_limits<double>::infinity());
              }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("loss")));
  EXPECT_THAT(with([](v1::ContributionProfile& p) {
                for (int i = 0; i < kMaxJointSets; ++i) *p.add_joint() = p.joint(0);
              }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("joint sets")));
}

}  // namespace
}  // namespace fleettune::engine::plan
