"""Constants of the μLO algorithm (docs/ALGORITHM.md §1–3).

Every number here is a fact of the published μLO_M optimizer (Thérien et al. 2024) or of
small_fc_lopt (Metz et al. 2022). Decays are *derived* from initial decays and learned offsets by
``β = clip(1 − exp(10·(log(1 − β0)/10 + offset)), 0, 1)`` so that meta-weights with other offsets load.
"""

from __future__ import annotations

import math

from mulo.lopt import spec

# Initial decays and the published μLO_M learned offsets (docs/ALGORITHM.md §1).
INITIAL_MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
INITIAL_RMS_DECAYS = (0.999,)
INITIAL_ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)
MOMENTUM_OFFSETS = (0.15216392, 0.14245212, 0.06812963)
RMS_OFFSETS = (0.01079706,)
ADAFACTOR_OFFSETS = (0.18621896, -0.10864615, -0.06185547)

# Output scaling: step = d · exp(a · EXP_MULT) · STEP_MULT.
EXP_MULT = 0.001
STEP_MULT = 0.01  # μLO; the SP small_fc_lopt of the paper uses 0.001

# Network shape, timescales and epsilons: the algorithm's one specification (mulo/lopt/spec.py).
INPUT_SIZE = spec.INPUT_SIZE
HIDDEN_SIZE = spec.HIDDEN_SIZE
HIDDEN_LAYERS = 1  # the published checkpoint config
NUM_FEATURES = spec.NUM_FEATURES  # normalized channels
TIMESCALES = spec.TIMESCALES
EPS_GRAD_SQ = spec.EPS_GRAD_SQ
EPS_SAFE_RSQRT = spec.EPS_SAFE_RSQRT
EPS_RMS = spec.EPS_RMS
EPS_ACC_FEATURE = spec.EPS_ACC_FEATURE
EPS_NORMALIZE = spec.EPS_NORMALIZE


def decay_from_offset(initial: float, offset: float, *, clip: bool = True) -> float:
    """β = 1 − exp(10·(log(1 − β0)/10 + offset)), clipped to [0, 1] when ``clip``.

    The JAX reference clips the rms/Adafactor decays but not the momentum decays (docs/ALGORITHM.md §6).
    """
    beta = 1.0 - math.exp(10.0 * (math.log(1.0 - initial) / 10.0 + offset))
    return min(max(beta, 0.0), 1.0) if clip else beta
