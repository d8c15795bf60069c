"""Triton helpers shared by the three μLO passes (ALGORITHM.md §1–2): tile coordinates from the chunk and
meta tables of :mod:`mulo.kernels.lopt_plan` and the Adafactor factors of one decay. All math in float32
whatever the storage dtypes.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl
from mulo.kernels import lopt_plan

from mulo.lopt import spec

# Set before the first @triton.jit import: True runs every kernel on the CPU through Triton's interpreter.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
INTERPRETED = tl.constexpr(INTERPRET)  # the same, readable inside @triton.jit functions

# the algorithm's constants, from its one specification (mulo/lopt/spec.py)
EPS_GRAD_SQ = tl.constexpr(spec.EPS_GRAD_SQ)
EPS_SAFE_RSQRT = tl.constexpr(spec.EPS_SAFE_RSQRT)
EPS_RMS = tl.constexpr(spec.EPS_RMS)
EPS_ACC_FEATURE = tl.constexpr(spec.EPS_ACC_FEATURE)
EPS_NORMALIZE = tl.constexpr(spec.EPS_NORMALIZE)
FLT_MAX = tl.constexpr(3.4028234663852886e38)


def _constexprs(*names: str):
    return tuple(tl.constexpr(getattr(lopt_plan, n)) for n in names)


# the segment table's named columns and the workspace offsets (kernels/lopt_plan.py), as constexprs
NMETA, M_N, M_NX, M_NY, M_NBATCH, M_NB, M_NC = _constexprs("NMETA", "M_N", "M_NX", "M_NY", "M_NBATCH", "M_NB", "M_NC")
M_SA, M_SX, M_SB, M_SY, M_XA, M_XX, M_XB = _constexprs("M_SA", "M_SX", "M_SB", "M_SY", "M_XA", "M_XX", "M_XB")
M_YA, M_YB, M_YY, M_LX, M_LY, M_FLAGS = _constexprs("M_YA", "M_YB", "M_YY", "M_LX", "M_LY", "M_FLAGS")
M_WS_SX, M_WS_SY, M_WS_NX, M_WS_NY, M_WS_T = _constexprs("M_WS_SX", "M_WS_SY", "M_WS_NX", "M_WS_NY", "M_WS_T")
M_WIDX, M_WNX, M_WNY, M_WN, M_C0 = _constexprs("M_WIDX", "M_WNX", "M_WNY", "M_WN", "M_C0")
R_PLANE, R_NBAD, R_RSUM, R_SCALARS, R_SUMSQ = _constexprs("R_PLANE", "R_NBAD", "R_RSUM", "R_SCALARS", "R_SUMSQ")
WS_FLAG, WS_T, WS_SUMSQ, WS_BATCH = _constexprs("WS_FLAG", "WS_T", "WS_SUMSQ", "WS_BATCH")
FLAG_FACTORED, FLAG_D0_IS_X, FLAG_ROW_MEAN_GIVEN = _constexprs("FLAG_FACTORED", "FLAG_D0_IS_X", "FLAG_ROW_MEAN_GIVEN")


@triton.jit
def batch_coords(row, bidx, IDX: tl.constexpr):
    """A tensor's sizes (n, nX, nY, n_batch) from its meta ``row`` and where batch ``bidx`` starts: the element
    offset of its (x, y) = (0, 0) and the accX / accY indices of x = 0 / y = 0."""
    n = tl.load(row + M_N).to(IDX)
    nx = tl.load(row + M_NX).to(IDX)
    ny = tl.load(row + M_NY).to(IDX)
    nbatch = tl.load(row + M_NBATCH).to(IDX)
    nb = tl.load(row + M_NB).to(IDX)
    nc = tl.load(row + M_NC).to(IDX)
    c_ = bidx % nc
    ab = bidx // nc
    b_ = ab % nb
    a_ = ab // nb
    base = a_ * tl.load(row + M_SA).to(IDX) + b_ * tl.load(row + M_SB).to(IDX) + c_
    ix0 = a_ * tl.load(row + M_XA).to(IDX) + b_ * tl.load(row + M_XB).to(IDX) + c_
    iy0 = a_ * tl.load(row + M_YA).to(IDX) + b_ * tl.load(row + M_YB).to(IDX) + c_
    return n, nx, ny, nbatch, base, ix0, iy0


@triton.jit
def tile_coords(chunks, meta, BX: tl.constexpr, BY: tl.constexpr, IDX: tl.constexpr, XSUB: tl.constexpr, sub):
    """Where this program's tile lies: element offsets and mask ([BX, BY]), accX/accY indices ([BX]/[BY]),
    and the tensor's meta row (see lopt_plan's module docstring). A chunk spans XSUB tiles along X; ``sub``
    picks one of them (XSUB = 1, sub = 0: the chunk is the tile)."""
    pid = tl.program_id(0)
    t = tl.load(chunks + pid * 4)
    bidx = tl.load(chunks + pid * 4 + 1)
    xt = tl.load(chunks + pid * 4 + 2) * XSUB + sub
    yt = tl.load(chunks + pid * 4 + 3)
    row = meta + t.to(tl.int64) * NMETA
    bidx = bidx.to(IDX)
    n, nx, ny, nbatch, base, ix0, iy0 = batch_coords(row, bidx, IDX)
    xs = xt.to(IDX) * BX + tl.arange(0, BX).to(IDX)
    ys = yt.to(IDX) * BY + tl.arange(0, BY).to(IDX)
    off = base + xs[:, None] * tl.load(row + M_SX).to(IDX) + ys[None, :] * tl.load(row + M_SY).to(IDX)
    mx = xs < nx
    my = ys < ny
    mask = mx[:, None] & my[None, :] & (off < n)
    ix = ix0 + xs * tl.load(row + M_XX).to(IDX)
    iy = iy0 + ys * tl.load(row + M_YY).to(IDX)
    lx = tl.load(row + M_LX).to(IDX)
    ly = tl.load(row + M_LY).to(IDX)
    flags = tl.load(row + M_FLAGS).to(tl.int32)
    ws_sx = tl.load(row + M_WS_SX).to(IDX)
    ws_sy = tl.load(row + M_WS_SY).to(IDX)
    ws_nx = tl.load(row + M_WS_NX).to(IDX)
    ws_ny = tl.load(row + M_WS_NY).to(IDX)
    ws_t = tl.load(row + M_WS_T).to(IDX)
    # the tile's table row and coordinates, in this order (kernels unpack them positionally)
    return (t, bidx, xt, yt, n, nx, ny, nbatch, flags, off, mask, mx, my, ix, iy, lx, ly,
            ws_sx, ws_sy, ws_nx, ws_ny, ws_t)  # fmt: skip


@triton.jit
def safe_rsqrt(x):
    return tl.rsqrt(tl.maximum(x, EPS_SAFE_RSQRT))


@triton.jit
def row_mean_scales(wsT, bidx, nbatch, k: tl.constexpr, bf, wnx, wny, d0x, given):
    """(sx, sy): what decay k's NEW accX and accY vectors are multiplied by before safe_rsqrt to give the row
    factor safe_rsqrt(r/(mean r + 1e-9)) and the column factor safe_rsqrt(c): 1/(mean r + 1e-9) on the row
    accumulator's axis (accY when d0 is the X axis, else accX), 1 on the other. The mean of the new row
    accumulator over its d1 axis (for this batch) comes from the sums pass A left: β·Σ r_old/n_d1 +
    (1−β)·Σ s/(n_d0·n_d1) — or, when ``given`` (a shard), Σ r_new/n_d1. ``wnx``, ``wny``: the whole
    tensor's sizes along X and Y. Once per program."""
    nd0 = tl.where(d0x, wnx, wny).to(tl.float32)
    nd1 = tl.where(d0x, wny, wnx).to(tl.float32)
    plane = tl.load(wsT + WS_BATCH + bidx)
    r_sum = tl.load(wsT + WS_BATCH + nbatch + k * nbatch + bidx)
    rm = tl.where(given, r_sum / nd1, bf * r_sum / nd1 + (1.0 - bf) * plane / (nd0 * nd1))
    inv = 1.0 / (rm + EPS_SAFE_RSQRT)
    return tl.where(d0x, 1.0, inv), tl.where(d0x, inv, 1.0)


