"""The reference backend against the independent numpy oracle and against hand-derived values."""

import math

import numpy as np
import pytest
import torch

from mulo.backends import reference as ref
from mulo.lopt import constants as C
from mulo.lopt.shapes import accumulator_shapes, factored_dims
from mulo.lopt.state import init_state
from tests import oracle
from tests.helpers import SHAPES, hetero_grad, random_net, shape_id
from tests.tolerances import assert_close

KEY = ("oracle", torch.float64)


def torch_state(shape, math_shape=None):
    st = {
        "step": torch.zeros((), dtype=torch.float32),
        "momentum": torch.zeros((3, *shape), dtype=torch.float64),
        "second_moment": torch.zeros(shape, dtype=torch.float64),
        "nonfinite_skips": torch.zeros((), dtype=torch.float32),
    }
    for k, s in accumulator_shapes(math_shape or shape).items():
        st[k] = torch.zeros(s, dtype=torch.float64)
    return st


def numpy_layers(net):
    return [
        (w.detach().double().numpy(), b.detach().double().numpy())
        for w, b in ((l.weight, l.bias) for l in net.network.values())
    ]


@pytest.mark.parametrize("shape", [s for s in SHAPES if s], ids=shape_id)
def test_reference_matches_oracle_over_steps(shape):
    net = random_net()
    w = net.meta_weights("cpu", torch.float64)
    layers = numpy_layers(net)
    p = torch.randn(shape, dtype=torch.float64)
    st = torch_state(shape)
    p_np, st_np = p.numpy().copy(), oracle.new_state(shape)
    for t in range(4):
        g = hetero_grad(shape)
        feats, _ = ref.features_and_state(g, p.clone(), st, w)
        p_np, st_np, raw, norm, upd = oracle.step(p_np, g.numpy(), st_np, layers, lr=0.7, wd=0.05)
        assert_close(feats.reshape(28, -1).t(), torch.from_numpy(raw), KEY, f"features step {t}")
        assert_close(ref.normalize(feats).reshape(28, -1).t(), torch.from_numpy(norm), KEY, f"normalized step {t}")
        ref.step_one(p, g, st, 0.7, 0.05, w)
        assert_close(p, torch.from_numpy(p_np), KEY, f"param step {t}")
        assert_close(st["momentum"], torch.from_numpy(st_np["m"]), KEY, "momentum")
        assert_close(st["second_moment"], torch.from_numpy(st_np["v"]), KEY, "second moment")
        for k_t, k_np in (("row", "r"), ("col", "c"), ("full", "u")):
            if k_t in st:
                assert_close(st[k_t], torch.from_numpy(st_np[k_np]), KEY, k_t)
        assert st["step"].item() == t + 1


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((3, 5), (0, 1)),
        ((5, 3), (1, 0)),
        ((4, 4), (0, 1)),
        ((2, 3, 4), (1, 2)),
        ((4, 3, 3, 2), (2, 0)),
        ((3, 7, 7), (1, 2)),
        ((7, 2, 7), (0, 2)),
        ((5,), None),
        ((1,), None),
    ],
    ids=str,
)
def test_factored_dims_follow_stable_argsort(shape, expected):
    assert factored_dims(shape) == expected
    assert oracle.fdims(shape) == expected


def test_hand_derived_first_step_2d():
    """Zero state, t = 0: every feature of one element written out by hand."""
    net = random_net()
    w = net.meta_weights("cpu", torch.float64)
    g = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.25, -1.0]], dtype=torch.float64)  # (2,3): d0 = 1, d1 = 0
    p = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=torch.float64)
    feats, new = ref.features_and_state(g, p, torch_state((2, 3)), w)
    bm, bv, bf = C.MOMENTUM_OFFSETS, w.rms_decay, w.adafactor_decays
    i, j = 1, 2  # element g = -1.0
    gi = -1.0
    s = g**2 + 1e-30
    row = [(1 - bf[k]) * s[:, j].mean() for k in range(3)]  # r: axis d0=1 reduced → indexed by i? no:
    # r keeps axis 0 (the rows, length 2) after reducing d0 = 1; c keeps axis 1 after reducing d1 = 0.
    r = [(1 - bf[k]) * s[i, :].mean() for k in range(3)]
    c = [(1 - bf[k]) * s[:, j].mean() for k in range(3)]
    r_all = [(1 - bf[k]) * s.mean(dim=1) for k in range(3)]
    del row, bm
    m = [(1 - w.momentum_decays[k]) * gi for k in range(3)]
    v = (1 - bv) * gi**2
    rf = [1 / math.sqrt(max(r[k] / (r_all[k].mean() + 1e-9), 1e-9)) for k in range(3)]
    cf = [1 / math.sqrt(max(c[k], 1e-9)) for k in range(3)]
    expected = [
        gi,
        0.6,
        *m,
        v,
        *[mk / math.sqrt(v + 1e-6) for mk in m],
        1 / math.sqrt(v + 1e-6),
        *[gi * rf[k] * cf[k] for k in range(3)],
        *r,
        *c,
        *[1 / math.sqrt(x + 1e-8) for x in r],
        *[1 / math.sqrt(x + 1e-8) for x in c],
        *[m[k] * rf[k] * cf[k] for k in range(3)],
    ]
    got = feats[:, i, j]
    assert_close(got, torch.tensor([float(x) for x in expected], dtype=torch.float64), KEY, "hand features")
    assert new["row"].shape == (3, 2) and new["col"].shape == (3, 3)


