#include "cli/plot.h"

#include <cairo.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::cli {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

// Colours plot.h documents (Okabe-Ito), and plot.cc's y = 0 line, as 0xRRGGBB.
constexpr uint32_t kSeries0 = 0x0072B2;
constexpr uint32_t kSeries1 = 0xD55E00;
constexpr uint32_t kWhite = 0xFFFFFF;
constexpr uint32_t kBlack = 0x000000;
constexpr uint32_t kZeroLine = 0x808080;

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return absl::StrCat(dir != nullptr ? dir : "/tmp", "/", name);
}

bool FileExists(const std::string& path) {
  cairo_surface_t* s = cairo_image_surface_create_from_png(path.c_str());
  const bool exists = cairo_surface_status(s) != CAIRO_STATUS_FILE_NOT_FOUND;
  cairo_surface_destroy(s);
  return exists;
}

// A PNG read back with cairo; pixels row-major as 0xRRGGBB (the plot is opaque).
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint32_t> pixels;

  uint32_t At(int x, int y) const { return pixels[static_cast<size_t>(y) * width + x]; }
  int Count(uint32_t rgb) const {
    return static_cast<int>(std::count(pixels.begin(), pixels.end(), rgb));
  }
  // Rows holding a pixel of `rgb`, top to bottom.
  std::vector<int> Rows(uint32_t rgb) const {
    std::vector<int> rows;
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        if (At(x, y) == rgb) {
          rows.push_back(y);
          break;
        }
      }
    }
    return rows;
  }
  // Columns holding a pixel of `rgb`, left to right.
  std::vector<int> Columns(uint32_t rgb) const {
    std::vector<int> columns;
    for (int x = 0; x < width; ++x) {
      for (int y = 0; y < height; ++y) {
        if (At(x, y) == rgb) {
          columns.push_back(x);
          break;
        }
      }
    }
    return columns;
  }
  // The row with the most pixels of `rgb`, and how many.
  std::pair<int, int> FullestRow(uint32_t rgb) const {
    std::pair<int, int> best{-1, 0};
    for (int y = 0; y < height; ++y) {
      int n = 0;
      for (int x = 0; x < width; ++x) n += At(x, y) == rgb;
      if (n > best.second) best = {y, n};
    }
    return best;
  }
};

Image ReadPng(const std::string& path) {
  Image image;
  cairo_surface_t* surface = cairo_image_surface_create_from_png(path.c_str());
  if (cairo_surface_status(surface) != CAIRO_STATUS_SUCCESS) {
    ADD_FAILURE() << path << ": " << cairo_status_to_string(cairo_surface_status(surface));
    cairo_surface_destroy(surface);
    return image;
  }
  cairo_surface_flush(surface);
  image.width = cairo_image_surface_get_width(surface);
  image.height = cairo_image_surface_get_height(surface);
  const int stride = cairo_image_surface_get_stride(surface);
  const unsigned char* data = cairo_image_surface_get_data(surface);
  for (int y = 0; y < image.height; ++y) {
    const auto* row = reinterpret_cast<const uint32_t*>(data + static_cast<size_t>(y) * stride);
    // RGB24 or ARGB32, native-endian 0xAARRGGBB; opaque, so no premultiplication to undo.
    for (int x = 0; x < image.width; ++x) image.pixels.push_back(row[x] & 0xFFFFFF);
  }
  cairo_surface_destroy(surface);
  return image;
}

ScatterPlot TwoSeriesPlot() {
  ScatterPlot plot;
  plot.title = "mobilenet_v2: update candidates";
  plot.x_label = "extra training memory (bytes)";
  plot.y_label = "accuracy gain";
  plot.series_names = {"conv1", "block3"};
  plot.points = {
      {1e5, 0.010, 0, "a", false}, {2e5, -0.005, 0, "b", false}, {4e5, 0.020, 0, "c", false},
      {1e6, 0.030, 1, "d", false}, {3e6, 0.015, 1, "e", false},
  };
  return plot;
}

Image Render(const ScatterPlot& plot, const std::string& name) {
  const std::string path = TempPath(name);
  const absl::Status status = WriteScatterPng(plot, path);
  EXPECT_TRUE(status.ok()) << status;
  if (!status.ok()) return Image{};
  return ReadPng(path);
}

