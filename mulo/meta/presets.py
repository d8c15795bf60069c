"""Meta-training configurations. ``mulo_m`` is the μLO_M recipe of ALGORITHM.md §7–8 (every default there);
``small`` and ``tiny`` shrink the tasks and the horizon (``tiny`` also raises the outer LR so that 30 steps learn).

| preset | tasks: μP MLP on                     | pairs | T  | L         | outer | outer LR (warmup) → final |
|--------|--------------------------------------|-------|----|-----------|-------|---------------------------|
| tiny   | digits, w 32, depth 2, batch 32      | 4     | 10 | 20..100   | 30    | 0.1 (2) → 0.03            |
| small  | digits, w 64/256, depth 3, batch 128 | 8     | 20 | 50..500   | 500   | 3e-3 (20) → 1e-3          |
| mulo_cpu | digits, w 16/32/64, depth 2, b 128 | 8   | 10 | 100..1000 | 2500  | 1e-2 (50) → 1e-3          |
| mulo_m | 32×32×3, w 128/512/1024, d 3, b 4096 | 8     | 50 | 100..1000 | 5000  | 3e-3 (100) → 1e-3 @ 4900  |

The paper meta-trains μLO_M on ImageNet 32×32; ``mulo_m`` defaults to the Hugging Face copy of CIFAR-10
(same input size) because it needs no special access — pass ``--dataset`` to change it. SP twins
(``--parameterization sp``) use step_mult 0.001, μLO uses 0.01 (ALGORITHM.md §8).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from mulo.meta.tasks import META_LOSSES, PARAMETERIZATIONS, ImageMLPSpec

STEP_MULTS = {"mup": 0.01, "sp": 0.001}


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    families: tuple[ImageMLPSpec, ...] = (ImageMLPSpec(),)
    estimator: str = "pes"
    num_pairs: int = 8
    unroll_length: int = 50
    min_length: int = 100
    max_length: int = 1000
    max_initial_offset: int = 50
    std: float = 0.01
    outer_steps: int = 5000
    lr_init: float = 3e-10
    lr_peak: float = 3e-3
    lr_final: float = 1e-3
    warmup_steps: int = 100
    decay_end: int = 4900
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-4
    clip_update_norm: float = 1.0
    checkpoint_every: int = 50
    seed: int = 0
    step_mult: float = 0.01
    #: the per-step loss PES differences: "normalized" (ALGORITHM.md §7) or "log" (its logarithm, which
    #: keeps the low-loss end of training in the objective; see :meth:`mulo.meta.tasks.Task.meta_loss`)
    meta_loss: str = "normalized"

    def __post_init__(self) -> None:
        if not self.families:
            raise ValueError("MetaTrainConfig.families needs at least one task family")
        if self.estimator not in ("pes", "es"):
            raise ValueError(f"estimator must be 'pes' or 'es', got {self.estimator!r}")
        if self.meta_loss not in META_LOSSES:
            raise ValueError(f"meta_loss must be one of {META_LOSSES}, got {self.meta_loss!r}")
        for f in self.families:
            if f.parameterization not in PARAMETERIZATIONS:
                raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {f.parameterization!r}")
        for name in ("num_pairs", "unroll_length", "outer_steps", "checkpoint_every", "min_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not self.decay_end >= self.warmup_steps >= 0:
            raise ValueError(f"need decay_end ≥ warmup_steps ≥ 0, got {self.decay_end}, {self.warmup_steps}")

    def lr(self, step: int) -> float:
        """Linear warmup lr_init → lr_peak over ``warmup_steps``, cosine to lr_final at ``decay_end``, flat after."""
        if step < self.warmup_steps:
            return self.lr_init + (self.lr_peak - self.lr_init) * step / self.warmup_steps
        if step < self.decay_end:
            frac = (step - self.warmup_steps) / (self.decay_end - self.warmup_steps)
            return self.lr_final + (self.lr_peak - self.lr_final) * 0.5 * (1 + math.cos(math.pi * frac))
        return self.lr_final

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # tuples of dataclasses become lists of dicts

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MetaTrainConfig:
        d = dict(d)
        d["families"] = tuple(ImageMLPSpec(**f) for f in d["families"])
        d["betas"] = tuple(d["betas"])
        return cls(**d)

    def replace(self, **changes) -> MetaTrainConfig:
        return dataclasses.replace(self, **changes)


def _mlps(dataset: str, widths, depth: int, batch: int) -> tuple[ImageMLPSpec, ...]:
    return tuple(ImageMLPSpec(dataset, w, depth, batch, "mup") for w in widths)


PRESETS: dict[str, MetaTrainConfig] = {
    "tiny": MetaTrainConfig(
        families=_mlps("digits", (32,), 2, 32),
        num_pairs=4,
        unroll_length=10,
        min_length=20,
        max_length=100,
        max_initial_offset=10,
        outer_steps=30,
        lr_peak=0.1,  # a 30-step horizon needs a far larger LR than the 5,000-step recipe
        lr_final=0.03,
        warmup_steps=2,
        decay_end=30,
        checkpoint_every=5,
    ),
    "small": MetaTrainConfig(
        families=_mlps("digits", (64, 256), 3, 128),
        unroll_length=20,
        min_length=50,
        max_length=500,
        max_initial_offset=20,
        outer_steps=500,
        warmup_steps=20,
        decay_end=480,
        checkpoint_every=25,
    ),
    # the recipe of the shipped weights (mulo/lopt/pretrained/mulo_cpu): three small μP widths on the offline
    # digits, the evaluation's base task shape (depth 2, batch 128), the paper's horizons (100..1000, offsets
    # ≤ 50) in 10-step truncations; sized for one CPU core per run (about an hour)
    "mulo_cpu": MetaTrainConfig(
        families=_mlps("digits", (16, 32, 64), 2, 128),
        num_pairs=8,
        unroll_length=10,
        min_length=100,
        max_length=1000,
        max_initial_offset=50,
        outer_steps=2500,
        lr_peak=1e-2,
        lr_final=1e-3,
        warmup_steps=50,
        decay_end=2500,
        checkpoint_every=25,
    ),
    "mulo_m": MetaTrainConfig(
        families=_mlps("hf:uoft-cs/cifar10", (128, 512, 1024), 3, 4096),
    ),
}


def preset(name: str, **overrides) -> MetaTrainConfig:
    """The named preset with ``overrides``; ``dataset``/``parameterization``/``label_noise`` apply to every family."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]
    fam_changes = {
        k: overrides.pop(k) for k in ("dataset", "parameterization", "label_noise") if overrides.get(k) is not None
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if fam_changes:
        cfg = cfg.replace(families=tuple(dataclasses.replace(f, **fam_changes) for f in cfg.families))
        if "parameterization" in fam_changes and "step_mult" not in overrides:
            overrides["step_mult"] = STEP_MULTS[fam_changes["parameterization"]]
    return cfg.replace(**overrides)


__all__ = ["PRESETS", "STEP_MULTS", "MetaTrainConfig", "preset"]
