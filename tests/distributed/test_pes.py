"""Meta-training on 2 gloo ranks (estimators split over ranks, ĝ all-reduced) equals 1-rank meta-training
with the same seeds bit for bit, and resumes — on 2 ranks, and on 1 rank from a 2-rank checkpoint."""

from __future__ import annotations

import dataclasses
import json

import torch
import torch.multiprocessing as mp

from mulo.meta.presets import preset
from mulo.meta.trainer import LOG, MetaTrainer
from tests.distributed.test_sharded import TIMEOUT_S, _free_port

# two task families (two estimators, one per rank), short windows
SHORT = dict(num_pairs=2, unroll_length=2, outer_steps=3, checkpoint_every=2)


def _config():
    cfg = preset("tiny", **SHORT)
    fam = cfg.families[0]
    return cfg.replace(families=(fam, dataclasses.replace(fam, width=16)))


def _log(path):
    return [json.loads(line) for line in (path / LOG).read_text().splitlines()]


def test_two_rank_meta_training_equals_one_rank_and_resumes(tmp_path):
    from tests.distributed import pes_worker

    cfg = _config()
    ctx = mp.start_processes(
        pes_worker.main, args=(2, _free_port(), cfg.to_json(), str(tmp_path)), nprocs=2, join=False,
        start_method="spawn",
    )  # fmt: skip
    try:
        for _ in range(TIMEOUT_S):
            if ctx.join(timeout=1):
                break
        else:
            raise TimeoutError(f"2-rank meta-training did not finish in {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    one = MetaTrainer(cfg, tmp_path / "one", progress=False)
    one.run()
    resumed_on_one = MetaTrainer(cfg, tmp_path / "killed_for_one_rank", progress=False)
    assert resumed_on_one.next_step == 2
    resumed_on_one.run()
    expected = one.theta.detach()
    for name in ("straight", "killed", "killed_for_one_rank"):
        ckpt = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
        assert ckpt["next_step"] == 3, name
        assert torch.equal(ckpt["theta"], expected), f"{name}: θ differs from the 1-rank run"
        log = _log(tmp_path / name)
        assert [r["outer_step"] for r in log] == [0, 1, 2], name
        assert [r["meta_loss"] for r in log] == [r["meta_loss"] for r in _log(tmp_path / "one")], name
    # `torchrun -m mulo meta-train --preset tiny ...` on 2 ranks == `mulo meta-train --preset tiny ...` on one
    one_cli = MetaTrainer(preset("tiny", outer_steps=2, num_pairs=2), tmp_path / "cli_one", progress=False)
    one_cli.run()
    two_cli = torch.load(tmp_path / "cli" / "checkpoint.pt", weights_only=True)["theta"]
    assert torch.equal(two_cli, one_cli.theta.detach()), "torchrun entry point: θ differs from one process"
