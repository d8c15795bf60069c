"""What does the learned optimizer buy? Width/depth/horizon sweeps and an out-of-distribution task.

    python bench/generalization.py --preset cpu [--sweeps ...] [--optimizers ...]   # = mulo eval (same options)
    python bench/generalization.py --plot bench/results/generalization.jsonl [--readme]
    python bench/generalization.py --plot bench/results/heldout.jsonl --preset nm [--readme]
    python bench/generalization.py --plot bench/results/models.jsonl --preset models [--readme]

Rows are appended by `mulo eval` (see mulo/evaluation.py and mulo/eval/ for the protocols). --plot reads
the rows of the chosen preset; where the same run (sweep, task, column, lr, seed) appears more than once,
the last row counts. A column is an optimizer, its lr schedule ("+cos": warmup-cosine) and, for a learned
optimizer, its meta-weights (named by the digest a row records).

* memorizable presets (cpu, quick): final training loss vs width and mean loss curves per task; the summary
  table (mean ± std of the final training loss over seeds) → the README between the eval:generalization
  markers.
* held-out presets (nm, nm_quick): the held-out loss table (mean ± std over seeds, divergences counted, the
  best mean of the columns without divergence in bold) with the training-loss table folded under it →
  between the eval:heldout markers; figures: held-out loss vs width, held-out curves of the longest runs.
* models presets (models, models_quick): held-out loss per model and optimizer, and the median ms of a
  training step and of opt.step() alone → between the eval:models markers; figure: held-out curves.
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
MARKERS = {
    "memorizable": (BEGIN, END),
    "heldout": ("<!-- eval:heldout:begin -->", "<!-- eval:heldout:end -->"),
    "models": ("<!-- eval:models:begin -->", "<!-- eval:models:end -->"),
    "ablation": ("<!-- eval:ablation:begin -->", "<!-- eval:ablation:end -->"),
}
OPTIMIZERS = ("mulo", "celo2", "muadam", "adamw", "sp_lo")
LABELS = {"mulo": "μLO", "celo2": "Celo2", "muadam": "μAdam", "adamw": "AdamW", "sp_lo": "SP-LO"}
COSINE = "+cos"  # suffix of a column whose lr followed the warmup-cosine schedule
LEARNED = ("mulo", "sp_lo", "celo2")  # columns per meta-weights
TUNED = ("muadam", "adamw", "celo2")  # the columns whose lr was tuned (the tables list it)
SWEEP_ORDER = ("width", "depth", "horizon", "ood_lm")


def _shipped_digests() -> dict[str, str]:
    """SHA-256 of each shipped model → its name (how a row's learned optimizer is identified)."""
    if str(ROOT) not in sys.path:  # run as a script from a checkout
        sys.path.insert(0, str(ROOT))
    from mulo.celo2 import pretrained as celo2_pretrained
    from mulo.lopt import pretrained

    out = {pretrained.model_digest(pretrained.weights_dir(name)): name for name in pretrained.names()}
    for name in celo2_pretrained.names():
        out[pretrained.model_digest(celo2_pretrained.weights_dir(name))] = name
    return out


def column(row: dict, digests: dict[str, str] | None = None) -> str:
    """The table column of a row: the optimizer, and for a learned one the meta-weights it ran with, named
    by the digest recorded in the row (a shipped name), else by the directory it was loaded from, else by the
    digest's first 12 hex digits (rows written before digests were recorded keep the name they carry);
    ``@tN`` marks weights whose config clamps the time features at N."""
    opt = row["optimizer"]
    suffix = COSINE if row.get("schedule") == "cosine" else ""
    if opt not in LEARNED:
        return opt + suffix
    digest = row.get("meta_weights_sha256")
    named = [n for full, n in (digests or {}).items() if digest and full.startswith(digest)]  # rows keep a prefix
    path = str(row.get("meta_weights") or "")
    local = Path(path).name if "/" in path else ""  # a directory of weights: its name
    name = (named[0] if named else None) or local or (digest[:12] if digest else None) or path
    if row.get("meta_weights_time_clamp") is not None:  # same weights file, time features clamped
        name += f"@t{row['meta_weights_time_clamp']:g}"
    return f"{opt}:{name}{suffix}"


def _split(col: str) -> tuple[str, str, bool]:
    """(optimizer, meta-weights name or "", warmup-cosine?) of a column."""
    cosine = col.endswith(COSINE)
    opt, _, name = col.removesuffix(COSINE).partition(":")
    return opt, name, cosine


def label(col: str) -> str:
    opt, name, cosine = _split(col)
    return (f"{LABELS[opt]} ({name})" if name else LABELS[opt]) + (" + cos" if cosine else "")


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
    opt, name, cosine = _split(col)
    return (OPTIMIZERS.index(opt), name, cosine)


def _tasks(rows: list[dict]) -> list[tuple[str, str]]:
    """(sweep, task) in sweep order, then by size."""
    keys = {(r["sweep"], r["task"]): (r["width"], r["depth"], r["steps"]) for r in rows if r["sweep"] != "tune"}
    return sorted(keys, key=lambda k: (SWEEP_ORDER.index(k[0]) if k[0] in SWEEP_ORDER else 9, keys[k]))


def _by_cell(rows: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """The evaluated runs (not the lr tuning) grouped by table cell: (sweep, task, column)."""
    by = defaultdict(list)
    for r in rows:
        if r["sweep"] != "tune":
            by[(r["sweep"], r["task"], r["column"])].append(r)
    return by


def stats(rows: list[dict]) -> dict[tuple[str, str, str], dict]:
    """Per (sweep, task, optimizer): mean and std of the final loss over finite seeds, and divergences."""
    out = {}
    for key, rs in _by_cell(rows).items():
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


def rewrite_readme(table: str, readme: Path = ROOT / "README.md", kind: str = "memorizable") -> bool:
    """Replace what lies between ``kind``'s markers (:data:`MARKERS`) in ``readme`` by ``table``."""
    begin, end = MARKERS[kind]
    text = readme.read_text()
    if begin not in text or end not in text:
        return False
    pre, rest = text.split(begin, 1)
    _, post = rest.split(end, 1)
    readme.write_text(f"{pre}{begin}\n{table}\n{end}{post}")
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


# ---- held-out presets (nm) and plain models (models) ----------------------------------------------------
DATASET_ORDER = ("mnist1d", "digits_aug", "teacher")
HELDOUT_SWEEPS = ("width", "depth", "horizon", "ood_lm")
MODEL_ORDER = ("gpt", "cnn", "vit")


def kind_of(rows: list[dict]) -> str:
    """``memorizable``, ``heldout`` or ``models``: which protocol wrote ``rows``."""
    kinds = {r.get("protocol", "memorizable") for r in rows}
    if len(kinds) != 1:
        raise ValueError(f"rows of several protocols {sorted(kinds)}: pick one preset")
    return kinds.pop()


def metric_stats(rows: list[dict], metric: str = "heldout_loss") -> dict[tuple[str, str, str], dict]:
    """Per (sweep, task, column): runs, divergences, mean and std of ``metric`` over the seeds that did not
    diverge, the lr, and the median step / opt.step() times."""
    out = {}
    for key, rs in _by_cell(rows).items():
        finite = [r[metric] for r in rs if not r["diverged"] and math.isfinite(r[metric])]
        times = [r.get("step_ms") for r in rs if r.get("step_ms")]
        opt_times = [r.get("opt_step_ms") for r in rs if r.get("opt_step_ms")]
        out[key] = {
            "n": len(rs),
            "diverged": len(rs) - len(finite),
            "mean": statistics.fmean(finite) if finite else math.inf,
            "std": statistics.pstdev(finite) if len(finite) > 1 else 0.0,
            "lr": rs[0]["lr"],
            "step_ms": statistics.median(times) if times else None,
            "opt_step_ms": statistics.median(opt_times) if opt_times else None,
        }
    return out


def _cell(s: dict | None) -> str:
    if s is None:
        return "—"
    if s["diverged"] == s["n"]:
        return f"diverged {s['n']}/{s['n']}"
    text = f"{s['mean']:.4g} ± {s['std']:.2g}"
    return text + (f" ({s['diverged']}/{s['n']} div.)" if s["diverged"] else "")


def _table(lines: list[str], keys: list[tuple], names: list[str], cols: list[str], st: dict) -> None:
    """Append a markdown table: one line per (sweep, task) key, one column per optimizer column; the best
    mean among the columns without divergence in bold."""
    lines += ["| task | " + " | ".join(label(c) for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for (sweep, task), name in zip(keys, names):
        stats_ = {c: st.get((sweep, task, c)) for c in cols}
        cells = {c: _cell(v) for c, v in stats_.items()}
        clean = {c: v["mean"] for c, v in stats_.items() if v is not None and not v["diverged"]}
        if clean:
            best = min(clean, key=clean.get)
            cells[best] = f"**{cells[best]}**"
        lines.append(f"| {name} | " + " | ".join(cells[c] for c in cols) + " |")


def _provenance_line(rows: list[dict]) -> str:
    r0 = rows[0]
    threads = sorted({r.get("threads") for r in rows if r.get("threads")})
    return (
        f"git {', '.join(sorted({r['git_sha'][:8] for r in rows}))} · torch {r0['torch_version']} · {r0['device']}"
        + (f" · {'/'.join(map(str, threads))} thread(s)" if threads else "")
        + f" · {max(r['date'] for r in rows)[:10]}."
    )


def _heldout_tasks(rows: list[dict]) -> tuple[list[tuple[str, str]], list[str]]:
    """(sweep, task) keys in table order (per data set: widths, depth, horizons; then the LM) and names."""
    info = {}
    for r in rows:
        if r["sweep"] != "tune":
            info[(r["sweep"], r["task"])] = r
    base = {}
    for r in info.values():
        if r["kind"] == "mlp":
            b = base.setdefault(r["dataset"], {"width": r["base_width"], "depth": r["depth"], "steps": r["steps"]})
            b["depth"], b["steps"] = min(b["depth"], r["depth"]), min(b["steps"], r["steps"])

    def order(key):
        r = info[key]
        ds = DATASET_ORDER.index(r["dataset"]) if r["dataset"] in DATASET_ORDER else len(DATASET_ORDER)
        lm = r["kind"] == "lm"
        return (lm, ds, r["dataset"], HELDOUT_SWEEPS.index(r["sweep"]), r["width"], r["depth"], r["steps"])

    keys = sorted(info, key=order)
    names = []
    for key in keys:
        r = info[key]
        if r["kind"] == "lm":
            blocks = f"{r['depth']} block{'s' if r['depth'] > 1 else ''}"
            names.append(f"OOD: byte-level transformer LM (w{r['width']}, {blocks}, {r['steps']} steps)")
            continue
        b = base[r["dataset"]]
        names.append(
            f"{r['dataset']} · "
            + {
                "width": f"width {r['width']} ({r['width'] // b['width']}×)",
                "depth": f"depth {r['depth']} ({r['depth'] // b['depth']}×)",
                "horizon": f"{r['steps']} steps ({r['steps'] // b['steps']}×)",
            }[r["sweep"]]
        )
    return keys, names


def _tuned(rows: list[dict], keys: list[tuple], cols: list[str], st: dict) -> str:
    """The transferred lrs: per data set (its 1× width task) and for the LM, each baseline column's lr."""
    parts = []
    first = {}
    for sweep, task in keys:
        prefix = task.split("-")[0]
        if (sweep == "width" or sweep == "ood_lm") and prefix not in first:
            first[prefix] = (sweep, task)
    for prefix, (sweep, task) in first.items():
        lrs = [f"{label(c)} {st[(sweep, task, c)]['lr']:g}" for c in cols if (sweep, task, c) in st]
        lrs = [x for x, c in zip(lrs, [c for c in cols if (sweep, task, c) in st]) if _split(c)[0] in TUNED]
        if lrs:
            parts.append(f"{'LM' if prefix == 'lm' else prefix}: {', '.join(lrs)}")
    return "; ".join(parts)


def heldout_summary(rows: list[dict]) -> str:
    """Markdown: the held-out loss table (and the training-loss table under a fold) of the nm presets."""
    tune_seeds = len({r["seed"] for r in rows if r["sweep"] == "tune"})
    rows = [r for r in rows if r["sweep"] != "tune"]
    if not rows:
        return "_No held-out results yet: run `mulo eval --preset nm`._"
    st, st_train = metric_stats(rows, "heldout_loss"), metric_stats(rows, "train_loss")
    keys, names = _heldout_tasks(rows)
    cols = sorted({k[2] for k in st}, key=_order)
    seeds = max(s["n"] for s in st.values())
    mlp = [r for r in rows if r["kind"] == "mlp"]
    bases = sorted(
        {(r["dataset"], r["base_width"]) for r in mlp},
        key=lambda b: DATASET_ORDER.index(b[0]) if b[0] in DATASET_ORDER else 9,
    )
    depth = min((r["depth"] for r in mlp), default=0)
    steps = min((r["steps"] for r in mlp), default=0)
    batch = mlp[0]["batch"] if mlp else 0
    tuned = _tuned(rows, keys, cols, st)
    lines = [
        f"Held-out loss (cross-entropy on each source's fixed held-out set; the LM: windows of held-out text), "
        f"mean ± std over {seeds} seeds; (k/n div.): k of n seeds diverged (non-finite loss), the mean is over "
        f"the others; **bold**: the best mean among the columns without a divergence. Fresh training samples "
        f"every step. Base tasks (the mulo_nm meta-training's): μP MLPs "
        f"{', '.join(f'{d} w{w}' for d, w in bases)}, depth {depth}, {steps} steps, batch {batch}. μAdam (μP "
        f"network) and AdamW (SP twin) peak lrs tuned there by a grid on the held-out loss of {tune_seeds} "
        f"tuning seeds, per schedule, and transferred"
        + (f" ({tuned})" if tuned else "")
        + "; learned optimizers at lr 1. + cos: linear warmup over 5% of the run, cosine to 0 at its last step. "
        + _provenance_line(rows),
        "",
    ]
    _table(lines, keys, names, cols, st)
    summary = "<details><summary>Training loss on a fixed sample of the training distribution (the same runs)</summary>"
    lines += ["", summary, ""]
    _table(lines, keys, names, cols, st_train)
    lines += ["", "</details>"]
    return "\n".join(lines)


ABLATION_CELLS = ("16× width", "25× horizon")


def _ablation_cells(rows: list[dict]) -> dict[tuple[str, str], tuple[str, str]]:
    """(data set, cell name) → (sweep, task) of the ablation's cells: each data set's MLP 16× wider than its
    base task, and its longest horizon (25× in the nm preset)."""
    longest = defaultdict(int)
    for r in rows:
        if r["kind"] == "mlp" and r["sweep"] == "horizon":
            longest[r["dataset"]] = max(longest[r["dataset"]], r["steps"])
    out = {}
    for r in rows:
        if r["kind"] == "mlp" and r["sweep"] == "width" and r["width"] == 16 * r["base_width"]:
            out[(r["dataset"], ABLATION_CELLS[0])] = ("width", r["task"])
        elif r["kind"] == "mlp" and r["sweep"] == "horizon" and r["steps"] == longest[r["dataset"]]:
            out[(r["dataset"], ABLATION_CELLS[1])] = ("horizon", r["task"])
    return out


def ablation_summary(rows: list[dict]) -> str:
    """Markdown: one line per learned-optimizer variant (meta-weights, time clamp, schedule) and the baselines,
    one column per (data set, 16× width / 25× horizon): held-out mean over seeds, the worst seed, divergences,
    and ✓ where every seed of the variant is at or below the mean of μAdam's better form (constant or
    warmup-cosine) on that task — issue 15's bar."""
    rows = [r for r in rows if r["sweep"] != "tune"]
    cells = _ablation_cells(rows)
    if not cells:
        return "_No 16×-width or horizon rows yet._"
    by = _by_cell(rows)
    keys = sorted(
        cells, key=lambda k: (DATASET_ORDER.index(k[0]) if k[0] in DATASET_ORDER else 9, ABLATION_CELLS.index(k[1]))
    )
    cols = sorted({c for (_, _, c) in by}, key=_order)

    def mean(rs):
        finite = [r["heldout_loss"] for r in rs if not r["diverged"] and math.isfinite(r["heldout_loss"])]
        return statistics.fmean(finite) if finite else math.inf

    bar = {}
    for key in keys:
        sweep, task = cells[key]
        muadam = [mean(rs) for (sw, t, c), rs in by.items() if (sw, t) == (sweep, task) and _split(c)[0] == "muadam"]
        bar[key] = min(muadam, default=math.inf)
    lines = [
        "Held-out loss, mean over seeds (worst seed); ✓: every seed at or below μAdam's better form (bold "
        "μAdam cell) on that task; k div.: seeds with a non-finite loss. " + _provenance_line(rows),
        "",
        "| variant | " + " | ".join(f"{d} {n}" for d, n in keys) + " | ✓ |",
        "|---|" + "---:|" * (len(keys) + 1),
    ]
    for c in cols:
        out, wins = [], 0
        for key in keys:
            rs = by.get((*cells[key], c))
            if not rs:
                out.append("—")
                continue
            losses = [r["heldout_loss"] if not r["diverged"] else math.inf for r in rs]
            div = sum(1 for x in losses if not math.isfinite(x))
            worst = max(losses)
            text = f"{mean(rs):.3f} ({worst:.3f})" if math.isfinite(worst) else f"{mean(rs):.3f} ({div} div.)"
            if _split(c)[0] == "muadam" and mean(rs) == bar[key]:
                text = f"**{text}**"
            elif _split(c)[0] in LEARNED and worst <= bar[key]:
                text += " ✓"
                wins += 1
            out.append(text)
        if all(cell == "—" for cell in out):  # no row at 16× width or 25× horizon (e.g. base-task comparisons)
            continue
        total = f"{wins}/{len(keys)}" if _split(c)[0] in LEARNED else ""
        lines.append(f"| {label(c)} | " + " | ".join(out) + f" | {total} |")
    return "\n".join(lines)


def _model_name(r: dict) -> str:
    params = f"{r['parameters'] / 1e3:.0f}k params" if r.get("parameters") else ""
    w, d = r["width"], r["depth"]
    blocks = f"{d} block{'s' if d > 1 else ''}"
    return {
        "gpt": f"GPT byte LM (d{w}, {blocks}, tied head, {params})",
        "cnn": f"CNN on digits_aug ({w}/{w}/{2 * w} channels, {params})",
        "vit": f"ViT on digits_aug (d{w}, {blocks}, 2×2 patches, {params})",
    }.get(r["model"], r["task"])


def models_summary(rows: list[dict]) -> str:
    """Markdown: held-out loss per plain model and optimizer column, then ms per step / per opt.step()."""
    tune_seeds = len({r["seed"] for r in rows if r["sweep"] == "tune"})
    rows = [r for r in rows if r["sweep"] != "tune"]
    if not rows:
        return "_No plain-model results yet: run `mulo eval --preset models`._"
    st = metric_stats(rows, "heldout_loss")
    info = {r["task"]: r for r in rows}
    tasks = sorted(
        info, key=lambda t: (MODEL_ORDER.index(info[t]["model"]) if info[t]["model"] in MODEL_ORDER else 9, t)
    )
    keys, names = [("models", t) for t in tasks], [_model_name(info[t]) for t in tasks]
    cols = sorted({k[2] for k in st}, key=_order)
    seeds = max(s["n"] for s in st.values())
    steps = sorted({info[t]["steps"] for t in tasks})
    tuned = ", ".join(
        f"{info[t]['model']} {label(c)} {st[('models', t, c)]['lr']:g}"
        for t in tasks
        for c in cols
        if ("models", t, c) in st and _split(c)[0] in TUNED
    )
    lines = [
        f"Held-out loss after {'/'.join(map(str, steps))} steps, mean ± std over {seeds} seeds (**bold**: best "
        f"mean without a divergence). Plain torch.nn models; μLO trains each after `mulo.mup.prepare` at lr 1, "
        f"AdamW (weight decay 0) the model as written at the grid lr with the lowest held-out loss of "
        f"{tune_seeds} tuning seeds, per schedule ({tuned}). + cos: 5% warmup, cosine to 0. " + _provenance_line(rows),
        "",
    ]
    _table(lines, keys, names, cols, st)
    header = "| model | " + " | ".join(label(c) for c in cols) + " |"
    timing = "Median wall time per training step (forward, backward, `opt.step()`) / of `opt.step()` alone, ms:"
    lines += ["", timing, "", header, "|---|" + "---:|" * len(cols)]
    for t, name in zip(tasks, names):
        cells = []
        for c in cols:
            s = st.get(("models", t, c))
            cells.append(f"{s['step_ms']:.3g} / {s['opt_step_ms']:.3g}" if s and s["step_ms"] else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_curve(curves: list[list]) -> tuple[list, list]:
    n = min(len(c) for c in curves)
    return [c[0] for c in curves[0][:n]], [statistics.fmean(c[i][1] for c in curves) for i in range(n)]


def plot_heldout(rows: list[dict], out_dir: Path) -> list[Path]:
    """held-out loss vs width (one panel per data set) and the mean held-out curves of each data set's
    longest runs (and the LM's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for r in rows if r["sweep"] != "tune"]
    st = metric_stats(rows, "heldout_loss")
    cols = sorted({k[2] for k in st}, key=_order)
    datasets = sorted({r["dataset"] for r in rows if r["kind"] == "mlp"}, key=lambda d: (d not in DATASET_ORDER, d))
    written = []
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(4.2 * max(1, len(datasets)), 3.4), squeeze=False)
    for ax, ds in zip(axes.flat, datasets):
        tasks = sorted({(r["width"], r["task"]) for r in rows if r["sweep"] == "width" and r["dataset"] == ds})
        for c in cols:
            pts = [(w, st[("width", t, c)]["mean"]) for w, t in tasks if ("width", t, c) in st]
            pts = [(w, m) for w, m in pts if math.isfinite(m)]
            if pts:
                ax.plot(*zip(*pts), marker="o", lw=1, label=label(c))
        ax.set(xscale="log", title=ds, xlabel="hidden width")
        ax.title.set_fontsize(9)
    written.append(_finish(fig, axes, out_dir / "heldout_width.png"))

    groups = []
    for ds in datasets:
        mine = [r for r in rows if r["dataset"] == ds and r["kind"] == "mlp"]
        longest = max(r["steps"] for r in mine)
        groups.append((ds, [r for r in mine if r["steps"] == longest]))
    lm = [r for r in rows if r["kind"] == "lm"]
    if lm:
        groups.append(("OOD LM", lm))
    if groups:
        fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False)
        for ax, (title, rs) in zip(axes.flat, groups):
            for c in cols:
                curves = [
                    r["heldout_curve"] for r in rs if r["column"] == c and not r["diverged"] and r["heldout_curve"]
                ]
                if curves:
                    ax.plot(*_mean_curve(curves), lw=1, label=label(c))
            ax.set(title=f"{title}: {rs[0]['steps'] if rs else ''} steps", xlabel="step")
            ax.title.set_fontsize(9)
        written.append(_finish(fig, axes, out_dir / "heldout_horizon.png"))
    return written


def _finish(fig, axes, path: Path) -> Path:
    """Label the first panel, save ``fig`` to ``path`` and close it."""
    import matplotlib.pyplot as plt

    axes.flat[0].set_ylabel("held-out loss (mean of seeds)")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_models(rows: list[dict], out_dir: Path) -> list[Path]:
    """The mean held-out curves of each plain model, one line per optimizer column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for r in rows if r["sweep"] != "tune"]
    tasks = sorted({r["task"] for r in rows})
    cols = sorted({r["column"] for r in rows}, key=_order)
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(4.2 * max(1, len(tasks)), 3.4), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for c in cols:
            curves = [r["heldout_curve"] for r in rows if r["task"] == task and r["column"] == c and not r["diverged"]]
            if curves:
                ax.plot(*_mean_curve(curves), lw=1, label=label(c))
        ax.set(title=task, xlabel="step")
        ax.title.set_fontsize(9)
    axes.flat[0].set_ylabel("held-out loss (mean of seeds)")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    path = out_dir / "models_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--plot" not in argv:  # running the evaluation: exactly `mulo eval` (same options)
        if __package__ in (None, ""):
            sys.path.insert(0, str(ROOT))
        from mulo import cli

        return cli.main(["eval", *argv])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plot", required=True, action="append", help="summarize and plot this results file "
                    "(repeatable: the rows of every file)")  # fmt: skip
    ap.add_argument("--ablation", action="store_true", help="the held-out ablation table (learned-optimizer "
                    "variants at 16× width and 25× horizon against μAdam) instead of the full tables")  # fmt: skip
    ap.add_argument("--preset", default="cpu", help="whose rows to use (cpu, quick, nm, nm_quick, models, ...)")
    ap.add_argument("--figures", default="bench/results/figures", help="where the figures go")
    ap.add_argument("--readme", action="store_true", help="rewrite the README's table of this protocol")
    args = ap.parse_args(argv)
    rows = [r for path in args.plot for r in load(Path(path), args.preset)]
    if not rows:
        print(f"no rows of preset {args.preset!r} in {', '.join(args.plot)}", file=sys.stderr)
        return 2
    kind = "ablation" if args.ablation else kind_of(rows)
    table, draw = {
        "memorizable": (summary, plot),
        "heldout": (heldout_summary, plot_heldout),
        "models": (models_summary, plot_models),
        "ablation": (ablation_summary, lambda rows, out: []),
    }[kind]
    table = table(rows)
    print(table)
    for p in draw(rows, Path(args.figures)):
        print(p)
    if args.readme and not rewrite_readme(table, kind=kind):
        print(f"README.md has no {kind} eval markers ({MARKERS[kind][0]})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
