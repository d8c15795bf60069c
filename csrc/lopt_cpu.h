// Plain-C++ interface between the CPU dispatcher (lopt_cpu.cpp, which sees torch) and the per-ISA kernel
// translation units (lopt_cpu_{avx512,avx2,base}.cpp, which must not include torch headers: they are
// compiled with `#pragma GCC target`, and an inline torch function instantiated there could be merged by
// the linker into code that runs on CPUs without that instruction set). The ISA units include this header
// (and with it the shared descriptor, lopt_desc.h) before their pragma, and the shared per-element math
// (lopt_math.h, internal linkage) after it, through lopt_cpu_kernels.h.
#pragma once

#include <cstdint>

#include "lopt_desc.h"
#include "lopt_spec.h"

namespace mulo_cpu {

using mulo::DType;
using mulo::kBF16;
using mulo::kF16;
using mulo::kF32;
using mulo::math::Hyper;
using mulo::spec::kFeatures;  // normalized channels (lopt_spec.h, generated from mulo/lopt/spec.py)
using mulo::spec::kHidden;    // hidden width of the meta-network
using mulo::math::kAccValues;  // per row/col entry: acc_k, rsqrt(acc_k + 1e-8), factor_k (lopt_math.h)
constexpr int kPerElement = 16;  // channels that vary per element of a factored tensor (0-12, 25-27)

// Kernels keep the channels in this order of rows: the 16 per-element channels first (0-12, 25-27), then the
// 12 row/column channels (13-24), so that layer 1 can stop after 16 inputs when the row/column part is folded.
namespace S = mulo::spec;
constexpr int kRowCol = S::kChFacM - S::kChRow;  // the 12 row/column channels (13-24)
static_assert(kPerElement + kRowCol == kFeatures && S::kChFacM + 3 == kFeatures, "row/column channels sit before fac_m");
constexpr int row_of_channel(int c) {
  return c < S::kChRow ? c : (c >= S::kChFacM ? c - kRowCol : c + (kFeatures - S::kChFacM));
}
constexpr int channel_of_row(int r) {
  return r < S::kChRow ? r : (r < kPerElement ? r + kRowCol : r - (kFeatures - S::kChFacM));
}

// One parameter tensor as the CPU kernels see it: the shared descriptor (lopt_desc.h, built by lopt_common.h)
// plus the CPU's per-tensor preparation (lopt_cpu.cpp).
struct TensorJob : mulo::TensorDesc {
  const float* rowv = nullptr;  // [kAccValues][nrow] (structure of arrays; value j of entry e at j·nrow + e)
  const float* colv = nullptr;  // [kAccValues][ncol]
  const float* rowt = nullptr;  // [kHidden][nrow]: layer-1 contribution of the row channels (13-15, 19-21)
  const float* colt = nullptr;  // [kHidden][ncol]: layer-1 contribution of the column channels (16-18, 22-24)
  const float* w1 = nullptr;    // layer 1 with normalization folded in: [kHidden][kFeatures], rows order above
  const float* b1 = nullptr;    // layer 1 bias with the time features folded in: [kHidden]
};

struct Net {  // layers 2 and 3 of the meta-network (PyTorch (out, in) row-major)
  const float* w2;  // [kHidden][kHidden]
  const float* b2;  // [kHidden]
  const float* w3;  // [2][kHidden], [3][kHidden] with the nominal head (Hyper::nominal ≠ 0)
  const float* b3;  // [2]
};

// Pass B on elements [start, end) of one tensor: adds the per-element channels' sums of squares into
// out[kFeatures] (channels 13-24 of factored tensors are left to the caller: they are O(rows + cols)).
using SumsqFn = void (*)(const TensorJob&, const Hyper&, int64_t start, int64_t end, double* out);
// Pass C on elements [start, end): features, MLP, update of p, m, v (and full).
using ApplyFn = void (*)(const TensorJob&, const Hyper&, const Net&, int64_t start, int64_t end);

// Pass C's layer-1 contributions of one accumulator's channels per entry (lopt_cpu.cpp: fold_rowcol):
// out[kHidden][n] = Σ_k wf[o][row of ch_value + k]·vals[acc_k][e] + wf[o][row of ch_rsqrt + k]·vals[rsqrt_k][e], from
// the folded layer 1 wf[kHidden][kFeatures] (row order above) and the entry values vals[kAccValues][n].
using FoldFn = void (*)(const float* wf, const float* vals, int64_t n, int ch_value, int ch_rsqrt, float* out);

struct Kernels {
  const char* isa;
  SumsqFn sumsq;
  ApplyFn apply;
  FoldFn fold;
};

// Defined by the ISA translation units; the avx512/avx2 ones return {nullptr,...} where not compiled.
Kernels kernels_base();
Kernels kernels_avx2();
Kernels kernels_avx512();

}  // namespace mulo_cpu
