// Drawing uses cairo (Debian libcairo2-dev): a well-kept 2D library that
// renders antialiased text with a system font and writes PNG directly, so the
// plot needs no hand-rolled rasteriser, font code or PNG encoder.
#include "cli/plot.h"

#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"

namespace fleettune::cli {
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr int kMinSide = 200;
constexpr int kMaxSide = 8000;

// DejaVu Sans ships with Debian (fonts-dejavu-core); fontconfig falls back to
// another sans face where it is missing.
constexpr char kFont[] = "DejaVu Sans";
constexpr double kTitleSize = 16.0;
constexpr double kLabelSize = 13.0;
constexpr double kTickSize = 11.0;
constexpr double kTickLength = 5.0;
constexpr double kPointRadius = 4.0;
constexpr double kHighlightRadius = 6.5;
constexpr double kLegendRow = 18.0;

struct Rgb {
  double r, g, b;
};

constexpr Rgb Hex(uint32_t rgb) {
  return {((rgb >> 16) & 0xff) / 255.0, ((rgb >> 8) & 0xff) / 255.0, (rgb & 0xff) / 255.0};
}

// Okabe & Ito, "Color Universal Design" (2008), ordered so that the first
// colours contrast most on white; yellow and black come last.
constexpr uint32_t kPalette[] = {0x0072B2, 0xD55E00, 0x009E73, 0xE69F00,
                                 0xCC79A7, 0x56B4E9, 0xF0E442, 0x000000};
constexpr int kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);

constexpr Rgb kBackground = Hex(0xFFFFFF);
constexpr Rgb kGrid = Hex(0xE6E6E6);
constexpr Rgb kMinorGrid = Hex(0xF3F3F3);
constexpr Rgb kZeroLine = Hex(0x808080);
constexpr Rgb kFrame = Hex(0x333333);
constexpr Rgb kText = Hex(0x222222);
constexpr Rgb kOutline = Hex(0x000000);

enum class Marker { kCircle, kSquare, kTriangle, kDiamond };

Rgb SeriesColour(int series) { return Hex(kPalette[series % kPaletteSize]); }
Marker SeriesMarker(int series) { return static_cast<Marker>((series / kPaletteSize) % 4); }

// One axis in "axis units": the value itself, or log10 of it on a log axis.
struct Axis {
  double lo = 0.0, hi = 1.0;
  bool log = false;
  std::vector<double> ticks;        // labelled, with grid lines
  std::vector<double> minor_ticks;  // log axes only: 2..9 times each power of ten
  std::vector<std::string> labels;  // one per tick
};

// 1, 2, 2.5 or 5 times a power of ten, so that `span` takes about `target` steps.
double NiceStep(double span, int target) {
  const double raw = span / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / magnitude;
  const double nice = f <= 1.0 ? 1.0 : f <= 2.0 ? 2.0 : f <= 2.5 ? 2.5 : f <= 5.0 ? 5.0 : 10.0;
  return nice * magnitude;
}

// Fewest decimals (up to 9) that print `step` exactly; every tick is a whole
// multiple of it.
int DecimalsFor(double step) {
  for (int d = 0; d < 9; ++d) {
    const double scaled = step * std::pow(10.0, d);
    if (std::fabs(scaled - std::round(scaled)) <= 1e-6 * scaled) return d;
  }
  return 9;
}

// Tick labels for a linear axis. Large values take a decimal SI suffix shared
// by the whole axis (memory sizes read as 1.5M, 2G); tiny ones use %g.
std::vector<std::string> LinearLabels(const std::vector<double>& ticks, double step) {
  double max_abs = 0.0;
  for (double t : ticks) max_abs = std::max(max_abs, std::fabs(t));
  std::vector<std::string> labels;
  if (max_abs >= 1e15 || (max_abs > 0.0 && max_abs < 1e-4)) {
    for (double t : ticks) labels.push_back(t == 0.0 ? "0" : absl::StrFormat("%.3g", t));
    return labels;
  }
  double scale = 1.0;
  const char* suffix = "";
  if (max_abs >= 1e12) {
    scale = 1e12, suffix = "T";
  } else if (max_abs >= 1e9) {
    scale = 1e9, suffix = "G";
  } else if (max_abs >= 1e6) {
    scale = 1e6, suffix = "M";
  } else if (max_abs >= 1e4) {
    scale = 1e3, suffix = "k";
  }
  const int decimals = DecimalsFor(step / scale);
  for (double t : ticks) {
    if (t == 0.0) {
      labels.push_back("0");
    } else {
      labels.push_back(absl::StrCat(absl::StrFormat("%.*f", decimals, t / scale), suffix));
    }
  }
  return labels;
}

