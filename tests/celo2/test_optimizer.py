"""mulo.Celo2 as a torch.optim.Optimizer: the AdamW route equals torch.optim.AdamW, state_dict round trip,
closure, lr schedulers, non-finite gradients, bad input, and a small training run."""

import copy
import io
import warnings

import pytest
import torch

import mulo
from mulo.celo2 import reference
from tests.celo2.common import random_celo2_net
from tests.helpers import hetero_grad


def make_params(dtype=torch.float64):
    shapes = [(6, 4), (4,), (2, 3, 5), (), (3, 2, 3, 3)]
    return [torch.randn(s, dtype=dtype) for s in shapes]


def set_grads(params, scale=1.0):
    for p in params:
        p.grad = hetero_grad(p.shape, dtype=p.dtype) * scale if p.dim() else torch.randn((), dtype=p.dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adamw_route_equals_torch_adamw(dtype):
    """Rank ≤ 1 tensors and an embedding=True group: bit for bit torch.optim.AdamW(foreach=False) with
    lr · adam_lr_mult, adam_betas, adam_eps and adam_weight_decay (None → the group's weight_decay)."""
    vec, scalar, emb = torch.randn(7, dtype=dtype), torch.randn((), dtype=dtype), torch.randn(5, 3, dtype=dtype)
    ours = [vec, scalar, emb]
    theirs = [t.clone() for t in ours]
    opt = mulo.Celo2(
        [{"params": [vec, scalar]}, {"params": [emb], "embedding": True, "adam_weight_decay": 0.3}],
        lr=2e-2,
        weight_decay=0.1,
        meta_weights=random_celo2_net(),
        adam_lr_mult=0.5,
        adam_betas=(0.8, 0.99),
        adam_eps=1e-6,
    )
    ref = torch.optim.AdamW(
        [{"params": theirs[:2], "weight_decay": 0.1}, {"params": theirs[2:], "weight_decay": 0.3}],
        lr=1e-2,
        betas=(0.8, 0.99),
        eps=1e-6,
        foreach=False,
    )
    for _ in range(6):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn_like(a) * 3
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)
    for a, b in zip(ours, theirs):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[a][key], ref.state[b][key]), key
        assert opt.state[a]["step"].item() == ref.state[b]["step"].item() == 6
    assert set(opt.state[emb]) == {"step", "exp_avg", "exp_avg_sq", "nonfinite_skips"}


def test_state_dict_round_trip_is_bit_exact():
    net = random_celo2_net()
    params = make_params()
    opt = mulo.Celo2(params, lr=0.01, weight_decay=0.01, meta_weights=net)
    for _ in range(3):
        set_grads(params)
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    twins = [p.clone() for p in params]
    opt2 = mulo.Celo2(twins, lr=0.5, meta_weights=net)
    buffer.seek(0)
    opt2.load_state_dict(torch.load(buffer))
    assert opt2.param_groups[0]["lr"] == 0.01
    for _ in range(2):
        set_grads(params)
        for a, b in zip(params, twins):
            b.grad = a.grad.clone()
        opt.step()
        opt2.step()
    for a, b in zip(params, twins):
        assert torch.equal(a, b)
        for key, value in opt.state[a].items():
            assert torch.equal(value, opt2.state[b][key]), key


def test_state_dict_keeps_float32_state_of_bf16_parameters_and_checks_shapes():
    params = [torch.randn(4, 6, dtype=torch.bfloat16), torch.randn(6, dtype=torch.bfloat16)]
    opt = mulo.Celo2(params, meta_weights=random_celo2_net())
    set_grads(params)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    opt2 = mulo.Celo2([p.clone() for p in params], meta_weights=random_celo2_net())
    opt2.load_state_dict(sd)
    for p in opt2.param_groups[0]["params"]:
        assert opt2.state[p]["exp_avg" if p.dim() == 1 else "momentum"].dtype == torch.float32
    sd["state"][0]["row"] = torch.zeros(3, 5)
    with pytest.raises(ValueError, match="state of parameter 0"):
        opt2.load_state_dict(sd)


def test_closure_param_groups_and_unused_parameters():
    model = torch.nn.Linear(4, 3).double()
    frozen = torch.nn.Parameter(torch.randn(3, 3, dtype=torch.float64))
    opt = mulo.Celo2(
        [{"params": [model.weight]}, {"params": [model.bias, frozen], "lr": 0.0}],
        lr=1e-2,
        meta_weights=random_celo2_net(),
    )
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    before = model.weight.clone(), model.bias.clone(), frozen.clone()

    def closure():
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0
    assert not torch.equal(model.weight, before[0])
    assert torch.equal(model.bias, before[1]) and torch.equal(frozen, before[2])  # lr 0; no gradient
    assert frozen not in opt.state


