"""The meta-trainer: resume equals an uninterrupted run, meta-training helps, outputs and bad input."""

import json

import pytest
import torch

import mulo
from mulo import cli
from mulo.meta import theta as theta_mod
from mulo.meta.presets import preset
from mulo.meta.trainer import CHECKPOINT, LOG, WEIGHTS_DIR, CheckpointError, MetaTrainer, evaluate
from tests.helpers import random_net

SHORT = dict(num_pairs=2, unroll_length=4, outer_steps=4, checkpoint_every=2)


class Killed(Exception):
    pass


def kill_after(n):
    def hook(record):
        if record["outer_step"] + 1 == n:
            raise Killed

    return hook


def read_log(out):
    return [json.loads(line) for line in (out / LOG).read_text().splitlines()]


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    cfg = preset("tiny", **SHORT)
    straight = MetaTrainer(cfg, tmp_path / "a", progress=False)
    straight.run()
    killed = MetaTrainer(cfg, tmp_path / "b", progress=False)
    with pytest.raises(Killed):
        killed.run(on_step=kill_after(3))  # dies after step 3; the last checkpoint holds 2 steps
    assert len(read_log(tmp_path / "b")) == 3
    (tmp_path / "b" / (CHECKPOINT + ".tmp")).write_bytes(b"half-written by a killed save")  # atomic: ignored
    with open(tmp_path / "b" / LOG, "a") as f:
        f.write('{"outer_step": 3, "meta_lo')  # a line cut by the kill
    resumed = MetaTrainer(cfg, tmp_path / "b", progress=False)
    assert resumed.next_step == 2
    resumed.run()
    assert torch.equal(resumed.theta.detach(), straight.theta.detach())
    a, b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["outer_step"] for r in b] == [0, 1, 2, 3]
    assert [r["meta_loss"] for r in a] == [r["meta_loss"] for r in b]
    for r in a:
        assert {"outer_step", "meta_loss", "grad_norm", "lr", "seconds"} <= set(r)
    # raising --outer-steps continues from the finished run
    longer = MetaTrainer(cfg.replace(outer_steps=5), tmp_path / "b", progress=False)
    assert longer.next_step == 4
    longer.run()
    assert len(read_log(tmp_path / "b")) == 5


def test_short_meta_training_lowers_the_meta_loss(tmp_path):
    """The tiny preset (30 outer steps of PES from a fresh random LOptNet, fixed seeds): μLO with the
    meta-trained θ trains fresh tiny MLPs to a lower mean loss than with the initial θ. Observed gains
    are 0.8–1.5 nats over seeds 0–3; the threshold asks for 0.1."""
    cfg = preset("tiny")
    trainer = MetaTrainer(cfg, tmp_path, progress=False)
    theta0 = trainer.theta.detach().clone()
    weights = trainer.run()
    before = evaluate(theta0, cfg, steps=40, seeds=4)
    after = evaluate(trainer.theta.detach(), cfg, steps=40, seeds=4)
    assert after < before - 0.1, f"meta-training did not help: mean loss {before:.4f} → {after:.4f}"
    # the saved meta-weights are θ and MuLO takes the directory
    net = mulo.LOptNet.from_pretrained(weights)
    assert torch.equal(theta_mod.flatten(net), trainer.theta.detach().cpu())
    model = torch.nn.Linear(3, 2)
    opt = mulo.MuLO(model.parameters(), meta_weights=weights)
    model(torch.randn(4, 3)).square().sum().backward()
    opt.step()