// 10^k as 1k, 10M, 0.01 or 1e-05.
std::string PowerOfTenLabel(int k) {
  if (k >= 15 || k < -4) return absl::StrFormat("1e%+03d", k);
  if (k >= 3) {
    static constexpr const char* kSuffixes[] = {"k", "M", "G", "T"};
    return absl::StrCat("1", std::string(k % 3, '0'), kSuffixes[k / 3 - 1]);
  }
  if (k >= 0) return absl::StrCat("1", std::string(k, '0'));
  return absl::StrFormat("%.*f", -k, std::pow(10.0, k));
}

// The axis spans [lo, hi] with a margin that keeps points off the frame: 5%
// of the span, or 2% at an end that is exactly 0 (usually y's, which always
// includes 0), so the y = 0 line sits just inside the frame without wasting a
// band below it. Ticks are the multiples of a nice step inside the span.
absl::StatusOr<Axis> LinearAxis(double lo, double hi, int target, absl::string_view name) {
  if (hi - lo <= 0.0) {  // one distinct value: show a unit (or 10%) around it
    const double pad = lo == 0.0 ? 1.0 : std::fabs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  } else {
    const double span = hi - lo;
    lo -= span * (lo == 0.0 ? 0.02 : 0.05);
    hi += span * (hi == 0.0 ? 0.02 : 0.05);
  }
  if (!std::isfinite(hi - lo)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " coordinates span too wide a range to plot"));
  }
  const double step = NiceStep(hi - lo, target);
  const double first = std::ceil(lo / step);
  const double last = std::floor(hi / step);
  Axis axis;
  axis.lo = lo;
  axis.hi = hi;
  // (last - first) is below `target`; the cap guards against rounding.
  const int steps = static_cast<int>(std::min(last - first, 100.0));
  for (int i = 0; i <= steps; ++i) {
    double t = (first + i) * step;
    if (std::fabs(t) < step * 1e-9) t = 0.0;  // no "-0"
    axis.ticks.push_back(t);
  }
  axis.labels = LinearLabels(axis.ticks, step);
  return axis;
}

// Whole decades around [log10(min), log10(max)]: at least one, labelled at
// every power of ten (or every few when there are many).
Axis LogAxis(double min_value, double max_value) {
  const double lo = std::floor(std::log10(min_value) - 0.05);
  double hi = std::ceil(std::log10(max_value) + 0.05);
  if (hi <= lo) hi = lo + 1.0;
  Axis axis;
  axis.log = true;
  axis.lo = lo;
  axis.hi = hi;
  const int decades = static_cast<int>(hi - lo);
  const int every = std::max(1, (decades + 7) / 8);
  for (int k = static_cast<int>(lo); k <= static_cast<int>(hi); ++k) {
    if ((k - static_cast<int>(lo)) % every == 0) {
      axis.ticks.push_back(k);
      axis.labels.push_back(PowerOfTenLabel(k));
    }
    if (decades <= 6 && k < hi) {
      for (int m = 2; m <= 9; ++m) axis.minor_ticks.push_back(k + std::log10(m));
    }
  }
  return axis;
}

void SetColour(cairo_t* cr, Rgb c) { cairo_set_source_rgb(cr, c.r, c.g, c.b); }

