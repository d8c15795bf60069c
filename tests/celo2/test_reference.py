"""The Celo2 reference against the independent numpy oracle (tests/celo2/oracle.py), stage by stage and over
several steps of the optimizer, and Newton–Schulz batched over shape groups."""

import numpy as np
import pytest
import torch

import mulo
from mulo.celo2 import reference
from tests.celo2 import oracle
from tests.celo2.common import numpy_weights, random_celo2_net
from tests.helpers import hetero_grad

# odd 2-d (both orientations, a square), rank 3 and a conv kernel (O, I, H, W)
SHAPES = [(3, 5), (5, 3), (4, 4), (2, 3, 4), (2, 2, 3, 3)]
F64 = (1e-10, 1e-12)


def close(actual, expected, tol=F64, what=""):
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else actual
    np.testing.assert_allclose(actual, expected, rtol=tol[0], atol=tol[1], err_msg=what)


def warm_state(shape, steps=2):
    """A learned-rule state after a few gradients (non-zero accumulators), as torch and numpy."""
    state = reference.init_state(shape, False, "last2", torch.float64, torch.device("cpu"))
    views = reference.state_views(state, "last2")
    for _ in range(steps):
        acc = reference.accumulate(hetero_grad(shape), views)
        for key in ("momentum", "second_moment", "row", "col"):
            views[key].copy_(getattr(acc, key))
    np_state = {"m": state["momentum"].numpy(), "v": state["second_moment"].numpy(), "r": state["row"].numpy()}
    np_state["c"] = state["col"].numpy()
    return views, np_state


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_features_normalization_network_match_the_oracle(shape):
    views, st = warm_state(shape)
    g, p = hetero_grad(shape) * 3, torch.randn(shape, dtype=torch.float64)
    net = random_celo2_net()
    acc = reference.accumulate(g, views)
    m, v, r, c, rf, cf = oracle.accumulate(g.numpy(), st)
    for name, got, want in (
        ("m", acc.momentum, m),
        ("v", acc.second_moment, v),
        ("row", acc.row, r),
        ("col", acc.col, c),
    ):
        close(got, want, what=name)
    feats = reference.features(g, p, acc)
    assert [x.shape[0] for x in feats] == list(mulo.celo2.spec.FEATURE_DIMS)
    want_feats = oracle.features(g.numpy(), p.numpy(), m, v, r, c, rf, cf)
    close(torch.cat(feats), want_feats, what="features in the table's order")
    normalized = reference.normalize_features(feats, reference.feature_sumsq(feats), shape[-2] * shape[-1])
    close(torch.cat(normalized), oracle.normalize(want_feats), what="normalized over the last two axes")
    d = reference.direction(normalized, net.meta_weights("cpu", torch.float64))
    close(d, oracle.network(oracle.normalize(want_feats), numpy_weights(net))[0], what="direction")


@pytest.mark.parametrize("shape", [(3, 7), (7, 3), (5, 5), (2, 4, 6), (1, 6), (6, 1)], ids=str)
def test_newton_schulz_and_rms_normalization_match_the_oracle(shape):
    x = hetero_grad(shape)
    got = reference.newton_schulz(x)
    close(got, oracle.newton_schulz(x.numpy()), what="Newton–Schulz")
    close(reference.normalize_last2(got), oracle.normalize(oracle.newton_schulz(x.numpy())), what="RMS")
    rms = reference.normalize_last2(got).square().mean(dim=(-2, -1))
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-6, atol=0)  # up to the 1e-9 epsilon


