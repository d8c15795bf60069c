"""The batched population entry point: M optimizees, each with its own meta-weights, in one call.

PES meta-training (ALGORITHM.md §7) trains the 2N perturbed optimizees of an estimator at once. Member
``j`` of the population has its own meta-weights θ_j (θ ± ε_i), its own accumulators and step counter, and
its own per-tensor normalization statistics. This module defines what that call means, in plain PyTorch:

    population_step(params, grads, states, lrs, weight_decays, weights)    # in place, no host sync

- ``params[i]``, ``grads[i]``: shape ``(M, *S_i)`` — tensor ``i`` of every member, stacked on a leading
  population axis (one device, one dtype).
- ``states[i]``: :func:`init_population_state`'s dict, every entry with the leading axis ``M``:
  ``step`` (M,), ``nonfinite_skips`` (M,), ``momentum`` (M, 3, *P), ``second_moment`` (M, *P),
  ``row``/``col`` (M, 3, …) or ``full`` (M, 3, *P) — member ``j``'s slice ``[j]`` is exactly the single
  optimizer's state of :mod:`mulo.backends.reference` (the backend contract in ARCHITECTURE.md).
- ``lrs[i]``: a Python float shared by the members, or a sequence of M floats (member j's tensor ``i`` steps
  with ``lrs[i][j]``: per-member learning-rate schedules); μP lr_scale already applied.
- ``weight_decays[i]``: a Python float shared by the members.
- ``weights``: :class:`PopulationMetaWeights`, the meta-network layers with a leading axis ``M``.

Semantics: identical to calling ``mulo.backends.reference.step_one`` on each member alone with
``weights.member(j)`` — every reduction (Adafactor row/col means, the 28 per-channel second moments, the
non-finite check) is per member and per tensor, never across members. The implementation below is
vectorized over the population axis (batched matmuls for the meta-network), which is what makes it usable
for meta-training; fused kernels implement the same contract with segment tables that carry a
meta-weight index per segment.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence

import torch

from mulo.backends import reference
from mulo.backends.passes import States, Tensors
from mulo.backends.reference import safe_rsqrt
from mulo.lopt import constants as C
from mulo.lopt import spec
from mulo.lopt.network import META_SCALARS, MetaWeights, meta_scalars
from mulo.lopt.shapes import accumulator_shapes, factored_dims, math_shape, physical_shape

# Rows (elements × members) per batched MLP evaluation: small enough that the hidden activations stay in
# cache (measured on CPU: 2^14 rows is ~2× faster than 2^18). Changes no value, only the chunking.
POPULATION_MLP_CHUNK = 1 << 14


def member_lr(lr, j: int, members: int) -> float:
    """Member ``j``'s learning rate from ``lrs[i]``: a float shared by the ``members``, or one per member."""
    if isinstance(lr, numbers.Real) or (isinstance(lr, torch.Tensor) and lr.dim() == 0):
        return float(lr)
    if len(lr) != members:
        raise ValueError(f"population_step: a per-member lr needs one float per member ({members}), got {len(lr)}")
    return float(lr[j])


@dataclasses.dataclass(frozen=True)
class PopulationMetaWeights(MetaWeights):
    """Meta-weights of M members: ``layers`` = ((W (M, out, in), b (M, out)), ...); the scalars (decays,
    multipliers, layout: :data:`mulo.lopt.network.META_SCALARS`) are shared."""

    @property
    def size(self) -> int:
        return self.layers[0][0].shape[0]

    def member(self, j: int) -> MetaWeights:
        """Member ``j``'s meta-weights as the single-optimizer backends take them."""
        return MetaWeights(layers=tuple((w[j], b[j]) for w, b in self.layers), **meta_scalars(self))

    @classmethod
    def stack(cls, members: Sequence[MetaWeights]) -> PopulationMetaWeights:
        """Stack single meta-weights that share every scalar (decays, multipliers, layout)."""
        if not members:
            raise ValueError("PopulationMetaWeights.stack needs at least one member")
        first = members[0]
        for j, w in enumerate(members):
            for f in META_SCALARS:
                if getattr(w, f) != getattr(first, f):
                    raise ValueError(f"member {j} has {f}={getattr(w, f)!r}, member 0 has {getattr(first, f)!r}")
        layers = tuple(
            (torch.stack([w.layers[k][0] for w in members]), torch.stack([w.layers[k][1] for w in members]))
            for k in range(len(first.layers))
        )
        return cls(layers=layers, **meta_scalars(first))


