"""Celo2 meta-weights shipped with mulo, each a directory in the published layout (``config.json``,
``model.safetensors``; docs/CELO2.md, "Meta-weights"):

* ``celo2_cpu`` — **the default** (``Celo2(meta_weights=None)``): meta-trained by ``mulo meta-train --preset
  celo2_cpu`` on one CPU core from the placeholder below, 1,100 outer steps (its ``PROVENANCE.json`` holds the
  recipe, command, data, curve, hardware and wall time). Short meta-training: it is still close to its
  Adam-like start (the README's evaluation compares the two).
* ``placeholder_handset_adam`` — a network whose weights were set by hand (not learned) so that its
  direction is the normalized feature m₁ · rsqrt(v + 1e-8) (momentum decay 0.9 over the RMS of decay 0.95):
  an Adam-like direction, which Newton–Schulz then orthogonalizes and the RMS normalization scales to 1.
  Marked ``placeholder``: ``Celo2`` warns when it is used. The start of ``celo2_cpu``.

``python -m mulo.celo2.pretrained`` regenerates the placeholder's files from :func:`build_handset_adam`
(deterministic: every weight is 0 or ±1).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mulo.celo2 import spec
from mulo.celo2.network import Celo2Config, Celo2Net

HERE = Path(__file__).resolve().parent
PLACEHOLDER = "placeholder_handset_adam"
DEFAULT = "celo2_cpu"
# The feature group m_k · rsqrt(v + 1e-8), and k = 0: the momentum of decay 0.9.
HANDSET_GROUP = [name for name, _, _ in spec.FEATURE_GROUPS].index("m_rsqrt_v")
HANDSET_VALUE = 0


def names() -> list[str]:
    """The shipped Celo2 meta-weights: the directories of this package that hold a ``config.json``."""
    return sorted(config.parent.name for config in HERE.glob("*/config.json"))


def weights_dir(name: str = DEFAULT) -> Path:
    if name not in names():
        raise FileNotFoundError(f"mulo ships no Celo2 meta-weights named {name!r}; choose one of {names()}")
    return HERE / name


def build_handset_adam() -> Celo2Net:
    """The placeholder: h₀ = relu(x), h₁ = relu(−x) for x the normalized m₁ · rsqrt(v + 1e-8), the middle
    layer passes h₀, h₁ through, and the direction is h₀ − h₁ = x; the magnitude output is 0."""
    info = {
        "name": PLACEHOLDER,
        "placeholder": True,
        "description": "hand-set (not meta-trained) Celo2 weights whose direction is the normalized "
        "m1*rsqrt(v) feature, an Adam-like step (orthogonalized and RMS-normalized by Celo2); the start of "
        "mulo's meta-trained celo2_cpu.",
    }
    net = Celo2Net(Celo2Config(info=info), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in net.parameters():
            t.zero_()
        net.w0[HANDSET_GROUP][HANDSET_VALUE, 0] = 1.0
        net.w0[HANDSET_GROUP][HANDSET_VALUE, 1] = -1.0
        net.dense_w[0][0, 0] = 1.0
        net.dense_w[0][1, 1] = 1.0
        net.dense_w[1][0, 0] = 1.0
        net.dense_w[1][1, 0] = -1.0
    return net


def write_placeholder(directory: str | Path = HERE / PLACEHOLDER) -> Path:
    """Write the placeholder's ``config.json`` and ``model.safetensors`` (``python -m mulo.celo2.pretrained``)."""
    return build_handset_adam().save_pretrained(directory)
