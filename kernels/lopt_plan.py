"""The segment/chunk tables that let one launch step every tensor of a (device, dtype) group.

Every parameter is seen as ``n_batch`` planes of ``nX × nY`` elements: with physical factored axes
(d1, d0) (``mulo.lopt.shapes.physical_factored_dims``), ``X`` is the lower of the two axes and ``Y`` the
higher, and the parameter's memory order is ``(A, X, B, Y, C)`` where A, B, C are the products of the
axes before, between and after them. Element (a, x, b, y, c) sits at ``a·sA + x·sX + b·sB + y·sY + c``.
The Adafactor accumulator that keeps X ("accX", reduces Y) is stored contiguous over (a, x, b, c), the one
that keeps Y ("accY") over (a, b, y, c) — exactly the contract's ``row``/``col`` layouts: the row
accumulator (d0 reduced) is accY when d0 = X, else accX. Rank < 2 tensors (and 0-d) are a flat vector
folded into an ``nX × nY`` plane (nY = min(n, BLOCK_Y)) with no factoring.

A tensor may be a LOCAL shard of a larger one (the pass contract, :mod:`mulo.backends.passes`): its tiles
cover the shard, while the factored axes, the sizes the Adafactor means divide by (``wnX``, ``wnY``) and the
element count that normalizes the features (``wn``) are the WHOLE tensor's; such plans also set
FLAG_ROW_MEAN_GIVEN: the per-batch sums of the old row accumulators are replaced by sums over d1 of the
NEW row accumulators, which the caller computes from the statistics summed across ranks.

A chunk is one tile ``(tensor, batch, x-tile, y-tile)``; the kernels of a pass take one program per chunk,
so biases and matrices share launches (apex's multi-tensor-apply with 2-d tiles instead of 1-d chunks).

The workspace (float32, zeroed once per step) holds, per tensor, at ``ws_t``: [0] the count of non-finite
s = g² + 1e-30, [1] the step counter t read before the step, [2:34] the 28 (padded to 32) per-channel
sums of squares, [34 : 34+nb] per-batch sums of s, [34+nb : 34+4nb] per-batch sums of the old row
accumulators over their d1 axis (with FLAG_ROW_MEAN_GIVEN: of the new ones); and for factored tensors
``sum X`` (LX), ``sum Y`` (LY) — the sums of s that update accX / accY — and the new accumulators
``new X`` (3·LX), ``new Y`` (3·LY).

Deterministic mode (``torch.use_deterministic_algorithms(True)``): passes A and B add nothing atomically.
Each chunk stores its partial sums to its own record (``records``: one row of ``record_width(bx, by)``
floats per chunk of passes A/B, at the chunk's canonical index ``M_C0 + (batch·nXt + x-tile)·nYt + y-tile``,
whatever program runs it), and one program per (tensor, batch) of pass A (per tensor of pass B) adds the
records up in that index order and stores the sums into the workspace: the same bits whatever order the
programs ran in.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from mulo.lopt.shapes import physical_factored_dims

# meta table columns (int64 per tensor)
M_N, M_NX, M_NY, M_NBATCH, M_NB, M_NC = 0, 1, 2, 3, 4, 5
M_SA, M_SX, M_SB, M_SY = 6, 7, 8, 9
M_XA, M_XX, M_XB = 10, 11, 12  # accX index: a·XA + x·XX + b·XB + c
M_YA, M_YB, M_YY = 13, 14, 15  # accY index: a·YA + b·YB + y·YY + c
M_LX, M_LY = 16, 17  # elements of accX / accY per decay
M_FLAGS = 18  # bit 0: factored; bit 1: d0 is the X axis (row accumulator = accY); bit 2: row means given
M_WS_SX, M_WS_SY, M_WS_NX, M_WS_NY, M_WS_T = 19, 20, 21, 22, 23
M_WIDX = 24  # which meta-weight set the tensor uses (a population member; 0 for a single optimizer)
M_WNX, M_WNY, M_WN = 25, 26, 27  # the whole tensor's sizes along X and Y and its element count
M_C0 = 28  # the index of the tensor's first chunk of passes A/B (its records in deterministic mode start there)
NMETA = 29
FLAG_FACTORED, FLAG_D0_IS_X, FLAG_ROW_MEAN_GIVEN = 1, 2, 4

# pointer table columns (int64 addresses per tensor)
P_PARAM, P_GRAD, P_MOM, P_V, P_ACCX, P_ACCY, P_STEP, P_SKIPS = range(8)
NPTR = 8

# offsets inside a tensor's scalar workspace block
WS_FLAG, WS_T, WS_SUMSQ, WS_BATCH = 0, 1, 2, 34
NCHAN = 28
NCHAN_PAD = 32

# a deterministic-mode record (float32, per chunk of passes A/B): pass A's Σ_y s of the tile's BX rows, Σ_x s of
# its BY columns, then its plane sum, non-finite count and Σ of the three old row accumulators; pass B's 32 sums
R_PLANE, R_NBAD, R_RSUM = 0, 1, 2  # after the BX + BY row/column sums
R_SCALARS = 8
R_SUMSQ = NCHAN_PAD


def record_width(block_x: int, block_y: int) -> int:
    """Floats per chunk record in deterministic mode."""
    return block_x + block_y + R_SCALARS + R_SUMSQ


@dataclasses.dataclass(frozen=True)
class TensorLayout:
    """How one parameter is tiled (see the module docstring)."""

    n: int
    nx: int
    ny: int
    n_a: int
    n_b: int
    n_c: int
    factored: bool
    d0_is_x: bool


def tensor_layout(
    shape: tuple[int, ...], layout: str, block_y: int, whole: tuple[int, ...] | None = None
) -> TensorLayout:
    """How a tensor of ``shape`` is tiled; a shard of a tensor of shape ``whole`` keeps the whole one's axes."""
    n = math.prod(shape)
    dims = physical_factored_dims(shape if whole is None else whole, layout)
    if dims is None:
        ny = max(1, min(n, block_y))
        return TensorLayout(n, -(-n // ny), ny, 1, 1, 1, False, False)
    d1, d0 = dims
    lo, hi = min(d0, d1), max(d0, d1)
    return TensorLayout(
        n=n,
        nx=shape[lo],
        ny=shape[hi],
        n_a=math.prod(shape[:lo]),
        n_b=math.prod(shape[lo + 1 : hi]),
        n_c=math.prod(shape[hi + 1 :]),
        factored=True,
        d0_is_x=d0 == lo,
    )


@dataclasses.dataclass
class Plan:
    """Tables for one group signature (shapes, layout, tiles, device); built once and cached."""

    meta: torch.Tensor  # int64 (T, NMETA)
    chunks_ab: torch.Tensor  # int32 (chunks, 4) for passes A and B: tensor, batch, x-tile, y-tile
    chunks_c: torch.Tensor  # int32 (chunks, 4) for pass C: the rank ≥ 2 tensors' chunks first
    chunks_c_by_kind: tuple[torch.Tensor, torch.Tensor]  # chunks_c's two runs (rank ≥ 2, rank < 2) as views
    batches: torch.Tensor  # int32 (Σ n_batch, 2): (tensor, batch), one program each when deterministic pass A sums
    ws_size: int
    use_int64: bool
    layouts: tuple[TensorLayout, ...]
    rows: list[list[int]]  # the meta table on the host


def _chunks(layouts: tuple[TensorLayout, ...], bx: int, by: int) -> torch.Tensor:
    rows = []
    for t, lay in enumerate(layouts):
        nxt, nyt = -(-lay.nx // bx), -(-lay.ny // by)
        nbatch = lay.n_a * lay.n_b * lay.n_c
        tb = torch.arange(nbatch, dtype=torch.int32).repeat_interleave(nxt * nyt)
        tx = torch.arange(nxt, dtype=torch.int32).repeat_interleave(nyt).repeat(nbatch)
        ty = torch.arange(nyt, dtype=torch.int32).repeat(nbatch * nxt)
        rows.append(torch.stack([torch.full_like(tb, t), tb, tx, ty], dim=1))
    return torch.cat(rows).contiguous()


def build_plan(
    shapes: tuple[tuple[int, ...], ...],
    layout: str,
    block_x: int,
    block_y: int,
    block_xc: int,
    device: torch.device,
    weight_index: tuple[int, ...] | None = None,
    wholes: tuple[tuple[int, ...], ...] | None = None,
) -> Plan:
    """Tables for tensors of ``shapes``; ``weight_index[i]``: the meta-weight set tensor i uses (default 0);
    ``wholes[i]``: the whole tensor's physical shape when tensor i is a local shard of it (default: itself)."""
    layouts = tuple(tensor_layout(s, layout, block_y, w) for s, w in zip(shapes, wholes or (None,) * len(shapes)))
    weight_index = weight_index or (0,) * len(shapes)
    meta = []
    ws = c0 = 0
    for t, (lay, widx) in enumerate(zip(layouts, weight_index, strict=True)):
        nbatch = lay.n_a * lay.n_b * lay.n_c
        row = [0] * NMETA
        row[M_C0] = c0
        c0 += nbatch * -(-lay.nx // block_x) * -(-lay.ny // block_y)
        row[M_N], row[M_NX], row[M_NY], row[M_NBATCH], row[M_NB], row[M_NC] = (
            lay.n,
            lay.nx,
            lay.ny,
            nbatch,
            lay.n_b,
            lay.n_c,
        )
        if lay.factored:
            row[M_SY] = lay.n_c
            row[M_SB] = lay.ny * lay.n_c
            row[M_SX] = lay.n_b * lay.ny * lay.n_c
            row[M_SA] = lay.nx * row[M_SX]
        else:
            row[M_SY], row[M_SX] = 1, lay.ny
        row[M_XB], row[M_XX] = lay.n_c, lay.n_b * lay.n_c
        row[M_XA] = lay.nx * row[M_XX]
        row[M_YY], row[M_YB] = lay.n_c, lay.ny * lay.n_c
        row[M_YA] = lay.n_b * row[M_YB]
        row[M_LX] = lay.n_a * lay.nx * lay.n_b * lay.n_c
        row[M_LY] = lay.n_a * lay.n_b * lay.ny * lay.n_c
        row[M_FLAGS] = (FLAG_FACTORED if lay.factored else 0) | (FLAG_D0_IS_X if lay.d0_is_x else 0)
        row[M_WS_T] = ws
        row[M_WIDX] = widx
        row[M_WNX], row[M_WNY], row[M_WN] = lay.nx, lay.ny, lay.n
        if wholes is not None:
            whole = wholes[t]
            row[M_WN] = math.prod(whole)
            if lay.factored:
                row[M_FLAGS] |= FLAG_ROW_MEAN_GIVEN
                lo, hi = sorted(physical_factored_dims(whole, layout))
                row[M_WNX], row[M_WNY] = whole[lo], whole[hi]
        ws += WS_BATCH + 4 * nbatch
        if lay.factored:
            row[M_WS_SX] = ws
            ws += row[M_LX]
            row[M_WS_SY] = ws
            ws += row[M_LY]
            row[M_WS_NX] = ws
            ws += 3 * row[M_LX]
            row[M_WS_NY] = ws
            ws += 3 * row[M_LY]
        meta.append(row)
    biggest = max([3 * lay.n for lay in layouts] + [ws, c0 * record_width(block_x, block_y), 1])
    # pass C's chunks grouped by tensor kind (a program's result does not depend on the order), so that a
    # launch over one kind (lopt_apply.apply_launches) is a slice of the one table
    chunks_c = _chunks(layouts, block_xc, block_y)
    vector = torch.tensor([not lay.factored for lay in layouts], dtype=torch.bool)[chunks_c[:, 0].long()]
    chunks_c = chunks_c[torch.argsort(vector.to(torch.uint8), stable=True)].to(device)
    n_matrix = int((~vector).sum())
    return Plan(
        meta=torch.tensor(meta, dtype=torch.int64).to(device),
        chunks_ab=_chunks(layouts, block_x, block_y).to(device),
        chunks_c=chunks_c,
        chunks_c_by_kind=(chunks_c[:n_matrix], chunks_c[n_matrix:]),
        batches=torch.tensor(
            [[t, b] for t, lay in enumerate(layouts) for b in range(lay.n_a * lay.n_b * lay.n_c)], dtype=torch.int32
        )
        .reshape(-1, 2)
        .to(device),
        ws_size=ws,
        use_int64=biggest >= 2**31 - 1,
        layouts=layouts,
        rows=meta,
    )


def join_tree_order(width: int = NCHAN_PAD) -> list[int]:
    """Channel held by each column of the (elements × 32) matrix the kernels build by pairwise ``tl.join``
    of 32 per-element vectors (level by level, neighbours first) followed by a reshape."""
    import numpy as np

    level = [np.array([j]) for j in range(width)]
    while len(level) > 1:
        level = [np.stack([level[2 * i], level[2 * i + 1]], axis=-1) for i in range(len(level) // 2)]
    return [int(v) for v in level[0].reshape(-1)]
