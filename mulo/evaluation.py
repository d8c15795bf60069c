"""``mulo eval``: what the learned optimizer buys — wider, deeper, longer than it was meta-trained on.

Optimizers compared (docs/ALGORITHM.md §8, the μLO paper's protocol at our scale):

* ``mulo``  — MuLO with μP roles and the given (default: shipped) meta-weights, on the μP network;
* ``sp_lo`` — MuLO with SP meta-weights (shipped: ``mulo_cpu_sp``) and no roles, on the SP twin;
* ``adamw`` — AdamW with one learning rate for every parameter, on the SP twin;
* ``muadam`` — μP Adam: hidden weights get ``lr · base_width / width`` (the rest ``lr``), on the μP network.

The MLP tasks are the meta-training family's networks: :class:`~mulo.mup.models.MuMLP` (μP) or its SP twin
:class:`~mulo.meta.tasks.SPMLP` (every weight N(0, 1/fan_in), plain readout), biases N(0, 1) in both. The
language model has no SP twin: every optimizer trains the μP :class:`~mulo.mup.models.MuTransformerLM`.

AdamW and μAdam learning rates are tuned by a grid on the base task (the meta-training width, depth and
horizon) and transferred unchanged to the wider/deeper/longer tasks. The metric is the final training
loss on the whole training set (digits) or on fixed held-in batches (language model); a run whose loss
becomes non-finite is recorded as diverged with loss ``inf``.

Those are the memorizable presets (``cpu``, ``quick``): the final *training* loss on the 1,797 digits. The
held-out presets live in :mod:`mulo.eval` and are run through :func:`run` too: ``nm`` (width/depth/horizon
sweeps on non-memorizable data, held-out loss, baselines with constant lr and warmup-cosine, learned
optimizers with and without the schedule; :mod:`mulo.eval.heldout`) and ``models`` (plain ``torch.nn`` GPT,
CNN and ViT converted by :func:`mulo.mup.prepare`, against AdamW on the model as written;
:mod:`mulo.eval.models`), each with a ``*_quick`` smoke preset.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

import mulo
from mulo.data.offline import digits, python_source_text
from mulo.lopt import pretrained
from mulo.mup.models import MuMLP, MuTransformerLM
from mulo.provenance import cpu_model, git_sha

ADAM_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
SP_LO_WEIGHTS = "mulo_cpu_sp"  # the shipped SP-LO (mulo/lopt/pretrained/mulo_cpu_sp)


@dataclasses.dataclass(frozen=True)
class Task:
    kind: str  # "mlp" (digits) or "lm" (byte-level transformer on stdlib source)
    width: int
    depth: int
    steps: int
    batch: int = 128
    context: int = 64
    heads: int = 4

    @property
    def name(self) -> str:
        return f"{self.kind}-w{self.width}-d{self.depth}-T{self.steps}"


@dataclasses.dataclass(frozen=True)
class OptSpec:
    name: str  # mulo | sp_lo | adamw | muadam
    lr: float = 1.0
    meta_weights: str | None = None
    base_width: int | None = None


SP_OPTIMIZERS = ("adamw", "sp_lo")  # trained on the SP twin of an MLP task
_DEFAULT_WEIGHTS = {"mulo": pretrained.DEFAULT, "sp_lo": SP_LO_WEIGHTS}


def default_weights(optimizer: str) -> str | None:
    """The meta-weights a learned optimizer's column uses when none are given (None for a baseline)."""
    if optimizer == "celo2":
        from mulo.celo2 import pretrained as celo2_pretrained

        return celo2_pretrained.DEFAULT
    return _DEFAULT_WEIGHTS.get(optimizer)


def _build(task: Task, seed: int, parameterization: str = "mup") -> tuple[torch.nn.Module, dict]:
    gen = torch.Generator().manual_seed(seed)
    if task.kind == "mlp":
        if parameterization == "sp":
            from mulo.meta.tasks import SPMLP

            model = SPMLP(64, task.width, task.depth, 10)
            mulo.mup.init_(model, model.roles(), bias_std=1.0, generator=gen)
            return model, {}
        return MuMLP(64, task.width, task.depth, 10, bias_std=1.0, generator=gen), {}
    if task.kind == "lm":
        return MuTransformerLM(256, task.width, task.depth, task.heads, task.context, generator=gen), {}
    raise ValueError(f"unknown task kind {task.kind!r}; use 'mlp' or 'lm'")


