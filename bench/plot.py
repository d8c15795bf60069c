"""Figures and the README table, regenerated from the step-time rows (never edited by hand).

    python bench/plot.py                 # figures for the latest run per device → bench/results/figures/
    python bench/plot.py --readme        # also rewrite the table between the README's bench markers
    python bench/plot.py --results a.jsonl --results b.jsonl --out-dir /tmp/figs

The latest run (``run_id``) per device type is what gets drawn and tabulated; older rows stay in the JSONL.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

BEGIN = "<!-- bench:step_time:begin -->"
END = "<!-- bench:step_time:end -->"
README = common.ROOT / "README.md"
DEFAULT_RESULTS = common.RESULTS_DIR / "step_time.jsonl"


def load_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        for i, line in enumerate(path.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{i + 1}: not JSON ({e})") from e
            if row.get("schema") == common.SCHEMA:
                rows.append(row)
    return rows


def latest_runs(rows: list[dict]) -> dict[str, list[dict]]:
    """Device type → the rows of the most recent run on it (by the run's latest date)."""
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        runs[(r["device_type"], r["run_id"])].append(r)
    best: dict[str, tuple[str, list[dict]]] = {}
    for (dev, _), rs in runs.items():
        date = max(r["date"] for r in rs)
        if dev not in best or date > best[dev][0]:
            best[dev] = (date, rs)
    return {dev: rs for dev, (_, rs) in sorted(best.items())}


def label(r: dict) -> str:
    return f"μLO {r['backend']}" if r["optimizer"] == "mulo" else r["optimizer"].replace("adamw_", "AdamW ")


def ordered_sets(rows: list[dict]) -> list[str]:
    model = [s for s in dict.fromkeys(r["set"] for r in rows) if not s.startswith("synthetic-")]
    synth = sorted({r["set"] for r in rows if r["set"].startswith("synthetic-")}, key=lambda s: int(s.split("-")[1]))
    return model + synth


def readme_table(runs: dict[str, list[dict]]) -> str:
    """Markdown: per device's latest run, one line per set — fused AdamW's time, then each μLO backend's
    ratio to it and the fraction of the hardware floor it reaches."""
    if not runs:
        return "_No step-time results yet: run `python bench/step_time.py --quick`._"
    parts = []
    for dev, rows in runs.items():
        r0 = rows[0]
        backends = list(dict.fromkeys(r["backend"] for r in rows if r["optimizer"] == "mulo"))
        head = (
            f"**{dev.upper()}: {r0['device']}** ({r0['cpu_threads']} threads) · torch {r0['torch_version']} · "
            f"{r0['date'][:10]} · git {r0['git_sha'][:8]} · copy {r0['copy_bandwidth_GBps']:.0f} GB/s"
            if dev == "cpu"
            else f"**{dev.upper()}: {r0['device']}** · torch {r0['torch_version']} · CUDA {r0['cuda_version']} · "
            f"triton {r0['triton_version']} · {r0['date'][:10]} · git {r0['git_sha'][:8]} · copy "
            f"{r0['copy_bandwidth_GBps']:.0f} GB/s"
        )
        lines = [
            head,
            "",
            "| set | elements | AdamW fused | " + "".join(f"μLO `{b}` (× fused, % of floor) | " for b in backends),
            "|---|---:|---:|" + "---:|" * len(backends),
        ]
        by = {(r["set"], r["optimizer"], r["backend"]): r for r in rows}
        for s in ordered_sets(rows):
            base = by.get((s, "adamw_fused", "torch"))
            n = next(r["n_elements"] for r in rows if r["set"] == s)
            cells = [s, f"{n:,}", f"{base['median_ms']:.3g} ms" if base and base.get("median_ms") else "—"]
            for b in backends:
                r = by.get((s, "mulo", b))
                if r is None:
                    cells.append("—")
                elif r["status"] != "ok":
                    cells.append(r["status"])
                elif r.get("ratio_to_adamw_fused") is None:
                    cells.append(f"{r['median_ms']:.3g} ms")
                else:
                    cells.append(f"{r['ratio_to_adamw_fused']:.3g}× ({r['frac_of_floor']:.0%})")
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def rewrite_readme(table: str, readme: Path = README) -> bool:
    """Replace what lies between the markers; False (file untouched) when the markers are missing."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        return False
    pre, rest = text.split(BEGIN, 1)
    _, post = rest.split(END, 1)
    new = f"{pre}{BEGIN}\n{table}\n{END}{post}"
    if new != text:
        readme.write_text(new)
    return True


def plot(runs: dict[str, list[dict]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for dev, rows in runs.items():
        ok = [r for r in rows if r["status"] == "ok"]
        title = f"{ok[0]['device']} · torch {ok[0]['torch_version']} · {ok[0]['date'][:10]}" if ok else dev
        synth = [r for r in ok if r["set"].startswith("synthetic-")]
        if synth:
            fig, ax = plt.subplots(figsize=(6, 4))
            for lab in dict.fromkeys(label(r) for r in synth):
                pts = sorted((r["n_elements"], r["ns_per_element"]) for r in synth if label(r) == lab)
                ax.plot(*zip(*pts), marker="o", label=lab)
            floor = sorted(
                (r["n_elements"], r["floor_ms"] * 1e6 / r["n_elements"]) for r in synth if r["optimizer"] == "mulo"
            )
            if floor:
                ax.plot(*zip(*floor), ls="--", color="gray", label="μLO floor (§5 model)")
            ax.set(xscale="log", yscale="log", xlabel="elements", ylabel="ns per element per step", title=title)
            ax.legend(fontsize=7)
            fig.tight_layout()
            written.append(out_dir / f"step_time_{dev}_synthetic.png")
            fig.savefig(written[-1], dpi=120)
            plt.close(fig)
        mulo_rows = [r for r in ok if r["optimizer"] == "mulo" and r.get("ratio_to_adamw_fused")]
        if mulo_rows:
            sets = ordered_sets(mulo_rows)
            backends = list(dict.fromkeys(r["backend"] for r in mulo_rows))
            fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(sets) * len(backends)), 4))
            width = 0.8 / len(backends)
            for j, b in enumerate(backends):
                vals = {r["set"]: r["ratio_to_adamw_fused"] for r in mulo_rows if r["backend"] == b}
                xs = [i + j * width for i, s in enumerate(sets) if s in vals]
                ax.bar(xs, [vals[s] for s in sets if s in vals], width=width, label=f"μLO {b}")
            ax.axhline(72 / 28, color="gray", ls="--", label="memory-floor ratio 72/28 ≈ 2.6")
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sets))], sets, rotation=30, ha="right", fontsize=7)
            ax.set(yscale="log", ylabel="step time / fused AdamW", title=title)
            ax.legend(fontsize=7)
            fig.tight_layout()
            written.append(out_dir / f"step_time_{dev}_ratio.png")
            fig.savefig(written[-1], dpi=120)
            plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", action="append", type=Path, default=None, help="JSONL file(s) of step-time rows")
    ap.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR / "figures")
    ap.add_argument("--readme", action="store_true", help="rewrite the README table between the bench markers")
    ap.add_argument("--no-figures", action="store_true")
    args = ap.parse_args(argv)
    paths = args.results or [DEFAULT_RESULTS]
    runs = latest_runs(load_rows([p for p in paths if p.exists()]))
    if not args.no_figures:
        for path in plot(runs, args.out_dir):
            print(f"wrote {path}")
    if args.readme:
        if not rewrite_readme(readme_table(runs)):
            print(f"{README} has no {BEGIN} … {END} markers; table not written", file=sys.stderr)
            return 1
        print(f"rewrote the step-time table in {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
