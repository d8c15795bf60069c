"""The Celo2 reference: docs/CELO2.md written as equations in plain PyTorch (the oracle).

Float64-capable: it computes in float64 for float64 parameters and in float32 otherwise; nothing is fused
or reordered. The optimizer (:class:`mulo.Celo2`) calls :class:`ReferenceBackend` once per (device, dtype)
with every tensor of rank ≥ 2, and :func:`adamw_step` for the rest.

Pass plan (what fused kernels implement, each pass over the tensors of one launch; S is a tensor's shape
as the rule reads it, L its last two axes, "slice" one matrix over L):

- **A** :func:`accumulate` — read g (clamped to ±1000), m, v; m_k, v, the sums of s = g² + 1e-30 over
  the factored axes d0/d1 → the new row/col accumulators and their factors; the non-finite flag of g.
- **B** :func:`feature_sumsq` — the 30 feature values' sums of squares over L, one per slice (for a 2-d
  weight: 30 numbers; groups 9–12 depend only on row/col vectors and could be summed in O(rows + cols)).
- **C** :func:`direction` — features, each scaled by rsqrt(1e-9 + sumsq / |L|), the split-input MLP
  (30 → 8 → 8 → 3, ~330 multiply-adds per element), d = out₀ · exp(out₁ · 0) → the direction, written.
- **D** :func:`newton_schulz` + :func:`step_sumsq` — with orthogonalization, 5 Newton–Schulz iterations
  on every slice, batched over all tensors whose slices have the same (oriented) shape: one chain of
  batched matrix products per shape group, never a loop per tensor; then the step's sum of squares per slice.
- **E** :func:`apply_update` — p ← p − lr·(step · rsqrt(1e-9 + sumsq / |L|) · 1 + wd·p) with p before the
  update, and the new m, v, row, col written; a tensor whose gradient is not finite keeps everything but
  its ``nonfinite_skips`` count (a device-side ``where``).

Without orthogonalization no direction is materialized: C computes d only to sum d² per slice (C+D in
one pass), and E recomputes d from the features and applies it — two passes after A and B.

The reference materializes every intermediate (features are (30, *S)) and runs A–E as separate functions;
:func:`step_group` composes them in that order.
"""

from __future__ import annotations

import dataclasses

import torch

from mulo.celo2 import spec
from mulo.celo2.network import Celo2Weights
from mulo.lopt.shapes import factored_dims

SumSq = torch.Tensor


# ---- views: the shape the rule reads ---------------------------------------------------------------------------
def axes_permutation(rank: int, axes: str) -> tuple[int, ...] | None:
    """The permutation of a parameter's axes the rule reads, or ``None`` for the parameter as it is.

    ``"io"`` reads a tensor of rank ≥ 3 as optax's HWIO: PyTorch (O, I, *spatial) → (*spatial, I, O).
    """
    if axes == "io" and rank >= 3:
        return (*range(2, rank), 1, 0)
    return None


def math_view(t: torch.Tensor, axes: str, stacked: bool = False) -> torch.Tensor:
    """The view of a parameter-shaped tensor (``stacked``: with a leading decay axis) the rule operates on;
    writes go through to the tensor."""
    perm = axes_permutation(t.dim() - stacked, axes)
    if perm is None:
        return t
    return t.permute(0, *(a + 1 for a in perm)) if stacked else t.permute(*perm)


def math_shape(shape: tuple[int, ...] | torch.Size, axes: str) -> tuple[int, ...]:
    perm = axes_permutation(len(shape), axes)
    return tuple(shape) if perm is None else tuple(shape[a] for a in perm)


def compute_dtype(param: torch.Tensor) -> torch.dtype:
    return torch.float64 if param.dtype == torch.float64 else torch.float32


