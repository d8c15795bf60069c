"""Celo2's fused passes in Triton (docs/CELO2.md; the pass plan of :mod:`mulo.celo2.reference`), for every
rank ≥ 2 tensor of a group in one launch per pass, on μLO's segment/chunk tables (:mod:`mulo.kernels.lopt_plan`:
a tensor is ``n_batch`` planes of ``nX × nY`` over its two factored axes, a chunk one tile of a plane).

- **A** :func:`celo2_reduce_kernel`: s = clamp(g, ±1000)² + 1e-30 summed into the Adafactor row/column sums, the
  per-plane sums of s and of the old row accumulators (μLO's pass A, with Celo2's gradient clamp), and the count
  of non-finite raw gradients per tensor.
- **B** :func:`celo2_sumsq_kernel`: the new m_k, v (committed where the tensor's gradient is finite), the new
  accumulator vectors (to the workspace), and the 30 features' sums of squares per slice (the last two axes).
- **C** :func:`celo2_direction_kernel`: the features, each scaled by rsqrt(1e-9 + mean over its slice of its
  square), the 30→8→8→2 network on FP32 FMAs (≈ 330 multiply-adds per element: 55 FLOP per element-byte of
  what the pass reads is not what bounds it); then, by ``MODE``: store the direction (Newton–Schulz follows),
  sum d² per slice (Celo2-base), or recompute d and apply it (Celo2-base's last pass).
- **E** :func:`celo2_apply_kernel`: the orthogonalized step, RMS-normalized per slice, applied; the accumulators
  and counters committed.

Slices and planes: when a tensor's factored axes are its last two (every 2-d tensor), a plane IS a slice and
a program's sums go out as one atomic add per channel; otherwise (a conv kernel's 3 × 3 slices) each element
finds its slice (one integer division) and adds to it. The workspace is μLO's (``lopt_plan``) followed by each
tensor's per-slice sums: 32 channels per slice, then one Σd² per slice. All math in float32.
"""

from __future__ import annotations

import triton
import triton.language as tl
from mulo.kernels.lopt_common import (
    FLAG_D0_IS_X,
    FLT_MAX,
    M_N,
    M_WIDX,
    M_WNX,
    M_WNY,
    NMETA,
    WS_BATCH,
    WS_FLAG,
    row_mean_scales,
    safe_rsqrt,
    tile_coords,
)

from mulo.celo2 import spec

NUM_WARPS = 4

GRAD_CLAMP = tl.constexpr(spec.GRAD_CLAMP)
FEATURE_CLIP = tl.constexpr(spec.FEATURE_CLIP)
EPS_GRAD_SQ = tl.constexpr(spec.EPS_GRAD_SQ)
EPS_RSQRT = tl.constexpr(spec.EPS_RSQRT)
EPS_NORMALIZE = tl.constexpr(spec.EPS_NORMALIZE)
EXP_MULT = tl.constexpr(spec.EXP_MULT)
RMS_MULT = tl.constexpr(spec.RMS_MULT)
BM0, BM1, BM2 = (tl.constexpr(b) for b in spec.MOMENTUM_DECAYS)
BF0, BF1, BF2 = (tl.constexpr(b) for b in spec.ADAFACTOR_DECAYS)
BV = tl.constexpr(spec.RMS_DECAY)

# the network's flat float32 layout per meta-weight set (mulo/celo2/triton.py builds it): W1 (8, 30) as (out, in),
# b1 (8), W2 (8, 8), b2 (8), W3 (2, 8) (direction, magnitude), b3 (2)
NF = tl.constexpr(spec.NUM_FEATURES)
NH = tl.constexpr(spec.HIDDEN_SIZE)
OFF_B1 = tl.constexpr(spec.NUM_FEATURES * spec.HIDDEN_SIZE)
OFF_W2 = tl.constexpr(OFF_B1.value + spec.HIDDEN_SIZE)
OFF_B2 = tl.constexpr(OFF_W2.value + spec.HIDDEN_SIZE * spec.HIDDEN_SIZE)
OFF_W3 = tl.constexpr(OFF_B2.value + spec.HIDDEN_SIZE)
OFF_B3 = tl.constexpr(OFF_W3.value + 2 * spec.HIDDEN_SIZE)
NET_SIZE = OFF_B3.value + 2  # floats per meta-weight set (host side; the kernels' constexpr is NET)
NET = tl.constexpr(NET_SIZE)

