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
        rows.append(
            _row("width", 16, "mulo", seed, 0.4) | {"meta_weights": "runs/x/snap_9", "meta_weights_sha256": "f" * 16}
        )
        rows.append(_row("width", 16, "muadam", seed, 0.3))
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = gen.summary(gen.load(path, "cpu")).splitlines()
    # an unshipped directory is named by its directory name, an unknown digest without one by the digest
    assert "| task | μLO (eeeeeeeeeeee) | μLO (mulo_cpu) | μLO (new_lo) | μLO (snap_9) | μAdam |" in table
    assert "| width 16 (1×) | 0.5 ± 0 | 0.1 ± 0 | **0.01 ± 0** | 0.4 ± 0 | 0.3 ± 0 |" in table


def _hrow(dataset, width, opt, seed, held, *, sweep="width", steps=1000, depth=2, sched="constant", kind="mlp"):
    base = {"mnist1d": 64, "teacher": 16}.get(dataset, 64)
    return {
        "protocol": "heldout",
        "sweep": sweep,
        "task": f"{'lm' if kind == 'lm' else dataset}-w{width}-d{depth}-T{steps}",
        "kind": kind,
        "dataset": dataset,
        "width": width,
        "depth": depth,
        "steps": steps,
        "batch": 128,
        "base_width": base if kind == "mlp" else width,
        "optimizer": opt,
        "schedule": sched,
        "seed": seed,
        "lr": {"muadam": 0.003, "adamw": 0.001}.get(opt, 1.0) * (2 if sched == "cosine" else 1),
        "heldout_loss": held,
        "train_loss": held - 0.1 if held != float("inf") else held,
        "diverged": held == float("inf"),
        "heldout_curve": [[0, 2.3, 2.3], [steps, held, held]] if held != float("inf") else [[0, 2.3, 2.3]],
        "step_ms": 2.0,
        "opt_step_ms": 0.5,
        "git_sha": "c",
        "torch_version": "t",
        "device": "cpu",
        "threads": 1,
        "date": "2026-12-01T00:00:00Z",
        "preset": "nm",
        **({"meta_weights": "mulo_cpu", "meta_weights_sha256": "f" * 16} if opt == "mulo" else {}),
    }


def test_heldout_table_counts_divergences_and_bolds_the_best_column_that_never_diverged(tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "_shipped_digests", lambda: {"f" * 64: "mulo_cpu"})
    inf = float("inf")
    rows = []
    for seed, (mu, mu_cos, ad, ad_cos) in enumerate([(0.9, 1.0, 1.1, 1.2), (inf, 1.0, 1.1, 1.2)]):
        rows += [_hrow("teacher", 16, "mulo", seed, mu), _hrow("teacher", 16, "mulo", seed, mu_cos, sched="cosine")]
        rows += [_hrow("teacher", 16, "muadam", seed, ad), _hrow("teacher", 16, "muadam", seed, ad_cos, sched="cosine")]
        rows += [_hrow("teacher", 256, "mulo", seed, inf), _hrow("teacher", 256, "muadam", seed, 1.05)]
        rows += [_hrow("teacher", 16, "mulo", seed, 1.3, sweep="horizon", steps=25000)]
        rows += [_hrow("mnist1d", 64, "muadam", seed, 1.5 + seed, sweep="depth", depth=6)]
        rows += [_hrow("mnist1d", 64, "muadam", seed, 1.4)]
        rows += [_hrow("bytes", 64, "mulo", seed, 1.6, sweep="ood_lm", kind="lm")]
        rows += [_hrow("teacher", 16, "muadam", 1000 + seed, 1.4) | {"sweep": "tune"}]
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = gen.load(path, "nm")
    assert gen.kind_of(loaded) == "heldout"
    table = gen.heldout_summary(loaded)
    lines = table.split("</details>")[0].split("<details>")[0].splitlines()
    assert "| task | μLO (mulo_cpu) | μLO (mulo_cpu) + cos | μAdam | μAdam + cos |" in lines
    # μLO diverged in 1 of 2 seeds: the mean of the other, not bold; the best column without divergence is
    assert "| teacher · width 16 (1×) | 0.9 ± 0 (1/2 div.) | **1 ± 0** | 1.1 ± 0 | 1.2 ± 0 |" in lines
    assert "| teacher · width 256 (16×) | diverged 2/2 | — | **1.05 ± 0** | — |" in lines
    assert "| teacher · 25000 steps (25×) | **1.3 ± 0** | — | — | — |" in lines
    assert "| mnist1d · depth 6 (3×) | — | — | **2 ± 0.5** | — |" in lines
    tasks = [line.split(" | ")[0][2:] for line in lines[4:] if line]  # data sets in order, then the LM
    assert tasks == [
        "mnist1d · width 64 (1×)",
        "mnist1d · depth 6 (3×)",
        "teacher · width 16 (1×)",
        "teacher · width 256 (16×)",
        "teacher · 25000 steps (25×)",
        "OOD: byte-level transformer LM (w64, 2 blocks, 1000 steps)",
    ]
    assert "2 tuning seeds" in table and "teacher: μAdam 0.003, μAdam + cos 0.006" in table
    assert (
        "<summary>Training loss" in table
        and "| teacher · width 256 (16×) | diverged 2/2 | — | **0.95 ± 0** | — |" in table
    )
    figures = gen.plot_heldout(loaded, tmp_path / "fig")
    assert [p.name for p in figures] == ["heldout_width.png", "heldout_horizon.png"]
    assert all(p.stat().st_size > 0 for p in figures)
    readme = tmp_path / "README.md"
    begin, end = gen.MARKERS["heldout"]
    readme.write_text(f"a\n{gen.BEGIN}\nkeep\n{gen.END}\n{begin}\nold\n{end}\nb\n")
    assert gen.rewrite_readme(table, readme, kind="heldout")
    assert readme.read_text() == f"a\n{gen.BEGIN}\nkeep\n{gen.END}\n{begin}\n{table}\n{end}\nb\n"
    assert not gen.rewrite_readme(table, readme, kind="models")


