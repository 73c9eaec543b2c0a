#include "engine/io/idx.h"

#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
// status_matchers.h uses FT_STATUS_CONCAT_ from status_macros.h without including it.
#include "engine/base/status_macros.h"
#include "engine/base/status_matchers.h"
#include "engine/ir/tensor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::io {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint32_t kImagesMagic = 0x00000803;
constexpr uint32_t kLabelsMagic = 0x00000801;

void AppendBigEndian32(std::string& out, uint32_t v) {
  out.push_back(static_cast<char>(v >> 24));
  out.push_back(static_cast<char>(v >> 16));
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v));
}

std::string IdxBytes(uint32_t magic, const std::vector<uint32_t>& dims,
                     const std::vector<uint8_t>& items) {
  std::string out;
  AppendBigEndian32(out, magic);
  for (uint32_t d : dims) AppendBigEndian32(out, d);
  out.append(items.begin(), items.end());
  return out;
}

std::string TempPath(const std::string& name) { return ::testing::TempDir() + "/" + name; }

void WritePlain(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

void WriteGzip(const std::string& path, const std::string& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << path;
  if (!bytes.empty()) {
    ASSERT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
  }
  ASSERT_EQ(gzclose(file), Z_OK);
}

std::string ReadPlain(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// 2 images of 2x3 pixels covering 0, 255 and values in between.
const std::vector<uint8_t> kPixels = {0, 1, 2, 127, 128, 255, 255, 254, 3, 17, 200, 0};

TEST(ReadIdxImages, RoundTripsGzipAndPlainFiles) {
  const std::string bytes = IdxBytes(kImagesMagic, {2, 2, 3}, kPixels);
  const std::string gz_path = TempPath("images.gz");
  const std::string plain_path = TempPath("images.idx");
  WriteGzip(gz_path, bytes);
  WritePlain(plain_path, bytes);
  for (const std::string& path : {gz_path, plain_path}) {
    SCOPED_TRACE(path);
    ASSERT_OK_AND_ASSIGN(Tensor images, ReadIdxImages(path));
    EXPECT_EQ(images.dtype(), DType::kF32);
    EXPECT_THAT(images.shape(), ElementsAre(2, 2, 3));
    ASSERT_EQ(images.num_elements(), static_cast<int64_t>(kPixels.size()));
    for (size_t i = 0; i < kPixels.size(); ++i) {
      EXPECT_EQ(images.f32()[i], static_cast<float>(kPixels[i]) / 255.0f) << "pixel " << i;
    }
  }
}

TEST(ReadIdxLabels, RoundTripsGzipAndPlainFiles) {
  const std::string bytes = IdxBytes(kLabelsMagic, {4}, {0, 9, 3, 255});
  const std::string gz_path = TempPath("labels.gz");
  const std::string plain_path = TempPath("labels.idx");
  WriteGzip(gz_path, bytes);
  WritePlain(plain_path, bytes);
  for (const std::string& path : {gz_path, plain_path}) {
    SCOPED_TRACE(path);
    ASSERT_OK_AND_ASSIGN(Tensor labels, ReadIdxLabels(path));
    EXPECT_EQ(labels.dtype(), DType::kI32);
    EXPECT_THAT(labels.shape(), ElementsAre(4));
    EXPECT_THAT(std::vector<int32_t>(labels.i32(), labels.i32() + 4), ElementsAre(0, 9, 3, 255));
  }
}

TEST(ReadIdxImages, ReadsEmptyFile) {
  const std::string path = TempPath("empty_images.gz");
  WriteGzip(path, IdxBytes(kImagesMagic, {0, 28, 28}, {}));
  ASSERT_OK_AND_ASSIGN(Tensor images, ReadIdxImages(path));
  EXPECT_THAT(images.shape(), ElementsAre(0, 28, 28));
}

TEST(ReadIdxImages, RejectsWrongMagicNamingBoth) {
  const std::string path = TempPath("labels_as_images.gz");
  WriteGzip(path, IdxBytes(kLabelsMagic, {2}, {1, 2}));
  EXPECT_THAT(ReadIdxImages(path), StatusIs(absl::StatusCode::kInvalidArgument,
                                            AllOf(HasSubstr(path), HasSubstr("expected 0x00000803"),
                                                  HasSubstr("got 0x00000801"))));
  const std::string images_path = TempPath("images_as_labels.gz");
  WriteGzip(images_path, IdxBytes(kImagesMagic, {2, 2, 3}, kPixels));
  EXPECT_THAT(ReadIdxLabels(images_path),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("expected 0x00000801"), HasSubstr("got 0x00000803"))));
}

