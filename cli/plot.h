// Scatter plots written as PNG files, for reports such as `fleettune search`'s
// per-layer plot of each update candidate's accuracy gain against its extra
// training memory.
//
//   ScatterPlot plot;
//   plot.title = "mobilenet_v2: update candidates";
//   plot.x_label = "extra training memory (bytes)";
//   plot.y_label = "accuracy gain";
//   plot.series_names = {"conv1", "block3"};
//   plot.log_x = true;
//   plot.points.push_back({/*x=*/1.5e6, /*y=*/0.012, /*series=*/1, "bias", true});
//   RETURN_IF_ERROR(WriteScatterPng(plot, "/tmp/candidates.png"));
//
// Series take the Okabe-Ito colour-blind-safe colours in this order: blue
// #0072B2, vermillion #D55E00, bluish green #009E73, orange #E69F00, reddish
// purple #CC79A7, sky blue #56B4E9, yellow #F0E442, black #000000; past eight
// series the colours repeat with another marker shape (circle, square,
// triangle, diamond). The legend lists only series that have points.
//
// Thread-safe: each call draws on its own surface.
#ifndef FLEETTUNE_CLI_PLOT_H_
#define FLEETTUNE_CLI_PLOT_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace fleettune::cli {

struct ScatterPoint {
  double x = 0.0;
  double y = 0.0;
  int series = 0;            // index into ScatterPlot::series_names
  std::string label;         // drawn next to the point when highlighted
  bool highlighted = false;  // e.g. chosen by the search: drawn larger, outlined, labelled
};

struct ScatterPlot {
  std::string title, x_label, y_label;
  std::vector<std::string> series_names;  // legend entries, one colour each (at least 1)
  std::vector<ScatterPoint> points;
  bool log_x = false;              // x on a log10 axis (all x must then be > 0)
  int width = 1000, height = 700;  // pixels
};

// Renders `plot` and writes it to `path` as PNG. InvalidArgument for: no points, no series,
// a point whose series is out of range, a non-finite coordinate, log_x with x <= 0, width or
// height outside [200, 8000], or coordinates whose range overflows a double. The file's error
// (engine/base/file.h's WriteFileAtomically: errno-derived code, message naming the path,
// e.g. NotFound for a missing directory) when it cannot be written; cairo's status mapped to
// absl (ResourceExhausted for out of memory, else Internal), naming the path, when rendering
// or PNG encoding fails.
//
// Axes have tick marks and numeric tick labels at round steps (1, 2, 2.5 or 5 times a power
// of ten); a log axis has labelled powers of ten (every few past eight decades) and, over
// up to six decades, unlabelled minor ticks at 2..9 times each. Large values
// take decimal SI suffixes (1.5M = 1.5e6, not MiB). The y range always includes 0, with a
// horizontal line at y = 0, so gains above and below zero are visible. A light grid sits
// behind the points; highlighted points are drawn last, larger, outlined in black and
// labelled.
absl::Status WriteScatterPng(const ScatterPlot& plot, const std::string& path);

}  // namespace fleettune::cli

#endif  // FLEETTUNE_CLI_PLOT_H_
