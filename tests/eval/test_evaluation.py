"""The generalization harness: rows, tuning, μAdam's hidden-lr transfer, bad input."""

import json

import pytest
import torch

from mulo import evaluation as ev
from mulo.mup.models import MuMLP, MuTransformerLM


def test_quick_preset_writes_complete_rows(tmp_path):
    out = ev.run(tmp_path / "g.jsonl", "quick", log=lambda *_: None)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    sweeps = {r["sweep"] for r in rows}
    assert sweeps == {"tune", "width"}
    assert {r["optimizer"] for r in rows if r["sweep"] == "width"} == {"mulo", "sp_lo", "adamw", "muadam"}
    for r in rows:
        for key in ("task", "optimizer", "lr", "seed", "final_loss", "diverged", "git_sha", "torch_version", "date"):
            assert key in r, key
    widths = {r["width"] for r in rows if r["sweep"] == "width"}
    assert widths == {16, 64}
    # the tuned AdamW lr is the grid point with the lowest mean tuning loss
    tune = [r for r in rows if r["sweep"] == "tune" and r["optimizer"] == "adamw"]
    by_lr = {}
    for r in tune:
        by_lr.setdefault(r["lr"], []).append(r["final_loss"])
    best = min(by_lr, key=lambda lr: sum(by_lr[lr]) / len(by_lr[lr]))
    assert {r["lr"] for r in rows if r["sweep"] == "width" and r["optimizer"] == "adamw"} == {best}


def test_muadam_scales_hidden_lr_by_base_over_width():
    task = ev.Task("mlp", 64, 3, 1)
    model = MuMLP(64, 64, 3, 10)
    opt = ev._optimizer(ev.OptSpec("muadam", lr=0.01, base_width=16), model, task)
    lrs = {g["role"]: g["lr"] for g in opt.param_groups}
    assert lrs["hidden"] == pytest.approx(0.01 * 16 / 64) and lrs["input"] == 0.01 and lrs["output"] == 0.01


def test_lm_task_trains_and_bad_names_raise():
    row = ev.train(ev.Task("lm", 16, 1, 3, batch=4, context=8, heads=2), ev.OptSpec("adamw", 1e-3), 0)
    assert row["final_loss"] < 6.0 and not row["diverged"]  # ln 256 ≈ 5.55 at init
    with pytest.raises(ValueError, match="unknown preset"):
        ev.run("x.jsonl", "huge")
    with pytest.raises(ValueError, match="unknown optimizer"):
        ev._optimizer(ev.OptSpec("sgdx"), MuMLP(4, 8, 1, 2), ev.Task("mlp", 8, 1, 1))
    with pytest.raises(FileNotFoundError, match="shipped weights"):
        ev._optimizer(ev.OptSpec("sp_lo", meta_weights="no-such-weights"), MuMLP(4, 8, 1, 2), ev.Task("mlp", 8, 1, 1))


def test_sp_optimizers_train_the_sp_twin_and_mup_ones_the_mup_network():
    from mulo.meta.tasks import SPMLP

    task = ev.Task("mlp", 16, 2, 2)
    sp_row = ev.train(task, ev.OptSpec("sp_lo"), 0)
    assert sp_row["meta_weights"] == "mulo_cpu_sp" and not sp_row["diverged"]
    assert len(sp_row["meta_weights_sha256"]) == 16
    mu_row = ev.train(task, ev.OptSpec("mulo"), 0)
    assert mu_row["meta_weights"] == "mulo_nm" and not mu_row["diverged"]
    sp, _ = ev._build(task, 0, "sp")
    mu, _ = ev._build(task, 0, "mup")
    assert isinstance(sp, SPMLP) and isinstance(mu, MuMLP)
    assert sp.readout.weight.abs().sum() > 0 and mu.readout.weight.abs().sum() == 0  # SP init vs μP zero readout
    assert mu.layers[0].bias.std() > 0.3  # biases N(0, 1) as in the meta-training tasks