def test_hand_derived_1d_and_scalar():
    net = random_net()
    w = net.meta_weights("cpu", torch.float64)
    g = torch.tensor([2.0], dtype=torch.float64)
    feats, new = ref.features_and_state(g, torch.tensor([0.5], dtype=torch.float64), torch_state((1,)), w)
    bf = w.adafactor_decays
    u = [(1 - bf[k]) * (4.0 + 1e-30) for k in range(3)]
    assert_close(new["full"][:, 0], torch.tensor(u, dtype=torch.float64), KEY, "u")
    m = [(1 - w.momentum_decays[k]) * 2.0 for k in range(3)]
    assert_close(
        feats[10:13, 0], torch.tensor([2.0 / math.sqrt(uk + 1e-9) for uk in u], dtype=torch.float64), KEY, "fac_g"
    )
    assert_close(feats[13:19, 0], torch.tensor(u + u, dtype=torch.float64), KEY, "row/col features = u")
    assert_close(
        feats[25:28, 0],
        torch.tensor([mk / math.sqrt(uk + 1e-6) for mk, uk in zip(m, u)], dtype=torch.float64),
        KEY,
        "fac_m",
    )
    # a single element normalizes every channel to x / sqrt(1e-5 + x²)
    x = feats[:, 0]
    assert_close(ref.normalize(feats)[:, 0], x / torch.sqrt(1e-5 + x * x), KEY, "normalized single element")


def test_time_features():
    t = torch.tensor(3.0)
    got = ref.time_features(t, torch.float64)
    expected = torch.tensor([math.tanh(3.0 / tau - 1.0) for tau in C.TIMESCALES], dtype=torch.float64)
    assert_close(got, expected, KEY, "time features at t=3")
    assert_close(
        ref.time_features(torch.tensor(0.0), torch.float64),
        torch.full((11,), math.tanh(-1.0), dtype=torch.float64),
        KEY,
        "time features at t=0",
    )


@pytest.mark.parametrize(("t", "clamp", "reads"), [(2500.0, 1000.0, 1000.0), (400.0, 1000.0, 400.0), (7.0, None, 7.0)])
def test_time_clamp_reads_min_of_t_and_clamp(t, clamp, reads):
    got = ref.time_features(torch.tensor(t), torch.float64, clamp)
    expected = torch.tensor([math.tanh(reads / tau - 1.0) for tau in C.TIMESCALES], dtype=torch.float64)
    assert_close(got, expected, KEY, f"time features at t={t}, clamp {clamp}")


