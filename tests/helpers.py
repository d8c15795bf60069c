"""Inputs the parity tests share: gradients with heterogeneous row/column scales, the shape zoo."""

import torch

# 0-d, 1-d, odd 2-d (both orientations and a tie), 3-d and 4-d (conv) shapes.
SHAPES = [(), (1,), (7,), (3, 5), (5, 3), (4, 4), (2, 3, 4), (4, 3, 3, 2), (6, 2, 3, 3)]


def shape_id(shape) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"


def hetero_grad(shape, dtype=torch.float64, generator=None, scale: float = 1.0) -> torch.Tensor:
    """N(0,1) times per-axis scales spanning decades, so rows and columns differ (PyLO's trap, §6)."""
    g = torch.randn(shape, dtype=dtype, generator=generator)
    for axis, n in enumerate(shape):
        s = torch.logspace(-2, 1, n, dtype=dtype)[torch.randperm(n, generator=generator)]
        g = g * s.view([n if a == axis else 1 for a in range(len(shape))])
    return g * scale


def random_net(generator=None, dtype=torch.float64, config=None):
    """A fresh LOptNet with non-zero biases. With the nominal term (``config.nominal``) the third output row is
    scaled so that exp(n·exp_mult) moves visibly away from 1 (n of a few hundred, as meta-training can reach)."""
    from mulo import LOptNet

    net = LOptNet(config, generator=generator)
    with torch.no_grad():  # non-zero biases so every term of the MLP is exercised
        for layer in net.network.values():
            layer.bias.normal_(0.0, 0.3, generator=generator)
        if net.config.nominal is not None:
            out = net.network["output"]
            out.weight[2].mul_(300.0)
            out.bias[2] = 200.0
    return net
