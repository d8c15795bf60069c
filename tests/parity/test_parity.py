"""One table of cases, run against the float64 reference by every fast backend available here.

``CASES`` lists what a step must get right (degenerate shapes, μP lr scales and weight decay, the JAX
layout, non-contiguous parameters); ``SHARD_CASES`` what the pass contract must get right: every shard of
a tensor split across (simulated) ranks gets exactly the update of the unsharded tensor, with the
statistics summed between the passes as :mod:`mulo.distributed.sharded` does with its all-reduces. The
seed of a failing run is printed by tests/conftest.py (``MULO_TEST_SEED`` reproduces it).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mulo.backends import BackendUnavailable, available_backends, has_capability, load_backend, resolve_backend
from mulo.backends.passes import ShardGeometry, summed_stats
from mulo.backends.reference import ReferenceBackend
from mulo.lopt.shapes import physical_factored_dims, physical_shape
from mulo.lopt.state import init_state
from tests.helpers import SHAPES, hetero_grad, random_net, shape_id
from tests.tolerances import assert_close, kernel_key, state_scale


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    shapes: tuple
    steps: int = 2
    layout: str = "torch"
    weight_decay: float = 0.0
    mup: bool = False  # lr_scale 1/fan_in on rank ≥ 2 tensors, as μP hidden weights get
    noncontiguous: bool = False  # parameters and gradients are transposed views
    time_clamp: float | None = None  # the meta-weights' clamp of the time features' t
    start_step: float = 0.0  # every tensor's step counter before the first step
    nominal: float | None = None  # α of the meta-weights' nominal term (a third output head)


CASES = [
    Case("zero-size", ((5, 0), (0, 5), (0,), (2, 0, 3), (3, 4), (0, 0))),
    Case("shape-zoo-mup-wd", (*SHAPES, (33, 70)), steps=3, weight_decay=0.05, mup=True),
    Case("jax-layout", ((4, 6), (6, 4), (5, 5), (2, 3, 4)), layout="jax"),
    Case("noncontiguous", ((6, 5), (3, 7)), noncontiguous=True),
    # past the clamp (t = 2,500 read as 1,000) and below it (t = 400): both sides of min(t, time_clamp)
    Case("time-clamp", ((6, 5), (7,), (2, 3, 4)), start_step=2500.0, time_clamp=1000.0),
    Case("time-clamp-below", ((6, 5), (7,)), start_step=400.0, time_clamp=1000.0),
    # the nominal term on 0-d, 1-d, 2-d and 4-d tensors, odd shapes, μP lrs and weight decay
    Case("nominal", ((), (7,), (33, 70), (5, 3), (2, 3, 4, 5)), steps=3, weight_decay=0.05, mup=True, nominal=0.01),
]

# (whole shape, split physical axis): split along d0, d1, neither; uneven and empty shards; zero-size
SHARD_CASES = [
    ((7, 3), 0),
    ((3, 8), 0),
    ((6, 5), 1),
    ((3, 9), 1),
    ((1, 5), 0),
    ((3, 6, 5), 0),
    ((2, 9, 4), 1),
    ((3, 4, 6), 1),  # split along d1 with 3 batches: each batch's row-accumulator mean spans the ranks
    ((2, 6, 4), 2),  # the same with d0 before d1
    ((4, 3, 3, 2), 0),
    ((7,), 0),
    ((1,), 0),
    ((0, 5), 1),
]
RANKS = 2


def _fast_backend(name: str):
    # triton with its default MLP operands (tf32; the interpreter makes the tensor cores' cut itself), so the
    # table checks what a GPU computes
    return load_backend(name)


FAST = [b for b in available_backends("cpu", torch.float32) if b != "reference"]


def _weights(layout: str, time_clamp: float | None = None, nominal: float | None = None):
    from mulo.lopt.network import LOptConfig

    net = random_net(config=LOptConfig(layout=layout, time_clamp=time_clamp, nominal=nominal))
    return net.meta_weights("cpu", torch.float32), net.meta_weights("cpu", torch.float64)


def _lr(case: Case, shape) -> float:
    return 0.7 / shape[-1] if case.mup and len(shape) >= 2 and shape[-1] else 0.7


def _param(shape, noncontiguous: bool) -> torch.Tensor:
    if noncontiguous:
        return torch.randn(tuple(reversed(shape))).t()
    return torch.randn(shape)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("backend", FAST)
def test_step_matches_reference(backend, case):
    fast = _fast_backend(backend)
    w32, w64 = _weights(case.layout, case.time_clamp, case.nominal)
    if case.nominal is not None and not has_capability(backend, "nominal"):
        # a backend without the nominal head refuses such meta-weights by name, at resolution and in step()
        with pytest.raises(BackendUnavailable, match=f"{backend!r} does not implement nominal"):
            resolve_backend(backend, torch.device("cpu"), requires=frozenset({"nominal"}))
        params = [torch.randn(s) for s in case.shapes]
        states = [init_state(s, torch.float32) for s in case.shapes]
        with pytest.raises(ValueError, match="nominal term"):
            fast.step(params, [torch.randn(s) for s in case.shapes], states, [0.1] * 5, [0.0] * 5, w32)
        return
    params = [_param(s, case.noncontiguous) for s in case.shapes]
    ref_params = [p.double().clone() for p in params]
    states = [init_state(s, torch.float32, layout=case.layout) for s in case.shapes]
    ref_states = [init_state(s, torch.float64, layout=case.layout) for s in case.shapes]
    for st in (*states, *ref_states):
        st["step"].fill_(case.start_step)
    lrs = [_lr(case, s) for s in case.shapes]
    wds = [case.weight_decay] * len(case.shapes)
    grad_max = [torch.zeros(physical_shape(s), dtype=torch.float64) for s in case.shapes]
    for t in range(case.steps):
        grads = [hetero_grad(s, dtype=torch.float32) for s in case.shapes]
        if case.noncontiguous:
            grads = [g.t().contiguous().t() for g in grads]
        grad_max = [torch.maximum(m, g.abs().double().reshape(m.shape)) for m, g in zip(grad_max, grads)]
        fast.step(params, grads, states, lrs, wds, w32)
        ReferenceBackend().step(ref_params, [g.double() for g in grads], ref_states, lrs, wds, w64)
        for i, s in enumerate(case.shapes):
            what = f"{backend} {case.name} step {t} tensor {shape_id(s)}"
            assert_close(params[i], ref_params[i], kernel_key(fast), f"{what} param")
            assert set(states[i]) == set(ref_states[i]), what
            for k, v in ref_states[i].items():
                scale = state_scale(k, grad_max[i], physical_shape(s))
                assert_close(states[i][k], v, kernel_key(fast), f"{what} state {k!r}", scale)
            assert torch.isfinite(torch.cat([v.reshape(-1).double() for v in states[i].values()])).all(), what


# ---- the pass contract on simulated shards -----------------------------------------------------------------
def _split(t: torch.Tensor, axis: int) -> list[torch.Tensor]:
    return [c.contiguous() for c in torch.tensor_split(t, RANKS, dim=axis)]


def _local_states(state: dict, geom: ShardGeometry, layout: str) -> list[dict]:
    """Each rank's part of a whole tensor's state, placed as mulo.distributed.sharded places it."""
    k = geom.sharded_dim
    dims = physical_factored_dims(geom.shape, layout)
    out = [{} for _ in range(RANKS)]
    for key, value in state.items():
        if key in ("momentum", "full"):
            parts = _split(value, k + 1)
        elif key == "second_moment":
            parts = _split(value, k)
        elif key in ("row", "col") and k != (dims[1] if key == "row" else dims[0]):
            reduced = dims[1] if key == "row" else dims[0]
            parts = _split(value, 1 + (k - 1 if k > reduced else k))
        else:  # replicated: every rank holds (and must update identically) the whole tensor
            parts = [value.clone() for _ in range(RANKS)]
        for r in range(RANKS):
            out[r][key] = parts[r]
    return out


def _gather(parts: list[dict], state: dict, geom: ShardGeometry, layout: str) -> dict:
    """The inverse of :func:`_local_states`; replicated entries must agree on every rank."""
    k = geom.sharded_dim
    dims = physical_factored_dims(geom.shape, layout)
    whole = {}
    for key in state:
        if key in ("momentum", "full"):
            whole[key] = torch.cat([p[key] for p in parts], dim=k + 1)
        elif key == "second_moment":
            whole[key] = torch.cat([p[key] for p in parts], dim=k)
        elif key in ("row", "col") and k != (dims[1] if key == "row" else dims[0]):
            reduced = dims[1] if key == "row" else dims[0]
            whole[key] = torch.cat([p[key] for p in parts], dim=1 + (k - 1 if k > reduced else k))
        else:
            for r in range(1, RANKS):
                assert torch.equal(parts[r][key], parts[0][key]), f"replicated state {key!r} differs on rank {r}"
            whole[key] = parts[0][key]
    return whole


def _sharded_step(backend, params, grads, states, geoms, lrs, wds, weights, layout):
    """One step of each tensor's shards: pass A per rank, the split statistics summed over ranks, pass B, the
    sums of squares summed, pass C per rank — as mulo.distributed.sharded does with two all-reduces."""

    def local(r):  # rank r's (params, grads, states)
        return [p[r] for p in params], [g[r] for g in grads], [st[r] for st in states]

    stats = [backend.pass_a(*local(r), geoms, weights) for r in range(RANKS)]
    for i, geom in enumerate(geoms):
        for key in summed_stats(geom, layout):
            total = sum(stats[r][i][key] for r in range(RANKS))
            for r in range(RANKS):
                setattr(stats[r][i], key, total.clone())
    sumsq = [backend.pass_b(*local(r), stats[r], geoms, weights) for r in range(RANKS)]
    for i in range(len(params)):
        total = sum(sumsq[r][i] for r in range(RANKS))
        for r in range(RANKS):
            sumsq[r][i] = total.clone()
    for r in range(RANKS):
        backend.pass_c(*local(r), stats[r], sumsq[r], geoms, lrs, wds, weights)


@pytest.mark.parametrize("layout", ["torch", "jax"])
@pytest.mark.parametrize(
    "backend", [b for b in available_backends("cpu", torch.float32) if has_capability(b, "passes")]
)
def test_every_shard_gets_the_unsharded_update(backend, layout):
    impl = _fast_backend(backend)
    w32, w64 = _weights(layout)
    shapes = [s for s, _ in SHARD_CASES]
    geoms = [ShardGeometry(physical_shape(s), k) for s, k in SHARD_CASES]
    whole = [torch.randn(s) for s in shapes]
    ref_params = [p.double().clone() for p in whole]
    ref_states = [init_state(s, torch.float64, layout=layout) for s in shapes]
    params = [_split(p, k) for p, (_, k) in zip(whole, SHARD_CASES)]
    states = [_local_states(init_state(s, layout=layout), g, layout) for s, g in zip(shapes, geoms)]
    lrs = [0.6 / math.prod(s[1:]) if len(s) >= 2 and s[1:] and math.prod(s[1:]) else 0.6 for s in shapes]
    wds = [0.05 if i % 2 else 0.0 for i in range(len(shapes))]
    for t in range(3):
        grads = [hetero_grad(s, dtype=torch.float32) for s in shapes]
        if t == 1:  # a non-finite gradient in one rank's shard: every rank skips the whole tensor
            grads[0][-1, 0] = float("nan")
        _sharded_step(impl, params, [_split(g, k) for g, (_, k) in zip(grads, SHARD_CASES)], states, geoms, lrs,
                      wds, w32, layout)  # fmt: skip
        ReferenceBackend().step(ref_params, [g.double() for g in grads], ref_states, lrs, wds, w64)
        for i, (s, k) in enumerate(SHARD_CASES):
            what = f"{backend} {layout} step {t}: {shape_id(s)} split on {k}"
            got = torch.cat(params[i], dim=k)
            assert_close(got, ref_params[i], kernel_key(impl), f"{what} param")
            gathered = _gather(states[i], ref_states[i], geoms[i], layout)
            for key, value in ref_states[i].items():
                assert_close(gathered[key], value, kernel_key(impl), f"{what} state {key!r}",
                             torch.ones(()) if key == "momentum" else None)  # fmt: skip
    assert ref_states[0]["nonfinite_skips"].item() == 1
