#include "engine/search/profile_cache.h"

#include <filesystem>

#include "engine/base/file.h"
#include "engine/base/sha256.h"
#include "engine/base/status_matchers.h"
#include "engine/models/mlp.h"
#include "engine/search/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::search {
namespace {

class ProfileCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MakeArgmaxData(256, 1, &data_.train_images, &data_.train_labels);
    MakeArgmaxData(200, 2, &data_.heldout_images, &data_.heldout_labels);
    ASSERT_OK(models::InitializeMlp(kArgmaxMlp, 3, &base_));
    model_ = ArgmaxMlpBuilder()(1, models::Mode::kTrain).value();
    candidates_ = {ParseCandidateId(model_, "fc1.bias").value(),
                   ParseCandidateId(model_, "fc2.weight@1/2").value()};
    options_.model_name = "mlp-16";
    options_.task = "argmax 4";  // not a file-name character: replaced in the name
    options_.steps = 10;
    dir_ = std::string(std::getenv("TEST_TMPDIR")) + "/" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name() + "/profiles";
  }
  std::string Key() { return ProfileKey(model_, base_, candidates_, data_, options_).value(); }

  CalibrationData data_;
  runtime::ParameterStore base_;
  models::Model model_;
  std::vector<Candidate> candidates_;
  ContributionOptions options_;
  std::string dir_;
};

TEST_F(ProfileCacheTest, KeyChangesWithEveryInputThatChangesTheProfile) {
  const std::string key = Key();
  EXPECT_TRUE(IsSha256Hex(key));
  EXPECT_EQ(Key(), key);
  options_.threads = 2;  // not part of the measurement
  options_.task = "renamed";
  EXPECT_EQ(Key(), key);

  std::vector<std::string> keys = {key};
  auto changed = [&](const char* what) {
    const std::string k = Key();
    for (const std::string& seen : keys) EXPECT_NE(k, seen) << what;
    keys.push_back(k);
  };
  base_.Find("fc2.weight")->f32()[7] += 1e-3f;
  changed("a base weight");
  data_.heldout_labels.i32()[0] = (data_.heldout_labels.i32()[0] + 1) % 4;
  changed("a held-out label");
  data_.train_images.f32()[100] *= 0.5f;
  changed("a train pixel");
  options_.steps = 11;
  changed("steps");
  options_.seed = 4;
  changed("seed");
  options_.batch = 16;
  changed("batch");
  options_.optimizer.sgd.lr *= 2;
  changed("learning rate");
  options_.optimizer = autodiff::OptimizerConfig::AdamW({});
  changed("optimizer");
  candidates_.pop_back();
  changed("candidate list");
  model_ = models::BuildMlp({{16, 32, 4}, 2}).value();
  changed("model graph (batch)");
}

TEST_F(ProfileCacheTest, ComputesOnceThenReadsBackTheSameProfile) {
  ASSERT_OK_AND_ASSIGN(
      CachedProfile first,
      AnalyzeContributionsCached(ArgmaxMlpBuilder(), base_, candidates_, data_, options_, dir_));
  EXPECT_FALSE(first.hit);
  EXPECT_EQ(first.profile.key, Key());
  EXPECT_THAT(first.path, ::testing::HasSubstr("/mlp-16.argmax_4." + Key().substr(0, 16)));
  ASSERT_TRUE(std::filesystem::exists(first.path));

  ASSERT_OK_AND_ASSIGN(
      CachedProfile second,
      AnalyzeContributionsCached(ArgmaxMlpBuilder(), base_, candidates_, data_, options_, dir_));
  EXPECT_TRUE(second.hit);
  EXPECT_EQ(second.path, first.path);
  EXPECT_EQ(ProfileToText(second.profile), ProfileToText(first.profile));

  // New inputs: a miss, and a second file beside the first.
  options_.steps = 5;
  ASSERT_OK_AND_ASSIGN(
      CachedProfile third,
      AnalyzeContributionsCached(ArgmaxMlpBuilder(), base_, candidates_, data_, options_, dir_));
  EXPECT_FALSE(third.hit);
  EXPECT_NE(third.path, first.path);
}

TEST_F(ProfileCacheTest, ACorruptOrForeignFileIsRecomputedNotTrusted) {
  ASSERT_OK_AND_ASSIGN(
      CachedProfile first,
      AnalyzeContributionsCached(ArgmaxMlpBuilder(), base_, candidates_, data_, options_, dir_));
  // Same name, another key inside (e.g. a truncated key collision or a copy).
  ContributionProfile foreign = first.profile;
  foreign.key = std::string(64, 'a');
  foreign.entries[0].accuracy = 0.999;
  ASSERT_OK(WriteProfile(first.path, foreign));
  ASSERT_OK_AND_ASSIGN(
      CachedProfile again,
      AnalyzeContributionsCached(ArgmaxMlpBuilder(), base_, candidates_, data_, options_, dir_));
  EXPECT_FALSE(again.hit);
  EXPECT_EQ(ProfileToText(again.profile), ProfileToText(first.profile));

  ASSERT_OK(WriteFileAtomically(first.path, "garbage\n"));
  ASSERT_OK_AND_ASSIGN(again, AnalyzeContributionsCached(ArgmaxMlpBuilder(), base_, candidates_,
                                                         data_, options_, dir_));
  EXPECT_FALSE(again.hit);
  ASSERT_OK_AND_ASSIGN(again, AnalyzeContributionsCached(ArgmaxMlpBuilder(), base_, candidates_,
                                                         data_, options_, dir_));
  EXPECT_TRUE(again.hit);  // the rewritten file is good again
}

TEST_F(ProfileCacheTest, NoDirectoryMeansNoCachingAndAnUnwritableOneIsAnError) {
  ASSERT_OK_AND_ASSIGN(
      CachedProfile p,
      AnalyzeContributionsCached(ArgmaxMlpBuilder(), base_, candidates_, data_, options_, ""));
  EXPECT_FALSE(p.hit);
  EXPECT_TRUE(p.path.empty());
  EXPECT_EQ(p.profile.key, Key());

  const std::string file = std::string(std::getenv("TEST_TMPDIR")) + "/a_file";
  ASSERT_OK(WriteFileAtomically(file, "x"));
  EXPECT_FALSE(AnalyzeContributionsCached(ArgmaxMlpBuilder(), base_, candidates_, data_, options_,
                                          file + "/profiles")
                   .ok());
}

TEST_F(ProfileCacheTest, MissingBaseWeightIsInvalidArgument) {
  runtime::ParameterStore partial;
  ASSERT_OK(partial.Set("fc1.weight", *base_.Find("fc1.weight")));
  EXPECT_THAT(ProfileKey(model_, partial, candidates_, data_, options_),
              ::fleettune::testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                             ::testing::HasSubstr("fc1.bias")));
}

}  // namespace
}  // namespace fleettune::engine::search
