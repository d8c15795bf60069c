"""The pass contract: the three passes of a μLO step as separately callable backend methods.

A μLO step of one tensor needs per-tensor statistics that are plain sums: pass A's sums of
s = g² + 1e-30 over the factored axes (and the count of non-finite s), and pass B's 28 per-channel sums of
squares of the features. On one process they cover the whole tensor; for a tensor split across ranks
(FSDP2 / DTensor) each rank computes them on its shard, :mod:`mulo.distributed` adds them up over the
shard group between the passes, and every rank applies the exact update of the whole tensor to its shard.

A backend that declares the ``"passes"`` capability in its :class:`mulo.backends.BackendSpec` implements
:class:`PassBackend` on lists of LOCAL tensors (plain tensors; state dicts hold the local shards):

``pass_a(params, grads, states, geoms, weights) -> list[TensorStats]``
    Pass A over this rank's shard; nothing is modified.
``pass_b(params, grads, states, stats, geoms, weights) -> list[Tensor]``
    Per tensor the (28,) sums of squares of the un-normalized feature channels over the shard, given
    pass A's statistics summed across ranks.
``pass_c(params, grads, states, stats, sumsqs, geoms, lrs, weight_decays, weights) -> None``
    The update of the shard in place, normalizing with ``sumsq / numel(whole tensor)``; skipped (all but
    ``nonfinite_skips += 1``) where the summed ``stats.nonfinite`` is non-zero. A whole tensor with no
    elements only counts the step.

``geoms[i]`` is a :class:`ShardGeometry` (physical axes): the whole tensor's shape and the split axis.
:class:`mulo.backends.reference.ReferenceBackend` is the oracle of all three.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol, runtime_checkable

import torch

from mulo.lopt.network import MetaWeights
from mulo.lopt.shapes import physical_factored_dims


@dataclasses.dataclass(frozen=True)
class ShardGeometry:
    """Where a local shard sits: the whole parameter's physical shape (0-d as (1,)) and the physical axis
    split across ranks (``None``: this rank holds the whole tensor)."""

    shape: tuple[int, ...]
    sharded_dim: int | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def factored_dims(self, layout: str) -> tuple[int, int] | None:
        """(d1, d0) of the WHOLE tensor as physical axes (a shard's own shape may order them otherwise)."""
        return physical_factored_dims(self.shape, layout)


@dataclasses.dataclass
class TensorStats:
    """Pass A's statistics of one tensor (or shard), in the compute dtype; every field is a plain sum.

    ``nonfinite``: 0-d, the number of non-finite s (on a fast backend 0 or 1 per shard: what matters after
    the all-reduce is whether the total is 0). For rank ≥ 2: ``row_sum`` = Σ_{d0} s, shaped like the row
    accumulator without its decay axis; ``col_sum`` = Σ_{d1} s likewise; and, only when the tensor is split
    along d1, ``row_acc_sum`` (3, …) = Σ_{d1} of the NEW row accumulator (d0 is whole on every rank then,
    so the shard's new row accumulator is local; its mean over d1 needs every rank's part).

    Mapping-style access (``stats["row_sum"]``, ``"row_acc_sum" in stats``) names the same fields; the keys
    are what :func:`summed_stats` lists.
    """

    nonfinite: torch.Tensor
    row_sum: torch.Tensor | None = None
    col_sum: torch.Tensor | None = None
    row_acc_sum: torch.Tensor | None = None

    def __getitem__(self, key: str) -> torch.Tensor:
        value = getattr(self, key, None) if key in _STAT_FIELDS else None
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return key in _STAT_FIELDS and getattr(self, key) is not None


_STAT_FIELDS = tuple(f.name for f in dataclasses.fields(TensorStats))


def summed_stats(geom: ShardGeometry, layout: str) -> tuple[str, ...]:
    """Which pass-A statistics span the sharded axis, i.e. must be summed over the shard group.

    ``row_sum`` sums over d0: partial iff the shard is split along d0 (then the row accumulator is whole on
    every rank, replicated); ``col_sum`` likewise along d1. The accumulator indexed by the split axis is
    stored sharded and needs nothing — except the row accumulator's mean over d1 (``row_acc_sum``).
    """
    k = geom.sharded_dim
    if k is None:
        return ()
    dims = geom.factored_dims(layout)
    if dims is None:
        return ("nonfinite",)
    d1, d0 = dims
    if k == d0:
        return ("nonfinite", "row_sum")
    if k == d1:
        return ("nonfinite", "col_sum", "row_acc_sum")
    return ("nonfinite",)


def summed_elements(geom: ShardGeometry, layout: str) -> int:
    """Floats one step all-reduces for this tensor: pass A's summed stats + 28 channel sums of squares.

    With P the whole shape and k the split axis: 1 (the non-finite count) + 28, plus numel(P)/P[d0]
    (``row_sum``) when k = d0, or numel(P)/P[d1] (``col_sum``) + 3·numel(P)/(P[d0]·P[d1]) (``row_acc_sum``)
    when k = d1. A 2-d (a, b) weight split along its larger axis: 29 + (smaller size) floats.
    """
    if geom.sharded_dim is None:
        return 0
    n = geom.numel
    dims = geom.factored_dims(layout)
    count = 1 + 28
    for key in summed_stats(geom, layout):
        if key == "row_sum":
            count += n // geom.shape[dims[1]]
        elif key == "col_sum":
            count += n // geom.shape[dims[0]]
        elif key == "row_acc_sum":
            count += 3 * n // (geom.shape[dims[0]] * geom.shape[dims[1]])
    return count


Tensors = list[torch.Tensor]  # one tensor per parameter of a bucket
States = list[dict[str, torch.Tensor]]  # each parameter's state dict (ARCHITECTURE.md, the backend contract)
Geometries = list[ShardGeometry]


@runtime_checkable
class PassBackend(Protocol):
    """What a backend declaring the ``"passes"`` capability implements (see the module docstring)."""

    name: str

    def pass_a(self, params: Tensors, grads: Tensors, states: States, geoms: Geometries, weights: MetaWeights
               ) -> list[TensorStats]: ...  # fmt: skip

    def pass_b(self, params: Tensors, grads: Tensors, states: States, stats: list[TensorStats], geoms: Geometries,
               weights: MetaWeights) -> Tensors: ...  # fmt: skip

    def pass_c(self, params: Tensors, grads: Tensors, states: States, stats: list[TensorStats], sumsqs: Tensors,
               geoms: Geometries, lrs: list[float], weight_decays: list[float], weights: MetaWeights
               ) -> None: ...  # fmt: skip
