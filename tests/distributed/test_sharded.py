"""MuLO across 2 gloo ranks on CPU: DTensor/FSDP2-sharded steps equal single-process steps on the whole
tensors (docs/ALGORITHM.md §5: the per-tensor statistics are all-reduced between the passes), and DDP / FSDP2
training equals single-process training on the same global batch.

All 2-rank work runs in ONE spawn (module fixture: process start-up dominates); each test compares one job.
"""

from __future__ import annotations

import copy
import os
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp

import mulo
from mulo.backends import available_backends, has_capability
from mulo.lopt.shapes import physical_factored_dims
from tests.helpers import hetero_grad, random_net, shape_id
from tests.tolerances import TRAJECTORY, assert_close, movement_error

WORLD = 2
TIMEOUT_S = 420
STEPS = 4
RESUME_AT = 1
# (shape, sharded physical dim or None for Replicate): where the split axis is d0, d1, neither; uneven
# shards (7 rows on 2 ranks), an empty shard ((1, 5): rank 1 holds 0 rows), 1-d, 0-d
TENSORS = [
    ((7, 3), 0),  # Shard(0) = d0, uneven 4/3
    ((3, 8), 0),  # Shard(0) = d1
    ((6, 5), 1),  # Shard(1) = d1 (tensor parallel style)
    ((3, 9), 1),  # Shard(1) = d0
    ((1, 5), 0),  # d1 split, rank 1 empty
    ((3, 6, 5), 0),  # split axis neither d0 nor d1
    ((2, 9, 4), 1),  # 3-d, split d0
    ((4, 3, 3, 2), 0),  # conv, split d0
    ((7,), 0),  # 1-d uneven
    ((1,), 0),  # 1-d, rank 1 empty
    ((), None),  # 0-d (fully_shard rejects scalars; a Replicate DTensor)
    ((5, 4), None),  # replicated 2-d
    ((4, 4), 0),  # the tie: Shard(0) is d1 in the torch layout, d0 in the jax layout
]
SEED = int(os.environ.get("MULO_TEST_SEED", torch.seed() % (2**31)))


VARIANTS = {
    "torch-f64": ("torch", torch.float64),
    "jax-f64": ("jax", torch.float64),
    "torch-f32": ("torch", torch.float32),
    "jax-f32": ("jax", torch.float32),
    "hsdp-f64": ("torch", torch.float64),  # mesh (1 replica group × 2 shards), placements (Replicate, Shard)
}


# Triton runs here in its interpreter (~0.1 s per program): one variant through 2 real ranks; both layouts of
# its pass contract on uneven/empty shards run in-process in tests/parity
INTERPRETED = {"triton": ("torch-f32",)}


def _cases() -> list[str]:
    """backend-variant for every backend available on CPU for the variant's dtype."""
    return [
        f"{b}-{v}"
        for v, (_, dt) in VARIANTS.items()
        for b in available_backends("cpu", dt)
        if v in INTERPRETED.get(b, (v,))
    ]


def _oracle_backend(backend: str) -> str:
    """The single-process run to compare with: the backend itself when it implements the passes, else the
    reference (whose passes mulo.distributed then runs for it)."""
    return backend if has_capability(backend, "passes") else "reference"


def _tensor_job(layout="torch", dtype=torch.float64, nonfinite="skip", bad=None, backend="reference"):
    g = torch.Generator().manual_seed(SEED)
    shapes = [s for s, _ in TENSORS]
    grads = [[hetero_grad(s, generator=g) * (1 + 0.2 * t) for s in shapes] for t in range(STEPS)]
    if bad is not None:  # a NaN inside rank 1's shard of tensor 0 at this step
        grads[bad][0][6, 1] = float("nan")
    n = len(shapes)
    return {
        "kind": "tensors",
        "backend": backend,
        "layout": layout,
        "net": random_net(generator=g).state_dict(),
        "params": [torch.randn(s, dtype=torch.float64, generator=g).to(dtype) for s in shapes],
        "grads": [[x.to(dtype) for x in gs] for gs in grads],
        "dims": [d for _, d in TENSORS],
        # μP-style groups: lr_scale 1/fan_in and weight decay on some tensors
        "groups": [(list(range(0, n, 2)), 1.0, 0.0), (list(range(1, n, 2)), 0.25, 0.05)],
        "lr": 0.8,
        "nonfinite": nonfinite,
        "resume_at": RESUME_AT,
    }