def clamp_grad(grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.clamp(grad.to(dtype), -spec.GRAD_CLAMP, spec.GRAD_CLAMP)


def grad_is_finite(grad: torch.Tensor) -> torch.Tensor:
    """Device-side flag: no inf or NaN in the raw gradient (before the ±1000 clamp). False skips the update."""
    return torch.isfinite(grad).all()


def safe_rsqrt(x: torch.Tensor) -> torch.Tensor:
    return torch.rsqrt(torch.clamp(x, min=spec.EPS_SAFE_RSQRT))


def _decays(values: tuple[float, ...], ndim: int, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(len(values), *([1] * ndim))


def last2_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the last two axes, kept for broadcasting."""
    return x.mean(dim=(-2, -1), keepdim=True)


def normalize_last2(x: torch.Tensor) -> torch.Tensor:
    """x · rsqrt(1e-9 + mean of x² over the last two axes): the normalization of features and of the step."""
    return x * torch.rsqrt(spec.EPS_NORMALIZE + last2_mean(x.square()))


# ---- pass A --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Accumulators:
    """The new accumulators of one tensor (math view, compute dtype) and the Adafactor factors."""

    momentum: torch.Tensor  # (3, *S)
    second_moment: torch.Tensor  # S
    row: torch.Tensor  # (3, S without d0)
    col: torch.Tensor  # (3, S without d1)
    row_factor: torch.Tensor  # (3, *S) broadcastable: rsqrt(max(row / (mean of row over d1 + 1e-9), 1e-9))
    col_factor: torch.Tensor  # (3, *S) broadcastable: rsqrt(max(col, 1e-9))


def accumulate(g: torch.Tensor, state: dict[str, torch.Tensor]) -> Accumulators:
    """Pass A: m_k, v and the Adafactor accumulators after this gradient (``g``: clamped, math view, compute
    dtype; ``state``: math views of the old accumulators, not modified). Rank ≥ 2 only."""
    rank = g.dim()
    beta_m = _decays(spec.MOMENTUM_DECAYS, rank, g)
    m = beta_m * state["momentum"].to(g.dtype) + (1 - beta_m) * g
    v = spec.RMS_DECAY * state["second_moment"].to(g.dtype) + (1 - spec.RMS_DECAY) * g * g

    d1, d0 = factored_dims(g.shape)
    s = g * g + spec.EPS_GRAD_SQ
    beta_f = _decays(spec.ADAFACTOR_DECAYS, rank - 1, g)
    row = beta_f * state["row"].to(g.dtype) + (1 - beta_f) * s.mean(dim=d0)
    col = beta_f * state["col"].to(g.dtype) + (1 - beta_f) * s.mean(dim=d1)
    row_d1 = 1 + (d1 - 1 if d1 > d0 else d1)  # row's d1 axis (row lacks d0; axis 0 is the decay)
    row_factor = safe_rsqrt(row / (row.mean(dim=row_d1, keepdim=True) + spec.EPS_SAFE_RSQRT))
    return Accumulators(
        momentum=m,
        second_moment=v,
        row=row,
        col=col,
        row_factor=row_factor.unsqueeze(1 + d0),
        col_factor=safe_rsqrt(col).unsqueeze(1 + d1),
    )


# ---- features (inputs of passes B and C) ---------------------------------------------------------------------------
def features(g: torch.Tensor, p: torch.Tensor, acc: Accumulators) -> list[torch.Tensor]:
    """The 14 feature groups of :data:`mulo.celo2.spec.FEATURE_GROUPS`, each (width, *S), un-normalized."""
    d1, d0 = factored_dims(g.shape)
    m, v = acc.momentum, acc.second_moment
    rsqrt_v = torch.rsqrt(v + spec.EPS_RSQRT)
    row = acc.row.unsqueeze(1 + d0).expand(3, *g.shape)
    col = acc.col.unsqueeze(1 + d1).expand(3, *g.shape)
    factor = acc.row_factor * acc.col_factor
    groups = {
        "g": g[None],
        "clip_g": torch.clamp(g, -spec.FEATURE_CLIP, spec.FEATURE_CLIP)[None],
        "p": p[None],
        "m": m,
        "v": v[None],
        "m_rsqrt_v": m * rsqrt_v,
        "rsqrt_v": rsqrt_v[None],
        "fac_g": g * factor,
        "g_rsqrt_v": (g * rsqrt_v)[None],
        "row": row,
        "col": col,
        "rsqrt_row": torch.rsqrt(row + spec.EPS_RSQRT),
        "rsqrt_col": torch.rsqrt(col + spec.EPS_RSQRT),
        "fac_m": m * factor,
    }
    return [groups[name] for name, _, _ in spec.FEATURE_GROUPS]


# ---- pass B ----------------------------------------------------------------------------------------------------
def feature_sumsq(groups: list[torch.Tensor]) -> list[SumSq]:
    """Pass B: each feature value's sum of squares over the last two axes, (width, *S[:-2]) per group."""
    return [x.square().sum(dim=(-2, -1)) for x in groups]


def normalize_features(groups: list[torch.Tensor], sumsqs: list[SumSq], last2: int) -> list[torch.Tensor]:
    """Each feature value times rsqrt(1e-9 + mean over the last two axes of its square); ``last2`` = the
    number of elements in one slice over those axes."""
    return [x * torch.rsqrt(spec.EPS_NORMALIZE + sq / last2)[..., None, None] for x, sq in zip(groups, sumsqs)]


# ---- pass C ----------------------------------------------------------------------------------------------------
def network(groups: list[torch.Tensor], w: Celo2Weights) -> torch.Tensor:
    """The split-input MLP: ``groups`` each (..., width_i), feature last → (..., output_size).

    h = act(Σ_i x_i · w0_i + b0), then x · W + b per dense layer with ``act`` between (none after the last).
    """
    act = torch.relu if w.activation == "relu" else torch.tanh
    h = groups[0] @ w.w0[0]
    for x, w0 in zip(groups[1:], w.w0[1:]):
        h = h + x @ w0
    h = act(h + w.b0)
    for j, (weight, bias) in enumerate(w.dense):
        h = h @ weight + bias
        if j < len(w.dense) - 1:
            h = act(h)
    return h


def direction(groups: list[torch.Tensor], w: Celo2Weights) -> torch.Tensor:
    """Pass C: normalized feature groups (width, *S) → the direction d · exp(a · EXP_MULT), shape S."""
    out = network([x.movedim(0, -1) for x in groups], w)
    return out[..., 0] * torch.exp(out[..., 1] * spec.EXP_MULT)


# ---- pass D ----------------------------------------------------------------------------------------------------
def newton_schulz(x: torch.Tensor, steps: int = spec.NS_STEPS) -> torch.Tensor:
    """Orthogonalize every matrix over the last two axes of ``x`` (any leading batch axes): transpose when
    rows > cols, X ← X / (‖X‖_F + 1e-8), ``steps`` times A = X Xᵀ, X ← a X + (b A + c A²) X, transpose back.
    One chain of batched matrix products for the whole batch."""
    a, b, c = spec.NS_COEFFS
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + spec.EPS_NEWTON_SCHULZ)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.mT if transposed else x


def step_sumsq(step: torch.Tensor) -> SumSq:
    """Pass D's statistic: the step's sum of squares over the last two axes, one per slice."""
    return step.square().sum(dim=(-2, -1))


# ---- pass E ----------------------------------------------------------------------------------------------------
def apply_update(
    param: torch.Tensor,
    p: torch.Tensor,
    views: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    step: torch.Tensor,
    sumsq: SumSq,
    acc: Accumulators,
    finite: torch.Tensor,
    lr: float | torch.Tensor,
    weight_decay: float,
) -> None:
    """Pass E: p ← p − lr · (RMS-normalized step · RMS_MULT + wd · p), the accumulators written — or, where
    ``finite`` is False, only ``nonfinite_skips += 1`` (device-side, no host sync). ``param`` is the math view
    writes go through, ``p`` its value before the update in the compute dtype, ``views`` the state's views."""
    last2 = step.shape[-2] * step.shape[-1]
    update = step * torch.rsqrt(spec.EPS_NORMALIZE + sumsq / last2)[..., None, None] * spec.RMS_MULT
    new = {key: getattr(acc, key) for key in ("momentum", "second_moment", "row", "col")}
    commit(param, p, p - lr * (update + weight_decay * p), views, new, state, finite)


def commit(param, p, p_new, views, new, state, finite: torch.Tensor) -> None:
    """Write a tensor's update where ``finite`` (a device-side flag) holds: the parameter, each state view
    ``views[key] ← new[key]`` and ``step += 1``; otherwise only ``nonfinite_skips += 1``. No host sync."""
    param.copy_(torch.where(finite, p_new, p))
    for key, value in new.items():
        views[key].copy_(torch.where(finite, value, views[key].to(value.dtype)))
    state["step"].add_(finite.to(state["step"].dtype))
    state["nonfinite_skips"].add_((~finite).to(state["nonfinite_skips"].dtype))


# ---- one step of a list of tensors --------------------------------------------------------------------------------
@dataclasses.dataclass
class _Prepared:
    param: torch.Tensor
    p: torch.Tensor
    views: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    acc: Accumulators
    finite: torch.Tensor
    direction: torch.Tensor
    lr: float | torch.Tensor
    weight_decay: float


def state_views(state: dict[str, torch.Tensor], axes: str) -> dict[str, torch.Tensor]:
    """Math views of a learned-rule state (momentum and second moment are stored in the parameter's shape,
    row/col in the math shape)."""
    return {
        "momentum": math_view(state["momentum"], axes, stacked=True),
        "second_moment": math_view(state["second_moment"], axes),
        "row": state["row"],
        "col": state["col"],
    }


def prepare(param, grad, state, lr, weight_decay, w: Celo2Weights, axes: str) -> _Prepared:
    """Passes A, B and C of one tensor: its accumulators, features, normalization and direction."""
    cd = compute_dtype(param)
    p_view, views = math_view(param, axes), state_views(state, axes)
    g, p = clamp_grad(math_view(grad, axes), cd), p_view.to(cd)
    finite = grad_is_finite(grad)
    acc = accumulate(g, views)  # A
    groups = features(g, p, acc)
    sumsqs = feature_sumsq(groups)  # B
    d = direction(normalize_features(groups, sumsqs, g.shape[-2] * g.shape[-1]), w)  # C
    d = torch.where(finite, d, torch.zeros((), dtype=cd, device=d.device))  # a skipped tensor's NaNs stay out of D
    return _Prepared(p_view, p, views, state, acc, finite, d, lr, weight_decay)


def matrix_key(shape: tuple[int, ...] | torch.Size) -> tuple[int, int]:
    """The shape of a tensor's slices as Newton–Schulz runs them (rows ≤ cols): the batching key."""
    r, c = shape[-2], shape[-1]
    return (c, r) if r > c else (r, c)


def _as_matrices(d: torch.Tensor) -> torch.Tensor:
    m = d.reshape(-1, d.shape[-2], d.shape[-1])
    return m.mT if d.shape[-2] > d.shape[-1] else m


def _from_matrices(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    m = m.mT if like.shape[-2] > like.shape[-1] else m
    return m.reshape(like.shape)


def orthogonalize_groups(directions: list[torch.Tensor]) -> list[torch.Tensor]:
    """Pass D's Newton–Schulz: the directions' slices stacked per :func:`matrix_key` (and device, dtype) and
    orthogonalized by one :func:`newton_schulz` call per group; returned in the input order and shapes."""
    groups: dict[tuple, list[int]] = {}
    for i, d in enumerate(directions):
        groups.setdefault((d.device, d.dtype, matrix_key(d.shape)), []).append(i)
    out: list[torch.Tensor] = [None] * len(directions)  # type: ignore[list-item]
    for idx in groups.values():
        stacked = torch.cat([_as_matrices(directions[i]) for i in idx])
        done = newton_schulz(stacked)
        sizes = [directions[i].numel() // (stacked.shape[-2] * stacked.shape[-1]) for i in idx]
        for i, part in zip(idx, done.split(sizes)):
            out[i] = _from_matrices(part, directions[i])
    return out


@torch.no_grad()
def step_group(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict[str, torch.Tensor]],
    lrs: list[float | torch.Tensor],
    weight_decays: list[float],
    w: Celo2Weights,
    *,
    orthogonalize: bool = True,
    axes: str = "last2",
) -> None:
    """One Celo2 step of tensors of rank ≥ 2, in place: A–C per tensor, D per shape group, E per tensor.
    A tensor without elements has nothing to update: only its step count moves."""
    prepared = []
    for param, grad, state, lr, wd in zip(params, grads, states, lrs, weight_decays, strict=True):
        if param.numel() == 0:
            state["step"].add_(1.0)
            continue
        prepared.append(prepare(param, grad, state, lr, wd, w, axes))
    steps = [t.direction for t in prepared]
    if orthogonalize:
        steps = orthogonalize_groups(steps)  # D
    for t, s in zip(prepared, steps):
        apply_update(t.param, t.p, t.views, t.state, s, step_sumsq(s), t.acc, t.finite, t.lr, t.weight_decay)  # D, E


class ReferenceBackend:
    """Pure-PyTorch Celo2 (the oracle): ``step`` takes tensors of rank ≥ 2 on one device in one dtype."""

    name = "reference"

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        return True

    def step(self, params, grads, states, lrs, weight_decays, weights: Celo2Weights, *, orthogonalize, axes) -> None:
        step_group(params, grads, states, lrs, weight_decays, weights, orthogonalize=orthogonalize, axes=axes)


# ---- the AdamW route (rank ≤ 1 and embedding groups) ---------------------------------------------------------------
@torch.no_grad()
def adamw_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    state: dict[str, torch.Tensor],
    lr: float | torch.Tensor,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """One AdamW update of one tensor, in place, with the operations (and their order) of
    ``torch.optim.AdamW(foreach=False)``: decoupled decay ``p · (1 − lr · wd)``, then
    ``p − lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + eps)``. The gradient is clamped to ±1000 first; the bias
    corrections are computed on the device from ``state["step"]`` (no host sync); a non-finite gradient
    leaves everything but ``nonfinite_skips``."""
    if param.numel() == 0:
        state["step"].add_(1.0)
        return
    beta1, beta2 = betas
    cd = compute_dtype(param)
    g, p = clamp_grad(grad, cd), param.to(cd)
    finite = grad_is_finite(grad)
    t = (state["step"] + 1).to(torch.float64)
    bias1 = 1 - torch.pow(beta1, t)
    bias2_sqrt = torch.pow(1 - torch.pow(beta2, t), torch.tensor(0.5, dtype=torch.float64, device=t.device))
    m = state["exp_avg"].to(cd).lerp(g, 1 - beta1)
    v = state["exp_avg_sq"].to(cd).mul(beta2).addcmul(g, g, value=1 - beta2)
    p_new = p.mul(1 - lr * weight_decay) if weight_decay != 0 else p
    step_size = torch.as_tensor(lr, dtype=torch.float64, device=t.device) / bias1  # (a Python lr / tensor would
    # multiply by the reciprocal: one more rounding than torch's host-side lr / bias_correction1). Both scalars
    # are rounded to the compute dtype as torch rounds its host-side values: against a 0-d parameter a float64
    # 0-d tensor would otherwise promote the arithmetic to float64
    p_new = p_new + (-step_size).to(cd) * m / (v.sqrt() / bias2_sqrt.to(cd)).add(eps)
    commit(param, p, p_new, state, {"exp_avg": m, "exp_avg_sq": v}, state, finite)


def learned_state_shapes(shape: tuple[int, ...] | torch.Size, axes: str) -> dict[str, tuple[int, ...]]:
    """Shapes of a learned-rule state: momentum/second moment in the parameter's shape, row/col in the math
    shape (the Adafactor rule of mulo.lopt.shapes, on the shape the rule reads)."""
    from mulo.lopt.shapes import accumulator_shapes

    return {
        "step": (),
        "momentum": (3, *shape),
        "second_moment": tuple(shape),
        "nonfinite_skips": (),
        **accumulator_shapes(math_shape(shape, axes)),
    }


def adamw_state_shapes(shape: tuple[int, ...] | torch.Size) -> dict[str, tuple[int, ...]]:
    return {"step": (), "exp_avg": tuple(shape), "exp_avg_sq": tuple(shape), "nonfinite_skips": ()}


def init_state(shape, adamw: bool, axes: str, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """Zero state of one parameter: ``step`` and ``nonfinite_skips`` float32 0-d, the rest in ``dtype``."""
    shapes = adamw_state_shapes(shape) if adamw else learned_state_shapes(shape, axes)
    return {
        k: torch.zeros(s, dtype=torch.float32 if k in ("step", "nonfinite_skips") else dtype, device=device)
        for k, s in shapes.items()
    }
