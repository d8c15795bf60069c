"""Meta-weights shipped with mulo.

Until mulo ships its own meta-trained μLO (issue "Meta-train and ship mulo's own μLO"), the default is a
*placeholder*: ``placeholder_handset_adam``, a network whose weights were set by hand (not learned) so
that its output is the RMS-normalized momentum-over-RMS channel, i.e. a normalized Adam-like step
``0.01 · m₂/√v / rms(m₂/√v)``. It is a working optimizer but not μLO; ``MuLO`` warns whenever it is used.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mulo.lopt.network import LOptConfig, LOptNet

HERE = Path(__file__).resolve().parent
DEFAULT = "placeholder_handset_adam"
# Feature channel 7 is m_2 · rsqrt(v + 1e-6) with the middle momentum decay (ALGORITHM.md §2).
HANDSET_CHANNEL = 7


def default_weights_dir() -> Path:
    return HERE / DEFAULT


def build_handset_adam() -> LOptNet:
    """The placeholder network: out[0] = relu(x₇) − relu(−x₇) = x₇ (normalized m₂/√v), out[1] = 0."""
    info = {
        "name": DEFAULT,
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


if __name__ == "__main__":
    # regenerate the shipped files:
    # python -c "import mulo.lopt.pretrained as m; m.build_handset_adam().save_pretrained(m.default_weights_dir())"
    print(build_handset_adam().save_pretrained(default_weights_dir()))
