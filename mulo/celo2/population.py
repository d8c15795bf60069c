"""The Celo2 population step: M optimizees, each with its own meta-weights and learning rates, in one call
(the contract of :mod:`mulo.backends.population`, for Celo2's rule).

    population_step(params, grads, states, lrs, weight_decays, weights, *, options)    # in place

- ``params[i]``, ``grads[i]``: shape ``(M, *S_i)``, tensor ``i`` of every member stacked on a leading axis;
  ``states[i]``: :func:`init_population_state`'s dict, every entry with the leading axis M — member j's slice
  ``[j]`` is exactly :class:`mulo.Celo2`'s state of that tensor (learned rule for rank(S_i) ≥ 2, AdamW below).
- ``lrs[i]``: a float shared by the members or M floats (per-member schedules); ``weight_decays[i]``: a float.
- ``weights``: :class:`PopulationWeights`, Celo2's network with a leading axis M.
- ``options``: :class:`PopulationOptions` (orthogonalize, axes, the AdamW route's settings), shared by the members.

Semantics: :func:`population_step` is the definition — member by member through :mod:`mulo.celo2.reference`
(every reduction, Newton–Schulz and normalization inside one member). The ``cpu`` backend
(:meth:`mulo.celo2.cpu.CpuBackend.population_step`) runs every member's learned tensors in one call per pass,
each tensor carrying the index of its member's meta-weight set, and one Newton–Schulz chain per oriented slice shape for
the whole population. The AdamW route is vectorized over the members (:func:`adamw_members`) in both.

θ, the meta-parameters a trainer perturbs, is the network as one flat vector in ``Celo2Net.state_dict()`` order
(:func:`flatten`, :func:`to_net`, :func:`population_weights`): 347 numbers for the published 30→8→8→3 network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from mulo.backends.population import member_lr
from mulo.celo2 import reference, spec
from mulo.celo2.network import Celo2Config, Celo2Net, Celo2Weights


@dataclasses.dataclass(frozen=True)
class PopulationOptions:
    """What :class:`mulo.Celo2` takes besides lr/weight decay, shared by every member."""

    orthogonalize: bool = True
    axes: str = "last2"
    adam_lr_mult: float = 1.0
    adam_betas: tuple[float, float] = spec.ADAM_BETAS
    adam_eps: float = spec.ADAM_EPS
    adam_weight_decay: float | None = None  # None: each tensor's weight decay


@dataclasses.dataclass(frozen=True)
class PopulationWeights:
    """Celo2's network for M members: every tensor of :class:`Celo2Weights` with a leading axis M."""

    w0: tuple[torch.Tensor, ...]  # (M, dims_i, hidden)
    b0: torch.Tensor  # (M, hidden)
    dense: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # ((M, in, out), (M, out))
    activation: str

    @property
    def size(self) -> int:
        return self.b0.shape[0]

    def member(self, j: int) -> Celo2Weights:
        return Celo2Weights(
            w0=tuple(w[j] for w in self.w0),
            b0=self.b0[j],
            dense=tuple((w[j], b[j]) for w, b in self.dense),
            activation=self.activation,
        )

    @classmethod
    def stack(cls, members: Sequence[Celo2Weights]) -> PopulationWeights:
        if not members or len({w.activation for w in members}) != 1:
            raise ValueError("PopulationWeights.stack needs at least one member, all with the same activation")
        first = members[0]
        return cls(
            w0=tuple(torch.stack([w.w0[i] for w in members]) for i in range(len(first.w0))),
            b0=torch.stack([w.b0 for w in members]),
            dense=tuple(
                (torch.stack([w.dense[k][0] for w in members]), torch.stack([w.dense[k][1] for w in members]))
                for k in range(len(first.dense))
            ),
            activation=first.activation,
        )


