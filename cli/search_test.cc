#include "cli/search.h"

#include <cstdlib>
#include <filesystem>
#include <random>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/base/file.h"
#include "engine/base/status_matchers.h"
#include "engine/io/safetensors.h"
#include "engine/models/zoo.h"
#include "engine/plan/scheme_io.h"
#include "engine/search/contribution.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace fleettune::cli {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

std::string TempDir(const std::string& name) {
  return absl::StrCat(std::getenv("TEST_TMPDIR"), "/", name);
}

// A learnable "mnist-json" directory: digit d is a bright 6x6 square at a
// place of its own, on noise.
std::string WriteDigits() {
  const std::string dir = TempDir("digits");
  std::filesystem::create_directories(dir);
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> noise(0.0f, 0.3f);
  for (int d = 0; d < 10; ++d) {
    std::vector<std::string> values;
    for (int s = 0; s < 24; ++s) {
      for (int p = 0; p < 784; ++p) {
        const int r = p / 28, c = p % 28;
        const int r0 = 2 + (d / 5) * 12, c0 = 1 + (d % 5) * 5;
        const bool on = r >= r0 && r < r0 + 6 && c >= c0 && c < c0 + 5;
        values.push_back(absl::StrCat(on ? 1.0f : noise(rng)));
      }
    }
    EXPECT_OK(
        engine::WriteFileAtomically(absl::StrCat(dir, "/", d, ".json"),
                                    absl::StrCat("{\"data\":[", absl::StrJoin(values, ","), "]}")));
  }
  return dir;
}

std::string WriteBase() {
  const engine::models::ZooEntry* zoo = engine::models::FindZooModel("mlp").value();
  engine::models::Model model = zoo->build(1, engine::models::Mode::kEval).value();
  engine::runtime::ParameterStore params;
  EXPECT_OK(zoo->initialize(model, 0, &params));
  const std::string path = TempDir("base.safetensors");
  EXPECT_OK(engine::io::WriteSafetensors(path, params.tensors()));
  return path;
}

class SearchCommand : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    digits_ = new std::string(WriteDigits());
    base_ = new std::string(WriteBase());
  }
  std::map<std::string, std::string> Flags() {
    return {{"model", "mlp"},
            {"base", *base_},
            {"calibration", "mnist-json:" + *digits_},
            {"steps", "20"},
            {"classes", "rpi4,x86-avx2"},
            {"profile-cache", TempDir("profiles")}};
  }
  static std::string* digits_;
  static std::string* base_;
};
std::string* SearchCommand::digits_ = nullptr;
std::string* SearchCommand::base_ = nullptr;

TEST_F(SearchCommand, PrintsTheProfileAndEachClasssSchemeAndWritesFiles) {
  auto flags = Flags();
  flags["plot"] = TempDir("out/profile.png");
  flags["out-dir"] = TempDir("out/schemes");
  std::filesystem::create_directories(TempDir("out"));
  std::ostringstream out;
  ASSERT_OK(RunSearch(flags, /*json=*/false, &out));
  const std::string text = out.str();
  EXPECT_THAT(text, HasSubstr("15 candidates, 20 steps each"));
  EXPECT_THAT(text, HasSubstr("measured in"));
  EXPECT_THAT(text, HasSubstr("fc3.weight@1/2"));
  EXPECT_THAT(text, HasSubstr("class rpi4: budget 2.0 MiB"));
  EXPECT_THAT(text, HasSubstr("class x86-avx2: budget 64.0 MiB"));
  EXPECT_THAT(text, HasSubstr("ms/step"));
  // Each class's shortlist was fine-tuned jointly and checked against its selection.
  EXPECT_THAT(text, HasSubstr("shortlisted sets fine-tuned jointly (120 steps each)"));
  EXPECT_THAT(text, HasSubstr("last-k:1"));
  EXPECT_THAT(text, HasSubstr("after 120 joint steps ("));
  EXPECT_TRUE(std::filesystem::file_size(flags["plot"]) > 1000);
  for (const char* c : {"rpi4", "x86-avx2"}) {
    auto text =
        engine::ReadFileToString(absl::StrCat(flags["out-dir"], "/", c, ".scheme"), 1 << 20);
    ASSERT_OK(text.status());
    ASSERT_OK_AND_ASSIGN(engine::scheme::UpdateScheme s, engine::plan::ParseSchemeText(*text));
    EXPECT_EQ(s.name, absl::StrCat("searched-", c));
    EXPECT_FALSE(s.rules.empty());
  }

  // The same inputs again: the profile comes from the cache, and the choices are the same.
  std::ostringstream again;
  ASSERT_OK(RunSearch(flags, false, &again));
  EXPECT_THAT(again.str(), HasSubstr("read from the cache"));
  auto table_and_choices = [](const std::string& t) {
    std::string kept;
    std::istringstream lines(t.substr(t.find("CANDIDATE")));
    for (std::string line; std::getline(lines, line);) {
      if (line.find("  search ") == std::string::npos) kept += line + "\n";  // has a wall time
    }
    return kept;
  };
  EXPECT_EQ(table_and_choices(text), table_and_choices(again.str()));

  // The joint measurements were cached with the profile, and not measured again.
  int profiles = 0;
  for (const auto& f : std::filesystem::directory_iterator(flags["profile-cache"])) {
    ASSERT_OK_AND_ASSIGN(engine::search::ContributionProfile p,
                         engine::search::ReadProfile(f.path().string()));
    EXPECT_GE(p.joint.size(), 3u);
    ++profiles;
  }
  EXPECT_EQ(profiles, 1);
}

