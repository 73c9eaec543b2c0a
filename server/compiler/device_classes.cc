#include "server/compiler/device_classes.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"
#include "engine/kernels/isa.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "server/compiler/byte_size.h"

namespace fleettune::server {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int64_t kGiB = int64_t{1} << 30;

// The built-in classes. Budgets are what a training plan may use on the device (arena, weights
// and optimizer state together), not the device's RAM: an agent shares its device with the
// device's real work, so a class grants fleettune a deliberately small slice. They are sized
// against the reference workload, an MLP 784-256-128-10 with batch 64, whose plans need (from
// the compiler, with its passes: updates run as soon as their gradient is complete, so each
// gradient buffer is freed at once, and SGD's weight gradients accumulate straight into the
// momentum buffer, or the weight, without being stored; plan_compiler_test.cc checks the
// outcomes below):
//
//   scheme      SGD        SGD, momentum 0.9   AdamW
//   full        1.26 MiB   2.15 MiB            3.72 MiB
//   last-k:2    1.22 MiB   1.35 MiB            1.57 MiB
//   last-k:1    1.18 MiB   1.19 MiB            1.19 MiB
//   bias-only   1.20 MiB   1.20 MiB            1.20 MiB
//
// (0.90 MiB of every figure is the weights; bias-only needs more than last-k:1 because its
// gradients flow back through every layer.) So with scheme.fit_class_budget:
//   rpi4              2 MiB: full fine-tuning with plain SGD (which needed 2.05 MiB before the
//                     update reordering, 1.92 MiB before fused updates); last-k:2 with momentum
//                     or AdamW.
//   rpi5              3.5 MiB: full with SGD (with or without momentum); last-k:2 with AdamW.
//   jetson-orin-nano  16 MiB: full with every optimizer.
//   x86-avx2          64 MiB: full with every optimizer.
//   x86-avx512        64 MiB: full with every optimizer.
//
// Training throughput (FLOP/s with the class's threads) feeds the scheme search's step-time
// model only. x86-avx2's is measured: the engine sustained 44-53 GFLOP/s on 2 cores of this
// project's CI machine across the zoo CNN's schemes (bench/search_acceptance --setting=fashion,
// which also checks that FLOPs rank the schemes' measured step times: rank correlation 0.93),
// so 4 threads get 90e9. x86-avx512's 180e9 is not measured: it is x86-avx2's figure doubled
// for AVX-512's twice as wide vectors, an estimate, and likely a generous one. That CI machine
// has AVX-512 itself and oneDNN's GEMMs pick their kernels from the CPU, so the GEMMs behind the
// 90e9 may already have run at AVX-512 width; and running the engine's own kernels at avx512
// rather than avx2 changed MobileNetV2's step there by less than the noise (BENCHMARKS.md). The
// Arm classes have no hardware here: their figures are rough estimates from the cores' NEON FMA
// width, count and clock. The estimated figures are for a fleet to replace with its own
// measurement (fleettune-train prints ms/step; `fleettune compile` prints FLOPs per step).
//
// Memory minimums sit below the nominal RAM because the kernel reports less than the board
// carries (a 4 GB Raspberry Pi 4 shows about 3.7 GiB: firmware and GPU carve-outs).
struct DefaultClass {
  const char* name;
  const char* description;
  const char* arch;
  std::vector<const char*> required_isa;
  int64_t min_memory_bytes;
  const char* accelerator;
  int64_t training_memory_budget_bytes;
  int32_t threads;
  int32_t priority;
  double training_flops_per_second;
};

const std::vector<DefaultClass>& DefaultTable() {
  // clang-format off
  static const auto* table = new std::vector<DefaultClass>{
      // name, description,
      //   arch, required_isa, min_memory_bytes, accelerator, budget, threads, priority,
      //   training FLOP/s (see kThroughputNote)
      {"rpi4", "Raspberry Pi 4 Model B, 4 GB or more (Cortex-A72, 4 cores)",
         "aarch64", {"asimd"}, 3 * kGiB + kGiB / 2, "", 2 * kMiB, 4, 10, 5e9},
      // asimddp (dot product, Armv8.2) separates a Pi 5's Cortex-A76 from a Pi 4's A72; a Pi 5
      // matches rpi4 too, and the higher priority picks rpi5.
      {"rpi5", "Raspberry Pi 5, 4 GB or more (Cortex-A76, 4 cores)",
         "aarch64", {"asimd", "asimddp"}, 3 * kGiB + kGiB / 2, "", 3 * kMiB + kMiB / 2, 4, 20,
         12e9},
      // The 4 GB Orin Nano reports about 3.3 GiB; the accelerator is what sets it apart.
      {"jetson-orin-nano", "NVIDIA Jetson Orin Nano (Cortex-A78AE, 6 cores, Ampere GPU)",
         "aarch64", {"asimd"}, 3 * kGiB, "cuda", 16 * kMiB, 6, 30, 10e9},
      {"x86-avx2", "x86-64 with AVX2 and FMA (Haswell and newer, Zen)",
         "x86_64", {"avx2", "fma"}, 2 * kGiB, "", 64 * kMiB, 4, 10, 90e9},
      // avx512f sets AVX-512 machines apart (their plans get avx512 kernels, KernelIsaFor); such
      // a machine matches x86-avx2 too, and the higher priority picks x86-avx512.
      {"x86-avx512",
         "x86-64 with AVX-512F, AVX2 and FMA (Skylake-SP, Ice Lake, Sapphire Rapids, Zen 4)",
         "x86_64", {"avx512f", "avx2", "fma"}, 2 * kGiB, "", 64 * kMiB, 4, 15, 180e9},
  };
  // clang-format on
  return *table;
}

bool IsValidClassName(absl::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
  });
}