def test_models_table_has_held_out_loss_and_step_times(tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "_shipped_digests", lambda: {"f" * 64: "mulo_cpu"})
    rows = []
    for seed in range(3):
        for model, width, depth, params in (("gpt", 64, 2, 120576), ("cnn", 16, 3, 7450)):
            for opt, sched, held, ms in (("mulo", "constant", 1.8, 12.0), ("adamw", "cosine", 1.6 + seed / 10, 2.0)):
                r = _hrow("bytes", width, opt, seed, held, sweep="models", sched=sched, depth=depth)
                r |= {"protocol": "models", "model": model, "task": f"{model}-w{width}-d{depth}-T1000"}
                r |= {"parameters": params, "preset": "models", "step_ms": ms + seed, "opt_step_ms": ms / 4}
                rows.append(r)
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = gen.load(path, "models")
    table = gen.models_summary(loaded).splitlines()
    assert "| task | μLO (mulo_cpu) | AdamW + cos |" in table
    assert "| GPT byte LM (d64, 2 blocks, tied head, 121k params) | 1.8 ± 0 | **1.7 ± 0.082** |" in table
    assert "| CNN on digits_aug (16/16/32 channels, 7k params) | 1.8 ± 0 | **1.7 ± 0.082** |" in table
    assert "| CNN on digits_aug (16/16/32 channels, 7k params) | 13 / 3 | 3 / 0.5 |" in table  # median ms
    assert "gpt AdamW + cos 0.002" in table[0] and "1000 steps, mean ± std over 3 seeds" in table[0]
    assert gen.plot_models(loaded, tmp_path / "fig")[0].stat().st_size > 0


def test_ablation_table_marks_variants_that_beat_muadams_better_form_in_every_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "_shipped_digests", lambda: {"f" * 64: "mulo_cpu"})
    clamp = {"meta_weights_time_clamp": 1000.0}
    rows = []
    for seed, (lo, lo_clamp) in enumerate([(0.70, 0.60), (0.74, 0.80)]):
        for width, steps, sweep in ((16, 1000, "width"), (256, 1000, "width"), (16, 25000, "horizon")):
            rows += [_hrow("teacher", width, "muadam", seed, 0.78, sweep=sweep, steps=steps)]
            rows += [_hrow("teacher", width, "muadam", seed, 0.75, sweep=sweep, steps=steps, sched="cosine")]
            rows += [_hrow("teacher", width, "mulo", seed, lo, sweep=sweep, steps=steps)]
            rows += [_hrow("teacher", width, "mulo", seed, lo_clamp, sweep=sweep, steps=steps) | clamp]
    rows += [_hrow("teacher", 16, "mulo", 2, float("inf"), sweep="horizon", steps=25000) | clamp]
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = gen.ablation_summary(gen.load(path, "nm")).splitlines()
    assert "| variant | teacher 16× width | teacher 25× horizon | ✓ |" in lines
    # every seed of mulo_cpu (0.70, 0.74) is below μAdam + cos's 0.75: ✓ on both tasks
    assert "| μLO (mulo_cpu) | 0.720 (0.740) ✓ | 0.720 (0.740) ✓ | 2/2 |" in lines
    # the clamped variant is its own line; one seed at 0.80 misses the bar; a divergence shows as such
    assert "| μLO (mulo_cpu@t1000) | 0.700 (0.800) | 0.700 (1 div.) | 0/2 |" in lines
    assert "| μAdam + cos | **0.750 (0.750)** | **0.750 (0.750)** |  |" in lines
