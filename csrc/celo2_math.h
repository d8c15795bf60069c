// The per-element Celo2 math (docs/CELO2.md §2–4; mulo/celo2/reference.py is the oracle), written once on a
// value type V as lopt_math.h is for μLO: the CPU kernels (celo2_cpu_kernels.h) instantiate it with their SIMD
// vector, the CPU host code (celo2_cpu.cpp: pass A, per-entry and per-slice values) with `float`. Nothing else in
// csrc/ computes a Celo2 feature, moment update, normalization or parameter update.
//
// Celo2 reuses μLO's primitives and accumulator-entry math from lopt_math.h (rsqrt, vmax, ema, grad_sq,
// new_acc, row_entry, col_entry: the Adafactor rule is the same) and the decays through math::Hyper; those
// functions compute with μLO's constants, so the numbers they share are checked equal here at compile time.
#pragma once

#include <float.h>

#include "celo2_spec.h"
#include "lopt_desc.h"
#include "lopt_math.h"

namespace mulo {
namespace celo2 {

static_assert(kEpsGradSq == spec::kEpsGradSq, "grad_sq (s = g² + ε) is shared with μLO: same ε");
static_assert(kEpsSafeRsqrt == spec::kEpsSafeRsqrt, "row_factor/col_factor are shared with μLO: same ε");
static_assert(kEpsRsqrt == spec::kEpsAccFeature, "acc_rsqrt (rsqrt(row + ε)) is shared with μLO: same ε");

namespace {  // internal linkage: each CPU instruction set compiles its own copy (see lopt_math.h)

using math::rsqrt;
using math::vmax;

// clamp(x, −c, c) with the value type's max only: min(y, c) = −max(−y, −c). NaN lanes give −c (the tensor is
// skipped anyway: its gradient is not finite).
template <class V>
MULO_HD MULO_INLINE V clamp_abs(V x, float c) {
  return vmax(vmax(x, -c) * -1.0f, -c) * -1.0f;
}

// Every gradient is clamped to ±GRAD_CLAMP before anything reads it.
template <class V>
MULO_HD MULO_INLINE V clamp_grad(V g) {
  return clamp_abs(g, kGradClamp);
}

// Pass A's check of one raw gradient value (before the clamp): false for inf and NaN.
MULO_HD MULO_INLINE bool finite_grad(float g) { return (g < 0.0f ? -g : g) <= FLT_MAX; }

// s = g² + EPS_GRAD_SQ of the clamped gradient: what the Adafactor accumulators average (pass A).
template <class V>
MULO_HD MULO_INLINE V grad_sq(V g) {
  return math::grad_sq(clamp_grad(g));
}

// The new momenta m_k and second moment v of one element (old in, new out); `g` is clamped.
template <class V>
MULO_HD MULO_INLINE void moments(const math::Hyper& H, V g, V (&m)[3], V& v) {
  v = math::ema(v, g * g, H.bv, H.ov);
  MULO_UNROLL
  for (int k = 0; k < 3; ++k) m[k] = math::ema(m[k], g, H.bm[k], H.om[k]);
}

// The 30 features of one element (kFeat* order), un-normalized, through out(index, value). `g` clamped, `p` the
// parameter before the update, `m`, `v` the new moments; row(j), col(j): value j (math::kAcc*) of the element's
// row and column accumulator entries (lopt_math.h: row_entry/col_entry).
template <class V, class Row, class Col, class Out>
MULO_HD MULO_INLINE void features(V g, V p, const V (&m)[3], V v, Row&& row, Col&& col, Out&& out) {
  const V rv = rsqrt(v + kEpsRsqrt);
  out(kFeatG, g);
  out(kFeatClipG, clamp_abs(g, kFeatureClip));
  out(kFeatP, p);
  out(kFeatV, v);
  out(kFeatRsqrtV, rv);
  out(kFeatGRsqrtV, g * rv);
  MULO_UNROLL
  for (int k = 0; k < 3; ++k) {
    const V factor = row(math::kAccFactor + k) * col(math::kAccFactor + k);
    out(kFeatM + k, m[k]);
    out(kFeatMRsqrtV + k, m[k] * rv);
    out(kFeatFacG + k, g * factor);
    out(kFeatRow + k, row(math::kAccValue + k));
    out(kFeatCol + k, col(math::kAccValue + k));
    out(kFeatRsqrtRow + k, row(math::kAccRsqrt + k));
    out(kFeatRsqrtCol + k, col(math::kAccRsqrt + k));
    out(kFeatFacM + k, m[k] * factor);
  }
}

// rsqrt(EPS_NORMALIZE + sumsq / count): the normalization of a feature over one slice (the last two axes), and
// (times RMS_MULT) of the step.
MULO_HD MULO_INLINE float slice_scale(double sumsq, int64_t count) {
  return rsqrt(kEpsNormalize + static_cast<float>(sumsq) / static_cast<float>(count));
}
MULO_HD MULO_INLINE float step_scale(double sumsq, int64_t count) {
  return slice_scale(sumsq, count) * static_cast<float>(kRmsMult);
}

// p ← p − lr · (d · scale + wd · p): the RMS-normalized step (`scale` = step_scale of d's slice) and decoupled
// weight decay, both on p before the update.
template <class V>
MULO_HD MULO_INLINE V updated_param(V p, V d, float scale, float lr, float wd) {
  return p - lr * (d * scale + wd * p);
}

}  // namespace
}  // namespace celo2
}  // namespace mulo