TEST(WriteScatterPng, WritesPngOfRequestedSize) {
  ScatterPlot plot = TwoSeriesPlot();
  plot.width = 640;
  plot.height = 480;
  const Image image = Render(plot, "size.png");
  EXPECT_EQ(image.width, 640);
  EXPECT_EQ(image.height, 480);
}

TEST(WriteScatterPng, SmallestAllowedSizeRenders) {
  ScatterPlot plot = TwoSeriesPlot();
  plot.width = 200;
  plot.height = 200;
  const Image image = Render(plot, "smallest.png");
  EXPECT_EQ(image.width, 200);
  EXPECT_GT(image.Count(kSeries0), 0);
}

TEST(WriteScatterPng, ImageIsNotBlank) {
  const Image image = Render(TwoSeriesPlot(), "not_blank.png");
  const int total = image.width * image.height;
  const int white = image.Count(kWhite);
  // Axes, grid, text and points: far more than a few stray pixels, far less than all.
  EXPECT_GT(total - white, total / 100);
  EXPECT_GT(white, total / 2);
}

TEST(WriteScatterPng, DrawsEachSeriesInItsOwnColour) {
  const Image image = Render(TwoSeriesPlot(), "two_series.png");
  EXPECT_GT(image.Count(kSeries0), 20);
  EXPECT_GT(image.Count(kSeries1), 20);
}

TEST(WriteScatterPng, SeriesWithoutPointsLeavesNoTrace) {
  ScatterPlot plot = TwoSeriesPlot();
  plot.points.erase(std::remove_if(plot.points.begin(), plot.points.end(),
                                   [](const ScatterPoint& p) { return p.series == 1; }),
                    plot.points.end());
  const Image image = Render(plot, "one_series.png");
  EXPECT_GT(image.Count(kSeries0), 20);
  // Neither a point nor a legend entry for the empty series.
  EXPECT_EQ(image.Count(kSeries1), 0);
}

TEST(WriteScatterPng, HighlightedPointChangesImage) {
  ScatterPlot plot = TwoSeriesPlot();
  const Image plain = Render(plot, "plain.png");
  plot.points[3].highlighted = true;
  plot.points[3].label = "block3: bias";
  const Image highlighted = Render(plot, "highlighted.png");
  ASSERT_EQ(plain.pixels.size(), highlighted.pixels.size());
  EXPECT_NE(plain.pixels, highlighted.pixels);
  // Larger, with a black outline.
  EXPECT_GT(highlighted.Count(kSeries1), plain.Count(kSeries1));
  EXPECT_GT(highlighted.Count(kBlack), plain.Count(kBlack));
}

TEST(WriteScatterPng, YRangeIncludesZeroWithALine) {
  ScatterPlot plot = TwoSeriesPlot();
  for (ScatterPoint& p : plot.points) p.y = 0.5 + p.x * 1e-7;  // all well above 0
  const Image image = Render(plot, "all_positive.png");
  const auto [zero_row, length] = image.FullestRow(kZeroLine);
  EXPECT_GT(length, image.width / 2);
  const std::vector<int> rows = image.Rows(kSeries0);
  ASSERT_FALSE(rows.empty());
  // Above the zero line, and not squashed onto it.
  EXPECT_LT(rows.back(), zero_row - image.height / 4);
}

TEST(WriteScatterPng, GainsAboveZeroDrawnAboveTheLineAndLossesBelow) {
  ScatterPlot plot = TwoSeriesPlot();
  plot.points = {{1.0, 0.5, 0, "", false}, {2.0, -0.5, 1, "", false}};
  plot.series_names = {"gain", "loss"};
  const Image image = Render(plot, "above_below.png");
  const int zero_row = image.FullestRow(kZeroLine).first;
  // The legend (right of the plot, at the top) holds both colours too, so
  // compare each colour's lowest row: the gain point's, and the loss point's.
  const std::vector<int> gain_rows = image.Rows(kSeries0);
  const std::vector<int> loss_rows = image.Rows(kSeries1);
  ASSERT_FALSE(gain_rows.empty());
  ASSERT_FALSE(loss_rows.empty());
  EXPECT_LT(gain_rows.back(), zero_row);
  EXPECT_GT(loss_rows.back(), zero_row);
}

