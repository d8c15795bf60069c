"""Package a finished ``mulo meta-train`` run as shipped meta-weights with complete provenance.

    python -m mulo.meta.ship RUN_DIR NAME --preset mulo_cpu --command "mulo meta-train ..."

writes ``mulo/lopt/pretrained/NAME/`` (a μLO run) or ``mulo/celo2/pretrained/NAME/`` (a ``--rule celo2`` run;
or ``--dest``): the run's final meta-weights (``config.json``,
``model.safetensors``; ``info`` names the run), ``PROVENANCE.json`` (recipe, data, starting weights, outer
steps, wall time, hardware, versions, git SHAs, the meta-loss curve as numbers and a held-out check of the
final θ against the starting θ) and ``meta_loss.png``.

A run that starts from shipped weights (``--init-weights NAME``, e.g. a second stage with another meta-loss)
embeds the starting weights' own PROVENANCE.json under ``parent`` with their SHA-256, and totals outer
steps and wall time over the whole lineage (``lineage_outer_steps``, ``lineage_wall_time_s``), so shipping
under the same name keeps the full cost on record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from mulo.data.procedural import is_source
from mulo.lopt import pretrained
from mulo.meta.presets import MetaTrainConfig, family_labels
from mulo.meta.rules import rule_for
from mulo.meta.trainer import CHECKPOINT, LOG, SNAPSHOTS, WEIGHTS_DIR, evaluate
from mulo.provenance import cpu_model, git_sha

DATA = {
    "digits": "scikit-learn load_digits: 1,797 8×8 grey images of 10 digits (UCI optdigits test set), "
    "pixels /16 then standardized per pixel; the whole set is the training set",
    "digits_aug": "scikit-learn load_digits, fixed split 1,500 training / 297 held-out digits; every example "
    "shifted by up to 1 pixel and noised (σ 0.15) afresh (mulo.data.procedural.AugmentedDigitsSource)",
    "mnist1d": "MNIST-1D (PyPI mnist1d, make_dataset, seed 0): one pool of 1,000,000 procedurally generated "
    "40-point signals, 990,000 for training and 10,000 held out (mulo.data.procedural.mnist1d_pool)",
    "teacher": "x ~ N(0, I_32), labels sampled from a fixed random tanh teacher network's softmax (Bayes loss "
    "≈ 0.48 nats), fresh every batch; 10,000 held-out points (mulo.data.procedural.TeacherSource)",
}


def read_log(run: Path) -> list[dict]:
    rows = []
    for line in (run / LOG).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return sorted(rows, key=lambda r: r["outer_step"])


def curve_blocks(rows: list[dict], block: int) -> list[dict]:
    """The meta-loss curve in blocks of ``block`` outer steps: mean overall and per family."""
    out = []
    for start in range(0, len(rows), block):
        chunk = rows[start : start + block]
        fams = chunk[0].get("family_meta_loss", {})
        out.append(
            {
                "outer_steps": [chunk[0]["outer_step"], chunk[-1]["outer_step"]],
                "meta_loss": sum(r["meta_loss"] for r in chunk) / len(chunk),
                "family_meta_loss": {f: sum(r["family_meta_loss"][f] for r in chunk) / len(chunk) for f in fams},
                "lr": chunk[-1]["lr"],
            }
        )
    return out


def shipped_dir(rule: str) -> Path:
    """Where the weights of ``rule`` (mulo or celo2) ship: the package's pretrained directory."""
    return Path(__file__).resolve().parents[1] / ("celo2" if rule == "celo2" else "lopt") / "pretrained"


def parent_provenance(init_weights: str | None, rule: str = "mulo") -> dict | None:
    """The PROVENANCE.json of the starting weights (when they have one), with the SHA-256 of their
    model.safetensors; ``None`` for a fresh start or weights without provenance."""
    if not init_weights:
        return None
    path = Path(init_weights)
    if not path.is_dir():
        path = shipped_dir(rule) / init_weights
        if not (path / "config.json").is_file():
            return None
    prov_file = path / "PROVENANCE.json"
    if not prov_file.is_file():
        return None
    parent = json.loads(prov_file.read_text())
    parent["model_sha256"] = pretrained.model_digest(path)
    return parent