TEST(ReadIdxImages, RejectsTruncatedItems) {
  std::string bytes = IdxBytes(kImagesMagic, {2, 2, 3}, kPixels);
  bytes.resize(bytes.size() - 1);
  const std::string gz_path = TempPath("truncated_items.gz");
  const std::string plain_path = TempPath("truncated_items.idx");
  WriteGzip(gz_path, bytes);
  WritePlain(plain_path, bytes);
  for (const std::string& path : {gz_path, plain_path}) {
    EXPECT_THAT(ReadIdxImages(path),
                StatusIs(absl::StatusCode::kDataLoss,
                         AllOf(HasSubstr(path), HasSubstr("truncated"), HasSubstr("declares 12"),
                               HasSubstr("holds 11"))));
  }
}

TEST(ReadIdxImages, RejectsTruncatedHeader) {
  const std::string path = TempPath("truncated_header.idx");
  WritePlain(path, IdxBytes(kImagesMagic, {2, 2, 3}, {}).substr(0, 10));
  EXPECT_THAT(ReadIdxImages(path),
              StatusIs(absl::StatusCode::kDataLoss,
                       AllOf(HasSubstr("truncated"), HasSubstr("dimension 1"))));
  WritePlain(path, "");
  EXPECT_THAT(ReadIdxImages(path),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("header (magic)")));
}

TEST(ReadIdxImages, RejectsTruncatedGzipStream) {
  const std::string gz_path = TempPath("cut.gz");
  std::vector<uint8_t> pixels(4096);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i * 7919 % 251);
  WriteGzip(gz_path, IdxBytes(kImagesMagic, {4, 32, 32}, pixels));
  const std::string compressed = ReadPlain(gz_path);
  const std::string cut_path = TempPath("cut2.gz");
  WritePlain(cut_path, compressed.substr(0, compressed.size() / 2));
  EXPECT_THAT(ReadIdxImages(cut_path),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("truncated")));
}

TEST(ReadIdxImages, RejectsGzipWithBadChecksum) {
  const std::string path = TempPath("bad_crc.gz");
  WriteGzip(path, IdxBytes(kImagesMagic, {2, 2, 3}, kPixels));
  std::string compressed = ReadPlain(path);
  compressed[compressed.size() - 8] ^= 0x01;  // The trailer is CRC32, then length.
  WritePlain(path, compressed);
  EXPECT_THAT(ReadIdxImages(path),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("corrupt gzip stream")));
}

TEST(ReadIdxImages, RejectsTrailingBytes) {
  std::string bytes = IdxBytes(kImagesMagic, {2, 2, 3}, kPixels);
  bytes.push_back('x');
  const std::string path = TempPath("trailing.gz");
  WriteGzip(path, bytes);
  EXPECT_THAT(ReadIdxImages(path),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("trailing bytes")));
}

TEST(ReadIdxImages, RejectsAbsurdDimensionsWithoutAllocating) {
  const std::string path = TempPath("huge.idx");
  // 2^45 bytes: the check must fire on the header, before any allocation.
  WritePlain(path, IdxBytes(kImagesMagic, {1 << 15, 1 << 15, 1 << 15}, {}));
  EXPECT_THAT(ReadIdxImages(path),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("more than 1073741824")));
  // Just under the cap but absent: fails as truncated.
  WritePlain(path, IdxBytes(kImagesMagic, {1 << 10, 1 << 10, 1 << 10}, {1, 2, 3}));
  EXPECT_THAT(ReadIdxImages(path), StatusIs(absl::StatusCode::kDataLoss, HasSubstr("holds 3")));
}

TEST(ReadIdxImages, RejectsNegativeDimension) {
  const std::string path = TempPath("negative.idx");
  WritePlain(path, IdxBytes(kImagesMagic, {2, 0xfffffffe, 3}, {}));
  EXPECT_THAT(ReadIdxImages(path), StatusIs(absl::StatusCode::kInvalidArgument,
                                            HasSubstr("dimension 1 is negative (-2)")));
}

TEST(ReadIdxImages, MissingFileIsNotFoundNamingPath) {
  const std::string path = TempPath("does-not-exist.gz");
  EXPECT_THAT(ReadIdxImages(path), StatusIs(absl::StatusCode::kNotFound, HasSubstr(path)));
  EXPECT_THAT(ReadIdxLabels(path), StatusIs(absl::StatusCode::kNotFound, HasSubstr(path)));
}

TEST(ReadIdxImages, DirectoryIsInvalidArgument) {
  EXPECT_THAT(ReadIdxImages(::testing::TempDir()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("directory")));
}

// Flips and truncates bytes of a valid file; every result must be OK or a clean error.
TEST(ReadIdxImages, SurvivesMutatedFiles) {
  const std::string valid = IdxBytes(kImagesMagic, {2, 2, 3}, kPixels);
  const std::string path = TempPath("mutated.idx");
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) {
    std::string bytes = valid;
    if (i % 3 == 0) {
      bytes.resize(rng() % bytes.size());
    } else {
      bytes[rng() % bytes.size()] = static_cast<char>(rng());
    }
    WritePlain(path, bytes);
    const absl::StatusOr<Tensor> images = ReadIdxImages(path);
    if (images.ok()) continue;
    EXPECT_THAT(images.status().code(),
                ::testing::AnyOf(absl::StatusCode::kInvalidArgument, absl::StatusCode::kDataLoss))
        << images.status();
  }
}