def test_time_clamp_step_past_the_clamp_is_the_step_at_the_clamp():
    """Meta-weights with time_clamp = 1000 at t = 2500 give the update the unclamped weights give at t = 1000
    (and not the one they give at t = 2500); only the step counter differs."""
    from mulo.lopt.network import LOptConfig, LOptNet

    base = random_net()
    clamped = LOptNet(LOptConfig(time_clamp=1000.0))
    clamped.load_state_dict(base.state_dict())
    g, p = hetero_grad((6, 5), dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    results = {}
    for name, net, t in (("clamped@2500", clamped, 2500.0), ("plain@1000", base, 1000.0), ("plain@2500", base, 2500.0)):
        q, st = p.clone(), torch_state((6, 5))
        st["step"].fill_(t)
        ref.step_one(q, g, st, 1.0, 0.0, net.meta_weights("cpu", torch.float64))
        results[name] = q
    assert torch.equal(results["clamped@2500"], results["plain@1000"])
    assert (results["clamped@2500"] - results["plain@2500"]).abs().max() > 1e-6


@pytest.mark.parametrize("bad", [0.0, -5.0, math.inf, math.nan])
def test_time_clamp_must_be_a_finite_step_count(bad):
    from mulo.lopt.network import LOptConfig

    with pytest.raises(ValueError, match="time_clamp"):
        LOptConfig(time_clamp=bad)


def test_time_clamp_survives_save_and_load(tmp_path):
    from mulo.lopt.network import LOptConfig, LOptNet

    LOptNet(LOptConfig(time_clamp=1000.0)).save_pretrained(tmp_path)
    assert LOptNet.from_pretrained(tmp_path).config.time_clamp == 1000.0
    assert LOptNet.from_pretrained(tmp_path, time_clamp=None).config.time_clamp is None


def _one_step_update(g, p, net):
    w = net.meta_weights("cpu", torch.float64)
    p = p.clone()
    st = torch_state(tuple(g.shape))
    p0 = p.clone()
    ref.step_one(p, g, st, 1.0, 0.0, w)
    return p0 - p


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5), (9,), (1,)], ids=shape_id)
def test_gradient_scale_changes_only_epsilon_terms(shape, monkeypatch):
    """With every ε of docs/ALGORITHM.md set to 0 the step is invariant to g → c·g (exactly, up to rounding);
    with the real ε's it is not, for gradients small enough that the ε's dominate."""
    net = random_net()
    g, p = hetero_grad(shape), torch.randn(shape, dtype=torch.float64)
    tiny, unit = _one_step_update(g * 1e-6, p, net), _one_step_update(g, p, net)
    assert (tiny - unit).abs().max() > 1e-2 * unit.abs().max(), "ε terms should matter for tiny gradients"
    for name in ("EPS_GRAD_SQ", "EPS_SAFE_RSQRT", "EPS_RMS", "EPS_ACC_FEATURE", "EPS_NORMALIZE"):
        monkeypatch.setattr(C, name, 0.0)
    base = _one_step_update(g, p, net)
    for c in (1e-6, 1e-2, 37.0, 1e5):
        assert_close(_one_step_update(g * c, p, net), base, KEY, f"update at g·{c:g} with ε = 0")


def test_row_permutation_equivariance():
    net = random_net()
    g, p = hetero_grad((5, 7)), torch.randn(5, 7, dtype=torch.float64)
    perm = torch.randperm(5)
    assert_close(_one_step_update(g[perm], p[perm], net), _one_step_update(g, p, net)[perm], KEY, "permuted rows")


def test_jax_layout_is_transposed_torch_layout():
    from mulo.lopt.network import LOptConfig, LOptNet

    net = random_net()
    jax_net = LOptNet(LOptConfig(layout="jax"))
    jax_net.load_state_dict(net.state_dict())
    g, p = hetero_grad((4, 6)), torch.randn(4, 6, dtype=torch.float64)
    wj = jax_net.meta_weights("cpu", torch.float64)
    st = torch_state((4, 6), math_shape=(6, 4))
    pj = p.clone()
    ref.step_one(pj, g, st, 1.0, 0.0, wj)
    assert_close(p - pj, _one_step_update(g.t().contiguous(), p.t().contiguous(), net).t(), KEY, "jax layout")


def test_nonfinite_gradient_is_skipped_and_counted():
    net = random_net()
    w = net.meta_weights("cpu", torch.float64)
    p = torch.randn(3, 4, dtype=torch.float64)
    st = torch_state((3, 4))
    ref.step_one(p, hetero_grad((3, 4)), st, 1.0, 0.0, w)
    before = {k: v.clone() for k, v in st.items()}
    p_before = p.clone()
    g = hetero_grad((3, 4))
    g[1, 2] = float("nan")
    ref.step_one(p, g, st, 1.0, 0.0, w)
    assert torch.equal(p, p_before)
    for k in ("momentum", "second_moment", "row", "col", "step"):
        assert torch.equal(st[k], before[k]), k
    assert st["nonfinite_skips"].item() == 1


def test_mlp_chunking_does_not_change_result(monkeypatch):
    net = random_net()
    g, p = hetero_grad((37, 11)), torch.randn(37, 11, dtype=torch.float64)
    full = _one_step_update(g, p, net)
    monkeypatch.setattr(ref, "MLP_CHUNK", 50)
    assert_close(_one_step_update(g, p, net), full, KEY, "chunked MLP")


def test_oracle_constants_agree_with_package():
    from mulo.lopt.network import LOptConfig

    cfg = LOptConfig()
    np.testing.assert_allclose(cfg.momentum_decays, oracle.BM, rtol=0, atol=0)
    np.testing.assert_allclose(cfg.adafactor_decays, oracle.BF, rtol=0, atol=0)
    # the effective values quoted in docs/ALGORITHM.md §1 (5 decimals)
    np.testing.assert_allclose(cfg.momentum_decays, (0.54203, 0.95844, 0.99802), atol=6e-6)
    np.testing.assert_allclose(cfg.rms_decay, 0.99889, atol=6e-6)
    np.testing.assert_allclose(cfg.adafactor_decays, (0.35622, 0.99663, 0.99946), atol=6e-6)