// What is wrong with one class: the field (and element, for repeated fields) and why.
struct ClassError {
  std::string field;
  int index = -1;
  std::string message;
};

std::optional<ClassError> CheckClass(const v1::DeviceClass& c) {
  if (!IsValidClassName(c.name())) {
    return ClassError{
        "name", -1,
        absl::StrCat("name '", absl::CEscape(c.name()), "' must match [a-z0-9-]{1,64}")};
  }
  if (c.arch().empty()) return ClassError{"arch", -1, "arch is empty"};
  for (int i = 0; i < c.required_isa_size(); ++i) {
    if (c.required_isa(i).empty()) {
      return ClassError{"required_isa", i, absl::StrCat("required_isa[", i, "] is empty")};
    }
  }
  if (c.min_memory_bytes() < 0) {
    return ClassError{"min_memory_bytes", -1,
                      absl::StrCat("min_memory_bytes must be >= 0, got ", c.min_memory_bytes())};
  }
  if (c.training_memory_budget_bytes() <= 0) {
    return ClassError{"training_memory_budget_bytes", -1,
                      absl::StrCat("training_memory_budget_bytes must be > 0, got ",
                                   c.training_memory_budget_bytes())};
  }
  if (c.threads() < 1) {
    return ClassError{"threads", -1, absl::StrCat("threads must be >= 1, got ", c.threads())};
  }
  if (!std::isfinite(c.training_flops_per_second()) || c.training_flops_per_second() < 0) {
    return ClassError{"training_flops_per_second", -1,
                      absl::StrCat("training_flops_per_second must be finite and >= 0, got ",
                                   c.training_flops_per_second())};
  }
  return std::nullopt;
}

using ParseInfoTree = google::protobuf::TextFormat::ParseInfoTree;

