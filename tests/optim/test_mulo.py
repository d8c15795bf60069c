"""MuLO as a torch.optim.Optimizer: trajectory exactness, state, groups, schedulers, bad input."""

import copy
import warnings

import pytest
import torch

import mulo
from mulo.backends import BackendSpec, BackendUnavailable, MuLOBackendNotice, register_backend
from tests import oracle
from tests.helpers import SHAPES, hetero_grad, random_net, shape_id
from tests.tolerances import TRAJECTORY, assert_close, movement_error

TRAJ_SHAPES = [(6, 5), (4, 3, 3, 3), (3, 5, 4), (7,), ()]


def make(shapes, dtype=torch.float64, **kw):
    params = [torch.nn.Parameter(torch.randn(s, dtype=dtype)) for s in shapes]
    net = kw.pop("net", None) or random_net()
    return params, mulo.MuLO(params, meta_weights=net, backend="reference", **kw), net


def run(params, opt, grads):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.to(p.dtype).clone()
        opt.step()


def test_float64_trajectory_matches_oracle_to_1e9():
    """40 steps, heterogeneous row/column scales, conv and rank-3 shapes (the issue's acceptance check)."""
    params, opt, net = make(TRAJ_SHAPES, lr=0.8, weight_decay=0.01)
    start = [p.detach().clone() for p in params]
    layers = [(l.weight.detach().double().numpy(), l.bias.detach().double().numpy()) for l in net.network.values()]
    ps = [p.detach().numpy().reshape(s if s else (1,)).copy() for p, s in zip(params, TRAJ_SHAPES)]
    sts = [oracle.new_state(s if s else (1,)) for s in TRAJ_SHAPES]
    for t in range(40):
        grads = [hetero_grad(s) * (1 + 0.1 * t) for s in TRAJ_SHAPES]
        run(params, opt, [grads])
        for i, g in enumerate(grads):
            ps[i], sts[i], *_ = oracle.step(ps[i], g.numpy().reshape(ps[i].shape), sts[i], layers, lr=0.8, wd=0.01)
    for p, p_np, s0 in zip(params, ps, start):
        err = movement_error(p.detach().reshape(-1), torch.from_numpy(p_np).reshape(-1), s0.reshape(-1))
        assert err < TRAJECTORY[torch.float64], f"shape {tuple(p.shape)}: movement-relative error {err:.3g}"


def test_float32_follows_float64():
    shapes = [(9, 4), (3, 2, 5, 5), (11,)]
    p64, opt64, net = make(shapes)
    p32 = [torch.nn.Parameter(p.detach().float().clone()) for p in p64]
    opt32 = mulo.MuLO(p32, meta_weights=net, backend="reference")
    start = [p.detach().clone() for p in p64]
    grads = [[hetero_grad(s) for s in shapes] for _ in range(15)]
    run(p64, opt64, grads)
    run(p32, opt32, grads)
    for a, b, s0 in zip(p32, p64, start):
        assert movement_error(a, b, s0) < TRAJECTORY[torch.float32]
    assert opt32.state[p32[0]]["momentum"].dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_state_dict_reload_mid_run_is_bit_exact(dtype):
    shapes = [(5, 4), (3, 3, 2, 2), (6,), ()]
    params, opt, net = make(shapes, dtype=dtype, lr=0.5, weight_decay=0.1)
    grads = [[hetero_grad(s) for s in shapes] for _ in range(6)]
    run(params, opt, grads[:3])
    saved_params = [p.detach().clone() for p in params]
    saved = copy.deepcopy(opt.state_dict())
    run(params, opt, grads[3:])
    # a fresh optimizer over fresh parameters, loaded from the mid-run checkpoint
    params2 = [torch.nn.Parameter(p.clone()) for p in saved_params]
    opt2 = mulo.MuLO(params2, meta_weights=net, backend="reference", lr=0.5, weight_decay=0.1)
    opt2.load_state_dict(saved)
    st = opt2.state[params2[0]]
    assert st["momentum"].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert st["step"].item() == 3
    run(params2, opt2, grads[3:])
    for a, b in zip(params, params2):
        assert torch.equal(a, b)
    for a, b in zip(params, params2):
        for k, v in opt.state[a].items():
            assert torch.equal(v, opt2.state[b][k]), k


def test_load_state_dict_rejects_wrong_shapes():
    params, opt, net = make([(4, 3)])
    run(params, opt, [[hetero_grad((4, 3))]])
    sd = opt.state_dict()
    other = [torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))]
    opt2 = mulo.MuLO(other, meta_weights=net, backend="reference")
    with pytest.raises(ValueError, match="state 'momentum'.*\\(3, 4, 3\\).*expected \\(3, 3, 4\\)"):
        opt2.load_state_dict(sd)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_state_layout(shape):
    params, opt, _ = make([shape])
    run(params, opt, [[hetero_grad(shape)]])
    st = opt.state[params[0]]
    s = shape if shape else (1,)
    assert st["momentum"].shape == (3, *s) and st["second_moment"].shape == s
    assert st["step"].dtype == torch.float32 and st["step"].item() == 1
    assert ("row" in st) == (len(s) >= 2) and ("full" in st) == (len(s) < 2)
    assert params[0].shape == shape


