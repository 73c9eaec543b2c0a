// Readers for IDX files, the format of MNIST and Fashion-MNIST.
//
// An IDX file is big-endian: a 4-byte magic (0x00000803 for uint8 images,
// 0x00000801 for uint8 labels), one int32 per dimension, then the uint8 items.
// Files are read through zlib, so gzip'd files (as distributed) and plain files
// both work.
//
//   ASSIGN_OR_RETURN(ImageClassificationData data,
//                    LoadFashionMnist("/usr/share/datasets/fashion-mnist"));
//   // data.train_images: f32 [60000, 28, 28] in [0, 1]; data.train_labels: i32 [60000].
//
// Files are untrusted: a corrupt file yields an error, never a crash or a huge
// allocation. Error codes:
//   NotFound         the file does not exist (the message names the path).
//   InvalidArgument  a malformed header (wrong magic, negative or absurd dimensions), bytes after
//                    the last item, or (LoadFashionMnist) files that disagree with each other.
//   DataLoss         the data ends before the header says it should, or the gzip stream is
//                    corrupt (bad CRC, broken deflate data).
// Other I/O failures carry the code that matches errno. Every message starts with the path.
//
// Thread-safety: the functions share no state; call them from any thread.
#ifndef FLEETTUNE_ENGINE_IO_IDX_H_
#define FLEETTUNE_ENGINE_IO_IDX_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/ir/tensor.h"

namespace fleettune::engine::io {

// The most item bytes (product of all dimensions) an IDX file may declare. It keeps a corrupt
// header from making us allocate terabytes; Fashion-MNIST's largest file holds 47 MB.
inline constexpr uint64_t kMaxIdxPayloadBytes = uint64_t{1} << 30;

// ReadIdxImages()
//
// Reads a uint8 image file (magic 0x00000803, dimensions N, rows, cols).
// Returns f32 [N, rows, cols] holding pixel / 255, so values lie in [0, 1].
absl::StatusOr<Tensor> ReadIdxImages(const std::string& path);

// ReadIdxLabels()
//
// Reads a uint8 label file (magic 0x00000801, dimension N).
// Returns i32 [N] with values in [0, 255]; callers check the class range.
absl::StatusOr<Tensor> ReadIdxLabels(const std::string& path);

// A labelled image data set split into train and test.
struct ImageClassificationData {
  Tensor train_images;  // f32 [N_train, rows, cols], values in [0, 1]
  Tensor train_labels;  // i32 [N_train], values in [0, num_classes)
  Tensor test_images;   // f32 [N_test, rows, cols]
  Tensor test_labels;   // i32 [N_test]
  int num_classes = 0;
};

// LoadFashionMnist()
//
// Reads train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and
// t10k-labels-idx1-ubyte.gz from `dir` (Debian's dataset-fashion-mnist installs them in
// /usr/share/datasets/fashion-mnist). Returns the data with num_classes = 10.
// Errors as for ReadIdxImages/ReadIdxLabels, plus InvalidArgument when a split has a different
// number of images and labels, a label is >= 10, or train and test images differ in size.
absl::StatusOr<ImageClassificationData> LoadFashionMnist(const std::string& dir);

}  // namespace fleettune::engine::io

#endif  // FLEETTUNE_ENGINE_IO_IDX_H_