// "line 7, column 3: " for where `field` of class `index` was written, falling back to where
// the class starts; "" without a parse tree (configs not read from text).
std::string Where(const ParseInfoTree* tree, int index, absl::string_view field = "",
                  int field_index = -1) {
  if (tree == nullptr) return "";
  const google::protobuf::FieldDescriptor* classes =
      v1::DeviceClassConfig::descriptor()->FindFieldByName("classes");
  google::protobuf::TextFormat::ParseLocation loc = tree->GetLocation(classes, index);
  if (const ParseInfoTree* nested = tree->GetTreeForNested(classes, index);
      nested != nullptr && !field.empty()) {
    const google::protobuf::FieldDescriptor* f =
        v1::DeviceClass::descriptor()->FindFieldByName(std::string(field));
    if (f != nullptr) {
      const int i = f->is_repeated() ? std::max(field_index, 0) : -1;
      google::protobuf::TextFormat::ParseLocation field_loc = nested->GetLocation(f, i);
      if (field_loc.line >= 0) loc = field_loc;
    }
  }
  if (loc.line < 0) return "";
  return absl::StrCat("line ", loc.line + 1, ", column ", loc.column + 1, ": ");
}

// Collects every parse error with its position; TextFormat reports 0-based lines and columns.
class CollectErrors : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    errors_.push_back(absl::StrCat("line ", line + 1, ", column ", column + 1, ": ", message));
  }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  std::vector<std::string> errors_;
};

// A profile reduced to what matching reads.
struct NormalizedProfile {
  std::string arch;
  std::set<std::string> features;
  std::string accelerator;
  int64_t memory_bytes = 0;
};

NormalizedProfile Normalize(const v1::DeviceProfile& profile) {
  NormalizedProfile p;
  p.arch = absl::AsciiStrToLower(profile.arch());
  for (const std::string& f : profile.isa_features()) p.features.insert(absl::AsciiStrToLower(f));
  // AArch64's Advanced SIMD is what Arm markets as NEON: Linux lists "asimd", some probes
  // (cpuinfo's cpuinfo_has_arm_neon) say "neon".
  if (p.arch == "aarch64" && (p.features.count("neon") || p.features.count("asimd"))) {
    p.features.insert("neon");
    p.features.insert("asimd");
  }
  p.accelerator = absl::AsciiStrToLower(profile.accelerator());
  p.memory_bytes = profile.memory_bytes();
  return p;
}

bool AcceleratorMatches(const std::string& wanted, const std::string& have) {
  if (wanted.empty()) return true;
  return have == wanted || absl::StartsWith(have, absl::StrCat(wanted, ":"));
}

// What `profile` lacks for class `c` of the same arch (empty when it matches), and how many
// requirements that is, each missing ISA feature counting as one.
struct Shortfall {
  std::vector<std::string> reasons;
  int count = 0;
};

Shortfall Unmet(const v1::DeviceClass& c, const NormalizedProfile& p) {
  Shortfall s;
  std::vector<std::string> missing;
  for (const std::string& f : c.required_isa()) {
    if (!p.features.count(absl::AsciiStrToLower(f))) missing.push_back(f);
  }
  if (!missing.empty()) {
    s.reasons.push_back(absl::StrCat("ISA ", absl::StrJoin(missing, ", ")));
    s.count += static_cast<int>(missing.size());
  }
  if (p.memory_bytes < c.min_memory_bytes()) {
    s.reasons.push_back(absl::StrCat(FormatBytes(c.min_memory_bytes()), " of memory"));
    ++s.count;
  }
  if (!AcceleratorMatches(absl::AsciiStrToLower(c.accelerator()), p.accelerator)) {
    s.reasons.push_back(absl::StrCat("accelerator ", c.accelerator()));
    ++s.count;
  }
  return s;
}

