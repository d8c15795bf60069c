"""μP for the optimizee (ALGORITHM.md §4): parameter roles, the readout layer, initialization, lr scaling.

μLO is small_fc_lopt applied under μP. The optimizer network is unchanged; μP enters through the role of
each optimizee parameter:

* ``hidden`` — both dimensions scale with width (hidden Linear weights, conv weights whose in- and
  out-channels both scale, fused QKV): the per-parameter learning rate is ``lr / fan_in``.
* ``input`` (fixed fan-in), ``output`` (readout), ``other`` (biases, norm gains, ...): ``lr``.

On the model side, input and hidden weights start N(0, 1/fan_in) (truncated at ±2σ), readout weights
start at zero and the readout's output is multiplied by ``output_mult / fan_in`` after the bias
(:class:`MuReadout`).

A model passed to :class:`mulo.MuLO` as plain ``model.parameters()`` has every role ``other``: that is
the SP small_fc_lopt, not μLO. Use :func:`param_groups` to get μLO.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch
from torch import nn

ROLES = ("input", "hidden", "output", "other")
DEFAULT_BASE_WIDTH = 64


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


class MuReadout(nn.Linear):
    """μP readout: ``(x Wᵀ + b) · output_mult / in_features``, weight (and bias) zero-initialized."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, output_mult: float = 1.0, **kw):
        self.output_mult = float(output_mult)
        super().__init__(in_features, out_features, bias=bias, **kw)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * (self.output_mult / self.in_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, output_mult={self.output_mult}"


def fan_in(p: torch.Tensor) -> int:
    """Input dimension of a weight: ``shape[1] · prod(shape[2:])`` (PyTorch's convention); 1 for < 2-d."""
    if p.dim() < 2:
        return 1
    return int(p.shape[1] * math.prod(p.shape[2:]))


def _weight_modules(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Parameter name → (owning module, attribute name)."""
    out = {}
    for mod_name, mod in model.named_modules():
        for attr, _ in mod.named_parameters(recurse=False):
            out[f"{mod_name}.{attr}" if mod_name else attr] = (mod, attr)
    return out


def infer_roles(
    model: nn.Module,
    *,
    base_model: nn.Module | None = None,
    overrides: Mapping[str, str] | None = None,
    base_width: int = DEFAULT_BASE_WIDTH,
) -> dict[str, ParamRole]:
    """Role of every parameter of ``model``, by name.

    Order of precedence:

    1. ``overrides``: ``{name: role}`` where ``name`` is a parameter name (``"blocks.0.attn.qkv.weight"``)
       or a module name (applies to that module's ``weight``).
    2. :class:`MuReadout` weights → ``output``; ``nn.Embedding`` weights → ``input``.
    3. With ``base_model`` (the same architecture at another width): a ≥2-d weight whose out- and
       in-dimensions both differ from the base is ``hidden``, only out → ``input``, only in → ``output``.
       This is exact and is the recommended way.
    4. Otherwise a structural guess for Linear/Conv weights: in- and out-dimension both ≥ ``base_width``
       → ``hidden``; only out → ``input``; only in → ``output``. A flattened-image first layer (large
       fixed fan-in) fools this guess: override it or pass ``base_model``.

    Everything else (biases, norm gains, 1-d and 0-d parameters) is ``other``.
    """
    overrides = dict(overrides or {})
    owners = _weight_modules(model)
    base_shapes = None
    if base_model is not None:
        base_shapes = {n: tuple(p.shape) for n, p in base_model.named_parameters()}
    roles: dict[str, ParamRole] = {}
    used: set[str] = set()
    for name, p in model.named_parameters():
        mod, attr = owners[name]
        mod_name = name[: -len(attr) - 1] if "." in name else ""
        fi = fan_in(p)
        if name in overrides:
            role = overrides[name]
            used.add(name)
        elif attr == "weight" and mod_name in overrides:
            role = overrides[mod_name]
            used.add(mod_name)
        elif p.dim() < 2:
            role = "other"
        elif isinstance(mod, MuReadout) and attr == "weight":
            role = "output"
        elif isinstance(mod, nn.Embedding) and attr == "weight":
            role = "input"
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
        elif isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)) and attr == "weight":
            wide_out, wide_in = p.shape[0] >= base_width, p.shape[1] >= base_width
            role = {(True, True): "hidden", (True, False): "input", (False, True): "output"}.get(
                (wide_out, wide_in), "other"
            )
        else:
            role = "other"
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
    base_width: int = DEFAULT_BASE_WIDTH,
    **group_options,
) -> list[dict]:
    """Parameter groups for :class:`mulo.MuLO` (or any optimizer that reads ``lr_scale``).

    One group per (role, lr_scale); each carries ``role`` and ``lr_scale`` (``1/fan_in`` for hidden
    weights) plus ``group_options`` (e.g. ``weight_decay``). Parameters without ``requires_grad`` are left out.
    """
    if roles is None:
        roles = infer_roles(model, base_model=base_model, overrides=overrides, base_width=base_width)
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
    """μP initialization in place: input/hidden weights truncated-N(0, 1/fan_in) at ±2σ, readout weights
    zero, embeddings N(0, 1), biases N(0, bias_std²) (zero when ``bias_std == 0``). Other parameters
    (norm gains, ...) are left as they are. Returns the roles used."""
    if roles is None:
        roles = infer_roles(model, **infer_kwargs)
    owners = _weight_modules(model)
    for name, p in model.named_parameters():
        r = roles[name]
        mod, attr = owners[name]
        if r.role in ("input", "hidden") and p.dim() >= 2:
            if isinstance(mod, nn.Embedding):
                nn.init.normal_(p, std=1.0, generator=generator)
            else:
                std = 1.0 / math.sqrt(r.fan_in)
                nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std, generator=generator)
        elif r.role == "output" and p.dim() >= 2:
            nn.init.zeros_(p)
        elif attr == "bias":
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


__all__ = ["ROLES", "MuReadout", "ParamRole", "describe", "fan_in", "infer_roles", "init_", "param_groups"]
