#include "agent/data/readers.h"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "agent/data/test_files.h"
#include "engine/base/status_macros.h"
#include "engine/base/status_matchers.h"
#include "engine/ir/tensor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::agent {
namespace {

using ::fleettune::agent::testing::MakeTempDir;
using ::fleettune::agent::testing::MnistTestId;
using ::fleettune::agent::testing::MnistTestValue;
using ::fleettune::agent::testing::OpenCvTestPixel;
using ::fleettune::agent::testing::OpenCvTestPngBytes;
using ::fleettune::agent::testing::WriteFile;
using ::fleettune::agent::testing::WriteIdxTrainFiles;
using ::fleettune::agent::testing::WriteMnistJsonDir;
using ::fleettune::agent::testing::WritePng;
using ::fleettune::engine::DType;
using ::fleettune::engine::Shape;
using ::fleettune::engine::Tensor;
using ::fleettune::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

// Designated initializers are C++20; the project builds as C++17.
SplitOptions Options(const std::string& name, int shard_index = 0, int shard_count = 0,
                     double holdout_fraction = 0.0) {
  SplitOptions options;
  options.name = name;
  options.shard_index = shard_index;
  options.shard_count = shard_count;
  options.holdout_fraction = holdout_fraction;
  return options;
}

std::vector<int> Uniform(int per_digit) { return std::vector<int>(10, per_digit); }

// An in-memory data set of n samples whose first pixel identifies them (MnistTestId).
LabeledData IdData(int n) {
  LabeledData data;
  data.images = Tensor(DType::kF32, {n, kImagePixels});
  data.labels = Tensor(DType::kI32, {n});
  data.num_classes = 10;
  for (int i = 0; i < n; ++i) {
    data.images.f32()[i * kImagePixels] = MnistTestValue(i);
    data.labels.i32()[i] = i % 10;
  }
  return data;
}

std::vector<int> Ids(const LabeledData& data) {
  std::vector<int> ids;
  for (int64_t i = 0; i < data.size(); ++i) {
    ids.push_back(MnistTestId(data.images.f32() + i * kImagePixels));
  }
  return ids;
}

// ---- mnist-json ----

TEST(ReadMnistJson, ReadsSamplesInFileOrderLabelledByFileDigit) {
  const std::string dir = MakeTempDir("mnist_ok");
  ASSERT_NO_FATAL_FAILURE(WriteMnistJsonDir(dir, {2, 1, 0, 3, 1, 1, 1, 1, 1, 1}));
  ASSERT_OK_AND_ASSIGN(LabeledData data, ReadMnistJson(dir));
  EXPECT_EQ(data.images.shape(), (Shape{12, 784}));
  EXPECT_EQ(data.labels.shape(), (Shape{12}));
  EXPECT_EQ(data.num_classes, 10);
  const std::vector<int> want_labels = {0, 0, 1, 3, 3, 3, 4, 5, 6, 7, 8, 9};
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(data.labels.i32()[i], want_labels[i]) << i;
    for (int k = 0; k < 784; ++k) {
      ASSERT_EQ(data.images.f32()[i * 784 + k], MnistTestValue(i)) << i << " " << k;
    }
  }
}

