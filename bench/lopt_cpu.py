"""One question: how many ns per parameter element does the ``cpu`` backend's μLO step cost on this CPU,
pass by pass (A reduce, B sums of squares, C apply), next to the reference backend and torch's AdamW?

    python -m bench.lopt_cpu [--threads 2] [--set mlp3m] [--isa avx512|avx2|base] [--repeats 7]

Appends one JSON line per measurement to bench/results/lopt_cpu.jsonl with provenance. Wall time is the
median over repeats after a warm-up; ``cpu_ns_per_elem`` (process CPU time / elements / threads) and the
load average are recorded too, because on a shared machine wall time includes other people's work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from bench.common import provenance
from mulo.backends import native
from mulo.lopt.shapes import accumulator_shapes, math_shape, physical_shape

RESULTS = Path(__file__).parent / "results" / "lopt_cpu.jsonl"
SETS = {
    # 3 hidden 1024×1024 layers + biases: 3,148,800 elements (the 3.1M-element set)
    "mlp3m": [(1024, 1024), (1024,)] * 3 + [(1024, 64), (1024,)],
    # conv-shaped weights (C > 1 trailing axes) and odd sizes
    "conv": [(256, 128, 3, 3), (256,), (128, 64, 3, 3), (128,), (10, 4097)],
}


def new_state(p: torch.Tensor) -> dict[str, torch.Tensor]:
    st = {
        "step": torch.zeros(()),
        "momentum": torch.zeros((3, *physical_shape(p.shape))),
        "second_moment": torch.zeros(physical_shape(p.shape)),
        "nonfinite_skips": torch.zeros(()),
    }
    for k, s in accumulator_shapes(math_shape(p.shape)).items():
        st[k] = torch.zeros(s)
    return st


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median wall seconds, median process CPU seconds) after one warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", default="mlp3m", choices=sorted(SETS))
    ap.add_argument("--isa", default=None, help="force avx512, avx2 or base (default: best for this CPU)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--baselines", action="store_true", help="also time the reference backend and fused AdamW")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    C = native.load_extension()
    if args.isa:
        C.set_cpu_isa(args.isa)
    from tests.helpers import random_net

    weights = random_net().meta_weights("cpu", torch.float32)
    shapes = SETS[args.set]
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    states = [new_state(p) for p in params]
    n = sum(p.numel() for p in params)
    lrs, wds = [1e-3] * len(params), [0.0] * len(params)
    dims = native.dims_of(params, "torch")
    out: dict[str, object] = {}

    def a():
        out["a"] = native.reduce(grads, dims)

    def b():
        out["b"] = native.sumsq(params, grads, states, *out["a"], dims, weights)

    def c():
        sums, finite = out["a"]
        native.apply(params, grads, states, sums, out["b"], finite, lrs, wds, dims, weights)

    def step():
        native.CpuBackend().step(params, grads, states, lrs, wds, weights)

    rows = []
    base = {
        "question": "ns per element of the cpu backend's μLO step",
        "set": args.set,
        "shapes": [list(s) for s in shapes],
        "numel": n,
        "dtype": "float32",
        "threads": args.threads,
        "isa": C.cpu_isa(),
        **provenance(torch.device("cpu")),
    }
    a()
    b()
    for name, fn in (("pass_a", a), ("pass_b", b), ("pass_c", c), ("step", step)):
        load = os.getloadavg()[0]
        wall, cpu = timed(fn, args.repeats)
        rows.append(
            {
                **base,
                "what": f"cpu.{name}",
                "ns_per_elem": wall * 1e9 / n,
                "cpu_ns_per_elem": cpu * 1e9 / n / args.threads,
                "loadavg_1min": load,
            }
        )
    if args.baselines:
        from mulo.backends.reference import ReferenceBackend

        ref_params = [p.clone() for p in params]
        ref_states = [new_state(p) for p in params]
        adam_params = [torch.nn.Parameter(p.clone()) for p in params]
        for p, g in zip(adam_params, grads):
            p.grad = g.clone()
        adam = torch.optim.AdamW(adam_params, lr=1e-3, fused=True)
        baselines = (
            ("reference.step", lambda: ReferenceBackend().step(ref_params, grads, ref_states, lrs, wds, weights)),
            ("adamw_fused.step", adam.step),
        )
        for name, fn in baselines:
            load = os.getloadavg()[0]
            wall, cpu = timed(fn, max(3, args.repeats // 2))
            rows.append(
                {
                    **base,
                    "what": name,
                    "ns_per_elem": wall * 1e9 / n,
                    "cpu_ns_per_elem": cpu * 1e9 / n / args.threads,
                    "loadavg_1min": load,
                }
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    for r in rows:
        print(
            f"{r['what']:>18}: {r['ns_per_elem']:7.2f} ns/elem wall, {r['cpu_ns_per_elem']:7.2f} CPU-ns/elem/thread "
            f"(load {r['loadavg_1min']:.1f}, {r['isa']}, {args.threads} threads, n={n})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
