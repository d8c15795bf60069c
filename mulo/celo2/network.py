"""``Celo2Net``: Celo2's split-input meta-network (docs/CELO2.md, "Network") and its weight files.

Each of the 14 feature groups i has its own first-layer weight ``w0.i`` of shape (dims_i, hidden); the first
hidden layer is ``act(Σ_i x_i · w0.i + b0)``, then dense layers ``dense_w.j`` (in, out) with biases
``dense_b.j``, an activation between them, none after the last. Weights multiply as ``x · W`` (stored
(in, out), as in the JAX original), so the published files load unchanged.

Files: the published layout (Hugging Face Hub mixin): ``model.safetensors`` with ``w0.0`` … ``w0.13``,
``b0``, ``dense_w.0``, ``dense_b.0``, ``dense_w.1``, ``dense_b.1`` and ``config.json`` with
``feature_dims``, ``hidden_size``, ``hidden_layers``, ``output_size``, ``activation``; mulo adds an optional
``info`` (provenance, ``placeholder``), which the published loaders ignore.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mulo.celo2 import spec
from mulo.lopt.network import _HUB_ID, CONFIG_FILE, WEIGHTS_FILE, LOptConfig, LOptNet, _resolve_source


@dataclasses.dataclass(frozen=True)
class Celo2Config:
    """The network's shape (the published ``config.json`` keys) and mulo's provenance ``info``."""

    feature_dims: tuple[int, ...] = spec.FEATURE_DIMS
    hidden_size: int = spec.HIDDEN_SIZE
    hidden_layers: int = spec.HIDDEN_LAYERS
    output_size: int = spec.OUTPUT_SIZE
    activation: str = "relu"
    info: dict = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_dims", tuple(self.feature_dims))
        if self.feature_dims != spec.FEATURE_DIMS:
            raise ValueError(
                f"Celo2Config.feature_dims must be {list(spec.FEATURE_DIMS)} (Celo2's 14 feature groups, 30 values), "
                f"got {list(self.feature_dims)}"
            )
        if self.hidden_size < 1 or self.hidden_layers < 1 or self.output_size < 2:
            raise ValueError(
                "Celo2Config needs hidden_size ≥ 1, hidden_layers ≥ 1 (the split layer counts as one) and "
                f"output_size ≥ 2 (direction, magnitude); got hidden_size={self.hidden_size}, "
                f"hidden_layers={self.hidden_layers}, output_size={self.output_size}"
            )
        if self.activation not in spec.ACTIVATIONS:
            raise ValueError(f"Celo2Config.activation must be one of {spec.ACTIVATIONS}, got {self.activation!r}")

    @property
    def dense_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of each dense layer: widths [hidden] * hidden_layers + [output], after the split layer."""
        widths = [self.hidden_size] * self.hidden_layers + [self.output_size]
        return list(zip(widths[:-1], widths[1:]))

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every key of the weight file and its shape."""
        shapes: dict[str, tuple[int, ...]] = {f"w0.{i}": (d, self.hidden_size) for i, d in enumerate(self.feature_dims)}
        shapes["b0"] = (self.hidden_size,)
        for j, (fan_in, fan_out) in enumerate(self.dense_shapes):
            shapes[f"dense_w.{j}"] = (fan_in, fan_out)
            shapes[f"dense_b.{j}"] = (fan_out,)
        return shapes

    def to_json(self) -> dict[str, Any]:
        d = LOptConfig.to_json(self)  # every field, tuples as lists
        if not d["info"]:
            del d["info"]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], *, source: str = "config") -> Celo2Config:
        """The config of a ``config.json`` (unknown keys are an error, as for μLO's)."""
        if "input_size" in d:
            raise ValueError(f"{source} is a μLO (LOptNet) config, not a Celo2 one: load it with mulo.MuLO")
        return LOptConfig.from_json.__func__(cls, d, source=source)


@dataclasses.dataclass(frozen=True)
class Celo2Weights:
    """The network as the step consumes it: tensors on one device in one dtype, stored (in, out)."""

    w0: tuple[torch.Tensor, ...]  # (dims_i, hidden) per feature group
    b0: torch.Tensor  # (hidden,)
    dense: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # ((in, out), (out,)) per dense layer
    activation: str


class Celo2Net(nn.Module):
    """Celo2's meta-network: a split first layer (one weight per feature group), then dense layers.

    Args:
        config: a :class:`Celo2Config` (defaults: the published 30 → 8 → 8 → 3, ReLU).
        generator: optional RNG for the fresh initialization (truncated normal of std 1/√fan_in, at ±2 std,
            with fan_in = 30 for the split layer; zero biases).
    """

    def __init__(self, config: Celo2Config | None = None, *, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config or Celo2Config()
        cfg = self.config
        self.w0 = nn.ParameterList([nn.Parameter(torch.empty(d, cfg.hidden_size)) for d in cfg.feature_dims])
        self.b0 = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.dense_w = nn.ParameterList([nn.Parameter(torch.empty(i, o)) for i, o in cfg.dense_shapes])
        self.dense_b = nn.ParameterList([nn.Parameter(torch.zeros(o)) for _, o in cfg.dense_shapes])
        self.reset_parameters(generator)

    @classmethod
    def blank(cls, config: Celo2Config | None = None) -> Celo2Net:
        """A network about to be overwritten (loading), built without touching torch's global RNG."""
        return cls(config, generator=torch.Generator())

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        fan_ins = [sum(self.config.feature_dims)] * len(self.w0) + [w.shape[0] for w in self.dense_w]
        for w, fan_in in zip([*self.w0, *self.dense_w], fan_ins):
            std = 1.0 / math.sqrt(fan_in)
            nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std, generator=generator)
        for b in [self.b0, *self.dense_b]:
            b.zero_()

    def forward(self, groups: list[torch.Tensor]) -> torch.Tensor:
        """``groups``: the 14 normalized feature groups, each (..., dims_i) → (..., output_size)."""
        from mulo.celo2.reference import network

        return network(groups, self.meta_weights(groups[0].device, groups[0].dtype, detach=False))

    # ---- consumption by the step ---------------------------------------------------------------
    def meta_weights(self, device: torch.device | str, dtype: torch.dtype, *, detach: bool = True) -> Celo2Weights:
        """Copies of the weights on ``device`` in ``dtype`` (detached unless ``detach=False``)."""

        def conv(t: torch.Tensor) -> torch.Tensor:
            return (t.detach() if detach else t).to(device=device, dtype=dtype)

        return Celo2Weights(
            w0=tuple(conv(w) for w in self.w0),
            b0=conv(self.b0),
            dense=tuple((conv(w), conv(b)) for w, b in zip(self.dense_w, self.dense_b)),
            activation=self.config.activation,
        )

    version = LOptNet.version  # changes whenever a weight is modified in place
    is_placeholder = LOptNet.is_placeholder  # config.info["placeholder"]

    # ---- files ----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` (float32) + ``config.json`` in the published layout into ``directory``
        (each file replaced atomically, as :meth:`mulo.LOptNet.save_pretrained` writes them)."""
        return LOptNet.save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, *, revision: str | None = None) -> Celo2Net:
        """Load from a directory, a Hugging Face Hub id (``"owner/name"``) or the name of Celo2 weights shipped
        with mulo (:func:`mulo.celo2.pretrained.names`)."""
        directory = resolve_source(source, revision)
        absent = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / name).is_file()]
        if absent:
            raise FileNotFoundError(
                f"Celo2 meta-weights directory {directory} has no {' and no '.join(absent)}; a Celo2 checkpoint "
                f"holds {WEIGHTS_FILE} and {CONFIG_FILE} (write one with Celo2Net.save_pretrained)"
            )
        cfg_path = directory / CONFIG_FILE
        try:
            raw = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: not valid JSON ({e})") from e
        net = cls.blank(Celo2Config.from_json(raw, source=str(cfg_path)))
        net.load_weights_file(directory / WEIGHTS_FILE)
        return net

    @torch.no_grad()
    def load_weights_file(self, path: str | os.PathLike) -> None:
        """Load ``model.safetensors``, checking every key and shape against this network's config."""
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        self.load_state_dict(checked_tensors(tensors, self.config, str(path)))


def checked_tensors(tensors: dict[str, torch.Tensor], config: Celo2Config, source: str) -> dict[str, torch.Tensor]:
    """``tensors`` as float32 after checking them against the published layout for ``config``: a clear
    ``ValueError`` naming the missing, unexpected or misshapen keys, or non-finite values."""
    expected = config.tensor_shapes()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [
        f"'{k}' {tuple(tensors[k].shape)} (expected {s})"
        for k, s in expected.items()
        if k in tensors and tuple(tensors[k].shape) != s
    ]
    if missing or extra or wrong:
        layout = ", ".join(f"{k} {s}" for k, s in expected.items())
        raise ValueError(
            f"{source}: not the Celo2 weight layout for this config.json (hidden_size={config.hidden_size}, "
            f"hidden_layers={config.hidden_layers}, output_size={config.output_size}): missing {missing}, "
            f"unexpected {extra}, wrong shapes {wrong}. Expected: {layout}"
        )
    bad = [k for k, t in tensors.items() if not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"{source}: {bad} hold non-finite values")
    return {k: t.to(torch.float32) for k, t in tensors.items()}


def resolve_source(source: str | os.PathLike, revision: str | None = None) -> Path:
    """The directory of a Celo2 checkpoint: an existing directory, a shipped name, or a Hub id (downloaded
    through :func:`huggingface_hub.snapshot_download`, as μLO weights are)."""
    from mulo.celo2 import pretrained

    path = Path(source).expanduser()
    text = str(source)
    if path.is_dir():
        return path
    if text in pretrained.names():
        return pretrained.weights_dir(text)
    if path.exists() or not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"Celo2 meta-weights source {text!r} is neither an existing directory (holding {WEIGHTS_FILE} and "
            f"{CONFIG_FILE}), a Hub id of the form 'owner/name', nor one of mulo's shipped Celo2 weights "
            f"{pretrained.names()}"
        )
    return _resolve_source(text, revision)
