"""An independent float64 numpy oracle of one μLO step, written element by element from docs/ALGORITHM.md.

It shares no code with mulo: its own constants, its own factored-dims rule (numpy's stable argsort), and
per-element loops for the features and the MLP. The reference backend is checked against it.
"""

import math

import numpy as np

BETA_M0, OFF_M = (0.9, 0.99, 0.999), (0.15216392, 0.14245212, 0.06812963)
BETA_V0, OFF_V = 0.999, 0.01079706
BETA_F0, OFF_F = (0.9, 0.99, 0.999), (0.18621896, -0.10864615, -0.06185547)
TAUS = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)


def decay(b0, off, clip=True):
    b = 1 - math.exp(10 * (math.log(1 - b0) / 10 + off))
    return min(max(b, 0.0), 1.0) if clip else b


BM = [decay(b, o, clip=False) for b, o in zip(BETA_M0, OFF_M)]
BV = decay(BETA_V0, OFF_V)
BF = [decay(b, o) for b, o in zip(BETA_F0, OFF_F)]


def fdims(shape):
    if len(shape) < 2:
        return None
    order = np.argsort(np.array(shape), kind="stable")
    return int(order[-2]), int(order[-1])


def new_state(shape):
    st = {"m": np.zeros((3, *shape)), "v": np.zeros(shape), "t": 0}
    d = fdims(shape)
    if d is None:
        st["u"] = np.zeros((3, *shape))
    else:
        d1, d0 = d
        st["r"] = np.zeros((3, *[s for i, s in enumerate(shape) if i != d0]))
        st["c"] = np.zeros((3, *[s for i, s in enumerate(shape) if i != d1]))
    return st


def drop(idx, axis):
    return tuple(i for a, i in enumerate(idx) if a != axis)


def step(p, g, st, layers, lr=1.0, wd=0.0, exp_mult=0.001, step_mult=0.01, nominal=None):
    """Returns (new p, new state, raw features (n, 28), normalized features, update). ``nominal`` = α adds
    the nominal term α·exp(n·exp_mult)·(Σ_k m_k/√(v + 1e-6))/3 with n the network's third output."""
    shape = p.shape
    s = g * g + 1e-30
    m = np.stack([BM[k] * st["m"][k] + (1 - BM[k]) * g for k in range(3)])
    v = BV * st["v"] + (1 - BV) * g * g
    out = {"m": m, "v": v, "t": st["t"] + 1}
    d = fdims(shape)
    if d is not None:
        d1, d0 = d
        r = np.stack([BF[k] * st["r"][k] + (1 - BF[k]) * s.mean(axis=d0) for k in range(3)])
        c = np.stack([BF[k] * st["c"][k] + (1 - BF[k]) * s.mean(axis=d1) for k in range(3)])
        out.update(r=r, c=c)
        rd1 = d1 - 1 if d1 > d0 else d1
        rmean = np.stack([r[k].mean(axis=rd1) for k in range(3)])  # r without its d1 axis
    else:
        u = np.stack([BF[k] * st["u"][k] + (1 - BF[k]) * s for k in range(3)])
        out.update(u=u)

    n = p.size
    raw = np.zeros((n, 28))
    for e, idx in enumerate(np.ndindex(*shape)):
        f = raw[e]
        f[0], f[1] = g[idx], p[idx]
        rv = 1 / math.sqrt(v[idx] + 1e-6)
        f[5], f[9] = v[idx], rv
        for k in range(3):
            f[2 + k] = m[k][idx]
            f[6 + k] = m[k][idx] * rv
            if d is not None:
                ri, ci = drop(idx, d0), drop(idx, d1)
                row, col = r[k][ri], c[k][ci]
                mean_row = rmean[k][drop(ri, rd1)]
                rf = 1 / math.sqrt(max(row / (mean_row + 1e-9), 1e-9))
                cf = 1 / math.sqrt(max(col, 1e-9))
                f[10 + k] = g[idx] * rf * cf
                f[25 + k] = m[k][idx] * rf * cf
            else:
                row = col = u[k][idx]
                f[10 + k] = g[idx] / math.sqrt(max(u[k][idx] + 1e-9, 1e-9))
                f[25 + k] = m[k][idx] * (u[k][idx] + 1e-6) ** -0.5
            f[13 + k], f[16 + k] = row, col
            f[19 + k] = 1 / math.sqrt(row + 1e-8)
            f[22 + k] = 1 / math.sqrt(col + 1e-8)
    norm = raw / np.sqrt(1e-5 + (raw**2).mean(axis=0))
    tfeat = np.array([math.tanh(st["t"] / tau - 1) for tau in TAUS])
    upd = np.zeros(n)
    for e in range(n):
        x = np.concatenate([norm[e], tfeat])
        for i, (w, b) in enumerate(layers):
            x = w @ x + b
            if i < len(layers) - 1:
                x = np.maximum(x, 0)
        upd[e] = x[0] * math.exp(x[1] * exp_mult) * step_mult
        if nominal is not None:
            adam_like = sum(m[k].reshape(-1)[e] for k in range(3)) / 3 / math.sqrt(v.reshape(-1)[e] + 1e-6)
            upd[e] += nominal * math.exp(x[2] * exp_mult) * adam_like
    upd = upd.reshape(shape)
    p_new = p - lr * upd
    if wd:
        p_new = p_new - wd * lr * p_new
    return p_new, out, raw, norm, upd
