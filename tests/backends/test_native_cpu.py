"""The ``cpu`` backend (csrc/, mulo._C) against the reference backend, on every SIMD path this CPU runs."""

import dataclasses
import sys

import pytest
import torch

from mulo.backends import reference as ref
from mulo.lopt.shapes import physical_shape
from mulo.lopt.state import init_state
from tests.helpers import SHAPES, hetero_grad, random_net, shape_id
from tests.tolerances import TRAJECTORY, assert_close, movement_error, state_scale

native = pytest.importorskip("mulo.backends.native")
try:
    _C = native.load_extension()
except ImportError as e:  # the build is part of `make install`; a missing extension is a failure here
    pytest.fail(f"mulo._C is not built: {e}", pytrace=False)


def _isas():
    out = []
    for isa in ("avx512", "avx2", "base"):
        try:
            prev = _C.set_cpu_isa(isa)
            _C.set_cpu_isa(prev)
            out.append(isa)
        except RuntimeError:
            pass
    return out


ISAS = _isas()
# odd sizes, and 2-d/3-d tensors whose lines hold whole SIMD vectors, one or several per tile (the kernels'
# per-vector folded layer 1)
ODD = [(4097,), (3, 4097), (1, 1), (1, 7), (16, 16), (5, 48), (3, 16, 32)]


@pytest.fixture(params=ISAS)
def isa(request):
    prev = _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa(prev)


def new_state(p, dtype, layout="torch"):
    """Zero state for ``p`` (the package's one allocator)."""
    return init_state(p.shape, dtype, p.device, layout)


def compare(params, states, ref_params, ref_states, key, what, grad_max=None):
    """``grad_max``: per parameter, the running max of |gradient| (the momentum's scale, tolerances.py)."""
    for i, (p, st, rp, rst) in enumerate(zip(params, states, ref_params, ref_states)):
        assert_close(p, rp, key, f"{what}: param {i} {tuple(p.shape)}")
        assert set(st) == set(rst)
        for k in st:
            assert st[k].dtype == rst[k].dtype or rst[k].dtype == torch.float64, k
            scale = None if grad_max is None else state_scale(k, grad_max[i], physical_shape(p.shape))
            assert_close(st[k], rst[k], key, f"{what}: state {k!r} of param {i} {tuple(p.shape)}", scale)


def run_pair(shapes, steps, *, lrs, wds, layout="torch", pdtype=torch.float32, sdtype=torch.float32, ref64=True):
    net = random_net()
    if layout == "jax":
        from mulo.lopt.network import LOptConfig, LOptNet

        jnet = LOptNet(LOptConfig(layout="jax"))
        jnet.load_state_dict(net.state_dict())
        net = jnet
    w32 = net.meta_weights("cpu", torch.float32)
    rdt = torch.float64 if ref64 else pdtype
    wref = net.meta_weights("cpu", torch.float64 if ref64 else torch.float32)
    params = [torch.randn(s).to(pdtype) for s in shapes]
    ref_params = [p.to(rdt).clone() for p in params]
    states = [new_state(p, sdtype, layout) for p in params]
    ref_states = [new_state(p, torch.float64 if ref64 else sdtype, layout) for p in params]
    backend = native.CpuBackend()
    # bf16 state: a value near a bf16 rounding boundary may round either way after a different fp32
    # summation order (one bf16 ulp = 2^-8 relative), so the bf16 row of the table applies
    key = ("kernel", torch.bfloat16 if sdtype == torch.bfloat16 else pdtype)
    grad_max = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    for t in range(steps):
        grads = [hetero_grad(s, dtype=torch.float32).to(pdtype) for s in shapes]
        grad_max = [torch.maximum(m, g.abs().double()) for m, g in zip(grad_max, grads)]
        backend.step(params, grads, states, lrs, wds, w32)
        ref.ReferenceBackend().step(ref_params, [g.to(rdt) for g in grads], ref_states, lrs, wds, wref)
        compare(params, states, ref_params, ref_states, key, f"step {t}", grad_max)
    return params, states


@pytest.mark.parametrize("shape", SHAPES + ODD, ids=shape_id)
def test_cpu_matches_reference_per_shape(isa, shape):
    run_pair([shape], 3, lrs=[0.7], wds=[0.05])


