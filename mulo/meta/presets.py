"""Meta-training configurations. ``mulo_m`` is the μLO_M recipe of docs/ALGORITHM.md §7–8 (every default there);
``mulo_cpu`` is the recipe of the shipped weights; ``small`` and ``tiny`` shrink the tasks and the horizon
(``tiny`` also raises the outer LR so that 30 steps learn).

| preset | tasks: μP MLP on                     | pairs | T  | L         | outer | outer LR (warmup) → final |
|--------|--------------------------------------|-------|----|-----------|-------|---------------------------|
| tiny   | digits, w 32, depth 2, batch 32      | 4     | 10 | 20..100   | 30    | 0.1 (2) → 0.03            |
| small  | digits, w 64/256, depth 3, batch 128 | 8     | 20 | 50..500   | 500   | 3e-3 (20) → 1e-3          |
| mulo_cpu | digits, w 16/32/64, depth 2, b 128 | 8   | 10 | 100..1000 | 2500  | 1e-2 (50) → 1e-3          |
| mulo_nm | mnist1d w64, digits_aug w32, teacher w16; d 2, b 128 | 8 | 10 | 100..1000 | 30000 | 3e-3 (100) → 3e-4 |
| mulo_m | 32×32×3, w 128/512/1024, d 3, b 4096 | 8     | 50 | 100..1000 | 5000  | 3e-3 (100) → 1e-3 @ 4900  |

``mulo_nm`` meta-trains on non-memorizable data (:mod:`mulo.data.procedural`: fresh examples every batch, a
held-out split, a loss floor above zero) with the log meta-loss, and every inner run follows a cosine
learning-rate schedule to 0 over its sampled length after a 5% warmup (:mod:`mulo.meta.inner`); one CPU core
with ``--inner-backend cpu``, checkpoints every 100 outer steps (≈ 4 MB, every particle's state included).

The paper meta-trains μLO_M on ImageNet 32×32; ``mulo_m`` defaults to the Hugging Face copy of CIFAR-10
(same input size) because it needs no special access — pass ``--dataset`` to change it. SP twins
(``--parameterization sp``) use step_mult 0.001, μLO uses 0.01 (docs/ALGORITHM.md §8).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from mulo.meta.inner import REPARAM_GLOBAL_RANGE, InnerSchedule
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
    #: the per-step loss PES differences: "normalized" (docs/ALGORITHM.md §7) or "log" (its logarithm, which
    #: keeps the low-loss end of training in the objective; see :meth:`mulo.meta.tasks.Task.meta_loss`)
    meta_loss: str = "normalized"
    # ---- how inner runs are trained (mulo.meta.inner); the defaults are the plain μLO inner run, and
    # ---- to_json leaves these out while they hold their defaults (older checkpoints resume unchanged)
    #: learning-rate schedule of each inner run over its sampled length: constant, cosine or linear
    inner_schedule: str = "constant"
    #: linear warmup over this fraction of each inner run's length
    inner_warmup: float = 0.0
    #: the lr the decay ends at, as a fraction of the peak (cosine/linear)
    inner_lr_final: float = 0.0
    #: decoupled weight decay of the inner runs (MuLO's weight_decay: p ← p − wd·lr·p after the step)
    inner_weight_decay: float = 0.0
    #: reparameterize each task by a global scale s ~ log-uniform[1e-3, 1e3] (params w₀/s, loss at s·w)
    reparam_global: bool = False
    #: the meta-weights read the time features at min(t, time_clamp) (LOptConfig.time_clamp), in the inner
    #: runs and in every later use of the weights; None: no clamp (μLO's)
    time_clamp: float | None = None
    #: the update rule meta-trained (mulo.meta.rules): "mulo" (μLO, θ = an LOptNet) or "celo2" (θ = a Celo2Net)
    rule: str = "mulo"
    #: Celo2 only: the inner runs' learning rate (the RMS of a weight matrix's step), times each tensor's lr
    #: scale and the inner schedule (μLO's step size is step_mult)
    inner_lr: float = 1e-3
    #: Celo2 only: Newton–Schulz on the direction (Celo2); False meta-trains Celo2-base
    orthogonalize: bool = True
    #: μLO only: α of the nominal term (LOptConfig.nominal: a third output head scales an Adam-like descent
    #: direction, α·exp(n·exp_mult)·mean_k m_k/√(v + 1e-6), added to the learned step); None: μLO's update
    nominal: float | None = None

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
        self.inner_schedule_spec()  # names the option and the fix for a bad schedule
        if not (math.isfinite(self.inner_weight_decay) and self.inner_weight_decay >= 0.0):
            raise ValueError(
                f"inner_weight_decay (--inner-weight-decay) must be a finite number ≥ 0, got "
                f"{self.inner_weight_decay!r}; 0 turns it off"
            )
        if not isinstance(self.reparam_global, bool):
            raise ValueError(f"reparam_global (--reparam-global) must be True or False, got {self.reparam_global!r}")
        if self.rule not in ("mulo", "celo2"):
            raise ValueError(f"rule (--rule) must be 'mulo' or 'celo2', got {self.rule!r}")
        if not (math.isfinite(self.inner_lr) and self.inner_lr > 0.0):
            raise ValueError(f"inner_lr (--inner-lr) must be a finite number > 0, e.g. 1e-3, got {self.inner_lr!r}")
        if not isinstance(self.orthogonalize, bool):
            raise ValueError(f"orthogonalize (--orthogonalize) must be True or False, got {self.orthogonalize!r}")
        if self.time_clamp is not None and not (math.isfinite(self.time_clamp) and self.time_clamp >= 1):
            raise ValueError(
                f"time_clamp (--time-clamp) must be a step count ≥ 1, e.g. the longest inner horizon "
                f"{self.max_length}, got {self.time_clamp!r}"
            )
        if self.nominal is not None and not (math.isfinite(self.nominal) and self.nominal > 0):
            raise ValueError(f"nominal (--nominal) must be a number > 0 (e.g. 1e-3), got {self.nominal!r}")
        if self.nominal is not None and self.rule != "mulo":
            raise ValueError("nominal (--nominal) is an option of the μLO rule; Celo2 (--rule celo2) has none")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0.0):
            raise ValueError(
                f"weight_decay (--meta-weight-decay) must be a finite number ≥ 0, got {self.weight_decay!r}"
            )

    def inner_schedule_spec(self) -> InnerSchedule:
        """The inner runs' learning-rate schedule (:class:`mulo.meta.inner.InnerSchedule`)."""
        return InnerSchedule(self.inner_schedule, self.inner_warmup, self.inner_lr_final)

    def inner_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`mulo.meta.unroll.PopulationUnroll` for the inner runs."""
        return {
            "schedule": self.inner_schedule_spec(),
            "weight_decay": self.inner_weight_decay,
            "reparam": REPARAM_GLOBAL_RANGE if self.reparam_global else None,
        }

    def lr(self, step: int) -> float:
        """Linear warmup lr_init → lr_peak over ``warmup_steps``, cosine to lr_final at ``decay_end``, flat after."""
        if step < self.warmup_steps:
            return self.lr_init + (self.lr_peak - self.lr_init) * step / self.warmup_steps
        if step < self.decay_end:
            frac = (step - self.warmup_steps) / (self.decay_end - self.warmup_steps)
            return self.lr_final + (self.lr_peak - self.lr_final) * 0.5 * (1 + math.cos(math.pi * frac))
        return self.lr_final

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # tuples of dataclasses become lists of dicts
        for name in OMITTED_AT_DEFAULT:  # absent at their defaults: the JSON of older configs is unchanged
            if d[name] == _DEFAULTS[name]:
                del d[name]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MetaTrainConfig:
        d = dict(d)
        d["families"] = tuple(ImageMLPSpec(**f) for f in d["families"])
        d["betas"] = tuple(d["betas"])
        return cls(**d)

    def replace(self, **changes) -> MetaTrainConfig:
        return dataclasses.replace(self, **changes)


#: fields added after checkpoints were written; to_json omits them while they hold their defaults
OMITTED_AT_DEFAULT = (
    "inner_schedule", "inner_warmup", "inner_lr_final", "inner_weight_decay", "reparam_global", "time_clamp",
    "rule", "inner_lr", "orthogonalize", "nominal",
)  # fmt: skip
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(MetaTrainConfig)}


def family_labels(families: tuple[ImageMLPSpec, ...]) -> list[str]:
    """Short unique names of the families for logs: ``w{width}`` when all share one data set and the widths
    tell them apart (every older preset), else ``{dataset}_w{width}``, else the full family description."""
    one_dataset = len({f.dataset for f in families}) == 1
    for label in (
        lambda f: f"w{f.width}" if one_dataset else "",
        lambda f: f"{f.dataset}_w{f.width}",
        lambda f: f"{f.parameterization}_{f.dataset}_w{f.width}_d{f.depth}_b{f.batch_size}_noise{f.label_noise:g}",
    ):
        labels = [label(f) for f in families]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{i}_{lab}" for i, lab in enumerate(labels)]


def _mlps(dataset: str, widths, depth: int, batch: int) -> tuple[ImageMLPSpec, ...]:
    return tuple(ImageMLPSpec(dataset, w, depth, batch, "mup") for w in widths)


# the recipe of the shipped weights (mulo/lopt/pretrained/mulo_cpu): three small μP widths on the offline
# digits, the evaluation's base task shape (depth 2, batch 128), the paper's horizons (100..1000, offsets
# ≤ 50) in 10-step truncations; sized for one CPU core per run (about an hour)
_MULO_CPU = MetaTrainConfig(
    families=_mlps("digits", (16, 32, 64), 2, 128),
    num_pairs=8, unroll_length=10, min_length=100, max_length=1000, max_initial_offset=50,
    outer_steps=2500, lr_peak=1e-2, lr_final=1e-3, warmup_steps=50, decay_end=2500, checkpoint_every=25,
)  # fmt: skip

# non-memorizable data (mulo.data.procedural): fresh examples every batch, a loss floor above 0, so
# growing the logits of memorized examples is never rewarded; each inner run follows a cosine learning-
# rate schedule to 0 over its sampled length (mulo.meta.inner); the log meta-loss; sized for one CPU
# core with --inner-backend cpu (≈ 0.25 s per outer step: 2 h), checkpoints every 100 outer steps (≈ 4 MB).
# Outer LR 1e-3 → 1e-4: at 3e-3 the meta-training collapsed by step 1,600 (bench/results/meta_training)
_MULO_NM = _MULO_CPU.replace(
    families=(
        ImageMLPSpec("mnist1d", 64, 2, 128, "mup"),
        ImageMLPSpec("digits_aug", 32, 2, 128, "mup"),
        ImageMLPSpec("teacher", 16, 2, 128, "mup"),
    ),
    outer_steps=30000, lr_peak=1e-3, lr_final=1e-4, warmup_steps=100, decay_end=30000, checkpoint_every=100,
    meta_loss="log", inner_schedule="cosine", inner_warmup=0.05,
)  # fmt: skip

# Celo2's recipe (docs/CELO2.md "Meta-training"; the paper's: 4 image-MLP tasks 64-32-10 on 8×8 inputs, batch 64,
# PES 8 pairs, σ 0.01, truncation 50, lengths log-uniform 100..2000, inner lr 1e-3 constant, weight decay 0,
# reparam global; outer AdamW 5e-5 for 100,000 steps) on offline data: four SP 64-32-10-shaped MLPs on the 8×8
# digits (memorizable, as the paper's small image sets), digits_aug, mnist1d and teacher (fresh examples every
# batch); 5,000 outer steps for one CPU core with --inner-backend cpu, so the outer LR is 20× the paper's
# (1e-3 → 1e-4 cosine: a guess to tune, as mulo_nm's was). Checkpoints every 50 outer steps.
_CELO2_CPU = MetaTrainConfig(
    families=tuple(ImageMLPSpec(d, 32, 1, 64, "sp") for d in ("digits", "digits_aug", "mnist1d", "teacher")),
    num_pairs=8, unroll_length=50, min_length=100, max_length=2000, max_initial_offset=50, std=0.01,
    outer_steps=5000, lr_peak=1e-3, lr_final=1e-4, warmup_steps=50, decay_end=5000, checkpoint_every=50,
    rule="celo2", inner_lr=1e-3, reparam_global=True,
)  # fmt: skip

# a 30-step horizon needs a far larger LR than the 5,000-step recipe
_TINY = MetaTrainConfig(
    families=_mlps("digits", (32,), 2, 32), num_pairs=4, unroll_length=10, min_length=20, max_length=100,
    max_initial_offset=10, outer_steps=30, lr_peak=0.1, lr_final=0.03, warmup_steps=2, decay_end=30,
    checkpoint_every=5,
)  # fmt: skip

PRESETS: dict[str, MetaTrainConfig] = {
    "tiny": _TINY,
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
    "mulo_cpu": _MULO_CPU,
    "mulo_nm": _MULO_NM,
    "celo2_cpu": _CELO2_CPU,
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
