// AVX-512 CPU kernels (16 fp32 lanes; 4 outputs × 4 vectors of accumulators: measured best of NV×OB in {2..8}×{2,4,8}).
#include <cstdint>
#include <cstring>

#include "celo2_cpu.h"
#include "lopt_cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")
#endif
#define MULO_VW 16
#define MULO_NV 4
#define MULO_OB 4
#include "lopt_cpu_kernels.h"
#include "celo2_cpu_kernels.h"  // Celo2's kernels, on the same SIMD primitives
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
namespace mulo_cpu {
Kernels kernels_avx512() { return {"avx512", &sumsq_entry, &apply_entry, &fold_entries}; }
Celo2Kernels celo2_kernels_avx512() {
  return {&celo2_sumsq_entry, &celo2_direction_entry, &celo2_apply_entry, &celo2_apply_steps_entry};
}
}  // namespace mulo_cpu
#else
namespace mulo_cpu {
Kernels kernels_avx512() { return {"avx512", nullptr, nullptr}; }
Celo2Kernels celo2_kernels_avx512() { return {}; }
}  // namespace mulo_cpu
#endif
