"""The one specification of Celo2's per-element rule (docs/CELO2.md), read by every implementation.

A leaf module (no imports from mulo): the feature groups in their order, the decays, the epsilons, the
Newton–Schulz coefficients and the network's default sizes. The reference (:mod:`mulo.celo2.reference`) builds
its features from :data:`FEATURE_GROUPS`; fused kernels are meant to import the same numbers.
"""

from __future__ import annotations

# ---- accumulators (fixed decays: no learned offsets, no bias correction) ----------------------------------------
MOMENTUM_DECAYS = (0.9, 0.99, 0.999)  # m_k ← β m_k + (1 − β) g
RMS_DECAY = 0.95  # v ← β v + (1 − β) g²
ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)  # row/col accumulators of s = g² + EPS_GRAD_SQ

# ---- gradient clamps -----------------------------------------------------------------------------------------------
GRAD_CLAMP = 1000.0  # every gradient (both routes) is clamped to [−1000, 1000] first
FEATURE_CLIP = 0.1  # feature group 1 is clamp(g, −0.1, 0.1)

# ---- epsilons, each named after where it appears -----------------------------------------------------------------
EPS_GRAD_SQ = 1e-30  # s = g² + 1e-30
EPS_SAFE_RSQRT = 1e-9  # safe_rsqrt(x) = rsqrt(max(x, 1e-9)); offset of the row mean in the row factor
EPS_RSQRT = 1e-8  # rsqrt(v + 1e-8), rsqrt(row + 1e-8), rsqrt(col + 1e-8)
EPS_NORMALIZE = 1e-9  # x · rsqrt(1e-9 + mean x²) over the last two axes: features and the step
EPS_NEWTON_SCHULZ = 1e-8  # X / (‖X‖_F + 1e-8) before the iterations

# ---- Newton–Schulz ---------------------------------------------------------------------------------------------------
NS_COEFFS = (3.4445, -4.7750, 2.0315)  # X ← a X + (b A + c A²) X with A = X Xᵀ
NS_STEPS = 5

# ---- output scaling ---------------------------------------------------------------------------------------------
EXP_MULT = 0.0  # step = d · exp(a · EXP_MULT): the magnitude output is unused (exp(0) = 1)
RMS_MULT = 1.0  # the RMS-normalized step is multiplied by this

# ---- the 14 feature groups (30 values per element), in order: (name, width, what it is) ---------------------------
# width 3 = one value per decay k (momentum decays for m, Adafactor decays for the factored terms).
FEATURE_GROUPS = (
    ("g", 1, "clamped gradient g"),
    ("clip_g", 1, "clamp(g, −FEATURE_CLIP, FEATURE_CLIP)"),
    ("p", 1, "parameter value before the update"),
    ("m", 3, "momentum m_k"),
    ("v", 1, "second moment v"),
    ("m_rsqrt_v", 3, "m_k · rsqrt(v + EPS_RSQRT)"),
    ("rsqrt_v", 1, "rsqrt(v + EPS_RSQRT)"),
    ("fac_g", 3, "g · row_factor_k · col_factor_k"),
    ("g_rsqrt_v", 1, "g · rsqrt(v + EPS_RSQRT)"),
    ("row", 3, "row accumulator r_k broadcast to the element"),
    ("col", 3, "column accumulator c_k broadcast to the element"),
    ("rsqrt_row", 3, "rsqrt(r_k + EPS_RSQRT)"),
    ("rsqrt_col", 3, "rsqrt(c_k + EPS_RSQRT)"),
    ("fac_m", 3, "m_k · row_factor_k · col_factor_k"),
)
FEATURE_DIMS = tuple(width for _, width, _ in FEATURE_GROUPS)  # (1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3)
NUM_FEATURES = sum(FEATURE_DIMS)  # 30

# ---- the network (published defaults) ---------------------------------------------------------------------------
HIDDEN_SIZE = 8
HIDDEN_LAYERS = 2  # layer widths [HIDDEN_SIZE] * HIDDEN_LAYERS + [OUTPUT_SIZE]: split layer, then dense layers
OUTPUT_SIZE = 3  # direction, magnitude, unused
ACTIVATIONS = ("relu", "tanh")

# ---- routing ---------------------------------------------------------------------------------------------------------
# AdamW defaults for tensors of rank ≤ 1 and param groups marked embedding=True.
ADAM_BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
# How the learned rule reads a tensor: "last2" normalizes and orthogonalizes over a tensor's last two axes as
# they are (the public PyTorch port); "io" sees a tensor of rank ≥ 3 in optax's HWIO layout (PyTorch
# (O, I, *spatial) → (*spatial, I, O)), so its last two axes are (I, O).
NORMALIZE_AXES = ("last2", "io")


# ---- the C++ header (csrc/celo2_spec.h) ----------------------------------------------------------------------------
_PREAMBLE = """\
// GENERATED from mulo/celo2/spec.py by `python -m mulo.celo2.spec > csrc/celo2_spec.h`; do not edit.
// The one specification of Celo2's per-element rule (tests/celo2/test_cpu_backend.py checks this file).
#pragma once

namespace mulo {
namespace celo2 {
"""


def _c_name(name: str) -> str:
    return "k" + "".join(part.capitalize() for part in name.lower().split("_"))


def c_header() -> str:
    """The text of csrc/celo2_spec.h: this module's constants for the fused kernels."""
    scalars = {name: globals()[name] for name in ("GRAD_CLAMP", "FEATURE_CLIP", "EPS_GRAD_SQ", "EPS_SAFE_RSQRT",
                                                  "EPS_RSQRT", "EPS_NORMALIZE")}  # fmt: skip
    decays = {name: globals()[name] for name in ("RMS_DECAY", "EXP_MULT", "RMS_MULT")}
    sizes = {"FEATURES": NUM_FEATURES, "HIDDEN": HIDDEN_SIZE, "HIDDEN_LAYERS": HIDDEN_LAYERS, "OUTPUT": OUTPUT_SIZE}
    starts = [sum(FEATURE_DIMS[:i]) for i in range(len(FEATURE_DIMS))]
    out = [f"constexpr float {_c_name(k)} = {v!r}f;" for k, v in scalars.items()]
    out += [f"constexpr double {_c_name(k)} = {v!r};" for k, v in decays.items()]
    out += [f"constexpr double {_c_name(k)}[3] = {{{', '.join(map(repr, globals()[k]))}}};"
            for k in ("MOMENTUM_DECAYS", "ADAFACTOR_DECAYS")]  # fmt: skip
    out += ["", *(f"constexpr int {_c_name(k)} = {v};" for k, v in sizes.items()), ""]
    out += ["// the features: index of the first value of each group (width 1 or 3), in FEATURE_GROUPS order"]
    out += ["enum Feature : int {"]
    out += [f"  kFeat{_c_name(n)[1:]} = {i},  // {w}: {what}" for (n, w, what), i in zip(FEATURE_GROUPS, starts)]
    out += ["};", "", "}  // namespace celo2", "}  // namespace mulo", ""]
    return _PREAMBLE + "\n" + "\n".join(out)


if __name__ == "__main__":
    print(c_header(), end="")
