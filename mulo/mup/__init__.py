"""μP for the optimizee (docs/ALGORITHM.md §4): parameter roles, the readout layer, initialization, lr scaling.

μLO is small_fc_lopt applied under μP. The optimizer network is unchanged; μP enters through the role of
each optimizee parameter:

* ``hidden`` — both dimensions scale with width (hidden Linear weights, conv weights whose in- and
  out-channels both scale, fused QKV): the per-parameter learning rate is ``lr / fan_in``.
* ``input`` (fixed fan-in), ``output`` (readout), ``other`` (biases, norm gains, ...): ``lr``.

On the model side, input and hidden weights start N(0, 1/fan_in) (truncated at ±2σ), readout weights
start at zero and the readout's output is multiplied by ``output_mult / fan_in`` after the bias
(:class:`MuReadout`); attention logits use 1/d_head (:class:`MuMultiheadAttention`).

For a model written with plain ``torch.nn``, :func:`prepare` does all of it in one call and returns the
param groups for :class:`mulo.MuLO`. A model passed to :class:`mulo.MuLO` as plain ``model.parameters()``
has every role ``other``: that is the SP small_fc_lopt, not μLO (``MuLO`` says so when it happens).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch
from torch import nn

ROLES = ("input", "hidden", "output", "other")
# Set on the weight (and bias) of every MuReadout, so that MuLO can tell a μP readout from a plain one
# without seeing the model (it only gets parameters).
_READOUT_TAG = "_mulo_mup_readout"


@dataclasses.dataclass(frozen=True)
class ParamRole:
    role: str
    fan_in: int

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown μP role {self.role!r}; roles are {ROLES}")
        if self.fan_in < 1:
            raise ValueError(f"fan_in must be ≥ 1, got {self.fan_in}")

    @property
    def lr_scale(self) -> float:
        """``1 / fan_in`` for hidden weights (base width 1), else 1."""
        return 1.0 / self.fan_in if self.role == "hidden" else 1.0


def mark_readout(module: nn.Linear) -> None:
    """Tag ``module``'s parameters as a μP readout's (what :class:`mulo.MuLO`'s set-up check looks for)."""
    for p in module.parameters(recurse=False):
        setattr(p, _READOUT_TAG, True)


def is_readout_parameter(p: torch.Tensor) -> bool:
    """Whether ``p`` belongs to a :class:`MuReadout` (built by mulo or converted by :func:`prepare`)."""
    return bool(getattr(p, _READOUT_TAG, False))


class MuReadout(nn.Linear):
    """μP readout: ``(x Wᵀ + b) · output_mult / in_features``, weight (and bias) zero-initialized."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, output_mult: float = 1.0, **kw):
        self.output_mult = float(output_mult)
        super().__init__(in_features, out_features, bias=bias, **kw)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        mark_readout(self)

    def __setstate__(self, state) -> None:  # copy.deepcopy and pickling make new parameters: tag them too
        super().__setstate__(state)
        mark_readout(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * (self.output_mult / self.in_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, output_mult={self.output_mult}"


def fan_in(p: torch.Tensor) -> int:
    """Input dimension of a weight: ``shape[1] · prod(shape[2:])`` (PyTorch's convention); 1 for < 2-d."""
    if p.dim() < 2:
        return 1
    return int(p.shape[1] * math.prod(p.shape[2:]))


def _owners(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """``id(parameter)`` → every (module name, module, attribute) holding it (several when weights are tied)."""
    out: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for attr, p in mod.named_parameters(recurse=False):
            entry = (mod_name, mod, attr)
            if entry not in out.setdefault(id(p), []):
                out[id(p)].append(entry)
    return out


def is_embedding_weight(p: torch.Tensor, owners: list[tuple[str, nn.Module, str]]) -> bool:
    """``p`` is (or is tied to) an ``nn.Embedding``/``nn.EmbeddingBag`` weight."""
    return any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and a == "weight" for _, m, a in owners)


def _layer_dims(mod: nn.Module) -> tuple[int, int] | None:
    """(in, out) feature dimensions of a weight layer, ``None`` for anything else."""
    if isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features
    if isinstance(mod, nn.modules.conv._ConvNd) and not mod.transposed:
        return mod.in_channels, mod.out_channels
    if isinstance(mod, nn.MultiheadAttention):
        return mod.embed_dim, mod.embed_dim
    return None


def width_dims(model: nn.Module, exclude: tuple[nn.Module, ...] = ()) -> set[int]:
    """The sizes produced inside the model: out-dimensions of its Linear/Conv/attention layers and embedding
    sizes (``exclude``: the readouts). A weight whose input size is one of these reads the model's own
    features, so it is ``hidden``; one that reads anything else (pixels, a feature vector) is ``input``."""
    dims: set[int] = set()
    for mod in model.modules():
        if any(mod is e for e in exclude):
            continue
        if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
            dims.add(mod.embedding_dim)
        elif (d := _layer_dims(mod)) is not None:
            dims.add(d[1])
    return dims


def _is_layer_weight(mod: nn.Module, attr: str) -> bool:
    """A Linear/Conv/attention weight (not a raw parameter of a custom module, whose layout is unknown)."""
    if isinstance(mod, nn.MultiheadAttention):
        return attr.endswith("proj_weight")
    return attr == "weight" and _layer_dims(mod) is not None


def _structural_role(mod: nn.Module, attr: str, p: torch.Tensor, dims: set[int]) -> str:
    if p.dim() < 2 or not _is_layer_weight(mod, attr):
        return "other"  # biases, gains; raw parameters of custom modules (positional tables, tokens...)
    if isinstance(mod, nn.MultiheadAttention):
        return "hidden" if p.shape[1] in dims else "input"
    if isinstance(mod, nn.modules.conv._ConvNd) and mod.groups == mod.in_channels and mod.in_channels > 1:
        return "input"  # depthwise: a fixed fan-in (the kernel) per channel
    return "hidden" if _layer_dims(mod)[0] in dims else "input"


def infer_roles(
    model: nn.Module,
    *,
    base_model: nn.Module | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, ParamRole]:
    """Role of every parameter of ``model``, by name (a tied parameter appears once, under its first name).

    Order of precedence:

    1. ``overrides``: ``{name: role}`` where ``name`` is a parameter name (``"blocks.0.attn.qkv.weight"``)
       or a module name (applies to that module's ``weight``).
    2. Embedding weights (also when tied to a readout) → ``input``; :class:`MuReadout` weights → ``output``.
    3. With ``base_model`` (the same architecture at another width): a ≥2-d weight whose out- and
       in-dimensions both differ from the base is ``hidden``, only out → ``input``, only in → ``output``.
       This is exact and is the recommended way.
    4. Otherwise by structure (:func:`width_dims`): a Linear/Conv/attention weight whose input size is
       produced inside the model (an embedding size, another layer's output size) is ``hidden``, one that
       reads the data (pixels, features) is ``input``; depthwise convolutions are ``input``. A coincidence
       of sizes (input features equal to the width) makes an input layer ``hidden`` (a smaller step):
       pass ``base_model`` or an override. A plain ``nn.Linear`` readout is not recognized here — convert
       it with :func:`prepare` (or declare it ``output`` and make it a :class:`MuReadout`).

    Everything else (biases, norm gains, 1-d and 0-d parameters, raw parameters of custom modules unless
    both their first two axes scale with ``base_model``) is ``other``.
    """
    overrides = dict(overrides or {})
    owners = _owners(model)
    readouts = tuple(m for m in model.modules() if isinstance(m, MuReadout))
    dims = width_dims(model, exclude=readouts) if base_model is None else set()
    base_shapes = None
    if base_model is not None:
        base_shapes = {n: tuple(p.shape) for n, p in base_model.named_parameters()}
    roles: dict[str, ParamRole] = {}
    used: set[str] = set()
    for name, p in model.named_parameters():
        mod_name, mod, attr = owners[id(p)][0]
        fi = fan_in(p)
        if name in overrides:
            role = overrides[name]
            used.add(name)
        elif attr == "weight" and mod_name in overrides:
            role = overrides[mod_name]
            used.add(mod_name)
        elif p.dim() < 2:
            role = "other"
        elif is_embedding_weight(p, owners[id(p)]):
            role = "input"
        elif isinstance(mod, MuReadout) and attr == "weight":
            role = "output"
        elif base_shapes is not None:
            if name not in base_shapes:
                raise ValueError(f"base_model has no parameter named {name!r}; it must be the same architecture")
            bs = base_shapes[name]
            if len(bs) != p.dim():
                raise ValueError(f"{name}: base_model shape {bs} and model shape {tuple(p.shape)} differ in rank")
            out_scales, in_scales = bs[0] != p.shape[0], bs[1] != p.shape[1]
            role = {(True, True): "hidden", (True, False): "input", (False, True): "output"}.get(
                (out_scales, in_scales), "other"
            )
            if role in ("input", "output") and not _is_layer_weight(mod, attr):
                role = "other"  # a raw table (positions, tokens) with one width-sized axis: left as it is
        else:
            role = _structural_role(mod, attr, p, dims)
        roles[name] = ParamRole(role, fi)
    unused = sorted(set(overrides) - used)
    if unused:
        raise ValueError(f"overrides name no parameter or module of the model: {unused}")
    return roles


def param_groups(
    model: nn.Module,
    roles: Mapping[str, ParamRole] | None = None,
    *,
    base_model: nn.Module | None = None,
    overrides: Mapping[str, str] | None = None,
    **group_options,
) -> list[dict]:
    """Parameter groups for :class:`mulo.MuLO` (or any optimizer that reads ``lr_scale``).

    One group per (role, lr_scale); each carries ``role`` and ``lr_scale`` (``1/fan_in`` for hidden
    weights) plus ``group_options`` (e.g. ``weight_decay``). Parameters without ``requires_grad`` are left out.
    This only labels parameters: it does not make the model μP (use :func:`prepare` for a plain model).
    """
    if roles is None:
        roles = infer_roles(model, base_model=base_model, overrides=overrides)
    groups: dict[tuple[str, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name not in roles:
            raise ValueError(f"roles has no entry for parameter {name!r}")
        r = roles[name]
        key = (r.role, r.lr_scale)
        if key not in groups:
            groups[key] = {"params": [], "role": r.role, "lr_scale": r.lr_scale, **group_options}
        groups[key]["params"].append(p)
    return list(groups.values())


@torch.no_grad()
def init_(
    model: nn.Module,
    roles: Mapping[str, ParamRole] | None = None,
    *,
    bias_std: float = 0.0,
    generator: torch.Generator | None = None,
    **infer_kwargs,
) -> dict[str, ParamRole]:
    """μP initialization in place:

    * embedding weights (also when tied to a readout) N(0, 1), with an ``nn.Embedding``'s ``padding_idx``
      row zero;
    * other ``input``/``hidden`` weights truncated-N(0, 1/fan_in) at ±2σ;
    * ``output`` (readout) weights zero;
    * biases (1-d parameters whose name ends in ``bias``) N(0, bias_std²), zero when ``bias_std == 0``.

    Everything else (norm gains, ``other`` parameters such as positional tables) is left as it is.
    Returns the roles used."""
    if roles is None:
        roles = infer_roles(model, **infer_kwargs)
    owners = _owners(model)
    for name, p in model.named_parameters():
        r = roles[name]
        held_by = owners[id(p)]
        attr = held_by[0][2]
        if r.role in ("input", "hidden") and p.dim() >= 2:
            if is_embedding_weight(p, held_by):
                nn.init.normal_(p, std=1.0, generator=generator)
                for _, mod, _ in held_by:
                    if isinstance(mod, nn.Embedding) and mod.padding_idx is not None:
                        p[mod.padding_idx].zero_()
            else:
                std = 1.0 / math.sqrt(r.fan_in)
                nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std, generator=generator)
        elif r.role == "output" and p.dim() >= 2:
            nn.init.zeros_(p)
        elif attr.endswith("bias") and p.dim() == 1:
            if bias_std > 0:
                nn.init.normal_(p, std=bias_std, generator=generator)
            else:
                nn.init.zeros_(p)
    return dict(roles)


def describe(roles: Mapping[str, ParamRole]) -> str:
    """A table of role, fan-in and lr scale per parameter (for logs)."""
    lines = [f"{'parameter':40s} {'role':7s} {'fan_in':>7s} {'lr_scale':>9s}"]
    for name, r in roles.items():
        lines.append(f"{name:40s} {r.role:7s} {r.fan_in:7d} {r.lr_scale:9.3g}")
    return "\n".join(lines)


from mulo.mup.attention import MuMultiheadAttention  # noqa: E402  (they build on the definitions above)
from mulo.mup.prepare import PrepareError, prepare  # noqa: E402

__all__ = [
    "ROLES",
    "MuMultiheadAttention",
    "MuReadout",
    "ParamRole",
    "PrepareError",
    "describe",
    "fan_in",
    "infer_roles",
    "init_",
    "is_readout_parameter",
    "mark_readout",
    "param_groups",
    "prepare",
]