# the Celo2 table (int64 per tensor, beside μLO's meta table): slice size |L|, the workspace offsets of the
# per-slice feature sums (32 per slice) and of Σd² (1 per slice), and whether planes are slices
C_L, C_WS_SL, C_WS_DSQ, C_ALIGNED = (tl.constexpr(i) for i in range(4))
NCMETA = tl.constexpr(4)
SLICE_STRIDE = 32  # host side; the kernels' constexpr is SLICE
SLICE = tl.constexpr(SLICE_STRIDE)

# pass C's modes
STORE_DIRECTION, SUM_DIRECTION_SQ, APPLY_DIRECTION = 0, 1, 2


@triton.jit
def celo2_reduce_kernel(chunks, meta, ptrs, ws, G_DT: tl.constexpr, S_DT: tl.constexpr, BX: tl.constexpr,
                        BY: tl.constexpr, IDX: tl.constexpr):  # fmt: skip
    """Pass A: ws[flag] += #non-finite raw g; with g clamped to ±1000 and s = g² + 1e-30: ws[sumX] += Σ_y s,
    ws[sumY] += Σ_x s, ws[plane] += Σ s, ws[rsum_old][k] += Σ_{d1} r_old_k (tiles at the first d0 position)."""
    (t, bidx, xt, yt, n, nx, ny, nbatch, flags, off, mask, mx, my, ix, iy, lx, ly, ws_sx, ws_sy, ws_nx, ws_ny, ws_t) = (
        tile_coords(chunks, meta, BX, BY, IDX, 1, 0)
    )
    prow = ptrs + t.to(tl.int64) * 8
    g = tl.load(tl.load(prow + 1).to(tl.pointer_type(G_DT)) + off, mask=mask, other=0.0).to(tl.float32)
    nbad = tl.sum(tl.where(mask & ~(tl.abs(g) <= FLT_MAX), 1.0, 0.0))  # inf or NaN before the clamp
    g = tl.minimum(tl.maximum(g, -GRAD_CLAMP), GRAD_CLAMP)
    s = tl.where(mask, g * g + EPS_GRAD_SQ, 0.0)
    wsT = ws + ws_t
    tl.atomic_add(wsT + WS_FLAG, nbad, mask=nbad > 0.0, sem="relaxed")
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


@triton.jit
def _tensor(chunks, meta, cmeta, ptrs, ws, P_DT: tl.constexpr, G_DT: tl.constexpr, S_DT: tl.constexpr,
            BX: tl.constexpr, BY: tl.constexpr, IDX: tl.constexpr):  # fmt: skip
    """What every pass after A reads first: the tile (μLO's ``tile_coords``), the tensor's Celo2 row, its
    finite flag, the clamped gradient and the parameter (float32), and where each element's slice sums are."""
    (t, bidx, xt, yt, n, nx, ny, nbatch, flags, off, mask, mx, my, ix, iy, lx, ly, ws_sx, ws_sy, ws_nx, ws_ny, ws_t) = (
        tile_coords(chunks, meta, BX, BY, IDX, 1, 0)
    )
    crow = cmeta + t.to(tl.int64) * NCMETA
    slice_n = tl.load(crow + C_L).to(IDX)
    aligned = tl.load(crow + C_ALIGNED) != 0
    prow = ptrs + t.to(tl.int64) * 8
    pp = tl.load(prow + 0).to(tl.pointer_type(P_DT))
    g = tl.load(tl.load(prow + 1).to(tl.pointer_type(G_DT)) + off, mask=mask, other=0.0).to(tl.float32)
    g = tl.minimum(tl.maximum(g, -GRAD_CLAMP), GRAD_CLAMP)
    p = tl.load(pp + off, mask=mask, other=0.0).to(tl.float32)
    finite = tl.load(ws + ws_t + WS_FLAG) == 0.0
    # each element's slice: the plane's index when planes are slices, else its offset // |L|
    if aligned:
        slot = tl.zeros([BX, BY], dtype=IDX) + bidx
    else:
        slot = off // slice_n
    return (t, bidx, xt, yt, nbatch, flags, off, mask, mx, my, ix, iy, lx, ly, ws_sx, ws_sy, ws_nx, ws_ny, ws_t, crow,
            slice_n, aligned, prow, pp, g, p, finite, slot)  # fmt: skip


