#include "engine/io/idx.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::io {
namespace {

constexpr uint32_t kImagesMagic = 0x00000803;  // uint8 items, 3 dimensions
constexpr uint32_t kLabelsMagic = 0x00000801;  // uint8 items, 1 dimension
constexpr int kFashionMnistClasses = 10;

// gzread takes an unsigned length and returns int; read in chunks well below both limits.
constexpr size_t kChunkBytes = size_t{1} << 20;

struct GzCloser {
  void operator()(gzFile_s* file) const { gzclose(file); }
};

// A file opened through zlib. Every error it returns starts with the path.
class GzReader {
 public:
  static absl::StatusOr<GzReader> Open(const std::string& path) {
    // stat first: gzopen's errno is not reliable across zlib versions, and a directory opens
    // fine but then fails to read with a confusing message.
    struct stat st;
    if (stat(path.c_str(), &st) != 0) {
      const int err = errno;
      if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
      return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot stat"));
    }
    if (S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory, not an IDX file"));
    }
    errno = 0;
    gzFile file = gzopen(path.c_str(), "rb");
    if (file == nullptr) {
      return absl::ErrnoToStatus(errno != 0 ? errno : EIO, absl::StrCat(path, ": cannot open"));
    }
    gzbuffer(file, 128 * 1024);
    return GzReader(path, file);
  }

  const std::string& path() const { return path_; }

  // Reads up to `n` bytes into `buf`; returns how many were read, fewer than `n` only at the end
  // of the data.
  absl::StatusOr<size_t> Read(void* buf, size_t n) {
    size_t got = 0;
    while (got < n) {
      const auto want = static_cast<unsigned>(std::min(n - got, kChunkBytes));
      const int r = gzread(file_.get(), static_cast<char*>(buf) + got, want);
      if (r < 0) {
        RETURN_IF_ERROR(CheckStream());
        return absl::DataLossError(absl::StrCat(path_, ": read failed"));
      }
      if (r == 0) break;
      got += static_cast<size_t>(r);
    }
    // zlib reports a gzip stream cut short (Z_BUF_ERROR) through gzerror, not through a -1.
    RETURN_IF_ERROR(CheckStream());
    return got;
  }

  // Reads a big-endian uint32 field; DataLoss if the file ends first.
  absl::StatusOr<uint32_t> ReadBigEndian32(absl::string_view field) {
    std::array<unsigned char, 4> b{};
    ASSIGN_OR_RETURN(size_t got, Read(b.data(), b.size()));
    if (got != b.size()) {
      return absl::DataLossError(
          absl::StrCat(path_, ": truncated: file ends inside the header (", field, ")"));
    }
    return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
  }

  // OK if nothing follows; also makes zlib verify the gzip trailer (CRC and length), which it
  // does only once it is asked for bytes past the end.
  absl::Status ExpectEnd(uint64_t items) {
    unsigned char extra;
    ASSIGN_OR_RETURN(size_t got, Read(&extra, 1));
    if (got != 0) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": trailing bytes after the ", items,
                                                     " items that the header declares"));
    }
    return absl::OkStatus();
  }

 private:
  GzReader(std::string path, gzFile file) : path_(std::move(path)), file_(file) {}

  absl::Status CheckStream() {
    const int saved_errno = errno;
    int errnum = Z_OK;
    const char* message = gzerror(file_.get(), &errnum);
    switch (errnum) {
      case Z_OK:
        return absl::OkStatus();
      case Z_ERRNO:
        return absl::ErrnoToStatus(saved_errno != 0 ? saved_errno : EIO,
                                   absl::StrCat(path_, ": read failed"));
      case Z_BUF_ERROR:
        return absl::DataLossError(absl::StrCat(path_, ": truncated gzip stream (", message, ")"));
      case Z_MEM_ERROR:
        return absl::ResourceExhaustedError(absl::StrCat(path_, ": zlib: ", message));
      default:
        return absl::DataLossError(absl::StrCat(path_, ": corrupt gzip stream (", message, ")"));
    }
  }

  std::string path_;
  std::unique_ptr<gzFile_s, GzCloser> file_;
};

// The checked header and raw items of one IDX file.
struct IdxContents {
  std::vector<int64_t> dims;
  std::vector<uint8_t> items;  // product(dims) bytes
};

