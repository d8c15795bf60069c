"""Constants of the μLO algorithm (ALGORITHM.md §1–3).

Every number here is a fact of the published μLO_M optimizer (Thérien et al. 2024) or of
small_fc_lopt (Metz et al. 2022). Decays are *derived* from initial decays and learned offsets by
``β = clip(1 − exp(10·(log(1 − β0)/10 + offset)), 0, 1)`` so that meta-weights with other offsets load.
"""

from __future__ import annotations

import math

# Initial decays and the published μLO_M learned offsets (ALGORITHM.md §1).
INITIAL_MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
INITIAL_RMS_DECAYS = (0.999,)
INITIAL_ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)
MOMENTUM_OFFSETS = (0.15216392, 0.14245212, 0.06812963)
RMS_OFFSETS = (0.01079706,)
ADAFACTOR_OFFSETS = (0.18621896, -0.10864615, -0.06185547)

# Output scaling: step = d · exp(a · EXP_MULT) · STEP_MULT.
EXP_MULT = 0.001
STEP_MULT = 0.01  # μLO; the SP small_fc_lopt of the paper uses 0.001

# Network shape (published checkpoint config).
INPUT_SIZE = 39
HIDDEN_SIZE = 32
HIDDEN_LAYERS = 1
NUM_FEATURES = 28  # normalized channels
TIMESCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0, 100000.0)

# Epsilons, each named after where it appears in ALGORITHM.md.
EPS_GRAD_SQ = 1e-30  # s = g² + 1e-30
EPS_SAFE_RSQRT = 1e-9  # safe_rsqrt(x) = rsqrt(max(x, 1e-9)); row-mean and full-accumulator offsets
EPS_RMS = 1e-6  # rsqrt(v + 1e-6) and (u + 1e-6)^-½
EPS_ACC_FEATURE = 1e-8  # rsqrt(row/col feature + 1e-8)
EPS_NORMALIZE = 1e-5  # rsqrt(1e-5 + mean x²)


def decay_from_offset(initial: float, offset: float, *, clip: bool = True) -> float:
    """β = 1 − exp(10·(log(1 − β0)/10 + offset)), clipped to [0, 1] when ``clip``.

    The JAX reference clips the rms/Adafactor decays but not the momentum decays (ALGORITHM.md §6).
    """
    beta = 1.0 - math.exp(10.0 * (math.log(1.0 - initial) / 10.0 + offset))
    return min(max(beta, 0.0), 1.0) if clip else beta
