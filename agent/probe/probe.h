// What hardware this device is: the DeviceProfile an agent reports when it registers.
//
//   ASSIGN_OR_RETURN(v1::DeviceProfile profile, ProbeDevice());
//   profile = ApplyOverride(std::move(profile), config.profile_override());
//
// Where each field comes from:
//   arch          uname(2) machine ("x86_64", "aarch64", "armv7l").
//   isa_features  cpuinfo (Debian's libcpuinfo), named as Linux's /proc/cpuinfo names them, which
//                 is what the coordinator's device-class table requires:
//                   x86:   sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni
//                   ARM:   neon asimd (always on aarch64) asimdhp asimddp sve
//   cores         physical cores (cpuinfo), capped by the CPUs this process may run on
//                 (sched_getaffinity), since the engine cannot use more threads than that.
//   memory_bytes  sysconf(_SC_PHYS_PAGES) * page size: the RAM the kernel sees, which is a little
//                 below the board's nominal size (firmware and GPU carve-outs).
//   board         /proc/device-tree/model (Raspberry Pi, Jetson) when present, else the DMI product
//                 name (/sys/class/dmi/id/product_name), else empty. Firmware placeholders such as
//                 "To Be Filled By O.E.M." count as empty. Control characters become spaces and
//                 the text is cut at 128 bytes.
//   accelerator   "cuda" when /dev/nvidia0 or /dev/nvhost-ctrl-gpu exists, as "cuda:<name>" when
//                 the name is known: the Jetson family from the device-tree model ("cuda:orin"),
//                 or the first GPU's model from /proc/driver/nvidia/gpus/*/information, lower case
//                 with "nvidia " dropped and runs of other characters as '-'
//                 ("cuda:geforce-rtx-4090"). Empty otherwise.
//   class_override  never set by probing; see ApplyOverride().
// Cache sizes are not reported: the profile has no field for them and the coordinator's classes
// do not use them.
//
// PRIVACY: only hardware facts are read; nothing identifies the user or the unit (no serial
// numbers, no hostnames).
//
// Thread-safety: both functions may be called from any thread; cpuinfo initializes once per
// process.
#ifndef FLEETTUNE_AGENT_PROBE_PROBE_H_
#define FLEETTUNE_AGENT_PROBE_PROBE_H_

#include <string>

#include "absl/status/statusor.h"
#include "proto/fleettune/v1/device.pb.h"

namespace fleettune::agent {

struct ProbeOptions {
  // Prefix for every /proc, /sys and /dev path read ("" = the real root). Tests point it at a
  // fake tree; the CPU facts (cpuinfo, uname, sysconf) do not depend on it.
  std::string root;
};

// ProbeDevice()
//
// Probes this device. Errors: Unavailable if cpuinfo cannot read this CPU (an architecture it does
// not support, or /proc and /sys hidden from the process) — an agent then needs a full profile
// override; Internal if uname(2) or sysconf(3) fail. Missing board or accelerator files are not
// errors: those fields stay empty.
absl::StatusOr<v1::DeviceProfile> ProbeDevice();
absl::StatusOr<v1::DeviceProfile> ProbeDevice(const ProbeOptions& options);

// ApplyOverride()
//
// Returns `probed` with every set field of `override_fields` replacing its value: non-empty
// arch, accelerator, board and class_override; a non-empty isa_features list (replacing the whole
// list); cores and memory_bytes above zero. Tests and demos use this to let one machine play
// another device class.
v1::DeviceProfile ApplyOverride(v1::DeviceProfile probed, const v1::DeviceProfile& override_fields);

}  // namespace fleettune::agent

#endif  // FLEETTUNE_AGENT_PROBE_PROBE_H_