def test_cli_meta_train_and_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["meta-train", "--out", str(out), "--outer-steps", "2", "--num-pairs", "2", "--no-progress"]
    assert cli.main(args) == 0
    assert len(read_log(out)) == 2 and (out / WEIGHTS_DIR / "model.safetensors").is_file()
    capsys.readouterr()
    assert cli.main(args) == 0  # a rerun with nothing left to do says so, and changes nothing
    assert "already holds all 2 outer steps; nothing to do" in capsys.readouterr().err
    assert len(read_log(out)) == 2

    with pytest.raises(SystemExit) as e:
        cli.main(["meta-train", "--out", str(tmp_path / "x"), "--preset", "huge"])
    assert e.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")

    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    for bad in (a_file, a_file / "sub"):
        assert cli.main(["meta-train", "--out", str(bad), "--outer-steps", "1"]) == 2
        assert "--out" in capsys.readouterr().err
    assert a_file.read_text() == "keep me"

    # settings that differ from the checkpoint's: refused, nothing touched
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert cli.main(args[:-1] + ["--seed", "7", "--no-progress"]) == 2
    assert "different settings (seed)" in capsys.readouterr().err
    assert cli.main(args + ["--lr-peak", "0.05", "--lr-final", "0.01"]) == 2
    assert "different settings (lr_final, lr_peak)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_corrupted_checkpoint_is_a_clear_error_and_nothing_is_overwritten(tmp_path):
    cfg = preset("tiny", **SHORT)
    MetaTrainer(cfg.replace(outer_steps=2), tmp_path, progress=False).run()
    ckpt = tmp_path / CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="corrupted.*nothing was changed"):
        MetaTrainer(cfg, tmp_path, progress=False)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == snapshot
    torch.save({"format": "something else"}, ckpt)
    with pytest.raises(CheckpointError, match="not a mulo meta-training checkpoint"):
        MetaTrainer(cfg, tmp_path, progress=False)


def test_lr_schedule_matches_the_recipe():
    cfg = preset("mulo_m")
    assert cfg.lr(0) == pytest.approx(3e-10)
    assert cfg.lr(50) == pytest.approx(1.5e-3, rel=1e-6)
    assert cfg.lr(100) == pytest.approx(3e-3)
    assert cfg.lr(2500) == pytest.approx(2e-3)
    assert cfg.lr(4900) == cfg.lr(4999) == pytest.approx(1e-3)
    assert (cfg.num_pairs, cfg.unroll_length, cfg.std, cfg.weight_decay) == (8, 50, 0.01, 1e-4)
    assert [f.width for f in cfg.families] == [128, 512, 1024]
    assert preset("tiny", parameterization="sp").step_mult == 0.001


def test_inner_steps_through_the_cpu_kernels(tmp_path, capsys):
    """--inner-backend cpu: the same meta-training through the fused C++ step (rounding aside, the same
    numbers: the first outer step's meta-loss and ĝ match the reference run closely)."""
    cfg = preset("tiny", **SHORT)
    runs = {}
    for backend in ("reference", "cpu"):
        trainer = MetaTrainer(cfg.replace(outer_steps=1), tmp_path / backend, progress=False, inner_backend=backend)
        trainer.run()
        runs[backend] = (read_log(tmp_path / backend)[0], trainer.theta.detach())
    (ref_row, ref_theta), (cpu_row, cpu_theta) = runs["reference"], runs["cpu"]
    assert abs(cpu_row["meta_loss"] - ref_row["meta_loss"]) < 1e-4
    assert abs(cpu_row["grad_norm"] - ref_row["grad_norm"]) < 1e-2 * ref_row["grad_norm"]
    assert torch.allclose(cpu_theta, ref_theta, atol=1e-5)
    args = ["meta-train", "--out", str(tmp_path / "x"), "--outer-steps", "1", "--inner-backend", "nope"]
    assert cli.main(args) == 2
    assert "unknown backend 'nope'" in capsys.readouterr().err


def test_cli_schedule_horizon_and_meta_loss_options_reach_the_config(tmp_path, capsys):
    """--meta-loss/--max-length/--warmup-steps/--decay-end land in the run's config (checked on resume:
    changing one is refused by name), and a bad value is a clear error."""
    out = tmp_path / "run"
    args = ["meta-train", "--out", str(out), "--outer-steps", "1", "--num-pairs", "1", "--no-progress"]
    opts = ["--meta-loss", "log", "--max-length", "60", "--warmup-steps", "0", "--decay-end", "1"]
    assert cli.main(args + opts) == 0
    saved = torch.load(out / CHECKPOINT, weights_only=False)["config"]
    assert (saved["meta_loss"], saved["max_length"], saved["warmup_steps"], saved["decay_end"]) == ("log", 60, 0, 1)
    assert cli.main(args + opts[:2]) == 2
    assert "different settings (decay_end, max_length, warmup_steps)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="meta_loss must be one of"):
        preset("tiny", meta_loss="squared")
    with pytest.raises(SystemExit):
        cli.main(args + ["--meta-loss", "squared"])
    assert "invalid choice: 'squared'" in capsys.readouterr().err


