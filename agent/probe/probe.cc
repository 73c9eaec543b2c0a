#include "agent/probe/probe.h"

#include <cpuinfo.h>
#include <dirent.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"

namespace fleettune::agent {
namespace {

constexpr size_t kMaxBoardBytes = 128;
// Firmware files are tiny; anything larger is not what we are looking for.
constexpr uint64_t kMaxFirmwareFileBytes = 4096;

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// The file's text, or "" when it is missing or unreadable: every file read here is optional.
std::string ReadOptional(const std::string& path) {
  absl::StatusOr<std::string> text = engine::ReadFileToString(path, kMaxFirmwareFileBytes);
  return text.ok() ? *std::move(text) : std::string();
}

// Device-tree strings end in NUL and DMI ones in a newline; firmware may hold anything else.
std::string CleanBoardText(absl::string_view raw) {
  std::string out;
  for (char c : raw) {
    if (c == '\0') break;
    const unsigned char u = static_cast<unsigned char>(c);
    out.push_back(u < 0x20 || u == 0x7f ? ' ' : c);
  }
  std::string stripped(absl::StripAsciiWhitespace(out));
  if (stripped.size() > kMaxBoardBytes) stripped.resize(kMaxBoardBytes);
  return stripped;
}

// Values that PC firmware ships when the vendor filled in nothing.
bool IsPlaceholder(absl::string_view board) {
  static constexpr absl::string_view kPlaceholders[] = {"To Be Filled By O.E.M.",
                                                        "To be filled by O.E.M.",
                                                        "System Product Name",
                                                        "Default string",
                                                        "Not Applicable",
                                                        "None",
                                                        "Not Specified",
                                                        "System Name",
                                                        "O.E.M."};
  for (absl::string_view p : kPlaceholders) {
    if (absl::EqualsIgnoreCase(board, p)) return true;
  }
  return false;
}

std::string DeviceTreeModel(const std::string& root) {
  return CleanBoardText(ReadOptional(root + "/proc/device-tree/model"));
}

std::string Board(const std::string& root) {
  std::string board = DeviceTreeModel(root);
  if (board.empty()) board = CleanBoardText(ReadOptional(root + "/sys/class/dmi/id/product_name"));
  return IsPlaceholder(board) ? std::string() : board;
}

// "NVIDIA GeForce RTX 4090" -> "geforce-rtx-4090".
std::string AcceleratorName(absl::string_view model) {
  std::string lower = absl::AsciiStrToLower(absl::StripAsciiWhitespace(model));
  absl::string_view rest = lower;
  absl::ConsumePrefix(&rest, "nvidia ");
  std::string name;
  for (char c : rest) {
    if (absl::ascii_isalnum(static_cast<unsigned char>(c))) {
      name.push_back(c);
    } else if (!name.empty() && name.back() != '-') {
      name.push_back('-');
    }
  }
  while (!name.empty() && name.back() == '-') name.pop_back();
  if (name.size() > 64) name.resize(64);
  return name;
}

// The "Model:" line of the first GPU (in bus order) the NVIDIA driver lists; "" if none.
std::string DiscreteGpuModel(const std::string& root) {
  const std::string dir = root + "/proc/driver/nvidia/gpus";
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return "";
  std::vector<std::string> buses;
  while (const dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') buses.emplace_back(e->d_name);
  }
  closedir(d);
  std::sort(buses.begin(), buses.end());
  for (const std::string& bus : buses) {
    const std::string info = ReadOptional(absl::StrCat(dir, "/", bus, "/information"));
    for (absl::string_view line : absl::StrSplit(info, '\n')) {
      if (absl::ConsumePrefix(&line, "Model:")) return std::string(line);
    }
  }
  return "";
}

std::string Accelerator(const std::string& root) {
  if (Exists(root + "/dev/nvhost-ctrl-gpu")) {
    // Jetson: an integrated GPU with no /proc/driver/nvidia; the family is in the board name.
    const std::string model = absl::AsciiStrToLower(DeviceTreeModel(root));
    for (const char* family : {"orin", "xavier", "tx2", "tx1", "nano"}) {
      if (absl::StrContains(model, family)) return absl::StrCat("cuda:", family);
    }
    return "cuda";
  }
  if (Exists(root + "/dev/nvidia0")) {
    const std::string name = AcceleratorName(DiscreteGpuModel(root));
    return name.empty() ? "cuda" : absl::StrCat("cuda:", name);
  }
  return "";
}

std::vector<std::string> IsaFeatures() {
  std::vector<std::string> features;
  const auto add = [&features](bool present, const char* name) {
    if (present) features.emplace_back(name);
  };
  // Each cpuinfo_has_* is false on the other architectures, so no #if is needed.
  add(cpuinfo_has_x86_sse4_2(), "sse4_2");
  add(cpuinfo_has_x86_avx(), "avx");
  add(cpuinfo_has_x86_avx2(), "avx2");
  add(cpuinfo_has_x86_fma3(), "fma");
  add(cpuinfo_has_x86_f16c(), "f16c");
  add(cpuinfo_has_x86_avx512f(), "avx512f");
  add(cpuinfo_has_x86_avx512bw(), "avx512bw");
  add(cpuinfo_has_x86_avx512vl(), "avx512vl");
  add(cpuinfo_has_x86_avx512vnni(), "avx512_vnni");
  add(cpuinfo_has_arm_neon(), "neon");
#if CPUINFO_ARCH_ARM64
  // On AArch64, NEON is Advanced SIMD and always present; Linux calls it "asimd".
  add(true, "asimd");
#endif
  add(cpuinfo_has_arm_neon_fp16_arith(), "asimdhp");
  add(cpuinfo_has_arm_neon_dot(), "asimddp");
  add(cpuinfo_has_arm_sve(), "sve");
  return features;
}

int32_t Cores() {
  int64_t cores = cpuinfo_get_cores_count();
  if (cores <= 0) cores = cpuinfo_get_processors_count();
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int usable = CPU_COUNT(&set);
    if (usable > 0) cores = std::min<int64_t>(cores, usable);
  }
  return static_cast<int32_t>(std::max<int64_t>(cores, 1));
}

absl::StatusOr<int64_t> PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) {
    return absl::InternalError("sysconf cannot tell the physical memory size");
  }
  return static_cast<int64_t>(pages) * static_cast<int64_t>(page_size);
}

}  // namespace

