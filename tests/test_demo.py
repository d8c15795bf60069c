"""make demo: held-out losses on splits that never overlap, AdamW's lr picked on validation only, a plot."""

import json

import torch

from mulo import demo


def test_splits_are_disjoint_and_cover_the_digits():
    parts = demo.split_digits()
    assert [parts[k][0].shape[0] for k in ("train", "val", "test")] == list(demo.SPLIT)
    rows = {tuple(r.tolist()) for k in ("train", "val", "test") for r in parts[k][0]}
    assert len(rows) >= sum(demo.SPLIT) - 5  # (a handful of digits are pixel-identical duplicates)


def test_tiny_demo_reports_held_out_losses_and_tunes_adamw_on_validation(tmp_path, capsys):
    runs = demo.main(steps=6, width=16, depth=1, batch=32, out=str(tmp_path))
    text = capsys.readouterr().out
    assert "held-out test set" in text and "0.0000" not in text
    saved = json.loads((tmp_path / "curves.json").read_text())
    best = min(saved["adamw_grid"], key=lambda r: r["val_loss"])
    assert runs["adamw"]["lr"] == best["lr"] == saved["runs"]["adamw"]["lr"]
    for r in runs.values():
        step, train, val, test = r["curve"][-1]
        assert step == 6 and r["test_loss"] == test and r["val_loss"] == val and r["train_loss"] == train
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_losses_print_with_significant_digits():
    assert demo.fmt(3.2e-05) == "3.2e-05" and demo.fmt(0.19812) == "0.198" and demo.fmt(torch.tensor(2.0).item()) == "2"