def test_time_clamp_reaches_the_inner_runs_and_the_shipped_weights(tmp_path, capsys):
    """--time-clamp: the population's meta-weights clamp the time features (so inner runs train with the
    clamp), the weights written carry it in config.json, and a bad value is refused by name."""
    from mulo.meta.trainer import lopt_config_for

    cfg = preset("tiny", **SHORT, time_clamp=60.0)
    assert lopt_config_for(cfg).time_clamp == 60.0
    trainer = MetaTrainer(cfg.replace(outer_steps=1), tmp_path / "run", progress=False)
    unroll = trainer.estimators[0].truncated_step  # builds each family's members' weights from its config
    assert theta_mod.population_weights(trainer.theta.detach()[None], unroll.config).time_clamp == 60.0
    out = tmp_path / "cli"
    args = ["meta-train", "--out", str(out), "--outer-steps", "1", "--num-pairs", "1", "--no-progress"]
    assert cli.main(args + ["--time-clamp", "60"]) == 0
    assert json.loads((out / WEIGHTS_DIR / "config.json").read_text())["time_clamp"] == 60.0
    assert cli.main(args + ["--time-clamp", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "time_clamp (--time-clamp) must be a step count ≥ 1" in capsys.readouterr().err


def test_nominal_reaches_the_inner_runs_the_shipped_weights_and_starts_from_a_zero_head(tmp_path, capsys):
    """--nominal: the population's meta-weights carry α and a third output row, the weights written keep it in
    config.json; starting from two-output weights adds a zero third head and leaves every other weight as it
    was; --meta-weight-decay reaches the outer AdamW; bad values are refused by name."""
    from mulo.lopt.network import LOptNet
    from mulo.meta.trainer import lopt_config_for

    cfg = preset("tiny", **SHORT, nominal=0.01, weight_decay=0.3)
    assert lopt_config_for(cfg).nominal == 0.01
    start = random_net()
    start.save_pretrained(tmp_path / "start")
    trainer = MetaTrainer(cfg.replace(outer_steps=1), tmp_path / "run", progress=False, init_weights=tmp_path / "start")
    assert trainer.outer_opt.param_groups[0]["weight_decay"] == 0.3
    unroll = trainer.estimators[0].truncated_step
    pw = theta_mod.population_weights(trainer.theta.detach()[None], unroll.config)
    assert pw.nominal == 0.01 and pw.layers[-1][0].shape == (1, 3, 32)
    assert torch.equal(pw.layers[-1][0][0, :2], start.network["output"].weight.detach())
    assert not pw.layers[-1][0][0, 2].any() and pw.layers[-1][1][0, 2] == 0
    assert torch.equal(pw.layers[0][0][0], start.network["input"].weight.detach())
    out = tmp_path / "cli"
    args = ["meta-train", "--out", str(out), "--outer-steps", "1", "--num-pairs", "1", "--no-progress"]
    assert cli.main(args + ["--nominal", "0.01", "--meta-weight-decay", "0.2", "--inner-backend", "cpu"]) == 0
    assert json.loads((out / WEIGHTS_DIR / "config.json").read_text())["nominal"] == 0.01
    assert LOptNet.from_pretrained(out / WEIGHTS_DIR).network["output"].weight.shape == (3, 32)
    assert torch.load(out / CHECKPOINT, weights_only=False)["config"]["weight_decay"] == 0.2
    assert cli.main(args + ["--nominal", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "nominal (--nominal) must be a number > 0" in capsys.readouterr().err
    assert cli.main(args + ["--meta-weight-decay", "-1", "--out", str(tmp_path / "bad2")]) == 2
    assert "weight_decay (--meta-weight-decay) must be a finite number ≥ 0" in capsys.readouterr().err
