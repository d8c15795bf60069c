"""Pass A of the μLO step (ALGORITHM.md §5): Adafactor row/column sums of s = g² + 1e-30 and the
per-tensor finite flag, for every tensor of a group in one launch.

Per tile: Σ_y s → accX sums, Σ_x s → accY sums, Σ s → the batch's plane sum, and (tiles first along d0)
Σ of the old row accumulator over its d1 axis, all by atomic adds into the zeroed workspace; the count of
non-finite s goes to the tensor's flag. Reads g once.

Deterministic mode (``DET``): the tile stores those sums to its record instead, and
``lopt_reduce_finish_kernel`` (one program per tensor batch) adds the records up in index order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from mulo.kernels.lopt_common import (
    EPS_GRAD_SQ,
    FLAG_D0_IS_X,
    FLAG_FACTORED,
    FLT_MAX,
    M_C0,
    M_FLAGS,
    M_WS_SX,
    M_WS_SY,
    M_WS_T,
    M_XX,
    M_YY,
    NMETA,
    R_NBAD,
    R_PLANE,
    R_RSUM,
    R_SCALARS,
    R_SUMSQ,
    WS_BATCH,
    batch_coords,
    chunk_record,
    tile_coords,
)

NUM_WARPS = 4


@triton.jit
def lopt_reduce_kernel(
    chunks,
    meta,
    ptrs,
    ws,
    records,
    G_DT: tl.constexpr,
    S_DT: tl.constexpr,
    BX: tl.constexpr,
    BY: tl.constexpr,
    IDX: tl.constexpr,
    DET: tl.constexpr,
):
    """s = g² + 1e-30 (float32); ws[flag] += #non-finite s; ws[sumX][x] += Σ_y s; ws[sumY][y] += Σ_x s;
    ws[plane][batch] += Σ s; ws[rsum_old][k, batch] += Σ_{d1} r_old_k (tiles at the first d0 position).
    ``DET``: the same sums stored to the chunk's record (``records``), no atomic."""
    (t, bidx, xt, yt, n, nx, ny, nbatch, flags, off, mask, mx, my, ix, iy, lx, ly, ws_sx, ws_sy, ws_nx, ws_ny, ws_t) = (
        tile_coords(chunks, meta, BX, BY, IDX, 1, 0)
    )
    prow = ptrs + t.to(tl.int64) * 8  # this tensor's row of the pointer table
    g = tl.load(tl.load(prow + 1).to(tl.pointer_type(G_DT)) + off, mask=mask, other=0.0).to(tl.float32)
    s = tl.where(mask, g * g + EPS_GRAD_SQ, 0.0)
    nbad = tl.sum(tl.where(mask & ~(s <= FLT_MAX), 1.0, 0.0))
    wsT = ws + ws_t
    if DET:
        rec = chunk_record(records, meta, t, bidx, xt, yt, nx, ny, BX, BY, IDX)
        rs = rec + BX + BY  # the record's scalars
        tl.store(rs + R_NBAD, nbad)
    else:
        tl.atomic_add(wsT, nbad, mask=nbad > 0.0, sem="relaxed")
    if (flags & FLAG_FACTORED) != 0:
        sx = tl.sum(s, axis=1)
        sy = tl.sum(s, axis=0)
        if DET:
            tl.store(rec + tl.arange(0, BX), sx)
            tl.store(rec + BX + tl.arange(0, BY), sy)
            tl.store(rs + R_PLANE, tl.sum(sx))
        else:
            tl.atomic_add(ws + ws_sx + ix, sx, mask=mx, sem="relaxed")
            tl.atomic_add(ws + ws_sy + iy, sy, mask=my, sem="relaxed")
            tl.atomic_add(wsT + WS_BATCH + bidx, tl.sum(sx), sem="relaxed")
        if (flags & FLAG_D0_IS_X) != 0:  # d0 = X: the row accumulator is accY, its d1 axis is Y
            if xt == 0:
                ay = tl.load(prow + 5).to(tl.pointer_type(S_DT))
                for k in tl.static_range(3):
                    r = tl.sum(tl.load(ay + k * ly + iy, mask=my, other=0.0).to(tl.float32))
                    if DET:
                        tl.store(rs + R_RSUM + k, r)
                    else:
                        tl.atomic_add(wsT + WS_BATCH + nbatch + k * nbatch + bidx, r, sem="relaxed")
        else:
            if yt == 0:
                ax = tl.load(prow + 4).to(tl.pointer_type(S_DT))
                for k in tl.static_range(3):
                    r = tl.sum(tl.load(ax + k * lx + ix, mask=mx, other=0.0).to(tl.float32))
                    if DET:
                        tl.store(rs + R_RSUM + k, r)
                    else:
                        tl.atomic_add(wsT + WS_BATCH + nbatch + k * nbatch + bidx, r, sem="relaxed")


