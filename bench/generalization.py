"""What does the learned optimizer buy? Width/depth/horizon sweeps and an out-of-distribution task.

    python bench/generalization.py --preset cpu [--sweeps ...] [--optimizers ...]   # = mulo eval (same options)
    python bench/generalization.py --plot bench/results/generalization.jsonl [--readme]

Rows are appended to bench/results/generalization.jsonl (see mulo/evaluation.py for the protocol). --plot
draws final training loss vs width (mean over seeds; diverged runs marked) and mean loss curves per task,
prints the summary table (mean ± std of the final training loss over seeds, per task and optimizer) and,
with --readme, rewrites the README's table between the eval markers. Rows of the chosen preset are used;
where the same run (sweep, task, optimizer, lr, seed) appears more than once, the last row counts.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- eval:generalization:begin -->"
END = "<!-- eval:generalization:end -->"
OPTIMIZERS = ("mulo", "muadam", "adamw", "sp_lo")
LABELS = {"mulo": "μLO", "muadam": "μAdam", "adamw": "AdamW", "sp_lo": "SP-LO"}
LEARNED = ("mulo", "sp_lo")  # columns per meta-weights
SWEEP_ORDER = ("width", "depth", "horizon", "ood_lm")


def _shipped_digests() -> dict[str, str]:
    """SHA-256 of each shipped model → its name (how a row's learned optimizer is identified)."""
    if str(ROOT) not in sys.path:  # run as a script from a checkout
        sys.path.insert(0, str(ROOT))
    from mulo.lopt import pretrained

    return {pretrained.model_digest(pretrained.weights_dir(name)): name for name in pretrained.names()}


def column(row: dict, digests: dict[str, str] | None = None) -> str:
    """The table column of a row: the optimizer, and for a learned one the meta-weights it ran with, named
    by the digest recorded in the row (a shipped name, else the digest's first 12 hex digits; rows written
    before digests were recorded keep the name they carry)."""
    opt = row["optimizer"]
    if opt not in LEARNED:
        return opt
    digest = row.get("meta_weights_sha256")
    named = [n for full, n in (digests or {}).items() if digest and full.startswith(digest)]  # rows keep a prefix
    name = (named[0] if named else None) or (digest[:12] if digest else None) or str(row.get("meta_weights"))
    return f"{opt}:{name}"


def label(col: str) -> str:
    opt, _, name = col.partition(":")
    return f"{LABELS[opt]} ({name})" if name else LABELS[opt]


def load(path: Path, preset: str | None = None) -> list[dict]:
    """The rows of ``path`` (of ``preset``), each with its ``column``; a rerun of the same (sweep, task,
    column, lr, seed) replaces the earlier row."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if preset is not None:
        rows = [r for r in rows if r.get("preset") == preset]
    digests = _shipped_digests()
    last = {}
    for r in rows:
        r["column"] = column(r, digests)
        last[(r["sweep"], r["task"], r["column"], r["lr"], r["seed"])] = r
    return list(last.values())


def _order(col: str) -> tuple:
    opt, _, name = col.partition(":")
    return (OPTIMIZERS.index(opt), name)


def _tasks(rows: list[dict]) -> list[tuple[str, str]]:
    """(sweep, task) in sweep order, then by size."""
    keys = {(r["sweep"], r["task"]): (r["width"], r["depth"], r["steps"]) for r in rows if r["sweep"] != "tune"}
    return sorted(keys, key=lambda k: (SWEEP_ORDER.index(k[0]) if k[0] in SWEEP_ORDER else 9, keys[k]))


def stats(rows: list[dict]) -> dict[tuple[str, str, str], dict]:
    """Per (sweep, task, optimizer): mean and std of the final loss over finite seeds, and divergences."""
    by = defaultdict(list)
    for r in rows:
        if r["sweep"] != "tune":
            by[(r["sweep"], r["task"], r["column"])].append(r)
    out = {}
    for key, rs in by.items():
        finite = [r["final_loss"] for r in rs if not r["diverged"] and math.isfinite(r["final_loss"])]
        out[key] = {
            "n": len(rs),
            "diverged": len(rs) - len(finite),
            "mean": statistics.fmean(finite) if len(finite) == len(rs) else math.inf,
            "std": statistics.pstdev(finite) if len(finite) > 1 else 0.0,
            "lr": rs[0]["lr"],
        }
    return out


def _describe(sweep: str, task: str, base: dict) -> str:
    w, d, t = (int(x[1:]) for x in task.split("-")[1:4])
    if sweep == "ood_lm":
        return f"OOD: byte-level transformer LM (w{w}, {d} blocks, {t} steps)"
    return {
        "width": f"width {w} ({w // base['width']}×)",
        "depth": f"depth {d} ({d // base['depth']}×)",
        "horizon": f"{t} steps ({t // base['steps']}×)",
    }.get(sweep, task)


def summary(rows: list[dict]) -> str:
    """Markdown table: mean ± std final training loss per task (rows) and optimizer (columns)."""
    if not rows:
        return "_No evaluation results yet: run `mulo eval`._"
    st = stats(rows)
    tasks = _tasks(rows)
    opts = sorted({k[2] for k in st}, key=_order)
    base_row = next(r for r in rows if r["sweep"] == "width")
    base = {
        "width": min(r["width"] for r in rows if r["sweep"] == "width"),
        "depth": base_row["depth"],
        "steps": base_row["steps"],
    }
    seeds = max(s["n"] for s in st.values())
    r0 = rows[0]
    tuned = [
        f"{LABELS[o]} lr {st[('width', tasks[0][1], o)]['lr']:g}"
        for o in ("adamw", "muadam")
        if ("width", tasks[0][1], o) in st
    ]
    lines = [
        f"Final training loss, mean ± std over {seeds} seeds (lower is better; **bold**: best mean). Base task: "
        f"μP MLP width {base['width']}, depth {base['depth']}, {base['steps']} steps on digits, batch 128. "
        + (f"{' and '.join(tuned)} tuned there and transferred. " if tuned else "")
        + f"Learned optimizers at lr 1, one column per set of meta-weights. "
        f"git {', '.join(sorted({r['git_sha'][:8] for r in rows}))} · torch {r0['torch_version']} · "
        f"{r0['device']} · {r0['date'][:10]}.",
        "",
        "| task | " + " | ".join(label(o) for o in opts) + " |",
        "|---|" + "---:|" * len(opts),
    ]
    for sweep, task in tasks:
        cells = {}
        for o in opts:
            s = st.get((sweep, task, o))
            if s is None:
                cells[o] = "—"
            elif s["diverged"]:
                cells[o] = f"diverged {s['diverged']}/{s['n']}"
            else:
                cells[o] = f"{s['mean']:.3g} ± {s['std']:.2g}"
        finite = {o: st[(sweep, task, o)]["mean"] for o in opts if (sweep, task, o) in st}
        best = min(finite, key=finite.get) if finite else None
        if best is not None and math.isfinite(finite[best]):
            cells[best] = f"**{cells[best]}**"
        lines.append(f"| {_describe(sweep, task, base)} | " + " | ".join(cells[o] for o in opts) + " |")
    return "\n".join(lines)


def rewrite_readme(table: str, readme: Path = ROOT / "README.md") -> bool:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        return False
    pre, rest = text.split(BEGIN, 1)
    _, post = rest.split(END, 1)
    readme.write_text(f"{pre}{BEGIN}\n{table}\n{END}{post}")
    return True


def plot(rows: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    st = stats(rows)
    written = []
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    width_tasks = [t for s, t in _tasks(rows) if s == "width"]
    widths = {t: int(t.split("-")[1][1:]) for t in width_tasks}
    top = max((s["mean"] for s in st.values() if math.isfinite(s["mean"])), default=1.0)
    columns = sorted({k[2] for k in st}, key=_order)
    for o in columns:
        pts = [(widths[t], st[("width", t, o)]) for t in width_tasks if ("width", t, o) in st]
        if not pts:
            continue
        xs = [w for w, _ in pts]
        ys = [s["mean"] if math.isfinite(s["mean"]) else top * 3 for _, s in pts]
        line = ax.plot(xs, ys, marker="o", label=label(o))[0]
        for (w, s), y in zip(pts, ys):
            if not math.isfinite(s["mean"]):
                ax.annotate("diverged", (w, y), fontsize=7, color=line.get_color())
    ax.set(xscale="log", yscale="log", xlabel="hidden width", ylabel="final training loss (mean of seeds)")
    ax.set_title("Width transfer (tuned at the smallest width)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out_dir / "generalization_width.png")
    fig.savefig(written[-1], dpi=130)
    plt.close(fig)

    tasks = _tasks(rows)
    ncol = 3
    nrow = math.ceil(len(tasks) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3 * nrow), squeeze=False)
    for ax, (sweep, task) in zip(axes.flat, tasks):
        for o in columns:
            curves = [
                r["curve"]
                for r in rows
                if r["sweep"] == sweep and r["task"] == task and r["column"] == o and r["curve"]
            ]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            steps = [c[0] for c in curves[0][:n]]
            mean = [statistics.fmean(c[i][1] for c in curves) for i in range(n)]
            ax.plot(steps, mean, lw=1, label=label(o))
        ax.set(yscale="log", title=f"{sweep}: {task}", xlabel="step")
        ax.title.set_fontsize(8)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    axes.flat[0].set_ylabel("training loss (mean of seeds)")
    fig.tight_layout()
    written.append(out_dir / "generalization_curves.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--plot" not in argv:  # running the evaluation: exactly `mulo eval` (same options)
        if __package__ in (None, ""):
            sys.path.insert(0, str(ROOT))
        from mulo import cli

        return cli.main(["eval", *argv])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plot", required=True, help="summarize and plot this results file")
    ap.add_argument("--preset", default="cpu", help="whose rows to use")
    ap.add_argument("--figures", default="bench/results/figures", help="where the figures go")
    ap.add_argument("--readme", action="store_true", help="rewrite the README's eval table")
    args = ap.parse_args(argv)
    rows = load(Path(args.plot), args.preset)
    if not rows:
        print(f"no rows of preset {args.preset!r} in {args.plot}", file=sys.stderr)
        return 2
    table = summary(rows)
    print(table)
    for p in plot(rows, Path(args.figures)):
        print(p)
    if args.readme and not rewrite_readme(table):
        print("README.md has no eval markers", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
