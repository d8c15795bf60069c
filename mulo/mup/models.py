"""μP models used by the demo, the meta-training tasks and the evaluations (ALGORITHM.md §8)."""

from __future__ import annotations

import torch
from torch import nn

from mulo.mup import MuReadout, ParamRole, fan_in, init_


class MuMLP(nn.Module):
    """ReLU MLP in μP: ``input`` Linear → ``depth − 1`` hidden Linears → :class:`MuReadout`.

    Roles are declared, not guessed: :meth:`roles` gives ``input`` / ``hidden`` / ``output`` / ``other``.
    ``bias_std`` follows the reference ``mu_mlp`` (biases N(0, 1)) when 1.0.
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        depth: int,
        out_features: int,
        *,
        output_mult: float = 1.0,
        bias_std: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be ≥ 1 (number of hidden layers), got {depth}")
        self.layers = nn.ModuleList([nn.Linear(in_features, width)])
        self.layers.extend(nn.Linear(width, width) for _ in range(depth - 1))
        self.readout = MuReadout(width, out_features, output_mult=output_mult)
        init_(self, self.roles(), bias_std=bias_std, generator=generator)

    def roles(self) -> dict[str, ParamRole]:
        out = {}
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                role = "other"
            elif name.startswith("readout"):
                role = "output"
            elif name == "layers.0.weight":
                role = "input"
            else:
                role = "hidden"
            out[name] = ParamRole(role, fan_in(p))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.readout(x)
