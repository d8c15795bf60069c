"""θ, the meta-parameters being meta-trained, as one flat vector (docs/ALGORITHM.md §7).

θ is the meta-network's weights in ``LOptNet.state_dict()`` order (input, linear_0, …, output; weight then
bias): 2,402 numbers for the 39→32→32→2 network. The decay offsets stay fixed at the config's values (the
published μLO_M ones); meta-training them is not implemented here.
"""

from __future__ import annotations

import dataclasses

import torch

from mulo.backends.population import PopulationMetaWeights
from mulo.lopt.network import LOptConfig, LOptNet, meta_scalars


def layer_shapes(config: LOptConfig) -> list[tuple[tuple[int, int], tuple[int]]]:
    """((out, in), (out,)) of each Linear of the meta-network, in order."""
    sizes = [config.input_size] + [config.hidden_size] * (config.hidden_layers + 1) + [config.output_size]
    return [((o, i), (o,)) for i, o in zip(sizes[:-1], sizes[1:])]


def theta_size(config: LOptConfig) -> int:
    return sum(o * i + o for (o, i), _ in layer_shapes(config))


def flatten(net: LOptNet) -> torch.Tensor:
    """The flat θ of ``net`` (float32, CPU)."""
    return torch.cat([t.detach().reshape(-1).to("cpu", torch.float32) for t in net.state_dict().values()])


def to_net(theta: torch.Tensor, config: LOptConfig) -> LOptNet:
    """An ``LOptNet`` holding the flat ``theta``."""
    if theta.shape != (theta_size(config),):
        raise ValueError(f"theta has shape {tuple(theta.shape)}, expected ({theta_size(config)},) for this LOptConfig")
    net = LOptNet(config)
    offset = 0
    state = {}
    for key, ref in net.state_dict().items():
        n = ref.numel()
        state[key] = theta[offset : offset + n].detach().reshape(ref.shape).to("cpu", torch.float32)
        offset += n
    net.load_state_dict(state)
    return net


def population_weights(thetas: torch.Tensor, config: LOptConfig) -> PopulationMetaWeights:
    """Meta-weights of M members from a (M, D) matrix of flat θs (views into ``thetas``; same device/dtype)."""
    m = thetas.shape[0]
    layers = []
    offset = 0
    for (o, i), _ in layer_shapes(config):
        w = thetas[:, offset : offset + o * i].reshape(m, o, i)
        offset += o * i
        b = thetas[:, offset : offset + o]
        offset += o
        layers.append((w, b))
    if offset != thetas.shape[1]:
        raise ValueError(f"thetas has {thetas.shape[1]} columns, expected {offset} for this LOptConfig")
    return PopulationMetaWeights(layers=tuple(layers), **meta_scalars(config))


def with_step_mult(config: LOptConfig, step_mult: float, **info) -> LOptConfig:
    return dataclasses.replace(config, step_mult=step_mult, info={**config.info, **info})


@torch.no_grad()
def with_nominal_head(net: LOptNet, nominal: float) -> LOptNet:
    """``net`` (two outputs) with the nominal term of size ``nominal`` added: a third output row and bias of
    zeros, so its magnitude starts at exp(0) = 1 and every other output is unchanged."""
    config = dataclasses.replace(net.config, nominal=nominal)
    out = LOptNet.blank(config)
    state = dict(net.state_dict())
    w, b = state["network.output.weight"], state["network.output.bias"]
    state["network.output.weight"] = torch.cat([w, torch.zeros_like(w[:1])])
    state["network.output.bias"] = torch.cat([b, torch.zeros_like(b[:1])])
    out.load_state_dict(state)
    return out
