"""``mulo meta-train`` on several processes:

    torchrun --nproc_per_node=N -m mulo.distributed.meta_train --preset small --out runs/small [options]

Same options as ``mulo meta-train`` (:mod:`mulo.meta.cli`); the estimators are split over the ranks by
:class:`mulo.distributed.pes.DistributedMetaTrainer` (NCCL and one GPU per rank with ``--device cuda``,
gloo on CPU). The output directory has the one-process layout, so either command resumes it.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist


def main(argv: list[str] | None = None) -> int:
    from mulo.distributed.pes import DistributedMetaTrainer
    from mulo.meta.cli import add_parser, config_from_args
    from mulo.meta.trainer import CheckpointError

    parser = argparse.ArgumentParser(prog="torchrun ... -m mulo.distributed.meta_train")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["meta-train", *(sys.argv[1:] if argv is None else argv)])
    if args.threads < 1:
        parser.error(f"--threads must be ≥ 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    owns_group = not dist.is_initialized()  # torchrun: we set it up; a caller that did keeps it
    if owns_group:
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    try:
        config = config_from_args(args)
        trainer = DistributedMetaTrainer(
            config,
            args.out,
            device=device,
            init_weights=args.init_weights,
            progress=not args.no_progress,
            inner_backend=args.inner_backend,
        )
        weights = trainer.run()
    except (ValueError, CheckpointError, OSError, ImportError) as e:
        print(f"mulo meta-train (rank {dist.get_rank()}): error: {e}", file=sys.stderr)
        if owns_group:
            dist.destroy_process_group()
        return 2
    if dist.get_rank() == 0:
        print(f"meta-weights: {weights}  (MuLO(meta_weights={str(weights)!r}))")
    dist.barrier()
    if owns_group:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