# ---- the nominal term (LOptConfig.nominal, off by default) -------------------------------------------------------
@pytest.mark.parametrize("shape", [(), (7,), (6, 5), (2, 3, 4, 5)], ids=shape_id)
def test_nominal_term_matches_oracle_over_steps(shape):
    """With a third output head the update gains α·exp(n·exp_mult)·mean_k m_k/√(v + 1e-6): the reference
    against the numpy oracle (which writes the term per element from m and v) over 4 steps, lr and weight decay."""
    from mulo.lopt.network import LOptConfig

    net = random_net(config=LOptConfig(nominal=0.02))
    w = net.meta_weights("cpu", torch.float64)
    layers = numpy_layers(net)
    p = torch.randn(shape, dtype=torch.float64)
    st = init_state(shape, torch.float64)  # a 0-d tensor's state is that of shape (1,), as the optimizer keeps it
    p_np, st_np = p.numpy().reshape(shape or (1,)).copy(), oracle.new_state(shape or (1,))
    for t in range(4):
        g = hetero_grad(shape)
        p_np, st_np, *_ = oracle.step(p_np, g.numpy().reshape(p_np.shape), st_np, layers, lr=0.7, wd=0.05, nominal=0.02)
        ref.step_one(p, g, st, 0.7, 0.05, w)
        assert_close(p, torch.from_numpy(p_np).reshape(p.shape), KEY, f"param step {t}")


def test_nominal_term_alone_is_the_mean_of_the_momenta_over_root_v():
    """Direction output and nominal head zero: the first step is exactly lr·α·mean_k (1 − β_m,k)·g / √((1 − β_v)·g²
    + 1e-6) (decays written from the published offsets, not read from the code); a head bias c scales it by
    exp(c·exp_mult)."""
    from mulo.lopt.network import LOptConfig, LOptNet

    alpha, lr, shape = 0.05, 0.3, (5, 4)
    net = LOptNet(LOptConfig(nominal=alpha))
    assert net.network["output"].weight.shape == (3, 32)
    g, p = hetero_grad(shape), torch.randn(shape, dtype=torch.float64)
    # docs/ALGORITHM.md §1: β = 1 − exp(10·(ln(1 − β0)/10 + o)) from μLO_M's starting decays and offsets
    bm = [
        1 - math.exp(10 * (math.log(1 - b0) / 10 + o))
        for b0, o in zip((0.9, 0.99, 0.999), (0.15216392, 0.14245212, 0.06812963))
    ]
    bv = 1 - math.exp(10 * (math.log(1 - 0.999) / 10 + 0.01079706))
    adam_like = sum((1 - b) * g for b in bm) / 3 / torch.sqrt((1 - bv) * g * g + 1e-6)
    for c in (0.0, 400.0):
        with torch.no_grad():
            net.network["output"].weight.zero_()
            net.network["output"].bias.copy_(torch.tensor([0.0, 0.0, c]))
        q, st = p.clone(), torch_state(shape)
        ref.step_one(q, g, st, lr, 0.0, net.meta_weights("cpu", torch.float64))
        expected = lr * alpha * math.exp(c * 0.001) * adam_like
        torch.testing.assert_close(p - q, expected, rtol=1e-9, atol=0.0)


def test_default_config_keeps_the_two_output_network_and_the_exact_update():
    """Without ``nominal`` (μLO_M's weights, every shipped file) the network has two outputs and the hyper vector's
    nominal is 0, which the kernels read as "no term"."""
    from mulo.lopt import spec
    from mulo.lopt.network import LOptConfig, LOptNet

    net = LOptNet()
    assert net.config.nominal is None and net.network["output"].weight.shape == (2, 32)
    assert spec.hyper_vector(net.meta_weights("cpu", torch.float32))[spec.HYPER_ORDER.index("nominal")] == 0.0
    assert spec.hyper_vector(LOptNet(LOptConfig(nominal=0.01)).meta_weights("cpu", torch.float32))[-1] == 0.01


@pytest.mark.parametrize("bad", [0.0, -1e-3, math.inf, math.nan])
def test_nominal_must_be_a_positive_size(bad):
    from mulo.lopt.network import LOptConfig

    with pytest.raises(ValueError, match=r"LOptConfig.nominal must be None .* α > 0"):
        LOptConfig(nominal=bad)


def test_nominal_survives_save_and_load_and_a_mismatched_head_is_named(tmp_path):
    from mulo.lopt.network import LOptConfig, LOptNet

    net = random_net(config=LOptConfig(nominal=0.01))
    net.save_pretrained(tmp_path)
    back = LOptNet.from_pretrained(tmp_path)
    assert back.config.nominal == 0.01
    assert torch.equal(back.network["output"].weight, net.network["output"].weight.float())
    with pytest.raises(ValueError, match=r"output.weight' has shape \(3, 32\), expected \(2, 32\).*nominal=None"):
        LOptNet.from_pretrained(tmp_path, nominal=None)
