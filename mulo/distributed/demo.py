"""MuLO under FSDP2 or DDP, launched by torchrun:

    torchrun --nproc_per_node=2 -m mulo.distributed.demo --wrap fsdp --steps 100

Trains a μP MLP on the offline digits; every rank takes its slice of each global batch. NCCL on CUDA
(one GPU per rank), gloo on CPU. With ``--wrap fsdp`` the parameters are DTensor shards and MuLO steps
them exactly as it would the whole tensors (two bucketed all_reduces of statistics per step); with
``--wrap ddp`` every rank steps its full replica after DDP's gradient all_reduce.
"""

from __future__ import annotations

import argparse
import gc
import os
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F

import mulo
from mulo.data.offline import digits
from mulo.mup import param_groups
from mulo.mup.models import MuMLP


def main(argv: list[str] | None = None) -> list[float]:
    ap = argparse.ArgumentParser(description="MuLO with FSDP2 or DDP (run under torchrun)")
    ap.add_argument("--wrap", choices=("fsdp", "ddp"), default="fsdp")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--batch", type=int, default=128, help="global batch, split across ranks")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    losses = _train(args, device)
    # the model, its device mesh and the optimizer are gone with _train's frame: nothing that holds the process
    # group (or a pending collective) outlives it into interpreter shutdown, where gloo's worker threads could
    # be torn down mid-flight (seen once in CI: rank 1 aborted after training, "terminate called without an
    # active exception")
    gc.collect()
    dist.barrier()  # no rank tears the process group down while another still uses it
    dist.destroy_process_group()
    return losses


def _train(args, device: torch.device) -> list[float]:
    """The training loop of :func:`main` on an initialized process group; returns the mean loss per step."""
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = digits()
    x, y = x.to(device), y.to(device)
    model = MuMLP(x.shape[1], args.width, 3, 10, generator=torch.Generator().manual_seed(args.seed)).to(device)
    roles = model.roles()
    if args.wrap == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world,))
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        run = model
    else:
        run = torch.nn.parallel.DistributedDataParallel(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mulo.PlaceholderMetaWeightsWarning)
        opt = mulo.MuLO(param_groups(model, roles))
    data = torch.Generator().manual_seed(args.seed + 1)
    losses = []
    for step in range(args.steps):
        idx = torch.randint(0, x.shape[0], (args.batch,), generator=data).to(device).chunk(world)[rank]
        loss = F.cross_entropy(run(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(float(total) / world)
        if rank == 0 and (step % max(1, args.steps // 10) == 0 or step == args.steps - 1):
            print(f"{args.wrap} world {world} step {step:5d} loss {losses[-1]:.4f}", flush=True)
    return losses


if __name__ == "__main__":
    main()
