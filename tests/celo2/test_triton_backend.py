"""Celo2's ``triton`` backend (kernels/celo2.py, mulo/celo2/triton.py) against the float64 reference, in Triton's
interpreter on the CPU (the same kernels compile for sm_90 in tests/kernels/test_aot_compile.py): one step from
the same state on fresh random inputs (every state tensor, the update), float32 trajectories, non-finite
gradients, device-tensor learning rates, the population step, and the backend choice."""

import copy
import warnings

import pytest
import torch

import mulo
from mulo.celo2 import Celo2Config, Celo2Net, population
from tests.celo2.common import check_transposed_slices_share_one_chain, pair, random_celo2_net, set_grads, sync_state
from tests.tolerances import TRAJECTORY, assert_close, movement_error

pytest.importorskip("triton")
ctri = pytest.importorskip("mulo.celo2.triton")

# 2-d with odd sizes, single rows/columns, a plane of 2 × 2 tiles (9 × 70: atomics across programs), rank 3 whose
# factored axes are its last two (planes are slices), a conv kernel and a rank-4 tensor whose factored axes are not
# (each element finds its slice)
SHAPES = [(6, 4), (5, 7), (1, 9), (7, 1), (3, 4, 5), (4, 3, 3, 3), (2, 3, 1, 5), (9, 70)]


# on a GPU machine (bench/gpu_validate.sh runs this file) the kernels run on CUDA, else in the interpreter
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _triton(shapes, dtype, net, **kw):
    return pair(shapes, dtype, net, "triton", device=DEVICE, **kw)


@pytest.mark.parametrize(
    "orthogonalize, axes, dtype",
    [(True, "last2", torch.float32), (True, "io", torch.float32), (False, "last2", torch.float32),
     (False, "io", torch.float32), (True, "last2", torch.bfloat16), (False, "last2", torch.float16)],
    ids=["celo2-last2", "celo2-io", "base-last2", "base-io", "celo2-bf16", "base-fp16"],
)  # fmt: skip
def test_one_step_matches_the_reference(orthogonalize, axes, dtype):
    """After a few reference steps (non-trivial state), one step of both from the same state: every state tensor
    within the kernel tolerance, the update Δp within Celo2's step tolerance (fp32) or the parameter within its
    storage dtype's."""
    net = random_celo2_net(int(torch.randint(0, 1000, ())))
    ref, fast, opt_ref, opt_fast = _triton(SHAPES, dtype, net, orthogonalize=orthogonalize, normalize_axes=axes)
    for _ in range(3):
        set_grads(ref, fast)
        opt_ref.step()
    sync_state(opt_ref, opt_fast, ref, fast)
    before = [a.clone() for a in ref]
    set_grads(ref, fast)
    terms = [torch.maximum(opt_ref.state[a]["momentum"].abs().amax(0), a.grad.abs()) for a in ref]
    opt_ref.step()
    opt_fast.step()
    for a, b, p0, term in zip(ref, fast, before, terms):
        where = f"{tuple(a.shape)} {axes}"
        for key, value in opt_ref.state[a].items():
            got = opt_fast.state[b][key]
            assert got.dtype == torch.float32 and got.shape == value.shape, key
            scale = term if key == "momentum" else None
            assert_close(got, value, ("kernel", torch.float32), f"{key} of {where}", scale=scale)
        if dtype != torch.float32:
            assert_close(b, a, ("kernel", dtype), f"parameter {where}")
            continue
        step_ref, step_fast = a - p0, b.double().cpu() - p0
        key = ("celo2 step newton-schulz" if orthogonalize else "celo2 step", torch.float32)
        assert_close(step_fast, step_ref, key, f"update of {where}", scale=step_ref.abs().max())


