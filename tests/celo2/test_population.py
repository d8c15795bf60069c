"""The Celo2 population step (mulo/celo2/population.py): M members with their own meta-weights and learning
rates in one call == each member alone through mulo.Celo2 (reference and cpu backends); the cpu backend steps the
whole population in one call per pass; the flat θ layout round-trips."""

import pytest
import torch

import mulo
from mulo.celo2 import Celo2Net, population
from tests.celo2.common import random_celo2_net
from tests.helpers import hetero_grad
from tests.tolerances import assert_close

# learned rule (2-d, rank 3, conv) and the AdamW route (1-d, 0-d), an empty tensor
SHAPES = [(5, 7), (3, 4, 6), (4, 2, 3, 3), (7,), (), (0, 3)]
M = 3


def population_setup(dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    nets = [random_celo2_net(seed + j) for j in range(M)]
    weights = population.PopulationWeights.stack([n.meta_weights("cpu", dtype) for n in nets])
    params = [torch.randn((M, *s), dtype=dtype, generator=gen) for s in SHAPES]
    states = [population.init_population_state(p) for p in params]
    lrs = [[0.01, 0.02, 0.005], 0.01, [0.03, 0.01, 0.02], 0.02, [0.01, 0.0, 0.02], 0.01]  # shared or per member
    wds = [0.1, 0.0, 0.05, 0.1, 0.0, 0.0]
    return nets, weights, params, states, lrs, wds


def members(nets, params, lrs, wds, backend, options: population.PopulationOptions):
    """Each member as its own mulo.Celo2 (one param group per tensor: its lr and weight decay)."""
    out = []
    for j, net in enumerate(nets):
        ps = [p[j].clone() for p in params]
        groups = [
            {"params": [p], "lr": lr[j] if isinstance(lr, list) else lr, "weight_decay": wd}
            for p, lr, wd in zip(ps, lrs, wds)
        ]
        opt = mulo.Celo2(groups, meta_weights=net, backend=backend, orthogonalize=options.orthogonalize,
                         normalize_axes=options.axes, adam_lr_mult=options.adam_lr_mult)  # fmt: skip
        out.append((ps, opt))
    return out


def grads_for(params, nonfinite_member=None):
    grads = [torch.stack([hetero_grad(p.shape[1:], dtype=p.dtype) for _ in range(M)]) for p in params]
    if nonfinite_member is not None:
        grads[0][nonfinite_member, 1, 2] = float("nan")  # that member's 2-d tensor is skipped, the others step
        grads[3][nonfinite_member, 0] = float("inf")
    return grads


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("orthogonalize", [True, False], ids=["celo2", "celo2_base"])
@pytest.mark.parametrize("axes", ["last2", "io"])
def test_population_step_equals_member_by_member(backend, orthogonalize, axes):
    dtype = torch.float64 if backend == "reference" else torch.float32
    options = population.PopulationOptions(orthogonalize=orthogonalize, axes=axes, adam_lr_mult=0.5)
    nets, weights, params, states, lrs, wds = population_setup(dtype, int(torch.randint(0, 1000, ())))
    states = [population.init_population_state(p, axes) for p in params]
    solo = members(nets, params, lrs, wds, backend, options)
    step = population.backend_population_step(backend, "cpu", options)
    assert step.backend == backend
    for t in range(3):
        grads = grads_for(params, nonfinite_member=1 if t == 1 else None)
        step(params, grads, states, lrs, wds, weights)
        for j, (ps, opt) in enumerate(solo):
            for p, g in zip(ps, grads):
                p.grad = g[j].clone()
            opt.step()
    for j, (ps, opt) in enumerate(solo):
        for i, p in enumerate(ps):
            where = f"member {j}, tensor {i} {tuple(p.shape)}"
            assert_close(params[i][j], p, ("population", dtype), f"{where}: parameter")
            for key, value in opt.state[p].items():
                assert_close(states[i][key][j], value, ("population", dtype), f"{where}: {key}")
    assert states[0]["nonfinite_skips"].tolist() == [0.0, 1.0, 0.0]


def test_cpu_population_is_one_call_per_pass(monkeypatch):
    """Every member's learned tensors go through one run of the passes, each with its member's weight set."""
    from mulo.celo2 import cpu

    calls = []
    real = cpu.run_passes

    def counting(bucket, grads, lrs, wds, mlp, **kw):
        calls.append((len(bucket.params), list(kw["weight_index"]), mlp[0].shape))
        return real(bucket, grads, lrs, wds, mlp, **kw)

    monkeypatch.setattr(cpu, "run_passes", counting)
    _, weights, params, states, lrs, wds = population_setup(torch.float32, 0)
    step = population.backend_population_step("cpu")
    step(params, grads_for(params), states, lrs, wds, weights)
    learned = [s for s in SHAPES if len(s) >= 2 and 0 not in s]
    assert calls == [(M * len(learned), [j for j in range(M) for _ in learned], (M, 8, 30))]


def test_theta_round_trip_and_layout():
    net = random_celo2_net(5)
    theta = population.flatten(net)
    assert theta.shape == (population.theta_size(net.config),) == (347,)
    again = population.to_net(theta, net.config)
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    w = population.population_weights(torch.stack([theta, 2 * theta]), net.config)
    one = net.meta_weights("cpu", torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(w.member(0).w0, one.w0))
    assert torch.equal(w.member(1).dense[1][0], 2 * one.dense[1][0])
    with pytest.raises(ValueError, match="expected 347 columns|expected \\(347,\\)"):
        population.to_net(theta[:-1], net.config)


def test_population_state_slices_are_the_optimizers_state():
    for shape in SHAPES:
        p = torch.randn(shape)
        opt = mulo.Celo2([p], meta_weights=Celo2Net())
        st = population.init_population_state(torch.randn(M, *shape))
        one = opt._init_state(p, opt.param_groups[0])
        assert {k: v[0].shape for k, v in st.items()} == {k: v.shape for k, v in one.items()}, shape
