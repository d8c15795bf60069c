"""What the held-out presets of ``mulo eval`` share: learning-rate schedules, the training loop with its
metrics and timings, learning-rate tuning (reusing tuning rows already in the output file), and rows.

A run trains ``model`` with ``opt`` for ``steps`` steps on fresh minibatches; with a schedule every param
group's lr at step t (0-based) is its initial lr × m(t), m being :class:`mulo.meta.inner.InnerSchedule`
over the run's own length (``cosine``: linear warmup over the first :data:`WARMUP` of the steps, then
cosine decay to 0 at the last step — exactly what meta-training's inner runs use). A non-finite minibatch
loss or final metric marks the run diverged (metrics ``inf``), as the memorizable presets do.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from mulo.meta.inner import InnerSchedule

SCHEDULES = ("constant", "cosine")
#: warmup of the ``cosine`` schedule, a fraction of each run's length (as the mulo_nm inner runs)
WARMUP = 0.05
#: held-out metric points per run (plus the start and the end)
EVAL_POINTS = 10
#: steps at the start of a run left out of the per-step timings (allocation, first-call costs)
TIMING_WARMUP = 5
#: seeds of the tuning runs (the evaluation's seeds are 0, 1, ...): tuning never sees an evaluated run
TUNE_SEED = 1000
#: offset of a run's data stream seed from its model seed (as the memorizable presets)
DATA_SEED_OFFSET = 7919


def multipliers(schedule: str, steps: int, warmup: float = WARMUP) -> list[float] | None:
    """m(t) for t = 0 … steps−1 (None for ``constant``: the lr is never touched)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {list(SCHEDULES)}")
    if schedule == "constant":
        return None
    sched = InnerSchedule("cosine", warmup, 0.0)
    return sched.multipliers(torch.arange(steps), torch.full((steps,), steps)).tolist()


class Metrics:
    """The metrics of a model on fixed data: ``heldout_loss``/``heldout_acc`` on the held-out set and
    ``train_loss`` on a fixed sample of the training distribution (both drawn once, never from the
    training stream). Evaluated in chunks under ``torch.no_grad`` with the model in eval mode."""

    def __init__(self, heldout: tuple[torch.Tensor, torch.Tensor], train_sample: tuple[torch.Tensor, torch.Tensor]):
        self.heldout, self.train_sample = heldout, train_sample

    @staticmethod
    @torch.no_grad()
    def _loss_acc(model: torch.nn.Module, data, chunk: int = 2048) -> tuple[float, float]:
        x, y = data
        total, correct, count = 0.0, 0.0, 0
        for i in range(0, y.shape[0], chunk):
            logits = model(x[i : i + chunk])
            logits, target = logits.reshape(-1, logits.shape[-1]), y[i : i + chunk].reshape(-1)
            total += float(F.cross_entropy(logits.float(), target, reduction="sum"))
            correct += float((logits.argmax(-1) == target).sum())
            count += target.numel()
        return total / count, correct / count

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            held, acc = self._loss_acc(model, self.heldout)
            train, _ = self._loss_acc(model, self.train_sample)
        finally:
            model.train(was_training)
        return {"heldout_loss": held, "heldout_acc": acc, "train_loss": train}