def test_cpu_mixed_shapes_one_call_mup_lrs(isa):
    shapes = SHAPES + [(33, 65), (65, 33), (3, 9, 17)]
    lrs = [1.0 / (1 + i % 4) for i in range(len(shapes))]  # μP: per-tensor lr_scale
    wds = [0.0 if i % 2 else 0.1 for i in range(len(shapes))]
    run_pair(shapes, 4, lrs=lrs, wds=wds)


def test_cpu_jax_layout():
    run_pair([(6, 4), (4, 6), (5, 5), (2, 3, 4)], 3, lrs=[0.5] * 4, wds=[0.0] * 4, layout="jax")


@pytest.mark.parametrize("pdtype", [torch.bfloat16, torch.float16], ids=str)
def test_cpu_low_precision_params(isa, pdtype):
    """bf16/fp16 parameters, fp32 state: the reference run on the same low-precision parameters."""
    run_pair([(7,), (9, 33), (2, 3, 5)], 3, lrs=[0.8] * 3, wds=[0.01] * 3, pdtype=pdtype, ref64=False)


def test_cpu_bfloat16_state():
    run_pair(
        [(5,), (17, 9), (3, 4, 5)],
        3,
        lrs=[0.8] * 3,
        wds=[0.0] * 3,
        pdtype=torch.float32,
        sdtype=torch.bfloat16,
        ref64=False,
    )


def test_cpu_float32_grad_for_bf16_param():
    net = random_net()
    w = net.meta_weights("cpu", torch.float32)
    p = torch.randn(9, 13).bfloat16()
    rp = p.clone()
    st, rst = new_state(p, torch.float32), new_state(p, torch.float32)
    for _ in range(2):
        g = hetero_grad((9, 13), dtype=torch.float32)
        native.CpuBackend().step([p], [g], [st], [1.0], [0.0], w)
        ref.ReferenceBackend().step([rp], [g], [rst], [1.0], [0.0], w)
    compare([p], [st], [rp], [rst], ("kernel", torch.bfloat16), "fp32 grad, bf16 param")


def test_cpu_trajectory_40_steps_float32():
    """The acceptance criterion: 40 float32 steps follow the float64 reference within TRAJECTORY."""
    shapes = [(24, 40), (40, 24), (16, 8, 3, 3), (40,), ()]
    net = random_net()
    w32, w64 = net.meta_weights("cpu", torch.float32), net.meta_weights("cpu", torch.float64)
    params = [torch.randn(s) for s in shapes]
    start = [p.double().clone() for p in params]
    ref_params = [p.double().clone() for p in params]
    states = [new_state(p, torch.float32) for p in params]
    ref_states = [new_state(p, torch.float64) for p in params]
    lrs, wds = [1.0, 1 / 24, 1 / 16, 1.0, 1.0], [0.01] * 5
    backend = native.CpuBackend()
    for _ in range(40):
        grads = [hetero_grad(s, dtype=torch.float64) + 0.1 * p for s, p in zip(shapes, ref_params)]
        backend.step(params, [g.float() for g in grads], states, lrs, wds, w32)
        ref.ReferenceBackend().step(ref_params, grads, ref_states, lrs, wds, w64)
    for i, (p, rp, s0) in enumerate(zip(params, ref_params, start)):
        err = movement_error(p, rp, s0)
        assert err < TRAJECTORY[torch.float32], f"param {i} {shapes[i]}: trajectory error {err:.3g}"


def test_cpu_nonfinite_gradient_skips_only_that_tensor():
    net = random_net()
    w = net.meta_weights("cpu", torch.float32)
    params = [torch.randn(4, 5), torch.randn(6)]
    states = [new_state(p, torch.float32) for p in params]
    before = [p.clone() for p in params]
    g0 = hetero_grad((4, 5), dtype=torch.float32)
    g0[1, 2] = float("inf")
    g1 = hetero_grad((6,), dtype=torch.float32)
    g1[0] = 1e30  # finite, but g² overflows in float32: skipped like the reference
    native.CpuBackend().step(params, [g0, g1], states, [1.0, 1.0], [0.0, 0.0], w)
    for p, b, st in zip(params, before, states):
        assert torch.equal(p, b)
        assert st["step"].item() == 0 and st["nonfinite_skips"].item() == 1
        for k in ("momentum", "second_moment", "row", "col", "full"):
            if k in st:
                assert not st[k].any(), k
    g = [hetero_grad((4, 5), dtype=torch.float32), hetero_grad((6,), dtype=torch.float32)]
    native.CpuBackend().step(params, g, states, [1.0, 1.0], [0.0, 0.0], w)
    assert all(st["step"].item() == 1 for st in states)