void SetFont(cairo_t* cr, double size, bool bold = false) {
  cairo_select_font_face(cr, kFont, CAIRO_FONT_SLANT_NORMAL,
                         bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
}

double TextWidth(cairo_t* cr, const std::string& text) {
  cairo_text_extents_t extents;
  cairo_text_extents(cr, text.c_str(), &extents);
  return extents.x_advance;
}

// Draws `text` with its left edge at x + align * width (align 0 left, -0.5
// centred, -1 right) and its vertical centre at y.
void DrawText(cairo_t* cr, const std::string& text, double x, double y, double align) {
  cairo_font_extents_t font;
  cairo_font_extents(cr, &font);
  cairo_move_to(cr, x + align * TextWidth(cr, text), y + (font.ascent - font.descent) / 2.0);
  cairo_show_text(cr, text.c_str());
}

// Pixel-centre coordinate so 1-pixel lines come out crisp.
double Crisp(double v) { return std::floor(v) + 0.5; }

void MarkerPath(cairo_t* cr, Marker marker, double x, double y, double r) {
  switch (marker) {
    case Marker::kCircle:
      cairo_arc(cr, x, y, r, 0.0, 2.0 * kPi);
      break;
    case Marker::kSquare:
      cairo_rectangle(cr, x - r * 0.9, y - r * 0.9, r * 1.8, r * 1.8);
      break;
    case Marker::kTriangle:
      cairo_move_to(cr, x, y - r * 1.2);
      cairo_line_to(cr, x + r * 1.1, y + r * 0.8);
      cairo_line_to(cr, x - r * 1.1, y + r * 0.8);
      cairo_close_path(cr);
      break;
    case Marker::kDiamond:
      cairo_move_to(cr, x, y - r * 1.25);
      cairo_line_to(cr, x + r * 1.25, y);
      cairo_line_to(cr, x, y + r * 1.25);
      cairo_line_to(cr, x - r * 1.25, y);
      cairo_close_path(cr);
      break;
  }
}

absl::Status CairoError(cairo_status_t status, const std::string& path, absl::string_view what) {
  const std::string message =
      absl::StrCat(path, ": ", what, ": cairo: ", cairo_status_to_string(status));
  if (status == CAIRO_STATUS_NO_MEMORY) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

absl::Status Validate(const ScatterPlot& plot) {
  if (plot.width < kMinSide || plot.width > kMaxSide || plot.height < kMinSide ||
      plot.height > kMaxSide) {
    return absl::InvalidArgumentError(absl::StrCat("plot size ", plot.width, "x", plot.height,
                                                   ": each side must be in [", kMinSide, ", ",
                                                   kMaxSide, "] pixels"));
  }
  if (plot.series_names.empty()) return absl::InvalidArgumentError("plot has no series");
  if (plot.points.empty()) return absl::InvalidArgumentError("plot has no points");
  const int num_series = static_cast<int>(plot.series_names.size());
  for (size_t i = 0; i < plot.points.size(); ++i) {
    const ScatterPoint& p = plot.points[i];
    if (p.series < 0 || p.series >= num_series) {
      return absl::InvalidArgumentError(
          absl::StrCat("point ", i, ": series ", p.series, " out of range [0, ", num_series, ")"));
    }
    if (!std::isfinite(p.x) || !std::isfinite(p.y)) {
      return absl::InvalidArgumentError(
          absl::StrCat("point ", i, ": non-finite coordinate (", p.x, ", ", p.y, ")"));
    }
    if (plot.log_x && p.x <= 0.0) {
      return absl::InvalidArgumentError(
          absl::StrCat("point ", i, ": x = ", p.x, " on a log axis (must be > 0)"));
    }
  }
  return absl::OkStatus();
}

// Where the plot area lies in the image, in pixels.
struct Frame {
  double left, top, right, bottom;
};

class Renderer {
 public:
  Renderer(const ScatterPlot& plot, cairo_t* cr, Axis x, Axis y)
      : plot_(plot), cr_(cr), x_(std::move(x)), y_(std::move(y)) {}

  void Draw() {
    SetColour(cr_, kBackground);
    cairo_paint(cr_);
    Layout();
    DrawGrid();
    DrawAxes();
    DrawPoints();
    DrawLegend();
  }

 private:
  double PixelX(double v) const {
    const double a = x_.log ? std::log10(v) : v;
    return frame_.left + (a - x_.lo) / (x_.hi - x_.lo) * (frame_.right - frame_.left);
  }
  double PixelY(double v) const {
    return frame_.bottom - (v - y_.lo) / (y_.hi - y_.lo) * (frame_.bottom - frame_.top);
  }
  // Axis units (log10 on a log axis) to pixels.
  double AxisPixelX(double a) const {
    return frame_.left + (a - x_.lo) / (x_.hi - x_.lo) * (frame_.right - frame_.left);
  }

  void Layout() {
    const double width = plot_.width, height = plot_.height;
    SetFont(cr_, kTickSize);
    double tick_label_width = 0.0;
    for (const std::string& label : y_.labels) {
      tick_label_width = std::max(tick_label_width, TextWidth(cr_, label));
    }
    const double y_label_space = plot_.y_label.empty() ? 0.0 : kLabelSize + 8.0;
    const double x_label_space = plot_.x_label.empty() ? 0.0 : kLabelSize + 8.0;
    const double title_space = plot_.title.empty() ? 0.0 : kTitleSize + 12.0;

    // The legend sits right of the plot area, one row per series with points.
    legend_.clear();
    std::vector<bool> used(plot_.series_names.size(), false);
    for (const ScatterPoint& p : plot_.points) used[p.series] = true;
    for (size_t s = 0; s < used.size(); ++s) {
      if (used[s]) legend_.push_back(static_cast<int>(s));
    }
    SetFont(cr_, kTickSize);
    double legend_text = 0.0;
    for (int s : legend_)
      legend_text = std::max(legend_text, TextWidth(cr_, plot_.series_names[s]));
    // Never let the legend take more than a quarter of the image.
    legend_width_ = std::min(legend_text + 2 * kHighlightRadius + 16.0, width * 0.25);

    frame_.left = 10.0 + y_label_space + tick_label_width + 4.0 + kTickLength;
    frame_.top = 10.0 + title_space;
    frame_.right = width - legend_width_ - 16.0;
    frame_.bottom = height - (10.0 + x_label_space + kTickSize + 6.0 + kTickLength);
    frame_.left = std::floor(frame_.left);
    frame_.top = std::floor(frame_.top);
    frame_.right = std::floor(frame_.right);
    frame_.bottom = std::floor(frame_.bottom);
  }

  void DrawGrid() {
    cairo_set_line_width(cr_, 1.0);
    SetColour(cr_, kMinorGrid);
    for (double a : x_.minor_ticks) {
      const double px = Crisp(AxisPixelX(a));
      cairo_move_to(cr_, px, frame_.top);
      cairo_line_to(cr_, px, frame_.bottom);
    }
    cairo_stroke(cr_);
    SetColour(cr_, kGrid);
    for (double a : x_.ticks) {
      const double px = Crisp(AxisPixelX(a));
      cairo_move_to(cr_, px, frame_.top);
      cairo_line_to(cr_, px, frame_.bottom);
    }
    for (double t : y_.ticks) {
      const double py = Crisp(PixelY(t));
      cairo_move_to(cr_, frame_.left, py);
      cairo_line_to(cr_, frame_.right, py);
    }
    cairo_stroke(cr_);
    // y = 0 always lies inside the y range (see WriteScatterPng).
    SetColour(cr_, kZeroLine);
    const double zero = Crisp(PixelY(0.0));
    cairo_move_to(cr_, frame_.left, zero);
    cairo_line_to(cr_, frame_.right, zero);
    cairo_stroke(cr_);
  }

  void DrawAxes() {
    SetColour(cr_, kFrame);
    cairo_set_line_width(cr_, 1.0);
    cairo_rectangle(cr_, frame_.left + 0.5, frame_.top + 0.5, frame_.right - frame_.left,
                    frame_.bottom - frame_.top);
    for (double a : x_.ticks) {
      const double px = Crisp(AxisPixelX(a));
      cairo_move_to(cr_, px, frame_.bottom);
      cairo_line_to(cr_, px, frame_.bottom + kTickLength);
    }
    for (double a : x_.minor_ticks) {
      const double px = Crisp(AxisPixelX(a));
      cairo_move_to(cr_, px, frame_.bottom);
      cairo_line_to(cr_, px, frame_.bottom + kTickLength / 2.0);
    }
    for (double t : y_.ticks) {
      const double py = Crisp(PixelY(t));
      cairo_move_to(cr_, frame_.left, py);
      cairo_line_to(cr_, frame_.left - kTickLength, py);
    }
    cairo_stroke(cr_);

    SetColour(cr_, kText);
    SetFont(cr_, kTickSize);
    for (size_t i = 0; i < x_.ticks.size(); ++i) {
      DrawText(cr_, x_.labels[i], AxisPixelX(x_.ticks[i]),
               frame_.bottom + kTickLength + 3.0 + kTickSize / 2.0, -0.5);
    }
    for (size_t i = 0; i < y_.ticks.size(); ++i) {
      DrawText(cr_, y_.labels[i], frame_.left - kTickLength - 4.0, PixelY(y_.ticks[i]), -1.0);
    }

    // Titles and axis labels are centred on the plot area; at small sizes
    // they shrink and shift to stay inside the image.
    const double width = plot_.width, height = plot_.height;
    const double center_x = (frame_.left + frame_.right) / 2.0;
    if (!plot_.x_label.empty()) {
      DrawCentred(plot_.x_label, kLabelSize, /*bold=*/false, center_x, width,
                  height - 10.0 - kLabelSize / 2.0);
    }
    if (!plot_.y_label.empty()) {
      cairo_save(cr_);
      // Rotated a quarter turn: image y runs along the text, from the bottom.
      cairo_translate(cr_, 10.0 + kLabelSize / 2.0, height);
      cairo_rotate(cr_, -kPi / 2.0);
      DrawCentred(plot_.y_label, kLabelSize, /*bold=*/false,
                  height - (frame_.top + frame_.bottom) / 2.0, height, 0.0);
      cairo_restore(cr_);
    }
    if (!plot_.title.empty()) {
      DrawCentred(plot_.title, kTitleSize, /*bold=*/true, center_x, width,
                  10.0 + kTitleSize / 2.0 + 2.0);
    }
  }

  // Draws `text` centred on `center` along a line `extent` pixels long,
  // shrinking the font (to no less than 6 pixels) and moving the text so that
  // it stays 10 pixels from either end.
  void DrawCentred(const std::string& text, double size, bool bold, double center, double extent,
                   double y) {
    const double room = extent - 20.0;
    SetFont(cr_, size, bold);
    double text_width = TextWidth(cr_, text);
    if (text_width > room && text_width > 0.0) {
      SetFont(cr_, std::max(6.0, size * room / text_width), bold);
      text_width = TextWidth(cr_, text);
    }
    const double left =
        std::max(10.0, std::min(center - text_width / 2.0, extent - 10.0 - text_width));
    DrawText(cr_, text, left, y, 0.0);
  }

  void DrawPoint(const ScatterPoint& p) {
    const double px = PixelX(p.x), py = PixelY(p.y);
    const double r = p.highlighted ? kHighlightRadius : kPointRadius;
    MarkerPath(cr_, SeriesMarker(p.series), px, py, r);
    SetColour(cr_, SeriesColour(p.series));
    if (!p.highlighted) {
      cairo_fill(cr_);
      return;
    }
    cairo_fill_preserve(cr_);
    SetColour(cr_, kOutline);
    cairo_set_line_width(cr_, 2.0);
    cairo_stroke(cr_);
  }

  // Labels go right of their point, or left where they would leave the frame.
  void DrawHighlightLabel(const ScatterPoint& p) {
    if (p.label.empty()) return;
    const double px = PixelX(p.x), py = PixelY(p.y);
    const double gap = kHighlightRadius + 4.0;
    const bool fits_right = px + gap + TextWidth(cr_, p.label) <= frame_.right;
    DrawText(cr_, p.label, fits_right ? px + gap : px - gap, py - kHighlightRadius,
             fits_right ? 0.0 : -1.0);
  }

  void DrawPoints() {
    // Highlighted points last, so no ordinary point hides them.
    for (const ScatterPoint& p : plot_.points) {
      if (!p.highlighted) DrawPoint(p);
    }
    for (const ScatterPoint& p : plot_.points) {
      if (p.highlighted) DrawPoint(p);
    }
    SetColour(cr_, kText);
    SetFont(cr_, kTickSize, /*bold=*/true);
    for (const ScatterPoint& p : plot_.points) {
      if (p.highlighted) DrawHighlightLabel(p);
    }
  }

  void DrawLegend() {
    const double x = frame_.right + 12.0;
    const int rows = static_cast<int>((frame_.bottom - frame_.top) / kLegendRow);
    if (rows <= 0) return;
    // Too many series to list: the last row says how many are left out.
    const bool truncated = static_cast<int>(legend_.size()) > rows;
    const int shown = truncated ? rows - 1 : static_cast<int>(legend_.size());
    cairo_save(cr_);
    cairo_rectangle(cr_, frame_.right + 1.0, 0.0, plot_.width - frame_.right, plot_.height);
    cairo_clip(cr_);
    SetFont(cr_, kTickSize);
    for (int i = 0; i < shown; ++i) {
      const int s = legend_[i];
      const double y = frame_.top + kLegendRow * (i + 0.5);
      MarkerPath(cr_, SeriesMarker(s), x + kHighlightRadius, y, kPointRadius + 1.0);
      SetColour(cr_, SeriesColour(s));
      cairo_fill(cr_);
      SetColour(cr_, kText);
      DrawText(cr_, plot_.series_names[s], x + 2 * kHighlightRadius + 4.0, y, 0.0);
    }
    if (truncated) {
      SetColour(cr_, kText);
      DrawText(cr_, absl::StrCat("+", legend_.size() - shown, " more"), x,
               frame_.top + kLegendRow * (shown + 0.5), 0.0);
    }
    cairo_restore(cr_);
  }

  const ScatterPlot& plot_;
  cairo_t* cr_;
  Axis x_, y_;
  Frame frame_{};
  std::vector<int> legend_;  // series with points, in index order
  double legend_width_ = 0.0;
};

cairo_status_t AppendToString(void* closure, const unsigned char* data, unsigned int length) {
  static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
  return CAIRO_STATUS_SUCCESS;
}

struct SurfaceDeleter {
  void operator()(cairo_surface_t* s) const { cairo_surface_destroy(s); }
};
struct ContextDeleter {
  void operator()(cairo_t* cr) const { cairo_destroy(cr); }
};

}  // namespace

absl::Status WriteScatterPng(const ScatterPlot& plot, const std::string& path) {
  RETURN_IF_ERROR(Validate(plot));

  double x_min = plot.points[0].x, x_max = x_min;
  double y_min = 0.0, y_max = 0.0;  // the y range includes 0
  for (const ScatterPoint& p : plot.points) {
    x_min = std::min(x_min, p.x);
    x_max = std::max(x_max, p.x);
    y_min = std::min(y_min, p.y);
    y_max = std::max(y_max, p.y);
  }
  // About one labelled tick per 100 pixels, at least 3.
  const int x_target = std::max(3, plot.width / 100);
  const int y_target = std::max(3, plot.height / 80);
  Axis x_axis;
  if (plot.log_x) {
    x_axis = LogAxis(x_min, x_max);
  } else {
    ASSIGN_OR_RETURN(x_axis, LinearAxis(x_min, x_max, x_target, "x"));
  }
  ASSIGN_OR_RETURN(Axis y_axis, LinearAxis(y_min, y_max, y_target, "y"));

  std::unique_ptr<cairo_surface_t, SurfaceDeleter> surface(
      cairo_image_surface_create(CAIRO_FORMAT_ARGB32, plot.width, plot.height));
  if (cairo_surface_status(surface.get()) != CAIRO_STATUS_SUCCESS) {
    return CairoError(cairo_surface_status(surface.get()), path, "cannot create the image");
  }
  {
    std::unique_ptr<cairo_t, ContextDeleter> cr(cairo_create(surface.get()));
    Renderer(plot, cr.get(), std::move(x_axis), std::move(y_axis)).Draw();
    if (cairo_status(cr.get()) != CAIRO_STATUS_SUCCESS) {
      return CairoError(cairo_status(cr.get()), path, "drawing failed");
    }
  }
  // Encode in memory, then write with engine/base/file.h: its errors carry the
  // errno (NotFound, PermissionDenied, ...) that cairo's own file writer drops,
  // and readers never see a half-written PNG.
  std::string png;
  const cairo_status_t encoded =
      cairo_surface_write_to_png_stream(surface.get(), AppendToString, &png);
  if (encoded != CAIRO_STATUS_SUCCESS) return CairoError(encoded, path, "PNG encoding failed");
  return engine::WriteFileAtomically(path, png);
}

}  // namespace fleettune::cli