@triton.jit
def _column(row, c, IDX: tl.constexpr):
    return tl.load(row + c).to(IDX)


@triton.jit
def chunk_coords(chunks, meta, ws, BY: tl.constexpr, IDX: tl.constexpr):
    """What a program of passes B and C needs once: its chunk's table entries (tensor t, batch, chunk X index
    xc, Y tile yt), the tensor's meta row and sizes, flags, workspace block and whole sizes, the Y tile's
    element offsets (``offy``, with the batch's base), mask and accY indices, the X strides of elements and
    of accX, and the new Adafactor vectors' workspace offsets and lengths."""
    pid = tl.program_id(0)
    t = tl.load(chunks + pid * 4)
    bidx = tl.load(chunks + pid * 4 + 1).to(IDX)
    xc = tl.load(chunks + pid * 4 + 2)
    yt = tl.load(chunks + pid * 4 + 3)
    mrow = meta + t.to(tl.int64) * NMETA  # this tensor's row of the segment table
    n, nx, ny, nbatch, base, ix0, iy0 = batch_coords(mrow, bidx, IDX)
    ys = yt.to(IDX) * BY + tl.arange(0, BY).to(IDX)
    offy = base + ys * tl.load(mrow + M_SY).to(IDX)
    iy = iy0 + ys * tl.load(mrow + M_YY).to(IDX)
    flags = tl.load(mrow + M_FLAGS).to(tl.int32)
    wsT = ws + tl.load(mrow + M_WS_T).to(IDX)
    wnx = tl.load(mrow + M_WNX)  # the whole tensor's sizes (this may be a shard of it)
    wny = tl.load(mrow + M_WNY)
    sx_stride, xx_stride = _column(mrow, M_SX, IDX), _column(mrow, M_XX, IDX)
    # the new Adafactor vectors (pass B writes them, pass C reads them): accX (LX per decay), accY (LY per decay)
    ws_nx, lx = _column(mrow, M_WS_NX, IDX), _column(mrow, M_LX, IDX)
    ws_ny, ly = _column(mrow, M_WS_NY, IDX), _column(mrow, M_LY, IDX)
    return (t, bidx, xc, yt, mrow, n, nx, ny, nbatch, ix0, flags, wsT, wnx, wny, ys, ys < ny, offy, iy,
            sx_stride, xx_stride, ws_nx, lx, ws_ny, ly)  # fmt: skip


