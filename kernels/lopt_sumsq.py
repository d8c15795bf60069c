"""Pass B of the μLO step (ALGORITHM.md §2, §5): the 28 per-channel sums of squares that normalize the
features, for every tensor of a group in one launch.

A program is one chunk of ``BX × BY`` elements, walked in tiles of ``SUBTILE_X`` rows. Element-wise
channels (g, p, m_k, v, m_k/√(v+1e-6), 1/√(v+1e-6), fac_g_k, fac_m_k; for rank < 2 tensors also u_k and
1/√(u_k+1e-8), their row = col channels) are accumulated per element across the tiles and reduced once per
program. For factored tensors the row/column channels 13–24 depend only on the accumulator vectors: the
chunks at the first position along the reduced axis sum them once per vector entry, times the broadcast
count (O(rows + cols)), and write the new accumulators to the workspace for pass C. Everything that depends
only on the tensor, the batch or Y (table rows, pointers, decays, row means, the new column vectors and
their factors) is computed once per program. Reads g, p, m (3), v (and u for rank < 2).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from mulo.kernels.lopt_common import (
    EPS_ACC_FEATURE,
    EPS_RMS,
    EPS_SAFE_RSQRT,
    FLAG_D0_IS_X,
    FLAG_FACTORED,
    FLAG_ROW_MEAN_GIVEN,
    M_C0,
    M_NBATCH,
    M_NX,
    M_NY,
    M_WS_SX,
    M_WS_SY,
    M_WS_T,
    NMETA,
    R_SCALARS,
    R_SUMSQ,
    WS_SUMSQ,
    chunk_coords,
    chunk_record,
    load_decays,
    row_mean_scales,
    safe_rsqrt,
    tensor_pointers,
    tile_elements,
)

NUM_WARPS = 4
SUBTILE_X = 4  # rows per tile of a chunk's walk: 2 elements per thread, so the 22 running sums stay in registers


@triton.jit
def _decay_sums(
    k: tl.constexpr, g, s, rv, off, mask, mx, ix, n, lx, factored, mp, ax_p, ws, ws_sx, bm, bf, cx, sx, fy, pm, pmr,
    pgf, pmf, pu, pru,
):  # fmt: skip
    """Decay k's running sums after one tile: m_k², (m_k·rsqrt(v+1e-6))², fac_g², fac_m² per element (and u_k²,
    rsqrt(u_k+1e-8)² for rank < 2)."""
    m = bm * tl.load(mp + k * n + off, mask=mask, other=0.0).to(tl.float32) + (1.0 - bm) * g
    mr = m * rv
    pm += m * m
    pmr += mr * mr
    if factored:
        ax = bf * tl.load(ax_p + k * lx + ix, mask=mx, other=0.0).to(tl.float32)
        ax += tl.load(ws + ws_sx + ix, mask=mx, other=0.0) * cx
        fac = tl.rsqrt(tl.maximum(ax * sx, EPS_SAFE_RSQRT))[:, None] * fy[None, :]
        gf = g * fac
        mf = m * fac
        pgf += gf * gf
        pmf += mf * mf
    else:
        u = bf * tl.load(ax_p + k * n + off, mask=mask, other=0.0).to(tl.float32) + (1.0 - bf) * s
        ru = tl.rsqrt(u + EPS_ACC_FEATURE)
        gf = g * safe_rsqrt(u + EPS_SAFE_RSQRT)
        mf = m * tl.rsqrt(u + EPS_RMS)
        pgf += gf * gf
        pmf += mf * mf
        pu += tl.where(mask, u * u, 0.0)
        pru += tl.where(mask, ru * ru, 0.0)
    return pm, pmr, pgf, pmf, pu, pru


@triton.jit
def _x_sums(k: tl.constexpr, bf, cx, ax_p, lx, ws, ws_sx, ws_nx, ixs, mxs, cnt):
    """Decay k's new accX entries of the chunk's rows (stored to the workspace for pass C) and their channel
    sums Σ accX², Σ 1/(accX+1e-8), each entry broadcast ``cnt`` (= nY) times."""
    ax = bf * tl.load(ax_p + k * lx + ixs, mask=mxs, other=0.0).to(tl.float32)
    ax += tl.load(ws + ws_sx + ixs, mask=mxs, other=0.0) * cx
    tl.store(ws + ws_nx + k * lx + ixs, ax, mask=mxs)
    return cnt * tl.sum(tl.where(mxs, ax * ax, 0.0)), cnt * tl.sum(tl.where(mxs, 1.0 / (ax + EPS_ACC_FEATURE), 0.0))


@triton.jit
def _y_sums(k: tl.constexpr, bf, ay_p, ly, iy, myf, ws, ws_sy, cy, sy):
    """Decay k's new accY entries of the program's Y tile ([BY]; 0 for rank < 2 tensors) and their factors."""
    ay = bf * tl.load(ay_p + k * ly + iy, mask=myf, other=0.0).to(tl.float32)
    ay += tl.load(ws + ws_sy + iy, mask=myf, other=0.0) * cy
    return ay, tl.rsqrt(tl.maximum(ay * sy, EPS_SAFE_RSQRT))


@triton.jit
def _zeros6(SX: tl.constexpr, BY: tl.constexpr):
    z = tl.zeros([SX, BY], dtype=tl.float32)
    return z, z, z, z, z, z


@triton.jit
def _channel(acc, ch, j, total):
    return acc + tl.where(ch == j, total, 0.0)


@triton.jit
def _decay_channels(acc, ch, k: tl.constexpr, pm, pmr, pgf, pmf):
    """Decay k's element-wise channels: m_k (2+k), m_k·rsqrt(v+1e-6) (6+k), fac_g (10+k), fac_m (25+k)."""
    acc = _channel(acc, ch, 2 + k, tl.sum(pm))
    acc = _channel(acc, ch, 6 + k, tl.sum(pmr))
    acc = _channel(acc, ch, 10 + k, tl.sum(pgf))
    return _channel(acc, ch, 25 + k, tl.sum(pmf))


