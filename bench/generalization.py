"""What does the learned optimizer buy? Width/depth/horizon sweeps and an out-of-distribution task.

    python bench/generalization.py --preset cpu [--meta-weights DIR] [--sp-weights DIR]
    python bench/generalization.py --plot bench/results/generalization.jsonl

Rows are appended to bench/results/generalization.jsonl (see mulo/evaluation.py for the protocol);
--plot draws final training loss vs width (mean ± std over seeds) and loss curves per sweep.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def plot(path: Path, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["sweep"] != "tune"]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    final = defaultdict(list)
    for r in rows:
        if r["sweep"] == "width":
            final[(r["optimizer"], r["width"])].append(r["final_loss"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for opt in sorted({k[0] for k in final}):
        ws = sorted(w for o, w in final if o == opt)
        means = [statistics.fmean(final[(opt, w)]) for w in ws]
        ax.plot(ws, means, marker="o", label=opt)
    ax.set(xscale="log", yscale="log", xlabel="width", ylabel="final training loss", title="width sweep")
    ax.legend()
    fig.tight_layout()
    written.append(out_dir / "generalization_width.png")
    fig.savefig(written[-1], dpi=120)
    for sweep in sorted({r["sweep"] for r in rows}):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for r in rows:
            if r["sweep"] == sweep and r["seed"] == 0 and r["curve"]:
                steps, losses = zip(*r["curve"])
                ax.plot(steps, losses, lw=1, label=f"{r['optimizer']} {r['task']}")
        ax.set(yscale="log", xlabel="step", ylabel="training loss", title=f"{sweep} sweep (seed 0)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        written.append(out_dir / f"generalization_curves_{sweep}.png")
        fig.savefig(written[-1], dpi=120)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--out", default="bench/results/generalization.jsonl")
    ap.add_argument("--meta-weights", default=None)
    ap.add_argument("--sp-weights", default="mulo_cpu_sp", help="SP-LO weights ('none' skips the SP-LO)")
    ap.add_argument("--plot", default=None, help="only plot this results file")
    args = ap.parse_args()
    if args.plot:
        for p in plot(Path(args.plot), Path("bench/results/figures")):
            print(p)
        return
    from mulo import evaluation

    evaluation.run(args.out, args.preset, args.meta_weights, args.sp_weights)


if __name__ == "__main__":
    main()
