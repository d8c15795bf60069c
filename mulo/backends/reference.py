"""The reference backend: the μLO step written as ALGORITHM.md §1–3 states it, in plain PyTorch.

It is the oracle every fast backend is tested against. It runs on any device, in float64 when the
parameters (or the state) are float64 and in float32 otherwise; nothing is fused or reordered.
"""

from __future__ import annotations

import torch

from mulo.lopt import constants as C
from mulo.lopt.network import MetaWeights
from mulo.lopt.shapes import factored_dims, math_view, math_view_stacked

# Elements per MLP evaluation; bounds the reference's peak memory (39 + 2·32 floats per element).
MLP_CHUNK = 1 << 18


def safe_rsqrt(x: torch.Tensor) -> torch.Tensor:
    return torch.rsqrt(torch.clamp(x, min=C.EPS_SAFE_RSQRT))


def time_features(step: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """tanh(t/τ − 1) for the 11 timescales; ``step`` is the 0-based count of applied updates."""
    tau = torch.tensor(C.TIMESCALES, dtype=dtype, device=step.device)
    return torch.tanh(step.to(dtype) / tau - 1.0)


def grad_is_finite(grad: torch.Tensor) -> torch.Tensor:
    """Device-side flag: every g² (in the compute dtype) is finite. False means the update is skipped."""
    g = grad.to(torch.float64 if grad.dtype == torch.float64 else torch.float32)
    return torch.isfinite(g * g + C.EPS_GRAD_SQ).all()


def compute_dtype(param: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.dtype:
    if param.dtype == torch.float64 or state["momentum"].dtype == torch.float64:
        return torch.float64
    return torch.float32


def features_and_state(
    g: torch.Tensor, p: torch.Tensor, state: dict[str, torch.Tensor], w: MetaWeights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The 28 un-normalized feature channels (shape (28, *S)) and the new accumulators.

    ``g`` and ``p`` are in the math view and the compute dtype; ``state`` is not modified.
    """
    cd = g.dtype
    shape = g.shape
    rank = g.dim()

    def decays(values, ndim):
        return torch.tensor(values, dtype=cd, device=g.device).view(3, *([1] * ndim))

    beta_m = decays(w.momentum_decays, rank)
    beta_f = decays(w.adafactor_decays, rank)
    beta_v = w.rms_decay

    m = beta_m * state["momentum"].to(cd) + (1 - beta_m) * g
    v = beta_v * state["second_moment"].to(cd) + (1 - beta_v) * g * g
    s = g * g + C.EPS_GRAD_SQ
    new = {"momentum": m, "second_moment": v}

    dims = factored_dims(shape)
    if dims is not None:
        d1, d0 = dims
        beta_f = decays(w.adafactor_decays, rank - 1)
        r = beta_f * state["row"].to(cd) + (1 - beta_f) * s.mean(dim=d0)  # (3, S without d0)
        c = beta_f * state["col"].to(cd) + (1 - beta_f) * s.mean(dim=d1)  # (3, S without d1)
        reduced_d1 = d1 - 1 if d1 > d0 else d1
        row_mean = r.mean(dim=1 + reduced_d1, keepdim=True)
        row_factor = safe_rsqrt(r / (row_mean + C.EPS_SAFE_RSQRT)).unsqueeze(1 + d0)
        col_factor = safe_rsqrt(c).unsqueeze(1 + d1)
        fac_g = g * row_factor * col_factor
        row_feat = r.unsqueeze(1 + d0).expand(3, *shape)
        col_feat = c.unsqueeze(1 + d1).expand(3, *shape)
        fac_m = m * row_factor * col_factor
        new.update(row=r, col=c)
    else:
        u = beta_f * state["full"].to(cd) + (1 - beta_f) * s
        fac_g = g * safe_rsqrt(u + C.EPS_SAFE_RSQRT)
        row_feat = col_feat = u
        fac_m = m * torch.pow(u + C.EPS_RMS, -0.5)
        new.update(full=u)

    rsqrt_v = torch.rsqrt(v + C.EPS_RMS)
    channels = [
        g[None],  # 0
        p[None],  # 1
        m,  # 2–4
        v[None],  # 5
        m * rsqrt_v,  # 6–8
        rsqrt_v[None],  # 9
        fac_g,  # 10–12
        row_feat,  # 13–15
        col_feat,  # 16–18
        torch.rsqrt(row_feat + C.EPS_ACC_FEATURE),  # 19–21
        torch.rsqrt(col_feat + C.EPS_ACC_FEATURE),  # 22–24
        fac_m,  # 25–27
    ]
    return torch.cat(channels, dim=0), new


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Each channel times rsqrt(1e-5 + mean over all elements of the channel²)."""
    dims = tuple(range(1, x.dim()))
    return x * torch.rsqrt(C.EPS_NORMALIZE + x.square().mean(dim=dims, keepdim=True))


def mlp(x: torch.Tensor, w: MetaWeights) -> torch.Tensor:
    for i, (weight, bias) in enumerate(w.layers):
        x = torch.nn.functional.linear(x, weight, bias)
        if i < len(w.layers) - 1:
            x = torch.relu(x)
    return x


def lopt_step(feats: torch.Tensor, t_feats: torch.Tensor, w: MetaWeights) -> torch.Tensor:
    """``feats`` (28, *S) normalized, ``t_feats`` (11,) → the step d·exp(a·exp_mult)·step_mult, shape S."""
    shape = feats.shape[1:]
    flat = feats.reshape(feats.shape[0], -1).t()  # (n, 28)
    out = torch.empty(flat.shape[0], dtype=feats.dtype, device=feats.device)
    for start in range(0, flat.shape[0], MLP_CHUNK):
        chunk = flat[start : start + MLP_CHUNK]
        inp = torch.cat([chunk, t_feats.expand(chunk.shape[0], -1)], dim=1)  # (chunk, 39)
        d, a = mlp(inp, w).unbind(dim=1)
        out[start : start + MLP_CHUNK] = d * torch.exp(a * w.exp_mult) * w.step_mult
    return out.view(shape)


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
    ``state["nonfinite_skips"]`` (no host sync: the choice is a device-side ``where``)."""
    cd = compute_dtype(param, state)
    layout = w.layout
    p_view = math_view(param, layout)
    p = p_view.to(cd)
    g = math_view(grad, layout).to(cd)
    # element-wise state is stored in the parameter's shape; the math sees it through the same view
    views = {key: value for key, value in state.items() if key in ("row", "col", "full")}
    views["momentum"] = math_view_stacked(state["momentum"], layout)
    views["second_moment"] = math_view(state["second_moment"], layout)

    feats, new = features_and_state(g, p, views, w)
    update = lopt_step(normalize(feats), time_features(state["step"], cd), w)
    p_new = p - lr * update
    if weight_decay != 0.0:
        p_new = p_new - weight_decay * lr * p_new

    finite = grad_is_finite(g)
    p_view.copy_(torch.where(finite, p_new, p))
    for key, value in new.items():
        views[key].copy_(torch.where(finite, value, views[key].to(cd)))
    state["step"].add_(finite.to(state["step"].dtype))
    state["nonfinite_skips"].add_((~finite).to(state["nonfinite_skips"].dtype))


class ReferenceBackend:
    """Pure-PyTorch μLO, one tensor at a time (the oracle)."""

    name = "reference"

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        return True

    def step(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        states: list[dict[str, torch.Tensor]],
        lrs: list[float],
        weight_decays: list[float],
        weights: MetaWeights,
    ) -> None:
        for p, g, st, lr, wd in zip(params, grads, states, lrs, weight_decays, strict=True):
            step_one(p, g, st, lr, wd, weights)
