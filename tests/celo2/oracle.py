"""An independent float64 numpy oracle of one Celo2 step, written element by element from docs/CELO2.md.

It shares no code with mulo: its own constants, its own factored-axes rule (numpy's stable argsort), a loop
over elements for the features and the network, a loop over matrices for Newton–Schulz. The reference
(mulo/celo2/reference.py) is checked against it.
"""

import numpy as np

BM = (0.9, 0.99, 0.999)
BV = 0.95
BF = (0.9, 0.99, 0.999)
NS = (3.4445, -4.7750, 2.0315)


def fdims(shape):
    order = np.argsort(np.array(shape), kind="stable")
    return int(order[-2]), int(order[-1])


def drop(idx, axis):
    return tuple(i for a, i in enumerate(idx) if a != axis)


def new_state(shape):
    d1, d0 = fdims(shape)
    return {
        "m": np.zeros((3, *shape)),
        "v": np.zeros(shape),
        "r": np.zeros((3, *[s for i, s in enumerate(shape) if i != d0])),
        "c": np.zeros((3, *[s for i, s in enumerate(shape) if i != d1])),
    }


def accumulate(g, st):
    """New m, v, r, c (after this gradient) and the per-element row and column factors."""
    shape = g.shape
    d1, d0 = fdims(shape)
    m = np.stack([b * st["m"][k] + (1 - b) * g for k, b in enumerate(BM)])
    v = BV * st["v"] + (1 - BV) * g**2
    s = g**2 + 1e-30
    r = np.stack([b * st["r"][k] + (1 - b) * s.mean(axis=d0) for k, b in enumerate(BF)])
    c = np.stack([b * st["c"][k] + (1 - b) * s.mean(axis=d1) for k, b in enumerate(BF)])
    r_d1 = d1 - 1 if d1 > d0 else d1  # d1's axis in r[k]
    row_mean = np.stack([r[k].mean(axis=r_d1, keepdims=True) for k in range(3)])
    rf = np.zeros((3, *shape))
    cf = np.zeros((3, *shape))
    for k in range(3):
        for idx in np.ndindex(*shape):
            ri = drop(idx, d0)
            mean_idx = tuple(0 if a == r_d1 else i for a, i in enumerate(ri))
            rf[k][idx] = 1 / np.sqrt(max(r[k][ri] / (row_mean[k][mean_idx] + 1e-9), 1e-9))
            cf[k][idx] = 1 / np.sqrt(max(c[k][drop(idx, d1)], 1e-9))
    return m, v, r, c, rf, cf


def features(g, p, m, v, r, c, rf, cf):
    """(30, *S): the 14 groups of docs/CELO2.md in order, element by element."""
    shape = g.shape
    d1, d0 = fdims(shape)
    out = np.zeros((30, *shape))
    for idx in np.ndindex(*shape):
        ge, ve = g[idx], v[idx]
        rs = 1 / np.sqrt(ve + 1e-8)
        mk = [m[k][idx] for k in range(3)]
        rows = [r[k][drop(idx, d0)] for k in range(3)]
        cols = [c[k][drop(idx, d1)] for k in range(3)]
        fac = [rf[k][idx] * cf[k][idx] for k in range(3)]
        vals = [ge, min(max(ge, -0.1), 0.1), p[idx], *mk, ve, *[x * rs for x in mk], rs]
        vals += [ge * f for f in fac] + [ge * rs] + rows + cols
        vals += [1 / np.sqrt(x + 1e-8) for x in rows] + [1 / np.sqrt(x + 1e-8) for x in cols]
        vals += [x * f for x, f in zip(mk, fac)]
        out[(slice(None), *idx)] = vals
    return out


def normalize(x):
    """Each value over each slice of the last two axes: x / sqrt(1e-9 + mean x²)."""
    return x / np.sqrt(1e-9 + (x**2).mean(axis=(-2, -1), keepdims=True))


def network(x, w):
    """x (30, *S) normalized → (out, *S): per element, h = relu(Σ_i x_i · w0_i + b0), dense layers."""
    dims = [wi.shape[0] for wi in w["w0"]]
    out = np.zeros((w["dense"][-1][0].shape[1], *x.shape[1:]))
    for idx in np.ndindex(*x.shape[1:]):
        col = x[(slice(None), *idx)]
        h = w["b0"].copy()
        at = 0
        for wi, n in zip(w["w0"], dims):
            for a in range(n):
                h = h + col[at + a] * wi[a]
            at += n
        h = np.maximum(h, 0)
        for j, (W, b) in enumerate(w["dense"]):
            h = np.array([sum(h[i] * W[i, o] for i in range(W.shape[0])) + b[o] for o in range(W.shape[1])])
            if j < len(w["dense"]) - 1:
                h = np.maximum(h, 0)
        out[(slice(None), *idx)] = h
    return out


def newton_schulz(x):
    """Every matrix over the last two axes, one at a time."""
    out = np.zeros_like(x)
    a, b, c = NS
    for idx in np.ndindex(*x.shape[:-2]):
        X = x[idx]
        t = X.shape[0] > X.shape[1]
        if t:
            X = X.T
        X = X / (np.sqrt((X**2).sum()) + 1e-8)
        for _ in range(5):
            A = X @ X.T
            X = a * X + (b * A + c * A @ A) @ X
        out[idx] = X.T if t else X
    return out


def step(p, g, st, w, lr, wd, orthogonalize=True, perm=None):
    """One Celo2 step of a tensor of rank ≥ 2: returns (new p, new state, intermediates). ``perm``: the axes
    permutation the rule reads the tensor in (optax's HWIO view), None for the tensor as it is."""
    if perm is not None:
        inv = np.argsort(perm)
        p_new, new, inter = step(np.transpose(p, perm), np.transpose(g, perm), st, w, lr, wd, orthogonalize)
        return np.transpose(p_new, inv), new, inter
    g = np.clip(g, -1000, 1000)
    m, v, r, c, rf, cf = accumulate(g, st)
    feats = features(g, p, m, v, r, c, rf, cf)
    out = network(normalize(feats), w)
    d = out[0] * np.exp(out[1] * 0.0)
    s = newton_schulz(d) if orthogonalize else d
    s = normalize(s)
    p_new = p - lr * s - lr * wd * p
    return p_new, {"m": m, "v": v, "r": r, "c": c}, {"features": feats, "direction": d, "step": s}