@pytest.mark.parametrize("orthogonalize", [True, False], ids=["celo2", "celo2_base"])
def test_float32_trajectory_follows_the_float64_reference(orthogonalize):
    """8 steps in float32 stay within 1e-3 of the float64 reference's movement (conv, rank 3, 2-d, weight decay),
    with gradients that shrink and change scale as a training run's do."""
    shapes = [(8, 3, 3, 3), (3, 6, 10), (17, 24)]
    ref, fast, opt_ref, opt_fast = _triton(shapes, torch.float32, random_celo2_net(7), orthogonalize=orthogonalize)
    start = [a.clone() for a in ref]
    for t in range(8):
        set_grads(ref, fast, scale=10.0 ** (-t / 4))
        opt_ref.step()
        opt_fast.step()
    for a, b, s in zip(ref, fast, start):
        err = movement_error(b, a, s)
        assert err <= TRAJECTORY[torch.float32], f"{tuple(a.shape)}: {err:.2e} of the movement"
        assert opt_fast.state[b]["step"].item() == 8


@pytest.mark.parametrize("orthogonalize", [True, False], ids=["celo2", "celo2_base"])
def test_nonfinite_gradients_skip_their_tensor_and_clamp_huge_ones(orthogonalize):
    """An inf or NaN skips that tensor (only nonfinite_skips moves); a huge finite gradient is clamped to ±1000
    and applied, as the reference does."""
    ref, fast, opt_ref, opt_fast = _triton([(5, 6), (4, 3, 3), (7, 8)], torch.float32, random_celo2_net(1),
                                           orthogonalize=orthogonalize)  # fmt: skip
    set_grads(ref, fast)
    opt_ref.step()
    opt_fast.step()
    sync_state(opt_ref, opt_fast, ref, fast)
    before = [b.clone() for b in fast]
    states = [copy.deepcopy(opt_fast.state[b]) for b in fast]
    set_grads(ref, fast)
    for grads in ([a.grad for a in ref], [b.grad for b in fast]):
        grads[0][2, 3] = float("nan")
        grads[1][0, 1, 2] = -float("inf")
        grads[2][1, 1] = 1e30
    opt_ref.step()
    opt_fast.step()
    for i in (0, 1):
        assert torch.equal(fast[i], before[i])
        for key, value in states[i].items():
            assert torch.equal(opt_fast.state[fast[i]][key], value + (key == "nonfinite_skips")), key
    assert not torch.equal(fast[2], before[2])
    key = ("celo2 step newton-schulz" if orthogonalize else "celo2 step", torch.float32)
    step_ref = ref[2] - before[2].double().cpu()
    assert_close(fast[2] - before[2], step_ref, key, "the clamped tensor's update", scale=step_ref.abs().max())
    assert opt_fast.nonfinite_skips().item() == 2


def test_tensor_learning_rates_equal_float_ones():
    """lr and weight decay as 0-d tensors (as a capturable schedule keeps them) give the float result bit for
    bit, and steady steps reuse the launch tables."""
    net = random_celo2_net(2)
    a = [torch.randn(5, 7, device=DEVICE), torch.randn(3, 4, 4, device=DEVICE)]
    b = [p.clone() for p in a]
    opt_f = mulo.Celo2(a, lr=0.01, weight_decay=0.1, meta_weights=net, backend="triton")
    opt_t = mulo.Celo2(b, lr=torch.tensor(0.01, device=DEVICE), weight_decay=0.1, meta_weights=net, backend="triton")
    opt_t.param_groups[0]["weight_decay"] = torch.tensor(0.1, device=DEVICE)
    for _ in range(2):
        for x, y in zip(a, b):
            x.grad = torch.randn_like(x)
            y.grad = x.grad.clone()
        opt_f.step()
        opt_t.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    backend = opt_f.backend_for(DEVICE, torch.float32)
    buckets = list(backend._step_cache.values())
    launches = [b.triton_launch[1] for b in buckets]
    opt_f.step()  # both optimizers' buckets are kept: nothing rebuilt
    opt_t.step()
    assert list(backend._step_cache.values()) == buckets
    assert [b.triton_launch[1] for b in buckets] == launches