@triton.jit
def _rowcol_channels(acc, ch, k: tl.constexpr, xr, yr, xsq, xinv, ysq, yinv, pu, pru):
    """Decay k's row/column channels (13–24): the X-side vector sums into channel xr + k (and its rsqrt
    feature into xr + 6 + k), the Y-side into yr + k; rank < 2 tensors (row = col = u) add their element-wise
    sums of u_k² and rsqrt(u_k + 1e-8)² to both."""
    su = tl.sum(pu)
    sr = tl.sum(pru)
    acc = _channel(acc, ch, xr + k, xsq + su)
    acc = _channel(acc, ch, yr + k, ysq + su)
    acc = _channel(acc, ch, xr + 6 + k, xinv + sr)
    return _channel(acc, ch, yr + 6 + k, yinv + sr)


@triton.jit
def _chunk_sums(
    FACT, xc, yt, d0x, n, nx, ny, my, ix0, offy, sx_stride, xx_stride, gp, pp, vp, mp, ax_p, ws, ws_sx, ws_nx, lx, dst,
    bv, cv, bm0, bm1, bm2, bf0, bf1, bf2, cx0, cx1, cx2, sx0, sx1, sx2, fy0, fy1, fy2, zs,
    ysq0, ysq1, ysq2, yinv0, yinv1, yinv2, BX: tl.constexpr, BY: tl.constexpr, SX: tl.constexpr, IDX: tl.constexpr,
    DET: tl.constexpr,
):  # fmt: skip
    """The walk over a chunk's tiles with the running sums per element, then one reduction per channel and one
    atomic add per program to the tensor's sums at ``dst`` (``DET``: a store to the chunk's record there).
    ``FACT`` (the tensor is factored) is a literal: the kernel runs one of two copies, so no tile branches on
    it."""
    pg = tl.zeros([SX, BY], dtype=tl.float32)
    pp_ = tl.zeros([SX, BY], dtype=tl.float32)
    pv = tl.zeros([SX, BY], dtype=tl.float32)
    prv = tl.zeros([SX, BY], dtype=tl.float32)
    pm0, pmr0, pgf0, pmf0, pu0, pru0 = _zeros6(SX, BY)
    pm1, pmr1, pgf1, pmf1, pu1, pru1 = _zeros6(SX, BY)
    pm2, pmr2, pgf2, pmf2, pu2, pru2 = _zeros6(SX, BY)
    for sub in range(BX // SX):  # the chunk's tiles along X, the sums running per element
        ix, mx, off, mask, g, p, v, rv, s = tile_elements(
            xc * (BX // SX) + sub, SX, IDX, n, nx, my, ix0, offy, sx_stride, xx_stride, gp, pp, vp, bv, cv
        )
        pg += g * g
        pp_ += p * p
        pv += v * v
        prv += tl.where(mask, rv * rv, 0.0)
        pm0, pmr0, pgf0, pmf0, pu0, pru0 = _decay_sums(
            0, g, s, rv, off, mask, mx, ix, n, lx, FACT, mp, ax_p, ws, ws_sx, bm0, bf0, cx0, sx0, fy0, pm0,
            pmr0, pgf0, pmf0, pu0, pru0,
        )  # fmt: skip
        pm1, pmr1, pgf1, pmf1, pu1, pru1 = _decay_sums(
            1, g, s, rv, off, mask, mx, ix, n, lx, FACT, mp, ax_p, ws, ws_sx, bm1, bf1, cx1, sx1, fy1, pm1,
            pmr1, pgf1, pmf1, pu1, pru1,
        )  # fmt: skip
        pm2, pmr2, pgf2, pmf2, pu2, pru2 = _decay_sums(
            2, g, s, rv, off, mask, mx, ix, n, lx, FACT, mp, ax_p, ws, ws_sx, bm2, bf2, cx2, sx2, fy2, pm2,
            pmr2, pgf2, pmf2, pu2, pru2,
        )  # fmt: skip

    xsq0 = zs
    xsq1 = zs
    xsq2 = zs
    xinv0 = zs
    xinv1 = zs
    xinv2 = zs
    if FACT:
        if yt == 0:  # accX (reduces Y): this chunk owns the entries of its BX rows, each broadcast nY times
            xs = xc * BX + tl.arange(0, BX).to(IDX)
            mxs = xs < nx
            ixs = ix0 + xs * xx_stride
            cnt = ny.to(tl.float32)
            xsq0, xinv0 = _x_sums(0, bf0, cx0, ax_p, lx, ws, ws_sx, ws_nx, ixs, mxs, cnt)
            xsq1, xinv1 = _x_sums(1, bf1, cx1, ax_p, lx, ws, ws_sx, ws_nx, ixs, mxs, cnt)
            xsq2, xinv2 = _x_sums(2, bf2, cx2, ax_p, lx, ws, ws_sx, ws_nx, ixs, mxs, cnt)

    # ---- one reduction per channel, one atomic add per program ----
    ch = tl.arange(0, 32)
    acc = tl.zeros([32], dtype=tl.float32)
    acc = _channel(acc, ch, 0, tl.sum(pg))
    acc = _channel(acc, ch, 1, tl.sum(pp_))
    acc = _channel(acc, ch, 5, tl.sum(pv))
    acc = _channel(acc, ch, 9, tl.sum(prv))
    # the X-side sums feed the row channels unless d0 is X; rank < 2: row = col = u
    xr = tl.where(d0x, 16, 13)
    yr = tl.where(d0x, 13, 16)
    acc = _decay_channels(acc, ch, 0, pm0, pmr0, pgf0, pmf0)
    acc = _decay_channels(acc, ch, 1, pm1, pmr1, pgf1, pmf1)
    acc = _decay_channels(acc, ch, 2, pm2, pmr2, pgf2, pmf2)
    acc = _rowcol_channels(acc, ch, 0, xr, yr, xsq0, xinv0, ysq0, yinv0, pu0, pru0)
    acc = _rowcol_channels(acc, ch, 1, xr, yr, xsq1, xinv1, ysq1, yinv1, pu1, pru1)
    acc = _rowcol_channels(acc, ch, 2, xr, yr, xsq2, xinv2, ysq2, yinv2, pu2, pru2)
    if DET:
        tl.store(dst + ch, acc)
    else:
        tl.atomic_add(dst + ch, acc, mask=ch < 28, sem="relaxed")


@triton.jit
def lopt_sumsq_kernel(
    chunks,
    meta,
    ptrs,
    ws,
    decays,
    records,
    P_DT: tl.constexpr,
    G_DT: tl.constexpr,
    S_DT: tl.constexpr,
    BX: tl.constexpr,
    BY: tl.constexpr,
    SX: tl.constexpr,
    IDX: tl.constexpr,
    DET: tl.constexpr,
):
    """ws[sumsq][j] += Σ_chunk x_j² for the 28 channels x_j of ALGORITHM.md §2 at the NEW m, v and
    accumulators; ws[new X/Y] = the new Adafactor vectors; ws[t] = the step counter before the step. The
    chunk's BX rows are walked in tiles of SX. ``DET``: the chunk's sums go to its record (``records``)."""
    (t, bidx, xc, yt, mrow, n, nx, ny, nbatch, ix0, flags, wsT, wnx, wny, ys, my, offy, iy, sx_stride, xx_stride,
     ws_nx, lx, ws_ny, ly) = chunk_coords(chunks, meta, ws, BY, IDX)  # fmt: skip
    factored = (flags & FLAG_FACTORED) != 0
    d0x = (flags & FLAG_D0_IS_X) != 0
    given = (flags & FLAG_ROW_MEAN_GIVEN) != 0
    myf = ys < tl.where(factored, ny, 0)
    ws_sx = tl.load(mrow + M_WS_SX).to(IDX)  # pass A's sums of s
    ws_sy = tl.load(mrow + M_WS_SY).to(IDX)
    pp, gp, mp, vp, ax_p, ay_p, prow = tensor_pointers(ptrs, t, P_DT, G_DT, S_DT)
    if (xc == 0) & (yt == 0) & (bidx == 0):
        tl.store(wsT + 1, tl.load(tl.load(prow + 6).to(tl.pointer_type(tl.float32))))
    bm0, bm1, bm2, bv, bf0, bf1, bf2, cv = load_decays(decays)
    # the new accumulators: β·old + (1−β)·(sum of s)/n over the reduced axis (the whole tensor's)
    cx0 = (1.0 - bf0) / wny.to(tl.float32)
    cx1 = (1.0 - bf1) / wny.to(tl.float32)
    cx2 = (1.0 - bf2) / wny.to(tl.float32)
    sx0, sy0 = row_mean_scales(wsT, bidx, nbatch, 0, bf0, wnx, wny, d0x, given)
    sx1, sy1 = row_mean_scales(wsT, bidx, nbatch, 1, bf1, wnx, wny, d0x, given)
    sx2, sy2 = row_mean_scales(wsT, bidx, nbatch, 2, bf2, wnx, wny, d0x, given)
    ay0, fy0 = _y_sums(0, bf0, ay_p, ly, iy, myf, ws, ws_sy, (1.0 - bf0) / wnx.to(tl.float32), sy0)
    ay1, fy1 = _y_sums(1, bf1, ay_p, ly, iy, myf, ws, ws_sy, (1.0 - bf1) / wnx.to(tl.float32), sy1)
    ay2, fy2 = _y_sums(2, bf2, ay_p, ly, iy, myf, ws, ws_sy, (1.0 - bf2) / wnx.to(tl.float32), sy2)
    zs = tl.sum(tl.zeros([BY], dtype=tl.float32))  # a float32 scalar 0 (updated under a runtime condition)
    ysq0 = zs
    ysq1 = zs
    ysq2 = zs
    yinv0 = zs
    yinv1 = zs
    yinv2 = zs
    if factored & (xc == 0):  # accY (reduces X): this chunk owns entries ys, each broadcast nx times
        cnt = nx.to(tl.float32)
        tl.store(ws + ws_ny + iy, ay0, mask=my)
        tl.store(ws + ws_ny + ly + iy, ay1, mask=my)
        tl.store(ws + ws_ny + 2 * ly + iy, ay2, mask=my)
        ysq0 = cnt * tl.sum(tl.where(my, ay0 * ay0, 0.0))
        ysq1 = cnt * tl.sum(tl.where(my, ay1 * ay1, 0.0))
        ysq2 = cnt * tl.sum(tl.where(my, ay2 * ay2, 0.0))
        yinv0 = cnt * tl.sum(tl.where(my, 1.0 / (ay0 + EPS_ACC_FEATURE), 0.0))
        yinv1 = cnt * tl.sum(tl.where(my, 1.0 / (ay1 + EPS_ACC_FEATURE), 0.0))
        yinv2 = cnt * tl.sum(tl.where(my, 1.0 / (ay2 + EPS_ACC_FEATURE), 0.0))

    if DET:
        dst = chunk_record(records, meta, t, bidx, xc, yt, nx, ny, BX, BY, IDX) + BX + BY + R_SCALARS
    else:
        dst = wsT + WS_SUMSQ
    # the walk in a copy per tensor kind (no branch on it per tile)
    if factored:
        _chunk_sums(
            True, xc, yt, d0x, n, nx, ny, my, ix0, offy, sx_stride, xx_stride, gp, pp, vp, mp, ax_p, ws, ws_sx, ws_nx,
            lx, dst, bv, cv, bm0, bm1, bm2, bf0, bf1, bf2, cx0, cx1, cx2, sx0, sx1, sx2, fy0, fy1, fy2, zs,
            ysq0, ysq1, ysq2, yinv0, yinv1, yinv2, BX, BY, SX, IDX, DET,
        )  # fmt: skip
    else:
        _chunk_sums(
            False, xc, yt, d0x, n, nx, ny, my, ix0, offy, sx_stride, xx_stride, gp, pp, vp, mp, ax_p, ws, ws_sx, ws_nx,
            lx, dst, bv, cv, bm0, bm1, bm2, bf0, bf1, bf2, cx0, cx1, cx2, sx0, sx1, sx2, fy0, fy1, fy2, zs,
            ysq0, ysq1, ysq2, yinv0, yinv1, yinv2, BX, BY, SX, IDX, DET,
        )  # fmt: skip


@triton.jit
def lopt_sumsq_finish_kernel(meta, ws, records, BX: tl.constexpr, BY: tl.constexpr, IDX: tl.constexpr):
    """Deterministic mode, after pass B: one program per tensor adds its chunks' 32 sums up in record order and
    stores the 28 channels' sums of squares into the workspace."""
    t = tl.program_id(0)
    row = meta + t.to(tl.int64) * NMETA
    nx = tl.load(row + M_NX).to(IDX)
    ny = tl.load(row + M_NY).to(IDX)
    nbatch = tl.load(row + M_NBATCH).to(IDX)
    c0 = tl.load(row + M_C0).to(IDX)
    wsT = ws + tl.load(row + M_WS_T).to(IDX)
    RW: tl.constexpr = BX + BY + R_SCALARS + R_SUMSQ  # lopt_plan.record_width
    ch = tl.arange(0, 32)
    acc = tl.zeros([32], dtype=tl.float32)
    for i in range(nbatch * ((nx + BX - 1) // BX) * ((ny + BY - 1) // BY)):
        acc += tl.load(records + (c0 + i) * RW + BX + BY + R_SCALARS + ch)
    tl.store(wsT + WS_SUMSQ + ch, acc, mask=ch < 28)


def lopt_sumsq(
    plan, ptrs: torch.Tensor, ws: torch.Tensor, decays: torch.Tensor, p_dt, g_dt, s_dt, block_x: int, block_y: int,
    records=None,
) -> None:  # fmt: skip
    """Launch pass B over ``plan.chunks_ab`` (after pass A); with ``records`` (deterministic mode) no atomic, then
    the finishing launch."""
    idx = tl.int64 if plan.use_int64 else tl.int32
    det = records is not None
    grid = (plan.chunks_ab.shape[0],)
    lopt_sumsq_kernel[grid](
        plan.chunks_ab, plan.meta, ptrs, ws, decays, records if det else ws, p_dt, g_dt, s_dt, block_x, block_y,
        min(SUBTILE_X, block_x), idx, det, num_warps=NUM_WARPS,
    )  # fmt: skip
    if det:
        lopt_sumsq_finish_kernel[(plan.meta.shape[0],)](plan.meta, ws, records, block_x, block_y, idx, num_warps=1)