def test_cpu_noncontiguous_param_and_grad():
    net = random_net()
    w = net.meta_weights("cpu", torch.float32)
    base = torch.randn(9, 7)
    p = base.t()  # non-contiguous parameter view (7, 9)
    rp = p.double().clone()
    st, rst = new_state(p, torch.float32), new_state(rp, torch.float64)
    g = hetero_grad((9, 7), dtype=torch.float32).t()
    native.CpuBackend().step([p], [g], [st], [1.0], [0.0], w)
    ref.ReferenceBackend().step([rp], [g.double()], [rst], [1.0], [0.0], net.meta_weights("cpu", torch.float64))
    compare([p], [st], [rp], [rst], ("kernel", torch.float32), "non-contiguous")
    assert_close(base.t(), rp, ("kernel", torch.float32), "update reached the viewed storage")


def test_cpu_through_optimizer_with_state_dict_reload():
    import mulo

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    ref_model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).double()
    ref_model.load_state_dict(model.state_dict())
    net = random_net()
    opt = mulo.MuLO(model.parameters(), meta_weights=net, backend="cpu", weight_decay=0.01)
    ref_opt = mulo.MuLO(ref_model.parameters(), meta_weights=net, backend="reference", weight_decay=0.01)
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    for t in range(6):
        for m, o, xx in ((model, opt, x), (ref_model, ref_opt, x.double())):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(xx), y).backward()
        opt.step()
        ref_opt.step()
        if t == 2:
            sd = opt.state_dict()
            opt = mulo.MuLO(model.parameters(), meta_weights=net, backend="cpu", weight_decay=0.01)
            opt.load_state_dict(sd)
    for p, rp in zip(model.parameters(), ref_model.parameters()):
        assert_close(p, rp, ("kernel", torch.float32), f"param {tuple(p.shape)} after 6 optimizer steps")
        for k, v in opt.state[p].items():
            assert_close(v, ref_opt.state[rp][k], ("kernel", torch.float32), f"state {k}")


def test_cpu_backend_supports():
    b = native.CpuBackend()
    assert b.supports(torch.device("cpu"), torch.float32)
    assert b.supports(torch.device("cpu"), torch.bfloat16)
    assert not b.supports(torch.device("cpu"), torch.float64)  # auto falls back to the reference
    assert not b.supports(torch.device("cuda"), torch.float32)


def test_cpu_rejects_bad_input_clearly():
    net = random_net()
    w = net.meta_weights("cpu", torch.float32)
    p = torch.randn(4, 5)
    st = new_state(p, torch.float32)
    st["second_moment"] = torch.zeros(4, 6)
    with pytest.raises(RuntimeError, match="second_moment"):
        native.CpuBackend().step([p], [torch.randn(4, 5)], [st], [1.0], [0.0], w)


def _op_args():
    net = random_net()
    w = net.meta_weights("cpu", torch.float32)
    params = [torch.randn(5, 7), torch.randn(3), torch.randn(2, 3, 4)]
    grads = [hetero_grad(tuple(p.shape), dtype=torch.float32) for p in params]
    states = [new_state(p, torch.float32) for p in params]
    dims = native.dims_of(params, "torch")
    return params, grads, states, dims, w


def test_opcheck_reduce_sumsq_apply():
    params, grads, states, dims, w = _op_args()
    torch.library.opcheck(torch.ops.mulo.lopt_reduce.default, (grads, dims))
    sums, finite = native.reduce(grads, dims)
    acc_a, acc_b = native._accumulators(states)
    mom = [st["momentum"] for st in states]
    sec = [st["second_moment"] for st in states]
    hyper = native.hyper(w)
    torch.library.opcheck(
        torch.ops.mulo.lopt_sumsq.default, (params, grads, mom, sec, acc_a, acc_b, sums, finite, dims, hyper)
    )
    sq = native.sumsq(params, grads, states, sums, finite, dims, w)
    mlp = [t for layer in w.layers for t in layer]
    args = (
        params,
        grads,
        mom,
        sec,
        acc_a,
        acc_b,
        [st["step"] for st in states],
        [st["nonfinite_skips"] for st in states],
        sums,
        sq,
        finite,
        mlp,
        [1.0] * 3,
        [0.0] * 3,
        dims,
        hyper,
    )
    torch.library.opcheck(torch.ops.mulo.lopt_apply.default, args, test_utils=("test_schema", "test_faketensor"))


