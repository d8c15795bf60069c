// Portable CPU kernels: GCC/Clang vector extensions of 16 bytes (SSE2 on x86-64, NEON on AArch64).
#include <cstdint>
#include <cstring>

#define MULO_VW 4
#define MULO_NV 4
#define MULO_OB 2
#include "lopt_cpu_kernels.h"

namespace mulo_cpu {
Kernels kernels_base() { return {"base", &sumsq_entry, &apply_entry}; }
}  // namespace mulo_cpu
