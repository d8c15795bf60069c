"""Code the 2-rank distributed tests run in each spawned process (gloo, CPU).

The parent test writes the inputs (initial parameters, gradients, meta-weights) to a file; every rank
loads them, runs the distributed setup, gathers the results to whole tensors, and rank 0 writes them
back. The comparison with single-process MuLO happens in the parent, with tests/tolerances.py.
"""

from __future__ import annotations

import copy
import datetime
import os
import traceback
import warnings

import torch
import torch.distributed as dist

import mulo
from mulo.lopt.network import LOptConfig, LOptNet


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")


def _full(t):
    from torch.distributed.tensor import DTensor

    return t.full_tensor().detach().clone() if isinstance(t, DTensor) else t.detach().clone()


def _net(case) -> LOptNet:
    net = LOptNet(LOptConfig(layout=case["layout"]))
    net.load_state_dict(case["net"])
    return net


def _snapshot(params, opt) -> dict:
    return {
        "params": [_full(p) for p in params],
        "states": [{k: _full(v) for k, v in opt.state[p].items()} for p in params],
    }


def _sharded(case, mesh, backend):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    def place(t, dim):
        split = Replicate() if dim is None else Shard(dim)
        # HSDP-style 2-d mesh (replicas × shards): replicated over the first mesh dim, split over the second
        placements = [Replicate(), split] if mesh.ndim == 2 else [split]
        return distribute_tensor(t.clone(), mesh, placements)

    params = [torch.nn.Parameter(place(p, d)) for p, d in zip(case["params"], case["dims"])]
    groups = [
        {"params": [params[i] for i in idx], "lr_scale": scale, "weight_decay": wd} for idx, scale, wd in case["groups"]
    ]
    opt = mulo.MuLO(groups, lr=case["lr"], meta_weights=_net(case), backend=backend, nonfinite=case["nonfinite"])
    return params, opt, place


def run_tensors(case, mesh, backend) -> dict:
    """MuLO on DTensor parameters (Shard(k) or Replicate per tensor); whole tensors after every step;
    and a run resumed from the mid-run state_dict (sharded → sharded, and whole → sharded)."""
    params, opt, place = _sharded(case, mesh, backend)
    from mulo.distributed.sharded import _pass_backend

    local = params[0].to_local()
    # the backend whose passes run the shards: the requested one's own kernels, unless it lacks the contract
    out = {
        "steps": [],
        "raised": [],
        "all_reduces": [],
        "pass_backend": _pass_backend(opt, local.device, local.dtype).name,
    }
    mid = None
    all_reduce = dist.all_reduce
    for t, grads in enumerate(case["grads"]):
        for p, g, d in zip(params, grads, case["dims"]):
            p.grad = place(g, d)
        calls = []
        dist.all_reduce = lambda *a, calls=calls, **k: (calls.append(1), all_reduce(*a, **k))[1]
        try:
            opt.step()
            out["raised"].append(None)
        except FloatingPointError as e:
            out["raised"].append(str(e))
        finally:
            dist.all_reduce = all_reduce
        out["all_reduces"].append(len(calls))
        out["steps"].append(_snapshot(params, opt))
        if t == case["resume_at"]:
            mid = (copy.deepcopy(opt.state_dict()), [_full(p) for p in params])
    # resume: a fresh optimizer over fresh parameters, loaded from the sharded mid-run checkpoint, and
    # one loaded from the single-process checkpoint the parent saved at the same step
    for key, sd in (("resumed", mid[0]), ("resumed_from_whole", case.get("whole_state_dict"))):
        if sd is None:
            continue
        case2 = dict(case, params=mid[1])
        params2, opt2, _ = _sharded(case2, mesh, backend)
        opt2.load_state_dict(sd)
        for grads in case["grads"][case["resume_at"] + 1 :]:
            for p, g, d in zip(params2, grads, case["dims"]):
                p.grad = place(g, d)
            opt2.step()
        out[key] = _snapshot(params2, opt2)
    return out


def run_model(case, mesh, wrap: str) -> dict:
    """A μP MLP trained on the global batch with each rank holding half of it, under FSDP2 or DDP."""
    from mulo.mup import param_groups
    from mulo.mup.models import MuMLP

    model = MuMLP(*case["dims"], bias_std=1.0).double()
    model.load_state_dict(case["model"])
    groups = param_groups(model, model.roles(), weight_decay=0.01)
    if wrap == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        groups = param_groups(model, model.roles(), weight_decay=0.01)  # the DTensor parameters
        run = model
    else:
        run = torch.nn.parallel.DistributedDataParallel(model)
    opt = mulo.MuLO(groups, meta_weights=_net(case), backend="reference")
    rank, world = dist.get_rank(), dist.get_world_size()
    for x, y in case["batches"]:
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(run(xs), ys).backward()
        opt.step()
    return {name: _full(p) for name, p in model.named_parameters()}


def main(rank: int, world: int, port: int, in_path: str, out_path: str) -> None:
    _init(rank, world, port)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    hsdp_mesh = init_device_mesh("cpu", (1, world), mesh_dim_names=("replicate", "shard"))
    jobs = torch.load(in_path, weights_only=False)
    results = {}
    for name, job in jobs.items():
        try:
            if job["kind"] == "tensors":
                hsdp = job.get("mesh") == "hsdp"
                results[name] = run_tensors(job, hsdp_mesh if hsdp else mesh, job["backend"])
            else:
                results[name] = run_model(job, mesh, job["kind"])
        except Exception:  # reported by the parent test of this job, the others still run
            results[name] = {"error": traceback.format_exc()}
    if rank == 0:
        torch.save(results, out_path)
    dist.barrier()
    dist.destroy_process_group()