TEST_F(SearchCommand, JsonHasOneLinePerClassWithinItsBudget) {
  auto flags = Flags();
  flags["budget"] = "overhead:0.333";
  std::ostringstream out;
  ASSERT_OK(RunSearch(flags, /*json=*/true, &out));
  std::istringstream lines(out.str());
  std::string line;
  int n = 0;
  while (std::getline(lines, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    EXPECT_LE(j["predicted_memory_bytes"].get<int64_t>(), j["budget_bytes"].get<int64_t>());
    EXPECT_GT(j["budget_bytes"].get<int64_t>(), j["inference_bytes"].get<int64_t>());
    EXPECT_FALSE(j["chosen"].empty());
    EXPECT_EQ(j["profile_key"].get<std::string>().size(), 64u);
    EXPECT_TRUE(j["verified"].get<bool>());
    EXPECT_FALSE(j["origin"].get<std::string>().empty());
    ++n;
  }
  EXPECT_EQ(n, 2);

  // Verification checks the selection made with the gains asked for.
  flags["gain"] = "loss";
  std::ostringstream by_loss;
  ASSERT_OK(RunSearch(flags, /*json=*/true, &by_loss));
  const nlohmann::json first =
      nlohmann::json::parse(by_loss.str().substr(0, by_loss.str().find('\n')));
  EXPECT_TRUE(first["verified"].get<bool>());
  flags.erase("gain");

  // --verify-steps=0: the additive selection alone.
  flags["verify-steps"] = "0";
  std::ostringstream additive;
  ASSERT_OK(RunSearch(flags, /*json=*/true, &additive));
  EXPECT_FALSE(
      nlohmann::json::parse(additive.str().substr(0, additive.str().find('\n')))["verified"]
          .get<bool>());
}

TEST_F(SearchCommand, BadFlagsAreNamed) {
  std::ostringstream out;
  auto with = [&](const std::string& name, const std::string& value) {
    auto flags = Flags();
    if (value.empty()) {
      flags.erase(name);
    } else {
      flags[name] = value;
    }
    return RunSearch(flags, false, &out);
  };
  EXPECT_THAT(with("model", ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--model")));
  EXPECT_THAT(with("model", "vgg"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("vgg")));
  EXPECT_THAT(with("base", ""), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--base")));
  EXPECT_THAT(with("base", TempDir("nope.safetensors")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("--base")));
  EXPECT_THAT(with("calibration", "digits"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("FORMAT:PATH")));
  EXPECT_THAT(with("calibration", "jpeg:" + *digits_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--calibration")));
  EXPECT_THAT(with("calibration-shard", "3"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--calibration-shard")));
  EXPECT_THAT(with("classes", "rpi9"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("rpi9")));
  EXPECT_THAT(with("budget", "overhead:2"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--budget")));
  EXPECT_THAT(with("gain", "f1"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--gain")));
  EXPECT_THAT(with("steps", "0"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--steps")));
  EXPECT_THAT(with("verify-steps", "-1"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--verify-steps")));
  EXPECT_THAT(with("plot", TempDir("no/such/dir/p.png")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("--plot")));
}

TEST_F(SearchCommand, ABudgetBelowEveryCandidateIsReportedPerClass) {
  const std::string config = TempDir("classes.textproto");
  ASSERT_OK(engine::WriteFileAtomically(
      config,
      "classes { name: \"tiny\" arch: \"x\" training_memory_budget_bytes: 1000 threads: 1 }\n"
      "classes { name: \"big\" arch: \"x\" training_memory_budget_bytes: 100000000 threads: 1 "
      "}\n"));
  auto flags = Flags();
  flags.erase("classes");
  flags["device-classes"] = config;
  std::ostringstream out;
  EXPECT_THAT(RunSearch(flags, false, &out),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("class tiny")));
  EXPECT_THAT(out.str(), HasSubstr("class tiny: budget"));
  EXPECT_THAT(out.str(), HasSubstr("no scheme:"));
  EXPECT_THAT(out.str(), HasSubstr("class big: budget"));  // still searched and printed
}

}  // namespace
}  // namespace fleettune::cli