def test_transformer_roles_follow_mup():
    m = MuTransformerLM(256, 32, 1, 4, 16)
    roles = m.roles()
    assert roles["tok.weight"].role == "input" and roles["readout.weight"].role == "output"
    assert roles["blocks.0.qkv.weight"].lr_scale == 1 / 32 and roles["blocks.0.out.weight"].lr_scale == 1 / 128
    assert roles["blocks.0.ln1.weight"].role == "other"
    assert torch.all(m(torch.randint(0, 256, (2, 16))) == 0)  # zero readout at init


def test_subsets_of_sweeps_and_optimizers(tmp_path):
    out = ev.run(tmp_path / "g.jsonl", "quick", log=lambda *_: None, optimizers=("sp_lo",), sweeps=("width",))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["sweep"], r["optimizer"]) for r in rows} == {("width", "sp_lo")}  # no tuning when no Adam runs
    with pytest.raises(ValueError, match="unknown optimizers"):
        ev.run(tmp_path / "x.jsonl", "quick", optimizers=("sgd",))
    with pytest.raises(ValueError, match="unknown sweeps"):
        ev.run(tmp_path / "x.jsonl", "quick", sweeps=("breadth",))


def test_eval_help_has_a_description_defaults_and_choices(capsys):
    from mulo import cli

    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "What the learned optimizer buys" in text and "docs/ALGORITHM.md §8" in text
    assert "{cpu,models,models_quick,nm,nm_quick,quick}" in text and "(default: cpu)" in text
    assert "(default: mulo_nm)" in text and "a comma list runs each set as its own column" in text
    assert "{width,depth,horizon,ood_lm}" in text and "(default: mulo_cpu_sp)" in text
    assert "{constant,cosine}" in text and "first 5% of the run" in text and "(default: both)" in text
    assert "{mnist1d,digits_aug,teacher}" in text and "nm mnist1d,digits_aug,teacher" in text
    assert "{gpt,cnn,vit}" in text and "(default: None)" not in text
    assert "bench/results/heldout.jsonl for nm/nm_quick" in text
    for preset in ("nm:", "nm_quick:", "models:", "models_quick:", "cpu:", "quick:"):
        assert preset in text, preset
    with pytest.raises(SystemExit):
        cli.main(["eval", "--sweeps", "width,nope"])
    assert "unknown ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["eval", "--schedules", "step"])
    assert "unknown ['step']" in capsys.readouterr().err


def test_memorizable_presets_take_several_meta_weights_and_refuse_held_out_options(tmp_path):
    out = ev.run(
        tmp_path / "g.jsonl",
        "quick",
        meta_weights="mulo_cpu,mulo_cpu_s2",
        log=lambda *_: None,
        optimizers=("mulo",),
        sweeps=("width",),
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["meta_weights"] for r in rows if r["width"] == 16] == ["mulo_cpu", "mulo_cpu_s2"]
    assert len({r["meta_weights_sha256"] for r in rows}) == 2 and "schedule" not in rows[0]
    for kwargs in ({"schedules": ("cosine",)}, {"datasets": ("teacher",)}, {"models": ("gpt",)}):
        with pytest.raises(ValueError, match="takes no"):
            ev.run(tmp_path / "x.jsonl", "quick", **kwargs)


def test_cli_routes_the_new_presets(tmp_path, monkeypatch):
    from mulo import cli
    from mulo.eval import heldout

    seen = {}
    monkeypatch.setattr(heldout, "run", lambda out, preset, *a, **k: seen.update(out=out, preset=preset, **k))
    cli.main(["eval", "--preset", "nm", "--datasets", "teacher", "--schedules", "cosine", "--optimizers", "mulo"])
    assert seen["out"] == "bench/results/heldout.jsonl" and seen["preset"] == "nm"
    assert seen["datasets"] == ("teacher",) and seen["schedules"] == ("cosine",) and seen["optimizers"] == ("mulo",)
    assert seen["sweeps"] == heldout.SWEEPS
