"""Meta-training μLO (docs/ALGORITHM.md §7–8), in small interfaces as learned_optimization has them.

- :mod:`mulo.meta.tasks` — ``Task`` (init / loss / batches) and ``TaskFamily`` (sample); μP and SP image MLPs
  on an image set or a non-memorizable source with a held-out split (:mod:`mulo.data.procedural`).
- :mod:`mulo.meta.inner` — how inner runs train: lr schedules over each run's length, decoupled weight decay,
  the "reparam global" task augmentation (all off by default).
- :mod:`mulo.meta.truncation` — log-uniform inner lengths, random initial offsets.
- :mod:`mulo.meta.unroll` — truncated unrolls of a population of ± perturbed inner problems.
- :mod:`mulo.meta.estimators` — ``GradientEstimator``: ``PES`` and ``ES``.
- :mod:`mulo.meta.trainer` — estimators → averaged meta-gradient → AdamW + update clipping, checkpoints.
- :mod:`mulo.meta.presets` — ``tiny``, ``small``, ``mulo_cpu``, ``mulo_nm``, ``mulo_m``.

The inner steps run under ``torch.no_grad``: the meta-gradient reaches θ only through the estimator.
"""

from mulo.meta.estimators import ES, PES, EstimatorOutput, GradientEstimator
from mulo.meta.presets import PRESETS, MetaTrainConfig, preset
from mulo.meta.tasks import ImageMLPFamily, ImageMLPSpec, ImageMLPTask, Task, TaskFamily
from mulo.meta.trainer import CheckpointError, MetaTrainer, evaluate, meta_train
from mulo.meta.truncation import LogUniformTruncation
from mulo.meta.unroll import PopulationUnroll, QuadraticUnroll, TruncatedStep, UnrollOutput

__all__ = [
    "ES",
    "PES",
    "PRESETS",
    "CheckpointError",
    "EstimatorOutput",
    "GradientEstimator",
    "ImageMLPFamily",
    "ImageMLPSpec",
    "ImageMLPTask",
    "LogUniformTruncation",
    "MetaTrainConfig",
    "MetaTrainer",
    "PopulationUnroll",
    "QuadraticUnroll",
    "Task",
    "TaskFamily",
    "TruncatedStep",
    "UnrollOutput",
    "evaluate",
    "meta_train",
    "preset",
]
