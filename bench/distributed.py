"""What does exact FSDP2 sharding cost MuLO in communication, per step?

    python bench/distributed.py                       # 2 gloo ranks on CPU, model-shaped sets
    python bench/distributed.py --world 2 --sets gpt2-124m,llama-1b --step-sets gpt2-tiny,synthetic-1048576

MuLO's per-tensor statistics (docs/ALGORITHM.md §5) are summed over the shard group: after pass A the
non-finite count and the Adafactor vector that spans the split axis (+3 row-mean sums when the split axis
is d1), after pass B the 28 channel sums of squares — ``mulo.distributed.summed_elements`` floats per
tensor, bucketed into one ``all_reduce`` per pass. For every set (parameters as FSDP2 shards them,
Shard(0)) a row records those bytes, FSDP2's own per-step traffic for comparison (all-gather of the
parameters + reduce-scatter of the gradients, fp32), and the measured time of the two bucketed all_reduces
(and, for contrast, of one all_reduce per statistic per tensor). For ``--step-sets`` it also times a whole
sharded MuLO step (reference backend) and the part of it spent in all_reduce. Rows are APPENDED as JSON
lines to bench/results/distributed.jsonl with provenance.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench import common

OUT = common.RESULTS_DIR / "distributed.jsonl"


def geometries(pset, world: int):
    """ShardGeometry of each tensor as fully_shard places it (Shard(0); a dim of size < world still splits)."""
    from mulo.distributed import ShardGeometry

    return [ShardGeometry(tuple(s.shape) if s.shape else (1,), 0 if s.shape else None) for s in pset.specs]


def traffic(pset, world: int, layout: str = "torch", itemsize: int = 4) -> dict:
    from mulo.distributed import summed_elements, summed_stats
    from mulo.lopt.shapes import physical_factored_dims

    geoms = geometries(pset, world)
    pass_b = 28 * sum(g.sharded_dim is not None for g in geoms)
    total = sum(summed_elements(g, layout) for g in geoms)
    per_tensor = []
    for spec, g in zip(pset.specs, geoms):
        dims = physical_factored_dims(g.shape, layout)
        per_tensor.append(
            {
                "shape": list(spec.shape),
                "floats": summed_elements(g, layout),
                "summed": list(summed_stats(g, layout)),
                "split_axis_is": None
                if dims is None
                else ("d0" if g.sharded_dim == dims[1] else "d1" if g.sharded_dim == dims[0] else "other"),
            }
        )
    n = pset.numel
    fsdp = 2 * n * itemsize * (world - 1) / world  # bytes each rank receives: all-gather p + reduce-scatter g
    return {
        "tensors": len(geoms),
        "numel": n,
        "pass_a_floats": total - pass_b,
        "pass_b_floats": pass_b,
        "bytes_per_step": total * itemsize,
        "fsdp_bytes_per_step_per_rank": fsdp,
        "ratio_to_fsdp_traffic": total * itemsize / fsdp,
        "collectives_per_step": 2,
        "per_tensor": per_tensor,
    }


def _time(fn, iters: int) -> list[float]:
    fn()
    out = []
    for _ in range(iters):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _worker(rank: int, world: int, port: int, args, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    warnings.simplefilter("ignore")
    rows = []
    for name in args.sets:
        pset = common.param_set(name)
        row = {"set": name, "world": world, **traffic(pset, world)}
        a = torch.zeros(row["pass_a_floats"])
        b = torch.zeros(row["pass_b_floats"])
        row["bucketed_all_reduce"] = common.summarize(
            _time(lambda a=a, b=b: (dist.all_reduce(a), dist.all_reduce(b)), args.iters)
        )
        pieces = [torch.zeros(t["floats"] - 28) for t in row["per_tensor"]] + [torch.zeros(28)] * row["tensors"]
        row["per_tensor_all_reduce"] = common.summarize(
            _time(lambda ps=pieces: [dist.all_reduce(x) for x in ps], max(3, args.iters // 4))
        )
        rows.append(row)
    for name in args.step_sets:
        rows.append(_step_row(name, world, args.iters))
    if rank == 0:
        queue.put(rows)
    dist.barrier()
    dist.destroy_process_group()


def _step_row(name: str, world: int, iters: int) -> dict:
    """A whole sharded MuLO step (reference backend) on DTensor shards, and the time inside all_reduce."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import mulo

    pset = common.param_set(name)
    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(0)
    params, grads = [], []
    for s in pset.specs:
        place = [Shard(0)] if s.shape else [Replicate()]
        params.append(torch.nn.Parameter(distribute_tensor(torch.randn(s.shape, generator=g), mesh, place)))
        grads.append(distribute_tensor(torch.randn(s.shape, generator=g), mesh, place))
    with warnings.catch_warnings():  # bare tensors on purpose: only the collectives are measured here
        warnings.simplefilter("ignore", mulo.MuPWarning)
        opt = mulo.MuLO(params, backend="reference")
    for p, gr in zip(params, grads):
        p.grad = gr
    spent = []
    inner = dist.all_reduce

    def timed_all_reduce(*a, **k):
        t0 = time.perf_counter()
        out = inner(*a, **k)
        spent[-1] += time.perf_counter() - t0
        return out

    def step():
        spent.append(0.0)
        opt.step()

    dist.all_reduce = timed_all_reduce
    try:
        times = _time(step, iters)
    finally:
        dist.all_reduce = inner
    comm = [s * 1e3 for s in spent[-iters:]]
    return {
        "set": name,
        "world": world,
        "backend": "reference",
        "numel": pset.numel,
        "sharded_step": common.summarize(times),
        "all_reduce_in_step": common.summarize(comm),
        "comm_fraction_of_step": common.summarize(comm)["median_ms"] / common.summarize(times)["median_ms"],
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--sets", default="gpt2-tiny,gpt2-124m,vit-b16,llama-1b")
    ap.add_argument("--step-sets", default="gpt2-tiny,synthetic-1048576")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    args.sets = [s for s in args.sets.split(",") if s]
    args.step_sets = [s for s in args.step_sets.split(",") if s]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_worker, args=(args.world, port, args, queue), nprocs=args.world, start_method="spawn")
    rows = queue.get()
    prov = common.provenance(torch.device("cpu"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for row in rows:
            row = {"schema": "mulo.bench.distributed/1", "backend_comm": "gloo", **row, **prov}
            f.write(json.dumps(row) + "\n")
            brief = {k: v for k, v in row.items() if k != "per_tensor" and not isinstance(v, dict)}
            for k in ("bucketed_all_reduce", "per_tensor_all_reduce", "sharded_step", "all_reduce_in_step"):
                if k in row:
                    brief[k + "_median_ms"] = round(row[k]["median_ms"], 3)
            print(json.dumps({k: brief[k] for k in brief if k not in prov}))


if __name__ == "__main__":
    main()
