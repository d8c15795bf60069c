"""The triton backend (passes A/B/C of kernels/lopt_*.py) against the reference backend, on fresh random
inputs: the shape zoo in one group, several steps, μP lr scales and weight decay, multi-tile tensors,
bf16/fp16 parameters, bf16 state, the JAX layout, non-finite skipping, a 40-step trajectory, and tracing
the custom op with torch.compile. On CPU the kernels run in Triton's interpreter (tests/conftest.py)."""

import pytest
import torch

from mulo.backends.reference import ReferenceBackend
from mulo.lopt.shapes import physical_shape
from mulo.lopt.state import init_state
from tests.helpers import SHAPES, hetero_grad, random_net, shape_id
from tests.tolerances import TRAJECTORY, assert_close, kernel_key, movement_error, state_scale

triton_backend = pytest.importorskip("mulo.backends.triton_backend", reason="needs triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the default MLP operand precision (tf32, rounded to nearest) throughout: the interpreter makes the tensor
# cores' cut itself, so these tests check the numerics a GPU has against the float32 row of the table


def new_state(p: torch.Tensor, dtype: torch.dtype, layout: str = "torch") -> dict[str, torch.Tensor]:
    """Zero state for ``p`` on its device (the package's one allocator)."""
    return init_state(p.shape, dtype, p.device, layout)


def run_pair(shapes, steps, *, dtype=torch.float32, ref_dtype=torch.float64, state_dtype=None, layout="torch",
             lrs=None, wds=None, backend=None, grad_hook=None):  # fmt: skip
    """Step the triton backend (params in ``dtype``) and the reference (params in ``ref_dtype``) from the
    same start with the same gradients; return (params, states) and (params, states, running max |grad|)."""
    net = random_net()
    if layout == "jax":
        from mulo.lopt.network import LOptConfig, LOptNet

        jax_net = LOptNet(LOptConfig(layout="jax"))
        jax_net.load_state_dict(net.state_dict())
        net = jax_net
    backend = backend or triton_backend.TritonBackend()
    w_tri = net.meta_weights(DEVICE, torch.float32)
    ref_compute = torch.float64 if ref_dtype == torch.float64 else torch.float32
    w_ref = net.meta_weights("cpu", ref_compute)
    p0 = [torch.randn(s, dtype=torch.float64) for s in shapes]
    tri_p = [p.to(DEVICE, dtype) for p in p0]
    ref_p = [p.to(ref_dtype) for p in p0]
    s_tri = state_dtype or torch.float32
    s_ref = state_dtype or (torch.float64 if ref_dtype == torch.float64 else torch.float32)
    tri_s = [new_state(p, s_tri, layout) for p in tri_p]
    ref_s = [new_state(p, s_ref, layout) for p in ref_p]
    lrs = lrs or [0.7] * len(shapes)
    wds = wds or [0.0] * len(shapes)
    grad_max = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    for t in range(steps):
        grads = [hetero_grad(s) for s in shapes]
        if grad_hook is not None:
            grads = grad_hook(t, grads)
        grad_max = [torch.maximum(m, torch.nan_to_num(g.abs(), posinf=0.0)) for m, g in zip(grad_max, grads)]
        backend.step(tri_p, [g.to(DEVICE, dtype) for g in grads], tri_s, lrs, wds, w_tri)
        ReferenceBackend().step(ref_p, [g.to(ref_dtype) for g in grads], ref_s, lrs, wds, w_ref)
    return (tri_p, tri_s), (ref_p, ref_s, grad_max)


def compare(tri, ref, key, shapes):
    (tri_p, tri_s), (ref_p, ref_s, grad_max) = tri, ref
    for i, s in enumerate(shapes):
        name = shape_id(s)
        assert_close(tri_p[i], ref_p[i], key, f"param {name}")
        assert set(tri_s[i]) == set(ref_s[i])
        for k in ref_s[i]:
            scale = state_scale(k, grad_max[i], physical_shape(s))
            assert_close(tri_s[i][k], ref_s[i][k], key, f"state[{k!r}] of {name}", scale)


def test_shape_zoo_in_one_group_over_steps_with_mup_lrs_and_weight_decay():
    shapes = [*SHAPES, (33, 70)]
    lrs = [0.7 / max(1, s[-1]) if len(s) >= 2 else 0.7 for s in shapes]  # μP: hidden weights get lr/fan_in
    wds = [0.1 if len(s) >= 2 else 0.0 for s in shapes]
    tri, ref = run_pair(shapes, 3, lrs=lrs, wds=wds)
    compare(tri, ref, kernel_key(triton_backend.TritonBackend()), shapes)


def test_many_tiles_per_tensor():
    """Tiny tiles: every tensor spans several tiles in both plane axes and several batches, so the
    atomics of passes A/B, the per-vector duties of the first tiles and pass C's loop over sub-tiles
    (partly past the tensor's end) are all exercised."""
    shapes = [(9, 17), (2, 6, 5), (19,), (3, 2, 2, 2)]
    backend = triton_backend.TritonBackend(block_x=4, block_y=8, block_xc=2, apply_subtiles=2)
    tri, ref = run_pair(shapes, 2, backend=backend, wds=[0.05] * 4)
    compare(tri, ref, kernel_key(backend), shapes)


SMALL = [(), (7,), (5, 3), (2, 3, 4)]


@pytest.mark.parametrize(
    "variant",
    ["bf16_params", "fp16_params", "bf16_state", "jax_layout", "bf16_dot", "tf32x3_dot", "ieee_dot", "int64_offsets"],
)
def test_variants(variant):
    if variant == "bf16_params":
        tri, ref = run_pair(SMALL, 2, dtype=torch.bfloat16, ref_dtype=torch.bfloat16)
        key = ("kernel", torch.bfloat16)
    elif variant == "fp16_params":
        tri, ref = run_pair(SMALL, 2, dtype=torch.float16, ref_dtype=torch.float16)
        key = ("kernel", torch.bfloat16)  # fp16 rounding is finer than bf16's: the same row bounds it
    elif variant == "bf16_state":
        tri, ref = run_pair(SMALL, 2, ref_dtype=torch.float32, state_dtype=torch.bfloat16)
        key = ("kernel", torch.bfloat16)
    elif variant == "jax_layout":
        shapes = [(4, 6), (6, 4), (5, 5), (2, 3, 4)]
        tri, ref = run_pair(shapes, 2, layout="jax")
        compare(tri, ref, kernel_key(triton_backend.TritonBackend()), shapes)
        return
    elif variant in ("tf32x3_dot", "ieee_dot"):  # the split keeps float32 accuracy; ieee is float32 FMAs
        backend = triton_backend.TritonBackend(dot=variant.split("_")[0])
        tri, ref = run_pair([*SMALL, (33, 70)], 3, backend=backend)
        compare(tri, ref, kernel_key(backend), [*SMALL, (33, 70)])
        return
    elif variant == "int64_offsets":  # the path of tensors above 2³¹/3 elements, on small ones
        backend = triton_backend.TritonBackend(index64=True)
        tri, ref = run_pair(SMALL, 2, backend=backend)
        key = kernel_key(backend)
    else:  # bf16 MLP operands with float32 accumulation: the bf16 row of the table
        backend = triton_backend.TritonBackend(dot="bf16")
        tri, ref = run_pair(SMALL, 2, backend=backend)
        key = ("kernel", torch.bfloat16)
    compare(tri, ref, key, SMALL)


def test_default_dot_steps_rank_below_2_tensors_in_tf32x3():
    """Under the default dot="tf32" the rank < 2 tensors take a launch of their own in "tf32x3" (float32
    accuracy: all 28 of their channels enter the first layer per element): their parameters come out bitwise as
    under dot="tf32x3", while the matrices keep the one tf32 product and differ from it."""
    shapes = [(), (7,), (5, 3), (2, 3, 4)]
    seed = int(torch.randint(0, 2**31, ()))
    params = {}
    for dot in ("tf32", "tf32x3"):
        torch.manual_seed(seed)
        (params[dot], _), _ = run_pair(shapes, 2, backend=triton_backend.TritonBackend(dot=dot))
    for i, s in enumerate(shapes):
        same = torch.equal(params["tf32"][i], params["tf32x3"][i])
        assert same == (len(s) < 2), f"{shape_id(s)}: tf32 and tf32x3 runs {'equal' if same else 'differ'}"


def test_nonfinite_gradient_skips_only_that_tensor():
    shapes = [(4, 5), (6,), (3, 2, 2)]

    def poison(t, grads):
        if t == 1:
            grads[0][2, 3] = float("nan")
        if t == 2:
            grads[2][1, 0, 1] = float("inf")
            grads[1][0] = 1e30  # finite, but g² overflows float32: skipped
        return grads

    tri, ref = run_pair(shapes, 3, ref_dtype=torch.float32, grad_hook=poison)
    compare(tri, ref, kernel_key(triton_backend.TritonBackend()), shapes)
    _, tri_s = tri
    assert [s["nonfinite_skips"].item() for s in tri_s] == [1.0, 1.0, 1.0]
    assert [s["step"].item() for s in tri_s] == [2.0, 2.0, 2.0]


def test_optimizer_runs_triton_backend_with_param_groups():
    import mulo
    from mulo.mup.models import MuMLP

    torch.manual_seed(0)
    model = MuMLP(in_features=6, width=16, depth=2, out_features=3).to(DEVICE)
    ref_model = MuMLP(in_features=6, width=16, depth=2, out_features=3).double()
    ref_model.load_state_dict(model.state_dict())
    groups = mulo.mup.param_groups(model, model.roles())
    ref_groups = mulo.mup.param_groups(ref_model, ref_model.roles())
    for g in (*groups, *ref_groups):
        g["weight_decay"] = 0.01
    net = random_net()
    opt = mulo.MuLO(groups, meta_weights=net, backend="triton")
    ref_opt = mulo.MuLO(ref_groups, meta_weights=net, backend="reference")
    x = torch.randn(8, 6, dtype=torch.float64)
    for _ in range(2):
        for m, o, xx in ((model, opt, x.to(DEVICE, torch.float32)), (ref_model, ref_opt, x)):
            o.zero_grad()
            m(xx).square().mean().backward()
            o.step()
    backend = opt.backend_for(DEVICE, torch.float32)
    assert type(backend).__name__ == "TritonBackend"
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert_close(p, q, kernel_key(backend), name)
        for k, v in ref_opt.state[q].items():
            assert_close(opt.state[p][k], v, kernel_key(backend), f"state[{k!r}] of {name}")


TRAJECTORY_SHAPES = [(6, 4, 3, 3), (12, 6), (12,)]


def trajectory_errors(backend, steps: int = 40, seed: int | None = None) -> dict[str, float]:
    """Movement-relative error ‖triton − ref‖ / ‖ref − start‖ per tensor after ``steps`` float32 steps
    (reference in float64) on a quadratic with heterogeneous row/column scales, so errors feed back."""
    seed = int(torch.randint(0, 2**31, ())) if seed is None else seed
    gen = torch.Generator().manual_seed(seed)
    shapes = TRAJECTORY_SHAPES
    scales = [hetero_grad(s, generator=gen).abs() + 0.01 for s in shapes]
    targets = [torch.randn(s, dtype=torch.float64, generator=gen) for s in shapes]
    net = random_net(generator=gen)
    w_tri, w_ref = net.meta_weights(DEVICE, torch.float32), net.meta_weights("cpu", torch.float64)
    start = [torch.randn(s, dtype=torch.float64, generator=gen) for s in shapes]
    tri_p = [p.to(DEVICE, torch.float32) for p in start]
    ref_p = [p.clone() for p in start]
    tri_s = [new_state(p, torch.float32) for p in tri_p]
    ref_s = [new_state(p, torch.float64) for p in ref_p]
    lrs, wds = [0.5, 0.5, 1.0], [0.01, 0.01, 0.0]
    for _ in range(steps):
        tri_g = [(s * (p.double().cpu() - c)).to(DEVICE, torch.float32) for s, p, c in zip(scales, tri_p, targets)]
        ref_g = [s * (p - c) for s, p, c in zip(scales, ref_p, targets)]
        backend.step(tri_p, tri_g, tri_s, lrs, wds, w_tri)
        ReferenceBackend().step(ref_p, ref_g, ref_s, lrs, wds, w_ref)
    return {shape_id(s): movement_error(a, e, p0) for s, a, e, p0 in zip(shapes, tri_p, ref_p, start)}


def test_trajectory_follows_reference_within_movement_tolerance():
    """float32, 40 steps, heterogeneous scales, conv shapes: ‖triton − ref‖ ≤ 1e-3 · ‖ref − start‖."""
    errors = trajectory_errors(triton_backend.TritonBackend())
    for name, err in errors.items():
        assert err <= TRAJECTORY[torch.float32], f"{name}: movement-relative error {err:.3g}"


def _small_problem(shapes=((5, 3), (4,))):
    """Meta-weights, parameters, zero state and gradients of a 2-tensor problem on DEVICE."""
    w = random_net().meta_weights(DEVICE, torch.float32)
    params = [torch.randn(s, device=DEVICE) for s in shapes]
    states = [new_state(p, torch.float32) for p in params]
    return w, params, states, [hetero_grad(s).float().to(DEVICE) for s in shapes]


def test_custom_op_traces_under_torch_compile():
    """The fake implementation lets torch.compile trace the mutating op into one graph (no graph break)."""
    w, params, states, grads = _small_problem()
    eager_p = [p.clone() for p in params]
    eager_s = [{k: v.clone() for k, v in st.items()} for st in states]
    backend = triton_backend.TritonBackend()
    backend.step(eager_p, grads, eager_s, [1.0, 1.0], [0.0, 0.0], w)

    def step(ps, gs, sts):
        backend.step(ps, gs, sts, [1.0, 1.0], [0.0, 0.0], w)

    torch._dynamo.reset()
    torch.compile(step, backend="aot_eager", fullgraph=True)(params, grads, states)
    for p, q in zip(params, eager_p):
        assert_close(p, q, ("kernel", torch.float32), "compiled vs eager param")
    for st, est in zip(states, eager_s):
        for k in st:
            assert_close(st[k], est[k], ("kernel", torch.float32), f"compiled vs eager state[{k!r}]")


def test_bad_inputs_name_the_parameter():
    backend = triton_backend.TritonBackend()
    net = random_net()
    w = net.meta_weights(DEVICE, torch.float32)
    st = new_state(torch.empty(4, 6), torch.float32)
    st["momentum"] = st["momentum"].transpose(1, 2)  # not contiguous
    with pytest.raises(ValueError, match=r"state\[0\]\['momentum'\] is not contiguous"):
        backend.step([torch.randn(6, 4)], [torch.randn(6, 4)], [st], [1.0], [0.0], w)
    p64 = torch.randn(3, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match=r"params\[0\].*float64.*reference"):
        backend.step([p64], [p64.clone()], [new_state(p64, torch.float64)], [1.0], [0.0], w)
    assert not backend.supports(torch.device(DEVICE), torch.float64)
    with pytest.raises(ValueError, match="power of two"):
        triton_backend.TritonBackend(block_x=3)


def test_import_mulo_does_not_import_triton():
    import subprocess
    import sys

    code = "import sys, mulo, mulo.optim, mulo.backends; assert 'triton' not in sys.modules, 'triton imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_custom_op_passes_opcheck():
    """Schema (mutated arguments declared), fake tensor and AOT-dispatch checks of mulo::triton_lopt_step_."""
    w, params, states, grads = _small_problem()
    accs = [a for st in states for a in ([st["row"], st["col"]] if "row" in st else [st["full"]])]
    decays = [*w.momentum_decays, w.rms_decay, *w.adafactor_decays, 1.0 - w.rms_decay]
    args = (
        params, grads, [st["momentum"] for st in states], [st["second_moment"] for st in states], accs,
        [st["step"] for st in states], [st["nonfinite_skips"] for st in states], [1.0, 1.0], [0.0, 0.0],
        [t for layer in w.layers for t in layer], decays, w.exp_mult, w.step_mult, 1000.0, "torch", "ieee",
        [32, 64, 8, 1, 0],
    )  # fmt: skip
    result = torch.library.opcheck(torch.ops.mulo.triton_lopt_step_.default, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_passes_run_the_kernels_on_shards_with_elements(monkeypatch):
    """The pass contract launches one kernel per pass for all shards with local elements, planned with their
    whole tensor's element count; only a shard without elements goes through the reference's passes
    (tests/parity checks the values: every shard gets the unsharded update)."""
    from mulo.kernels.lopt_plan import M_WN

    from mulo.backends.passes import ShardGeometry
    from mulo.backends.reference import ReferenceBackend
    from mulo.lopt.state import init_state
    from tests.parity.test_parity import _local_states, _sharded_step, _split

    launches, fallbacks = [], []
    for name in ("lopt_reduce", "lopt_sumsq", "lopt_apply"):
        real = getattr(triton_backend, name)
        monkeypatch.setattr(triton_backend, name, lambda plan, *a, _n=name, _f=real, **k: launches.append(
            (_n, [row[M_WN] for row in plan.rows])) or _f(plan, *a, **k))  # fmt: skip
    for name in ("pass_a", "pass_b", "pass_c"):
        real = getattr(ReferenceBackend, name)
        monkeypatch.setattr(ReferenceBackend, name, lambda self, p, *a, _n=name, _f=real: fallbacks.append(
            (_n, [t.shape for t in p])) or _f(self, p, *a))  # fmt: skip
    cases = [((6, 5), 1), ((1, 5), 0), ((7,), 0)]  # rank 1's part of (1, 5) has no elements
    geoms = [ShardGeometry(s, k) for s, k in cases]
    params = [_split(torch.randn(s, device=DEVICE), k) for s, k in cases]
    states = [_local_states(init_state(s, device=DEVICE), g, "torch") for (s, _), g in zip(cases, geoms)]
    grads = [_split(hetero_grad(s).float().to(DEVICE), k) for s, k in cases]
    w = random_net().meta_weights(DEVICE, torch.float32)
    _sharded_step(triton_backend.TritonBackend(), params, grads, states, geoms, [0.5] * 3, [0.0] * 3, w, "torch")
    ranks = [[30, 5, 7], [30, 7]]  # whole element counts of the shards with elements on rank 0, rank 1
    assert launches == [(n, r) for n in ("lopt_reduce", "lopt_sumsq", "lopt_apply") for r in ranks]
    assert fallbacks == [(n, [torch.Size([0, 5])]) for n in ("pass_a", "pass_b", "pass_c")]
    assert all(st["step"].item() == 1.0 for parts in states for st in parts)


def test_every_launch_runs_under_the_parameters_device_guard(monkeypatch):
    """Triton launches on the CURRENT CUDA device: the step, the population step and the three passes enter
    the guard with the parameters' device around every launch (recorded through a wrapper here; the real
    guard makes that device current, checked on two GPUs below)."""
    import contextlib
    import types

    from mulo.backends.passes import ShardGeometry
    from mulo.backends.population import PopulationMetaWeights, init_population_state

    real_guard = triton_backend._device_guard
    entered, inside, launches = [], [0], []

    @contextlib.contextmanager
    def recording(tensors):
        entered.append(tensors[0].device)
        with real_guard(tensors):
            inside[0] += 1
            yield
            inside[0] -= 1

    monkeypatch.setattr(triton_backend, "_device_guard", recording)
    for name in ("lopt_reduce", "lopt_sumsq", "lopt_apply"):
        real = getattr(triton_backend, name)
        monkeypatch.setattr(
            triton_backend, name, lambda *a, _f=real, **k: launches.append(inside[0] > 0) or _f(*a, **k)
        )
    backend = triton_backend.TritonBackend()
    net = random_net()
    w = net.meta_weights(DEVICE, torch.float32)
    params = [torch.randn(5, 3, device=DEVICE), torch.randn(4, device=DEVICE)]
    grads = [hetero_grad(p.shape).float().to(DEVICE) for p in params]
    states = [new_state(p, torch.float32) for p in params]
    backend.step(params, grads, states, [1.0, 1.0], [0.0, 0.0], w)
    pop = [p.expand(2, *p.shape).contiguous() for p in params]
    pop_w = PopulationMetaWeights.stack([w, w])
    backend.population_step(pop, [g.expand(2, *g.shape).contiguous() for g in grads],
                            [init_population_state(p) for p in pop], [1.0, 1.0], [0.0, 0.0], pop_w)  # fmt: skip
    geoms = [ShardGeometry(tuple(p.shape)) for p in params]
    stats = backend.pass_a(params, grads, states, geoms, w)
    sumsqs = backend.pass_b(params, grads, states, stats, geoms, w)
    backend.pass_c(params, grads, states, stats, sumsqs, geoms, [1.0, 1.0], [0.0, 0.0], w)
    assert launches == [True] * 9 and entered == [torch.device(DEVICE)] * 5
    guard = real_guard([types.SimpleNamespace(device=torch.device("cuda", 1))])  # what the guard enters on a GPU
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_parameters_on_a_device_that_is_not_current():
    """Parameters on cuda:1 while cuda:0 is current: the kernels run on cuda:1 (the reference's update), and
    cuda:0 stays current."""
    shapes = [(5, 3), (4,), (2, 3, 4)]
    net = random_net()
    params = [torch.randn(s, dtype=torch.float64) for s in shapes]
    ref_p = [p.clone() for p in params]
    ref_s = [new_state(p, torch.float64) for p in ref_p]
    dev = torch.device("cuda", 1)
    tri_p = [p.to(dev, torch.float32) for p in params]
    tri_s = [new_state(p, torch.float32) for p in tri_p]
    backend = triton_backend.TritonBackend()
    with torch.cuda.device(0):
        for _ in range(2):
            grads = [hetero_grad(s) for s in shapes]
            backend.step(tri_p, [g.to(dev, torch.float32) for g in grads], tri_s, [0.7] * 3, [0.0] * 3,
                         net.meta_weights(dev, torch.float32))  # fmt: skip
            ReferenceBackend().step(ref_p, grads, ref_s, [0.7] * 3, [0.0] * 3, net.meta_weights("cpu", torch.float64))
        torch.cuda.synchronize(dev)
        assert torch.cuda.current_device() == 0
    for i, s in enumerate(shapes):
        assert_close(tri_p[i].cpu(), ref_p[i], kernel_key(backend), f"param {shape_id(s)} on cuda:1")
        assert tri_s[i]["step"].item() == 2.0


class _DeviceOnlyScalar(torch.Tensor):
    """A learning rate that fails if read on the host (what a GPU host sync would be)."""

    def __float__(self):
        raise AssertionError("a tensor hyperparameter was read on the host")

    def item(self):
        raise AssertionError("a tensor hyperparameter was read on the host")


def test_tensor_lr_and_weight_decay_stay_on_the_device():
    """param_group["lr"] (and weight_decay) as 0-d tensors, as torch's capturable optimizers take them: the
    step builds its hyperparameter table with device operations only (no host read, so no sync and a CUDA graph
    replays the current values) and equals the float run bitwise; changing the tensor in place changes the
    next step, as an LR schedule under graph replay does."""
    import mulo
    from mulo.mup.models import MuMLP

    torch.manual_seed(0)
    models = [MuMLP(in_features=5, width=8, depth=2, out_features=3).to(DEVICE) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    lr = torch.tensor(0.5, device=DEVICE).as_subclass(_DeviceOnlyScalar)
    wd = torch.tensor(0.01, device=DEVICE).as_subclass(_DeviceOnlyScalar)
    net = random_net()
    opts = []
    for m, (lr_, wd_) in zip(models, ((0.5, 0.01), (lr, wd))):
        groups = mulo.mup.param_groups(m, m.roles())
        for g in groups:
            g["weight_decay"] = wd_
        opts.append(mulo.MuLO(groups, lr=lr_, meta_weights=net, backend="triton"))
    x = torch.randn(6, 5, device=DEVICE)
    for step in range(3):
        if step == 2:  # an in-place schedule update on the tensor; the float run follows by assignment
            lr.fill_(0.25)
            for g in opts[0].param_groups:
                g["lr"] = 0.25
        for m, o in zip(models, opts):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
        for p, q in zip(models[0].parameters(), models[1].parameters()):
            assert torch.equal(p, q), f"step {step}: tensor lr/wd differ from floats"
