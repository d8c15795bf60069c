"""The generalization report: mean ± std per task and optimizer, divergence shown as such, the best
mean in bold, reruns replace earlier rows, figures written, README rewritten between its markers."""

import json
import math

from bench import generalization as gen


def _row(sweep, width, opt, seed, loss, sha="b", steps=100, depth=2):
    return {
        "sweep": sweep,
        "task": f"mlp-w{width}-d{depth}-T{steps}",
        "width": width,
        "depth": depth,
        "steps": steps,
        "optimizer": opt,
        "seed": seed,
        "lr": 0.003 if opt in ("adamw", "muadam") else 1.0,
        "final_loss": loss,
        "diverged": not math.isfinite(loss),
        "curve": [[0, 2.3], [50, loss if math.isfinite(loss) else 2.3]],
        "git_sha": sha,
        "torch_version": "t",
        "device": "cpu",
        "date": "2026-11-23T00:00:00Z",
        "preset": "cpu",
        **({"meta_weights": f"w_{opt}"} if opt in gen.LEARNED else {}),
    }


def _rows():
    rows = [_row("width", 16, "mulo", 0, 9.0, sha="a")]  # superseded by the rerun below
    for seed, (mu, ad, sp) in enumerate([(0.1, 0.3, 0.2), (0.3, 0.5, float("inf"))]):
        rows += [_row("width", 16, "mulo", seed, mu), _row("width", 16, "muadam", seed, ad)]
        rows += [_row("width", 16, "adamw", seed, ad), _row("width", 64, "sp_lo", seed, sp)]
        rows += [_row("width", 64, "mulo", seed, mu / 2), _row("horizon", 16, "mulo", seed, mu, steps=500)]
    return rows


def test_summary_table(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    rows = gen.load(path, "cpu")
    assert [r["final_loss"] for r in rows if r["task"] == "mlp-w16-d2-T100" and r["optimizer"] == "mulo"] == [0.1, 0.3]
    st = gen.stats(rows)
    assert st[("width", "mlp-w16-d2-T100", "mulo:w_mulo")]["mean"] == 0.2
    assert st[("width", "mlp-w64-d2-T100", "sp_lo:w_sp_lo")]["diverged"] == 1
    table = gen.summary(rows)
    lines = table.splitlines()
    assert "| task | μLO (w_mulo) | μAdam | AdamW | SP-LO (w_sp_lo) |" in lines
    assert "| width 16 (1×) | **0.2 ± 0.1** | 0.4 ± 0.1 | 0.4 ± 0.1 | — |" in lines
    assert "| width 64 (4×) | **0.1 ± 0.05** | — | — | diverged 1/2 |" in lines
    assert any(line.startswith("| 500 steps (5×) |") for line in lines)
    figures = gen.plot(rows, tmp_path / "fig")
    assert all(p.stat().st_size > 0 for p in figures)
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{gen.BEGIN}\nold\n{gen.END}\ny\n")
    assert gen.rewrite_readme(table, readme)
    assert readme.read_text() == f"x\n{gen.BEGIN}\n{table}\n{gen.END}\ny\n"


def test_each_set_of_meta_weights_gets_its_own_column_named_by_digest(tmp_path, monkeypatch):
    """Two μLO weight sets side by side: a row's digest (the first 16 hex digits, as mulo eval records it)
    picks the shipped name (the recorded name can be stale: the digest is the identity), an unknown digest
    shows its first 12 hex digits."""
    monkeypatch.setattr(gen, "_shipped_digests", lambda: {"d" * 64: "new_lo"})
    rows = []
    for seed in range(2):
        rows.append(_row("width", 16, "mulo", seed, 0.1) | {"meta_weights": "mulo_cpu"})
        rows.append(
            _row("width", 16, "mulo", seed, 0.01) | {"meta_weights": "mulo_cpu", "meta_weights_sha256": "d" * 16}
        )
        rows.append(_row("width", 16, "mulo", seed, 0.5) | {"meta_weights_sha256": "e" * 16})
        rows.append(_row("width", 16, "muadam", seed, 0.3))
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = gen.summary(gen.load(path, "cpu")).splitlines()
    assert "| task | μLO (eeeeeeeeeeee) | μLO (mulo_cpu) | μLO (new_lo) | μAdam |" in table
    assert "| width 16 (1×) | 0.5 ± 0 | 0.1 ± 0 | **0.01 ± 0** | 0.3 ± 0 |" in table