def plot_curve(rows: list[dict], blocks: list[dict], path: Path, title: str, meta_loss: str = "normalized") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["outer_step"] for r in rows], [r["meta_loss"] for r in rows], color="0.8", lw=0.5, label="per step")
    mid = [(b["outer_steps"][0] + b["outer_steps"][1]) / 2 for b in blocks]
    for fam in blocks[0]["family_meta_loss"]:
        ax.plot(mid, [b["family_meta_loss"][fam] for b in blocks], lw=1, label=f"{fam} (block mean)")
    ax.plot(mid, [b["meta_loss"] for b in blocks], color="k", lw=2, label="all families (block mean)")
    ax.set_xlabel("outer step")
    if meta_loss == "log":  # negative values: a linear axis of the mean log loss
        ax.set_ylabel("PES meta-loss (mean ln of the normalized train loss)")
    else:
        ax.set_ylabel("PES meta-loss (mean normalized train loss)")
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ship(
    run: str | os.PathLike,
    name: str,
    *,
    preset: str,
    command: str,
    dest: str | os.PathLike | None = None,
    description: str = "",
    block: int = 50,
    check_steps: int = 300,
    at_step: int | None = None,
    stop_reason: str = "",
    parent: str | os.PathLike | None = None,
) -> Path:
    """``at_step``: ship the snapshot ``RUN/snapshots/step_N`` (meta-weights copied when the checkpoint
    after N outer steps was written) instead of the final weights — an early stop, with ``stop_reason``.
    ``parent``: a shipped directory holding the starting weights with their provenance, for a run started
    from a bare ``meta_weights`` directory (its model must be byte-identical to the run's starting weights)."""
    run = Path(run)
    for part in (CHECKPOINT, LOG, WEIGHTS_DIR):
        if not (run / part).exists():
            raise FileNotFoundError(f"{run} has no {part}: pass the --out directory of a mulo meta-train run")
    ckpt = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)
    config = MetaTrainConfig.from_json(ckpt["config"])
    steps = int(ckpt["next_step"]) if at_step is None else at_step
    weights_dir = run / WEIGHTS_DIR if at_step is None else run / SNAPSHOTS / f"step_{at_step}"
    if not weights_dir.is_dir():
        raise FileNotFoundError(f"{weights_dir} does not exist: no snapshot of outer step {at_step}")
    rows = [r for r in read_log(run) if r["outer_step"] < steps]  # a live run logs past its checkpoint
    if [r["outer_step"] for r in rows] != list(range(steps)):
        raise ValueError(f"{run}/{LOG} does not hold one row per outer step up to {steps}")
    rule = rule_for(config)
    net = rule.load_net(weights_dir)
    if net.config.info.get("outer_steps") != steps:
        raise ValueError(
            f"{weights_dir} holds the weights of outer step {net.config.info.get('outer_steps')}, not {steps}"
        )
    theta = rule.flatten(net)
    init_weights = ckpt.get("init_weights")
    if init_weights:
        theta0 = rule.flatten(rule.load_net(init_weights))
    else:
        theta0 = rule.flatten(rule.fresh_net(torch.Generator().manual_seed(config.seed)))

    # held-out check: fresh seeds, the longest meta-training horizon, every family (lower is better)
    check = {}
    for i, label in enumerate(family_labels(config.families)):
        check[label] = {
            "start_theta": evaluate(theta0, config, steps=check_steps, family=i),
            "final_theta": evaluate(theta, config, steps=check_steps, family=i),
        }
        if is_source(config.families[i].dataset):  # data with a held-out split: its loss after training too
            for key, th in (("start_theta", theta0), ("final_theta", theta)):
                check[label][f"{key}_heldout_split"] = evaluate(
                    th, config, steps=check_steps, family=i, split="heldout"
                )

    dest = Path(dest) if dest is not None else shipped_dir(rule.name)
    out = dest / name
    tmp = dest / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    blocks = curve_blocks(rows, block)
    step_seconds = sum(r["seconds"] for r in rows)
    params = sorted({f.parameterization for f in config.families})
    if parent is None:
        parent_prov = parent_provenance(init_weights, rule.name)
    else:
        parent_prov = parent_provenance(str(parent), rule.name)
        if parent_prov is None:
            raise FileNotFoundError(f"--parent {parent} holds no PROVENANCE.json")
        start = pretrained.model_digest(init_weights) if init_weights else None
        if start is None or start != parent_prov["model_sha256"]:
            raise ValueError(f"--parent {parent} does not hold the run's starting weights ({init_weights})")
    parent = parent_prov
    lineage_steps, lineage_seconds = steps, step_seconds
    if parent is not None:
        lineage_steps += parent.get("lineage_outer_steps", parent.get("outer_steps", 0))
        lineage_seconds += parent.get("lineage_wall_time_s", parent.get("wall_time_s", 0.0))
    provenance = {
        "name": name,
        "rule": rule.name,
        "description": description,
        "parameterization": params[0] if len(params) == 1 else params,
        "preset": preset,
        "command": command,
        "config": config.to_json(),
        "init_weights": init_weights,
        "parent": parent,
        "data": {f.dataset: DATA.get(f.dataset, f.dataset) for f in config.families},
        "outer_steps": steps,
        "planned_outer_steps": config.outer_steps,
        "stopped_early": None if at_step is None else {"at_outer_step": at_step, "reason": stop_reason},
        "wall_time_s": round(step_seconds, 1),
        "wall_time_note": "sum of the logged outer-step times (checkpoint writes excluded)",
        "lineage_outer_steps": lineage_steps,
        "lineage_wall_time_s": round(lineage_seconds, 1),
        "hardware": {
            "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "torch_threads": 1,
            "gpu": None,
        },
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "git_sha_shipped_at": git_sha(),
        "shipped_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "meta_loss": {
            "first_block": blocks[0]["meta_loss"],
            "last_block": blocks[-1]["meta_loss"],
            "block": block,
            "curve": blocks,
        },
        f"held_out_mean_normalized_loss_over_{check_steps}_steps": check,
    }
    net.config.info.update(
        {
            "name": name,
            "placeholder": False,
            "description": description,
            "provenance": "PROVENANCE.json",
            "outer_steps": steps,
        }
    )
    net.save_pretrained(tmp)
    (tmp / "PROVENANCE.json").write_text(json.dumps(provenance, indent=1) + "\n")
    plot_curve(rows, blocks, tmp / "meta_loss.png", f"{name}: PES meta-training ({preset})", config.meta_loss)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="the --out directory of a finished (or stopped) mulo meta-train run")
    ap.add_argument(
        "name", help="name of the shipped weights (a directory under mulo/lopt/pretrained, or mulo/celo2/pretrained "
        "for a --rule celo2 run)"
    )  # fmt: skip
    ap.add_argument("--preset", required=True, help="the preset the run used")
    ap.add_argument("--command", required=True, help="the exact command line of the run")
    ap.add_argument("--description", default="")
    ap.add_argument("--dest", default=None, help="where to write NAME/ (default: mulo/lopt/pretrained)")
    ap.add_argument("--at-step", type=int, default=None, help="ship RUN/snapshots/step_N (an early stop)")
    ap.add_argument("--stop-reason", default="", help="why --at-step stops early (recorded in the provenance)")
    ap.add_argument(
        "--parent",
        default=None,
        help="shipped directory of the starting weights (with PROVENANCE.json), when the run started from a "
        "bare meta_weights directory; its lineage is kept",
    )
    ap.add_argument("--check-steps", type=int, default=300, help="inner steps of the held-out check (default 300)")
    args = ap.parse_args(argv)
    try:
        options = ("preset", "command", "dest", "description", "check_steps", "at_step", "stop_reason", "parent")
        out = ship(args.run, args.name, **{name: getattr(args, name) for name in options})
    except (FileNotFoundError, ValueError) as e:
        print(f"mulo.meta.ship: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