def test_lr_scheduler_sets_the_step_size():
    """The learned step has RMS 1 over the last two axes, so with weight decay 0 each step moves a weight by
    exactly the scheduled lr in RMS (up to the 1e-9 epsilon)."""
    w = torch.randn(5, 7, dtype=torch.float64)
    opt = mulo.Celo2([w], lr=1e-2, meta_weights=random_celo2_net())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (t + 1) / 4 if t < 4 else 0.5)
    seen = []
    for _ in range(6):
        lr = opt.param_groups[0]["lr"]
        before = w.clone()
        w.grad = hetero_grad(w.shape)
        opt.step()
        sched.step()
        seen.append(lr)
        torch.testing.assert_close((w - before).square().mean().sqrt().item(), lr, rtol=1e-7, atol=0)
    assert seen == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 5e-3, 5e-3])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_skips_the_tensor_on_both_routes(bad):
    params = make_params()
    opt = mulo.Celo2(params, meta_weights=random_celo2_net())
    set_grads(params)
    opt.step()
    before = [p.clone() for p in params]
    states = [copy.deepcopy(opt.state[p]) for p in params]
    set_grads(params)
    params[0].grad[1, 2] = bad  # learned rule
    params[1].grad[0] = bad  # AdamW route
    opt.step()
    for i in (0, 1):
        assert torch.equal(params[i], before[i])
        for key, value in states[i].items():
            want = value + 1 if key == "nonfinite_skips" else value
            assert torch.equal(opt.state[params[i]][key], want), key
    for i in (2, 3, 4):
        assert not torch.equal(params[i], before[i])
        assert opt.state[params[i]]["step"].item() == 2
    assert opt.nonfinite_skips().item() == 2
    assert set(opt.nonfinite_skips(per_parameter=True)) == {f"param_groups[0]['params'][{i}]" for i in range(5)}


def test_nonfinite_raise_names_the_parameter_and_changes_nothing():
    params = make_params()
    opt = mulo.Celo2(params, meta_weights=random_celo2_net(), nonfinite="raise")
    set_grads(params)
    params[2].grad[0, 0, 0] = float("nan")
    before = [p.clone() for p in params]
    with pytest.raises(FloatingPointError, match=r"param_groups\[0\]\['params'\]\[2\] \(shape \(2, 3, 5\)\)"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    assert all(opt.state[p]["step"].item() == 0 for p in params)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"lr": -1.0}, ValueError, "lr must be finite and ≥ 0"),
        ({"weight_decay": float("nan")}, ValueError, "weight_decay"),
        ({"backend": "cuda"}, ValueError, "unknown celo2 backend 'cuda'"),
        ({"normalize_axes": "hwio"}, ValueError, "normalize_axes"),
        ({"orthogonalize": 1}, TypeError, "orthogonalize"),
        ({"nonfinite": "ignore"}, ValueError, "nonfinite"),
        ({"adam_betas": (0.9, 1.0)}, ValueError, r"param_groups\[0\]\['adam_betas'\]"),
        ({"adam_eps": -1e-8}, ValueError, "adam_eps"),
        ({"adam_weight_decay": "0.1"}, TypeError, "adam_weight_decay"),
        ({"meta_weights": 3}, TypeError, "meta_weights"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        mulo.Celo2([torch.randn(3, 3)], **{"meta_weights": random_celo2_net(), **kwargs})


def test_bad_parameters_and_gradients_are_named():
    net = random_celo2_net()
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[1\] has dtype torch.int64"):
        mulo.Celo2([torch.randn(3), torch.ones(3, dtype=torch.long)], meta_weights=net)
    with pytest.raises(TypeError, match=r"param_groups\[1\]\['embedding'\]"):
        mulo.Celo2([{"params": [torch.randn(3)]}, {"params": [torch.randn(3)], "embedding": "yes"}], meta_weights=net)
    p = torch.randn(4, 3)
    opt = mulo.Celo2([p], meta_weights=net)
    p.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match=r"param_groups\[0\]\['params'\]\[0\] has a sparse gradient"):
        opt.step()


def test_zero_size_and_bf16_parameters():
    empty, w = torch.randn(0, 5), torch.randn(4, 6, dtype=torch.bfloat16)
    opt = mulo.Celo2([empty, w], meta_weights=random_celo2_net())
    set_grads([empty, w])
    before = w.clone()
    opt.step()
    assert opt.state[empty]["step"].item() == 1 and not torch.equal(w, before)
    assert opt.state[w]["second_moment"].dtype == torch.float32


def test_placeholder_weights_train_a_small_mlp():
    """The placeholder (and it says so) and the default meta-trained celo2_cpu both train a small MLP: its loss
    falls over a few batches, with and without Newton–Schulz."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=gen)
    y = (x @ torch.randn(10, 4, generator=gen)).argmax(dim=1)
    for orthogonalize, weights in ((True, "placeholder_handset_adam"), (False, "placeholder_handset_adam"),
                                   (True, None), (False, None)):  # fmt: skip
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt = mulo.Celo2(model.parameters(), lr=1e-2, orthogonalize=orthogonalize, meta_weights=weights)
        placeholder = [w for w in caught if issubclass(w.category, mulo.PlaceholderMetaWeightsWarning)]
        assert (len(placeholder) == 1) == (weights is not None), caught
        losses = []
        for i in range(40):
            batch = slice(64 * (i % 4), 64 * (i % 4 + 1))
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert sum(losses[-4:]) < 0.6 * sum(losses[:4]), (orthogonalize, losses)


def test_backend_reference_is_the_default():
    opt = mulo.Celo2([torch.randn(2, 2)], backend="reference", meta_weights=random_celo2_net())
    assert isinstance(opt.backend_for("cpu"), reference.ReferenceBackend)


def test_dtensor_parameters_are_refused_with_the_fix(tmp_path):
    """A sharded (FSDP2) parameter would be normalized and orthogonalized per shard: refused, naming the
    parameter and what to use instead (a one-process group: the check needs no second rank)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        p = torch.nn.Parameter(distribute_tensor(torch.randn(4, 6), mesh, [Shard(0)]))
        with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[1\] is a DTensor.*mulo.MuLO"):
            mulo.Celo2([torch.nn.Parameter(torch.randn(3)), p], meta_weights=random_celo2_net())
    finally:
        dist.destroy_process_group()
