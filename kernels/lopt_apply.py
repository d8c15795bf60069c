"""Pass C of the μLO step (ALGORITHM.md §2–4): features, normalization, the MLP on tensor cores, the
μP-scaled update and weight decay, writing p, m (3), v and the Adafactor accumulators.

A program is one chunk of NSUB tiles along X. Once per program: the tensor's table rows, pointers, decays,
row means, the column-side (Y) factor and feature vectors, and the weights — the 28 normalization scales
folded into the first layer's weight columns, the 11 time features (tanh(t/τ − 1)) into its bias, the bias a
weight row against a constant-1 feature (channel 28), the row/column channels 13–24 swapped when the tensor's
d0 axis is X. Per tile, the elements × 32 feature matrix is built by pairwise ``tl.join`` (column order from
``lopt_plan.join_tree_order``) and goes through ``tl.dot`` with float32 accumulation; the hidden columns are
reordered so that each layer's accumulator is the next dot's operand without shuffles, and layer 3 is a
dot against W3 padded to 8 columns. ``DOT`` selects the operand precision: "tf32" (default on GPU: tensor
cores with both operands rounded to nearest tf32 — the weights once per program, the activations by one
integer add each, the MMA's own cut of the low bits completing the rounding), "tf32x3" (float32 accuracy:
every layer as three tf32 products of split operands, the weights split once per program), "ieee" (float32
FMAs, no tensor cores), "bf16" (bf16 operands). The CPU interpreter computes exactly what the GPU does in
every mode: it makes the tensor cores' cut itself (its dots are exact float32) and runs bf16 as bf16-rounded
operands through a float32 dot.
A tensor whose pass-A flag counted a non-finite s stores nothing; its ``nonfinite_skips`` grows instead.
The meta-network's layers may hold K stacked sets, one per member of a population; each tensor's row of the
segment table says which set it uses, so one launch steps every member's tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from mulo.kernels.lopt_common import (
    EPS_ACC_FEATURE,
    EPS_NORMALIZE,
    EPS_RMS,
    EPS_SAFE_RSQRT,
    FLAG_D0_IS_X,
    FLAG_FACTORED,
    FLAG_ROW_MEAN_GIVEN,
    INTERPRETED,
    M_WIDX,
    M_WN,
    WS_SUMSQ,
    WS_T,
    chunk_coords,
    load_decays,
    row_mean_scales,
    safe_rsqrt,
    tensor_pointers,
    tile_elements,
)

NUM_WARPS = 4
# no software pipelining of the loop over a chunk's tiles: it would hold the next tiles' loads in registers
# (172 instead of 168 per thread, two blocks per SM instead of three) and copy them every iteration
NUM_STAGES = 1
DOT_MODES = ("tf32", "tf32x3", "ieee", "bf16")


@triton.jit
def _join32(
    f0,
    f1,
    f2,
    f3,
    f4,
    f5,
    f6,
    f7,
    f8,
    f9,
    f10,
    f11,
    f12,
    f13,
    f14,
    f15,
    f16,
    f17,
    f18,
    f19,
    f20,
    f21,
    f22,
    f23,
    f24,
    f25,
    f26,
    f27,
    one,
    z,
    SB: tl.constexpr,
):
    """(SB, 32) matrix of 28 feature vectors, a constant-1 column (channel 28) and 3 zero columns, by a balanced
    tree of joins."""
    a0 = tl.join(tl.join(tl.join(f0, f1), tl.join(f2, f3)), tl.join(tl.join(f4, f5), tl.join(f6, f7)))
    a1 = tl.join(tl.join(tl.join(f8, f9), tl.join(f10, f11)), tl.join(tl.join(f12, f13), tl.join(f14, f15)))
    a2 = tl.join(tl.join(tl.join(f16, f17), tl.join(f18, f19)), tl.join(tl.join(f20, f21), tl.join(f22, f23)))
    a3 = tl.join(tl.join(tl.join(f24, f25), tl.join(f26, f27)), tl.join(tl.join(one, z), tl.join(z, z)))
    return tl.reshape(tl.join(tl.join(a0, a1), tl.join(a2, a3)), (SB, 32))


# "tf32": the tensor cores cut each activation operand to its 10 leading mantissa bits, which shrinks a value by
# 2⁻¹⁰·U/m relative (U uniform in [0, 1), m its mantissa in [1, 2)): on average 2⁻¹¹·E[1/m]. The weights of
# every activation row are scaled once per program by 1 + 2⁻¹¹/(2 ln 2) (E[1/m] for log-uniform mantissas)
# and rounded to nearest tf32. The operand error left is as large as rounding to nearest, and its mean,
# c − 2⁻¹¹/m for c = 0.72·2⁻¹¹, lies in [−0.28, +0.22]·2⁻¹¹ (≤ 1.4e-4) for values with low bits to cut;
# +0.72·2⁻¹¹ (3.5e-4) for a value already on the tf32 grid (such as a parameter at 1.0), which the cut leaves
# whole. The constant-1 feature (layer 1's bias row) is not scaled. No per-element instruction is spent.
TF32_CUT_COMPENSATION = tl.constexpr(1.0003522204689670)


@triton.jit
def _cut_tf32(a):
    """``a`` with its 13 low mantissa bits cleared: what a tf32 tensor core reads of a float32 register (the
    PTX Triton emits rounds nothing; the MMA ignores those bits)."""
    return (a.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def _rn_tf32(a):
    """``a`` rounded to the nearest tf32 value, ties away from zero (as PTX ``cvt.rna.tf32.f32``): half a tf32
    ulp added to the magnitude bits, then the cut."""
    return _cut_tf32((a.to(tl.uint32, bitcast=True) + 0x1000).to(tl.float32, bitcast=True))


@triton.jit
def _as_read(a, DOT: tl.constexpr):
    """What the dot reads of the activation operand ``a``: in the tf32 modes on the GPU the tensor cores make
    the cut themselves; interpreted (its dots are exact float32) the cut is made here, so the interpreter
    computes what the GPU does."""
    if INTERPRETED:
        if (DOT == "tf32") or (DOT == "tf32x3"):
            return _cut_tf32(a)
    return a


@triton.jit
def _weight_split(b, cut_rows, DOT: tl.constexpr):
    """A layer's weights as (bh, bl), once per program. "tf32": bh = b rounded to nearest tf32, its rows
    against activations the tensor cores cut (``cut_rows``) scaled by ``TF32_CUT_COMPENSATION`` first.
    "tf32x3": b = bh + bl with bh on the tf32 grid and bl as the tensor cores read it (its own cut is 2⁻²² of
    b). Else (b, b)."""
    if DOT == "tf32":
        return _rn_tf32(tl.where(cut_rows, b * TF32_CUT_COMPENSATION, b)), b
    elif DOT == "tf32x3":
        bh = _cut_tf32(b)
        return bh, _cut_tf32(b - bh)
    else:
        return b, b


@triton.jit
def _mm3(a, bh, bl, DOT: tl.constexpr):
    """a·b for the weights b split once per program (``_weight_split``) in the operand precision ``DOT``:
    "tf32" one tf32 product (see ``TF32_CUT_COMPENSATION``); "tf32x3" the three tf32 products
    ah·bh + (ah·bl + al·bh), float32-accurate; "ieee" float32 FMAs; "bf16" bf16 operands."""
    if DOT == "tf32":
        return tl.dot(_as_read(a, DOT), bh, input_precision="tf32", out_dtype=tl.float32)
    elif DOT == "tf32x3":  # the small products first, all accumulated by the tensor cores
        ah = _cut_tf32(a)
        acc = tl.dot(_as_read(a - ah, DOT), bh, input_precision="tf32", out_dtype=tl.float32)
        acc = tl.dot(ah, bl, acc, input_precision="tf32", out_dtype=tl.float32)
        return tl.dot(ah, bh, acc, input_precision="tf32", out_dtype=tl.float32)
    elif DOT == "bf16":
        if INTERPRETED:  # the interpreter mishandles bf16 dots: the same rounding through a float32 one
            return tl.dot(a.to(tl.bfloat16).to(tl.float32), bh.to(tl.bfloat16).to(tl.float32),
                          input_precision="ieee", out_dtype=tl.float32)  # fmt: skip
        else:
            return tl.dot(a.to(tl.bfloat16), bh.to(tl.bfloat16), out_dtype=tl.float32)
    else:
        return tl.dot(a, bh, input_precision="ieee", out_dtype=tl.float32)


@triton.jit
def _hidden_order(h, SB: tl.constexpr, HID: tl.constexpr, DOT: tl.constexpr):
    """The (SB, HID) hidden activations with columns reordered c = 8j + 2t + e → 8j + 4e + t: in the
    tensor cores' float32 accumulator layout each thread then already holds the columns the next tf32 dot
    reads as its operand (no shuffles between the layers; bf16 operands already match: no reorder). The next
    layer's weight rows are read in the same order (``_hidden_source``), so the product is unchanged."""
    if DOT == "bf16":
        return h
    else:
        return tl.reshape(tl.permute(tl.reshape(h, (SB, HID // 8, 4, 2)), (0, 1, 3, 2)), (SB, HID))


@triton.jit
def _hidden_source(i, DOT: tl.constexpr):
    """The hidden unit that column ``i`` of ``_hidden_order``'s output holds."""
    if DOT == "bf16":
        return i
    else:
        return (i & ~7) | ((i & 3) << 1) | ((i >> 2) & 1)


@triton.jit
def _first(a, b):
    return a


@triton.jit
def _y_side(k: tl.constexpr, ws, ws_ny, ly, iy, myf, sy):
    """Decay k's column-side vectors of the program's tile column ([BY]): accY, its factor and its
    rsqrt(· + 1e-8) feature (once per program; masked to 1 for rank < 2 tensors, which have none)."""
    ay = tl.load(ws + ws_ny + k * ly + iy, mask=myf, other=1.0)
    return ay, tl.rsqrt(tl.maximum(ay * sy, EPS_SAFE_RSQRT)), tl.rsqrt(ay + EPS_ACC_FEATURE)


@triton.jit
def _decay_features(
    k: tl.constexpr, g, s, rv, off, mask, mx, ix, n, lx, factored, mp, ax_p, ws, ws_nx, bm, bf, sx, ay, fy, ry,
    BX: tl.constexpr, BY: tl.constexpr,
):  # fmt: skip
    """Decay k's features (flattened to SB): m_k, m_k·rsqrt(v+1e-6), fac_g, accX, accY, rsqrt(accX+1e-8),
    rsqrt(accY+1e-8), fac_m; and the new m_k and (rank < 2) u_k tiles to store. For factored tensors the
    accX/accY slots feed W1's row or column channels as the tensor's d0 axis says (the fold swaps them)."""
    SB: tl.constexpr = BX * BY
    m = bm * tl.load(mp + k * n + off, mask=mask, other=0.0).to(tl.float32) + (1.0 - bm) * g
    if factored:
        ax = tl.load(ws + ws_nx + k * lx + ix, mask=mx, other=1.0)
        fx = tl.rsqrt(tl.maximum(ax * sx, EPS_SAFE_RSQRT))
        facg = fx[:, None] * fy[None, :]
        facm = facg
        xa = tl.broadcast_to(ax[:, None], (BX, BY))
        ya = tl.broadcast_to(ay[None, :], (BX, BY))
        xr = tl.broadcast_to(tl.rsqrt(ax + EPS_ACC_FEATURE)[:, None], (BX, BY))
        yr = tl.broadcast_to(ry[None, :], (BX, BY))
        u = g * 0.0
    else:
        u = bf * tl.load(ax_p + k * n + off, mask=mask, other=0.0).to(tl.float32) + (1.0 - bf) * s
        facg = safe_rsqrt(u + EPS_SAFE_RSQRT)
        facm = tl.rsqrt(u + EPS_RMS)
        xa = u
        ya = u
        xr = tl.rsqrt(u + EPS_ACC_FEATURE)
        yr = xr
    return (
        m,
        u,
        tl.reshape(m, (SB,)),
        tl.reshape(m * rv, (SB,)),
        tl.reshape(g * facg, (SB,)),
        tl.reshape(xa, (SB,)),
        tl.reshape(ya, (SB,)),
        tl.reshape(xr, (SB,)),
        tl.reshape(yr, (SB,)),
        tl.reshape(m * facm, (SB,)),
    )


@triton.jit
def _chunk_tiles(
    FACT, xc, yt, ok, n, nx, my, ix0, offy, sx_stride, xx_stride, gp, pp, vp, mp, ax_p, ws, ws_nx, lx, bv, cv,
    bm0, bm1, bm2, bf0, bf1, bf2, sx0, sx1, sx2, ay0, ay1, ay2, fy0, fy1, fy2, ry0, ry1, ry2,
    w1h, w1l, w2h, w2l, b2v, w3h, w3l, b3d, b3a, exp_mult, step_mult, lr, wd,
    P_DT: tl.constexpr, S_DT: tl.constexpr, BX: tl.constexpr, BY: tl.constexpr, NSUB: tl.constexpr,
    HID: tl.constexpr, DOT: tl.constexpr, IDX: tl.constexpr, UNSWITCHED: tl.constexpr,
):  # fmt: skip
    """The loop over a chunk's NSUB tiles of BX × BY elements: features, the MLP, the update and the
    stores. ``UNSWITCHED``: the kernel runs one of two copies of the loop and ``FACT`` (the tensor is factored)
    is a literal (no tile branches on it; the factored copy stores the new accX entries of all its rows after
    the loop); else ``FACT`` is the runtime flag and each tile stores its rows' entries."""
    SB: tl.constexpr = BX * BY
    for sub in range(NSUB):  # NSUB tiles of BX × BY elements share everything the kernel computed before
        # ---- features ----
        ix, mx, off, mask, g, p, v, rv, s = tile_elements(
            xc * NSUB + sub, BX, IDX, n, nx, my, ix0, offy, sx_stride, xx_stride, gp, pp, vp, bv, cv
        )
        m0, u0, a0, b0, c0, d0, e0, f0, h0, i0 = _decay_features(
            0, g, s, rv, off, mask, mx, ix, n, lx, FACT, mp, ax_p, ws, ws_nx, bm0, bf0, sx0, ay0, fy0, ry0, BX, BY
        )  # fmt: skip
        m1, u1, a1, b1_, c1, d1, e1, f1, h1, i1 = _decay_features(
            1, g, s, rv, off, mask, mx, ix, n, lx, FACT, mp, ax_p, ws, ws_nx, bm1, bf1, sx1, ay1, fy1, ry1, BX, BY
        )  # fmt: skip
        m2, u2, a2, b2_, c2, d2, e2, f2, h2, i2 = _decay_features(
            2, g, s, rv, off, mask, mx, ix, n, lx, FACT, mp, ax_p, ws, ws_nx, bm2, bf2, sx2, ay2, fy2, ry2, BX, BY
        )  # fmt: skip
        z = tl.zeros([SB], dtype=tl.float32)
        x = _join32(
            tl.reshape(g, (SB,)), tl.reshape(p, (SB,)), a0, a1, a2, tl.reshape(v, (SB,)), b0, b1_, b2_,
            tl.reshape(rv, (SB,)), c0, c1, c2,
            d0, d1, d2, e0, e1, e2, f0, f1, f2, h0, h1, h2, i0, i1, i2, z + 1.0, z, SB,
        )  # fmt: skip

        # ---- MLP: tensor cores with float32 accumulation (layer 1's bias rides on the constant-1 feature) ----
        h = _hidden_order(tl.maximum(_mm3(x, w1h, w1l, DOT), 0.0), SB, HID, DOT)
        h = _hidden_order(tl.maximum(_mm3(h, w2h, w2l, DOT) + b2v[None, :], 0.0), SB, HID, DOT)
        # layer 3 as a dot with W3 padded to 8 columns (d, a, 0, ...): both outputs land in the first lane pair
        da = tl.reshape(_mm3(h, w3h, w3l, DOT), (SB, 4, 2))
        dd, aa = tl.split(da)
        d = tl.reshape(tl.reduce(dd, 1, _first), (BX, BY)) + b3d
        a = tl.reshape(tl.reduce(aa, 1, _first), (BX, BY)) + b3a
        step = d * tl.exp(a * exp_mult) * step_mult

        # ---- update and stores ----
        p_new = p - lr * step
        p_new = p_new - wd * lr * p_new
        st = mask & ((off * 0 + ok.to(off.dtype)) != 0)  # (scalar & tensor trips the interpreter)
        tl.store(pp + off, p_new.to(P_DT), mask=st)
        tl.store(mp + off, m0.to(S_DT), mask=st)
        tl.store(mp + n + off, m1.to(S_DT), mask=st)
        tl.store(mp + 2 * n + off, m2.to(S_DT), mask=st)
        tl.store(vp + off, v.to(S_DT), mask=st)
        if FACT:
            if not UNSWITCHED:  # (the copy for factored tensors stores them after its loop)
                if (yt == 0) & ok:  # the tile rows' new accX vectors, by the chunk at the first Y position
                    for k in tl.static_range(3):
                        tl.store(ax_p + k * lx + ix, tl.load(ws + ws_nx + k * lx + ix, mask=mx).to(S_DT), mask=mx)
        else:
            tl.store(ax_p + off, u0.to(S_DT), mask=st)
            tl.store(ax_p + n + off, u1.to(S_DT), mask=st)
            tl.store(ax_p + 2 * n + off, u2.to(S_DT), mask=st)
    if UNSWITCHED:
        if FACT:
            if (yt == 0) & ok:  # the chunk rows' new accX vectors, by the chunk at the first Y position
                xs = xc * (NSUB * BX) + tl.arange(0, NSUB * BX).to(IDX)
                mxs = xs < nx
                ixs = ix0 + xs * xx_stride
                for k in tl.static_range(3):
                    tl.store(ax_p + k * lx + ixs, tl.load(ws + ws_nx + k * lx + ixs, mask=mxs).to(S_DT), mask=mxs)


@triton.jit
def lopt_apply_kernel(
    chunks, meta, ptrs, ws, hyper, decays, taus, perm, w1, b1, w2, b2, w3, b3, exp_mult, step_mult, time_clamp,
    P_DT: tl.constexpr, G_DT: tl.constexpr, S_DT: tl.constexpr, BX: tl.constexpr, BY: tl.constexpr,
    NSUB: tl.constexpr, HID: tl.constexpr, DOT: tl.constexpr, IDX: tl.constexpr,
):  # fmt: skip
    """x = 28 features · scale (scale_j = rsqrt(1e-5 + Σx_j²/n), folded into W1) ⊕ tanh(min(t, time_clamp)/τ − 1)
    (folded into b1, itself a W1 row against a constant-1 feature); (d, a) = W3·relu(W2·relu(W1·x + b1) + b2) + b3;
    p' = p − lr·d·exp(a·exp_mult)·step_mult; p' −= wd·lr·p'. Stores p', m', v', u' (and the new row/col
    vectors) unless the tensor is non-finite. The layers hold K stacked meta-weight sets ((K, HID, 39), (K, HID),
    ...); a tensor uses set ``meta[M_WIDX]`` (its population member; K = 1 and index 0 for a single optimizer).

    A program is one chunk: NSUB tiles of BX × BY along X at one Y tile of one batch of one tensor. Everything
    that depends only on the tensor, the batch or Y (table rows, pointers, decays, row means, the column-side
    factor vectors, the folded weights) is computed once, before the loop over the NSUB tiles."""
    (t, bidx, xc, yt, mrow, n, nx, ny, nbatch, ix0, flags, wsT, wnx, wny, ys, my, offy, iy, sx_stride, xx_stride,
     ws_nx, lx, ws_ny, ly) = chunk_coords(chunks, meta, ws, BY, IDX)  # fmt: skip
    numel = tl.load(mrow + M_WN).to(tl.float32)  # the whole tensor's (this may be a shard of it)
    factored = (flags & FLAG_FACTORED) != 0
    d0x = (flags & FLAG_D0_IS_X) != 0
    given = (flags & FLAG_ROW_MEAN_GIVEN) != 0
    ok = tl.load(wsT) == 0.0
    step_t = tl.minimum(tl.load(wsT + WS_T), time_clamp)  # the time features' t (time_clamp +inf: none)
    pp, gp, mp, vp, ax_p, ay_p, prow = tensor_pointers(ptrs, t, P_DT, G_DT, S_DT)
    lr = tl.load(hyper + t.to(tl.int64) * 2)
    wd = tl.load(hyper + t.to(tl.int64) * 2 + 1)
    bm0, bm1, bm2, bv, bf0, bf1, bf2, cv = load_decays(decays)
    # column-side vectors of the three decays (rank < 2 tensors: masked, unused)
    myf = ys < tl.where(factored, ny, 0)
    sx0, sy0 = row_mean_scales(wsT, bidx, nbatch, 0, bf0, wnx, wny, d0x, given)
    sx1, sy1 = row_mean_scales(wsT, bidx, nbatch, 1, bf1, wnx, wny, d0x, given)
    sx2, sy2 = row_mean_scales(wsT, bidx, nbatch, 2, bf2, wnx, wny, d0x, given)
    ay0, fy0, ry0 = _y_side(0, ws, ws_ny, ly, iy, myf, sy0)
    ay1, fy1, ry1 = _y_side(1, ws, ws_ny, ly, iy, myf, sy1)
    ay2, fy2, ry2 = _y_side(2, ws, ws_ny, ly, iy, myf, sy2)

    # ---- fold normalization into W1's columns and the time features into b1, a W1 row (once per program) ----
    widx = tl.load(mrow + M_WIDX)  # this tensor's meta-weight set (layers stacked (K, ...), one per member)
    w1 = w1 + widx * (HID * 39)
    b1 = b1 + widx * HID
    w2 = w2 + widx * (HID * HID)
    b2 = b2 + widx * HID
    w3 = w3 + widx * (2 * HID)
    b3 = b3 + widx * 2
    slot = tl.arange(0, 32)
    chan = tl.load(perm + slot)
    # the accX/accY feature slots hold the row channels when X is d1 (d0x false), the column ones otherwise
    acc_slot = (chan >= 13) & (chan < 25)
    swap = tl.where(((chan - 13) % 6) < 3, chan + 3, chan - 3)
    src = tl.where(acc_slot & (d0x & factored), swap, chan)
    real = chan < 28
    hid = tl.arange(0, HID)
    sumsq = tl.load(wsT + WS_SUMSQ + src, mask=real, other=0.0)
    scale = tl.where(real, tl.rsqrt(sumsq / numel + EPS_NORMALIZE), 0.0)
    ti = tl.arange(0, 16)
    tau = tl.load(taus + ti, mask=ti < 11, other=1.0)
    xt_ = step_t / tau - 1.0  # tanh written out (device-function calls are slow in the interpreter)
    e = tl.exp(-2.0 * tl.abs(xt_))
    th = (1.0 - e) / (1.0 + e)
    tf = tl.where(ti < 11, tl.where(xt_ < 0.0, -th, th), 0.0)
    w1t = tl.load(w1 + hid[None, :] * 39 + 28 + ti[:, None], mask=(ti < 11)[:, None], other=0.0)
    b1f = tl.load(b1 + hid) + tl.sum(w1t * tf[:, None], axis=0)
    w1f = tl.load(w1 + hid[None, :] * 39 + src[:, None], mask=real[:, None], other=0.0) * scale[:, None]
    w1f = tl.where((chan == 28)[:, None], b1f[None, :], w1f)  # the constant-1 feature's row: the bias
    w1h, w1l = _weight_split(w1f, (chan != 28)[:, None], DOT)  # the constant-1 feature is read exactly
    w2t = tl.load(w2 + hid[None, :] * HID + _hidden_source(hid, DOT)[:, None])  # [in (reordered), out]
    w2h, w2l = _weight_split(w2t, True, DOT)
    b2v = tl.load(b2 + hid)
    o8 = tl.arange(0, 8)
    w3p = tl.load(w3 + (o8 % 2)[None, :] * HID + _hidden_source(hid, DOT)[:, None])
    w3h, w3l = _weight_split(w3p, True, DOT)
    b3d = tl.load(b3)
    b3a = tl.load(b3 + 1)

    # the tile column's new accY vectors: stored once, by the chunk at the first X position
    if factored & (xc == 0) & ok:
        tl.store(ay_p + iy, ay0.to(S_DT), mask=my)
        tl.store(ay_p + ly + iy, ay1.to(S_DT), mask=my)
        tl.store(ay_p + 2 * ly + iy, ay2.to(S_DT), mask=my)
    if (xc == 0) & (yt == 0) & (bidx == 0):  # once per tensor: the step counter or the skip counter
        okf = ok.to(tl.float32)
        sp = tl.load(prow + 6).to(tl.pointer_type(tl.float32))
        tl.store(sp, tl.load(sp) + okf)
        kp = tl.load(prow + 7).to(tl.pointer_type(tl.float32))
        tl.store(kp, tl.load(kp) + (1.0 - okf))

    # the loop over the chunk's tiles, in a copy per tensor kind (no branch on it per tile), except where the
    # two copies would not fit in the registers: with them tf32x3 with 64-bit indexing spills on sm_90 and ieee
    # (FP32 FMAs, no tensor cores) on sm_80
    if ((DOT == "tf32x3") and (IDX == tl.int64)) or (DOT == "ieee"):
        _chunk_tiles(
            factored, xc, yt, ok, n, nx, my, ix0, offy, sx_stride, xx_stride, gp, pp, vp, mp, ax_p, ws, ws_nx, lx,
            bv, cv, bm0, bm1, bm2, bf0, bf1, bf2, sx0, sx1, sx2, ay0, ay1, ay2, fy0, fy1, fy2, ry0, ry1, ry2,
            w1h, w1l, w2h, w2l, b2v, w3h, w3l, b3d, b3a, exp_mult, step_mult, lr, wd,
            P_DT, S_DT, BX, BY, NSUB, HID, DOT, IDX, False,
        )  # fmt: skip
    elif factored:
        _chunk_tiles(
            True, xc, yt, ok, n, nx, my, ix0, offy, sx_stride, xx_stride, gp, pp, vp, mp, ax_p, ws, ws_nx, lx, bv, cv,
            bm0, bm1, bm2, bf0, bf1, bf2, sx0, sx1, sx2, ay0, ay1, ay2, fy0, fy1, fy2, ry0, ry1, ry2,
            w1h, w1l, w2h, w2l, b2v, w3h, w3l, b3d, b3a, exp_mult, step_mult, lr, wd,
            P_DT, S_DT, BX, BY, NSUB, HID, DOT, IDX, True,
        )  # fmt: skip
    else:
        _chunk_tiles(
            False, xc, yt, ok, n, nx, my, ix0, offy, sx_stride, xx_stride, gp, pp, vp, mp, ax_p, ws, ws_nx, lx, bv, cv,
            bm0, bm1, bm2, bf0, bf1, bf2, sx0, sx1, sx2, ay0, ay1, ay2, fy0, fy1, fy2, ry0, ry1, ry2,
            w1h, w1l, w2h, w2l, b2v, w3h, w3l, b3d, b3a, exp_mult, step_mult, lr, wd,
            P_DT, S_DT, BX, BY, NSUB, HID, DOT, IDX, True,
        )  # fmt: skip


def lopt_apply(
    plan,
    ptrs: torch.Tensor,
    ws: torch.Tensor,
    hyper: torch.Tensor,
    decays: torch.Tensor,
    taus: torch.Tensor,
    perm: torch.Tensor,
    layers,
    exp_mult: float,
    step_mult: float,
    time_clamp: float,
    p_dt,
    g_dt,
    s_dt,
    block_x: int,
    block_y: int,
    nsub: int,
    dot: str,
) -> None:
    """Launch pass C over ``plan.chunks_c`` (chunks of ``nsub`` tiles of ``block_x × block_y``; after A, B).
    Under ``dot="tf32"`` the rank < 2 tensors (biases, norm gains: a sliver of the elements) take a launch of
    their own in "tf32x3": all 28 of their channels enter the first layer per element (a matrix's row and column
    channels 13–24 are folded per row and column in float32), and one tf32 product left their 40-step
    trajectories 1.2e-4 … 1.1e-3 of their movement away from the float64 reference (acceptance 1e-3), against
    0.8e-4 … 2.2e-4 for the matrices (see ``apply_launches``)."""
    (w1, b1), (w2, b2), (w3, b3) = layers
    for chunks, mode in apply_launches(plan, dot):
        lopt_apply_kernel[(chunks.shape[0],)](
            chunks, plan.meta, ptrs, ws, hyper, decays, taus, perm, w1, b1, w2, b2, w3, b3, exp_mult, step_mult,
            time_clamp, p_dt, g_dt, s_dt, block_x, block_y, nsub, w2.shape[-1], mode,
            tl.int64 if plan.use_int64 else tl.int32, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        )  # fmt: skip


def apply_launches(plan, dot: str) -> list[tuple[torch.Tensor, str]]:
    """(chunk table, dot mode) of each pass-C launch: one over every chunk, or under "tf32" the rank ≥ 2
    tensors' chunks in tf32 and the rank < 2 tensors' in "tf32x3" (float32 accuracy where it costs nothing:
    their elements are few), empty tables left out."""
    if dot != "tf32":
        return [(plan.chunks_c, dot)]
    matrices, vectors = plan.chunks_c_by_kind
    return [(c, mode) for c, mode in ((matrices, "tf32"), (vectors, "tf32x3")) if c.shape[0] > 0]
