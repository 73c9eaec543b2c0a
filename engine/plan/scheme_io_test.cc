#include "engine/plan/scheme_io.h"

#include <random>
#include <string>

#include "engine/base/status_matchers.h"
#include "engine/models/mlp.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::plan {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(SchemeIo, ParsesTextFormatAndResolves) {
  ASSERT_OK_AND_ASSIGN(
      scheme::UpdateScheme s, ParseSchemeText(R"pb(
        name: "mine"
        rules { pattern: "*.bias" mode: UPDATE_MODE_FULL }
        rules { pattern: "fc2.weight" mode: UPDATE_MODE_CHANNELS channel_fraction: 0.25 }
      )pb"));
  EXPECT_EQ(s.name, "mine");
  ASSERT_EQ(s.rules.size(), 2u);
  EXPECT_EQ(s.rules[1].mode, scheme::UpdateMode::kChannels);
  EXPECT_EQ(s.rules[1].channel_fraction, 0.25);
  models::MlpConfig c;
  c.sizes = {4, 8, 8, 2};
  ASSERT_OK_AND_ASSIGN(models::Model m, models::BuildMlp(c));
  ASSERT_OK_AND_ASSIGN(scheme::ResolvedScheme r, scheme::ResolveScheme(m, s));
  EXPECT_THAT(r.TrainableNames(), ElementsAre("fc1.bias", "fc2.weight", "fc2.bias", "fc3.bias"));
  EXPECT_EQ(r.params[2].rows, 2);
}

TEST(SchemeIo, RoundTripsThroughText) {
  scheme::UpdateScheme s{"x",
                         {{"a.*", scheme::UpdateMode::kFull, 0.0},
                          {"b", scheme::UpdateMode::kChannels, 0.125},
                          {"c", scheme::UpdateMode::kFrozen, 0.0}}};
  ASSERT_OK_AND_ASSIGN(scheme::UpdateScheme back, ParseSchemeText(SchemeToText(s)));
  EXPECT_EQ(back, s);
}

TEST(SchemeIo, RejectsBadTextAndUnsetModes) {
  EXPECT_THAT(ParseSchemeText("rules { pattern: \"x\" mode: UPDATE_MODE_SOMETIMES }"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 1, column")));
  EXPECT_THAT(ParseSchemeText("rules { pattern: \"fc1.weight\" }"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("tensor pattern 'fc1.weight'): mode is unset")));
  v1::UpdateScheme p;
  p.add_rules()->set_pattern("y");
  p.mutable_rules(0)->set_mode(static_cast<v1::UpdateMode>(42));
  EXPECT_THAT(SchemeFromProto(p),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mode 42 is unknown")));
  EXPECT_THAT(ParseSchemeText(std::string(kMaxSchemeTextBytes + 1, ' ')),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("more than")));
  EXPECT_THAT(ParseSchemeText("\xff\xfe garbage {"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("scheme text")));
}

// Untrusted text: random byte mutations of a valid scheme either parse and
// resolve (or fail to) with a Status, never a crash.
TEST(SchemeIoMutation, MutatedTextNeverCrashes) {
  const std::string valid = R"pb(
    name: "m"
    rules { pattern: "*.bias" mode: UPDATE_MODE_FULL }
    rules { pattern: "fc2.weight" mode: UPDATE_MODE_CHANNELS channel_fraction: 0.25 }
    rules { pattern: "fc?.w*" mode: UPDATE_MODE_FROZEN }
  )pb";
  models::MlpConfig c;
  c.sizes = {4, 8, 8, 2};
  ASSERT_OK_AND_ASSIGN(models::Model m, models::BuildMlp(c));
  std::mt19937_64 rng(17);
  int parsed = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string text = valid;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t at = rng() % text.size();
      switch (rng() % 3) {
        case 0:
          text[at] = static_cast<char>(rng() % 256);
          break;
        case 1:
          text.erase(at, 1 + rng() % 8);
          break;
        default:
          text.insert(at, 1, "*?.{}:\"0123"[rng() % 13]);
      }
      if (text.empty()) text = "x";
    }
    absl::StatusOr<scheme::UpdateScheme> s = ParseSchemeText(text);
    if (!s.ok()) {
      EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();
      continue;
    }
    ++parsed;
    absl::StatusOr<scheme::ResolvedScheme> r = scheme::ResolveScheme(m, *s);
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    }
  }
  EXPECT_GT(parsed, 0);
}

}  // namespace
}  // namespace fleettune::engine::plan
