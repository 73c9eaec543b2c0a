#include "engine/kernels/isa.h"

#include <algorithm>
#include <atomic>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace fleettune::engine::kernels {
namespace {

std::atomic<int> g_isa{static_cast<int>(Isa::kGeneric)};

bool Has(const std::vector<std::string>& features, absl::string_view f) {
  return std::find(features.begin(), features.end(), f) != features.end();
}

}  // namespace

absl::string_view IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kGeneric:
      break;
  }
  return "generic";
}

absl::StatusOr<Isa> ParseIsa(absl::string_view name) {
  for (Isa isa : {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512}) {
    if (name == IsaName(isa)) return isa;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown kernel ISA '", absl::CHexEscape(name.substr(0, 64)), "' (generic, avx2, avx512)"));
}

bool HostSupports(Isa isa) {
#if defined(__x86_64__)
  // __builtin_cpu_supports checks the OS saves the wider registers too (XCR0).
  switch (isa) {
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f");
    case Isa::kGeneric:
      return true;
  }
  return false;
#else
  return isa == Isa::kGeneric;
#endif
}

Isa BestHostIsa() {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2}) {
    if (HostSupports(isa)) return isa;
  }
  return Isa::kGeneric;
}

Isa IsaForFeatures(const std::vector<std::string>& features) {
  if (Has(features, "avx512f")) return Isa::kAvx512;
  if (Has(features, "avx2") && Has(features, "fma")) return Isa::kAvx2;
  return Isa::kGeneric;
}

void SetKernelIsa(Isa isa) {
  if (!HostSupports(isa)) isa = BestHostIsa();
  g_isa.store(static_cast<int>(isa), std::memory_order_relaxed);
}

Isa KernelIsa() { return static_cast<Isa>(g_isa.load(std::memory_order_relaxed)); }

}  // namespace fleettune::engine::kernels