absl::StatusOr<v1::DeviceProfile> ProbeDevice() { return ProbeDevice(ProbeOptions{}); }

absl::StatusOr<v1::DeviceProfile> ProbeDevice(const ProbeOptions& options) {
  if (!cpuinfo_initialize()) {
    return absl::UnavailableError(
        "cpuinfo cannot read this CPU (unsupported architecture, or /proc and /sys hidden); "
        "set the device profile in the agent config instead");
  }
  v1::DeviceProfile profile;
  struct utsname uts;
  if (uname(&uts) != 0) return absl::ErrnoToStatus(errno, "uname failed");
  profile.set_arch(uts.machine);
  for (std::string& feature : IsaFeatures()) profile.add_isa_features(std::move(feature));
  profile.set_cores(Cores());
  ASSIGN_OR_RETURN(int64_t memory_bytes, PhysicalMemoryBytes());
  profile.set_memory_bytes(memory_bytes);
  profile.set_accelerator(Accelerator(options.root));
  profile.set_board(Board(options.root));
  return profile;
}

v1::DeviceProfile ApplyOverride(v1::DeviceProfile probed,
                                const v1::DeviceProfile& override_fields) {
  const v1::DeviceProfile& o = override_fields;
  if (!o.arch().empty()) probed.set_arch(o.arch());
  if (o.isa_features_size() > 0) *probed.mutable_isa_features() = o.isa_features();
  if (o.cores() > 0) probed.set_cores(o.cores());
  if (o.memory_bytes() > 0) probed.set_memory_bytes(o.memory_bytes());
  if (!o.accelerator().empty()) probed.set_accelerator(o.accelerator());
  if (!o.board().empty()) probed.set_board(o.board());
  if (!o.class_override().empty()) probed.set_class_override(o.class_override());
  return probed;
}

}  // namespace fleettune::agent
