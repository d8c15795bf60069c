"""Deterministic mode of the triton backend (``torch.use_deterministic_algorithms(True)``): passes A and B
store per-chunk partial sums and add them up in a fixed order (kernels/lopt_plan.py), so a step's bits do not
depend on the order its programs run in. The interpreter runs a launch's programs one after another in grid
order, so a chunk table in reverse order is another run order: with float atomics the step's bits change with
it; in deterministic mode they do not. Both modes stay within the kernel tolerance of the float64 reference."""

import pytest
import torch
from mulo.kernels import lopt_plan

from tests.helpers import hetero_grad, random_net
from tests.kernels.test_lopt_step import DEVICE, compare, new_state, run_pair, triton_backend
from tests.tolerances import kernel_key

# several tiles along both axes (sums of 3 and 5 partials), a conv kernel (batches), a bias, a scalar, and
# d0 = X and d0 = Y orientations (the old row accumulators are summed along either axis)
SHAPES = [(70, 150), (130, 40), (6, 5, 3, 3), (100,), ()]


@pytest.fixture
def deterministic():
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def steps(monkeypatch, reverse: bool, n: int = 2):
    """``n`` steps of the triton backend from a fixed seed; ``reverse``: its chunk tables in reverse order."""
    monkeypatch.setattr(triton_backend, "_BACKEND_FOR_OP", {})  # the op's backends cache their plans
    if reverse:
        build = lopt_plan.build_plan

        def reversed_plan(*args, **kwargs):
            plan = build(*args, **kwargs)
            plan.chunks_ab = plan.chunks_ab.flip(0).contiguous()
            plan.chunks_c = plan.chunks_c.flip(0).contiguous()
            plan.chunks_c_by_kind = tuple(c.flip(0).contiguous() for c in plan.chunks_c_by_kind)
            plan.batches = plan.batches.flip(0).contiguous()
            return plan

        monkeypatch.setattr(lopt_plan, "build_plan", reversed_plan)
    torch.manual_seed(0)
    weights = random_net().meta_weights(DEVICE, torch.float32)
    params = [torch.randn(s, device=DEVICE) for s in SHAPES]
    states = [new_state(p, torch.float32) for p in params]
    backend = triton_backend.TritonBackend()
    for _ in range(n):
        grads = [hetero_grad(s).to(DEVICE, torch.float32) for s in SHAPES]
        backend.step(params, grads, states, [0.3] * len(SHAPES), [0.0] * len(SHAPES), weights)
    monkeypatch.undo()
    return params, states


def same_bits(a, b) -> bool:
    (pa, sa), (pb, sb) = a, b
    return all(torch.equal(x, y) for x, y in zip(pa, pb)) and all(
        torch.equal(x[k], y[k]) for x, y in zip(sa, sb) for k in x
    )


def test_deterministic_bits_do_not_depend_on_program_order(deterministic, monkeypatch):
    assert same_bits(steps(monkeypatch, reverse=False), steps(monkeypatch, reverse=True))


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter runs programs in grid order; a GPU in any order")
def test_atomic_bits_do_depend_on_program_order(monkeypatch):
    """What the deterministic test would catch: without deterministic mode the atomics add the partial sums
    in program order, and the reversed run differs in some bits."""
    assert not torch.are_deterministic_algorithms_enabled()
    assert not same_bits(steps(monkeypatch, reverse=False), steps(monkeypatch, reverse=True))


def test_deterministic_mode_matches_the_reference(deterministic):
    backend = triton_backend.TritonBackend()
    lrs = [0.7 / max(1, s[-1]) if len(s) >= 2 else 0.7 for s in SHAPES]  # μP: hidden weights get lr/fan_in
    tri, ref = run_pair(SHAPES, 3, backend=backend, lrs=lrs)
    compare(tri, ref, kernel_key(backend), SHAPES)


def test_deterministic_mode_is_read_when_a_step_begins(deterministic, monkeypatch):
    """Records (and the finishing launches) only while deterministic algorithms are on."""
    seen = []
    prepare = triton_backend.TritonBackend.prepare

    def spy(self, *args, **kwargs):
        w = prepare(self, *args, **kwargs)
        seen.append(w.records is not None)
        return w

    monkeypatch.setattr(triton_backend.TritonBackend, "prepare", spy)
    backend = triton_backend.TritonBackend()
    p = [torch.randn(9, 70, device=DEVICE)]
    s = [new_state(p[0], torch.float32)]
    w = random_net().meta_weights(DEVICE, torch.float32)
    backend.step(p, [hetero_grad((9, 70)).to(DEVICE, torch.float32)], s, [0.1], [0.0], w)
    torch.use_deterministic_algorithms(False)
    backend.step(p, [hetero_grad((9, 70)).to(DEVICE, torch.float32)], s, [0.1], [0.0], w)
    assert seen == [True, False]
