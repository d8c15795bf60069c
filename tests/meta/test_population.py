"""The batched population step equals running each member alone through the reference backend."""

import dataclasses

import pytest
import torch

from mulo.backends import reference as ref
from mulo.backends.population import PopulationMetaWeights, init_population_state, member_lr, population_step
from mulo.lopt.network import LOptConfig
from tests.helpers import SHAPES, hetero_grad, random_net
from tests.tolerances import assert_close

MEMBERS = 3


def zoo_lrs(shapes) -> list:
    """μP-like per-tensor lrs; every other tensor gets one lr per member (per-member schedules)."""
    return [1.0 / (1 + i) if i % 2 else [(0.5 + j) / (1 + i) for j in range(MEMBERS)] for i in range(len(shapes))]


def member_weights(dtype, layout, nominal=None):
    config = LOptConfig(nominal=nominal)
    return [
        dataclasses.replace(random_net(config=config).meta_weights("cpu", dtype), layout=layout) for _ in range(MEMBERS)
    ]


@pytest.mark.parametrize("nominal", [None, 0.01], ids=["mulo", "nominal"])
@pytest.mark.parametrize("layout", ["torch", "jax"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_population_step_equals_each_member_alone(dtype, layout, nominal):
    """All shapes of the zoo in ONE call, 4 steps, per-tensor lr (μP scales; per-member lrs on every other
    tensor) and weight decay, one member with a non-finite gradient at step 1: parameters and every state
    tensor of every member match (also with the nominal term's third head)."""
    weights = member_weights(dtype, layout, nominal)
    pop_w = PopulationMetaWeights.stack(weights)
    params = [torch.randn(MEMBERS, *s, dtype=dtype) for s in SHAPES]
    states = [init_population_state(p, layout) for p in params]
    alone_p = [[p[j].clone() for p in params] for j in range(MEMBERS)]
    alone_s = [[{k: v[j].clone() for k, v in st.items()} for st in states] for j in range(MEMBERS)]
    lrs = zoo_lrs(SHAPES)
    wds = [0.1 if i % 2 else 0.0 for i in range(len(SHAPES))]
    for step in range(4):
        grads = [torch.stack([hetero_grad(s, dtype=dtype) for _ in range(MEMBERS)]) for s in SHAPES]
        if step == 1:
            grads[3][1].view(-1)[0] = float("inf")  # member 1 skips tensor 3 this step, others don't
        population_step(params, grads, states, lrs, wds, pop_w)
        for j in range(MEMBERS):
            member_lrs = [member_lr(lr, j, MEMBERS) for lr in lrs]
            ref.ReferenceBackend().step(alone_p[j], [g[j] for g in grads], alone_s[j], member_lrs, wds, weights[j])
        for i, shape in enumerate(SHAPES):
            for j in range(MEMBERS):
                what = f"step {step}, shape {shape}, member {j}"
                assert_close(params[i][j], alone_p[j][i], ("population", dtype), f"{what}: param")
                assert set(states[i]) == set(alone_s[j][i])
                for key, value in states[i].items():
                    assert_close(value[j], alone_s[j][i][key], ("population", dtype), f"{what}: state {key}")
    assert states[3]["nonfinite_skips"].tolist() == [0.0, 1.0, 0.0]
    assert states[3]["step"].tolist() == [4.0, 3.0, 4.0]


def test_members_use_their_own_meta_weights():
    """Swapping two members' meta-weights swaps their updates (no member reads another's θ)."""
    weights = member_weights(torch.float64, "torch")
    shape = (4, 5)
    p0 = torch.randn(MEMBERS, *shape, dtype=torch.float64)
    g = torch.stack([hetero_grad(shape)] * MEMBERS)  # same gradient for everyone
    outs = []
    for order in ([0, 1, 2], [1, 0, 2]):
        p = p0.clone()
        p[1] = p0[0]
        p[0] = p0[0]
        population_step(
            [p], [g], [init_population_state(p)], [1.0], [0.0], PopulationMetaWeights.stack([weights[k] for k in order])
        )
        outs.append(p)
    assert torch.equal(outs[0][0], outs[1][1]) and torch.equal(outs[0][1], outs[1][0])
    assert not torch.equal(outs[0][0], outs[0][1])


def test_bad_population_shapes_raise():
    w = PopulationMetaWeights.stack(member_weights(torch.float64, "torch"))
    p = torch.randn(MEMBERS + 1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="leading population axis"):
        population_step([p], [p.clone()], [init_population_state(p)], [1.0], [0.0], w)
    other = dataclasses.replace(random_net().meta_weights("cpu", torch.float64), layout="jax")
    with pytest.raises(ValueError, match="layout"):
        PopulationMetaWeights.stack([member_weights(torch.float64, "torch")[0], other])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_population_step_across_mlp_chunks(dtype):
    """A tensor larger than one batched-MLP chunk per member (the chunk boundary falls inside it)."""
    from mulo.backends import population

    shape = (80, 70)
    assert shape[0] * shape[1] > population.POPULATION_MLP_CHUNK // MEMBERS
    weights = member_weights(dtype, "torch")
    p = torch.randn(MEMBERS, *shape, dtype=dtype)
    st = init_population_state(p)
    alone = [(p[j].clone(), {k: v[j].clone() for k, v in st.items()}) for j in range(MEMBERS)]
    for _ in range(2):
        g = torch.stack([hetero_grad(shape, dtype=dtype) for _ in range(MEMBERS)])
        population_step([p], [g], [st], [0.5], [0.0], PopulationMetaWeights.stack(weights))
        for j, (pj, sj) in enumerate(alone):
            ref.step_one(pj, g[j], sj, 0.5, 0.0, weights[j])
    for j, (pj, sj) in enumerate(alone):
        assert_close(p[j], pj, ("population", dtype), f"member {j}: param")
        for key, value in st.items():
            assert_close(value[j], sj[key], ("population", dtype), f"member {j}: state {key}")


def _record_pass_calls(backend: str, monkeypatch) -> list[tuple[str, int]]:
    """(pass, number of tensors) of every kernel call of ``backend``'s passes, in order."""
    calls = []
    if backend == "cpu":
        from mulo.backends import native as module

        names, count = ("population",), lambda args: len(args[0])  # one call of the (M, *S) stacks
    else:
        module = pytest.importorskip("mulo.backends.triton_backend", reason="needs triton")
        names, count = ("lopt_reduce", "lopt_sumsq", "lopt_apply"), lambda args: args[0].meta.shape[0]
    for name in names:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _n=name, _f=real, **k: calls.append((_n, count(a))) or _f(*a, **k))
    return calls


@pytest.mark.parametrize(
    ("backend", "nominal"), [("cpu", None), ("cpu", 0.01), ("triton", None)], ids=["cpu", "cpu-nominal", "triton"]
)
def test_population_through_fused_kernels_equals_the_reference_population(backend, nominal, monkeypatch):
    """backend_population_step(backend): all members in ONE call per pass (cpu: one call of all three passes
    on the stacks; triton: each tensor carrying its member's meta-weight index, on views of the stacked
    tensors, no copies), per-member lrs on every other tensor —
    parameters and every state tensor match the vectorized reference population. On CPU the triton kernels
    run in Triton's interpreter."""
    from mulo.backends.population import backend_population_step

    calls = _record_pass_calls(backend, monkeypatch)
    requires = frozenset({"nominal"}) if nominal else frozenset()
    # the cpu build is part of `make install`: a failure if missing
    step = backend_population_step(backend, "cpu", requires)
    assert step.backend == backend and backend_population_step("reference") is population_step
    weights = member_weights(torch.float32, "torch", nominal)
    pop_w = PopulationMetaWeights.stack(weights)
    params = [torch.randn(MEMBERS, *s) for s in SHAPES]
    states = [init_population_state(p) for p in params]
    start = [p.clone() for p in params]
    ref_p = [p.clone() for p in params]
    ref_s = [{k: v.clone() for k, v in st.items()} for st in states]
    lrs = zoo_lrs(SHAPES)
    wds = [0.1 if i % 2 else 0.0 for i in range(len(SHAPES))]
    for _ in range(3):
        grads = [torch.stack([hetero_grad(s, dtype=torch.float32) for _ in range(MEMBERS)]) for s in SHAPES]
        step(params, grads, states, lrs, wds, pop_w)
        population_step(ref_p, grads, ref_s, lrs, wds, pop_w)
    row = ("kernel tf32", torch.float32) if backend == "triton" else ("kernel", torch.float32)  # default tf32 MLP
    for i, shape in enumerate(SHAPES):
        for j in range(MEMBERS):
            what = f"{backend}: shape {shape}, member {j}"
            assert_close(params[i][j], ref_p[i][j], row, f"{what}: param")
            for key, value in states[i].items():
                assert_close(value[j], ref_s[i][key][j], row, f"{what}: state {key}")
        assert states[i]["step"].tolist() == [3.0] * MEMBERS
        assert not torch.equal(params[i], start[i])  # the kernels wrote through the member views
    if backend == "cpu":  # one call per step, passes A-C over the stacks (mulo::lopt_population_step)
        assert calls == [("population", len(SHAPES))] * 3, calls
        return
    n = MEMBERS * len(SHAPES)
    assert [c for _, c in calls] == [n] * 9, calls  # one call per pass and step for every member's tensors
    assert [name for name, _ in calls[:3]] == [name for name, _ in calls[3:6]] and len({c[0] for c in calls}) == 3


def test_triton_population_refuses_the_nominal_term_by_name():
    """The Triton kernels have no nominal head: asking for them with such meta-weights names the backends that
    run it; "auto" on the CPU picks one of those."""
    from mulo.backends import BackendUnavailable
    from mulo.backends.population import backend_population_step

    with pytest.raises(BackendUnavailable, match=r"'triton' does not implement nominal.*\['cpu', 'reference'\]"):
        backend_population_step("triton", "cpu", frozenset({"nominal"}))
    assert backend_population_step("auto", "cpu", frozenset({"nominal"})).backend == "cpu"


def test_cpu_kernels_reject_a_bad_meta_weight_index():
    from mulo.backends import native

    native.load_extension()  # registers the ops (also when this test runs alone)
    weights = PopulationMetaWeights.stack(member_weights(torch.float32, "torch"))
    p = torch.randn(2, 4, 3)
    st = [
        {k: v[0] for k, v in init_population_state(p).items()},
        {k: v[1] for k, v in init_population_state(p).items()},
    ]
    ps, gs = [p[0], p[1]], [torch.randn(4, 3), torch.randn(4, 3)]
    dims = native.dims_of(ps, "torch")
    sums, finite = native.reduce(gs, dims)
    sq = native.sumsq(ps, gs, st, sums, finite, dims, weights)
    with pytest.raises(RuntimeError, match=r"weight_index\[1\] = 3 is not one of the 3 meta-weight sets"):
        native.apply(ps, gs, st, sums, sq, finite, [1.0, 1.0], [0.0, 0.0], dims, weights, [0, 3])
    with pytest.raises(RuntimeError, match="one meta-weight set per tensor"):
        native.apply(ps, gs, st, sums, sq, finite, [1.0, 1.0], [0.0, 0.0], dims, weights, [0])


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_fused_population_step_rejects_a_non_contiguous_stack(backend):
    from mulo.backends import load_backend

    if backend == "triton":
        pytest.importorskip("mulo.backends.triton_backend", reason="needs triton")
    weights = PopulationMetaWeights.stack(member_weights(torch.float32, "torch"))
    p = torch.randn(4, 5, MEMBERS).permute(2, 0, 1)  # (M, 4, 5) but not contiguous: writes would be lost
    with pytest.raises(TypeError, match=r"params\[0\] must be a contiguous"):
        load_backend(backend).population_step(
            [p], [torch.randn(MEMBERS, 4, 5)], [init_population_state(p)], [1.0], [0.0], weights
        )


def test_a_per_member_lr_needs_one_float_per_member():
    weights = PopulationMetaWeights.stack(member_weights(torch.float64, "torch"))
    p = torch.randn(MEMBERS, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"one float per member \\({MEMBERS}\\), got 2"):
        population_step([p], [p.clone()], [init_population_state(p)], [[1.0, 0.5]], [0.0], weights)


def test_cpu_population_views_follow_new_stacks():
    """The cpu backend reuses its member views while the stacks are the same storage; a stack replaced by a
    new tensor (a reset that allocates) is stepped through fresh views, never the stale ones."""
    from mulo.backends import load_backend

    cpu = load_backend("cpu")
    pop_w = PopulationMetaWeights.stack(member_weights(torch.float32, "torch"))
    shapes = [(3, 5), (4,)]
    params = [torch.randn(MEMBERS, *s) for s in shapes]
    states = [init_population_state(p) for p in params]
    ref_p = [p.clone() for p in params]
    ref_s = [{k: v.clone() for k, v in st.items()} for st in states]
    for t in range(3):
        if t == 2:  # new storage for a parameter stack and one state tensor, same values
            params[0] = params[0].clone()
            states[1]["momentum"] = states[1]["momentum"].clone()
        grads = [torch.stack([hetero_grad(s, dtype=torch.float32) for _ in range(MEMBERS)]) for s in shapes]
        cpu.population_step(params, grads, states, [0.5, 0.5], [0.0, 0.0], pop_w)
        population_step(ref_p, grads, ref_s, [0.5, 0.5], [0.0, 0.0], pop_w)
        for i in range(len(shapes)):
            assert_close(params[i], ref_p[i], ("kernel", torch.float32), f"step {t} param {i}")
            for key, value in states[i].items():
                assert_close(value, ref_s[i][key], ("kernel", torch.float32), f"step {t} state {key} of {i}")
