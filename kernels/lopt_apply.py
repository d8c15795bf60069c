"""Pass C of the μLO step (ALGORITHM.md §2–4): features, normalization, the MLP on tensor cores, the
μP-scaled update and weight decay, writing p, m (3), v and the Adafactor accumulators.

Per tile: the 28 normalization scales fold into the first layer's weight columns and the 11 time
features (tanh(t/τ − 1)) into its bias (a few hundred FMAs per tile, against ~2,000 per element for the
MLP); the elements × 32 feature matrix is built by pairwise ``tl.join`` (column order from
``lopt_plan.join_tree_order``) and goes through ``tl.dot`` with float32 accumulation. ``DOT`` selects the
operand precision: "tf32" (default on GPU), "ieee" (exact float32), "bf16" (bf16 operands), and
"bf16_emulated" (bf16-rounded operands through a float32 dot: what the interpreter runs for "bf16"), and
"tf32_emulated" (tf32-rounded operands: to measure tf32's effect on a CPU; the interpreter runs "tf32" as
exact float32).
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
    EPS_GRAD_SQ,
    EPS_NORMALIZE,
    EPS_RMS,
    EPS_SAFE_RSQRT,
    FLAG_D0_IS_X,
    FLAG_FACTORED,
    FLAG_ROW_MEAN_GIVEN,
    M_WIDX,
    M_WN,
    M_WNX,
    M_WNY,
    M_WS_T,
    NMETA,
    WS_SUMSQ,
    WS_T,
    factor_vectors,
    safe_rsqrt,
    tile_coords,
)

NUM_WARPS = 4
DOT_MODES = ("tf32", "ieee", "bf16")


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
    z,
    SB: tl.constexpr,
):
    """(SB, 32) matrix of 28 feature vectors + 4 zero columns, by a balanced tree of joins."""
    a0 = tl.join(tl.join(tl.join(f0, f1), tl.join(f2, f3)), tl.join(tl.join(f4, f5), tl.join(f6, f7)))
    a1 = tl.join(tl.join(tl.join(f8, f9), tl.join(f10, f11)), tl.join(tl.join(f12, f13), tl.join(f14, f15)))
    a2 = tl.join(tl.join(tl.join(f16, f17), tl.join(f18, f19)), tl.join(tl.join(f20, f21), tl.join(f22, f23)))
    a3 = tl.join(tl.join(tl.join(f24, f25), tl.join(f26, f27)), tl.join(tl.join(z, z), tl.join(z, z)))
    return tl.reshape(tl.join(tl.join(a0, a1), tl.join(a2, a3)), (SB, 32))


@triton.jit
def _mm(a, b, DOT: tl.constexpr):
    if DOT == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    elif DOT == "tf32_emulated":  # operands rounded to tf32 (10-bit mantissa, nearest) through a float32 dot
        a32 = ((a.to(tl.uint32, bitcast=True) + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
        b32 = ((b.to(tl.uint32, bitcast=True) + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
        return tl.dot(a32, b32, input_precision="ieee", out_dtype=tl.float32)
    elif DOT == "bf16_emulated":
        a16 = a.to(tl.bfloat16).to(tl.float32)
        b16 = b.to(tl.bfloat16).to(tl.float32)
        return tl.dot(a16, b16, input_precision="ieee", out_dtype=tl.float32)
    else:
        return tl.dot(a, b, input_precision=DOT, out_dtype=tl.float32)


@triton.jit
def _decay_features(
    k: tl.constexpr,
    g,
    s,
    rv,
    off,
    mask,
    mx,
    my,
    ix,
    iy,
    n,
    wnx,
    wny,
    lx,
    ly,
    bidx,
    nbatch,
    factored,
    d0x,
    given,
    mp,
    ax_p,
    ws,
    wsT,
    ws_nx,
    ws_ny,
    decays,
    SB: tl.constexpr,
):
    """Decay k's features (flattened to SB): m_k, m_k·rsqrt(v+1e-6), fac_g, row, col, rsqrt(row+1e-8),
    rsqrt(col+1e-8), fac_m; and the new m_k and (rank < 2) u_k tiles to store."""
    bm = tl.load(decays + k)
    bf = tl.load(decays + 4 + k)
    m = bm * tl.load(mp + k * n + off, mask=mask, other=0.0).to(tl.float32) + (1.0 - bm) * g
    if factored:
        ax = tl.load(ws + ws_nx + k * lx + ix, mask=mx, other=1.0)
        ay = tl.load(ws + ws_ny + k * ly + iy, mask=my, other=1.0)
        fx, fy = factor_vectors(ax, ay, wsT, bidx, nbatch, k, bf, wnx, wny, d0x, given)
        facg = fx[:, None] * fy[None, :]
        facm = facg
        zero = g * 0.0
        axb = ax[:, None] + zero
        ayb = ay[None, :] + zero
        rxb = tl.rsqrt(ax + EPS_ACC_FEATURE)[:, None] + zero
        ryb = tl.rsqrt(ay + EPS_ACC_FEATURE)[None, :] + zero
        row = tl.where(d0x, ayb, axb)
        col = tl.where(d0x, axb, ayb)
        rrow = tl.where(d0x, ryb, rxb)
        rcol = tl.where(d0x, rxb, ryb)
        u = zero
    else:
        u = bf * tl.load(ax_p + k * n + off, mask=mask, other=0.0).to(tl.float32) + (1.0 - bf) * s
        facg = safe_rsqrt(u + EPS_SAFE_RSQRT)
        facm = tl.rsqrt(u + EPS_RMS)
        row = u
        col = u
        rrow = tl.rsqrt(u + EPS_ACC_FEATURE)
        rcol = rrow
    return (
        m,
        u,
        tl.reshape(m, (SB,)),
        tl.reshape(m * rv, (SB,)),
        tl.reshape(g * facg, (SB,)),
        tl.reshape(row, (SB,)),
        tl.reshape(col, (SB,)),
        tl.reshape(rrow, (SB,)),
        tl.reshape(rcol, (SB,)),
        tl.reshape(m * facm, (SB,)),
    )


@triton.jit
def lopt_apply_kernel(
    chunks, meta, ptrs, ws, hyper, decays, taus, perm, w1, b1, w2, b2, w3, b3, exp_mult, step_mult, time_clamp,
    P_DT: tl.constexpr, G_DT: tl.constexpr, S_DT: tl.constexpr, BX: tl.constexpr, BY: tl.constexpr,
    NSUB: tl.constexpr, HID: tl.constexpr, DOT: tl.constexpr, IDX: tl.constexpr,
):  # fmt: skip
    """x = 28 features · scale (scale_j = rsqrt(1e-5 + Σx_j²/n), folded into W1) ⊕ tanh(min(t, time_clamp)/τ − 1)
    (folded into b1); (d, a) = W3·relu(W2·relu(W1·x + b1) + b2) + b3; p' = p − lr·d·exp(a·exp_mult)·step_mult;
    p' −= wd·lr·p'. Stores p', m', v', u' (and the new row/col vectors) unless the tensor is non-finite.
    The layers hold K stacked meta-weight sets ((K, HID, 39), (K, HID), ...); a tensor uses set
    ``meta[M_WIDX]`` (its population member; K = 1 and index 0 for a single optimizer)."""
    SB: tl.constexpr = BX * BY
    pid = tl.program_id(0)
    tensor = tl.load(chunks + pid * 4).to(tl.int64)
    mrow = meta + tensor * NMETA  # this tensor's row of the segment table
    wsT = ws + tl.load(mrow + M_WS_T).to(IDX)
    numel = tl.load(mrow + M_WN).to(tl.float32)  # the whole tensor's (this may be a shard of it)
    wnx = tl.load(mrow + M_WNX)
    wny = tl.load(mrow + M_WNY)
    step_t = tl.minimum(tl.load(wsT + WS_T), time_clamp)  # the time features' t (time_clamp +inf: none)
    # this tensor's meta-weight set: the layers are stacked (K, ...), one set per population member
    widx = tl.load(mrow + M_WIDX)
    w1 = w1 + widx * (HID * 39)
    b1 = b1 + widx * HID
    w2 = w2 + widx * (HID * HID)
    b2 = b2 + widx * HID
    w3 = w3 + widx * (2 * HID)
    b3 = b3 + widx * 2

    # ---- fold normalization into W1's columns and the time features into b1 (once per program) ----
    slot = tl.arange(0, 32)
    chan = tl.load(perm + slot)
    real = chan < 28
    hid = tl.arange(0, HID)
    sumsq = tl.load(wsT + WS_SUMSQ + chan, mask=real, other=0.0)
    scale = tl.where(real, tl.rsqrt(sumsq / numel + EPS_NORMALIZE), 0.0)
    w1f = tl.load(w1 + hid[None, :] * 39 + chan[:, None], mask=real[:, None], other=0.0) * scale[:, None]
    ti = tl.arange(0, 16)
    tau = tl.load(taus + ti, mask=ti < 11, other=1.0)
    xt_ = step_t / tau - 1.0  # tanh written out (device-function calls are slow in the interpreter)
    e = tl.exp(-2.0 * tl.abs(xt_))
    th = (1.0 - e) / (1.0 + e)
    tf = tl.where(ti < 11, tl.where(xt_ < 0.0, -th, th), 0.0)
    w1t = tl.load(w1 + hid[None, :] * 39 + 28 + ti[:, None], mask=(ti < 11)[:, None], other=0.0)
    b1f = tl.load(b1 + hid) + tl.sum(w1t * tf[:, None], axis=0)
    w2t = tl.load(w2 + hid[None, :] * HID + hid[:, None])  # [in, out]
    w3d = tl.load(w3 + hid)
    w3a = tl.load(w3 + HID + hid)
    b3d = tl.load(b3)
    b3a = tl.load(b3 + 1)

    for sub in range(NSUB):  # NSUB tiles of BX × BY elements share the folded weights
        (t, bidx, xt, yt, n, nx, ny, nbatch, flags, off, mask, mx, my, ix, iy, lx, ly,
         ws_sx, ws_sy, ws_nx, ws_ny, ws_t) = tile_coords(chunks, meta, BX, BY, IDX, NSUB, sub)  # fmt: skip
        prow = ptrs + t.to(tl.int64) * 8  # this tensor's row of the pointer table
        ok = tl.load(wsT) == 0.0
        factored = (flags & FLAG_FACTORED) != 0
        d0x = (flags & FLAG_D0_IS_X) != 0
        given = (flags & FLAG_ROW_MEAN_GIVEN) != 0
        # ---- features ----
        pp = tl.load(prow + 0).to(tl.pointer_type(P_DT))
        g = tl.load(tl.load(prow + 1).to(tl.pointer_type(G_DT)) + off, mask=mask, other=0.0).to(tl.float32)
        p = tl.load(pp + off, mask=mask, other=0.0).to(tl.float32)
        mp = tl.load(prow + 2).to(tl.pointer_type(S_DT))
        vp = tl.load(prow + 3).to(tl.pointer_type(S_DT))
        ax_p = tl.load(prow + 4).to(tl.pointer_type(S_DT))
        bv = tl.load(decays + 3)
        v = bv * tl.load(vp + off, mask=mask, other=0.0).to(tl.float32) + tl.load(decays + 7) * g * g
        rv = tl.rsqrt(v + EPS_RMS)
        s = g * g + EPS_GRAD_SQ
        m0, u0, a0, b0, c0, d0, e0, f0, h0, i0 = _decay_features(
            0, g, s, rv, off, mask, mx, my, ix, iy, n, wnx, wny, lx, ly, bidx, nbatch, factored, d0x, given, mp, ax_p,
            ws, wsT, ws_nx, ws_ny, decays, SB,
        )  # fmt: skip
        m1, u1, a1, b1_, c1, d1, e1, f1, h1, i1 = _decay_features(
            1, g, s, rv, off, mask, mx, my, ix, iy, n, wnx, wny, lx, ly, bidx, nbatch, factored, d0x, given, mp, ax_p,
            ws, wsT, ws_nx, ws_ny, decays, SB,
        )  # fmt: skip
        m2, u2, a2, b2_, c2, d2, e2, f2, h2, i2 = _decay_features(
            2, g, s, rv, off, mask, mx, my, ix, iy, n, wnx, wny, lx, ly, bidx, nbatch, factored, d0x, given, mp, ax_p,
            ws, wsT, ws_nx, ws_ny, decays, SB,
        )  # fmt: skip
        z = tl.zeros([SB], dtype=tl.float32)
        x = _join32(
            tl.reshape(g, (SB,)), tl.reshape(p, (SB,)), a0, a1, a2, tl.reshape(v, (SB,)), b0, b1_, b2_,
            tl.reshape(rv, (SB,)), c0, c1, c2,
            d0, d1, d2, e0, e1, e2, f0, f1, f2, h0, h1, h2, i0, i1, i2, z, SB,
        )  # fmt: skip

        # ---- MLP: tensor cores with float32 accumulation ----
        h = tl.maximum(_mm(x, w1f, DOT) + b1f[None, :], 0.0)
        h = tl.maximum(_mm(h, w2t, DOT) + tl.load(b2 + hid)[None, :], 0.0)
        d = tl.sum(h * w3d[None, :], axis=1) + b3d
        a = tl.sum(h * w3a[None, :], axis=1) + b3a
        step = tl.reshape(d * tl.exp(a * exp_mult) * step_mult, (BX, BY))

        # ---- update and stores ----
        lr = tl.load(hyper + t.to(tl.int64) * 2)
        wd = tl.load(hyper + t.to(tl.int64) * 2 + 1)
        p_new = p - lr * step
        p_new = p_new - wd * lr * p_new
        st = mask & ((off * 0 + ok.to(off.dtype)) != 0)  # (scalar & tensor trips the interpreter)
        tl.store(pp + off, p_new.to(P_DT), mask=st)
        tl.store(mp + off, m0.to(S_DT), mask=st)
        tl.store(mp + n + off, m1.to(S_DT), mask=st)
        tl.store(mp + 2 * n + off, m2.to(S_DT), mask=st)
        tl.store(vp + off, v.to(S_DT), mask=st)
        if factored:
            if ok:
                ay_p = tl.load(prow + 5).to(tl.pointer_type(S_DT))
                if yt == 0:
                    for k in tl.static_range(3):
                        tl.store(ax_p + k * lx + ix, tl.load(ws + ws_nx + k * lx + ix, mask=mx).to(S_DT), mask=mx)
                if xt == 0:
                    for k in tl.static_range(3):
                        tl.store(ay_p + k * ly + iy, tl.load(ws + ws_ny + k * ly + iy, mask=my).to(S_DT), mask=my)
        else:
            tl.store(ax_p + off, u0.to(S_DT), mask=st)
            tl.store(ax_p + n + off, u1.to(S_DT), mask=st)
            tl.store(ax_p + 2 * n + off, u2.to(S_DT), mask=st)
        if (xt == 0) & (yt == 0) & (bidx == 0):
            okf = ok.to(tl.float32)
            sp = tl.load(prow + 6).to(tl.pointer_type(tl.float32))
            tl.store(sp, tl.load(sp) + okf)
            kp = tl.load(prow + 7).to(tl.pointer_type(tl.float32))
            tl.store(kp, tl.load(kp) + (1.0 - okf))


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
    """Launch pass C over ``plan.chunks_c`` (chunks of ``nsub`` tiles of ``block_x × block_y``; after A, B)."""
    (w1, b1), (w2, b2), (w3, b3) = layers
    grid = (plan.chunks_c.shape[0],)
    lopt_apply_kernel[grid](
        plan.chunks_c, plan.meta, ptrs, ws, hyper, decays, taus, perm, w1, b1, w2, b2, w3, b3, exp_mult, step_mult,
        time_clamp, p_dt, g_dt, s_dt, block_x, block_y, nsub, w2.shape[-1], dot,
        tl.int64 if plan.use_int64 else tl.int32, num_warps=NUM_WARPS,
    )  # fmt: skip
