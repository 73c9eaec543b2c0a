#include "server/compiler/byte_size.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fleettune::server {

std::string FormatBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return absl::StrCat(bytes, bytes == 1 ? " byte" : " bytes");
  double value = static_cast<double>(bytes) / 1024.0;
  int unit = 0;
  // Move up a unit once the value would print as 1024.0 or more.
  while (value >= 1023.95 && unit + 1 < 4) {
    value /= 1024.0;
    ++unit;
  }
  std::string number = absl::StrFormat("%.1f", value);
  if (absl::EndsWith(number, ".0")) number.resize(number.size() - 2);
  return absl::StrCat(number, " ", kUnits[unit]);
}

}  // namespace fleettune::server
