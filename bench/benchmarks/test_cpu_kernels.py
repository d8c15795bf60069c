"""pytest-benchmark suite for the CPU step of every mulo backend that runs on CPU, beside torch's AdamW.

Not part of ``make test`` (``tests/`` is what the default run collects). Run it with::

    .venv/bin/python -m pytest bench/benchmarks --benchmark-json=bench/results/pytest_benchmark_cpu.json

Each round sees the next of several rotating gradient sets (set untimed, in pedantic mode); ``extra_info``
carries the element count, the bytes and FLOPs of docs/ALGORITHM.md §5's model and the provenance of
``bench.common.provenance`` (pytest-benchmark adds its own machine and commit info).
"""

import warnings

import pytest
import torch

from bench import common
from mulo.backends import available_backends

pytestmark = pytest.mark.benchmark

CPU = torch.device("cpu")
SETS = ["synthetic-65536", "synthetic-1048576", "gpt2-tiny"]
BACKENDS = available_backends(CPU, torch.float32, auto=True)


def _optimizer(name: str, setup: common.Setup) -> torch.optim.Optimizer:
    if name == "adamw_fused":
        return torch.optim.AdamW(setup.groups(1e-3, scale_lr=True), fused=True)
    if name == "adamw_foreach":
        return torch.optim.AdamW(setup.groups(1e-3, scale_lr=True), foreach=True)
    import mulo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mulo.MuLO(setup.groups(1.0), backend=name.removeprefix("mulo_"))


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("optimizer", ["adamw_fused", "adamw_foreach", *(f"mulo_{b}" for b in BACKENDS)])
def test_step(benchmark, optimizer, set_name):
    pset = common.param_set(set_name)
    setup = common.make_setup(pset, CPU, n_grad_sets=common.grad_sets_for(pset, 4, common.cache_bytes(CPU), None))
    opt = _optimizer(optimizer, setup)
    setup.use_grads(0)
    opt.step()  # allocates the state
    counter = iter(range(1, 1 << 30))
    slow = optimizer == "mulo_reference"
    kind = "adamw" if optimizer.startswith("adamw") else "mulo"
    benchmark.group = set_name
    benchmark.extra_info.update(
        set=set_name,
        n_elements=pset.numel,
        optimizer=kind,
        backend=optimizer.removeprefix("mulo_") if kind == "mulo" else "torch",
        **common.model_cost(pset, kind, 4, 4, 4),
        **common.provenance(CPU),
    )
    benchmark.pedantic(
        opt.step,
        setup=lambda: setup.use_grads(next(counter)),
        rounds=3 if slow else 20,
        warmup_rounds=0 if slow else 2,
    )
