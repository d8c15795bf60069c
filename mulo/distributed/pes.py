"""Meta-training across ranks: the estimators of :class:`mulo.meta.trainer.MetaTrainer` split over
``torch.distributed`` ranks (docs/ALGORITHM.md §7, step 4).

The trainer has one gradient estimator per task family (μLO_M: widths 128, 512, 1024), each with its own
particles, its own RNG stream and its own persistent state. :class:`DistributedMetaTrainer` deals them
round-robin to the ranks (estimator ``i`` runs on rank ``i % world``); every rank runs its own estimates,
one ``all_reduce`` of an (estimators × (θ + 1)) buffer — each row written by exactly one rank, zeros
elsewhere, so the sum is exact — gives every rank every ĝ and meta-loss, and every rank applies the same
outer update. θ is bit-for-bit the one-rank θ with the same seeds. Rank 0 writes the log, the
checkpoints (every estimator's state gathered from its rank) and the meta-weights, in the one-rank
format: a checkpoint resumes with any number of ranks, including one.

    torchrun --nproc_per_node=N -m mulo.distributed.meta_train --preset small --out runs/small

Ranks beyond the number of estimators idle; splitting one estimator's particles needs per-particle RNG
streams in the unroll (not there yet).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from mulo.meta.trainer import WEIGHTS_DIR, MetaTrainer


class DistributedMetaTrainer(MetaTrainer):
    """:class:`MetaTrainer` with its estimators split over the ranks of the default process group (which
    must be initialized; every rank constructs it with the same arguments)."""

    def __init__(self, *args, **kwargs):
        if not dist.is_initialized():
            raise RuntimeError(
                "DistributedMetaTrainer needs torch.distributed initialized (run under torchrun, or call "
                "torch.distributed.init_process_group first); use MetaTrainer on one process"
            )
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.rank != 0:
            kwargs["progress"] = False
        super().__init__(*args, **kwargs)
        self.owned = [i for i in range(len(self.estimators)) if i % self.world == self.rank]

    # ---- only rank 0 writes; checkpoints gather every estimator's state first ----------------------------
    def _trim_log(self, next_step: int) -> None:
        if self.rank == 0:
            super()._trim_log(next_step)
        dist.barrier()

    def _gather_estimators(self) -> None:
        """Every rank gets the current state and RNG state of every estimator from the rank that runs it."""
        mine = {
            i: (_to_cpu(self.states[i]), self.generators[i].get_state()) for i in range(len(self.estimators))
            if i in self.owned
        }  # fmt: skip
        everyone: list = [None] * self.world
        dist.all_gather_object(everyone, mine)
        for part in everyone:
            for i, (state, gen_state) in part.items():
                if i not in self.owned:
                    self.states[i] = state
                    self.generators[i].set_state(gen_state)

    def _checkpoint(self) -> None:
        self._gather_estimators()
        if self.rank == 0:
            super()._checkpoint()
        dist.barrier()  # the files exist for every rank before anyone goes on

    def run(self, *, on_step=None):
        if self.rank == 0:
            return super().run(on_step=on_step)
        cfg = self.config
        while self.next_step < cfg.outer_steps:  # the same collectives as rank 0's loop, without the files
            record = self.outer_step()
            if self.next_step % cfg.checkpoint_every == 0 or self.next_step == cfg.outer_steps:
                self._checkpoint()
            if on_step is not None:
                on_step(record)
        if not (self.out / WEIGHTS_DIR).exists():
            self._checkpoint()
        return self.out / WEIGHTS_DIR

    # ---- the outer step --------------------------------------------------------------------------------
    def outer_step(self) -> dict:
        """One outer iteration (as :meth:`MetaTrainer.outer_step`, estimators run where they live)."""
        t0 = time.perf_counter()
        theta = self.theta.detach()
        n_est, size = len(self.estimators), theta.numel()
        grads = torch.zeros(n_est, size, dtype=theta.dtype, device=theta.device)
        losses = torch.zeros(n_est, dtype=torch.float64, device=theta.device)
        for i in self.owned:
            out = self.estimators[i].estimate(theta, self.states[i], self.generators[i])
            grads[i] = torch.nan_to_num(out.grad, nan=0.0, posinf=0.0, neginf=0.0)
            losses[i] = out.meta_loss
        dist.all_reduce(grads)  # one row per estimator, written by one rank: the sum is exact
        dist.all_reduce(losses)
        record = self._update_theta(grads.mean(0), losses.tolist(), t0)
        record["world_size"] = self.world
        return record


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
