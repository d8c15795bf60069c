"""μP models with declared roles, used by the meta-training tasks and the evaluations (docs/ALGORITHM.md §8)."""

from __future__ import annotations

import torch
from torch import nn

from mulo.mup import MuReadout, ParamRole, fan_in, init_


def _declared_roles(model: nn.Module, is_other, is_input) -> dict[str, ParamRole]:
    """Roles of a model whose readout is ``readout``: ``other`` where ``is_other(name, p)``, ``output`` for
    the readout's weights, ``input`` where ``is_input(name)``, ``hidden`` for every other tensor."""
    out = {}
    for name, p in model.named_parameters():
        if is_other(name, p):
            role = "other"
        elif name.startswith("readout"):
            role = "output"
        elif is_input(name):
            role = "input"
        else:
            role = "hidden"
        out[name] = ParamRole(role, fan_in(p))
    return out


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
        return _declared_roles(self, lambda name, p: name.endswith("bias"), lambda name: name == "layers.0.weight")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.readout(x)


class MuTransformerLM(nn.Module):
    """A small pre-LN causal transformer language model in μP (docs/ALGORITHM.md §8).

    Attention logits use 1/d_head (not 1/√d_head); embeddings, LayerNorms and biases are ``input``/``other``;
    Q/K/V/output projections and MLP weights are ``hidden`` (lr / fan_in: 1/d, and 1/(4d) for the MLP's
    second matrix); the readout is a :class:`MuReadout`.
    """

    def __init__(self, vocab: int, width: int, depth: int, heads: int, context: int, *, generator=None):
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.heads, self.context = heads, context
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.ModuleDict(
                {
                    "ln1": nn.LayerNorm(width),
                    "qkv": nn.Linear(width, 3 * width),
                    "proj": nn.Linear(width, width),
                    "ln2": nn.LayerNorm(width),
                    "fc": nn.Linear(width, 4 * width),
                    "out": nn.Linear(4 * width, width),
                }
            )
            self.blocks.append(block)
        self.ln_f = nn.LayerNorm(width)
        self.readout = MuReadout(width, vocab)
        init_(self, self.roles(), generator=generator)

    def roles(self) -> dict[str, ParamRole]:
        return _declared_roles(self, lambda name, p: p.dim() < 2, lambda name: name.startswith(("tok", "pos")))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        d = x.shape[-1] // self.heads
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["ln1"](x)).split(x.shape[-1], dim=-1)
            q, k, v = (z.view(b, t, self.heads, d).transpose(1, 2) for z in (q, k, v))
            att = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / d)
            x = x + blk["proj"](att.transpose(1, 2).reshape(b, t, -1))
            x = x + blk["out"](torch.relu(blk["fc"](blk["ln2"](x))))
        return self.readout(self.ln_f(x))