@pytest.mark.parametrize("orthogonalize", [True, False], ids=["celo2", "celo2_base"])
@pytest.mark.parametrize("axes", ["last2", "io"])
def test_optimizer_trajectory_matches_the_oracle(orthogonalize, axes):
    """Three steps of mulo.Celo2 in float64 (weight decay, two param groups, a bias on the AdamW route) follow
    the oracle's trajectory: every parameter and every accumulator."""
    net = random_celo2_net(1)
    params = [torch.randn(s, dtype=torch.float64) for s in SHAPES]
    bias = torch.randn(5, dtype=torch.float64)
    lrs, wds = [0.01] * 3 + [0.003] * 2, [0.1] * 3 + [0.0] * 2
    groups = [
        {"params": [*params[:3], bias], "lr": 0.01, "weight_decay": 0.1},
        {"params": params[3:], "lr": 0.003, "weight_decay": 0.0},
    ]
    opt = mulo.Celo2(groups, meta_weights=net, orthogonalize=orthogonalize, normalize_axes=axes)
    perms = [reference.axes_permutation(len(s), axes) for s in SHAPES]
    expected = [p.numpy().copy() for p in params]
    states = [oracle.new_state(reference.math_shape(s, axes)) for s in SHAPES]
    w = numpy_weights(net)
    for _ in range(3):
        for p in [*params, bias]:
            p.grad = hetero_grad(p.shape) * 10
        for i, p in enumerate(params):
            expected[i], states[i], _ = oracle.step(
                expected[i], p.grad.numpy(), states[i], w, lrs[i], wds[i], orthogonalize, perms[i]
            )
        opt.step()
    for i, p in enumerate(params):
        close(p, expected[i], what=f"parameter {SHAPES[i]}")
        st = opt.state[p]
        momentum = reference.math_view(st["momentum"], axes, stacked=True)
        for key, want in (("row", states[i]["r"]), ("col", states[i]["c"]), ("momentum", states[i]["m"])):
            close(momentum if key == "momentum" else st[key], want, what=f"{key} of {SHAPES[i]}")
        assert st["step"].item() == 3


def test_gradient_clamp_and_rms_of_the_update():
    """Gradients beyond ±1000 act as ±1000; without weight decay every slice moves by exactly lr in RMS."""
    net = random_celo2_net(2)
    a, b = torch.randn(2, 4, 6, dtype=torch.float64), None
    b = a.clone()
    opt_a, opt_b = (mulo.Celo2([t], lr=0.02, meta_weights=net) for t in (a, b))
    g = hetero_grad(a.shape) * 1e3
    a.grad, b.grad = g, g.clamp(-1000, 1000)
    before = a.clone()
    opt_a.step()
    opt_b.step()
    assert torch.equal(a, b)
    rms = (a - before).square().mean(dim=(-2, -1)).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, 0.02), rtol=1e-7, atol=0)  # up to the 1e-9 epsilon


def test_two_dim_tensors_read_the_same_under_both_axes_conventions():
    net = random_celo2_net(3)
    a = torch.randn(6, 4, dtype=torch.float64)
    b = a.clone()
    opts = [mulo.Celo2([t], meta_weights=net, normalize_axes=ax) for t, ax in ((a, "last2"), (b, "io"))]
    for _ in range(2):
        g = hetero_grad(a.shape)
        a.grad, b.grad = g, g.clone()
        for opt in opts:
            opt.step()
    assert torch.equal(a, b)


def test_newton_schulz_batched_over_a_shape_group_equals_per_tensor(monkeypatch):
    """One newton_schulz call per (oriented) slice shape — (3, 5) and (5, 3) batch together, so do a rank-3
    tensor's slices — and the batched result equals each tensor alone."""
    dirs = [hetero_grad(s) for s in [(3, 5), (5, 3), (2, 3, 5), (4, 4), (4, 4), (2, 2, 3, 3)]]
    alone = [reference.newton_schulz(d) for d in dirs]
    calls = []
    real = reference.newton_schulz

    def counting(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(reference, "newton_schulz", counting)
    batched = reference.orthogonalize_groups(dirs)
    assert sorted(calls) == [(2, 4, 4), (4, 3, 3), (4, 3, 5)], calls
    for got, want in zip(batched, alone):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)

    calls.clear()
    params = [torch.randn(s, dtype=torch.float64) for s in [(3, 5), (5, 3), (4, 4)]]
    opt = mulo.Celo2(params, meta_weights=random_celo2_net())
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert sorted(calls) == [(1, 4, 4), (2, 3, 5)], "one call chain per shape group in the optimizer's step"


def test_float32_follows_float64():
    net = random_celo2_net(4)
    p64 = [torch.randn(s, dtype=torch.float64) for s in SHAPES]
    p32 = [p.float() for p in p64]
    start = [p.clone() for p in p64]
    opts = [mulo.Celo2(ps, lr=0.01, meta_weights=net) for ps in (p64, p32)]
    for _ in range(3):
        for a, b in zip(p64, p32):
            a.grad = hetero_grad(a.shape)
            b.grad = a.grad.float()
        for opt in opts:
            opt.step()
    for a, b, s in zip(p64, p32, start):
        assert ((b.double() - a).norm() / (a - s).norm()).item() < 1e-3
    assert opts[1].state[p32[0]]["momentum"].dtype == torch.float32