POP_MEMBERS = 3


def _population(shapes, layout="torch", sdtype=torch.float32, seed=0):
    """Stacked (M, *S) parameters and zero states, M meta-weight sets, per-member lrs on every other tensor."""
    from mulo.backends.population import PopulationMetaWeights, init_population_state
    from mulo.lopt.network import LOptConfig, LOptNet

    gen = torch.Generator().manual_seed(seed)
    members = []
    for _ in range(POP_MEMBERS):
        net = LOptNet(LOptConfig(layout=layout))
        net.load_state_dict(random_net(gen).state_dict())
        members.append(net.meta_weights("cpu", torch.float32))
    weights = PopulationMetaWeights.stack(members)
    params = [torch.randn((POP_MEMBERS, *s), generator=gen) for s in shapes]
    states = [init_population_state(p, layout, sdtype) for p in params]
    lrs = [0.1 / (1 + i) if i % 2 else [0.05 * (1 + j) for j in range(POP_MEMBERS)] for i in range(len(shapes))]
    wds = [0.1 if i % 3 == 0 else 0.0 for i in range(len(shapes))]
    return params, states, weights, lrs, wds


@pytest.mark.parametrize("layout,sdtype", [("torch", torch.float32), ("jax", torch.float32), ("torch", torch.bfloat16)],
                         ids=["torch", "jax", "bf16_state"])  # fmt: skip
def test_cpu_population_stacked_equals_member_views(isa, layout, sdtype):
    """mulo::lopt_population_step on the (M, *S) stacks gives bit for bit what the three passes give on every
    member's views with a meta-weight index each (the shape zoo, 4 steps, per-member lrs, weight decay, one
    member's tensor with a non-finite gradient at step 1)."""
    shapes = SHAPES + ODD
    params, states, weights, lrs, wds = _population(shapes, layout, sdtype)
    views_p = [p.clone() for p in params]
    views_s = [{k: v.clone() for k, v in st.items()} for st in states]
    backend = native.CpuBackend()
    for t in range(4):
        grads = [torch.stack([hetero_grad(s, dtype=torch.float32) for _ in range(POP_MEMBERS)]) for s in shapes]
        if t == 1:
            grads[3][1].view(-1)[0] = float("nan")
        backend.population_step(params, grads, states, lrs, wds, weights)
        backend.population_step_views(views_p, grads, views_s, lrs, wds, weights)
    for i, shape in enumerate(shapes):
        pairs = [(params[i], views_p[i], "param")] + [(states[i][k], views_s[i][k], k) for k in states[i]]
        for got, want, what in pairs:
            bad = got.view(-1) != want.view(-1)
            assert not bad.any(), (
                f"{shape_id(shape)} {what}: {int(bad.sum())} of {got.numel()} elements differ, first at flat index "
                f"{int(bad.nonzero()[0])}, max |diff| {(got.float() - want.float()).abs().max().item():.3g}"
            )
    assert states[3]["nonfinite_skips"].tolist() == [0.0, 1.0, 0.0]
    assert states[3]["step"].tolist() == [4.0, 3.0, 4.0] and states[0]["step"].tolist() == [4.0] * POP_MEMBERS


