"""``LOptNet``: the small_fc_lopt meta-network (docs/ALGORITHM.md §3) and its weight files.

The network maps 39 features per parameter element (28 normalized channels + 11 time features) through
``input`` (39→32) → ReLU → ``linear_0`` (32→32) → ReLU → ``output`` (32→2) to a direction ``d`` and a
magnitude ``a``; the step is ``d · exp(a · exp_mult) · step_mult``. With the optional nominal term
(:attr:`LOptConfig.nominal`) the output layer has a third row, the nominal term's magnitude.

Weight files use the published μLO_M checkpoint layout: ``model.safetensors`` with keys
``network.{input,linear_0,output}.{weight,bias}`` and ``config.json`` with ``input_size``, ``hidden_size``,
``hidden_layers``. mulo adds optional keys (decay offsets, multipliers, axis layout, provenance); files
without them get the μLO_M constants of :mod:`mulo.lopt.constants`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mulo.lopt import constants as C
from mulo.lopt import spec

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LAYOUTS = ("torch", "jax")


@dataclasses.dataclass(frozen=True)
class LOptConfig:
    """Everything about a learned optimizer that is not a network weight."""

    input_size: int = C.INPUT_SIZE
    hidden_size: int = C.HIDDEN_SIZE
    hidden_layers: int = C.HIDDEN_LAYERS
    exp_mult: float = C.EXP_MULT
    step_mult: float = C.STEP_MULT
    initial_momentum_decays: tuple[float, ...] = C.INITIAL_MOMENTUM_DECAYS
    initial_rms_decays: tuple[float, ...] = C.INITIAL_RMS_DECAYS
    initial_adafactor_decays: tuple[float, ...] = C.INITIAL_ADAFACTOR_DECAYS
    momentum_offsets: tuple[float, ...] = C.MOMENTUM_OFFSETS
    rms_offsets: tuple[float, ...] = C.RMS_OFFSETS
    adafactor_offsets: tuple[float, ...] = C.ADAFACTOR_OFFSETS
    # Axis convention the weights were meta-trained under (docs/ALGORITHM.md §6): "torch" reads a 2-d weight as
    # (out, in); "jax" reads it as (in, out), which swaps the row and column channels of every 2-d tensor.
    layout: str = "torch"
    # The step count at which the time features stop moving: they read min(t, time_clamp) instead of t, so a
    # run longer than the meta-training horizon keeps seeing time features from the range meta-training saw.
    # None (the default, and μLO's) is no clamp: the exact μLO update.
    time_clamp: float | None = None
    # α of the nominal term (STAR, Harrison et al. 2022): a third output head n and the step gains
    # α · exp(n · exp_mult) · mean_k m_k / √(v + 1e-6), an Adam-like descent direction whose size the network
    # modulates. None (the default, and μLO's) is no such term and the two-output network: the exact μLO update.
    nominal: float | None = None
    # Free-form provenance ("name", "placeholder", training recipe...). Not used by the math.
    info: dict = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.input_size != C.INPUT_SIZE:
            raise ValueError(
                f"LOptConfig.input_size must be {C.INPUT_SIZE} (28 features + 11 time features), got {self.input_size}"
            )
        if self.hidden_size < 1 or self.hidden_layers < 0:
            raise ValueError(
                f"LOptConfig needs hidden_size ≥ 1 and hidden_layers ≥ 0, got "
                f"hidden_size={self.hidden_size}, hidden_layers={self.hidden_layers}"
            )
        for name, n in (("momentum", 3), ("rms", 1), ("adafactor", 3)):
            for kind in ("initial_{}_decays", "{}_offsets"):
                key = kind.format(name)
                if len(getattr(self, key)) != n:
                    raise ValueError(f"LOptConfig.{key} needs {n} values, got {getattr(self, key)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"LOptConfig.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.time_clamp is not None and not (math.isfinite(self.time_clamp) and self.time_clamp >= 1):
            raise ValueError(
                f"LOptConfig.time_clamp must be None (no clamp) or a finite step count ≥ 1 (e.g. the meta-training "
                f"horizon, 1000), got {self.time_clamp!r}"
            )
        if self.nominal is not None and not (math.isfinite(self.nominal) and self.nominal > 0):
            raise ValueError(
                f"LOptConfig.nominal must be None (no nominal term, μLO's update) or the term's size α > 0 "
                f"(e.g. 1e-3), got {self.nominal!r}"
            )

    @property
    def output_size(self) -> int:
        """Outputs of the network: direction and magnitude, plus the nominal term's magnitude when it is on."""
        return spec.OUTPUT_SIZE if self.nominal is None else spec.OUTPUT_SIZE_NOMINAL

    @property
    def capabilities(self) -> frozenset[str]:
        """What a backend must implement to run these weights (:data:`mulo.backends.CAPABILITIES`)."""
        return frozenset() if self.nominal is None else frozenset({"nominal"})

    @property
    def momentum_decays(self) -> tuple[float, float, float]:
        # JAX reference: momentum decays are not clipped (docs/ALGORITHM.md §6).
        return tuple(  # type: ignore[return-value]
            C.decay_from_offset(b, o, clip=False) for b, o in zip(self.initial_momentum_decays, self.momentum_offsets)
        )

    @property
    def rms_decay(self) -> float:
        return C.decay_from_offset(self.initial_rms_decays[0], self.rms_offsets[0])

    @property
    def adafactor_decays(self) -> tuple[float, float, float]:
        return tuple(  # type: ignore[return-value]
            C.decay_from_offset(b, o) for b, o in zip(self.initial_adafactor_decays, self.adafactor_offsets)
        )

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], *, source: str = "config") -> LOptConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown config keys {unknown}; known keys are {sorted(known)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class MetaWeights:
    """The meta-network as the backends consume it: tensors on one device in one dtype, plus scalars.

    ``layers`` is ``((W_in, b_in), (W_0, b_0), ..., (W_out, b_out))`` with PyTorch Linear shapes (out, in).
    """

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    momentum_decays: tuple[float, float, float]
    rms_decay: float
    adafactor_decays: tuple[float, float, float]
    exp_mult: float
    step_mult: float
    layout: str
    time_clamp: float | None = None
    nominal: float | None = None  # α of the nominal term (LOptConfig.nominal); the output layer then has 3 rows


# the scalar fields of MetaWeights, which a population's members share and an LOptConfig also carries
META_SCALARS = (
    "momentum_decays", "rms_decay", "adafactor_decays", "exp_mult", "step_mult", "layout", "time_clamp", "nominal"
)  # fmt: skip


def meta_scalars(source) -> dict:
    """The :data:`META_SCALARS` of ``source`` (MetaWeights, PopulationMetaWeights or an LOptConfig)."""
    return {name: getattr(source, name) for name in META_SCALARS}


class LOptNet(nn.Module):
    """The 39→32→32→2 small_fc_lopt network, loadable from the published μLO_M layout.

    Args:
        config: an :class:`LOptConfig`; defaults are μLO_M's.
        generator: optional RNG for the fresh initialization (truncated normal, std 1/√fan_in, zero bias).
    """

    def __init__(self, config: LOptConfig | None = None, *, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config or LOptConfig()
        cfg = self.config
        layers: dict[str, nn.Linear] = {"input": nn.Linear(cfg.input_size, cfg.hidden_size)}
        for i in range(cfg.hidden_layers):
            layers[f"linear_{i}"] = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        layers["output"] = nn.Linear(cfg.hidden_size, cfg.output_size)
        self.network = nn.ModuleDict(layers)
        self.reset_parameters(generator)

    @classmethod
    def blank(cls, config: LOptConfig | None = None) -> LOptNet:
        """A network whose weights are about to be overwritten (loading): built without drawing from torch's
        global random generator, so that loading meta-weights never shifts a user's random stream."""
        with torch.random.fork_rng(devices=[]):
            return cls(config, generator=torch.Generator())

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for layer in self.network.values():
            std = 1.0 / math.sqrt(layer.in_features)
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std, generator=generator)
            layer.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` (..., 39) → (..., 2): direction and magnitude (…, 3 with the nominal term's head)."""
        layers = list(self.network.values())
        x = features
        for layer in layers[:-1]:
            x = torch.relu(layer(x))
        return layers[-1](x)

    # ---- consumption by backends --------------------------------------------------------------
    def meta_weights(self, device: torch.device | str, dtype: torch.dtype) -> MetaWeights:
        """Detached copies of the weights on ``device`` in ``dtype`` plus the derived decays."""
        cfg = self.config
        layers = tuple(
            (
                layer.weight.detach().to(device=device, dtype=dtype).contiguous(),
                layer.bias.detach().to(device=device, dtype=dtype).contiguous(),
            )
            for layer in self.network.values()
        )
        return MetaWeights(layers=layers, **meta_scalars(cfg))

    def version(self) -> int:
        """Changes whenever a weight is modified in place (used to refresh cached copies)."""
        return sum(p._version for p in self.parameters())

    @property
    def is_placeholder(self) -> bool:
        return bool(self.config.info.get("placeholder", False))

    # ---- files ----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` + ``config.json`` (published μLO_M layout) into ``directory``."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        tmp_w, tmp_c = out / (WEIGHTS_FILE + ".tmp"), out / (CONFIG_FILE + ".tmp")
        save_file(tensors, str(tmp_w), metadata={"format": "pt"})
        tmp_c.write_text(json.dumps(self.config.to_json(), indent=2) + "\n")
        os.replace(tmp_w, out / WEIGHTS_FILE)
        os.replace(tmp_c, out / CONFIG_FILE)
        return out

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, *, revision: str | None = None, **overrides: Any) -> LOptNet:
        """Load from a local directory or a Hugging Face Hub id (e.g. ``"btherien/mulo"``).

        ``overrides`` replace config values (e.g. ``layout="jax"`` for JAX-trained weights, or other decay
        offsets).
        """
        directory = _resolve_source(source, revision)
        cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (cfg_path, w_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"meta-weights directory {directory} has no {path.name}; a μLO checkpoint holds "
                    f"{WEIGHTS_FILE} and {CONFIG_FILE} (write one with LOptNet.save_pretrained)"
                )
        try:
            raw = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path} is not valid JSON: {e}") from e
        raw.update(overrides)
        config = LOptConfig.from_json(raw, source=str(cfg_path))
        net = cls.blank(config)
        net.load_weights_file(w_path)
        return net

    @torch.no_grad()
    def load_weights_file(self, path: str | os.PathLike) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        expected = self.state_dict()
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise ValueError(
                f"{path}: keys do not match the LOptNet layout (hidden_layers="
                f"{self.config.hidden_layers}); missing {missing}, unexpected {extra}"
            )
        for key, ref in expected.items():
            t = tensors[key]
            if tuple(t.shape) != tuple(ref.shape):
                raise ValueError(
                    f"{path}: '{key}' has shape {tuple(t.shape)}, expected {tuple(ref.shape)} for "
                    f"input_size={self.config.input_size}, hidden_size={self.config.hidden_size}, "
                    f"nominal={self.config.nominal} ({self.config.output_size} outputs; a nominal term needs 3)"
                )
            if not torch.isfinite(t).all():
                raise ValueError(f"{path}: '{key}' holds non-finite values")
        self.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _resolve_source(source: str | os.PathLike, revision: str | None) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    text = str(source)
    if path.exists():
        raise NotADirectoryError(f"meta-weights source {text} is a file; pass the directory that holds it")
    from mulo.lopt import pretrained

    if text in pretrained.names():
        return pretrained.weights_dir(text)
    if not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"meta-weights source {text!r} is neither an existing directory, a Hub id of the form 'owner/name' "
            f"nor one of mulo's shipped weights {pretrained.names()}"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise ImportError("loading meta-weights from the Hub needs `pip install huggingface_hub`") from e
    try:
        local = snapshot_download(repo_id=text, revision=revision, allow_patterns=[WEIGHTS_FILE, CONFIG_FILE])
    except Exception as e:  # network errors, offline mode, missing repo: all end the same way for the user
        raise FileNotFoundError(
            f"could not fetch meta-weights {text!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            f"Offline? Download it once while online with `hf download {text}` (the huggingface_hub CLI; offline "
            "runs then find it in the Hugging Face cache) or pass a local directory."
        ) from e
    return Path(local)