def test_param_groups_lr_weight_decay_and_lr_scale():
    net = random_net()
    base = torch.randn(5, 6, dtype=torch.float64)
    g = hetero_grad((5, 6))
    moves = {}
    for name, group in {"lr1": {}, "lr0.25": {"lr": 0.25}, "scale": {"lr_scale": 0.1}, "zero": {"lr": 0.0}}.items():
        p = torch.nn.Parameter(base.clone())
        opt = mulo.MuLO([{"params": [p], **group}], meta_weights=net, backend="reference")
        p.grad = g.clone()
        opt.step()
        moves[name] = base - p.detach()
    assert torch.equal(moves["zero"], torch.zeros_like(base))
    assert_close(moves["lr0.25"], 0.25 * moves["lr1"], ("oracle", torch.float64), "lr=0.25")
    assert_close(moves["scale"], 0.1 * moves["lr1"], ("oracle", torch.float64), "lr_scale=0.1")
    # decoupled weight decay after the step: p ← (p − lr·u)(1 − wd·lr)
    p = torch.nn.Parameter(base.clone())
    opt = mulo.MuLO([{"params": [p], "weight_decay": 0.3, "lr": 0.5}], meta_weights=net, backend="reference")
    p.grad = g.clone()
    opt.step()
    after_step = base - 0.5 * moves["lr1"]
    assert_close(p.detach(), after_step * (1 - 0.3 * 0.5), ("oracle", torch.float64), "weight decay")


def test_lr_scheduler_drives_lr():
    params, opt, _ = make([(3, 4)], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        params[0].grad = hetero_grad((3, 4))
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.125


def test_closure_is_called_with_grad_enabled():
    params, opt, _ = make([(3,)])

    def closure():
        assert torch.is_grad_enabled()
        opt.zero_grad()
        loss = (params[0] ** 2).sum()
        loss.backward()
        return loss

    before = params[0].detach().clone()
    loss = opt.step(closure)
    assert loss is not None and not torch.equal(before, params[0].detach())


def test_params_without_grad_are_skipped():
    params, opt, _ = make([(3,), (4, 2)])
    before = params[1].detach().clone()
    params[0].grad = torch.randn(3, dtype=torch.float64)
    opt.step()
    assert torch.equal(params[1], before) and len(opt.state[params[1]]) == 0


def test_sparse_and_complex_inputs_raise():
    emb = torch.nn.Embedding(10, 3, sparse=True).double()
    opt = mulo.MuLO(emb.parameters(), meta_weights=random_net(), backend="reference")
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradient.*sparse=False"):
        opt.step()
    with pytest.raises(TypeError, match="complex"):
        mulo.MuLO([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))], meta_weights=random_net())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"lr": -1.0}, ValueError, "lr must be finite and ≥ 0"),
        ({"weight_decay": float("nan")}, ValueError, "weight_decay"),
        ({"backend": "no-such"}, ValueError, "unknown backend 'no-such'"),
        ({"nonfinite": "ignore"}, ValueError, "nonfinite"),
        ({"state_dtype": "float16"}, ValueError, "state_dtype"),
        ({"layout": "tf"}, ValueError, "layout"),
        ({"meta_weights": 3}, TypeError, "meta_weights must be"),
    ],
    ids=lambda x: str(x)[:30],
)
def test_bad_arguments(kwargs, error, match):
    kwargs.setdefault("meta_weights", random_net())
    with pytest.raises(error, match=match):
        mulo.MuLO([torch.nn.Parameter(torch.randn(2))], **kwargs)


def test_bad_group_options_name_the_group():
    p = torch.nn.Parameter(torch.randn(2))
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr_scale'\]"):
        mulo.MuLO([{"params": [p], "lr_scale": 0.0}], meta_weights=random_net())
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\]"):
        mulo.MuLO(
            [{"params": [p]}, {"params": [torch.nn.Parameter(torch.randn(2))], "lr": -2.0}], meta_weights=random_net()
        )


