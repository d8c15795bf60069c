// Portable CPU kernels: GCC/Clang vector extensions of 16 bytes (SSE2 on x86-64, NEON on AArch64).
#include <cstdint>
#include <cstring>

#define MULO_VW 4
#define MULO_NV 4
#define MULO_OB 2
#include "lopt_cpu_kernels.h"
#include "celo2_cpu_kernels.h"  // Celo2's kernels, on the same SIMD primitives

namespace mulo_cpu {
Kernels kernels_base() { return {"base", &sumsq_entry, &apply_entry, &fold_entries}; }
Celo2Kernels celo2_kernels_base() {
  return {&celo2_sumsq_entry, &celo2_direction_entry, &celo2_apply_entry, &celo2_apply_steps_entry};
}
}  // namespace mulo_cpu