@triton.jit
def _factors(ws, ws_t, meta, t, bidx, nbatch, flags, k: tl.constexpr, bf, ax, ay):
    """Decay k's row and column factors of the NEW accumulator vectors ``ax`` ([BX]) and ``ay`` ([BY])."""
    mrow = meta + t.to(tl.int64) * NMETA
    d0x = (flags & FLAG_D0_IS_X) != 0
    bft = tl.load(mrow + M_WNX).to(tl.float32) * 0.0 + bf  # the decay as a float32 scalar tensor
    sx, sy = row_mean_scales(ws + ws_t, bidx, nbatch, k, bft, tl.load(mrow + M_WNX), tl.load(mrow + M_WNY), d0x, False)
    return safe_rsqrt(ax * sx), safe_rsqrt(ay * sy)


@triton.jit
def _features(g, p, m0, m1, m2, v, ax0, ax1, ax2, ay0, ay1, ay2, fx0, fx1, fx2, fy0, fy1, fy2, d0x):
    """The 30 features of FEATURE_GROUPS, in order, un-normalized ([BX, BY] each): ``m_k``, ``v`` the new
    moments; ``ax_k`` ([BX]) / ``ay_k`` ([BY]) the new accumulator vectors along X / Y; ``fx_k``, ``fy_k``
    their factors. The row accumulator is the one without d0 (accY when d0 is the X axis)."""
    rv = tl.rsqrt(v + EPS_RSQRT)
    f0 = fx0[:, None] * fy0[None, :]
    f1 = fx1[:, None] * fy1[None, :]
    f2 = fx2[:, None] * fy2[None, :]
    zero = g * 0.0
    x0 = zero + ax0[:, None]
    x1 = zero + ax1[:, None]
    x2 = zero + ax2[:, None]
    y0 = zero + ay0[None, :]
    y1 = zero + ay1[None, :]
    y2 = zero + ay2[None, :]
    r0 = tl.where(d0x, y0, x0)
    r1 = tl.where(d0x, y1, x1)
    r2 = tl.where(d0x, y2, x2)
    c0 = tl.where(d0x, x0, y0)
    c1 = tl.where(d0x, x1, y1)
    c2 = tl.where(d0x, x2, y2)
    return (
        g, tl.minimum(tl.maximum(g, -FEATURE_CLIP), FEATURE_CLIP), p,
        m0, m1, m2,
        v,
        m0 * rv, m1 * rv, m2 * rv,
        rv,
        g * f0, g * f1, g * f2,
        g * rv,
        r0, r1, r2,
        c0, c1, c2,
        tl.rsqrt(r0 + EPS_RSQRT), tl.rsqrt(r1 + EPS_RSQRT), tl.rsqrt(r2 + EPS_RSQRT),
        tl.rsqrt(c0 + EPS_RSQRT), tl.rsqrt(c1 + EPS_RSQRT), tl.rsqrt(c2 + EPS_RSQRT),
        m0 * f0, m1 * f1, m2 * f2,
    )  # fmt: skip


