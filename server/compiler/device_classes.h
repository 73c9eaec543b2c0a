// Device classes: the kinds of hardware the coordinator compiles plans for, and the mapping from
// the profile an agent reports to one of them.
//
//   ASSIGN_OR_RETURN(DeviceClassRegistry registry,
//                    DeviceClassRegistry::FromFile("/etc/fleettune/device_classes.textproto"));
//   ASSIGN_OR_RETURN(std::string name, registry.Classify(profile));  // "rpi4"
//   ASSIGN_OR_RETURN(const v1::DeviceClass* device_class, registry.Find(name));
//
// A registry is built once, from the built-in defaults (Defaults(), mirrored by
// deploy/device_classes.textproto) or from a v1::DeviceClassConfig in protobuf text format, and
// is immutable afterwards. Configs are untrusted input: every field is validated and errors
// name the line.
//
// Matching (see DeviceClass in proto/fleettune/v1/device.proto): a profile matches a class when
//   - the arch is equal (ASCII case-insensitive),
//   - every required ISA feature is among the profile's features (case-insensitive; on aarch64
//     "neon" and "asimd" name the same thing, Arm's Advanced SIMD, so either satisfies both),
//   - memory_bytes >= min_memory_bytes, and
//   - the accelerator matches: an empty class accelerator requires nothing; otherwise the
//     profile's accelerator must equal it or start with it followed by ':' (class "cuda"
//     matches profile "cuda" and "cuda:orin").
// Among matching classes the highest priority wins, ties going to the smallest name, so the
// result depends only on the profile and the registry.
//
// Thread-safety: a registry is immutable; const methods may be called from any thread.
#ifndef FLEETTUNE_SERVER_COMPILER_DEVICE_CLASSES_H_
#define FLEETTUNE_SERVER_COMPILER_DEVICE_CLASSES_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/fleettune/v1/device.pb.h"

namespace fleettune::server {

// Largest device-class config accepted (text bytes) and most classes in one config.
inline constexpr size_t kMaxDeviceClassConfigBytes = size_t{1} << 20;
inline constexpr int kMaxDeviceClasses = 1024;

// ---------------------------------------------------------------------------
// ValidateDeviceClass()
//
// Checks one class on its own: name matches [a-z0-9-]{1,64}; arch is non-empty; required ISA
// features are non-empty; min_memory_bytes >= 0; training_memory_budget_bytes > 0;
// threads >= 1. InvalidArgument naming the field otherwise.
absl::Status ValidateDeviceClass(const v1::DeviceClass& device_class);

// The kernel ISA level (engine/kernels/isa.h) the class's required ISA
// features guarantee, for its plans: "avx512", "avx2" or "generic".
std::string KernelIsaFor(const v1::DeviceClass& device_class);

class DeviceClassRegistry {
 public:
  // -------------------------------------------------------------------------
  // Defaults()
  //
  // The built-in classes: rpi4, rpi5, jetson-orin-nano, x86-avx2, x86-avx512. Their table,
  // with the reasoning behind each budget, is in device_classes.cc;
  // deploy/device_classes.textproto is the same list as a config file to start editing from.
  static DeviceClassRegistry Defaults();

  // -------------------------------------------------------------------------
  // FromConfig() / FromTextProto() / FromFile()
  //
  // Builds a registry from a config: at least one class, at most kMaxDeviceClasses, each valid
  // (ValidateDeviceClass) and with a unique name. Class order is kept.
  // FromTextProto parses protobuf text format; FromFile reads the file first (at most
  // kMaxDeviceClassConfigBytes).
  // Errors: InvalidArgument for text that does not parse (every error with its 1-based line
  // and column), a text over kMaxDeviceClassConfigBytes, or an invalid config (the message
  // names the class, the field and, for text, the line). FromFile: NotFound for a missing
  // file and the errno-derived code for other I/O failures; messages start with the path.
  static absl::StatusOr<DeviceClassRegistry> FromConfig(const v1::DeviceClassConfig& config);
  static absl::StatusOr<DeviceClassRegistry> FromTextProto(absl::string_view text);
  static absl::StatusOr<DeviceClassRegistry> FromFile(const std::string& path);

  // -------------------------------------------------------------------------
  // Find()
  //
  // The class named `name`; the pointer stays valid as long as the registry. NotFound, listing
  // the known classes, for an unknown name.
  absl::StatusOr<const v1::DeviceClass*> Find(absl::string_view name) const;

  // -------------------------------------------------------------------------
  // Classify()
  //
  // The name of the class for `profile`. With class_override set, that class, provided it
  // exists (it need not match the hardware: the override lets one machine play another).
  // Otherwise the best matching class as described at the top of this file.
  // Errors:
  //   InvalidArgument     a profile with no arch, negative cores or memory, or a
  //                       class_override that is not a well-formed class name.
  //   NotFound            class_override names no class (the message lists the known ones).
  //   FailedPrecondition  no class matches; the message says why, naming the closest class and
  //                       what it lacks ("no device class for aarch64 with 2 GiB; closest:
  //                       rpi4 needs 3.5 GiB of memory").
  absl::StatusOr<std::string> Classify(const v1::DeviceProfile& profile) const;

  // In config order.
  const std::vector<v1::DeviceClass>& classes() const { return classes_; }

  // The classes as a config (what FromConfig would accept back).
  v1::DeviceClassConfig ToConfig() const;

 private:
  DeviceClassRegistry() = default;
  std::string KnownNames() const;

  std::vector<v1::DeviceClass> classes_;
};

}  // namespace fleettune::server

#endif  // FLEETTUNE_SERVER_COMPILER_DEVICE_CLASSES_H_