def _optimizer(spec: OptSpec, model: torch.nn.Module, task: Task) -> torch.optim.Optimizer:
    roles = model.roles()
    if spec.name == "mulo":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mulo.PlaceholderMetaWeightsWarning)
            return mulo.MuLO(mulo.mup.param_groups(model, roles), lr=spec.lr, meta_weights=spec.meta_weights)
    if spec.name == "sp_lo":
        return mulo.MuLO(model.parameters(), lr=spec.lr, meta_weights=spec.meta_weights or SP_LO_WEIGHTS)
    if spec.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    if spec.name == "celo2":  # the model as a user writes it: learned rule on matrices, AdamW on the rest
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mulo.PlaceholderMetaWeightsWarning)
            return mulo.Celo2(model.parameters(), lr=spec.lr, meta_weights=spec.meta_weights)
    if spec.name == "muadam":
        base = spec.base_width or task.width
        groups = mulo.mup.param_groups(model, roles)
        for g in groups:
            g["lr"] = spec.lr * (base / task.width if g["role"] == "hidden" else 1.0)
        return torch.optim.AdamW(groups, lr=spec.lr, weight_decay=0.0)
    raise ValueError(f"unknown optimizer {spec.name!r}; use mulo, sp_lo, adamw, muadam or celo2")


def _batches(task: Task, seed: int) -> tuple[Iterator, callable]:
    """An endless minibatch stream and a function computing the final training loss of a model."""
    gen = torch.Generator().manual_seed(seed + 7919)
    if task.kind == "mlp":
        x, y = digits()

        def stream():
            while True:
                idx = torch.randint(0, x.shape[0], (task.batch,), generator=gen)
                yield x[idx], y[idx]

        def final(model):
            return F.cross_entropy(model(x), y).item()

        return stream(), final
    data = torch.frombuffer(bytearray(python_source_text()), dtype=torch.uint8).long()
    n = data.numel() - task.context - 1

    def sample(g, count):
        idx = torch.randint(0, n, (count,), generator=g)
        offs = torch.arange(task.context + 1)
        seq = data[idx[:, None] + offs]
        return seq[:, :-1], seq[:, 1:]

    def stream():
        while True:
            yield sample(gen, task.batch)

    held = sample(torch.Generator().manual_seed(1234), 256)

    def final(model):
        logits = model(held[0])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), held[1].reshape(-1)).item()

    return stream(), final


def train(task: Task, spec: OptSpec, seed: int, record_every: int = 0) -> dict:
    torch.manual_seed(seed)
    model, _ = _build(task, seed, "sp" if spec.name in SP_OPTIMIZERS else "mup")
    opt = _optimizer(spec, model, task)
    stream, final = _batches(task, seed)
    curve, t0, diverged = [], time.perf_counter(), False
    for step in range(task.steps):
        x, y = next(stream)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            diverged = True
            break
        if record_every and (step % record_every == 0 or step == task.steps - 1):
            curve.append((step, value))
    with torch.no_grad():
        final_loss = float("inf") if diverged else final(model)
    if not math.isfinite(final_loss):
        diverged, final_loss = True, float("inf")
    return {
        "task": task.name,
        **dataclasses.asdict(task),
        "optimizer": spec.name,
        "lr": spec.lr,
        "meta_weights": spec.meta_weights or _DEFAULT_WEIGHTS.get(spec.name),
        "meta_weights_sha256": _weights_digest(spec.meta_weights or _DEFAULT_WEIGHTS.get(spec.name)),
        "seed": seed,
        "final_loss": final_loss,
        "diverged": diverged,
        "seconds": time.perf_counter() - t0,
        "curve": curve,
    }


def _weights_path(source: str, rule: str = "mulo") -> Path:
    """The directory of meta-weights ``source`` (a directory, or a name shipped for ``rule``: mulo or celo2)."""
    path = Path(source)
    if path.is_dir():
        return path
    if rule == "celo2":
        from mulo.celo2 import pretrained as celo2_pretrained

        return celo2_pretrained.weights_dir(source) if source in celo2_pretrained.names() else path
    return pretrained.weights_dir(source) if source in pretrained.names() else path


