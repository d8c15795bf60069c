// The per-element μLO math (docs/ALGORITHM.md §1-3), written once for both devices: the CPU kernels instantiate it
// with their SIMD vector type (lopt_cpu_kernels.h: one vector of VW elements per call), the CPU host code
// (per-tensor preparation) and the CUDA kernels (lopt_cuda.cu, nvcc) with `float`. Nothing else in csrc/
// computes a feature channel, a moment or accumulator update, an Adafactor factor, the output head or the
// parameter update (tests/backends/test_native_cpu.py checks it); each device keeps only its tiling,
// indexing, storage conversions and reductions.
//
// A value type V needs: V ± V, V · V, float · V, V · float, V + float, V / V (entry math only: float), and
// three primitives found by ordinary lookup (float, below) or argument-dependent lookup (the CPU vector):
//   rsqrt(x) = 1 / sqrt(x) (IEEE sqrt and division; no approximate rsqrt: the parity tolerance is 2e-4),
//   vmax(x, b) = x > b ? x : b for a scalar b (NaN x gives b, like fmaxf),
//   vexp(x)   = e^x (CUDA: expf; CPU vectors: a ≈1 ulp polynomial).
// Features are written through `out(channel, value)`, channel = spec::kCh* + k, a compile-time constant once
// inlined (registers on CUDA, the CPU tile's row of that channel).
//
// Torch- and standard-library-free (only <float.h>'s macros). The functions have internal linkage and are
// force-inlined: each CPU ISA translation unit includes this file after its `#pragma GCC target` (so the
// templates are compiled for that ISA), and no copy compiled for one ISA can be merged into another unit.
// The plain types they take (Hyper, the kAcc* layout of an accumulator entry) are in lopt_desc.h.
#pragma once

#include <float.h>

#include "lopt_desc.h"
#include "lopt_spec.h"

#if defined(__CUDACC__)
#define MULO_INLINE __forceinline__
#define MULO_UNROLL _Pragma("unroll")
#else
#define MULO_INLINE inline __attribute__((always_inline))
#define MULO_UNROLL _Pragma("GCC unroll 4")
#endif

