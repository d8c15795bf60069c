"""Shapes the μLO math sees (ALGORITHM.md §1): 0-d as (1,), optional JAX axis layout, factored dims."""

from __future__ import annotations

import torch


def factored_dims(shape: tuple[int, ...] | torch.Size) -> tuple[int, int] | None:
    """``(d1, d0)``: the second-largest and largest axes, ties broken as numpy's stable argsort does.

    ``None`` for rank < 2 (those tensors keep a full Adafactor accumulator instead).
    """
    if len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda i: shape[i])  # Python's sort is stable
    return order[-2], order[-1]


def math_view(t: torch.Tensor, layout: str = "torch") -> torch.Tensor:
    """The view of a parameter-shaped tensor that the algorithm operates on (writes go through).

    0-d tensors are viewed as shape (1,); in the ``"jax"`` layout 2-d tensors are transposed so that a
    PyTorch (out, in) weight is seen as JAX's (in, out).
    """
    if t.dim() == 0:
        return t.view(1)
    if layout == "jax" and t.dim() == 2:
        return t.t()
    return t


def math_shape(shape: tuple[int, ...] | torch.Size, layout: str = "torch") -> tuple[int, ...]:
    shape = tuple(shape)
    if len(shape) == 0:
        return (1,)
    if layout == "jax" and len(shape) == 2:
        return (shape[1], shape[0])
    return shape


def accumulator_shapes(shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Shapes of the Adafactor accumulators for a math shape: ``row``/``col`` (rank ≥ 2) or ``full``."""
    dims = factored_dims(shape)
    if dims is None:
        return {"full": (3, *shape)}
    d1, d0 = dims
    row = tuple(s for i, s in enumerate(shape) if i != d0)
    col = tuple(s for i, s in enumerate(shape) if i != d1)
    return {"row": (3, *row), "col": (3, *col)}