def test_unavailable_backend_names_the_fix():
    register_backend(
        BackendSpec("test-missing", "mulo_no_such_module:Backend", ("cpu",), 1, "pip install mulo-no-such-module")
    )
    with pytest.raises(BackendUnavailable, match="pip install mulo-no-such-module"):
        mulo.MuLO([torch.nn.Parameter(torch.randn(2))], meta_weights=random_net(), backend="test-missing")
    # auto skips it, says which backend it chose, and says it once
    opt = mulo.MuLO([torch.nn.Parameter(torch.randn(2))], meta_weights=random_net())
    from mulo import backends

    backends._ANNOUNCED.clear()
    expected = backends.available_backends("cpu", torch.float32, auto=True)[0]  # "cpu" when mulo._C is built
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert opt.backend_for("cpu").name == expected
        opt2 = mulo.MuLO([torch.nn.Parameter(torch.randn(2))], meta_weights=random_net())
        opt2.backend_for("cpu")
    notices = [w for w in caught if issubclass(w.category, MuLOBackendNotice)]
    assert len(notices) == 1 and f"'{expected}'" in str(notices[0].message)
    assert "test-missing" in str(notices[0].message)
    backends._REGISTRY.pop("test-missing")


def test_placeholder_weights_warn_and_still_train():
    with pytest.warns(mulo.PlaceholderMetaWeightsWarning, match="placeholder"):
        opt = mulo.MuLO([torch.nn.Parameter(torch.randn(3))], meta_weights="placeholder_handset_adam")
    assert opt.net.is_placeholder
    with warnings.catch_warnings():
        warnings.simplefilter("error", mulo.PlaceholderMetaWeightsWarning)
        mulo.MuLO([torch.nn.Parameter(torch.randn(3))], meta_weights=random_net())
        default = mulo.MuLO([torch.nn.Parameter(torch.randn(3))])  # the shipped meta-trained μLO: no warning
    assert default.net.config.info["name"] == "mulo_nm" and default.net.config.time_clamp == 1000.0


def test_meta_weights_from_directory(tmp_path):
    net = random_net()
    net.save_pretrained(tmp_path / "w")
    p1, p2 = (torch.nn.Parameter(torch.ones(4, 3, dtype=torch.float64)) for _ in range(2))
    g = hetero_grad((4, 3))
    for p, mw in ((p1, net), (p2, str(tmp_path / "w"))):
        opt = mulo.MuLO([p], meta_weights=mw, backend="reference")
        p.grad = g.clone()
        opt.step()
    assert_close(p1, p2, ("kernel", torch.float32), "LOptNet vs directory (float32 file)")


def test_nonfinite_skip_policy_matches_a_run_without_the_bad_step():
    shapes = [(4, 5), (3,)]
    pa, opta, net = make(shapes)
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    optb = mulo.MuLO(pb, meta_weights=net, backend="reference")
    g1, g2 = [hetero_grad(s) for s in shapes], [hetero_grad(s) for s in shapes]
    bad = [g.clone() for g in g1]
    bad[0][2, 3] = float("inf")
    run(pa, opta, [g1, bad, g2])  # the inf step: tensor 0 skipped, tensor 1 updated
    run(pb, optb, [g1, [g1[0] * float("nan"), bad[1]], g2])
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
    assert opta.state[pa[0]]["nonfinite_skips"].item() == 1 and opta.state[pa[0]]["step"].item() == 2
    assert opta.state[pa[1]]["nonfinite_skips"].item() == 0 and opta.state[pa[1]]["step"].item() == 3


def test_nonfinite_raise_policy_changes_nothing():
    params, opt, _ = make([(4, 5), (3,)], nonfinite="raise")
    run(params, opt, [[hetero_grad((4, 5)), hetero_grad((3,))]])
    before = [p.detach().clone() for p in params]
    state_before = copy.deepcopy(opt.state_dict())
    params[0].grad = hetero_grad((4, 5))
    params[1].grad = torch.tensor([1.0, float("nan"), 2.0], dtype=torch.float64)
    with pytest.raises(FloatingPointError, match=r"param_groups\[0\]\['params'\]\[1\] \(shape \(3,\)\)"):
        opt.step()
    for a, b in zip(params, before):
        assert torch.equal(a, b)
    after = opt.state_dict()["state"]
    for k in state_before["state"]:
        for key, v in state_before["state"][k].items():
            assert torch.equal(after[k][key], v)


def test_bfloat16_params_keep_fp32_state_and_follow_fp32():
    shapes = [(8, 6)]
    p32 = [torch.nn.Parameter(torch.randn(s).bfloat16().float()) for s in shapes]
    pbf = [torch.nn.Parameter(p.detach().bfloat16()) for p in p32]
    net = random_net()
    o32 = mulo.MuLO(p32, meta_weights=net, backend="reference")
    obf = mulo.MuLO(pbf, meta_weights=net, backend="reference")
    g = [[hetero_grad(s, dtype=torch.float32) for s in shapes]]
    run(p32, o32, g)
    run(pbf, obf, g)
    assert obf.state[pbf[0]]["momentum"].dtype == torch.float32
    assert_close(pbf[0].float(), p32[0], ("kernel", torch.bfloat16), "bf16 params")


