"""The one specification of the μLO per-element algorithm that every implementation reads.

A leaf module (no imports from mulo): the 28 feature channels in their order, the epsilons, the time-feature
timescales, the network's sizes and the order of the hyper-parameter vector the kernels take. The reference
backend builds its feature tensor from :data:`CHANNEL_GROUPS`; the Triton kernels import the constants as
``tl.constexpr`` (kernels/lopt_common.py); the C++/CUDA kernels include ``csrc/lopt_spec.h``, which
:func:`c_header` generates from this file (``python -m mulo.lopt.spec > csrc/lopt_spec.h``; a test checks
that the committed header is what this module generates). docs/ALGORITHM.md §2 says what each channel means.
"""

from __future__ import annotations

import math

# ---- epsilons, each named after where it appears -------------------------------------------------------------
EPS_GRAD_SQ = 1e-30  # s = g² + 1e-30
EPS_SAFE_RSQRT = 1e-9  # safe_rsqrt(x) = rsqrt(max(x, 1e-9)); row-mean and full-accumulator offsets
EPS_RMS = 1e-6  # rsqrt(v + 1e-6) and (u + 1e-6)^-½
EPS_ACC_FEATURE = 1e-8  # rsqrt(row/col feature + 1e-8)
EPS_NORMALIZE = 1e-5  # rsqrt(1e-5 + mean x²)

# ---- time features: tanh(min(t, t_clamp)/τ − 1) for each τ (t_clamp = +inf, no clamp, unless the meta-weights'
# config sets ``time_clamp``) -----------------------------------------------------------------------------------
TIMESCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0, 100000.0)

# ---- the 28 feature channels, in order: (name, width, what it is) ---------------------------------------------
# width 3 = one channel per decay k (momentum decays for m, Adafactor decays for the factored terms).
CHANNEL_GROUPS = (
    ("g", 1, "gradient"),
    ("p", 1, "parameter value before the update"),
    ("m", 3, "momentum m_k"),
    ("v", 1, "second moment v"),
    ("m_rsqrt_v", 3, "m_k · rsqrt(v + EPS_RMS)"),
    ("rsqrt_v", 1, "rsqrt(v + EPS_RMS)"),
    ("fac_g", 3, "g times the Adafactor factors of decay k"),
    ("row", 3, "row accumulator r_k (full accumulator u_k for rank < 2)"),
    ("col", 3, "column accumulator c_k (u_k for rank < 2)"),
    ("rsqrt_row", 3, "rsqrt(row_k + EPS_ACC_FEATURE)"),
    ("rsqrt_col", 3, "rsqrt(col_k + EPS_ACC_FEATURE)"),
    ("fac_m", 3, "m_k times the Adafactor factors of decay k"),
)


def _offsets() -> dict[str, int]:
    out, at = {}, 0
    for name, width, _ in CHANNEL_GROUPS:
        out[name] = at
        at += width
    return out


CHANNEL = _offsets()  # name → index of its first channel
NUM_FEATURES = sum(width for _, width, _ in CHANNEL_GROUPS)  # 28
NUM_TIMESCALES = len(TIMESCALES)  # 11
INPUT_SIZE = NUM_FEATURES + NUM_TIMESCALES  # 39
HIDDEN_SIZE = 32
OUTPUT_SIZE = 2  # direction d and magnitude a: step = d · exp(a · exp_mult) · step_mult
# With the optional nominal term (LOptConfig.nominal = α, off by default) a third output n scales an Adam-like
# descent direction: step += α · exp(n · exp_mult) · mean_k m_k · rsqrt(v + EPS_RMS) (docs/ALGORITHM.md §3).
OUTPUT_SIZE_NOMINAL = 3

# ---- the hyper-parameter vector the native kernels take, in order ----------------------------------------------
HYPER_ORDER = (
    "beta_m0",
    "beta_m1",
    "beta_m2",
    "beta_v",
    "beta_f0",
    "beta_f1",
    "beta_f2",
    "exp_mult",
    "step_mult",
    "time_clamp",
    "nominal",
)


def hyper_vector(weights) -> list[float]:
    """``weights`` (a MetaWeights or PopulationMetaWeights) as the kernels' hyper vector, in HYPER_ORDER."""
    return [
        *map(float, weights.momentum_decays),
        float(weights.rms_decay),
        *map(float, weights.adafactor_decays),
        float(weights.exp_mult),
        float(weights.step_mult),
        time_clamp_value(weights.time_clamp),
        nominal_value(weights.nominal),
    ]


def time_clamp_value(time_clamp: float | None) -> float:
    """The t the time features stop growing at, as the kernels take it: ``None`` (no clamp) is +inf."""
    return math.inf if time_clamp is None else float(time_clamp)


def nominal_value(nominal: float | None) -> float:
    """α of the nominal term as the kernels take it: ``None`` (no nominal term, μLO's update) is 0."""
    return 0.0 if nominal is None else float(nominal)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def c_header() -> str:
    """The text of csrc/lopt_spec.h: this module's constants for C++ and CUDA (host and device)."""
    lines = [
        "// GENERATED from mulo/lopt/spec.py by `python -m mulo.lopt.spec > csrc/lopt_spec.h`; do not edit.",
        "// The one specification of the per-element μLO algorithm (tests/lopt/test_spec.py checks this file).",
        "#pragma once",
        "",
        "#if defined(__CUDACC__)",
        "#define MULO_HD __host__ __device__",
        "#else",
        "#define MULO_HD",
        "#endif",
        "",
        "namespace mulo {",
        "namespace spec {",
        "",
    ]
    for name in ("EPS_GRAD_SQ", "EPS_SAFE_RSQRT", "EPS_RMS", "EPS_ACC_FEATURE", "EPS_NORMALIZE"):
        lines.append(f"constexpr float k{_camel(name.lower())} = {globals()[name]!r}f;")
    lines += ["", "// feature channels: index of the first channel of each group (width 1 or 3)"]
    for name, width, what in CHANNEL_GROUPS:
        lines.append(f"constexpr int kCh{_camel(name)} = {CHANNEL[name]};  // {width}: {what}")
    lines += [
        "",
        f"constexpr int kFeatures = {NUM_FEATURES};",
        f"constexpr int kTimescales = {NUM_TIMESCALES};",
        f"constexpr int kInput = {INPUT_SIZE};",
        f"constexpr int kHidden = {HIDDEN_SIZE};",
        f"constexpr int kOutput = {OUTPUT_SIZE};",
        f"constexpr int kOutputNominal = {OUTPUT_SIZE_NOMINAL};  // with the nominal term's magnitude head",
        "",
        "// τ_q of the time features tanh(t/τ_q − 1); constexpr, so host and device code (nvcc",
        "// --expt-relaxed-constexpr) both call it",
        "MULO_HD constexpr float timescale(int q) {",
        *[f"  if (q == {q}) return {t!r}f;" for q, t in enumerate(TIMESCALES)],
        "  return 0.0f;",
        "}",
        "",
        "// the hyper-parameter vector: " + ", ".join(HYPER_ORDER),
        f"constexpr int kNumHyper = {len(HYPER_ORDER)};",
    ]
    for i, name in enumerate(HYPER_ORDER):
        lines.append(f"constexpr int kHyper{_camel(name)} = {i};")
    lines += ["", "}  // namespace spec", "}  // namespace mulo", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(c_header(), end="")