def init_population_state(
    param: torch.Tensor, layout: str = "torch", dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Zero state for a population parameter ``param`` of shape (M, *S) (fresh optimizers)."""
    m = param.shape[0]
    shape = tuple(param.shape[1:])
    dt = dtype or (torch.float64 if param.dtype == torch.float64 else torch.float32)
    dev = param.device
    state = {
        "step": torch.zeros(m, dtype=torch.float32, device=dev),
        "momentum": torch.zeros((m, 3, *physical_shape(shape)), dtype=dt, device=dev),
        "second_moment": torch.zeros((m, *physical_shape(shape)), dtype=dt, device=dev),
        "nonfinite_skips": torch.zeros(m, dtype=torch.float32, device=dev),
    }
    for key, acc in accumulator_shapes(math_shape(shape, layout)).items():
        state[key] = torch.zeros((m, *acc), dtype=dt, device=dev)
    return state


def _math_view(t: torch.Tensor, layout: str) -> torch.Tensor:
    """Per-member math view of a (M, *S) tensor: 0-d members as (M, 1), JAX layout transposes 2-d."""
    if t.dim() == 1:
        return t.view(t.shape[0], 1)
    if layout == "jax" and t.dim() == 3:
        return t.transpose(1, 2)
    return t


def _math_view_stacked(t: torch.Tensor, layout: str) -> torch.Tensor:
    """Per-member math view of a (M, 3, *P) tensor."""
    if layout == "jax" and t.dim() == 4:
        return t.transpose(2, 3)
    return t


def features_and_state(
    g: torch.Tensor, p: torch.Tensor, state: dict[str, torch.Tensor], w: PopulationMetaWeights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The 28 un-normalized channels per member, shape (M, 28, *S), and the new accumulators.

    ``g``, ``p``: (M, *S) in the math view and the compute dtype. Each member's math is
    :func:`mulo.backends.reference.features_and_state`; every mean is taken inside one member.
    """
    cd = g.dtype
    n_members, shape = g.shape[0], tuple(g.shape[1:])
    rank = len(shape)

    def decays(values, ndim):
        return torch.tensor(values, dtype=cd, device=g.device).view(1, 3, *([1] * ndim))

    beta_m = decays(w.momentum_decays, rank)
    beta_v = w.rms_decay
    gs = g.unsqueeze(1)  # (M, 1, *S): broadcasts against the 3 decays

    m = beta_m * state["momentum"].to(cd) + (1 - beta_m) * gs
    v = beta_v * state["second_moment"].to(cd) + (1 - beta_v) * g * g
    s = g * g + C.EPS_GRAD_SQ
    new = {"momentum": m, "second_moment": v}

    dims = factored_dims(shape)
    if dims is not None:
        d1, d0 = dims
        beta_f = decays(w.adafactor_decays, rank - 1)
        r = beta_f * state["row"].to(cd) + (1 - beta_f) * s.mean(dim=1 + d0).unsqueeze(1)
        c = beta_f * state["col"].to(cd) + (1 - beta_f) * s.mean(dim=1 + d1).unsqueeze(1)
        reduced_d1 = d1 - 1 if d1 > d0 else d1
        row_mean = r.mean(dim=2 + reduced_d1, keepdim=True)
        row_factor = safe_rsqrt(r / (row_mean + C.EPS_SAFE_RSQRT)).unsqueeze(2 + d0)
        col_factor = safe_rsqrt(c).unsqueeze(2 + d1)
        fac_g = gs * row_factor * col_factor
        row_feat = r.unsqueeze(2 + d0).expand(n_members, 3, *shape)
        col_feat = c.unsqueeze(2 + d1).expand(n_members, 3, *shape)
        fac_m = m * row_factor * col_factor
        new.update(row=r, col=c)
    else:
        beta_f = decays(w.adafactor_decays, rank)
        u = beta_f * state["full"].to(cd) + (1 - beta_f) * s.unsqueeze(1)
        fac_g = gs * safe_rsqrt(u + C.EPS_SAFE_RSQRT)
        row_feat = col_feat = u
        fac_m = m * torch.pow(u + C.EPS_RMS, -0.5)
        new.update(full=u)

    rsqrt_v = torch.rsqrt(v + C.EPS_RMS).unsqueeze(1)
    channels = [
        gs,  # 0
        p.unsqueeze(1),  # 1
        m,  # 2–4
        v.unsqueeze(1),  # 5
        m * rsqrt_v,  # 6–8
        rsqrt_v,  # 9
        fac_g,  # 10–12
        row_feat,  # 13–15
        col_feat,  # 16–18
        torch.rsqrt(row_feat + C.EPS_ACC_FEATURE),  # 19–21
        torch.rsqrt(col_feat + C.EPS_ACC_FEATURE),  # 22–24
        fac_m,  # 25–27
    ]
    return torch.cat(channels, dim=1), new


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(M, 28, *S): each member's channel times rsqrt(1e-5 + its mean over the tensor's elements of x²)."""
    dims = tuple(range(2, x.dim()))
    return x * torch.rsqrt(C.EPS_NORMALIZE + x.square().mean(dim=dims, keepdim=True))


def time_features(step: torch.Tensor, dtype: torch.dtype, time_clamp: float | None = None) -> torch.Tensor:
    """(M,) step counts → (M, 11) tanh(min(t, time_clamp)/τ − 1)."""
    return reference.time_features(step.unsqueeze(1), dtype, time_clamp)


def lopt_step(
    feats: torch.Tensor, t_feats: torch.Tensor, w: PopulationMetaWeights, nominal_dir: torch.Tensor | None = None
) -> torch.Tensor:
    """(M, 28, *S) normalized features and (M, 11) time features → each member's step, (M, *S); with the
    nominal term (``w.nominal``) ``nominal_dir`` (M, *S) is its direction, mean_k m_k / √(v + 1e-6)."""
    n_members, shape = feats.shape[0], feats.shape[2:]
    flat = feats.reshape(n_members, feats.shape[1], -1).transpose(1, 2)  # (M, n, 28)
    nom = None if w.nominal is None else nominal_dir.reshape(n_members, -1)
    n = flat.shape[1]
    out = torch.empty(n_members, n, dtype=feats.dtype, device=feats.device)
    chunk = max(1, POPULATION_MLP_CHUNK // n_members)
    n_feat = feats.shape[1]
    inp = torch.empty(n_members, min(chunk, n), n_feat + t_feats.shape[1], dtype=feats.dtype, device=feats.device)
    inp[:, :, n_feat:] = t_feats.unsqueeze(1)  # the time features are the same for every element
    for start in range(0, n, chunk):
        part = flat[:, start : start + chunk]
        x = inp[:, : part.shape[1]]
        x[:, :, :n_feat] = part  # (M, c, 39): the reference's concatenation, written in place
        for i, (weight, bias) in enumerate(w.layers):
            x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
            if i < len(w.layers) - 1:
                x = x.relu_()
        part = None if nom is None else nom[:, start : start + chunk]
        out[:, start : start + chunk] = reference.step_of(x, w, part)
    return out.view(n_members, *shape)


@torch.no_grad()
def step_tensor(
    param: torch.Tensor,
    grad: torch.Tensor,
    state: dict[str, torch.Tensor],
    lr: float | Sequence[float],
    weight_decay: float,
    w: PopulationMetaWeights,
) -> None:
    """One μLO update of tensor ``param`` (M, *S) of every member, in place (``lr``: shared or one per member)."""
    if param.shape[0] != w.size or grad.shape != param.shape:
        raise ValueError(
            f"population_step: param {tuple(param.shape)} and grad {tuple(grad.shape)} must share the "
            f"leading population axis of the meta-weights (M = {w.size})"
        )
    cd = torch.float64 if param.dtype == torch.float64 or state["momentum"].dtype == torch.float64 else torch.float32
    layout = w.layout
    p_view = _math_view(param, layout)
    p = p_view.to(cd)
    g = _math_view(grad, layout).to(cd)
    views = {key: value for key, value in state.items() if key in ("row", "col", "full")}
    views["momentum"] = _math_view_stacked(state["momentum"], layout)
    views["second_moment"] = _math_view(state["second_moment"], layout)

    feats, new = features_and_state(g, p, views, w)
    at = spec.CHANNEL["m_rsqrt_v"]
    nominal_dir = None if w.nominal is None else feats[:, at : at + 3].mean(dim=1)
    update = lopt_step(normalize(feats), time_features(state["step"], cd, w.time_clamp), w, nominal_dir)
    if not isinstance(lr, numbers.Real):  # one per member, broadcast over each member's elements
        lrs = [member_lr(lr, j, w.size) for j in range(w.size)]
        lr = torch.tensor(lrs, dtype=cd, device=p.device).view(-1, *([1] * (p.dim() - 1)))
    p_new = p - lr * update
    if weight_decay != 0.0:
        p_new = p_new - weight_decay * lr * p_new

    finite = torch.isfinite(g * g + C.EPS_GRAD_SQ).flatten(1).all(dim=1)  # (M,): per member

    def per_member(t: torch.Tensor) -> torch.Tensor:
        return finite.view(-1, *([1] * (t.dim() - 1)))

    p_view.copy_(torch.where(per_member(p_new), p_new, p))
    for key, value in new.items():
        views[key].copy_(torch.where(per_member(value), value, views[key].to(cd)))
    state["step"].add_(finite.to(state["step"].dtype))
    state["nonfinite_skips"].add_((~finite).to(state["nonfinite_skips"].dtype))


def population_step(
    params: Tensors, grads: Tensors, states: States, lrs, weight_decays, weights: PopulationMetaWeights
):
    """One μLO step of every member of a population (see the module docstring), in place."""
    for p, g, st, lr, wd in zip(params, grads, states, lrs, weight_decays, strict=True):
        step_tensor(p, g, st, lr, wd, weights)


def backend_population_step(
    backend: str = "reference", device: torch.device | str = "cpu", requires: frozenset[str] = frozenset()
):
    """The population entry point of ``backend``: one call steps every member (per-member lrs accepted).
    ``requires``: capabilities the meta-weights need (``{"nominal"}`` for the nominal term's network).

    ``"reference"`` is :func:`population_step` (vectorized over the members); ``"auto"`` picks the best
    backend available on ``device``. A backend declaring the ``"population"`` capability (``"cpu"``,
    ``"triton"``) runs all members in one call per pass, every tensor carrying the index of its member's
    meta-weight set; the others (``"cuda"``) get one ``step`` call per member. Either way on views of the
    stacked tensors — member ``j``'s slice of every parameter and state tensor is exactly a single
    optimizer's (contiguous, no copies). Same semantics: equal to :func:`population_step` within the
    backend's tolerance.
    """
    from mulo.backends import has_capability, resolve_backend

    # "auto": the best one there (among those implementing ``requires``); errors name the fix
    impl = resolve_backend(backend, torch.device(device), requires=requires)
    if impl.name == "reference":
        return population_step
    if has_capability(impl.name, "population"):  # one call per pass for all members (meta-weight index per tensor)

        def step(params, grads, states, lrs, weight_decays, weights: PopulationMetaWeights) -> None:
            impl.population_step(params, grads, states, lrs, weight_decays, weights)

    else:

        def step(params, grads, states, lrs, weight_decays, weights: PopulationMetaWeights) -> None:
            m = weights.size
            for j in range(m):
                impl.step(
                    [p[j] for p in params],
                    [g[j] for g in grads],
                    [{k: v[j] for k, v in st.items()} for st in states],
                    [member_lr(lr, j, m) for lr in lrs],
                    weight_decays,
                    weights.member(j),
                )

    step.backend = impl.name
    return step


__all__ = [
    "PopulationMetaWeights",
    "backend_population_step",
    "init_population_state",
    "member_lr",
    "population_step",
]
