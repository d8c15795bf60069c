"""μP: roles, the readout multiplier, initialization statistics, hidden lr = lr / fan_in in MuLO."""

import math

import pytest
import torch
from torch import nn

import mulo
from mulo.mup import MuReadout, ParamRole, infer_roles, init_, param_groups
from mulo.mup.models import MuMLP
from tests.helpers import hetero_grad, random_net
from tests.tolerances import assert_close


def test_readout_multiplies_after_bias():
    r = MuReadout(16, 3, output_mult=2.0)
    assert r.weight.abs().max() == 0 and r.bias.abs().max() == 0
    with torch.no_grad():
        r.weight.normal_()
        r.bias.normal_()
    x = torch.randn(4, 16)
    torch.testing.assert_close(r(x), (x @ r.weight.T + r.bias) * 2.0 / 16)


def test_mumlp_roles_and_init_statistics():
    width = 512
    m = MuMLP(64, width, 3, 10, generator=torch.Generator().manual_seed(0))
    roles = m.roles()
    assert roles["layers.0.weight"] == ParamRole("input", 64)
    assert roles["layers.1.weight"] == ParamRole("hidden", width)
    assert roles["readout.weight"].role == "output" and roles["layers.1.bias"].role == "other"
    assert roles["layers.2.weight"].lr_scale == 1 / width and roles["layers.0.weight"].lr_scale == 1.0
    trunc = 0.8796  # std of a standard normal truncated at ±2
    for name, fan in (("layers.0.weight", 64), ("layers.1.weight", width)):
        std = dict(m.named_parameters())[name].std().item()
        assert abs(std - trunc / math.sqrt(fan)) < 0.03 / math.sqrt(fan), name
    assert m.readout.weight.abs().max() == 0
    # μP: at init, hidden pre-activations have width-independent scale
    x = torch.randn(256, 64)
    h = torch.relu(m.layers[0](x))
    assert 0.2 < m.layers[1](h).std().item() < 2.0


def test_infer_roles_with_base_model_is_exact():
    def net(w):
        return nn.Sequential(nn.Linear(3072, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 10))

    roles = infer_roles(net(256), base_model=net(32))
    assert [roles[f"{i}.weight"].role for i in (0, 2, 4)] == ["input", "hidden", "output"]
    assert roles["2.weight"].fan_in == 256 and roles["2.bias"].role == "other"
    # by structure: the flattened image (3072) is produced by no layer → input; a plain Linear head is not
    # recognized as the readout (prepare converts it), and overrides correct any guess
    guess = infer_roles(net(256))
    assert [guess[f"{i}.weight"].role for i in (0, 2, 4)] == ["input", "hidden", "hidden"]
    fixed = infer_roles(net(256), overrides={"0": "hidden", "4.weight": "output"})
    assert fixed["0.weight"].role == "hidden" and fixed["4.weight"].role == "output"
    # a coincidence of sizes (input features == width) reads as hidden: the safe side (a smaller step)
    assert infer_roles(net(3072))["0.weight"].role == "hidden"


def test_infer_roles_structure_conv_embedding_readout():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 128)
            self.conv_in = nn.Conv2d(3, 128, 3)
            self.conv = nn.Conv2d(128, 128, 3)
            self.norm = nn.LayerNorm(128)
            self.head = MuReadout(128, 100)

    roles = infer_roles(M())
    assert roles["emb.weight"].role == "input" and roles["conv_in.weight"].role == "input"
    assert roles["conv.weight"] == ParamRole("hidden", 128 * 9)
    assert roles["norm.weight"].role == "other" and roles["head.weight"].role == "output"


def test_bad_overrides_and_roles():
    with pytest.raises(ValueError, match="overrides name no parameter.*nope"):
        infer_roles(nn.Linear(4, 4), overrides={"nope": "hidden"})
    with pytest.raises(ValueError, match="unknown μP role"):
        ParamRole("hiden", 3)


def test_param_groups_and_mulo_hidden_lr_is_lr_over_fan_in():
    m = MuMLP(8, 24, 2, 3)
    groups = param_groups(m, m.roles(), weight_decay=0.0)
    by_role = {(g["role"], g["lr_scale"]) for g in groups}
    assert ("hidden", 1 / 24) in by_role and ("input", 1.0) in by_role and ("output", 1.0) in by_role
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    # the hidden weight moves exactly 1/fan_in as far as it would with lr_scale 1
    net = random_net()
    hidden = m.layers[1].weight
    g = hetero_grad(tuple(hidden.shape), dtype=torch.float32)
    moves = []
    for gs in (groups, [{"params": list(m.parameters())}]):
        mm = MuMLP(8, 24, 2, 3)
        mm.load_state_dict(m.state_dict())
        gs = param_groups(mm, mm.roles()) if gs is groups else [{"params": list(mm.parameters())}]
        opt = mulo.MuLO(gs, meta_weights=net, backend="reference")
        mm.layers[1].weight.grad = g.clone()
        before = mm.layers[1].weight.detach().clone()
        opt.step()
        moves.append(before - mm.layers[1].weight.detach())
    assert_close(moves[0] * 24, moves[1], ("reference", torch.float32), "hidden lr = lr / fan_in")


def test_init_bias_std():
    m = nn.Linear(64, 4000)
    init_(m, {"weight": ParamRole("input", 64), "bias": ParamRole("other", 1)}, bias_std=1.0)
    assert 0.9 < m.bias.std().item() < 1.1