TEST(WriteScatterPng, LogXSpreadsDecades) {
  ScatterPlot plot = TwoSeriesPlot();
  plot.log_x = true;
  plot.series_names = {"small", "large"};
  // On a linear axis the 1e3 and 1e4 points would share a pixel column.
  plot.points = {{1e3, 0.1, 0, "", false}, {1e4, 0.1, 1, "", false}, {1e9, 0.1, 0, "", false}};
  const Image image = Render(plot, "log_x.png");
  const std::vector<int> small = image.Columns(kSeries0);
  const std::vector<int> large = image.Columns(kSeries1);
  ASSERT_FALSE(small.empty());
  ASSERT_FALSE(large.empty());
  // The 1e4 point sits a sixth of the way from 1e3 to 1e9, not at 1e3.
  EXPECT_GT(large.front(), small.front() + image.width / 20);
}

TEST(WriteScatterPng, ManySeriesReuseColours) {
  ScatterPlot plot = TwoSeriesPlot();
  plot.series_names.clear();
  plot.points.clear();
  for (int s = 0; s < 40; ++s) {
    plot.series_names.push_back(absl::StrCat("layer ", s));
    plot.points.push_back({1.0 + s, 0.01 * s, s, "", s % 7 == 0});
  }
  const Image image = Render(plot, "many_series.png");
  EXPECT_GT(image.Count(kSeries0), 0);
  EXPECT_GT(image.Count(kSeries1), 0);
}

struct InvalidCase {
  std::string name;
  std::function<void(ScatterPlot&)> mutate;
  std::string message;
};

TEST(WriteScatterPng, RejectsInvalidPlots) {
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<InvalidCase> cases = {
      {"no_points", [](ScatterPlot& p) { p.points.clear(); }, "no points"},
      {"no_series", [](ScatterPlot& p) { p.series_names.clear(); }, "no series"},
      {"series_too_large", [](ScatterPlot& p) { p.points[2].series = 2; }, "point 2: series 2"},
      {"series_negative", [](ScatterPlot& p) { p.points[0].series = -1; }, "point 0: series -1"},
      {"nan_x", [](ScatterPlot& p) { p.points[1].x = std::nan(""); }, "point 1: non-finite"},
      {"inf_y", [inf](ScatterPlot& p) { p.points[4].y = -inf; }, "point 4: non-finite"},
      {"log_x_zero",
       [](ScatterPlot& p) {
         p.log_x = true;
         p.points[3].x = 0.0;
       },
       "point 3: x = 0 on a log axis"},
      {"log_x_negative",
       [](ScatterPlot& p) {
         p.log_x = true;
         p.points[0].x = -5.0;
       },
       "point 0: x = -5 on a log axis"},
      {"narrow", [](ScatterPlot& p) { p.width = 199; }, "plot size 199x700"},
      {"short", [](ScatterPlot& p) { p.height = 199; }, "plot size 1000x199"},
      {"wide", [](ScatterPlot& p) { p.width = 8001; }, "plot size 8001x700"},
      {"tall", [](ScatterPlot& p) { p.height = 8001; }, "plot size 1000x8001"},
      {"overflowing_range",
       [](ScatterPlot& p) {
         p.points[0].x = -1e308;
         p.points[1].x = 1e308;
       },
       "too wide a range"},
  };
  for (const InvalidCase& c : cases) {
    SCOPED_TRACE(c.name);
    ScatterPlot plot = TwoSeriesPlot();
    c.mutate(plot);
    const std::string path = TempPath(absl::StrCat("invalid_", c.name, ".png"));
    EXPECT_THAT(WriteScatterPng(plot, path),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)));
    EXPECT_FALSE(FileExists(path));
  }
}

TEST(WriteScatterPng, UnwritablePathIsAnErrorNamingIt) {
  const std::string path = TempPath("no/such/directory/plot.png");
  EXPECT_THAT(WriteScatterPng(TwoSeriesPlot(), path),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(path)));
}

}  // namespace
}  // namespace fleettune::cli