def test_bf16_state_option():
    params, opt, _ = make([(4, 4)], dtype=torch.float32, state_dtype="bfloat16")
    run(params, opt, [[hetero_grad((4, 4), dtype=torch.float32)]])
    assert opt.state[params[0]]["momentum"].dtype == torch.bfloat16


def test_meta_weight_edits_are_picked_up():
    params, opt, net = make([(3, 3)])
    run(params, opt, [[hetero_grad((3, 3))]])
    with torch.no_grad():
        for l in net.network.values():
            l.weight.zero_()
            l.bias.zero_()
    before = params[0].detach().clone()
    run(params, opt, [[hetero_grad((3, 3))]])
    assert torch.equal(params[0], before)  # zero network → zero step


@pytest.mark.gpu
def test_reference_on_cuda_matches_cpu():
    shapes = [(6, 5), (3, 3, 2, 2), (7,)]
    pc, oc, net = make(shapes)
    pg = [torch.nn.Parameter(p.detach().cuda()) for p in pc]
    og = mulo.MuLO(pg, meta_weights=net, backend="reference")
    grads = [[hetero_grad(s) for s in shapes] for _ in range(5)]
    run(pc, oc, grads)
    run(pg, og, grads)
    for a, b in zip(pg, pc):
        assert_close(a.cpu(), b, ("oracle", torch.float64), "cuda vs cpu")


def test_jax_layout_option_transposes_2d_math():
    net = random_net()
    p_jax = torch.nn.Parameter(torch.randn(4, 6, dtype=torch.float64))
    p_t = torch.nn.Parameter(p_jax.detach().t().contiguous())
    oj = mulo.MuLO([p_jax], meta_weights=net, backend="reference", layout="jax")
    ot = mulo.MuLO([p_t], meta_weights=net, backend="reference")
    for _ in range(3):
        g = hetero_grad((4, 6))
        p_jax.grad, p_t.grad = g.clone(), g.t().contiguous()
        oj.step()
        ot.step()
    assert_close(p_jax.detach().t(), p_t.detach(), ("oracle", torch.float64), "jax layout")
    st = oj.state[p_jax]
    assert st["momentum"].shape == (3, 4, 6) and st["row"].shape == (3, 4) and st["col"].shape == (3, 6)
    assert_close(st["momentum"].transpose(1, 2), ot.state[p_t]["momentum"], ("oracle", torch.float64), "m")


def test_nominal_meta_weights_run_on_the_backends_that_implement_them():
    """Meta-weights with the nominal term: float64 MuLO follows the oracle's trajectory (40 steps); "auto" on the
    CPU resolves to a backend declaring the "nominal" capability and follows the reference; backend='triton'
    (no nominal head) is refused at resolution, naming the backends that run it."""
    from mulo.backends import has_capability
    from mulo.lopt.network import LOptConfig

    net = random_net(config=LOptConfig(nominal=0.01))
    params, opt, _ = make(TRAJ_SHAPES, lr=0.8, weight_decay=0.01, net=net)
    start = [p.detach().clone() for p in params]
    layers = [(l.weight.detach().double().numpy(), l.bias.detach().double().numpy()) for l in net.network.values()]
    ps = [p.detach().numpy().reshape(s if s else (1,)).copy() for p, s in zip(params, TRAJ_SHAPES)]
    sts = [oracle.new_state(s if s else (1,)) for s in TRAJ_SHAPES]
    fast = [torch.nn.Parameter(p.detach().float().clone()) for p in params]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MuLOBackendNotice)
        auto = mulo.MuLO(fast, meta_weights=net, lr=0.8, weight_decay=0.01)
        assert has_capability(auto.backend_for("cpu").name, "nominal")
    for t in range(40):
        grads = [hetero_grad(s) * (1 + 0.1 * t) for s in TRAJ_SHAPES]
        run(params, opt, [grads])
        run(fast, auto, [grads])
        for i, g in enumerate(grads):
            ps[i], sts[i], *_ = oracle.step(
                ps[i], g.numpy().reshape(ps[i].shape), sts[i], layers, lr=0.8, wd=0.01, nominal=0.01
            )
    for p, q, p_np, s0 in zip(params, fast, ps, start):
        err = movement_error(p.detach().reshape(-1), torch.from_numpy(p_np).reshape(-1), s0.reshape(-1))
        assert err < TRAJECTORY[torch.float64], f"shape {tuple(p.shape)}: movement-relative error {err:.3g}"
        assert movement_error(q.detach().double(), p.detach(), s0) < TRAJECTORY[torch.float32], tuple(p.shape)
    with pytest.raises(BackendUnavailable, match=r"'triton' does not implement nominal.*\['cpu', 'reference'\]"):
        mulo.MuLO([torch.nn.Parameter(torch.randn(3, 2))], meta_weights=net, backend="triton")
