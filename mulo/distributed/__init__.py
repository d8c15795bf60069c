"""μLO across processes with ``torch.distributed`` (no communication layer of its own).

- DDP: nothing to do. ``DistributedDataParallel`` all-reduces gradients before ``step()``, every rank
  holds the whole parameters and steps them identically.
- FSDP2 (``fully_shard``) and other DTensor parameters: :class:`mulo.MuLO` detects DTensor parameters and
  steps them with :func:`sharded_step` — the exact update of the unsharded tensor, at the price of two
  bucketed ``all_reduce`` calls per step (pass A statistics, then the 28 channel sums of squares).
  :mod:`mulo.backends.passes` (the pass contract) says what a backend exposes to take part.
- Meta-training: :class:`mulo.distributed.pes.DistributedMetaTrainer` splits the PES estimators over the
  ranks (``torchrun --nproc_per_node=N -m mulo.distributed.meta_train ...``), θ equal to one rank's.
"""

from __future__ import annotations

import sys

import torch

from mulo.backends.passes import ShardGeometry, summed_elements, summed_stats


def is_dtensor(t: torch.Tensor) -> bool:
    """``t`` is a ``torch.distributed.tensor.DTensor``. Free when DTensor was never imported (then no
    DTensor exists): importing it costs ~1 s, which a single-process ``step()`` must not pay."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


__all__ = ["ShardGeometry", "is_dtensor", "summed_elements", "summed_stats"]