// Checks a whole config; `tree` (may be null) locates errors in the text it was parsed from.
absl::Status ValidateConfig(const v1::DeviceClassConfig& config, const ParseInfoTree* tree) {
  if (config.classes().empty()) {
    return absl::InvalidArgumentError("device class config: no classes");
  }
  if (config.classes_size() > kMaxDeviceClasses) {
    return absl::InvalidArgumentError(absl::StrCat("device class config: ", config.classes_size(),
                                                   " classes, over the ", kMaxDeviceClasses,
                                                   " limit"));
  }
  std::map<std::string, int> first_index;
  for (int i = 0; i < config.classes_size(); ++i) {
    const v1::DeviceClass& c = config.classes(i);
    if (std::optional<ClassError> error = CheckClass(c)) {
      return absl::InvalidArgumentError(
          absl::StrCat("device class config: ", Where(tree, i, error->field, error->index),
                       "classes[", i, "]: ", error->message));
    }
    auto [it, inserted] = first_index.emplace(c.name(), i);
    if (!inserted) {
      std::string first = Where(tree, it->second);
      if (!first.empty()) first = absl::StrCat(" at ", first.substr(0, first.size() - 2));
      return absl::InvalidArgumentError(
          absl::StrCat("device class config: ", Where(tree, i, "name"), "classes[", i, "]: name '",
                       c.name(), "' is already used by classes[", it->second, "]", first));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateDeviceClass(const v1::DeviceClass& device_class) {
  if (std::optional<ClassError> error = CheckClass(device_class)) {
    return absl::InvalidArgumentError(
        absl::StrCat("device class '", absl::CEscape(device_class.name()), "': ", error->message));
  }
  return absl::OkStatus();
}

DeviceClassRegistry DeviceClassRegistry::Defaults() {
  DeviceClassRegistry registry;
  for (const DefaultClass& d : DefaultTable()) {
    v1::DeviceClass& c = registry.classes_.emplace_back();
    c.set_name(d.name);
    c.set_description(d.description);
    c.set_arch(d.arch);
    for (const char* isa : d.required_isa) c.add_required_isa(isa);
    c.set_min_memory_bytes(d.min_memory_bytes);
    c.set_accelerator(d.accelerator);
    c.set_training_memory_budget_bytes(d.training_memory_budget_bytes);
    c.set_threads(d.threads);
    c.set_priority(d.priority);
    c.set_training_flops_per_second(d.training_flops_per_second);
  }
  return registry;
}

absl::StatusOr<DeviceClassRegistry> DeviceClassRegistry::FromConfig(
    const v1::DeviceClassConfig& config) {
  RETURN_IF_ERROR(ValidateConfig(config, nullptr));
  DeviceClassRegistry registry;
  registry.classes_.assign(config.classes().begin(), config.classes().end());
  return registry;
}

absl::StatusOr<DeviceClassRegistry> DeviceClassRegistry::FromTextProto(absl::string_view text) {
  if (text.size() > kMaxDeviceClassConfigBytes) {
    return absl::InvalidArgumentError(absl::StrCat("device class config is ", text.size(),
                                                   " bytes, over the ", kMaxDeviceClassConfigBytes,
                                                   " byte limit"));
  }
  v1::DeviceClassConfig config;
  CollectErrors errors;
  ParseInfoTree tree;
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  parser.WriteLocationsTo(&tree);
  if (!parser.ParseFromString(std::string(text), &config)) {
    if (errors.errors().empty()) {
      return absl::InvalidArgumentError("device class config does not parse as text format");
    }
    return absl::InvalidArgumentError(
        absl::StrCat("device class config: ", absl::StrJoin(errors.errors(), "; ")));
  }
  RETURN_IF_ERROR(ValidateConfig(config, &tree));
  DeviceClassRegistry registry;
  registry.classes_.assign(config.classes().begin(), config.classes().end());
  return registry;
}

absl::StatusOr<DeviceClassRegistry> DeviceClassRegistry::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, engine::ReadFileToString(path, kMaxDeviceClassConfigBytes));
  absl::StatusOr<DeviceClassRegistry> registry = FromTextProto(text);
  if (!registry.ok()) {
    return absl::Status(registry.status().code(),
                        absl::StrCat(path, ": ", registry.status().message()));
  }
  return registry;
}

absl::StatusOr<const v1::DeviceClass*> DeviceClassRegistry::Find(absl::string_view name) const {
  for (const v1::DeviceClass& c : classes_) {
    if (c.name() == name) return &c;
  }
  return absl::NotFoundError(
      absl::StrCat("no device class '", absl::CEscape(name), "' (known: ", KnownNames(), ")"));
}

absl::StatusOr<std::string> DeviceClassRegistry::Classify(const v1::DeviceProfile& profile) const {
  if (profile.memory_bytes() < 0 || profile.cores() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("device profile: negative memory_bytes (",
                                                   profile.memory_bytes(), ") or cores (",
                                                   profile.cores(), ")"));
  }
  if (!profile.class_override().empty()) {
    if (!IsValidClassName(profile.class_override())) {
      return absl::InvalidArgumentError(
          absl::StrCat("class_override '", absl::CEscape(profile.class_override()),
                       "' is not a device class name ([a-z0-9-]{1,64})"));
    }
    absl::StatusOr<const v1::DeviceClass*> c = Find(profile.class_override());
    if (!c.ok()) {
      return absl::NotFoundError(absl::StrCat("class_override '", profile.class_override(),
                                              "' names no device class (known: ", KnownNames(),
                                              ")"));
    }
    return (*c)->name();
  }
  if (profile.arch().empty()) {
    return absl::InvalidArgumentError("device profile has no arch");
  }
  const NormalizedProfile p = Normalize(profile);
  const v1::DeviceClass* best = nullptr;
  // Closest non-matching class of the same arch, for the error message.
  const v1::DeviceClass* closest = nullptr;
  Shortfall closest_unmet;
  auto better = [](const v1::DeviceClass& a, const v1::DeviceClass* b) {
    return b == nullptr || a.priority() > b->priority() ||
           (a.priority() == b->priority() && a.name() < b->name());
  };
  for (const v1::DeviceClass& c : classes_) {
    if (absl::AsciiStrToLower(c.arch()) != p.arch) continue;
    Shortfall unmet = Unmet(c, p);
    if (unmet.count == 0) {
      if (better(c, best)) best = &c;
    } else if (closest == nullptr || unmet.count < closest_unmet.count ||
               (unmet.count == closest_unmet.count && better(c, closest))) {
      closest = &c;
      closest_unmet = std::move(unmet);
    }
  }
  if (best != nullptr) return best->name();

  std::string what = absl::StrCat(profile.arch(), " with ", FormatBytes(p.memory_bytes));
  if (!profile.accelerator().empty()) absl::StrAppend(&what, " and accelerator ", p.accelerator);
  if (closest == nullptr) {
    std::set<std::string> archs;
    for (const v1::DeviceClass& c : classes_) archs.insert(c.arch());
    return absl::FailedPreconditionError(absl::StrCat(
        "no device class for ", what, ": no class is for arch '", absl::CEscape(profile.arch()),
        "' (classes exist for ", absl::StrJoin(archs, ", "), ")"));
  }
  return absl::FailedPreconditionError(absl::StrCat("no device class for ", what,
                                                    "; closest: ", closest->name(), " needs ",
                                                    absl::StrJoin(closest_unmet.reasons, " and ")));
}

v1::DeviceClassConfig DeviceClassRegistry::ToConfig() const {
  v1::DeviceClassConfig config;
  for (const v1::DeviceClass& c : classes_) *config.add_classes() = c;
  return config;
}

std::string DeviceClassRegistry::KnownNames() const {
  std::vector<std::string> names;
  for (const v1::DeviceClass& c : classes_) names.push_back(c.name());
  std::sort(names.begin(), names.end());
  return absl::StrJoin(names, ", ");
}

std::string KernelIsaFor(const v1::DeviceClass& device_class) {
  const std::vector<std::string> features(device_class.required_isa().begin(),
                                          device_class.required_isa().end());
  return std::string(engine::kernels::IsaName(engine::kernels::IsaForFeatures(features)));
}

}  // namespace fleettune::server