def test_population_step_equals_member_by_member():
    """M members with their own meta-weights and learning rates in one launch per pass == each member alone
    through the same backend (a non-finite gradient in one member skips only that member's tensor)."""
    from tests.celo2.test_population import M, grads_for, members, population_setup

    options = population.PopulationOptions(orthogonalize=True, axes="last2", adam_lr_mult=0.5)
    nets, _, params, states, lrs, wds = population_setup(torch.float32, int(torch.randint(0, 1000, ())))
    weights = population.PopulationWeights.stack([n.meta_weights(DEVICE, torch.float32) for n in nets])
    params = [p.to(DEVICE) for p in params]
    states = [{k: v.to(DEVICE) for k, v in st.items()} for st in states]
    solo = members(nets, params, lrs, wds, "triton", options)
    step = population.backend_population_step("triton", DEVICE, options)
    assert step.backend == "triton"
    for t in range(2):
        grads = [g.to(DEVICE) for g in grads_for(params, nonfinite_member=1 if t == 1 else None)]
        step(params, grads, states, lrs, wds, weights)
        for j, (ps, opt) in enumerate(solo):
            for p, g in zip(ps, grads):
                p.grad = g[j].clone()
            opt.step()
    for j, (ps, opt) in enumerate(solo):
        for i, p in enumerate(ps):
            where = f"member {j}, tensor {i} {tuple(p.shape)}"
            assert_close(params[i][j], p, ("population", torch.float32), f"{where}: parameter")
            for key, value in opt.state[p].items():
                assert_close(states[i][key][j], value, ("population", torch.float32), f"{where}: {key}")
    assert states[0]["nonfinite_skips"].tolist() == [0.0, 1.0, 0.0]
    assert M == 3


def test_zero_size_and_other_networks_run_as_the_reference():
    """An empty tensor only counts its step; a meta-network the kernels do not hard-code (tanh, wider) runs the
    reference inside the backend: bit for bit the reference's float32 result."""
    wide = Celo2Net(Celo2Config(hidden_size=12, activation="tanh"), generator=torch.Generator().manual_seed(0))
    params = [torch.randn(0, 5, device=DEVICE), torch.randn(6, 7, device=DEVICE)]
    twins = [p.clone() for p in params]
    opt = mulo.Celo2(params, meta_weights=wide, backend="triton")
    opt_ref = mulo.Celo2(twins, meta_weights=wide, backend="reference")
    for _ in range(2):
        for a, b in zip(params, twins):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        opt.step()
        opt_ref.step()
    assert torch.equal(params[1], twins[1])
    assert opt.state[params[0]]["step"].item() == 2


def test_auto_picks_triton_only_on_a_gpu_and_float64_is_refused_by_name():
    opt = mulo.Celo2([torch.randn(3, 4)], meta_weights=random_celo2_net())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert opt.backend_for("cpu", torch.float32).name != "triton"  # never the interpreter
        if DEVICE == "cuda":
            assert opt.backend_for("cuda", torch.float32).name == "triton"
    explicit = mulo.Celo2([torch.randn(3, 4, dtype=torch.float64)], meta_weights=random_celo2_net(), backend="triton")
    with pytest.raises(Exception, match="triton"):
        explicit.backend_for(DEVICE, torch.float64)


def test_the_network_table_is_the_published_layout_flattened():
    """W1 (8 × 30, out × in), b1, W2, b2, the direction and magnitude rows of W3 and b3, per meta-weight set."""
    from mulo.kernels import celo2 as kern

    from mulo.celo2.cpu import weights_mlp

    w = random_celo2_net(4).meta_weights("cpu", torch.float32)
    table = ctri.net_table(weights_mlp(w))
    assert table.shape == (1, kern.NET_SIZE) == (1, 30 * 8 + 8 + 64 + 8 + 16 + 2)
    w1 = torch.cat(list(w.w0), dim=0)  # (30, 8): x · W
    assert torch.equal(table[0, :240].view(8, 30), w1.T)
    assert torch.equal(table[0, 240:248], w.b0)
    assert torch.equal(table[0, kern.OFF_W3.value : kern.OFF_W3.value + 8], w.dense[1][0][:, 0])
    assert torch.equal(table[0, -2:], w.dense[1][1][:2])


def test_transposed_slice_shapes_share_one_newton_schulz_chain(monkeypatch):
    """(5, 3) and (3, 5) slices share one batched Newton–Schulz chain; the step matches the reference's."""
    check_transposed_slices_share_one_chain(monkeypatch, "triton", DEVICE)