@triton.jit
def load_decays(decays):
    """β_m (3), β_v, β_f (3), 1 − β_v."""
    return (tl.load(decays + 0), tl.load(decays + 1), tl.load(decays + 2), tl.load(decays + 3),
            tl.load(decays + 4), tl.load(decays + 5), tl.load(decays + 6), tl.load(decays + 7))  # fmt: skip


@triton.jit
def tensor_pointers(ptrs, t, P_DT: tl.constexpr, G_DT: tl.constexpr, S_DT: tl.constexpr):
    """p, g, m, v, accX (or the full accumulator), accY of tensor t, typed."""
    prow = ptrs + t.to(tl.int64) * 8  # this tensor's row of the pointer table
    return (tl.load(prow + 0).to(tl.pointer_type(P_DT)), tl.load(prow + 1).to(tl.pointer_type(G_DT)),
            tl.load(prow + 2).to(tl.pointer_type(S_DT)), tl.load(prow + 3).to(tl.pointer_type(S_DT)),
            tl.load(prow + 4).to(tl.pointer_type(S_DT)), tl.load(prow + 5).to(tl.pointer_type(S_DT)), prow)  # fmt: skip


@triton.jit
def tile_elements(xt, BX: tl.constexpr, IDX: tl.constexpr, n, nx, my, ix0, offy, sx_stride, xx_stride, gp, pp, vp,
                  bv, cv):  # fmt: skip
    """Tile xt (BX rows) of a chunk: accX indices and masks, element offsets, g, p, the new v, rsqrt(v+1e-6)
    and s = g² + 1e-30 (float32)."""
    xs = xt.to(IDX) * BX + tl.arange(0, BX).to(IDX)
    mx = xs < nx
    off = offy[None, :] + xs[:, None] * sx_stride
    mask = mx[:, None] & my[None, :] & (off < n)
    g = tl.load(gp + off, mask=mask, other=0.0).to(tl.float32)
    p = tl.load(pp + off, mask=mask, other=0.0).to(tl.float32)
    v = bv * tl.load(vp + off, mask=mask, other=0.0).to(tl.float32) + cv * g * g
    return ix0 + xs * xx_stride, mx, off, mask, g, p, v, tl.rsqrt(v + EPS_RMS), g * g + EPS_GRAD_SQ


@triton.jit
def chunk_record(records, meta, t, bidx, xt, yt, nx, ny, BX: tl.constexpr, BY: tl.constexpr, IDX: tl.constexpr):
    """Deterministic mode: the record of chunk (t, batch, x-tile, y-tile) of passes A/B, at its canonical index
    (lopt_plan's module docstring), whichever program runs it."""
    c0 = tl.load(meta + t.to(tl.int64) * NMETA + M_C0).to(IDX)
    nxt = (nx + BX - 1) // BX
    nyt = (ny + BY - 1) // BY
    index = c0 + (bidx.to(IDX) * nxt + xt.to(IDX)) * nyt + yt.to(IDX)
    return records + index * (BX + BY + R_SCALARS + R_SUMSQ)  # lopt_plan.record_width
