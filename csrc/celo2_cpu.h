// Plain-C++ interface between the Celo2 CPU host code (celo2_cpu.cpp, which sees torch) and its kernels
// (celo2_cpu_kernels.h), compiled per instruction set inside μLO's ISA units lopt_cpu_{avx512,avx2,base}.cpp, after
// μLO's kernels whose SIMD primitives, tile loads and accumulator-entry gathers they reuse (lopt_cpu.h explains
// why these units must not see torch).
#pragma once

#include <cstdint>

#include "celo2_spec.h"
#include "lopt_cpu.h"

namespace mulo_cpu {

// One tensor (rank ≥ 2, its math view contiguous) of a Celo2 call: μLO's CPU record (the shared descriptor with
// the accumulator-entry values rowv/colv, and w1/b1 = layer 1) plus the slices over the last two axes.
struct Celo2Job : TensorJob {
  int64_t L = 1;                  // elements per slice: the product of the last two axes
  const float* fscale = nullptr;  // passes C, E: [slices][kFeatures] rsqrt(1e-9 + mean over the slice of x_j²)
  const float* w2 = nullptr;      // the dense layers (PyTorch (out, in) row-major): [kHidden][kHidden]
  const float* b2 = nullptr;      // [kHidden]
  const float* w3 = nullptr;      // [2][kHidden]: the direction and magnitude outputs
  const float* b3 = nullptr;      // [2]
  float* dir = nullptr;           // pass C: where the direction goes (null: only its sums of squares)
  const float* steps = nullptr;   // pass E from steps: the (orthogonalized) direction of every element
  const float* sscale = nullptr;  // pass E: [slices] the step's normalization rsqrt(1e-9 + mean d²) · RMS_MULT
  float wd = 0.f;                 // pass E: the weight decay (the update is p − lr·(step + wd·p))
};

// Each kernel runs elements [start, end) of one tensor; `out` (passes B and C) receives double sums per slice,
// indexed from the slice of `start`: pass B kFeatures per slice (and writes the new m, v), pass C one (Σ d²).
using Celo2SumsFn = void (*)(const Celo2Job&, const Hyper&, int64_t start, int64_t end, double* out);
using Celo2ApplyFn = void (*)(const Celo2Job&, const Hyper&, int64_t start, int64_t end);

struct Celo2Kernels {
  Celo2SumsFn sumsq;       // pass B
  Celo2SumsFn direction;   // pass C
  Celo2ApplyFn apply;      // pass E, the direction recomputed from the features (orthogonalize=False)
  Celo2ApplyFn apply_steps;  // pass E from given steps (after Newton–Schulz)
};

// Defined by the ISA translation units; {nullptr,...} where an ISA is not compiled (as kernels_*()).
Celo2Kernels celo2_kernels_base();
Celo2Kernels celo2_kernels_avx2();
Celo2Kernels celo2_kernels_avx512();

}  // namespace mulo_cpu
