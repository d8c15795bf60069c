"""Pass B of the μLO step (ALGORITHM.md §2, §5): the 28 per-channel sums of squares that normalize the
features, for every tensor of a group in one launch.

Element-wise channels (g, p, m_k, v, m_k/√(v+1e-6), 1/√(v+1e-6), fac_g_k, fac_m_k) are summed per tile.
For factored tensors the row/column channels 13–24 depend only on the accumulator vectors: the tiles at
the first position along the reduced axis sum them once per vector entry, times the broadcast count
(O(rows + cols)), and write the new accumulators to the workspace for pass C. Rank < 2 tensors sum their
full accumulator's channels element-wise. Reads g, p, m (3), v (and u for rank < 2).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from mulo.kernels.lopt_common import (
    EPS_ACC_FEATURE,
    EPS_GRAD_SQ,
    EPS_RMS,
    EPS_SAFE_RSQRT,
    FLAG_D0_IS_X,
    FLAG_FACTORED,
    FLAG_ROW_MEAN_GIVEN,
    M_WNX,
    M_WNY,
    NMETA,
    factor_vectors,
    safe_rsqrt,
    tile_coords,
)

NUM_WARPS = 4


@triton.jit
def lopt_sumsq_kernel(
    chunks,
    meta,
    ptrs,
    ws,
    decays,
    P_DT: tl.constexpr,
    G_DT: tl.constexpr,
    S_DT: tl.constexpr,
    BX: tl.constexpr,
    BY: tl.constexpr,
    IDX: tl.constexpr,
):
    """ws[sumsq][j] += Σ_tile x_j² for the 28 channels x_j of ALGORITHM.md §2 at the NEW m, v and
    accumulators; ws[new X/Y] = the new Adafactor vectors; ws[t] = the step counter before the step."""
    (t, bidx, xt, yt, n, nx, ny, nbatch, flags, off, mask, mx, my, ix, iy, lx, ly, ws_sx, ws_sy, ws_nx, ws_ny, ws_t) = (
        tile_coords(chunks, meta, BX, BY, IDX, 1, 0)
    )
    prow = ptrs + t.to(tl.int64) * 8  # this tensor's row of the pointer table
    mrow = meta + t.to(tl.int64) * NMETA  # and of the segment table
    wnx = tl.load(mrow + M_WNX).to(tl.float32)  # the whole tensor's sizes (this may be a shard of it)
    wny = tl.load(mrow + M_WNY).to(tl.float32)
    wsT = ws + ws_t
    if (xt == 0) & (yt == 0) & (bidx == 0):
        tl.store(wsT + 1, tl.load(tl.load(prow + 6).to(tl.pointer_type(tl.float32))))
    g = tl.load(tl.load(prow + 1).to(tl.pointer_type(G_DT)) + off, mask=mask, other=0.0).to(tl.float32)
    p = tl.load(tl.load(prow + 0).to(tl.pointer_type(P_DT)) + off, mask=mask, other=0.0).to(tl.float32)
    mp = tl.load(prow + 2).to(tl.pointer_type(S_DT))
    bv = tl.load(decays + 3)
    v = (
        bv * tl.load(tl.load(prow + 3).to(tl.pointer_type(S_DT)) + off, mask=mask, other=0.0).to(tl.float32)
        + tl.load(decays + 7) * g * g
    )
    rv = tl.rsqrt(v + EPS_RMS)
    s = g * g + EPS_GRAD_SQ
    ch = tl.arange(0, 32)
    acc = tl.zeros([32], dtype=tl.float32)
    acc = acc + tl.where(ch == 0, tl.sum(tl.where(mask, (g) * (g), 0.0)), 0.0)
    acc = acc + tl.where(ch == 1, tl.sum(tl.where(mask, (p) * (p), 0.0)), 0.0)
    acc = acc + tl.where(ch == 5, tl.sum(tl.where(mask, (v) * (v), 0.0)), 0.0)
    acc = acc + tl.where(ch == 9, tl.sum(tl.where(mask, (rv) * (rv), 0.0)), 0.0)
    factored = (flags & FLAG_FACTORED) != 0
    d0x = (flags & FLAG_D0_IS_X) != 0
    given = (flags & FLAG_ROW_MEAN_GIVEN) != 0
    ax_p = tl.load(prow + 4).to(tl.pointer_type(S_DT))
    ay_p = tl.load(prow + 5).to(tl.pointer_type(S_DT))
    for k in tl.static_range(3):
        bm = tl.load(decays + k)
        bf = tl.load(decays + 4 + k)
        m = bm * tl.load(mp + k * n + off, mask=mask, other=0.0).to(tl.float32) + (1.0 - bm) * g
        acc = acc + tl.where(ch == 2 + k, tl.sum(tl.where(mask, (m) * (m), 0.0)), 0.0)
        acc = acc + tl.where(ch == 6 + k, tl.sum(tl.where(mask, (m * rv) * (m * rv), 0.0)), 0.0)
        if factored:
            ax = bf * tl.load(ax_p + k * lx + ix, mask=mx, other=0.0).to(tl.float32)
            ax += tl.load(ws + ws_sx + ix, mask=mx, other=0.0) * ((1.0 - bf) / wny)
            ay = bf * tl.load(ay_p + k * ly + iy, mask=my, other=0.0).to(tl.float32)
            ay += tl.load(ws + ws_sy + iy, mask=my, other=0.0) * ((1.0 - bf) / wnx)
            fx, fy = factor_vectors(ax, ay, wsT, bidx, nbatch, k, bf, wnx, wny, d0x, given)
            fac = fx[:, None] * fy[None, :]
            acc = acc + tl.where(ch == 10 + k, tl.sum(tl.where(mask, (g * fac) * (g * fac), 0.0)), 0.0)
            acc = acc + tl.where(ch == 25 + k, tl.sum(tl.where(mask, (m * fac) * (m * fac), 0.0)), 0.0)
            if yt == 0:  # accX (reduces Y): this tile owns entries xs; each is broadcast ny times
                tl.store(ws + ws_nx + k * lx + ix, ax, mask=mx)
                cnt = ny.to(tl.float32)
                acc = acc + tl.where(ch == tl.where(d0x, 16, 13) + k, cnt * tl.sum(tl.where(mx, ax * ax, 0.0)), 0.0)
                acc = acc + tl.where(
                    ch == tl.where(d0x, 22, 19) + k, cnt * tl.sum(tl.where(mx, 1.0 / (ax + EPS_ACC_FEATURE), 0.0)), 0.0
                )
            if xt == 0:  # accY (reduces X): entries ys, each broadcast nx times
                tl.store(ws + ws_ny + k * ly + iy, ay, mask=my)
                cnt = nx.to(tl.float32)
                acc = acc + tl.where(ch == tl.where(d0x, 13, 16) + k, cnt * tl.sum(tl.where(my, ay * ay, 0.0)), 0.0)
                acc = acc + tl.where(
                    ch == tl.where(d0x, 19, 22) + k, cnt * tl.sum(tl.where(my, 1.0 / (ay + EPS_ACC_FEATURE), 0.0)), 0.0
                )
        else:
            u = bf * tl.load(ax_p + k * n + off, mask=mask, other=0.0).to(tl.float32) + (1.0 - bf) * s
            ru = tl.rsqrt(u + EPS_ACC_FEATURE)
            acc = acc + tl.where(
                ch == 10 + k,
                tl.sum(
                    tl.where(mask, (g * safe_rsqrt(u + EPS_SAFE_RSQRT)) * (g * safe_rsqrt(u + EPS_SAFE_RSQRT)), 0.0)
                ),
                0.0,
            )
            # row = col = u for rank < 2: one sum each for channels 13/16 and 19/22
            acc = acc + tl.where((ch == 13 + k) | (ch == 16 + k), tl.sum(tl.where(mask, (u) * (u), 0.0)), 0.0)
            acc = acc + tl.where((ch == 19 + k) | (ch == 22 + k), tl.sum(tl.where(mask, (ru) * (ru), 0.0)), 0.0)
            acc = acc + tl.where(
                ch == 25 + k,
                tl.sum(tl.where(mask, (m * tl.rsqrt(u + EPS_RMS)) * (m * tl.rsqrt(u + EPS_RMS)), 0.0)),
                0.0,
            )
    tl.atomic_add(wsT + 2 + ch, acc, mask=ch < 28, sem="relaxed")


def lopt_sumsq(
    plan, ptrs: torch.Tensor, ws: torch.Tensor, decays: torch.Tensor, p_dt, g_dt, s_dt, block_x: int, block_y: int
) -> None:
    """Launch pass B over ``plan.chunks_ab`` (after pass A)."""
    grid = (plan.chunks_ab.shape[0],)
    lopt_sumsq_kernel[grid](
        plan.chunks_ab, plan.meta, ptrs, ws, decays, p_dt, g_dt, s_dt, block_x, block_y,
        tl.int64 if plan.use_int64 else tl.int32, num_warps=NUM_WARPS,
    )  # fmt: skip