def _weights_digest(source: str | None, rule: str = "mulo") -> str | None:
    """sha256 (first 16 hex digits) of the meta-weights file a row was trained with: names can be reused."""
    if source is None:
        return None
    digest = pretrained.model_digest(_weights_path(source, rule))
    return digest[:16] if digest else None


def _weights_config(source: str | None, key: str, rule: str = "mulo") -> float | None:
    """A setting of the meta-weights' config.json that changes the update (None: absent), recorded in rows
    beside the digest: ``time_clamp`` changes it without changing the weights file, ``nominal`` says how
    large the nominal term the third output head scales is."""
    if source is None:
        return None
    file = _weights_path(source, rule) / "config.json"
    return json.loads(file.read_text()).get(key) if file.is_file() else None


def tune_lr(task: Task, spec: OptSpec, grid=ADAM_GRID, seeds=(0, 1)) -> tuple[float, list[dict]]:
    """The grid learning rate with the lowest mean final loss on ``task``."""
    rows = []
    best, best_loss = grid[0], float("inf")
    for lr in grid:
        runs = [train(task, dataclasses.replace(spec, lr=lr), 1000 + s) for s in seeds]
        rows.extend(runs)
        loss = sum(r["final_loss"] for r in runs) / len(runs)
        if loss < best_loss:
            best, best_loss = lr, loss
    return best, rows


