"""The μLO state of one parameter, as every backend reads it (ARCHITECTURE.md, "the backend contract").

``init_state`` is the one place that allocates it: :class:`mulo.MuLO` for plain tensors, and the tests
and benchmarks that drive backends directly.
"""

from __future__ import annotations

import torch

from mulo.lopt.shapes import accumulator_shapes, math_shape, physical_shape


def init_state(
    shape: tuple[int, ...] | torch.Size,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    layout: str = "torch",
) -> dict[str, torch.Tensor]:
    """Zero state for a parameter of ``shape``: ``step`` and ``nonfinite_skips`` (float32 0-d),
    ``momentum`` (3, *P), ``second_moment`` (P) with P the physical shape (0-d as (1,)), then ``row`` and
    ``col`` (rank ≥ 2) or ``full`` (rank < 2) in the math shape of ``layout``; accumulators in ``dtype``."""
    phys = physical_shape(shape)
    state = {
        "step": torch.zeros((), dtype=torch.float32, device=device),
        "momentum": torch.zeros((3, *phys), dtype=dtype, device=device),
        "second_moment": torch.zeros(phys, dtype=dtype, device=device),
        "nonfinite_skips": torch.zeros((), dtype=torch.float32, device=device),
    }
    for key, acc_shape in accumulator_shapes(math_shape(shape, layout)).items():
        state[key] = torch.zeros(acc_shape, dtype=dtype, device=device)
    return state