TEST(ReadMnistJson, MissingDirectoryIsNotFound) {
  EXPECT_THAT(ReadMnistJson("/nonexistent/digits"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/digits")));
}

TEST(ReadMnistJson, FileInsteadOfDirectoryIsInvalid) {
  const std::string path = ::testing::TempDir() + "/not_a_dir.json";
  ASSERT_NO_FATAL_FAILURE(WriteFile(path, "{}"));
  EXPECT_THAT(ReadMnistJson(path),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a directory")));
}

TEST(ReadMnistJson, MissingDigitFileIsNotFound) {
  const std::string dir = MakeTempDir("mnist_missing_9");
  ASSERT_NO_FATAL_FAILURE(WriteMnistJsonDir(dir, Uniform(1)));
  ASSERT_EQ(std::remove((dir + "/9.json").c_str()), 0);
  EXPECT_THAT(ReadMnistJson(dir), StatusIs(absl::StatusCode::kNotFound, HasSubstr("9.json")));
}

TEST(ReadMnistJson, ShortVectorIsInvalid) {
  const std::string dir = MakeTempDir("mnist_short");
  ASSERT_NO_FATAL_FAILURE(WriteMnistJsonDir(dir, Uniform(1)));
  std::string json = "{\"data\":[0";
  for (int k = 1; k < 783; ++k) json += ",0.5";
  json += "]}";
  ASSERT_NO_FATAL_FAILURE(WriteFile(dir + "/4.json", json));
  EXPECT_THAT(ReadMnistJson(dir), StatusIs(absl::StatusCode::kInvalidArgument,
                                           AllOf(HasSubstr("4.json"), HasSubstr("783 values"))));
}

TEST(ReadMnistJson, MalformedFilesAreInvalid) {
  const std::string dir = MakeTempDir("mnist_bad");
  ASSERT_NO_FATAL_FAILURE(WriteMnistJsonDir(dir, Uniform(1)));
  const std::string one_sample_tail = [] {
    std::string s;
    for (int k = 1; k < 784; ++k) s += ",0";
    return s;
  }();
  const std::pair<std::string, std::string> cases[] = {
      {"{\"data\":[0,0", "not valid JSON"},
      {"", "not valid JSON"},
      {"[0,0]", "not an object"},
      {"{\"pixels\":[]}", "no \"data\" array"},
      {"{\"data\":{}}", "no \"data\" array"},
      {"{\"data\":[1.5" + one_sample_tail + "]}", "data[0] is 1.5"},
      {"{\"data\":[-0.1" + one_sample_tail + "]}", "data[0] is -0.1"},
      {"{\"data\":[\"0\"" + one_sample_tail + "]}", "not a number in [0, 1]"},
      {"{\"data\":[[0]" + one_sample_tail + "]}", "not a number in [0, 1]"},
  };
  for (const auto& [json, want] : cases) {
    ASSERT_NO_FATAL_FAILURE(WriteFile(dir + "/7.json", json));
    EXPECT_THAT(ReadMnistJson(dir), StatusIs(absl::StatusCode::kInvalidArgument,
                                             AllOf(HasSubstr("7.json"), HasSubstr(want))))
        << json.substr(0, 40);
  }
}

TEST(ReadMnistJson, NoSamplesAtAllIsInvalid) {
  const std::string dir = MakeTempDir("mnist_empty");
  ASSERT_NO_FATAL_FAILURE(WriteMnistJsonDir(dir, Uniform(0)));
  EXPECT_THAT(ReadMnistJson(dir),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no samples")));
}

// ---- opencv-digits-png ----

TEST(ReadOpenCvDigitsPng, CentresEachTileInAnMnistCanvasLabelledByBand) {
  const std::string path = ::testing::TempDir() + "/digits_ok.png";
  ASSERT_NO_FATAL_FAILURE(WritePng(path, 2000, 1000, OpenCvTestPixel));
  ASSERT_OK_AND_ASSIGN(LabeledData data, ReadOpenCvDigitsPng(path));
  ASSERT_EQ(data.images.shape(), (Shape{5000, 784}));
  ASSERT_EQ(data.labels.shape(), (Shape{5000}));
  EXPECT_EQ(data.num_classes, 10);
  for (int i = 0; i < 5000; ++i) ASSERT_EQ(data.labels.i32()[i], i / 500) << i;
  for (const auto& [row, col] : std::vector<std::pair<int, int>>{{0, 0}, {7, 42}, {49, 99}}) {
    const float* canvas = data.images.f32() + (row * 100 + col) * 784;
    for (int y = 0; y < 28; ++y) {
      for (int x = 0; x < 28; ++x) {
        const bool inside = y >= 4 && y < 24 && x >= 4 && x < 24;
        const float want =
            inside ? OpenCvTestPixel(col * 20 + x - 4, row * 20 + y - 4) / 255.0f : 0.0f;
        ASSERT_EQ(canvas[y * 28 + x], want)
            << "tile " << row << "," << col << " at " << x << "," << y;
      }
    }
  }
}

TEST(ReadOpenCvDigitsPng, MissingFileIsNotFound) {
  EXPECT_THAT(ReadOpenCvDigitsPng("/nonexistent/digits.png"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/digits.png")));
}

TEST(ReadOpenCvDigitsPng, WrongSizeIsInvalid) {
  const std::string path = ::testing::TempDir() + "/digits_small.png";
  ASSERT_NO_FATAL_FAILURE(WritePng(path, 20, 10, [](uint32_t x, uint32_t y) { return x + y; }));
  EXPECT_THAT(
      ReadOpenCvDigitsPng(path),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr(path), HasSubstr("expected 2000x1000"), HasSubstr("got 20x10"))));
}

TEST(ReadOpenCvDigitsPng, NotAPngIsInvalid) {
  const std::string path = ::testing::TempDir() + "/digits_text.png";
  ASSERT_NO_FATAL_FAILURE(WriteFile(path, "this is not a PNG file at all"));
  EXPECT_THAT(ReadOpenCvDigitsPng(path),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path), HasSubstr("not a readable PNG"))));
}

TEST(ReadOpenCvDigitsPng, TruncatedPngIsAnErrorNotACrash) {
  const std::string bytes = OpenCvTestPngBytes();
  ASSERT_GT(bytes.size(), 1000u);
  const std::string path = ::testing::TempDir() + "/digits_truncated.png";
  // Cut inside the pixel data: the header reads, the pixels do not.
  ASSERT_NO_FATAL_FAILURE(WriteFile(path, bytes.substr(0, bytes.size() / 2)));
  EXPECT_THAT(ReadOpenCvDigitsPng(path),
              StatusIs(absl::StatusCode::kDataLoss,
                       AllOf(HasSubstr(path), HasSubstr("corrupt or truncated"))));
  // Cut inside the header.
  ASSERT_NO_FATAL_FAILURE(WriteFile(path, bytes.substr(0, 20)));
  EXPECT_THAT(ReadOpenCvDigitsPng(path),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a readable PNG")));
  // Every other cut, from header to end: an error of some kind, never a crash.
  for (size_t cut = 0; cut < bytes.size(); cut += bytes.size() / 97 + 1) {
    ASSERT_NO_FATAL_FAILURE(WriteFile(path, bytes.substr(0, cut)));
    EXPECT_FALSE(ReadOpenCvDigitsPng(path).ok()) << cut;
  }
}

TEST(ReadOpenCvDigitsPng, CorruptPixelDataIsDataLoss) {
  std::string bytes = OpenCvTestPngBytes();
  // Flip bytes in the middle of the compressed pixel data: the chunk's CRC no longer matches.
  for (size_t i = bytes.size() / 2; i < bytes.size() / 2 + 16; ++i) bytes[i] ^= 0x5a;
  const std::string path = ::testing::TempDir() + "/digits_corrupt.png";
  ASSERT_NO_FATAL_FAILURE(WriteFile(path, bytes));
  EXPECT_THAT(ReadOpenCvDigitsPng(path), StatusIs(absl::StatusCode::kDataLoss, HasSubstr(path)));
}

// ---- idx ----

TEST(ReadIdxTrainSplit, FlattensTrainImagesToMnistVectors) {
  const std::string dir = MakeTempDir("idx_ok");
  ASSERT_NO_FATAL_FAILURE(WriteIdxTrainFiles(dir, 28, 28, {3, 0, 9}));
  ASSERT_OK_AND_ASSIGN(LabeledData data, ReadIdxTrainSplit(dir));
  EXPECT_EQ(data.images.shape(), (Shape{3, 784}));
  EXPECT_EQ(data.num_classes, 10);
  EXPECT_EQ(std::vector<int32_t>(data.labels.i32(), data.labels.i32() + 3),
            (std::vector<int32_t>{3, 0, 9}));
  for (int i = 0; i < 3; ++i) {
    for (int k = 0; k < 784; ++k) {
      ASSERT_EQ(data.images.f32()[i * 784 + k], ((i + k) % 256) / 255.0f) << i << " " << k;
    }
  }
}

TEST(ReadIdxTrainSplit, Errors) {
  EXPECT_THAT(ReadIdxTrainSplit("/nonexistent/fashion"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/fashion")));

  const std::string small = MakeTempDir("idx_small");
  ASSERT_NO_FATAL_FAILURE(WriteIdxTrainFiles(small, 20, 20, {1, 2}));
  EXPECT_THAT(ReadIdxTrainSplit(small),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("20x20, not 28x28")));

  const std::string label = MakeTempDir("idx_label");
  ASSERT_NO_FATAL_FAILURE(WriteIdxTrainFiles(label, 28, 28, {1, 10}));
  EXPECT_THAT(ReadIdxTrainSplit(label),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("label 10 of sample 1")));

  const std::string missing = MakeTempDir("idx_no_labels");
  ASSERT_NO_FATAL_FAILURE(WriteIdxTrainFiles(missing, 28, 28, {1}));
  ASSERT_EQ(std::remove((missing + "/train-labels-idx1-ubyte.gz").c_str()), 0);
  EXPECT_THAT(ReadIdxTrainSplit(missing),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("train-labels-idx1-ubyte.gz")));
}

TEST(ReadDataset, DispatchesOnFormatAndRejectsUnknownOnes) {
  const std::string dir = MakeTempDir("dispatch");
  ASSERT_NO_FATAL_FAILURE(WriteMnistJsonDir(dir, Uniform(1)));
  ASSERT_OK_AND_ASSIGN(LabeledData data, ReadDataset("mnist-json", dir));
  EXPECT_EQ(data.size(), 10);
  EXPECT_THAT(ReadDataset("csv", dir), StatusIs(absl::StatusCode::kInvalidArgument,
                                                HasSubstr("unknown dataset format 'csv'")));
}

// ---- ShardAndSplit ----

TEST(ShardAndSplit, HoldsOutTwentyPercentByDefault) {
  ASSERT_OK_AND_ASSIGN(SplitData split, ShardAndSplit(IdData(100), Options("d")));
  EXPECT_EQ(split.train.size(), 80);
  EXPECT_EQ(split.holdout.size(), 20);
  EXPECT_EQ(split.train.images.shape(), (Shape{80, 784}));
  EXPECT_EQ(split.num_classes, 10);
  EXPECT_EQ(split.train.num_classes, 10);
  EXPECT_EQ(split.holdout.num_classes, 10);
  ASSERT_OK_AND_ASSIGN(SplitData half, ShardAndSplit(IdData(100), Options("d", 0, 0, 0.5)));
  EXPECT_EQ(half.holdout.size(), 50);
}

TEST(ShardAndSplit, KeepsLabelsWithTheirImages) {
  ASSERT_OK_AND_ASSIGN(SplitData split, ShardAndSplit(IdData(100), Options("d")));
  for (const LabeledData* part : {&split.train, &split.holdout}) {
    const std::vector<int> ids = Ids(*part);
    for (size_t k = 0; k < ids.size(); ++k) EXPECT_EQ(part->labels.i32()[k], ids[k] % 10);
  }
}

TEST(ShardAndSplit, ShufflesDeterministicallyByName) {
  ASSERT_OK_AND_ASSIGN(SplitData a, ShardAndSplit(IdData(100), Options("a")));
  ASSERT_OK_AND_ASSIGN(SplitData a2, ShardAndSplit(IdData(100), Options("a")));
  ASSERT_OK_AND_ASSIGN(SplitData b, ShardAndSplit(IdData(100), Options("b")));
  EXPECT_EQ(Ids(a.train), Ids(a2.train));
  EXPECT_EQ(Ids(a.holdout), Ids(a2.holdout));
  EXPECT_NE(Ids(a.train), Ids(b.train));
  // Shuffled, not in file order.
  std::vector<int> in_order(80);
  for (int i = 0; i < 80; ++i) in_order[i] = i;
  EXPECT_NE(Ids(a.train), in_order);
}

TEST(ShardAndSplit, ShardsPartitionTheData) {
  std::set<int> seen;
  int total = 0;
  for (int shard = 0; shard < 3; ++shard) {
    ASSERT_OK_AND_ASSIGN(SplitData split, ShardAndSplit(IdData(100), Options("d", shard, 3)));
    for (const LabeledData* part : {&split.train, &split.holdout}) {
      for (int id : Ids(*part)) {
        EXPECT_EQ(id % 3, shard) << id;
        EXPECT_TRUE(seen.insert(id).second) << "sample " << id << " in two shards";
        ++total;
      }
    }
  }
  EXPECT_EQ(total, 100);
  EXPECT_EQ(seen.size(), 100u);
}

TEST(ShardAndSplit, RejectsInvalidOptions) {
  const std::pair<SplitOptions, std::string> cases[] = {
      {Options("d", 3, 3), "shard_index 3 outside [0, 3)"},
      {Options("d", -1, 3), "shard_index -1 outside [0, 3)"},
      {Options("d", 0, -2), "shard_count -2 is negative"},
      {Options("d", 1, 0), "shard_index 1 without a shard_count"},
      {Options("d", 0, 0, 1.0), "holdout_fraction 1 outside [0, 1)"},
      {Options("d", 0, 0, -0.1), "holdout_fraction -0.1 outside [0, 1)"},
      {Options("d", 0, 0, std::numeric_limits<double>::quiet_NaN()), "holdout_fraction nan"},
  };
  for (const auto& [options, want] : cases) {
    EXPECT_THAT(ShardAndSplit(IdData(10), options),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(want)));
  }
}

TEST(ShardAndSplit, RejectsDataOfTheWrongShape) {
  LabeledData data = IdData(4);
  data.labels = Tensor(DType::kI32, {3});
  EXPECT_THAT(ShardAndSplit(data, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("i32[3]")));
}

}  // namespace
}  // namespace fleettune::agent