def provenance() -> dict:
    return {
        "git_sha": git_sha(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "device": cpu_model(),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


SWEEPS = ("width", "depth", "horizon", "ood_lm")
OPTIMIZERS = ("mulo", "adamw", "muadam", "sp_lo")

PRESETS = {
    # smoke-sized, for tests
    "quick": dict(
        base_width=16,
        base_depth=2,
        base_steps=20,
        widths=(1, 4),
        depths=(1,),
        horizons=(1,),
        seeds=1,
        lm=False,
        grid=(1e-3, 1e-2),
    ),
    # the shipped mulo_cpu weights' evaluation: base = the largest meta-training width (64), its depth (2)
    # and its longest inner horizon (1,000 steps); about 40 CPU-core-minutes with the fast CPU backend
    # (run the sweeps in parallel processes with --sweeps)
    "cpu": dict(
        base_width=64,
        base_depth=2,
        base_steps=1000,
        widths=(1, 4, 16),
        depths=(1, 3),
        horizons=(1, 5, 25),
        seeds=5,
        lm=True,
        grid=ADAM_GRID,
    ),
}


HELDOUT_PRESETS = ("nm", "nm_quick")
MODEL_PRESETS = ("models", "models_quick")
ALL_PRESETS = (*PRESETS, *HELDOUT_PRESETS, *MODEL_PRESETS)
#: where each kind of preset appends its rows by default
DEFAULT_OUT = {
    "memorizable": "bench/results/generalization.jsonl",
    "heldout": "bench/results/heldout.jsonl",
    "models": "bench/results/models.jsonl",
}


def preset_kind(preset: str) -> str:
    """``memorizable`` (cpu, quick), ``heldout`` (nm, nm_quick) or ``models`` (models, models_quick)."""
    if preset in PRESETS:
        return "memorizable"
    if preset in HELDOUT_PRESETS:
        return "heldout"
    if preset in MODEL_PRESETS:
        return "models"
    raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(ALL_PRESETS)}")


def run(
    out: str | os.PathLike | None,
    preset: str = "cpu",
    meta_weights: str | None = None,
    sp_weights: str | None = SP_LO_WEIGHTS,
    log=print,
    sweeps: tuple[str, ...] | None = None,
    optimizers: tuple[str, ...] | None = None,
    schedules: tuple[str, ...] | None = None,
    datasets: tuple[str, ...] | None = None,
    models: tuple[str, ...] | None = None,
    celo2_weights: str | None = None,
    mulo_lr: float = 1.0,
) -> Path:
    """Run ``preset``'s evaluation and append JSON lines to ``out`` (one row per run, provenance in every
    row; ``None``: the preset kind's :data:`DEFAULT_OUT`). ``None`` for a subset option means all of it
    (the preset's default optimizers and schedules).

    ``meta_weights``: the μLO weights, a name/directory/Hub id or a comma list of them (one column each);
    ``celo2_weights`` the same for the ``celo2`` column (held-out and models presets; None: Celo2's default).
    ``sweeps`` and ``optimizers`` pick subsets of :data:`SWEEPS` and :data:`OPTIMIZERS` (held-out presets:
    :data:`mulo.eval.heldout.SWEEPS`, :data:`mulo.eval.heldout.OPTIMIZERS`; models: ``mulo``, ``adamw``), so
    that parts can run in parallel processes; ``schedules`` (held-out and models presets) picks ``constant``
    and/or ``cosine``; ``datasets`` the held-out families; ``models`` the models of the models presets;
    ``mulo_lr`` the μLO columns' lr in the held-out presets (default 1: the learned optimizer's own step)."""
    kind = preset_kind(preset)
    out = out if out is not None else DEFAULT_OUT[kind]
    if kind == "heldout":
        from mulo.eval import heldout

        return heldout.run(
            out, preset, meta_weights, sp_weights, log, sweeps=sweeps or heldout.SWEEPS, datasets=datasets,
            optimizers=optimizers or heldout.DEFAULT_OPTIMIZERS, schedules=schedules or ("constant", "cosine"),
            celo2_weights=celo2_weights, mulo_lr=mulo_lr,
        )  # fmt: skip
    if mulo_lr != 1.0:
        raise ValueError(f"preset {preset!r} runs μLO at lr 1; mulo_lr is for the held-out presets (nm, nm_quick)")
    if kind == "models":
        from mulo.eval import models as model_eval

        if sweeps or datasets:
            raise ValueError(f"preset {preset!r} has no sweeps or datasets; pick models with models=...")
        return model_eval.run(
            out, preset, meta_weights, log, models=models or model_eval.MODELS,
            optimizers=optimizers or model_eval.DEFAULT_OPTIMIZERS, schedules=schedules or ("constant", "cosine"),
            celo2_weights=celo2_weights,
        )  # fmt: skip
    if celo2_weights is not None or (optimizers and "celo2" in optimizers):
        raise ValueError(f"preset {preset!r} has no celo2 column; use the nm or models presets")
    for what, given in (("schedules", schedules), ("datasets", datasets), ("models", models)):
        if given and not (what == "schedules" and tuple(given) == ("constant",)):
            raise ValueError(
                f"preset {preset!r} (memorizable digits, constant lr) takes no {what}; use the nm or models presets"
            )
    return _run_memorizable(out, preset, meta_weights, sp_weights, log, sweeps or SWEEPS, optimizers or OPTIMIZERS)


def _run_memorizable(
    out: str | os.PathLike,
    preset: str,
    meta_weights: str | None,
    sp_weights: str | None,
    log,
    sweeps: tuple[str, ...],
    optimizers: tuple[str, ...],
) -> Path:
    """The memorizable presets (cpu, quick): the AdamW/μAdam tuning runs first wherever it is needed (it is
    cheap and deterministic, so every process transfers the same learning rates)."""
    for what, given, known in (("sweeps", sweeps, SWEEPS), ("optimizers", optimizers, OPTIMIZERS)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"unknown {what} {unknown}; choose from {list(known)}")
    cfg = PRESETS[preset]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prov = provenance() | {"preset": preset}
    base = Task("mlp", cfg["base_width"], cfg["base_depth"], cfg["base_steps"])

    def emit(row: dict, sweep: str) -> None:
        row = {**row, **prov, "sweep": sweep}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        log(
            f"{sweep:8s} {row['task']:22s} {row['optimizer']:7s} lr={row['lr']:<7g} seed={row['seed']} "
            f"final={row['final_loss']:.4f}{' DIVERGED' if row['diverged'] else ''}"
        )

    lrs = {}
    for name in [o for o in ("adamw", "muadam") if o in optimizers]:
        spec = OptSpec(name, base_width=base.width)
        lrs[name], rows = tune_lr(base, spec, cfg["grid"], seeds=tuple(range(min(2, cfg["seeds"]))))
        for r in rows:
            emit(r, "tune")
        log(f"tuned {name}: lr={lrs[name]:g}")
    mulo_weights = [w.strip() for w in meta_weights.split(",") if w.strip()] if meta_weights else [None]
    specs = {
        "mulo": lambda: [OptSpec("mulo", meta_weights=w) for w in mulo_weights],
        "adamw": lambda: [OptSpec("adamw", lrs["adamw"])],
        "muadam": lambda: [OptSpec("muadam", lrs["muadam"], base_width=base.width)],
        "sp_lo": lambda: [OptSpec("sp_lo", meta_weights=sp_weights)],
    }
    if not sp_weights or sp_weights == "none":
        optimizers = tuple(o for o in optimizers if o != "sp_lo")
    specs = [spec for o in OPTIMIZERS if o in optimizers for spec in specs[o]()]
    tasks = [("width", dataclasses.replace(base, width=base.width * m)) for m in cfg["widths"]]
    tasks += [("depth", dataclasses.replace(base, depth=base.depth * m)) for m in cfg["depths"] if m != 1]
    tasks += [("horizon", dataclasses.replace(base, steps=base.steps * m)) for m in cfg["horizons"] if m != 1]
    if cfg["lm"]:
        tasks += [("ood_lm", Task("lm", 64, 2, base.steps, batch=32, context=64))]
    tasks = [(sweep, task) for sweep, task in tasks if sweep in sweeps]
    for sweep, task in tasks:
        for spec in specs:
            for seed in range(cfg["seeds"]):
                emit(train(task, spec, seed, record_every=max(1, task.steps // 50)), sweep)
    return out


PRESET_HELP = (
    "quick: a smoke run of the digits sweeps (seconds); cpu: the digits sweeps, CPU-sized (about 40 "
    "core-minutes; final training loss on the memorizable digits); nm_quick: a smoke run of nm (seconds); nm: "
    "the held-out sweeps on non-memorizable data (mnist1d/digits_aug/teacher MLPs at the mulo_nm meta-training "
    "base: 1×/4×/16× width, 3× depth, 5×/25× horizon, plus the byte LM on held-out text; 5 seeds; about 3 "
    "core-hours: the baselines with their tuning ≈ 2, each set of meta-weights ≈ 1.1; split it with "
    "--datasets/--sweeps/--optimizers/--schedules); models_quick: a smoke run of models (seconds); models: "
    "plain torch.nn GPT byte LM, CNN and ViT (MuLO after mulo.mup.prepare vs AdamW on the model as written; "
    "held-out loss and ms per step; 5 seeds; about 1.7 core-hours: AdamW with its tuning ≈ 1.2, each set of "
    "meta-weights ≈ 0.4)"
)


def _comma_list(choices: tuple[str, ...]):
    """An argparse type: a comma-separated subset of ``choices`` (kept as a tuple)."""
    import argparse

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item for item in text.split(",") if item)
        unknown = [item for item in items if item not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {','.join(choices)}")
        return items

    return parse


def _defaults_formatter():
    import argparse

    class Formatter(argparse.ArgumentDefaultsHelpFormatter):
        """Shows ``(default: X)`` except where the default is None (those helps say what None means)."""

        def _get_help_string(self, action):
            return action.help if action.default is None else super()._get_help_string(action)

    return Formatter


def add_parser(sub) -> None:
    """The ``mulo eval`` subcommand (its options, defaults and choices) on an argparse subparsers object."""
    from mulo.eval import heldout, models
    from mulo.eval.common import SCHEDULES
    from mulo.lopt import pretrained

    _DefaultsFormatter = _defaults_formatter()
    ev = sub.add_parser(
        "eval",
        help="generalization sweeps: MuLO vs tuned-and-transferred AdamW/μAdam, on memorizable digits, on "
        "non-memorizable data (held-out loss) and on plain torch.nn models",
        description="What the learned optimizer buys (docs/ALGORITHM.md §8, the μLO paper's protocol at our "
        "scale): AdamW and μAdam learning rates are tuned by a grid on the base task and transferred unchanged "
        "to wider, deeper and longer runs and to an out-of-distribution byte-level language model; the learned "
        "optimizers run at lr 1. Presets cpu/quick score the final training loss on the memorizable 8×8 "
        "digits; nm/nm_quick the held-out loss on data that cannot be memorized (fresh samples every step), "
        "each optimizer with a constant lr and with warmup-cosine (5% warmup, cosine to 0 over the run; for "
        "MuLO the schedule multiplies its lr); models/models_quick compare MuLO on plain torch.nn models "
        "converted by mulo.mup.prepare with AdamW on the models as written (held-out loss, ms per step). One "
        "JSON line per run (metrics, curves, provenance: git SHA, torch, date, device, meta-weights digest) is "
        "appended to --out; `python bench/generalization.py --plot OUT --preset P --readme` makes the tables "
        "and figures.",
        formatter_class=_DefaultsFormatter,
    )
    ev.add_argument(
        "--out",
        default=None,
        help=f"JSON lines file to append to (default: {DEFAULT_OUT['memorizable']} for cpu/quick, "
        f"{DEFAULT_OUT['heldout']} for nm/nm_quick, {DEFAULT_OUT['models']} for models/models_quick)",
    )
    ev.add_argument("--preset", default="cpu", choices=sorted(ALL_PRESETS), help=PRESET_HELP)
    sweeps = tuple(dict.fromkeys(SWEEPS + heldout.SWEEPS))
    ev.add_argument(
        "--sweeps",
        default=None,
        type=_comma_list(sweeps),
        help=f"comma list of sweeps to run, from {{{','.join(sweeps)}}} (default: all; not for models presets)",
    )
    optimizers = tuple(dict.fromkeys(OPTIMIZERS + heldout.OPTIMIZERS + models.OPTIMIZERS))
    ev.add_argument(
        "--optimizers",
        default=None,
        type=_comma_list(optimizers),
        help=f"comma list of optimizers to run, from {{{','.join(optimizers)}}} (default: cpu/quick "
        f"{','.join(OPTIMIZERS)}; nm {','.join(heldout.DEFAULT_OPTIMIZERS)}; models "
        f"{','.join(models.DEFAULT_OPTIMIZERS)}; celo2 on request, with its lr tuned like AdamW's)",
    )
    ev.add_argument(
        "--schedules",
        default=None,
        type=_comma_list(SCHEDULES),
        help=f"nm and models presets: comma list of lr schedules, from {{{','.join(SCHEDULES)}}}: constant, or "
        "cosine = linear warmup over the first 5%% of the run then cosine decay to 0 at its last step (the "
        "baselines' peak lr is tuned per schedule; MuLO's lr 1 is multiplied by it) (default: both)",
    )
    families = tuple(dict.fromkeys(d for p in heldout.PRESETS.values() for d, _ in p.families))
    ev.add_argument(
        "--datasets",
        default=None,
        type=_comma_list(families),
        help=f"nm presets: comma list of task families, from {{{','.join(families)}}} (default: the preset's: "
        f"nm {','.join(d for d, _ in heldout.PRESETS['nm'].families)})",
    )
    ev.add_argument(
        "--models",
        default=None,
        type=_comma_list(models.MODELS),
        help=f"models presets: comma list of models, from {{{','.join(models.MODELS)}}} (default: all)",
    )
    ev.add_argument(
        "--meta-weights",
        default=pretrained.DEFAULT,
        help="μLO weights: a shipped name (e.g. mulo_cpu_s2), a directory or a Hub id; a comma list runs each "
        "set as its own column",
    )
    ev.add_argument(
        "--sp-weights",
        default=SP_LO_WEIGHTS,
        help="SP learned-optimizer weights for the SP-LO baseline: a shipped name (e.g. mulo_cpu_sp_s2), a "
        "directory or a Hub id ('none' skips it)",
    )
    ev.add_argument(
        "--celo2-weights",
        default=None,
        help="Celo2 weights of the celo2 column (nm and models presets, --optimizers ...,celo2): a shipped "
        "name, a directory or a Hub id; a comma list runs each set as its own column (default: Celo2's default)",
    )
    ev.add_argument(
        "--mulo-lr",
        type=float,
        default=1.0,
        help="nm presets: the lr of the μLO columns (default 1: the learned optimizer's own step size; each row "
        "records its lr — write rows of another lr to their own --out, the tables group by column, not lr)",
    )


def main(args) -> int:
    """Run ``mulo eval`` with the parsed ``args`` of :func:`add_parser`."""
    subsets = ("sweeps", "optimizers", "schedules", "datasets", "models")
    run(args.out, args.preset, args.meta_weights, args.sp_weights, **{name: getattr(args, name) for name in subsets},
        celo2_weights=args.celo2_weights, mulo_lr=args.mulo_lr)  # fmt: skip
    return 0
