"""Meta-training Celo2 (``mulo meta-train --rule celo2``): a tiny run through the CLI on the fused CPU kernels
gives weights mulo.Celo2 loads, a killed run resumes to exactly the uninterrupted θ, the unroll's paired
members stay paired, the celo2_cpu preset is the recipe of docs/CELO2.md, and bad input is named."""

import json

import pytest
import torch

import mulo
from mulo import cli
from mulo.celo2 import Celo2Net, population
from mulo.meta.presets import preset
from mulo.meta.rules import Celo2Rule
from mulo.meta.tasks import ImageMLPFamily, ImageMLPSpec
from mulo.meta.trainer import LOG, WEIGHTS_DIR, MetaTrainer
from mulo.meta.truncation import LogUniformTruncation
from mulo.meta.unroll import PopulationUnroll
from tests.celo2.common import random_celo2_net

SHORT = dict(rule="celo2", num_pairs=2, unroll_length=4, outer_steps=4, checkpoint_every=2, reparam_global=True)


def test_cli_tiny_celo2_run_on_the_cpu_kernels(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["meta-train", "--preset", "tiny", "--rule", "celo2", "--outer-steps", "3", "--num-pairs", "2",
            "--inner-backend", "cpu", "--reparam-global", "--out", str(out), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "Celo2(meta_weights=" in capsys.readouterr().out
    log = [json.loads(line) for line in (out / LOG).read_text().splitlines()]
    assert [r["outer_step"] for r in log] == [0, 1, 2] and all(r["grad_norm"] > 0 for r in log)
    net = Celo2Net.from_pretrained(out / WEIGHTS_DIR)
    assert net.config.info["outer_steps"] == 3 and net.config.info["config"]["rule"] == "celo2"
    fresh = Celo2Net(generator=torch.Generator().manual_seed(preset("tiny").seed))
    assert not torch.equal(population.flatten(net), population.flatten(fresh))  # θ moved
    w = torch.nn.Parameter(torch.randn(4, 5))
    opt = mulo.Celo2([w], meta_weights=out / WEIGHTS_DIR)
    w.grad = torch.randn(4, 5)
    opt.step()


def test_killed_run_resumes_to_the_uninterrupted_theta(tmp_path):
    cfg = preset("tiny", **SHORT)
    straight = MetaTrainer(cfg, tmp_path / "a", progress=False, inner_backend="cpu")
    straight.run()

    class Killed(Exception):
        pass

    def kill_after_3(record):
        if record["outer_step"] == 2:
            raise Killed

    with pytest.raises(Killed):
        MetaTrainer(cfg, tmp_path / "b", progress=False, inner_backend="cpu").run(on_step=kill_after_3)
    resumed = MetaTrainer(cfg, tmp_path / "b", progress=False, inner_backend="cpu")
    assert resumed.next_step == 2  # the last checkpoint
    resumed.run()
    assert torch.equal(resumed.theta, straight.theta)
    assert [json.loads(x)["outer_step"] for x in (tmp_path / "b" / LOG).read_text().splitlines()] == [0, 1, 2, 3]


def test_paired_members_with_equal_theta_see_equal_losses():
    """Celo2 in the unroll: a "+" and a "−" member with the same θ, batch, init and reparam scale train alike;
    members with another θ do not (the per-member meta-weights reach the step)."""
    family = ImageMLPFamily(ImageMLPSpec("digits", 16, 1, 32, "sp"))
    unroll = PopulationUnroll(family, LogUniformTruncation(10, 20, 5), 2, Celo2Rule(lr=1e-2), reparam=(0.1, 10.0))
    gen = torch.Generator().manual_seed(0)
    state = unroll.init_state(gen)
    theta = population.flatten(random_celo2_net(0))
    other = population.flatten(random_celo2_net(1))
    thetas = torch.stack([theta, other, theta, theta])  # members: +0, +1, −0, −1
    out = unroll.unroll(state, thetas, 6, gen)
    assert torch.equal(out.losses[:, 0], out.losses[:, 2])
    assert not torch.equal(out.losses[:, 1], out.losses[:, 3])
    assert unroll.theta_size == population.theta_size(Celo2Net().config) == 347


def test_celo2_cpu_preset_is_the_recipe():
    cfg = preset("celo2_cpu")
    assert cfg.rule == "celo2" and cfg.reparam_global and cfg.inner_lr == 1e-3 and cfg.inner_weight_decay == 0.0
    assert (cfg.num_pairs, cfg.std, cfg.unroll_length, cfg.min_length, cfg.max_length) == (8, 0.01, 50, 100, 2000)
    assert cfg.inner_schedule == "constant" and len(cfg.families) == 4
    assert all((f.width, f.depth, f.batch_size, f.parameterization) == (32, 1, 64, "sp") for f in cfg.families)


def test_bad_rule_options_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"rule \(--rule\) must be 'mulo' or 'celo2'"):
        preset("tiny", rule="adam")
    with pytest.raises(ValueError, match=r"inner_lr \(--inner-lr\) must be a finite number > 0"):
        preset("tiny", rule="celo2", inner_lr=0.0)
    mulo_weights = tmp_path / "mulo"
    mulo.LOptNet().save_pretrained(mulo_weights)
    with pytest.raises(ValueError, match="μLO"):  # a μLO checkpoint is not a Celo2 start
        MetaTrainer(preset("tiny", **SHORT), tmp_path / "run", progress=False, init_weights=mulo_weights)
