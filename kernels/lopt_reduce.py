"""Pass A of the μLO step (ALGORITHM.md §5): Adafactor row/column sums of s = g² + 1e-30 and the
per-tensor finite flag, for every tensor of a group in one launch.

Per tile: Σ_y s → accX sums, Σ_x s → accY sums, Σ s → the batch's plane sum, and (tiles first along d0)
Σ of the old row accumulator over its d1 axis, all by atomic adds into the zeroed workspace; the count of
non-finite s goes to the tensor's flag. Reads g once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from mulo.kernels.lopt_common import EPS_GRAD_SQ, FLAG_D0_IS_X, FLAG_FACTORED, FLT_MAX, WS_BATCH, tile_coords

NUM_WARPS = 4


@triton.jit
def lopt_reduce_kernel(
    chunks,
    meta,
    ptrs,
    ws,
    G_DT: tl.constexpr,
    S_DT: tl.constexpr,
    BX: tl.constexpr,
    BY: tl.constexpr,
    IDX: tl.constexpr,
):
    """s = g² + 1e-30 (float32); ws[flag] += #non-finite s; ws[sumX][x] += Σ_y s; ws[sumY][y] += Σ_x s;
    ws[plane][batch] += Σ s; ws[rsum_old][k, batch] += Σ_{d1} r_old_k (tiles at the first d0 position)."""
    (t, bidx, xt, yt, n, nx, ny, nbatch, flags, off, mask, mx, my, ix, iy, lx, ly, ws_sx, ws_sy, ws_nx, ws_ny, ws_t) = (
        tile_coords(chunks, meta, BX, BY, IDX, 1, 0)
    )
    prow = ptrs + t.to(tl.int64) * 8  # this tensor's row of the pointer table
    g = tl.load(tl.load(prow + 1).to(tl.pointer_type(G_DT)) + off, mask=mask, other=0.0).to(tl.float32)
    s = tl.where(mask, g * g + EPS_GRAD_SQ, 0.0)
    nbad = tl.sum(tl.where(mask & ~(s <= FLT_MAX), 1.0, 0.0))
    wsT = ws + ws_t
    tl.atomic_add(wsT, nbad, mask=nbad > 0.0, sem="relaxed")
    if (flags & FLAG_FACTORED) != 0:
        sx = tl.sum(s, axis=1)
        sy = tl.sum(s, axis=0)
        tl.atomic_add(ws + ws_sx + ix, sx, mask=mx, sem="relaxed")
        tl.atomic_add(ws + ws_sy + iy, sy, mask=my, sem="relaxed")
        tl.atomic_add(wsT + WS_BATCH + bidx, tl.sum(sx), sem="relaxed")
        if (flags & FLAG_D0_IS_X) != 0:  # d0 = X: the row accumulator is accY, its d1 axis is Y
            if xt == 0:
                ay = tl.load(prow + 5).to(tl.pointer_type(S_DT))
                for k in tl.static_range(3):
                    r = tl.load(ay + k * ly + iy, mask=my, other=0.0).to(tl.float32)
                    tl.atomic_add(wsT + WS_BATCH + nbatch + k * nbatch + bidx, tl.sum(r), sem="relaxed")
        else:
            if yt == 0:
                ax = tl.load(prow + 4).to(tl.pointer_type(S_DT))
                for k in tl.static_range(3):
                    r = tl.load(ax + k * lx + ix, mask=mx, other=0.0).to(tl.float32)
                    tl.atomic_add(wsT + WS_BATCH + nbatch + k * nbatch + bidx, tl.sum(r), sem="relaxed")


def lopt_reduce(plan, ptrs: torch.Tensor, ws: torch.Tensor, g_dt, s_dt, block_x: int, block_y: int) -> None:
    """Launch pass A over ``plan.chunks_ab`` (``ws`` must be zeroed)."""
    grid = (plan.chunks_ab.shape[0],)
    lopt_reduce_kernel[grid](
        plan.chunks_ab, plan.meta, ptrs, ws, g_dt, s_dt, block_x, block_y, tl.int64 if plan.use_int64 else tl.int32,
        num_warps=NUM_WARPS,
    )  # fmt: skip
