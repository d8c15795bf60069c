"""MuLO.step reuses its grouping (and a native backend its state arguments) while nothing changes: the
result is bit-identical to rebuilding it every step, and every change that matters invalidates it."""

import pytest
import torch

import mulo
from mulo.backends import available_backends

BACKENDS = [b for b in ("cpu", "reference") if b in available_backends("cpu", torch.float32)]


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (5,), (3, 4, 2), (), (7, 3)]
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _grads(params, t, skip=()):
    g = torch.Generator().manual_seed(100 + t)
    for i, p in enumerate(params):
        p.grad = None if i in skip else torch.randn(p.shape, generator=g) * (1 + i)


def _run(backend, steps, replan_every_step, events=lambda t, opt, params: None):
    params = _params()
    opt = mulo.MuLO(
        [{"params": params[:3], "lr": 0.5}, {"params": params[3:], "lr": 1.0, "weight_decay": 0.1}],
        backend=backend,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    for t in range(steps):
        _grads(params, t, skip=(1,) if 2 <= t < 4 else ())
        events(t, opt, params)
        if replan_every_step:
            opt._plan = None
        opt.step()
        sched.step()
    return params, opt


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reused_plan_steps_exactly_like_a_fresh_one(backend):
    """A scheduler changing lr every step and a gradient vanishing for two steps (steps 2, 3) and coming back."""
    a, opt_a = _run(backend, 7, replan_every_step=False)
    b, opt_b = _run(backend, 7, replan_every_step=True)
    for p, q in zip(a, b):
        assert torch.equal(p, q)
        for k, v in opt_a.state[p].items():
            assert torch.equal(v, opt_b.state[q][k]), k
    assert float(opt_a.state[a[1]]["step"]) == 5.0  # two steps without a gradient were not counted


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_parameter_storage_is_stepped(backend):
    """``p.data = ...`` (new storage, same shape) between steps: the plan steps the new storage, and the
    old one is left alone (the cpu backend keeps (1, *S) views of the parameters while their storage stays)."""

    def swap(t, opt, params):
        if t == 6:  # the plan (rebuilt at t = 4, when param 1's gradient came back) was reused at t = 5
            old = params[0].data
            params[0].data = old.clone()
            swap.old, swap.frozen = old, old.clone()
            # a non-contiguous parameter (a transposed view of new storage): the plan's fallback path
            params[4].data = params[4].data.t().contiguous().t()

    a, _ = _run(backend, 7, replan_every_step=False, events=swap)
    assert torch.equal(swap.old, swap.frozen)
    b, _ = _run(backend, 7, replan_every_step=True, events=swap)
    for p, q in zip(a, b):
        assert torch.equal(p, q)


def _run_with_changes(backend, replan_every_step):
    """add_param_group (t = 2), one parameter's state dict replaced by an empty one (t = 3: the same number of
    entries, so only their identity tells), load_state_dict (t = 4) and a cleared state (t = 5) between steps."""
    params, extra = _params(), torch.nn.Parameter(torch.ones(4, 4))
    opt = mulo.MuLO(params, backend=backend)
    for t in range(7):
        _grads(params, t)
        if t == 2:
            opt.add_param_group({"params": [extra], "lr": 0.3})
        if t >= 2:
            extra.grad = torch.full((4, 4), 0.5) * (t + 1)
        if t == 3:
            opt.state[params[1]] = {}  # that tensor starts afresh
        if t == 4:
            opt.load_state_dict(opt.state_dict())
        if t == 5:
            opt.state.clear()  # every tensor starts afresh (step counters too)
        if replan_every_step:
            opt._plan = None
        opt.step()
    return [*params, extra], opt


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_changed_optimizer_is_seen(backend):
    a, opt_a = _run_with_changes(backend, replan_every_step=False)
    b, opt_b = _run_with_changes(backend, replan_every_step=True)
    for p, q in zip(a, b):
        assert torch.equal(p, q)
        assert all(torch.equal(v, opt_b.state[q][k]) for k, v in opt_a.state[p].items())
    assert float(opt_a.state[a[-1]]["step"]) == 2.0  # cleared at t = 5, then stepped at t = 5 and 6
    assert float(opt_a.state[a[1]]["step"]) == 2.0
    assert not torch.equal(a[-1], torch.ones(4, 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reused_plan_still_checks_gradients(backend):
    """nonfinite='raise' names the tensor on a planned step too; a sparse gradient falls back and is refused."""
    params = _params()
    opt = mulo.MuLO(params, backend=backend, nonfinite="raise")
    _grads(params, 0)
    opt.step()
    _grads(params, 1)
    params[2].grad[0, 0, 0] = float("nan")
    before = [p.detach().clone() for p in params]
    with pytest.raises(FloatingPointError, match=r"param_groups\[0\]\['params'\]\[2\]"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    _grads(params, 2)
    params[1].grad = params[1].grad.to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradient"):
        opt.step()