# ---- θ: the network as one flat vector ----------------------------------------------------------------------------
def theta_shapes(config: Celo2Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of the network in ``Celo2Net.state_dict()`` order, with its shape."""
    return {k: tuple(v.shape) for k, v in Celo2Net.blank(config).state_dict().items()}


def theta_size(config: Celo2Config) -> int:
    return sum(torch.Size(s).numel() for s in theta_shapes(config).values())


def flatten(net: Celo2Net) -> torch.Tensor:
    """The flat θ of ``net`` (float32, CPU)."""
    return torch.cat([t.detach().reshape(-1).to("cpu", torch.float32) for t in net.state_dict().values()])


def _split(thetas: torch.Tensor, config: Celo2Config) -> dict[str, torch.Tensor]:
    """(M, D) flat θs → each tensor of the network with a leading axis M (views)."""
    shapes = theta_shapes(config)
    out, offset = {}, 0
    for key, shape in shapes.items():
        n = torch.Size(shape).numel()
        out[key] = thetas[:, offset : offset + n].reshape(thetas.shape[0], *shape)
        offset += n
    if offset != thetas.shape[1]:
        raise ValueError(f"thetas has {thetas.shape[1]} columns, expected {offset} for this Celo2Config")
    return out


def to_net(theta: torch.Tensor, config: Celo2Config) -> Celo2Net:
    """A ``Celo2Net`` holding the flat ``theta``."""
    if theta.shape != (theta_size(config),):
        raise ValueError(f"theta has shape {tuple(theta.shape)}, expected ({theta_size(config)},) for this Celo2Config")
    net = Celo2Net.blank(config)
    net.load_state_dict({k: v[0].detach().to("cpu", torch.float32) for k, v in _split(theta[None], config).items()})
    return net


def population_weights(thetas: torch.Tensor, config: Celo2Config) -> PopulationWeights:
    """Meta-weights of M members from a (M, D) matrix of flat θs (views into ``thetas``; same device/dtype)."""
    t = _split(thetas, config)
    layers = len(config.dense_shapes)
    return PopulationWeights(
        w0=tuple(t[f"w0.{i}"] for i in range(len(config.feature_dims))),
        b0=t["b0"],
        dense=tuple((t[f"dense_w.{j}"], t[f"dense_b.{j}"]) for j in range(layers)),
        activation=config.activation,
    )


# ---- state -----------------------------------------------------------------------------------------------------
def uses_adamw(param: torch.Tensor) -> bool:
    """A population tensor (M, *S) takes the AdamW route when each member's tensor has rank ≤ 1."""
    return param.dim() <= 2


def init_population_state(param: torch.Tensor, axes: str = "last2", dtype: torch.dtype | None = None) -> dict:
    """Zero state of a population tensor (M, *S): member j's slice is :class:`mulo.Celo2`'s fresh state."""
    m, shape = param.shape[0], tuple(param.shape[1:])
    dt = dtype or reference.compute_dtype(param)
    one = reference.init_state(shape, uses_adamw(param), axes, dt, param.device)
    return {k: v.new_zeros((m, *v.shape)) for k, v in one.items()}


# ---- the AdamW route, vectorized over the members -------------------------------------------------------------
@torch.no_grad()
def adamw_members(param, grad, state, lrs: Sequence[float], betas, eps: float, weight_decay: float) -> None:
    """:func:`mulo.celo2.reference.adamw_step` of every member at once (member j with ``lrs[j]``): the same
    operations, each per-member scalar rounded to the compute dtype where the single step rounds its scalar."""
    m = param.shape[0]
    if param[0].numel() == 0:
        state["step"].add_(1.0)
        return
    beta1, beta2 = betas
    cd = reference.compute_dtype(param)
    bcast = (m, *([1] * (param.dim() - 1)))
    g, p = reference.clamp_grad(grad, cd), param.to(cd)
    finite = torch.isfinite(grad.reshape(m, -1)).all(dim=1)
    t = (state["step"] + 1).to(torch.float64)
    bias1 = 1 - torch.pow(beta1, t)
    bias2_sqrt = torch.pow(1 - torch.pow(beta2, t), torch.tensor(0.5, dtype=torch.float64, device=t.device))
    lr = torch.tensor([float(x) for x in lrs], dtype=torch.float64, device=param.device)
    new_m = state["exp_avg"].to(cd).lerp(g, 1 - beta1)
    new_v = state["exp_avg_sq"].to(cd).mul(beta2).addcmul(g, g, value=1 - beta2)
    p_new = p.mul((1 - lr * weight_decay).to(cd).view(bcast)) if weight_decay != 0 else p
    p_new = p_new + (-(lr / bias1)).to(cd).view(bcast) * new_m / (new_v.sqrt() / bias2_sqrt.to(cd).view(bcast)).add(eps)
    keep = finite.view(bcast)
    param.copy_(torch.where(keep, p_new, p))
    for key, value in (("exp_avg", new_m), ("exp_avg_sq", new_v)):
        state[key].copy_(torch.where(keep, value, state[key].to(cd)))
    state["step"].add_(finite.to(state["step"].dtype))
    state["nonfinite_skips"].add_((~finite).to(state["nonfinite_skips"].dtype))


def adamw_route(params, grads, states, lrs, weight_decays, options: PopulationOptions) -> None:
    """Every AdamW-route tensor of the population (lr · adam_lr_mult per member)."""
    for p, g, st, lr, wd in zip(params, grads, states, lrs, weight_decays, strict=True):
        member_lrs = [member_lr(lr, j, p.shape[0]) * options.adam_lr_mult for j in range(p.shape[0])]
        decay = wd if options.adam_weight_decay is None else options.adam_weight_decay
        adamw_members(p, g, st, member_lrs, options.adam_betas, options.adam_eps, decay)


def split_routes(params, grads, states, lrs, weight_decays):
    """(learned, adamw): the arguments of each route, as lists of (param, grad, state, lr, weight decay)."""
    learned, adamw = [], []
    for item in zip(params, grads, states, lrs, weight_decays, strict=True):
        (adamw if uses_adamw(item[0]) else learned).append(item)
    return learned, adamw


def population_step(params, grads, states, lrs, weight_decays, weights: PopulationWeights,
                    options: PopulationOptions = PopulationOptions()) -> None:  # fmt: skip
    """One Celo2 step of every member, in place: the definition, member by member through the reference."""
    learned, adamw = split_routes(params, grads, states, lrs, weight_decays)
    for j in range(weights.size):
        if learned:
            reference.step_group(
                [p[j] for p, *_ in learned],
                [g[j] for _, g, *_ in learned],
                [{k: v[j] for k, v in st.items()} for _, _, st, _, _ in learned],
                [member_lr(lr, j, weights.size) for *_, lr, _ in learned],
                [wd for *_, wd in learned],
                weights.member(j),
                orthogonalize=options.orthogonalize,
                axes=options.axes,
            )
    if adamw:
        adamw_route(*zip(*adamw), options)


def backend_population_step(backend: str = "reference", device: torch.device | str = "cpu",
                            options: PopulationOptions = PopulationOptions()):  # fmt: skip
    """The population entry point of Celo2's ``backend`` (``"auto"``: the best one on ``device``):
    ``step(params, grads, states, lrs, weight_decays, weights)`` with ``options`` bound; ``step.backend`` names it."""
    from mulo.backends import resolve_backend

    impl = resolve_backend(backend, torch.device(device), rule="celo2")

    def step(params, grads, states, lrs, weight_decays, weights: PopulationWeights) -> None:
        if impl.name == "reference":
            population_step(params, grads, states, lrs, weight_decays, weights, options)
        else:
            impl.population_step(params, grads, states, lrs, weight_decays, weights, options)

    step.backend = impl.name
    return step
