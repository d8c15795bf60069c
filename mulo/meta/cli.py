"""``mulo meta-train``: the command line of :mod:`mulo.meta.trainer`."""

from __future__ import annotations

import argparse
import sys

import torch

from mulo.meta.inner import INNER_SCHEDULES
from mulo.meta.presets import PRESETS


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "meta-train",
        help="meta-train μLO (or Celo2) meta-weights with PES (resumes when --out holds a checkpoint)",
        description="Meta-train μLO (or, with --rule celo2, Celo2) with PES (docs/ALGORITHM.md §7, docs/CELO2.md). "
        "Rerunning with the same --out resumes exactly; the meta-weights land in OUT/meta_weights (use them with "
        "MuLO(meta_weights=OUT/meta_weights), or Celo2(...) for --rule celo2).",
    )
    p.add_argument("--out", required=True, help="output directory: checkpoint.pt, log.jsonl, meta_weights/")
    p.add_argument("--outer-steps", type=int, default=None, help="total outer steps (default: the preset's)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="tiny",
        help="tiny (CI, CPU), small, mulo_cpu (the shipped recipe), mulo_nm (non-memorizable data, cosine inner "
        "schedule; 1 CPU core), mulo_m (GPU), celo2_cpu (Celo2's recipe on offline data; 1 CPU core)",
    )
    p.add_argument(
        "--rule",
        choices=("mulo", "celo2"),
        default=None,
        help="the update rule meta-trained: mulo (μLO, an LOptNet) or celo2 (Celo2, a Celo2Net; biases take AdamW) "
        "(default: the preset's: mulo for all but celo2_cpu)",
    )
    p.add_argument(
        "--inner-lr",
        type=float,
        default=None,
        help="Celo2 only: the inner runs' learning rate, the RMS of each weight matrix's step (default: the "
        "preset's, 1e-3 as in the paper)",
    )
    p.add_argument(
        "--orthogonalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Celo2 only: Newton–Schulz on the direction (Celo2); --no-orthogonalize meta-trains Celo2-base",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--dataset",
        default=None,
        help="data of every task family: 'digits', 'hf:NAME[:SPLIT]', a save_to_disk directory, or a "
        "non-memorizable source with a held-out split: 'mnist1d', 'digits_aug', 'teacher' (default: the preset's)",
    )
    p.add_argument("--parameterization", choices=("mup", "sp"), default=None, help="μP (μLO) or SP (SP LO)")
    p.add_argument("--estimator", choices=("pes", "es"), default=None)
    p.add_argument("--num-pairs", type=int, default=None, help="antithetic pairs per estimator (N)")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--lr-peak", type=float, default=None, help="outer AdamW peak LR (default: the preset's)")
    p.add_argument("--lr-final", type=float, default=None, help="outer LR after the cosine decay (default: preset's)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--meta-loss",
        choices=("normalized", "log"),
        default=None,
        help="per-step loss PES differences: normalized (docs/ALGORITHM.md §7) or log (weighs the low-loss end of "
        "training; default: the preset's)",
    )
    p.add_argument("--warmup-steps", type=int, default=None, help="outer LR warmup steps (default: the preset's)")
    p.add_argument(
        "--decay-end", type=int, default=None, help="outer step where the cosine decay ends (default: preset's)"
    )
    p.add_argument(
        "--label-noise",
        type=float,
        default=None,
        help="fraction of each inner batch's labels replaced by random classes, afresh every batch (default 0)",
    )
    p.add_argument("--max-length", type=int, default=None, help="longest inner horizon L (default: the preset's)")
    p.add_argument(
        "--inner-schedule",
        choices=INNER_SCHEDULES,
        default=None,
        help="learning-rate schedule of each inner run over its sampled length (MuLO's lr multiplies the step; "
        "default: the preset's, constant for all but mulo_nm)",
    )
    p.add_argument(
        "--inner-warmup",
        type=float,
        default=None,
        help="linear warmup over this fraction of each inner run, in [0, 1) (default: the preset's)",
    )
    p.add_argument(
        "--inner-lr-final",
        type=float,
        default=None,
        help="lr at the end of each inner run's decay, as a fraction of the peak, in [0, 1] (default 0)",
    )
    p.add_argument(
        "--inner-weight-decay",
        type=float,
        default=None,
        help="decoupled weight decay of the inner runs, as MuLO's weight_decay (default: the preset's, 0)",
    )
    p.add_argument(
        "--reparam-global",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reparameterize each inner task by a global scale s ~ log-uniform[1e-3, 1e3]: parameters start at "
        "w0/s, the loss is evaluated at s·w (default: the preset's, off)",
    )
    p.add_argument(
        "--time-clamp",
        type=float,
        default=None,
        help="the time features read min(t, T) instead of t, in meta-training and in every later use of the "
        "weights (stored in their config.json): a run longer than the horizon keeps seeing time features from "
        "the range meta-training saw. Give the longest inner horizon, e.g. 1000 (default: the preset's, none)",
    )
    p.add_argument(
        "--nominal",
        type=float,
        default=None,
        help="add the nominal term of size α (STAR, Harrison et al. 2022) to the μLO rule: a third output head n "
        "and step += α·exp(n·exp_mult)·mean_k m_k/√(v + 1e-6), an Adam-like descent direction; stored in the "
        "weights' config.json, so MuLO runs it on the cpu and reference backends. Starting from weights without "
        "it (--init-weights) adds a zero head (default: none, μLO's update)",
    )
    p.add_argument(
        "--meta-weight-decay",
        dest="weight_decay",
        type=float,
        default=None,
        help="decoupled weight decay of the outer AdamW on the meta-weights (default: the preset's, 1e-4)",
    )
    p.add_argument(
        "--init-weights",
        default=None,
        help="meta-weights to start from: an LOptNet directory or a shipped name (default: fresh init)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: small population tensors gain little from intra-op threads and "
        "lose a lot when cores are shared; raise it for wide tasks on an idle machine)",
    )
    p.add_argument(
        "--inner-backend",
        default="reference",
        help="backend of the inner optimizer steps: reference (default, vectorized over the population), "
        "auto, cpu and triton (the whole population in one fused call per pass), cuda (one fused step per member)",
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def config_from_args(args: argparse.Namespace):
    """The :class:`~mulo.meta.presets.MetaTrainConfig` the options ask for (the preset plus overrides)."""
    from mulo.meta.presets import preset

    # every override option of the parser, by its name in the preset (None: the preset's value)
    overrides = ("outer_steps", "dataset", "parameterization", "estimator", "num_pairs", "checkpoint_every",
        "seed", "lr_peak", "lr_final", "meta_loss", "label_noise", "max_length", "warmup_steps", "decay_end",
        "inner_schedule", "inner_warmup", "inner_lr_final", "inner_weight_decay", "reparam_global",
        "time_clamp", "rule", "inner_lr", "orthogonalize", "nominal", "weight_decay")  # fmt: skip
    return preset(args.preset, **{name: getattr(args, name) for name in overrides})


def run(args: argparse.Namespace) -> int:
    from mulo.meta.trainer import CheckpointError, meta_train

    if args.threads < 1:
        print(f"mulo meta-train: error: --threads must be ≥ 1, got {args.threads}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        config = config_from_args(args)
        weights = meta_train(
            config,
            args.out,
            device=args.device,
            init_weights=args.init_weights,
            progress=not args.no_progress,
            inner_backend=args.inner_backend,
        )
    except (ValueError, CheckpointError, OSError, ImportError, RuntimeError) as e:
        print(f"mulo meta-train: error: {e}", file=sys.stderr)
        return 2
    optimizer = "Celo2" if config.rule == "celo2" else "MuLO"
    print(f"meta-weights: {weights}  ({optimizer}(meta_weights={str(weights)!r}))")
    return 0