namespace mulo {
namespace math {
namespace {  // internal linkage: every translation unit compiles its own copy for its own instruction set

// ---- the float primitives -----------------------------------------------------------------------------------
// Host code uses the compiler's builtins (no <math.h>/<cmath>: a standard header first included under a CPU
// unit's `#pragma GCC target` would compile its inline functions for that ISA); the device, CUDA's functions.
#if defined(__CUDA_ARCH__)
#define MULO_SQRTF sqrtf
#define MULO_EXPF expf
#define MULO_TANHF tanhf
#else
#define MULO_SQRTF __builtin_sqrtf
#define MULO_EXPF __builtin_expf
#define MULO_TANHF __builtin_tanhf
#endif
MULO_HD MULO_INLINE float rsqrt(float x) { return 1.0f / MULO_SQRTF(x); }
MULO_HD MULO_INLINE float vmax(float x, float b) {
#if defined(__CUDA_ARCH__)
  return fmaxf(x, b);
#else
  return x > b ? x : b;
#endif
}
MULO_HD MULO_INLINE float vexp(float x) { return MULO_EXPF(x); }

// ---- element-wise state and features ----------------------------------------------------------------------------
// rsqrt(max(x, EPS_SAFE_RSQRT))
template <class V>
MULO_HD MULO_INLINE V safe_rsqrt(V x) {
  return rsqrt(vmax(x, spec::kEpsSafeRsqrt));
}

// s = g² + EPS_GRAD_SQ, what the Adafactor accumulators average.
template <class V>
MULO_HD MULO_INLINE V grad_sq(V g) {
  return g * g + spec::kEpsGradSq;
}

// Pass A's check of one s: false for inf/nan (the whole tensor is then skipped).
MULO_HD MULO_INLINE bool finite_s(float s) { return s <= FLT_MAX; }

// β·old + (1 − β)·x, the update of every moment and accumulator (no bias correction).
template <class V>
MULO_HD MULO_INLINE V ema(V old, V x, float beta, float one_minus_beta) {
  return beta * old + one_minus_beta * x;
}

// The new momenta m_k and second moment v of one element (old in, new out) and channels 0-9:
// g, p, m_k, v, m_k · rsqrt(v + EPS_RMS), rsqrt(v + EPS_RMS).
template <class V, class Out>
MULO_HD MULO_INLINE void moment_channels(const Hyper& H, V g, V p, V (&m)[3], V& v, Out&& out) {
  v = ema(v, g * g, H.bv, H.ov);
  const V rv = rsqrt(v + spec::kEpsRms);
  out(spec::kChG, g);
  out(spec::kChP, p);
  out(spec::kChV, v);
  out(spec::kChRsqrtV, rv);
  MULO_UNROLL
  for (int k = 0; k < 3; ++k) {
    m[k] = ema(m[k], g, H.bm[k], H.om[k]);
    out(spec::kChM + k, m[k]);
    out(spec::kChMRsqrtV + k, m[k] * rv);
  }
}

// Channels 10-12 and 25-27 of an element of a factored tensor (g and m_k times row_factor_k · col_factor_k)
// and, with `rowcol`, channels 13-24 (r_k, c_k and their rsqrt(· + EPS_ACC_FEATURE)). `row(j)`, `col(j)`:
// value j (kAcc*) of the element's row and column accumulator entries.
template <class V, class Row, class Col, class Out>
MULO_HD MULO_INLINE void factored_channels(V g, const V (&m)[3], Row&& row, Col&& col, bool rowcol, Out&& out) {
  MULO_UNROLL
  for (int k = 0; k < 3; ++k) {
    const V prod = row(kAccFactor + k) * col(kAccFactor + k);
    out(spec::kChFacG + k, g * prod);
    out(spec::kChFacM + k, m[k] * prod);
    if (rowcol) {
      out(spec::kChRow + k, row(kAccValue + k));
      out(spec::kChCol + k, col(kAccValue + k));
      out(spec::kChRsqrtRow + k, row(kAccRsqrt + k));
      out(spec::kChRsqrtCol + k, col(kAccRsqrt + k));
    }
  }
}

// The new full accumulators u_k of an element of a rank < 2 tensor (old in, new out) and channels 10-27:
// g · safe_rsqrt(u_k + EPS_SAFE_RSQRT), u_k (as row and column), rsqrt(u_k + EPS_ACC_FEATURE) (twice),
// m_k · rsqrt(u_k + EPS_RMS).
template <class V, class Out>
MULO_HD MULO_INLINE void full_channels(const Hyper& H, V g, const V (&m)[3], V (&u)[3], Out&& out) {
  const V s = grad_sq(g);
  MULO_UNROLL
  for (int k = 0; k < 3; ++k) {
    u[k] = ema(u[k], s, H.bf[k], H.of[k]);
    out(spec::kChFacG + k, g * safe_rsqrt(u[k] + spec::kEpsSafeRsqrt));
    out(spec::kChRow + k, u[k]);
    out(spec::kChCol + k, u[k]);
    const V ru = rsqrt(u[k] + spec::kEpsAccFeature);
    out(spec::kChRsqrtRow + k, ru);
    out(spec::kChRsqrtCol + k, ru);
    out(spec::kChFacM + k, m[k] * rsqrt(u[k] + spec::kEpsRms));
  }
}

// ---- the output head and the update -----------------------------------------------------------------------------
// step = d · exp(a · exp_mult) · step_mult from the network's two outputs (direction d, magnitude a).
template <class V>
MULO_HD MULO_INLINE V step_of(const Hyper& H, V d, V a) {
  return d * vexp(a * H.exp_mult) * H.step_mult;
}

// The optional nominal term (H.nominal = α ≠ 0, LOptConfig.nominal), added to the step: an Adam-like descent
// direction, the mean over the three momenta of m_k · rsqrt(v + EPS_RMS) (new m and v), scaled by
// α · exp(n · exp_mult) with n the network's third output.
template <class V>
MULO_HD MULO_INLINE V nominal_of(const Hyper& H, V n, V m0, V m1, V m2, V v) {
  const V rv = rsqrt(v + spec::kEpsRms);
  return (m0 * rv + m1 * rv + m2 * rv) * (1.0f / 3.0f) * (vexp(n * H.exp_mult) * H.nominal);
}

// p − lr·step, then decoupled weight decay on the updated value: p' −= wd·lr·p'.
template <class V>
MULO_HD MULO_INLINE V updated_param(V p, V step, float lr, float wdlr) {
  const V q = p - lr * step;
  return q - wdlr * q;
}

// ---- one Adafactor accumulator entry (per row/column entry, O(rows + cols) per tensor) -----------------------
// The new accumulator of decay k from its old value and the sum of s over the reduced axis (`count` elements
// of the whole tensor): β_f,k·old + (1 − β_f,k)·mean(s).
MULO_HD MULO_INLINE float new_acc(const Hyper& H, int k, float old, float sum_s, float count) {
  return ema(old, sum_s / count, H.bf[k], H.of[k]);
}
// rsqrt(acc + EPS_ACC_FEATURE): the feature of channels 19-24.
MULO_HD MULO_INLINE float acc_rsqrt(float acc) { return rsqrt(acc + spec::kEpsAccFeature); }
// row_factor = safe_rsqrt(r / (mean of r over d1 + EPS_SAFE_RSQRT)); col_factor = safe_rsqrt(c).
MULO_HD MULO_INLINE float row_factor(float r, float row_mean) {
  return safe_rsqrt(r / (row_mean + spec::kEpsSafeRsqrt));
}
MULO_HD MULO_INLINE float col_factor(float c) { return safe_rsqrt(c); }

// Writes the kAccValues values of a column entry through put(j, value) from its new accumulators.
template <class Put>
MULO_HD MULO_INLINE void col_entry(const float (&c)[3], Put&& put) {
  MULO_UNROLL
  for (int k = 0; k < 3; ++k) {
    put(kAccValue + k, c[k]);
    put(kAccRsqrt + k, acc_rsqrt(c[k]));
    put(kAccFactor + k, col_factor(c[k]));
  }
}
// The same for a row entry, given the mean of each new r_k over d1.
template <class Put>
MULO_HD MULO_INLINE void row_entry(const float (&r)[3], const float (&row_mean)[3], Put&& put) {
  MULO_UNROLL
  for (int k = 0; k < 3; ++k) {
    put(kAccValue + k, r[k]);
    put(kAccRsqrt + k, acc_rsqrt(r[k]));
    put(kAccFactor + k, row_factor(r[k], row_mean[k]));
  }
}

// ---- per tensor: normalization and time features, folded into layer 1 -----------------------------------------
// The normalization of channel j: rsqrt(EPS_NORMALIZE + mean over the whole tensor of x_j²).
MULO_HD MULO_INLINE float norm_scale(float sumsq, float n) { return rsqrt(spec::kEpsNormalize + sumsq / n); }

// The time features tanh(min(t, t_clamp)/τ_q − 1) of step t (0-based); t_clamp = +inf is no clamp.
MULO_HD MULO_INLINE void time_features(float t, float t_clamp, float (&tf)[spec::kTimescales]) {
  const float tc = t < t_clamp ? t : t_clamp;
  MULO_UNROLL
  for (int q = 0; q < spec::kTimescales; ++q) tf[q] = MULO_TANHF(tc / spec::timescale(q) - 1.0f);
}

// Layer 1's bias of output o with the time features folded in: b_o + Σ_q W1[o][28 + q]·tf_q (`w_row` = W1[o]).
MULO_HD MULO_INLINE float folded_bias(float b, const float* w_row, const float (&tf)[spec::kTimescales]) {
  float acc = b;
  for (int q = 0; q < spec::kTimescales; ++q) acc += w_row[spec::kFeatures + q] * tf[q];
  return acc;
}

}  // namespace
}  // namespace math
}  // namespace mulo