// Reads a uint8 IDX file with the given magic (whose low byte is the rank).
absl::StatusOr<IdxContents> ReadIdx(const std::string& path, uint32_t magic,
                                    absl::string_view kind) {
  ASSIGN_OR_RETURN(GzReader reader, GzReader::Open(path));
  ASSIGN_OR_RETURN(uint32_t got_magic, reader.ReadBigEndian32("magic"));
  if (got_magic != magic) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: wrong magic: expected 0x%08x (%s), got 0x%08x", path, magic, kind, got_magic));
  }
  const int rank = static_cast<int>(magic & 0xff);
  IdxContents contents;
  uint64_t total = 1;
  for (int i = 0; i < rank; ++i) {
    ASSIGN_OR_RETURN(uint32_t raw, reader.ReadBigEndian32(absl::StrCat("dimension ", i)));
    // IDX dimensions are signed int32.
    if (raw > static_cast<uint32_t>(std::numeric_limits<int32_t>::max())) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": dimension ", i, " is negative (", static_cast<int32_t>(raw), ")"));
    }
    if (raw != 0 && total > kMaxIdxPayloadBytes / raw) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": header declares more than ",
                                                     kMaxIdxPayloadBytes, " bytes of items"));
    }
    total *= raw;
    contents.dims.push_back(raw);
  }

  // Grow the buffer with the data actually read, so that a truncated file whose header claims
  // a gigabyte allocates only what it holds.
  contents.items.reserve(std::min<uint64_t>(total, 16 * kChunkBytes));
  while (contents.items.size() < total) {
    const size_t old_size = contents.items.size();
    const size_t chunk = std::min<uint64_t>(total - old_size, kChunkBytes);
    contents.items.resize(old_size + chunk);
    ASSIGN_OR_RETURN(size_t got, reader.Read(contents.items.data() + old_size, chunk));
    if (got < chunk) {
      return absl::DataLossError(absl::StrCat(path, ": truncated: header declares ", total,
                                              " bytes of items, file holds ", old_size + got));
    }
  }
  RETURN_IF_ERROR(reader.ExpectEnd(total));
  return contents;
}

std::string JoinPath(const std::string& dir, absl::string_view name) {
  if (dir.empty() || dir.back() == '/') return absl::StrCat(dir, name);
  return absl::StrCat(dir, "/", name);
}

// InvalidArgument unless images and labels have the same count and every label is a class.
absl::Status CheckSplit(const Tensor& images, const std::string& images_path, const Tensor& labels,
                        const std::string& labels_path, int num_classes) {
  if (images.shape()[0] != labels.shape()[0]) {
    return absl::InvalidArgumentError(absl::StrCat(images.shape()[0], " images in ", images_path,
                                                   " but ", labels.shape()[0], " labels in ",
                                                   labels_path));
  }
  const int32_t* label = labels.i32();
  for (int64_t i = 0; i < labels.num_elements(); ++i) {
    if (label[i] >= num_classes) {
      return absl::InvalidArgumentError(absl::StrCat(labels_path, ": label ", label[i],
                                                     " at index ", i, " is not below ", num_classes,
                                                     " (the number of classes)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Tensor> ReadIdxImages(const std::string& path) {
  ASSIGN_OR_RETURN(IdxContents contents, ReadIdx(path, kImagesMagic, "uint8 images"));
  // A table gives exactly pixel / 255 (as a float division would) at the cost of a lookup.
  std::array<float, 256> scale;
  for (int v = 0; v < 256; ++v) scale[v] = static_cast<float>(v) / 255.0f;
  Tensor images(DType::kF32, Shape(contents.dims.begin(), contents.dims.end()));
  float* out = images.f32();
  for (size_t i = 0; i < contents.items.size(); ++i) out[i] = scale[contents.items[i]];
  return images;
}

absl::StatusOr<Tensor> ReadIdxLabels(const std::string& path) {
  ASSIGN_OR_RETURN(IdxContents contents, ReadIdx(path, kLabelsMagic, "uint8 labels"));
  Tensor labels(DType::kI32, Shape(contents.dims.begin(), contents.dims.end()));
  int32_t* out = labels.i32();
  for (size_t i = 0; i < contents.items.size(); ++i) out[i] = contents.items[i];
  return labels;
}

absl::StatusOr<ImageClassificationData> LoadFashionMnist(const std::string& dir) {
  const std::string train_images_path = JoinPath(dir, "train-images-idx3-ubyte.gz");
  const std::string train_labels_path = JoinPath(dir, "train-labels-idx1-ubyte.gz");
  const std::string test_images_path = JoinPath(dir, "t10k-images-idx3-ubyte.gz");
  const std::string test_labels_path = JoinPath(dir, "t10k-labels-idx1-ubyte.gz");

  ImageClassificationData data;
  data.num_classes = kFashionMnistClasses;
  ASSIGN_OR_RETURN(data.train_images, ReadIdxImages(train_images_path));
  ASSIGN_OR_RETURN(data.train_labels, ReadIdxLabels(train_labels_path));
  ASSIGN_OR_RETURN(data.test_images, ReadIdxImages(test_images_path));
  ASSIGN_OR_RETURN(data.test_labels, ReadIdxLabels(test_labels_path));

  RETURN_IF_ERROR(CheckSplit(data.train_images, train_images_path, data.train_labels,
                             train_labels_path, data.num_classes));
  RETURN_IF_ERROR(CheckSplit(data.test_images, test_images_path, data.test_labels, test_labels_path,
                             data.num_classes));
  const Shape& train = data.train_images.shape();
  const Shape& test = data.test_images.shape();
  if (train[1] != test[1] || train[2] != test[2]) {
    return absl::InvalidArgumentError(
        absl::StrCat("train images are ", train[1], "x", train[2], " (", train_images_path,
                     ") but test images are ", test[1], "x", test[2], " (", test_images_path, ")"));
  }
  return data;
}

}  // namespace fleettune::engine::io
