"""The pass-level backend interface that sharded (FSDP2 / DTensor) parameters need (ALGORITHM.md §5).

A μLO step of one tensor needs three per-tensor statistics: sums of s = g² + 1e-30 over the factored
axes (pass A), the 28 per-channel sums of squares of the features (pass B), and the non-finite flag.
When the tensor is split across ranks each rank computes them on its shard; :mod:`mulo.distributed`
adds them up over the shard's process group (one bucketed ``all_reduce`` per pass for all tensors), and
every rank then applies the exact update of the whole tensor to its shard (pass C).

A backend that runs sharded parameters exposes, besides ``step``, three methods on lists of LOCAL
tensors (plain tensors, never DTensors; state dicts hold the local shards of every state tensor):

``pass_a(params, grads, states, geoms, weights) -> list[dict[str, Tensor]]``
    Per tensor, sums over this rank's shard, in the compute dtype (float64 for float64 parameters or
    state, float32 otherwise); keys: ``nonfinite`` (0-d, number of non-finite s), and for rank ≥ 2
    ``row_sum`` = Σ_{d0} s (the row accumulator's shape without the decay axis) and ``col_sum`` = Σ_{d1} s;
    if the shard is split along d1, also ``row_acc_sum`` (3, …) = Σ_{d1} of the NEW row accumulator
    (d0 is whole then, so the new row accumulator of the shard is local). Nothing is modified.
``pass_b(params, grads, states, stats, geoms, weights) -> list[Tensor]``
    Per tensor the (28,) sums of squares of the un-normalized features over the shard, given pass A's
    stats already summed across ranks (row/col means = sums / the WHOLE tensor's axis sizes).
``pass_c(params, grads, states, stats, sumsqs, geoms, lrs, weight_decays, weights) -> None``
    The update of the shard in place, normalizing with ``sumsq / numel(whole tensor)``; skipped (all but
    ``nonfinite_skips += 1``) where the summed ``stats["nonfinite"]`` is non-zero.

``geoms[i]`` is a :class:`ShardGeometry` (physical axes). ``mulo.backends.reference.ReferenceBackend``
implements the three methods and is their oracle; a backend without them runs sharded parameters through
the reference's passes (announced once).
"""

from __future__ import annotations

import dataclasses
import math

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


def summed_stats(geom: ShardGeometry, layout: str) -> tuple[str, ...]:
    """Which pass-A statistics span the sharded axis, i.e. must be summed over the shard group.

    ``row_sum`` sums over d0: partial iff the shard is split along d0 (then the row accumulator is whole on
    every rank, replicated); ``col_sum`` likewise along d1. The accumulator indexed by the split axis is
    stored sharded and needs nothing — except the row accumulator's mean over d1 (``row_acc_sum``).
    """
    k = geom.sharded_dim
    if k is None:
        return ()
    dims = physical_factored_dims(geom.shape, layout)
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
    dims = physical_factored_dims(geom.shape, layout)
    count = 1 + 28
    for key in summed_stats(geom, layout):
        if key == "row_sum":
            count += n // geom.shape[dims[1]]
        elif key == "col_sum":
            count += n // geom.shape[dims[0]]
        elif key == "row_acc_sum":
            count += 3 * n // (geom.shape[dims[0]] * geom.shape[dims[1]])
    return count
