// Kernel selection by instruction set (issue #6): which vector width the
// engine's own vectorized kernels run at.
//
// Each device class names the ISA its plans' kernels use (PlanMetadata
// .kernel_isa, from the class's required ISA features): every device of a
// class then runs the same kernels and computes the same results, whichever
// newer extensions some of them have, and a plan never selects kernels its
// class does not guarantee. Three levels:
//
//   generic  4 f32 lanes: SSE2 on x86-64, NEON (asimd) on AArch64; the
//            baseline every build runs.
//   avx2     8 lanes with AVX2 and FMA (x86-64; kernels compiled with
//            __attribute__((target("avx2,fma")))).
//   avx512   16 lanes with AVX-512F.
//
// The vector math is the same per lane at every width (engine/kernels/
// vec_math.h: the same operations in the same order), except that AVX2 and
// AVX-512 fuse multiply-adds, which round once: results agree across levels
// to about 1e-6 (ops/fast_kernels_test.cc checks it), and exactly
// within one. GEMM is oneDNN's, which picks its own JIT kernels from the CPU.
//
//   ASSIGN_OR_RETURN(Isa isa, ParseIsa("avx2"));
//   if (!HostSupports(isa)) ...;        // FailedPrecondition at plan load
//   SetKernelIsa(isa);                  // process-wide, like the thread count
//   switch (KernelIsa()) { ... }        // in a kernel
//
// Thread-safe (an atomic); the setting is process-wide, so the last
// executable to run chooses (executables set it on every Run).
#ifndef FLEETTUNE_ENGINE_KERNELS_ISA_H_
#define FLEETTUNE_ENGINE_KERNELS_ISA_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fleettune::engine::kernels {

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

// "generic", "avx2", "avx512".
absl::string_view IsaName(Isa isa);
// InvalidArgument naming the text for anything else.
absl::StatusOr<Isa> ParseIsa(absl::string_view name);

// Whether this CPU (and OS) runs `isa`'s kernels; generic always.
bool HostSupports(Isa isa);
// The widest level this CPU supports.
Isa BestHostIsa();

// The level a device class's required ISA features guarantee (lower case,
// as /proc/cpuinfo and cpuinfo name them): avx512f → avx512; avx2 and fma →
// avx2; anything else (asimd, sse4_2, none) → generic.
Isa IsaForFeatures(const std::vector<std::string>& features);

// The level kernels run at; generic until set. Setting a level the host
// lacks is a caller's bug: it is clamped to BestHostIsa().
void SetKernelIsa(Isa isa);
Isa KernelIsa();

}  // namespace fleettune::engine::kernels

#endif  // FLEETTUNE_ENGINE_KERNELS_ISA_H_