def test_cpu_population_rejects_bad_stacks_clearly():
    params, states, weights, lrs, wds = _population([(4, 5), (3,)])
    grads = [torch.randn_like(p) for p in params]
    member_lrs = [0.1] * (POP_MEMBERS * len(params))
    with pytest.raises(RuntimeError, match=r"params\[0\] must be a stack \(M, \.\.\.\) of the M = 3 members"):
        native.population([params[0][:2], params[1]], [grads[0][:2], grads[1]], states, member_lrs, wds, weights)
    with pytest.raises(RuntimeError, match=r"lrs needs one entry per member and tensor \(3 × 2"):
        native.population(params, grads, states, member_lrs[:-1], wds, weights)
    bad = [dict(states[0], second_moment=torch.zeros(POP_MEMBERS, 4, 6)), states[1]]
    with pytest.raises(RuntimeError, match="second_moment"):
        native.population(params, grads, bad, member_lrs, wds, weights)
    bad = [dict(states[0], step=torch.zeros(POP_MEMBERS + 1)), states[1]]
    with pytest.raises(RuntimeError, match=r"steps/skips\[0\] must be contiguous float32 \(M,\) vectors"):
        native.population(params, grads, bad, member_lrs, wds, weights)
    with pytest.raises(TypeError, match="non-contiguous"):
        native.CpuBackend().population_step([params[0].transpose(1, 2), params[1]], grads, states, lrs, wds, weights)
    # the hyper vector's nominal and the output layer's rows must agree (3 rows with the nominal term, else 2)
    nominal = dataclasses.replace(weights, nominal=0.01)
    with pytest.raises(RuntimeError, match=r"output layer has 2 outputs per set; the hyper vector's nominal = 0.01"):
        native.population(params, grads, states, member_lrs, wds, nominal)


def test_population_of_one_takes_gradients_without_the_member_axis():
    """With M = 1 the population op takes each gradient in its parameter's own shape (the planned step's path:
    no (1, *S) view per tensor and step), bit for bit the same step; with M > 1 the stack is required."""
    from mulo.backends.population import PopulationMetaWeights, init_population_state

    shapes = [(5, 7), (3,), (2, 3, 4), ()]
    weights = PopulationMetaWeights.stack([random_net().meta_weights("cpu", torch.float32)])
    params = [torch.randn(1, *s) for s in shapes]
    grads = [hetero_grad(s, dtype=torch.float32) for s in shapes]
    states = [init_population_state(p) for p in params]
    p2, s2 = [p.clone() for p in params], [{k: v.clone() for k, v in st.items()} for st in states]
    native.population(params, [g.unsqueeze(0) for g in grads], states, [0.1] * 4, [0.0] * 4, weights)
    native.population(p2, grads, s2, [0.1] * 4, [0.0] * 4, weights)
    for a, b in zip(params + [v for st in states for v in st.values()], p2 + [v for st in s2 for v in st.values()]):
        assert torch.equal(a, b)
    pop, pst, pw, _, pwd = _population([(4, 5)])
    with pytest.raises(RuntimeError, match=r"grads\[0\] has shape \[4, 5\] but params\[0\] has shape \[3, 4, 5\]"):
        native.population(pop, [torch.randn(4, 5)], pst, [0.1] * POP_MEMBERS, pwd, pw)


def test_opcheck_population_step():
    params, states, weights, lrs, wds = _population([(5, 7), (3,), (2, 3, 4)])
    acc_a, acc_b = native._accumulators(states)
    per_state = [[st[k] for st in states] for k in ("momentum", "second_moment")]
    counters = [[st[k] for st in states] for k in ("step", "nonfinite_skips")]
    grads = [torch.randn_like(p) for p in params]
    lrs = [0.1] * (POP_MEMBERS * len(params))
    mlp, dims, hyper = native._mlp(weights), native._member_dims(params, "torch"), native.hyper(weights)
    args = (params, grads, *per_state, acc_a, acc_b, *counters, mlp, lrs, wds, dims, hyper)
    op = torch.ops.mulo.lopt_population_step.default
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_missing_extension_names_the_build_command(monkeypatch):
    monkeypatch.setattr(native, "_ext", None)
    monkeypatch.setitem(sys.modules, "mulo._C", None)  # makes `from mulo import _C` raise ImportError
    import mulo

    monkeypatch.delattr(mulo, "_C", raising=False)
    with pytest.raises(ImportError, match=r"make install.*pip install --no-build-isolation -e \."):
        native.CpuBackend()


def test_host_floats_reads_tensor_learning_rates_in_one_copy(monkeypatch):
    """The native ops take host floats: 0-d tensor learning rates are read with one device-to-host copy per
    device (one sync per step on a GPU), never one per tensor (``float(t)`` would be)."""
    values = [torch.tensor(0.1), 0.2, torch.tensor(3e-4, dtype=torch.float64), 1, torch.tensor(0.7)]
    expected = [float(v) for v in values]

    def per_tensor_read(self):
        raise AssertionError("read one tensor at a time")

    monkeypatch.setattr(torch.Tensor, "__float__", per_tensor_read)
    assert native.host_floats(values) == expected
    plain = [0.1, 0.2]
    assert native.host_floats(plain) == plain