def _single(job, backend):
    """The same job on one process with whole tensors; snapshots after every step, mid-run state_dict."""
    from mulo.lopt.network import LOptConfig, LOptNet

    net = LOptNet(LOptConfig(layout=job["layout"]))
    net.load_state_dict(job["net"])
    params = [torch.nn.Parameter(p.clone()) for p in job["params"]]
    groups = [{"params": [params[i] for i in idx], "lr_scale": s, "weight_decay": wd} for idx, s, wd in job["groups"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = mulo.MuLO(groups, lr=job["lr"], meta_weights=net, backend=backend, nonfinite=job["nonfinite"])
    steps, raised, mid = [], [], None
    for t, grads in enumerate(job["grads"]):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        try:
            opt.step()
            raised.append(None)
        except FloatingPointError as e:
            raised.append(str(e))
        steps.append(
            {
                "params": [p.detach().clone() for p in params],
                "states": [{k: v.clone() for k, v in opt.state[p].items()} for p in params],
            }
        )
        if t == job["resume_at"]:
            mid = copy.deepcopy(opt.state_dict())
    return steps, raised, mid


def _jobs():
    jobs = {}
    for case in _cases():
        backend, variant = case.split("-", 1)
        layout, dtype = VARIANTS[variant]
        jobs[case] = _tensor_job(layout, dtype, backend=backend, bad=2 if variant == "torch-f64" else None)
        jobs[case]["mesh"] = "hsdp" if variant.startswith("hsdp") else "flat"
    jobs["reference-raise"] = _tensor_job(nonfinite="raise", bad=1)
    g = torch.Generator().manual_seed(SEED + 1)
    from mulo.mup.models import MuMLP

    dims = (5, 8, 2, 3)  # in, width, depth, out
    model = MuMLP(*dims, bias_std=1.0, generator=g).double()
    batches = [(torch.randn(8, 5, dtype=torch.float64, generator=g), torch.randint(0, 3, (8,), generator=g))]
    batches = batches * 1 + [
        (torch.randn(8, 5, dtype=torch.float64, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(2)
    ]
    net = random_net(generator=g).state_dict()
    for kind in ("ddp", "fsdp"):
        jobs[kind] = {
            "kind": kind,
            "dims": dims,
            "model": model.state_dict(),
            "batches": batches,
            "net": net,
            "layout": "torch",
        }
    return jobs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Spawn the 2 ranks once; every job's inputs go in, every job's whole-tensor results come out."""
    from tests.distributed import workers

    tmp = tmp_path_factory.mktemp("dist")
    jobs = _jobs()
    # single-process checkpoints to load into the sharded optimizer
    singles = {}
    for name, job in jobs.items():
        if job["kind"] == "tensors":
            singles[name] = _single(job, _oracle_backend(job["backend"]))
            job["whole_state_dict"] = singles[name][2]
    torch.save(jobs, tmp / "in.pt")
    ctx = mp.start_processes(
        workers.main,
        args=(WORLD, _free_port(), str(tmp / "in.pt"), str(tmp / "out.pt")),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    try:
        for _ in range(TIMEOUT_S):
            if ctx.join(timeout=1):
                break
        else:
            raise TimeoutError(f"2-rank gloo run did not finish in {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return jobs, singles, torch.load(tmp / "out.pt", weights_only=False)


def _result(runs, name):
    out = runs[2][name]
    assert "error" not in out, f"seed {SEED}: job {name} failed on a rank:\n{out.get('error')}"
    return out


def _key(dtype):
    return ("sharded", dtype)


def _compare_snapshot(got, want, dtype, what):
    for i, ((shape, dim), p, q) in enumerate(zip(TENSORS, got["params"], want["params"])):
        label = f"seed {SEED}: {what} tensor {i} {shape_id(shape)} split on {dim}"
        assert_close(p, q, _key(dtype), f"{label} param")
        assert set(got["states"][i]) == set(want["states"][i]), label
        for k, v in want["states"][i].items():
            assert_close(got["states"][i][k], v, _key(dtype), f"{label} state {k}")


@pytest.mark.parametrize("name", _cases())
def test_sharded_steps_equal_whole_tensor_steps(runs, name):
    """Params and every state tensor after each of 4 steps (incl. a NaN gradient on one rank's shard in
    the f64 run, which both ranks must skip) and after resuming from sharded and whole checkpoints."""
    variant = name.split("-", 1)[1]
    got, (steps, raised, _) = _result(runs, name), runs[1][name]
    dtype = runs[0][name]["params"][0].dtype
    assert got["raised"] == raised == [None] * STEPS
    assert got["all_reduces"] == [2] * STEPS, "one bucketed all_reduce per pass (A, B) for all tensors"
    backend = name.split("-", 1)[0]
    assert got["pass_backend"] == _oracle_backend(backend), f"the shards ran {got['pass_backend']}'s passes"
    if backend in ("cpu", "cuda"):  # the native kernels run on the shards, not the reference fallback
        assert got["pass_backend"] == backend
    for t in range(STEPS):
        _compare_snapshot(got["steps"][t], steps[t], dtype, f"{name} step {t}")
    _compare_snapshot(got["resumed"], steps[-1], dtype, f"{name} resumed from the sharded state_dict")
    _compare_snapshot(got["resumed_from_whole"], steps[-1], dtype, f"{name} resumed from a whole state_dict")
    if variant == "torch-f64":  # the NaN step was skipped by both ranks
        assert got["steps"][-1]["states"][0]["nonfinite_skips"].item() == 1


def test_nonfinite_raise_is_collective(runs):
    """nonfinite='raise': a NaN in rank 1's shard makes every rank raise, naming the parameter, before
    anything changes."""
    got, (steps, raised, _) = _result(runs, "reference-raise"), runs[1]["reference-raise"]
    assert raised[1] is not None and got["raised"][1] is not None
    assert "param_groups[0]['params'][0]" in got["raised"][1]
    assert got["all_reduces"][1] == 1, "raises after pass A's all_reduce, before pass B"
    _compare_snapshot(got["steps"][1], steps[1], torch.float64, "raise policy, after the raising step")
    _compare_snapshot(got["steps"][1], steps[0], torch.float64, "raise policy, unchanged by the raising step")


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_training_equals_single_process_on_the_global_batch(runs, kind):
    """A μP MLP (param_groups, weight decay), each rank holding half of every batch, DDP or FSDP2, equals one
    process on the whole batch."""
    from mulo.lopt.network import LOptNet
    from mulo.mup import param_groups
    from mulo.mup.models import MuMLP

    job, got = runs[0][kind], _result(runs, kind)
    model = MuMLP(*job["dims"], bias_std=1.0).double()
    model.load_state_dict(job["model"])
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    net = LOptNet()
    net.load_state_dict(job["net"])
    opt = mulo.MuLO(param_groups(model, model.roles(), weight_decay=0.01), meta_weights=net, backend="reference")
    for x, y in job["batches"]:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for name, p in model.named_parameters():
        err = movement_error(got[name], p, start[name])
        assert err < TRAJECTORY[torch.float64], f"seed {SEED}: {kind} {name}: movement-relative error {err:.3g}"


def test_communication_formula():
    """summed_elements: 29 floats + the vector that spans the split axis (+3 for the row mean)."""
    from mulo.distributed import ShardGeometry, summed_elements

    assert summed_elements(ShardGeometry((7, 3), 0), "torch") == 29 + 3  # row_sum over d0: 3 columns
    assert summed_elements(ShardGeometry((3, 8), 0), "torch") == 29 + 8 + 3  # col_sum + row_acc_sum
    assert summed_elements(ShardGeometry((4, 4), 0), "torch") == 29 + 4 + 3  # the tie: d0 is axis 1
    assert summed_elements(ShardGeometry((4, 4), 0), "jax") == 29 + 4  # jax: physical axis 0 is math d0
    assert summed_elements(ShardGeometry((3, 6, 5), 0), "torch") == 29  # both accumulators sharded
    assert summed_elements(ShardGeometry((7,), 0), "torch") == 29
    assert summed_elements(ShardGeometry((5, 4), None), "torch") == 0
    assert physical_factored_dims((3, 8)) == (0, 1)