@triton.jit
def _moments(prow, off, mask, g, n, S_DT: tl.constexpr, new: tl.constexpr):
    """m_k (3) and v of the tile: updated from the old state with g (``new=False``: pass B), or as committed
    (``new=True``: passes C and E read what B wrote)."""
    mp = tl.load(prow + 2).to(tl.pointer_type(S_DT))
    vp = tl.load(prow + 3).to(tl.pointer_type(S_DT))
    m0 = tl.load(mp + off, mask=mask, other=0.0).to(tl.float32)
    m1 = tl.load(mp + n + off, mask=mask, other=0.0).to(tl.float32)
    m2 = tl.load(mp + 2 * n + off, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(vp + off, mask=mask, other=0.0).to(tl.float32)
    if not new:
        # (tensors on the left of constexpr operands: a constexpr on the left would wrap the result)
        m0 = m0 * BM0 + g * (1.0 - BM0)
        m1 = m1 * BM1 + g * (1.0 - BM1)
        m2 = m2 * BM2 + g * (1.0 - BM2)
        v = v * BV + (g * g) * (1.0 - BV)
    return m0, m1, m2, v, mp, vp


@triton.jit
def _new_vector(old_p, k: tl.constexpr, length, idx, m, ws, ws_sum, bf, count):
    """Decay k's new accumulator entries ``idx``: β·old + (1 − β)·(Σ s)/count."""
    old = tl.load(old_p + k * length + idx, mask=m, other=0.0).to(tl.float32)
    return old * bf + (tl.load(ws + ws_sum + idx, mask=m, other=0.0) / count) * (1.0 - bf)


@triton.jit
def celo2_sumsq_kernel(chunks, meta, cmeta, ptrs, ws, P_DT: tl.constexpr, G_DT: tl.constexpr, S_DT: tl.constexpr,
                       BX: tl.constexpr, BY: tl.constexpr, IDX: tl.constexpr):  # fmt: skip
    """Pass B: the new m_k and v (stored where the tensor's gradient is finite), the new accumulator vectors
    (ws[new X] at the first Y tile, ws[new Y] at the first X tile) and ws[slice sums][j] += Σ x_j² of the
    30 features."""
    (t, bidx, xt, yt, nbatch, flags, off, mask, mx, my, ix, iy, lx, ly, ws_sx, ws_sy, ws_nx, ws_ny, ws_t, crow,
     slice_n, aligned, prow, pp, g, p, finite, slot) = _tensor(chunks, meta, cmeta, ptrs, ws, P_DT, G_DT, S_DT, BX, BY,
                                                              IDX)  # fmt: skip
    mrow = meta + t.to(tl.int64) * NMETA
    n = tl.load(mrow + M_N).to(IDX)
    wnx = tl.load(mrow + M_WNX).to(tl.float32)
    wny = tl.load(mrow + M_WNY).to(tl.float32)
    d0x = (flags & FLAG_D0_IS_X) != 0
    m0, m1, m2, v, mp, vp = _moments(prow, off, mask, g, n, S_DT, False)
    ax_p = tl.load(prow + 4).to(tl.pointer_type(S_DT))
    ay_p = tl.load(prow + 5).to(tl.pointer_type(S_DT))
    ax0 = _new_vector(ax_p, 0, lx, ix, mx, ws, ws_sx, BF0, wny)
    ax1 = _new_vector(ax_p, 1, lx, ix, mx, ws, ws_sx, BF1, wny)
    ax2 = _new_vector(ax_p, 2, lx, ix, mx, ws, ws_sx, BF2, wny)
    ay0 = _new_vector(ay_p, 0, ly, iy, my, ws, ws_sy, BF0, wnx)
    ay1 = _new_vector(ay_p, 1, ly, iy, my, ws, ws_sy, BF1, wnx)
    ay2 = _new_vector(ay_p, 2, ly, iy, my, ws, ws_sy, BF2, wnx)
    if yt == 0:  # this chunk owns accX entries ix (each reduces Y)
        tl.store(ws + ws_nx + ix, ax0, mask=mx)
        tl.store(ws + ws_nx + lx + ix, ax1, mask=mx)
        tl.store(ws + ws_nx + 2 * lx + ix, ax2, mask=mx)
    if xt == 0:
        tl.store(ws + ws_ny + iy, ay0, mask=my)
        tl.store(ws + ws_ny + ly + iy, ay1, mask=my)
        tl.store(ws + ws_ny + 2 * ly + iy, ay2, mask=my)
    keep = tl.where(finite, mask, False)
    tl.store(mp + off, m0.to(S_DT), mask=keep)
    tl.store(mp + n + off, m1.to(S_DT), mask=keep)
    tl.store(mp + 2 * n + off, m2.to(S_DT), mask=keep)
    tl.store(vp + off, v.to(S_DT), mask=keep)
    fx0, fy0 = _factors(ws, ws_t, meta, t, bidx, nbatch, flags, 0, BF0, ax0, ay0)
    fx1, fy1 = _factors(ws, ws_t, meta, t, bidx, nbatch, flags, 1, BF1, ax1, ay1)
    fx2, fy2 = _factors(ws, ws_t, meta, t, bidx, nbatch, flags, 2, BF2, ax2, ay2)
    feats = _features(g, p, m0, m1, m2, v, ax0, ax1, ax2, ay0, ay1, ay2, fx0, fx1, fx2, fy0, fy1, fy2, d0x)
    base = ws + tl.load(crow + C_WS_SL).to(IDX)
    if aligned:  # the tile lies in one slice: one reduction per channel, one atomic add per program
        ch = tl.arange(0, SLICE)
        acc = tl.zeros([SLICE], dtype=tl.float32)
        for j in tl.static_range(NF):
            x = feats[j]
            acc += tl.where(ch == j, tl.sum(tl.where(mask, x * x, 0.0)), 0.0)
        tl.atomic_add(base + bidx * SLICE + ch, acc, mask=ch < NF, sem="relaxed")
    else:
        dst = base + slot * SLICE
        for j in tl.static_range(NF):
            x = feats[j]
            tl.atomic_add(dst + j, x * x, mask=mask, sem="relaxed")


@triton.jit
def _unit(x, wp, i: tl.constexpr, bias):
    """Hidden unit i of the first layer: relu(b1_i + Σ_j W1[i, j] · x_j)."""
    acc = x[0] * tl.load(wp + i * NF)
    for j in tl.static_range(1, NF):
        acc += x[j] * tl.load(wp + i * NF + j)
    return tl.maximum(acc + bias, 0.0)


@triton.jit
def _dense(h0, h1, h2, h3, h4, h5, h6, h7, w, b):
    """b + Σ_k W[k] · h_k for one output (``w`` points at its row of 8)."""
    acc = b + h0 * tl.load(w) + h1 * tl.load(w + 1) + h2 * tl.load(w + 2) + h3 * tl.load(w + 3)
    return acc + h4 * tl.load(w + 4) + h5 * tl.load(w + 5) + h6 * tl.load(w + 6) + h7 * tl.load(w + 7)


@triton.jit
def _n(f, base, slot, mask, j: tl.constexpr, inv_n):
    """Feature j times rsqrt(1e-9 + mean over its slice of its square)."""
    return f[j] * tl.rsqrt(tl.load(base + slot * SLICE + j, mask=mask, other=0.0) * inv_n + EPS_NORMALIZE)


@triton.jit
def _normalized(f, base, slot, mask, inv_n):
    """The 30 features normalized (``slot``: each element's slice; its sums of squares at ``base + 32·slot``)."""
    return (
        _n(f, base, slot, mask, 0, inv_n), _n(f, base, slot, mask, 1, inv_n), _n(f, base, slot, mask, 2, inv_n),
        _n(f, base, slot, mask, 3, inv_n), _n(f, base, slot, mask, 4, inv_n), _n(f, base, slot, mask, 5, inv_n),
        _n(f, base, slot, mask, 6, inv_n), _n(f, base, slot, mask, 7, inv_n), _n(f, base, slot, mask, 8, inv_n),
        _n(f, base, slot, mask, 9, inv_n), _n(f, base, slot, mask, 10, inv_n), _n(f, base, slot, mask, 11, inv_n),
        _n(f, base, slot, mask, 12, inv_n), _n(f, base, slot, mask, 13, inv_n), _n(f, base, slot, mask, 14, inv_n),
        _n(f, base, slot, mask, 15, inv_n), _n(f, base, slot, mask, 16, inv_n), _n(f, base, slot, mask, 17, inv_n),
        _n(f, base, slot, mask, 18, inv_n), _n(f, base, slot, mask, 19, inv_n), _n(f, base, slot, mask, 20, inv_n),
        _n(f, base, slot, mask, 21, inv_n), _n(f, base, slot, mask, 22, inv_n), _n(f, base, slot, mask, 23, inv_n),
        _n(f, base, slot, mask, 24, inv_n), _n(f, base, slot, mask, 25, inv_n), _n(f, base, slot, mask, 26, inv_n),
        _n(f, base, slot, mask, 27, inv_n), _n(f, base, slot, mask, 28, inv_n), _n(f, base, slot, mask, 29, inv_n),
    )  # fmt: skip


@triton.jit
def _ns(f, base, j: tl.constexpr, inv_n):
    """Feature j times its scale, the slice's sums at ``base`` (a scalar: the program's tile is in one slice)."""
    return f[j] * tl.rsqrt(tl.load(base + j) * inv_n + EPS_NORMALIZE)


@triton.jit
def _normalized_in_slice(f, base, inv_n):
    """:func:`_normalized` for a tile inside one slice: 30 scalar loads and rsqrts per program, not per element."""
    return (
        _ns(f, base, 0, inv_n), _ns(f, base, 1, inv_n), _ns(f, base, 2, inv_n), _ns(f, base, 3, inv_n),
        _ns(f, base, 4, inv_n), _ns(f, base, 5, inv_n), _ns(f, base, 6, inv_n), _ns(f, base, 7, inv_n),
        _ns(f, base, 8, inv_n), _ns(f, base, 9, inv_n), _ns(f, base, 10, inv_n), _ns(f, base, 11, inv_n),
        _ns(f, base, 12, inv_n), _ns(f, base, 13, inv_n), _ns(f, base, 14, inv_n), _ns(f, base, 15, inv_n),
        _ns(f, base, 16, inv_n), _ns(f, base, 17, inv_n), _ns(f, base, 18, inv_n), _ns(f, base, 19, inv_n),
        _ns(f, base, 20, inv_n), _ns(f, base, 21, inv_n), _ns(f, base, 22, inv_n), _ns(f, base, 23, inv_n),
        _ns(f, base, 24, inv_n), _ns(f, base, 25, inv_n), _ns(f, base, 26, inv_n), _ns(f, base, 27, inv_n),
        _ns(f, base, 28, inv_n), _ns(f, base, 29, inv_n),
    )  # fmt: skip


@triton.jit
def _direction(x, wp):
    """d = out₀ · exp(out₁ · EXP_MULT) of the split-input network on the normalized features ``x``."""
    h0 = _unit(x, wp, 0, tl.load(wp + OFF_B1))
    h1 = _unit(x, wp, 1, tl.load(wp + OFF_B1 + 1))
    h2 = _unit(x, wp, 2, tl.load(wp + OFF_B1 + 2))
    h3 = _unit(x, wp, 3, tl.load(wp + OFF_B1 + 3))
    h4 = _unit(x, wp, 4, tl.load(wp + OFF_B1 + 4))
    h5 = _unit(x, wp, 5, tl.load(wp + OFF_B1 + 5))
    h6 = _unit(x, wp, 6, tl.load(wp + OFF_B1 + 6))
    h7 = _unit(x, wp, 7, tl.load(wp + OFF_B1 + 7))
    w2 = wp + OFF_W2
    b2 = wp + OFF_B2
    u0 = tl.maximum(_dense(h0, h1, h2, h3, h4, h5, h6, h7, w2, tl.load(b2)), 0.0)
    u1 = tl.maximum(_dense(h0, h1, h2, h3, h4, h5, h6, h7, w2 + NH, tl.load(b2 + 1)), 0.0)
    u2 = tl.maximum(_dense(h0, h1, h2, h3, h4, h5, h6, h7, w2 + 2 * NH, tl.load(b2 + 2)), 0.0)
    u3 = tl.maximum(_dense(h0, h1, h2, h3, h4, h5, h6, h7, w2 + 3 * NH, tl.load(b2 + 3)), 0.0)
    u4 = tl.maximum(_dense(h0, h1, h2, h3, h4, h5, h6, h7, w2 + 4 * NH, tl.load(b2 + 4)), 0.0)
    u5 = tl.maximum(_dense(h0, h1, h2, h3, h4, h5, h6, h7, w2 + 5 * NH, tl.load(b2 + 5)), 0.0)
    u6 = tl.maximum(_dense(h0, h1, h2, h3, h4, h5, h6, h7, w2 + 6 * NH, tl.load(b2 + 6)), 0.0)
    u7 = tl.maximum(_dense(h0, h1, h2, h3, h4, h5, h6, h7, w2 + 7 * NH, tl.load(b2 + 7)), 0.0)
    out0 = _dense(u0, u1, u2, u3, u4, u5, u6, u7, wp + OFF_W3, tl.load(wp + OFF_B3))
    out1 = _dense(u0, u1, u2, u3, u4, u5, u6, u7, wp + OFF_W3 + NH, tl.load(wp + OFF_B3 + 1))
    return out0 * tl.exp(out1 * EXP_MULT)


@triton.jit
def _commit(prow, meta, t, bidx, xt, yt, ws, ws_nx, ws_ny, ix, iy, mx, my, lx, ly, finite, S_DT: tl.constexpr):
    """The last pass's bookkeeping: the new accumulator vectors from the workspace into the state (accX by the
    first Y tile, accY by the first X tile) and, once per tensor, step += 1 — or only nonfinite_skips += 1."""
    if finite:
        if yt == 0:
            ax_p = tl.load(prow + 4).to(tl.pointer_type(S_DT))
            for k in tl.static_range(3):
                tl.store(ax_p + k * lx + ix, tl.load(ws + ws_nx + k * lx + ix, mask=mx).to(S_DT), mask=mx)
        if xt == 0:
            ay_p = tl.load(prow + 5).to(tl.pointer_type(S_DT))
            for k in tl.static_range(3):
                tl.store(ay_p + k * ly + iy, tl.load(ws + ws_ny + k * ly + iy, mask=my).to(S_DT), mask=my)
    if (bidx == 0) & (xt == 0) & (yt == 0):
        steps = tl.load(prow + 6).to(tl.pointer_type(tl.float32))
        skips = tl.load(prow + 7).to(tl.pointer_type(tl.float32))
        tl.store(steps, tl.load(steps) + tl.where(finite, 1.0, 0.0))
        tl.store(skips, tl.load(skips) + tl.where(finite, 0.0, 1.0))


@triton.jit
def _update(pp, off, mask, p, step, hyper, t, finite, P_DT: tl.constexpr):
    """p ← p − lr · (step + wd · p) where the tensor's gradient is finite."""
    lr = tl.load(hyper + t.to(tl.int64) * 2)
    wd = tl.load(hyper + t.to(tl.int64) * 2 + 1)
    tl.store(pp + off, (p - lr * (step + wd * p)).to(P_DT), mask=tl.where(finite, mask, False))


@triton.jit
def celo2_direction_kernel(chunks, meta, cmeta, ptrs, ws, net, dptrs, hyper, P_DT: tl.constexpr,
                           G_DT: tl.constexpr, S_DT: tl.constexpr, BX: tl.constexpr, BY: tl.constexpr,
                           IDX: tl.constexpr, MODE: tl.constexpr):  # fmt: skip
    """Pass C: the direction d of every element from the features B committed and summed. MODE
    STORE_DIRECTION: d (0 for a skipped tensor) to the tensor's direction buffer ``dptrs[t]``;
    SUM_DIRECTION_SQ: ws[Σd²][slice] += d²; APPLY_DIRECTION: p ← p − lr·(d·rsqrt(1e-9 + Σd²/|L|) + wd·p)
    with the sums of the previous MODE, and the accumulators and counters committed."""
    (t, bidx, xt, yt, nbatch, flags, off, mask, mx, my, ix, iy, lx, ly, ws_sx, ws_sy, ws_nx, ws_ny, ws_t, crow,
     slice_n, aligned, prow, pp, g, p, finite, slot) = _tensor(chunks, meta, cmeta, ptrs, ws, P_DT, G_DT, S_DT, BX, BY,
                                                              IDX)  # fmt: skip
    mrow = meta + t.to(tl.int64) * NMETA
    n = tl.load(mrow + M_N).to(IDX)
    d0x = (flags & FLAG_D0_IS_X) != 0
    m0, m1, m2, v, mp, vp = _moments(prow, off, mask, g, n, S_DT, True)
    ax0 = tl.load(ws + ws_nx + ix, mask=mx, other=0.0)
    ax1 = tl.load(ws + ws_nx + lx + ix, mask=mx, other=0.0)
    ax2 = tl.load(ws + ws_nx + 2 * lx + ix, mask=mx, other=0.0)
    ay0 = tl.load(ws + ws_ny + iy, mask=my, other=0.0)
    ay1 = tl.load(ws + ws_ny + ly + iy, mask=my, other=0.0)
    ay2 = tl.load(ws + ws_ny + 2 * ly + iy, mask=my, other=0.0)
    fx0, fy0 = _factors(ws, ws_t, meta, t, bidx, nbatch, flags, 0, BF0, ax0, ay0)
    fx1, fy1 = _factors(ws, ws_t, meta, t, bidx, nbatch, flags, 1, BF1, ax1, ay1)
    fx2, fy2 = _factors(ws, ws_t, meta, t, bidx, nbatch, flags, 2, BF2, ax2, ay2)
    feats = _features(g, p, m0, m1, m2, v, ax0, ax1, ax2, ay0, ay1, ay2, fx0, fx1, fx2, fy0, fy1, fy2, d0x)
    wp = net + tl.load(mrow + M_WIDX) * NET
    inv_n = 1.0 / slice_n.to(tl.float32)
    sl_base = ws + tl.load(crow + C_WS_SL).to(IDX)
    if aligned:  # the tile is in one slice (plane = slice): its 30 scales once per program
        d = _direction(_normalized_in_slice(feats, sl_base + bidx * SLICE, inv_n), wp)
    else:
        d = _direction(_normalized(feats, sl_base, slot, mask, inv_n), wp)
    dsq_p = ws + tl.load(crow + C_WS_DSQ).to(IDX)
    if MODE == 0:
        dp = tl.load(dptrs + t.to(tl.int64)).to(tl.pointer_type(tl.float32))
        tl.store(dp + off, tl.where(finite, d, 0.0), mask=mask)
    elif MODE == 1:
        if aligned:
            tl.atomic_add(dsq_p + bidx, tl.sum(tl.where(mask, d * d, 0.0)), sem="relaxed")
        else:
            tl.atomic_add(dsq_p + slot, d * d, mask=mask, sem="relaxed")
    else:
        step = d * tl.rsqrt(tl.load(dsq_p + slot, mask=mask, other=0.0) * inv_n + EPS_NORMALIZE) * RMS_MULT
        _update(pp, off, mask, p, step, hyper, t, finite, P_DT)
        _commit(prow, meta, t, bidx, xt, yt, ws, ws_nx, ws_ny, ix, iy, mx, my, lx, ly, finite, S_DT)


@triton.jit
def celo2_apply_kernel(chunks, meta, cmeta, ptrs, ws, xptrs, hyper, P_DT: tl.constexpr, G_DT: tl.constexpr,
                       S_DT: tl.constexpr, BX: tl.constexpr, BY: tl.constexpr, IDX: tl.constexpr):  # fmt: skip
    """Pass E after Newton–Schulz: x = the orthogonalized direction (``xptrs[t]``: its float32 elements, in the
    tensor's order, and its per-slice Σx²), p ← p − lr·(x·rsqrt(1e-9 + Σx²/|L|)·RMS_MULT + wd·p); the
    accumulators and counters committed."""
    (t, bidx, xt, yt, nbatch, flags, off, mask, mx, my, ix, iy, lx, ly, ws_sx, ws_sy, ws_nx, ws_ny, ws_t, crow,
     slice_n, aligned, prow, pp, g, p, finite, slot) = _tensor(chunks, meta, cmeta, ptrs, ws, P_DT, G_DT, S_DT, BX, BY,
                                                              IDX)  # fmt: skip
    xrow = xptrs + t.to(tl.int64) * 2
    x = tl.load(tl.load(xrow).to(tl.pointer_type(tl.float32)) + off, mask=mask, other=0.0)
    xsq = tl.load(tl.load(xrow + 1).to(tl.pointer_type(tl.float32)) + slot, mask=mask, other=0.0)
    step = x * tl.rsqrt(xsq / slice_n.to(tl.float32) + EPS_NORMALIZE) * RMS_MULT
    _update(pp, off, mask, p, step, hyper, t, finite, P_DT)
    _commit(prow, meta, t, bidx, xt, yt, ws, ws_nx, ws_ny, ix, iy, mx, my, lx, ly, finite, S_DT)


def _idx(plan):
    return tl.int64 if plan.use_int64 else tl.int32


def celo2_reduce(plan, ptrs, ws, g_dt, s_dt, block_x: int, block_y: int) -> None:
    """Launch pass A over ``plan.chunks_ab`` (``ws`` zeroed)."""
    celo2_reduce_kernel[(plan.chunks_ab.shape[0],)](
        plan.chunks_ab, plan.meta, ptrs, ws, g_dt, s_dt, block_x, block_y, _idx(plan), num_warps=NUM_WARPS
    )


def celo2_sumsq(plan, cmeta, ptrs, ws, dtypes, block_x: int, block_y: int) -> None:
    """Launch pass B over ``plan.chunks_c`` (after A)."""
    celo2_sumsq_kernel[(plan.chunks_c.shape[0],)](
        plan.chunks_c, plan.meta, cmeta, ptrs, ws, *dtypes, block_x, block_y, _idx(plan), num_warps=NUM_WARPS
    )


def celo2_direction(plan, cmeta, ptrs, ws, net, dptrs, hyper, dtypes, block_x: int, block_y: int, mode: int) -> None:
    """Launch pass C (``mode``: STORE_DIRECTION, SUM_DIRECTION_SQ or APPLY_DIRECTION) over ``plan.chunks_c``."""
    celo2_direction_kernel[(plan.chunks_c.shape[0],)](
        plan.chunks_c, plan.meta, cmeta, ptrs, ws, net, dptrs, hyper, *dtypes, block_x, block_y, _idx(plan), mode,
        num_warps=NUM_WARPS,
    )  # fmt: skip


def celo2_apply(plan, cmeta, ptrs, ws, xptrs, hyper, dtypes, block_x: int, block_y: int) -> None:
    """Launch pass E (the orthogonalized steps) over ``plan.chunks_c``."""
    celo2_apply_kernel[(plan.chunks_c.shape[0],)](
        plan.chunks_c, plan.meta, cmeta, ptrs, ws, xptrs, hyper, *dtypes, block_x, block_y, _idx(plan),
        num_warps=NUM_WARPS,
    )  # fmt: skip
