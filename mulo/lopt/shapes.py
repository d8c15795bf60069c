"""Shapes the μLO math sees (docs/ALGORITHM.md §1): 0-d as (1,), optional JAX axis layout, factored dims."""

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


def math_view_stacked(t: torch.Tensor, layout: str = "torch") -> torch.Tensor:
    """Math view of a (3, *P) state tensor stacked over the three decays (P: the parameter's shape)."""
    if layout == "jax" and t.dim() == 3:
        return t.transpose(1, 2)
    return t


def physical_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    """Shape of element-wise state (momentum, second moment): the parameter's own, 0-d as (1,)."""
    return tuple(shape) if len(shape) else (1,)


def physical_factored_dims(shape: tuple[int, ...] | torch.Size, layout: str = "torch") -> tuple[int, int] | None:
    """``(d1, d0)`` of :func:`factored_dims` expressed as axes of the parameter's own (physical) shape.

    Kernels index element-wise tensors in the parameter's memory order; the row accumulator is the mean
    of s over physical axis d0 and is stored contiguous over the remaining axes in order (likewise the
    column accumulator over d1). In the "jax" layout a 2-d tensor's math axes are its physical axes swapped.
    """
    dims = factored_dims(math_shape(shape, layout))
    if dims is None or not (layout == "jax" and len(shape) == 2):
        return dims
    return 1 - dims[0], 1 - dims[1]


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
