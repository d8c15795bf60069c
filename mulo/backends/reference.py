"""The reference backend: the μLO step written as docs/ALGORITHM.md §1–3 states it, in plain PyTorch.

It is the oracle every fast backend is tested against. It runs on any device, in float64 when the
parameters (or the state) are float64 and in float32 otherwise; nothing is fused or reordered.

The step is written as the three passes of docs/ALGORITHM.md §5, because the per-tensor statistics are sums
that a tensor split across ranks (FSDP2, :mod:`mulo.distributed`) adds up between the passes:

- A  :func:`pass_a`: sums of s = g² + 1e-30 over the factored axes d0 and d1, and the count of non-finite s;
- B  :func:`channel_sumsq`: the sum of squares of each of the 28 feature channels;
- C  :func:`apply_update`: normalize (mean = sum of squares / n), the MLP, the update, the new state.

On one process the sums cover the whole tensor and the passes are exactly §1–3.
"""

from __future__ import annotations

import math

import torch

from mulo.backends.passes import States, Tensors, TensorStats
from mulo.lopt import constants as C
from mulo.lopt import spec
from mulo.lopt.network import MetaWeights
from mulo.lopt.shapes import factored_dims, math_shape, math_view, math_view_stacked

# Elements per MLP evaluation; bounds the reference's peak memory (39 + 2·32 floats per element).
MLP_CHUNK = 1 << 18


def safe_rsqrt(x: torch.Tensor) -> torch.Tensor:
    return torch.rsqrt(torch.clamp(x, min=C.EPS_SAFE_RSQRT))


def time_features(step: torch.Tensor, dtype: torch.dtype, time_clamp: float | None = None) -> torch.Tensor:
    """tanh(t/τ − 1) for the 11 timescales; ``step`` is the 0-based count of applied updates, read as
    min(t, time_clamp) when the meta-weights set a clamp (:attr:`mulo.lopt.network.LOptConfig.time_clamp`)."""
    tau = torch.tensor(C.TIMESCALES, dtype=dtype, device=step.device)
    t = step.to(dtype)
    if time_clamp is not None:
        t = torch.clamp(t, max=time_clamp)
    return torch.tanh(t / tau - 1.0)


def grad_is_finite(grad: torch.Tensor) -> torch.Tensor:
    """Device-side flag: every g² (in the compute dtype) is finite. False means the update is skipped."""
    g = grad.to(torch.float64 if grad.dtype == torch.float64 else torch.float32)
    return torch.isfinite(g * g + C.EPS_GRAD_SQ).all()