def fit(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    metrics: Callable[[torch.nn.Module], dict[str, float]],
    *,
    lr_multipliers: list[float] | None = None,
    eval_points: int = EVAL_POINTS,
    record_every: int = 0,
    on_step: Callable[[int, torch.optim.Optimizer], None] | None = None,
) -> dict:
    """Train and measure: the final metrics, ``curve`` (minibatch loss every ``record_every`` steps),
    ``heldout_curve`` ([step, held-out loss, training-sample loss] at ``eval_points`` + 1 points),
    ``param_norm_curve`` ([step, ‖θ‖₂ over every parameter] at the same points: a learned optimizer that keeps
    stepping after the gradient has vanished shows as a growing norm), divergence, and the median wall time
    of a whole training step (forward, backward, ``opt.step()``; not the data draw) and of ``opt.step()``
    alone, in ms. ``on_step(t, opt)`` runs right before step t's ``opt.step()`` (tests read the lr there)."""
    base = [g["lr"] for g in opt.param_groups]
    every = max(1, steps // eval_points) if eval_points else 0
    curve, held_curve, norm_curve, step_ms, opt_ms = [], [], [], [], []

    def norm() -> float:
        with torch.no_grad():
            return math.sqrt(sum(float(p.detach().double().square().sum()) for p in model.parameters()))

    diverged_step = None
    t_start = time.perf_counter()
    for t in range(steps):
        if every and t % every == 0:
            m = metrics(model)
            held_curve.append([t, m["heldout_loss"], m["train_loss"]])
            norm_curve.append([t, norm()])
        if lr_multipliers is not None:
            for g, lr in zip(opt.param_groups, base):
                g["lr"] = lr * lr_multipliers[t]
        x, y = next(batches)
        t0 = time.perf_counter()
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if on_step is not None:
            on_step(t, opt)
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if t >= min(TIMING_WARMUP, steps - 1):
            step_ms.append(1e3 * (t2 - t0))
            opt_ms.append(1e3 * (t2 - t1))
        value = float(loss.detach())
        if not math.isfinite(value):
            diverged_step = t
            break
        if record_every and (t % record_every == 0 or t == steps - 1):
            curve.append([t, value])
    final = metrics(model) if diverged_step is None else {}
    if diverged_step is None and not all(math.isfinite(v) for v in final.values()):
        diverged_step = steps
    if diverged_step is not None:
        final = {"heldout_loss": math.inf, "heldout_acc": 0.0, "train_loss": math.inf}
    else:
        held_curve.append([steps, final["heldout_loss"], final["train_loss"]])
        norm_curve.append([steps, norm()])
    return {
        **final,
        "diverged": diverged_step is not None,
        "diverged_step": diverged_step,
        "seconds": time.perf_counter() - t_start,
        "step_ms": statistics.median(step_ms) if step_ms else None,
        "opt_step_ms": statistics.median(opt_ms) if opt_ms else None,
        "curve": curve,
        "heldout_curve": held_curve,
        "param_norm_curve": norm_curve,
    }


#: seeds of the fixed held-out and training samples (far from the run seeds)
HELDOUT_STREAM = 0x5EED_4E1D_07
TRAIN_SAMPLE_STREAM = 0x5EED_7A11_5E


class ByteData:
    """Byte-level language modelling on :func:`mulo.data.offline.python_source_text`: the first
    ``1 − heldout_fraction`` of the bytes are the training text, the rest is held out (no training window
    reaches into it). ``batches`` draws fresh windows of the training text; :meth:`heldout_set` is a fixed
    set of ``heldout_sequences`` windows of the held-out text and :meth:`train_sample` one of the training
    text, both drawn once from dedicated streams. The interface of :mod:`mulo.data.procedural`'s sources."""

    name = "bytes"
    num_classes = 256

    def __init__(self, context: int, heldout_sequences: int = 256, heldout_fraction: float = 0.1):
        from mulo.data.offline import python_source_text

        data = torch.frombuffer(bytearray(python_source_text()), dtype=torch.uint8).long()
        cut = int(data.numel() * (1.0 - heldout_fraction))
        self.context, self.splits = context, {"train": data[:cut], "heldout": data[cut:]}
        self._heldout = self._windows("heldout", torch.Generator().manual_seed(HELDOUT_STREAM), heldout_sequences)
        self._train_sample = self._windows(
            "train", torch.Generator().manual_seed(TRAIN_SAMPLE_STREAM), heldout_sequences
        )

    def _windows(self, split: str, generator: torch.Generator, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.splits[split]
        start = torch.randint(0, text.numel() - self.context - 1, (count,), generator=generator)
        seq = text[start[:, None] + torch.arange(self.context + 1)]
        return seq[:, :-1], seq[:, 1:]

    def batches(self, generator: torch.Generator, n: int, batch_size: int, split: str = "train"):
        x, y = self._windows(split, generator, n * batch_size)
        return x.reshape(n, batch_size, -1), y.reshape(n, batch_size, -1)

    def heldout_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._heldout

    def train_sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._train_sample


def train_sample(source, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed sample of ``source``'s training distribution (its own, or ``size`` draws from a dedicated
    stream): what ``train_loss`` is measured on."""
    if hasattr(source, "train_sample"):
        return source.train_sample()
    x, y = source.batches(torch.Generator().manual_seed(TRAIN_SAMPLE_STREAM), 1, size)
    return x[0], y[0]


def stream(source, seed: int, batch_size: int, chunk: int = 50) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless fresh training minibatches of ``source`` drawn from a generator seeded by the run's seed."""
    generator = torch.Generator().manual_seed(seed + DATA_SEED_OFFSET)
    while True:
        x, y = source.batches(generator, chunk, batch_size)
        yield from zip(x, y)


def run_row(
    task, column: Column, seed: int, env: Env, model, opt, *, lr: float, weights, record_every=None, on_step=None
):
    """Train ``model`` with ``opt`` on ``task``'s fresh minibatches under ``column``'s schedule (:func:`fit`)
    and return the row fields every held-out protocol shares; ``weights``: the learned optimizer's meta-weights
    (their digest is recorded), None for a baseline."""
    from mulo import evaluation

    rule = "celo2" if column.optimizer == "celo2" else "mulo"
    result = fit(
        model,
        opt,
        stream(env.source(task), seed, task.batch),
        task.steps,
        env.metrics(task),
        lr_multipliers=multipliers(column.schedule, task.steps),
        eval_points=env.preset.eval_points,
        record_every=max(1, task.steps // 50) if record_every is None else record_every,
        on_step=on_step,
    )
    return {
        "task": task.name,
        **dataclasses.asdict(task),
        "optimizer": column.optimizer,
        "schedule": column.schedule,
        "warmup": WARMUP if column.schedule == "cosine" else 0.0,
        "lr": lr,
        "meta_weights": weights,
        "meta_weights_sha256": evaluation._weights_digest(weights, rule) if weights else None,
        "meta_weights_time_clamp": evaluation._weights_config(weights, "time_clamp", rule),
        "meta_weights_nominal": evaluation._weights_config(weights, "nominal", rule),
        "seed": seed,
        **result,
    }


class Env:
    """The data sources and fixed metric sets of a process, built once: a task's ``dataset`` names a
    :mod:`mulo.data.procedural` source or ``bytes`` (:class:`ByteData` with the task's ``context``);
    ``preset`` gives ``train_sample`` (size of the fixed training sample) and ``eval_points``."""

    def __init__(self, preset):
        self.preset, self._data, self._metrics = preset, {}, {}

    @staticmethod
    def key(task) -> tuple:
        return (task.dataset, task.context if task.dataset == "bytes" else None)

    def source(self, task):
        key = self.key(task)
        if key not in self._data:
            if task.dataset == "bytes":
                self._data[key] = ByteData(task.context)
            else:
                from mulo.data.procedural import load_source

                self._data[key] = load_source(task.dataset)
        return self._data[key]

    def metrics(self, task) -> Metrics:
        key = self.key(task)
        if key not in self._metrics:
            src = self.source(task)
            self._metrics[key] = Metrics(src.heldout_set(), train_sample(src, self.preset.train_sample))
        return self._metrics[key]


def split_names(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """``"a,b"`` or a sequence → a tuple of names (empty items dropped)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    return tuple(v.strip() for v in value if v and v.strip())


def check_subset(what: str, given: tuple[str, ...], known: tuple[str, ...]) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; choose from {list(known)}")


class Rows:
    """Appends rows (with provenance) to a JSON-lines file and finds earlier tuning rows in it."""

    def __init__(self, out: str | Path, prov: dict, log: Callable[[str], None]):
        self.out, self.prov, self.log = Path(out), prov, log
        self.out.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, row: dict) -> dict:
        row = {**row, **self.prov}
        with self.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        extra = f" step={row['step_ms']:.2f}ms opt={row['opt_step_ms']:.2f}ms" if row.get("step_ms") else ""
        label = Column(row["optimizer"], row.get("schedule", "constant"), row.get("meta_weights")).label
        self.log(
            f"{row['sweep']:8s} {row['task']:26s} {label:28s} lr={row['lr']:<7g} seed={row['seed']} "
            f"held-out={row['heldout_loss']:.4f} train={row['train_loss']:.4f}{extra}"
            f"{' DIVERGED' if row['diverged'] else ''}"
        )
        return row

    def earlier(self, match: dict) -> list[dict]:
        """Rows already in the file (this git SHA and preset) whose fields equal ``match``."""
        if not self.out.exists():
            return []
        found = []
        for line in self.out.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("git_sha") != self.prov["git_sha"] or r.get("preset") != self.prov["preset"]:
                continue
            if all(r.get(k) == v for k, v in match.items()):
                found.append(r)
        return found


def tune(
    rows: Rows,
    key: dict,
    grid: tuple[float, ...],
    seeds: tuple[int, ...],
    train_at: Callable[[float, int], dict],
    label: str,
) -> float:
    """The grid lr with the lowest mean held-out loss over ``seeds`` (a diverged run counts as inf; ties go
    to the smaller lr). Tuning rows of this git SHA and preset already in the output file with the same
    ``key`` (task, optimizer, schedule) are reused instead of rerun, so parallel parts of an evaluation
    started one after the other tune once."""
    losses = {}
    for lr in grid:
        per_seed = []
        for seed in seeds:
            prior = rows.earlier({**key, "sweep": "tune", "lr": lr, "seed": seed})
            row = prior[-1] if prior else rows.emit(train_at(lr, seed))
            per_seed.append(row["heldout_loss"])
        losses[lr] = statistics.fmean(per_seed)
    best = min(grid, key=lambda lr: (losses[lr], lr))
    rows.log(f"tuned {label}: lr={best:g} (held-out {losses[best]:.4f})")
    return best


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of the tables: an optimizer, its schedule and (learned optimizers) its meta-weights."""

    optimizer: str
    schedule: str = "constant"
    meta_weights: str | None = None

    @property
    def label(self) -> str:
        name = f"{self.optimizer}:{self.meta_weights}" if self.meta_weights else self.optimizer
        return name + ("+cos" if self.schedule == "cosine" else "")


__all__ = [
    "EVAL_POINTS",
    "ByteData",
    "Env",
    "SCHEDULES",
    "WARMUP",
    "Column",
    "Metrics",
    "Rows",
    "fit",
    "run_row",
    "multipliers",
    "split_names",
    "tune",
]