@triton.jit
def lopt_reduce_finish_kernel(batches, meta, ws, records, BX: tl.constexpr, BY: tl.constexpr, IDX: tl.constexpr):
    """Deterministic mode, after pass A: one program per (tensor, batch) adds its chunks' records up in index
    order and stores the row and column sums of s, the plane sum and the old row accumulators' sums into the
    workspace; the program of batch 0 also stores the tensor's non-finite count (over all its batches)."""
    pid = tl.program_id(0)
    t = tl.load(batches + pid * 2)
    bidx = tl.load(batches + pid * 2 + 1).to(IDX)
    row = meta + t.to(tl.int64) * NMETA
    n, nx, ny, nbatch, base, ix0, iy0 = batch_coords(row, bidx, IDX)
    flags = tl.load(row + M_FLAGS).to(tl.int32)
    wsT = ws + tl.load(row + M_WS_T).to(IDX)
    c0 = tl.load(row + M_C0).to(IDX)
    nxt = (nx + BX - 1) // BX
    nyt = (ny + BY - 1) // BY
    RW: tl.constexpr = BX + BY + R_SCALARS + R_SUMSQ  # lopt_plan.record_width
    zs = tl.sum(tl.zeros([BY], dtype=tl.float32))  # a float32 scalar 0
    if bidx == 0:  # the tensor's non-finite count, over every batch
        nbad = zs
        for i in range(nbatch * nxt * nyt):
            nbad += tl.load(records + (c0 + i) * RW + BX + BY + R_NBAD)
        tl.store(wsT, nbad)
    if (flags & FLAG_FACTORED) != 0:
        first = c0 + bidx * nxt * nyt  # this batch's records, (x-tile, y-tile) row-major
        ws_sx = tl.load(row + M_WS_SX).to(IDX)
        ws_sy = tl.load(row + M_WS_SY).to(IDX)
        xx = tl.load(row + M_XX).to(IDX)
        yy = tl.load(row + M_YY).to(IDX)
        plane = zs
        for xt in range(nxt):  # Σ_y s of the tile rows, over the y-tiles in order
            acc = tl.zeros([BX], dtype=tl.float32)
            for yt in range(nyt):
                rec = records + (first + xt * nyt + yt) * RW
                acc += tl.load(rec + tl.arange(0, BX))
                plane += tl.load(rec + BX + BY + R_PLANE)
            xs = xt * BX + tl.arange(0, BX).to(IDX)
            tl.store(ws + ws_sx + ix0 + xs * xx, acc, mask=xs < nx)
        for yt in range(nyt):  # Σ_x s of the tile columns, over the x-tiles in order
            acc = tl.zeros([BY], dtype=tl.float32)
            for xt in range(nxt):
                acc += tl.load(records + (first + xt * nyt + yt) * RW + BX + tl.arange(0, BY))
            ys = yt * BY + tl.arange(0, BY).to(IDX)
            tl.store(ws + ws_sy + iy0 + ys * yy, acc, mask=ys < ny)
        tl.store(wsT + WS_BATCH + bidx, plane)
        # the old row accumulators' sums: tiles at the first d0 position (x-tile 0 when d0 is X, else y-tile 0)
        d0x = (flags & FLAG_D0_IS_X) != 0
        count = tl.where(d0x, nyt, nxt)
        step = tl.where(d0x, 1, nyt)
        for k in tl.static_range(3):
            r = zs
            for i in range(count):
                r += tl.load(records + (first + i * step) * RW + BX + BY + R_RSUM + k)
            tl.store(wsT + WS_BATCH + nbatch + k * nbatch + bidx, r)


def lopt_reduce(
    plan, ptrs: torch.Tensor, ws: torch.Tensor, g_dt, s_dt, block_x: int, block_y: int, records=None
) -> None:
    """Launch pass A over ``plan.chunks_ab`` (``ws`` must be zeroed); with ``records`` (deterministic mode: a
    float32 buffer of ``lopt_plan.record_width`` floats per chunk) no atomic, then the finishing launch."""
    idx = tl.int64 if plan.use_int64 else tl.int32
    det = records is not None
    grid = (plan.chunks_ab.shape[0],)
    lopt_reduce_kernel[grid](
        plan.chunks_ab, plan.meta, ptrs, ws, records if det else ws, g_dt, s_dt, block_x, block_y, idx, det,
        num_warps=NUM_WARPS,
    )  # fmt: skip
    if det:
        lopt_reduce_finish_kernel[(plan.batches.shape[0],)](
            plan.batches, plan.meta, ws, records, block_x, block_y, idx, num_warps=NUM_WARPS
        )
