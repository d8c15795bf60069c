"""What each of the 2 spawned ranks runs for tests/distributed/test_pes.py."""

from __future__ import annotations

import datetime
import os
import warnings

import torch
import torch.distributed as dist


class Killed(Exception):
    pass


def main(rank: int, world: int, port: int, cfg_json: dict, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from mulo.distributed.pes import DistributedMetaTrainer
    from mulo.meta.presets import MetaTrainConfig

    cfg = MetaTrainConfig.from_json(cfg_json)
    DistributedMetaTrainer(cfg, f"{root}/straight", progress=False).run()

    def kill_after_2(record):
        if record["outer_step"] + 1 == 2:
            raise Killed

    try:  # every rank dies right after the checkpoint of step 2
        DistributedMetaTrainer(cfg, f"{root}/killed", progress=False).run(on_step=kill_after_2)
    except Killed:
        pass
    dist.barrier()
    if rank == 0:  # a copy of the 2-step checkpoint for the parent to resume on one rank
        import shutil

        shutil.copytree(f"{root}/killed", f"{root}/killed_for_one_rank")
    dist.barrier()
    resumed = DistributedMetaTrainer(cfg, f"{root}/killed", progress=False)
    assert resumed.next_step == 2, resumed.next_step
    resumed.run()
    # `torchrun -m mulo meta-train` (routed to mulo.distributed.meta_train), tiny preset: one family, rank 1 idles
    from mulo import cli as mulo_cli

    cli = ["--preset", "tiny", "--outer-steps", "2", "--num-pairs", "2", "--no-progress", "--out", f"{root}/cli"]
    assert mulo_cli.main(["meta-train", *cli]) == 0
    dist.barrier()
    dist.destroy_process_group()
