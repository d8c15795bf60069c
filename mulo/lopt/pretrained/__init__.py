"""Meta-weights shipped with mulo, each a ``LOptNet`` directory (``config.json``, ``model.safetensors``)
with a ``PROVENANCE.json`` and its meta-loss curve (``meta_loss.png``) where it was meta-trained:

* ``mulo_nm`` — **the default** (``MuLO(meta_weights=None)``): ``mulo_cpu`` meta-trained further on tasks
  that cannot be memorized (mnist1d, augmented digits, a teacher MLP; held-out loss) with inner runs up to
  10,000 steps and its time features clamped at t = 1,000 (``time_clamp`` in its config), in three stages
  whose provenance is embedded in its ``PROVENANCE.json``; meant to be used with a warmup-cosine schedule
  on ``lr``;
* ``mulo_cpu`` — the default before ``mulo_nm``: μLO meta-trained by mulo's own PES trainer
  (``mulo meta-train --preset mulo_cpu``) on μP MLPs of widths 16, 32 and 64 on the offline digits;
* ``mulo_cpu_sp`` — its SP twin (the SP-LO baseline): same recipe and budget on standard-parameterized MLPs;
* ``mulo_cpu_s2`` — ``mulo_cpu`` after a second stage (log meta-loss, 20% label noise, snapshot chosen by
  validation): far lower loss up to the meta-training horizon (1,000 steps) at every width, but it
  diverges on longer runs, which is why it is not the default; ``mulo_cpu_sp_s2`` is its SP twin;
* ``placeholder_handset_adam`` — a network whose weights were set by hand (not learned) so that its output
  is the RMS-normalized momentum-over-RMS channel (an Adam-like step ``0.01 · m₂/√v / rms(m₂/√v)``); it is
  the starting point of both meta-trainings and marked ``placeholder`` (``MuLO`` warns when it is used).

Pass a name to ``MuLO(meta_weights=...)`` or ``LOptNet.from_pretrained(...)``; ``python -m
mulo.lopt.pretrained`` regenerates the placeholder, ``python -m mulo.meta.ship`` packages a meta-training run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mulo.lopt.network import LOptConfig, LOptNet

HERE = Path(__file__).resolve().parent
DEFAULT = "mulo_nm"
PLACEHOLDER = "placeholder_handset_adam"
# Feature channel 7 is m_2 · rsqrt(v + 1e-6) with the middle momentum decay (docs/ALGORITHM.md §2).
HANDSET_CHANNEL = 7


def names() -> list[str]:
    """The shipped meta-weights (directories of this package holding a ``config.json``)."""
    return sorted(p.name for p in HERE.iterdir() if (p / "config.json").is_file())


def weights_dir(name: str = DEFAULT) -> Path:
    path = HERE / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"mulo ships no meta-weights named {name!r}; choose one of {names()}")
    return path


def model_digest(directory: str | Path) -> str | None:
    """SHA-256 (hex) of ``directory/model.safetensors``, the identity of a set of meta-weights (names can be
    reused); ``None`` when there is no such file."""
    import hashlib

    file = Path(directory) / "model.safetensors"
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else None


def default_weights_dir() -> Path:
    """The weights ``MuLO(meta_weights=None)`` uses."""
    return weights_dir(DEFAULT)


def build_handset_adam() -> LOptNet:
    """The placeholder network: out[0] = relu(x₇) − relu(−x₇) = x₇ (normalized m₂/√v), out[1] = 0."""
    info = {
        "name": PLACEHOLDER,
        "placeholder": True,
        "description": "hand-set (not meta-trained) weights that output the normalized m2/sqrt(v) channel, "
        "an Adam-like step; mulo's own meta-trained weights replace it.",
    }
    net = LOptNet(LOptConfig(info=info))
    with torch.no_grad():
        for layer in net.network.values():
            layer.weight.zero_()
            layer.bias.zero_()
        net.network["input"].weight[0, HANDSET_CHANNEL] = 1.0
        net.network["input"].weight[1, HANDSET_CHANNEL] = -1.0
        net.network["linear_0"].weight[0, 0] = 1.0
        net.network["linear_0"].weight[1, 1] = 1.0
        net.network["output"].weight[0, 0] = 1.0
        net.network["output"].weight[0, 1] = -1.0
    return net
