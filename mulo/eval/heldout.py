"""``mulo eval --preset nm``: the generalization sweeps on data that cannot be memorized, scored on
held-out data.

Tasks: for each family of the ``mulo_nm`` meta-training preset (:mod:`mulo.meta.presets`: ``mnist1d`` at
width 64, ``digits_aug`` at 32, ``teacher`` at 16; depth 2, batch 128) the base task is that MLP trained
for the longest meta-training inner length (1,000 steps); the sweeps scale it to 1×/4×/16× width, 3×
depth and 5×/25× horizon (the base task is the 1× of each). Every minibatch is drawn fresh from the
family's :mod:`mulo.data.procedural` source. ``ood_lm`` adds the byte-level μP transformer LM of the
memorizable presets, now trained on the first 90% of its text and scored on windows of the last 10% (it has
no SP twin, so AdamW — which would train the same μP network as μAdam at its base width — does not run there).

Metric: the cross-entropy on the source's fixed held-out set (``heldout_loss``, with ``heldout_acc``), and
the training loss on a fixed sample of the training distribution (``train_loss``), at the end of the run
and at :data:`~mulo.eval.common.EVAL_POINTS` points along it (``heldout_curve``).

Columns: each optimizer with a constant lr and with warmup-cosine (``cosine``: 5% linear warmup, cosine to
0 at the run's last step, over each run's own length). μAdam (μP network, hidden lr × base width / width)
and AdamW (SP twin, one lr) have their peak lr tuned by a grid on each family's base task (on the LM for
the LM), separately per schedule, and transferred unchanged; the learned optimizers run at lr 1 — the
schedule then multiplies MuLO's ``lr``, which scales the learned step. One MuLO column per set of
meta-weights (``meta_weights``: a comma list). ``celo2`` (on request) trains the SP twin, as a user would
hand Celo2 a plain network, with its peak lr tuned like AdamW's (Celo2's step has unit RMS: the lr is its
size); one column per set of ``celo2_weights``. A non-finite loss is a divergence, recorded and counted.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import torch

import mulo
from mulo.eval import common
from mulo.eval.common import Column, Env, Rows
from mulo.evaluation import Task

OPTIMIZERS = ("mulo", "muadam", "adamw", "sp_lo", "celo2")
DEFAULT_OPTIMIZERS = ("mulo", "muadam", "adamw")
SWEEPS = ("width", "depth", "horizon", "ood_lm")
TUNED = ("muadam", "adamw", "celo2")  # peak lr tuned on the base task and transferred
LEARNED = ("mulo", "sp_lo", "celo2")  # a column per set of meta-weights


@dataclasses.dataclass(frozen=True)
class HTask(Task):
    """A task of the memorizable presets (:class:`mulo.evaluation.Task`) drawing from ``dataset``: an MLP on
    a :mod:`mulo.data.procedural` source (``kind="mlp"``) or the byte-level LM on held-out text (``"lm"``,
    dataset ``bytes``)."""

    dataset: str = "bytes"

    @property
    def name(self) -> str:
        return f"{'lm' if self.kind == 'lm' else self.dataset}-w{self.width}-d{self.depth}-T{self.steps}"


@dataclasses.dataclass(frozen=True)
class HeldoutPreset:
    families: tuple[tuple[str, int], ...]  # (procedural source, base width)
    depth: int
    batch: int
    steps: int
    widths: tuple[int, ...] = (1, 4, 16)
    depths: tuple[int, ...] = (3,)
    horizons: tuple[int, ...] = (5, 25)
    seeds: int = 5
    grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    tune_seeds: int = 2
    lm: HTask | None = None
    train_sample: int = 4096
    eval_points: int = common.EVAL_POINTS

    def tasks(self, sweeps: tuple[str, ...], datasets: tuple[str, ...]) -> list[tuple[str, HTask, HTask]]:
        """(sweep, task, the base task its baselines were tuned on) in run order."""
        out = []
        for dataset, width in self.families:
            if dataset not in datasets:
                continue
            base = HTask("mlp", width, self.depth, self.steps, self.batch, dataset=dataset)
            out += [("width", dataclasses.replace(base, width=width * m), base) for m in self.widths]
            out += [("depth", dataclasses.replace(base, depth=self.depth * m), base) for m in self.depths if m != 1]
            out += [("horizon", dataclasses.replace(base, steps=self.steps * m), base) for m in self.horizons if m != 1]
        if self.lm is not None:
            out.append(("ood_lm", self.lm, self.lm))
        return [t for t in out if t[0] in sweeps]


def _nm_preset() -> HeldoutPreset:
    from mulo.meta.presets import PRESETS as META

    meta = META["mulo_nm"]
    depths = {f.depth for f in meta.families}
    batches = {f.batch_size for f in meta.families}
    assert len(depths) == len(batches) == 1, "mulo_nm's families share depth and batch"
    return HeldoutPreset(
        families=tuple((f.dataset, f.width) for f in meta.families),
        depth=depths.pop(),
        batch=batches.pop(),
        steps=meta.max_length,
        lm=HTask("lm", 64, 2, meta.max_length, batch=32, context=64),
    )


PRESETS = {
    # the base matches the mulo_nm meta-training preset (families, widths, depth, batch, longest inner run)
    "nm": _nm_preset(),
    # smoke-sized, for tests (two sources that need no generated pool)
    "nm_quick": HeldoutPreset(
        families=(("digits_aug", 8), ("teacher", 8)),
        depth=2,
        batch=32,
        steps=20,
        widths=(1, 2),
        depths=(2,),
        horizons=(2,),
        seeds=1,
        grid=(1e-3, 1e-2),
        tune_seeds=1,
        lm=HTask("lm", 16, 1, 20, batch=4, context=16, heads=2),
        train_sample=256,
        eval_points=2,
    ),
}


def build(task: HTask, optimizer: str, seed: int, source) -> torch.nn.Module:
    """The network ``optimizer`` trains: μP MLP (mulo, muadam) or its SP twin (adamw, sp_lo), biases N(0, 1)
    as in meta-training; the μP LM for every optimizer (it has no SP twin)."""
    gen = torch.Generator().manual_seed(seed)
    if task.kind == "lm":
        from mulo.mup.models import MuTransformerLM

        return MuTransformerLM(256, task.width, task.depth, task.heads, task.context, generator=gen)
    if task.kind != "mlp":
        raise ValueError(f"unknown task kind {task.kind!r}; use 'mlp' or 'lm'")
    dims = (source.num_features, task.width, task.depth, source.num_classes)
    if optimizer in ("adamw", "sp_lo", "celo2"):
        from mulo.meta.tasks import SPMLP

        model = SPMLP(*dims)
        mulo.mup.init_(model, model.roles(), bias_std=1.0, generator=gen)
        return model
    from mulo.mup.models import MuMLP

    return MuMLP(*dims, bias_std=1.0, generator=gen)


def make_optimizer(
    column: Column, model: torch.nn.Module, task: HTask, lr: float, base_width: int
) -> torch.optim.Optimizer:
    from mulo import evaluation

    spec = evaluation.OptSpec(column.optimizer, lr, column.meta_weights, base_width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mulo.PlaceholderMetaWeightsWarning)
        return evaluation._optimizer(spec, model, task)


def train(
    task: HTask,
    column: Column,
    seed: int,
    env: Env,
    *,
    lr: float = 1.0,
    base_width: int | None = None,
    record_every: int | None = None,
    on_step=None,
) -> dict:
    """One run: its row (without provenance)."""
    from mulo import evaluation

    torch.manual_seed(seed)
    base_width = base_width or task.width
    model = build(task, column.optimizer, seed, env.source(task))
    opt = make_optimizer(column, model, task, lr, base_width)
    weights = column.meta_weights or evaluation.default_weights(column.optimizer)
    weights = weights if column.optimizer in LEARNED else None
    row = common.run_row(
        task, column, seed, env, model, opt, lr=lr, weights=weights, record_every=record_every, on_step=on_step
    )
    return {"protocol": "heldout", **row, "base_width": base_width}


def columns(
    optimizers: tuple[str, ...],
    schedules: tuple[str, ...],
    meta_weights: tuple[str, ...],
    sp_weights: str | None,
    celo2_weights: tuple[str | None, ...] = (None,),
) -> list[Column]:
    out = []
    for opt in OPTIMIZERS:
        if opt not in optimizers:
            continue
        if opt == "mulo":
            names = meta_weights
        elif opt == "sp_lo":
            names = (sp_weights,) if sp_weights and sp_weights != "none" else ()
        elif opt == "celo2":
            names = celo2_weights
        else:
            names = (None,)
        out += [Column(opt, s, w) for s in common.SCHEDULES if s in schedules for w in names]
    return out


def _columns_for(task: HTask, cols: list[Column]) -> list[Column]:
    """The LM has no SP twin: AdamW would train the same μP network as μAdam at its own base width (the
    same runs), so only μAdam runs there."""
    return [c for c in cols if not (task.kind == "lm" and c.optimizer == "adamw")]


def run(
    out: str | Path,
    preset: str = "nm",
    meta_weights=None,
    sp_weights: str | None = None,
    log=print,
    sweeps=SWEEPS,
    optimizers=DEFAULT_OPTIMIZERS,
    schedules=common.SCHEDULES,
    datasets=None,
    celo2_weights=None,
    mulo_lr: float = 1.0,
) -> Path:
    """Run the held-out sweeps of ``preset`` and append one JSON line per run to ``out`` (tuning rows have
    sweep ``tune``; every row carries provenance). ``mulo_lr``: the lr of the μLO columns (default 1, the
    learned optimizer's own step size; a row records its lr)."""
    from mulo import evaluation
    from mulo.lopt import pretrained

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[preset]
    sweeps, optimizers, schedules = (common.split_names(v) for v in (sweeps, optimizers, schedules))
    family_names = tuple(d for d, _ in cfg.families)
    datasets = common.split_names(datasets) or family_names
    common.check_subset("sweeps", sweeps, SWEEPS)
    common.check_subset("optimizers", optimizers, OPTIMIZERS)
    common.check_subset("schedules", schedules, common.SCHEDULES)
    common.check_subset(f"datasets of preset {preset!r}", datasets, family_names)
    if not (mulo_lr > 0 and math.isfinite(mulo_lr)):
        raise ValueError(f"mulo_lr must be a positive finite number (the μLO columns' lr), got {mulo_lr}")
    weights = common.split_names(meta_weights) or (pretrained.DEFAULT,)
    rows = Rows(out, evaluation.provenance() | {"preset": preset}, log)
    env = Env(cfg)
    celo2 = common.split_names(celo2_weights) or (None,)
    cols = columns(optimizers, schedules, weights, sp_weights or evaluation.SP_LO_WEIGHTS, celo2)
    tasks = cfg.tasks(sweeps, datasets)

    lrs = {}
    tune_seeds = tuple(common.TUNE_SEED + s for s in range(cfg.tune_seeds))
    for base in dict.fromkeys(b for _, _, b in tasks):  # tuning first, once per base task
        for col in (c for c in _columns_for(base, cols) if c.optimizer in TUNED):

            def train_at(lr, seed, base=base, col=col):
                return {**train(base, col, seed, env, lr=lr, base_width=base.width), "sweep": "tune"}

            key = {"protocol": "heldout", "task": base.name, "optimizer": col.optimizer, "schedule": col.schedule}
            lrs[(base, col)] = common.tune(rows, key, cfg.grid, tune_seeds, train_at, f"{col.label} on {base.name}")
    for sweep, task, base in tasks:
        for col in _columns_for(task, cols):
            lr = lrs.get((base, col), mulo_lr if col.optimizer == "mulo" else 1.0)
            for seed in range(cfg.seeds):
                rows.emit({**train(task, col, seed, env, lr=lr, base_width=base.width), "sweep": sweep})
    return Path(out)


__all__ = ["OPTIMIZERS", "PRESETS", "SWEEPS", "HTask", "HeldoutPreset", "build", "columns", "run", "train"]