def compute_dtype(param: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.dtype:
    if param.dtype == torch.float64 or state["momentum"].dtype == torch.float64:
        return torch.float64
    return torch.float32


def _decays(values, ndim: int, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(3, *([1] * ndim))


def _without(axis: int, removed: int) -> int:
    """Index of ``axis`` once axis ``removed`` is gone (the row accumulator lacks d0)."""
    return axis - 1 if axis > removed else axis


# ---- pass A ----------------------------------------------------------------------------------------
def pass_a(
    g: torch.Tensor,
    state: dict[str, torch.Tensor],
    w: MetaWeights,
    shape: tuple[int, ...] | None = None,
    sharded_axis: int | None = None,
) -> TensorStats:
    """Pass A of one tensor (or of this rank's shard of it): sums of s = g² + 1e-30, in g's dtype.

    ``g`` is the math view in the compute dtype; ``shape`` the whole tensor's math shape (default: g's);
    ``sharded_axis`` the math axis split across ranks (None: g is the whole tensor). Returns the
    :class:`~mulo.backends.passes.TensorStats`: ``nonfinite`` (0-d: how many s are not finite) and, for
    rank ≥ 2, ``row_sum`` = Σ_{d0} s and ``col_sum`` = Σ_{d1} s; when split along d1 also ``row_acc_sum`` =
    Σ_{d1} of the new row accumulator, whose mean over d1 the row factor needs (d0 is whole on every rank
    then, so that sum is local).
    """
    shape = tuple(g.shape) if shape is None else tuple(shape)
    s = g * g + C.EPS_GRAD_SQ
    stats = TensorStats(nonfinite=(~torch.isfinite(s)).sum().to(g.dtype))
    dims = factored_dims(shape)
    if dims is None:
        return stats
    d1, d0 = dims
    stats.row_sum = s.sum(dim=d0)
    stats.col_sum = s.sum(dim=d1)
    if sharded_axis is not None and sharded_axis == d1:
        stats.row_acc_sum = row_acc_sum(new_row_accumulator(state, stats, w, shape), shape)
    return stats


def row_acc_sum(new_row: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Σ over d1 of a (shard's) new row accumulator (3, math shape without d0) of a tensor whose whole math
    shape is ``shape``: the pass-A statistic of a tensor split along d1, whose row mean needs every rank."""
    d1, d0 = factored_dims(shape)
    return new_row.sum(dim=1 + _without(d1, d0))


def new_row_accumulator(state, stats, w: MetaWeights, shape) -> torch.Tensor:
    """r_k ← β_f,k r_k + (1 − β_f,k) mean_{d0}(s), the mean being pass A's (summed) Σ_{d0} s / n_{d0}."""
    d0 = factored_dims(shape)[1]
    row_sum = stats.row_sum
    beta_f = _decays(w.adafactor_decays, row_sum.dim(), row_sum)
    return beta_f * state["row"].to(row_sum.dtype) + (1 - beta_f) * row_sum / shape[d0]


# ---- features (input of passes B and C) ------------------------------------------------------------
def features_and_state(
    g: torch.Tensor,
    p: torch.Tensor,
    state: dict[str, torch.Tensor],
    w: MetaWeights,
    stats: TensorStats | None = None,
    shape: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The 28 un-normalized feature channels (shape (28, *S)) and the new accumulators.

    ``g`` and ``p`` are in the math view and the compute dtype; ``state`` is not modified. ``stats`` are
    pass A's sums (computed here from ``g`` when not given); with a shard, pass the stats summed across
    ranks and the whole tensor's math ``shape``.
    """
    cd = g.dtype
    rank = g.dim()
    shape = tuple(g.shape) if shape is None else tuple(shape)
    if stats is None:
        stats = pass_a(g, state, w, shape)

    beta_m = _decays(w.momentum_decays, rank, g)
    beta_v = w.rms_decay

    m = beta_m * state["momentum"].to(cd) + (1 - beta_m) * g
    v = beta_v * state["second_moment"].to(cd) + (1 - beta_v) * g * g
    new = {"momentum": m, "second_moment": v}

    dims = factored_dims(shape)
    if dims is not None:
        d1, d0 = dims
        beta_f = _decays(w.adafactor_decays, rank - 1, g)
        r = new_row_accumulator(state, stats, w, shape)  # (3, S without d0)
        c = beta_f * state["col"].to(cd) + (1 - beta_f) * stats.col_sum / shape[d1]  # (3, S without d1)
        axis = 1 + _without(d1, d0)  # r's d1 axis
        if stats.row_acc_sum is not None:  # r is split along d1 across ranks: its mean comes from pass A's sums
            row_mean = (stats.row_acc_sum / shape[d1]).unsqueeze(axis)
        else:
            row_mean = r.mean(dim=axis, keepdim=True)
        row_factor = safe_rsqrt(r / (row_mean + C.EPS_SAFE_RSQRT)).unsqueeze(1 + d0)
        col_factor = safe_rsqrt(c).unsqueeze(1 + d1)
        fac_g = g * row_factor * col_factor
        row_feat = r.unsqueeze(1 + d0).expand(3, *g.shape)
        col_feat = c.unsqueeze(1 + d1).expand(3, *g.shape)
        fac_m = m * row_factor * col_factor
        new.update(row=r, col=c)
    else:
        beta_f = _decays(w.adafactor_decays, rank, g)
        u = beta_f * state["full"].to(cd) + (1 - beta_f) * (g * g + C.EPS_GRAD_SQ)
        fac_g = g * safe_rsqrt(u + C.EPS_SAFE_RSQRT)
        row_feat = col_feat = u
        fac_m = m * torch.pow(u + C.EPS_RMS, -0.5)
        new.update(full=u)

    rsqrt_v = torch.rsqrt(v + C.EPS_RMS)
    groups = {  # the channel groups of mulo/lopt/spec.py, concatenated in its order
        "g": g[None],
        "p": p[None],
        "m": m,
        "v": v[None],
        "m_rsqrt_v": m * rsqrt_v,
        "rsqrt_v": rsqrt_v[None],
        "fac_g": fac_g,
        "row": row_feat,
        "col": col_feat,
        "rsqrt_row": torch.rsqrt(row_feat + C.EPS_ACC_FEATURE),
        "rsqrt_col": torch.rsqrt(col_feat + C.EPS_ACC_FEATURE),
        "fac_m": fac_m,
    }
    return torch.cat([groups[name] for name, _, _ in spec.CHANNEL_GROUPS], dim=0), new


# ---- pass B ----------------------------------------------------------------------------------------
def channel_sumsq(x: torch.Tensor) -> torch.Tensor:
    """Pass B: Σ over the (local) elements of each channel², shape (28,)."""
    return x.square().sum(dim=tuple(range(1, x.dim())))


# ---- pass C ----------------------------------------------------------------------------------------
def normalize(x: torch.Tensor, sumsq: torch.Tensor | None = None, numel: int | None = None) -> torch.Tensor:
    """Each channel times rsqrt(1e-5 + mean over all elements of the channel²).

    The mean is ``sumsq / numel`` when pass B's sums (of the whole tensor, summed across ranks for a
    shard) are given, else it is taken over ``x``.
    """
    if sumsq is None:
        dims = tuple(range(1, x.dim()))
        return x * torch.rsqrt(C.EPS_NORMALIZE + x.square().mean(dim=dims, keepdim=True))
    scale = torch.rsqrt(C.EPS_NORMALIZE + sumsq / numel)
    return x * scale.view(-1, *([1] * (x.dim() - 1)))


def mlp(x: torch.Tensor, w: MetaWeights) -> torch.Tensor:
    for i, (weight, bias) in enumerate(w.layers):
        x = torch.nn.functional.linear(x, weight, bias)
        if i < len(w.layers) - 1:
            x = torch.relu(x)
    return x


def nominal_direction(feats: torch.Tensor) -> torch.Tensor:
    """The nominal term's direction from the un-normalized channels (28, *S): mean_k m_k / √(v + 1e-6)."""
    at = spec.CHANNEL["m_rsqrt_v"]
    return feats[at : at + 3].mean(dim=0)


def step_of(out: torch.Tensor, w: MetaWeights, nominal_dir: torch.Tensor | None = None) -> torch.Tensor:
    """The step from the network's outputs ``out`` (..., 2 or 3): d·exp(a·exp_mult)·step_mult, plus with the
    nominal term α·exp(n·exp_mult)·``nominal_dir`` (shaped like ``out[..., 0]``)."""
    step = out[..., 0] * torch.exp(out[..., 1] * w.exp_mult) * w.step_mult
    if w.nominal is not None:
        step = step + w.nominal * torch.exp(out[..., 2] * w.exp_mult) * nominal_dir
    return step


def lopt_step(
    feats: torch.Tensor, t_feats: torch.Tensor, w: MetaWeights, nominal_dir: torch.Tensor | None = None
) -> torch.Tensor:
    """``feats`` (28, *S) normalized, ``t_feats`` (11,) → the step d·exp(a·exp_mult)·step_mult, shape S.

    With the nominal term (``w.nominal`` = α) the step also gains α·exp(n·exp_mult)·``nominal_dir`` (shape S,
    :func:`nominal_direction`), n being the network's third output."""
    shape = feats.shape[1:]
    flat = feats.reshape(feats.shape[0], -1).t()  # (n, 28)
    nom = None if w.nominal is None else nominal_dir.reshape(-1)
    out = torch.empty(flat.shape[0], dtype=feats.dtype, device=feats.device)
    for start in range(0, flat.shape[0], MLP_CHUNK):
        chunk = flat[start : start + MLP_CHUNK]
        inp = torch.cat([chunk, t_feats.expand(chunk.shape[0], -1)], dim=1)  # (chunk, 39)
        part = None if nom is None else nom[start : start + MLP_CHUNK]
        out[start : start + MLP_CHUNK] = step_of(mlp(inp, w), w, part)
    return out.view(shape)


def apply_update(
    param: torch.Tensor,
    p: torch.Tensor,
    views: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    feats: torch.Tensor,
    new: dict[str, torch.Tensor],
    sumsq: torch.Tensor,
    numel: int,
    finite: torch.Tensor,
    lr: float | torch.Tensor,
    weight_decay: float,
    w: MetaWeights,
) -> None:
    """Pass C: p ← p − lr·step, p ← p − wd·lr·p, state ← new — or, where ``finite`` is False, nothing but
    ``nonfinite_skips += 1`` (a device-side ``where``, no host sync). ``param`` is the math view that
    writes go through, ``p`` its value in the compute dtype, ``views`` the state's math views."""
    t_feats = time_features(state["step"], p.dtype, w.time_clamp)
    nominal_dir = None if w.nominal is None else nominal_direction(feats)
    update = lopt_step(normalize(feats, sumsq, numel), t_feats, w, nominal_dir)
    p_new = p - lr * update
    if weight_decay != 0.0:
        p_new = p_new - weight_decay * lr * p_new
    param.copy_(torch.where(finite, p_new, p))
    for key, value in new.items():
        views[key].copy_(torch.where(finite, value, views[key].to(p.dtype)))
    state["step"].add_(finite.to(state["step"].dtype))
    state["nonfinite_skips"].add_((~finite).to(state["nonfinite_skips"].dtype))


def math_inputs(
    param: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], layout: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(param's math view, p and g in the compute dtype, the state's math views)."""
    cd = compute_dtype(param, state)
    p_view = math_view(param, layout)
    # element-wise state is stored in the parameter's shape; the math sees it through the same view
    views = {key: value for key, value in state.items() if key in ("row", "col", "full")}
    views["momentum"] = math_view_stacked(state["momentum"], layout)
    views["second_moment"] = math_view(state["second_moment"], layout)
    return p_view, p_view.to(cd), math_view(grad, layout).to(cd), views


@torch.no_grad()
def step_one(
    param: torch.Tensor,
    grad: torch.Tensor,
    state: dict[str, torch.Tensor],
    lr: float | torch.Tensor,
    weight_decay: float,
    w: MetaWeights,
) -> None:
    """One μLO update of one tensor, in place. A non-finite gradient leaves everything unchanged but
    ``state["nonfinite_skips"]`` (no host sync: the choice is a device-side ``where``). A tensor with no
    elements has nothing to update: only its step count moves (its accumulators would be means over an
    empty axis, 0/0)."""
    if param.numel() == 0:
        state["step"].add_(1.0)
        return
    p_view, p, g, views = math_inputs(param, grad, state, w.layout)
    stats = pass_a(g, views, w)  # A
    feats, new = features_and_state(g, p, views, w, stats)
    sumsq = channel_sumsq(feats)  # B
    apply_update(p_view, p, views, state, feats, new, sumsq, g.numel(), stats.nonfinite == 0, lr, weight_decay, w)


def _math_geometry(geom, layout: str) -> tuple[tuple[int, ...], int | None]:
    """A :class:`mulo.distributed.ShardGeometry` (physical axes) as (whole math shape, sharded math axis)."""
    shape = math_shape(geom.shape, layout)
    axis = geom.sharded_dim
    if axis is not None and layout == "jax" and len(geom.shape) == 2:
        axis = 1 - axis
    return shape, axis


class ReferenceBackend:
    """Pure-PyTorch μLO, one tensor at a time (the oracle).

    Besides ``step`` it exposes the three passes on shards (``pass_a``/``pass_b``/``pass_c``, the
    interface :mod:`mulo.distributed` drives for FSDP2 parameters; see ARCHITECTURE.md).
    """

    name = "reference"

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        return True

    def step(self, params: Tensors, grads: Tensors, states: States, lrs, weight_decays, weights: MetaWeights) -> None:
        for p, g, st, lr, wd in zip(params, grads, states, lrs, weight_decays, strict=True):
            step_one(p, g, st, lr, wd, weights)

    @torch.no_grad()
    def pass_a(self, params, grads, states, geoms, weights: MetaWeights) -> list[TensorStats]:
        out = []
        for param, grad, st, geom in zip(params, grads, states, geoms, strict=True):
            _, _, g, views = math_inputs(param, grad, st, weights.layout)
            out.append(pass_a(g, views, weights, *_math_geometry(geom, weights.layout)))
        return out

    @torch.no_grad()
    def pass_b(self, params, grads, states, stats, geoms, weights: MetaWeights) -> list[torch.Tensor]:
        out = []
        for param, grad, st, sa, geom in zip(params, grads, states, stats, geoms, strict=True):
            _, p, g, views = math_inputs(param, grad, st, weights.layout)
            shape, _ = _math_geometry(geom, weights.layout)
            feats, _ = features_and_state(g, p, views, weights, sa, shape)
            out.append(channel_sumsq(feats))
        return out

    @torch.no_grad()
    def pass_c(self, params, grads, states, stats, sumsqs, geoms, lrs, weight_decays, weights: MetaWeights) -> None:
        for param, grad, st, sa, sq, geom, lr, wd in zip(
            params, grads, states, stats, sumsqs, geoms, lrs, weight_decays, strict=True
        ):
            shape, _ = _math_geometry(geom, weights.layout)
            if math.prod(shape) == 0:  # as step_one: only the step count moves
                st["step"].add_(1.0)
                continue
            p_view, p, g, views = math_inputs(param, grad, st, weights.layout)
            feats, new = features_and_state(g, p, views, weights, sa, shape)
            finite = sa.nonfinite == 0
            apply_update(p_view, p, views, st, feats, new, sq, math.prod(shape), finite, lr, wd, weights)