// Writes a Fashion-MNIST-style directory; returns its path.
std::string WriteFakeFashionMnist(const std::string& name, uint32_t train_images,
                                  uint32_t train_labels, uint8_t max_label) {
  const std::string dir = TempPath(name);
  mkdir(dir.c_str(), 0755);
  const auto labels = [&](uint32_t n) {
    std::vector<uint8_t> v(n);
    for (uint32_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i % (max_label + 1));
    if (n > 0) v[n - 1] = max_label;
    return v;
  };
  WriteGzip(dir + "/train-images-idx3-ubyte.gz",
            IdxBytes(kImagesMagic, {train_images, 2, 2}, std::vector<uint8_t>(train_images * 4)));
  WriteGzip(dir + "/train-labels-idx1-ubyte.gz",
            IdxBytes(kLabelsMagic, {train_labels}, labels(train_labels)));
  WriteGzip(dir + "/t10k-images-idx3-ubyte.gz",
            IdxBytes(kImagesMagic, {2, 2, 2}, std::vector<uint8_t>(8, 255)));
  WriteGzip(dir + "/t10k-labels-idx1-ubyte.gz", IdxBytes(kLabelsMagic, {2}, {0, 1}));
  return dir;
}

TEST(LoadFashionMnist, LoadsConsistentDirectory) {
  const std::string dir = WriteFakeFashionMnist("fake_ok", 3, 3, 9);
  ASSERT_OK_AND_ASSIGN(ImageClassificationData data, LoadFashionMnist(dir));
  EXPECT_EQ(data.num_classes, 10);
  EXPECT_THAT(data.train_images.shape(), ElementsAre(3, 2, 2));
  EXPECT_THAT(data.train_labels.shape(), ElementsAre(3));
  EXPECT_THAT(data.test_images.shape(), ElementsAre(2, 2, 2));
  EXPECT_EQ(data.test_images.f32()[0], 1.0f);
  EXPECT_EQ(data.train_labels.i32()[2], 9);
  // A trailing slash on the directory is fine.
  EXPECT_OK(LoadFashionMnist(dir + "/").status());
}

TEST(LoadFashionMnist, RejectsImageLabelCountMismatch) {
  const std::string dir = WriteFakeFashionMnist("fake_mismatch", 3, 4, 9);
  EXPECT_THAT(LoadFashionMnist(dir), StatusIs(absl::StatusCode::kInvalidArgument,
                                              AllOf(HasSubstr("3 images"), HasSubstr("4 labels"),
                                                    HasSubstr("train-labels-idx1-ubyte.gz"))));
}

TEST(LoadFashionMnist, RejectsLabelOutOfRange) {
  const std::string dir = WriteFakeFashionMnist("fake_label", 3, 3, 10);
  EXPECT_THAT(LoadFashionMnist(dir),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("label 10 at index 2"), HasSubstr("not below 10"))));
}

TEST(LoadFashionMnist, MissingFileIsNotFoundNamingIt) {
  const std::string dir = WriteFakeFashionMnist("fake_missing", 3, 3, 9);
  ASSERT_EQ(unlink((dir + "/t10k-labels-idx1-ubyte.gz").c_str()), 0);
  EXPECT_THAT(LoadFashionMnist(dir),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("t10k-labels-idx1-ubyte.gz")));
}

TEST(LoadFashionMnist, LoadsRealDataSet) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) GTEST_SKIP() << dir << " absent (dataset-fashion-mnist)";
  ASSERT_OK_AND_ASSIGN(ImageClassificationData data, LoadFashionMnist(dir));
  EXPECT_EQ(data.num_classes, 10);
  EXPECT_THAT(data.train_images.shape(), ElementsAre(60000, 28, 28));
  EXPECT_THAT(data.train_labels.shape(), ElementsAre(60000));
  EXPECT_THAT(data.test_images.shape(), ElementsAre(10000, 28, 28));
  EXPECT_THAT(data.test_labels.shape(), ElementsAre(10000));
  // The first image of each split is an ankle boot (class 9).
  EXPECT_EQ(data.train_labels.i32()[0], 9);
  EXPECT_EQ(data.test_labels.i32()[0], 9);
  // Classes are balanced: 6000 train images each.
  std::vector<int> counts(10);
  for (int64_t i = 0; i < 60000; ++i) ++counts[data.train_labels.i32()[i]];
  for (int c = 0; c < 10; ++c) EXPECT_EQ(counts[c], 6000) << "class " << c;
  float lo = 1, hi = 0;
  for (float v : data.train_images.f32_span()) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  EXPECT_EQ(lo, 0.0f);
  EXPECT_EQ(hi, 1.0f);
}

}  // namespace
}  // namespace fleettune::engine::io
