"""Packaging a meta-training run as shipped weights: the files, the provenance and that MuLO loads them."""

import json

import pytest
import torch

import mulo
from mulo.lopt import pretrained
from mulo.meta import ship
from mulo.meta.presets import preset
from mulo.meta.trainer import MetaTrainer

SHORT = dict(num_pairs=2, unroll_length=4, outer_steps=4, checkpoint_every=2)


def test_ship_writes_weights_provenance_and_curve(tmp_path):
    cfg = preset("tiny", **SHORT)
    trainer = MetaTrainer(
        cfg, tmp_path / "run", progress=False, init_weights=pretrained.weights_dir(pretrained.PLACEHOLDER)
    )
    trainer.run()
    with open(tmp_path / "run" / "log.jsonl", "a") as f:  # a live run logs past its last checkpoint
        f.write(json.dumps({"outer_step": 4, "meta_loss": 1.0}) + "\n")
    out = ship.ship(
        tmp_path / "run",
        "mine",
        preset="tiny",
        command="mulo meta-train --preset tiny",
        dest=tmp_path / "shipped",
        block=2,
        check_steps=5,
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "PROVENANCE.json",
        "config.json",
        "meta_loss.png",
        "model.safetensors",
    ]
    prov = json.loads((out / "PROVENANCE.json").read_text())
    assert prov["outer_steps"] == 4 and prov["preset"] == "tiny" and prov["parameterization"] == "mup"
    assert prov["init_weights"].endswith(pretrained.PLACEHOLDER)
    assert [b["outer_steps"] for b in prov["meta_loss"]["curve"]] == [[0, 1], [2, 3]]
    check = prov["held_out_mean_normalized_loss_over_5_steps"]["w32"]
    assert 0 < check["final_theta"] < 10 and 0 < check["start_theta"] < 10
    net = mulo.LOptNet.from_pretrained(out)
    assert net.config.info["name"] == "mine" and not net.is_placeholder
    assert torch.equal(mulo.meta.theta.flatten(net), trainer.theta.detach())
    opt = mulo.MuLO([torch.nn.Parameter(torch.randn(5, 3))], meta_weights=out)
    assert opt.net.config.info["outer_steps"] == 4


def test_ship_names_what_is_missing(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        ship.ship(tmp_path / "run", "x", preset="tiny", command="c", dest=tmp_path)
    assert ship.main([str(tmp_path / "run"), "x", "--preset", "tiny", "--command", "c", "--dest", str(tmp_path)]) == 2


def test_ship_an_early_stop_from_a_snapshot(tmp_path):
    cfg = preset("tiny", **SHORT)
    trainer = MetaTrainer(cfg, tmp_path / "run", progress=False)
    snapshots = {}
    trainer.run(on_step=lambda r: snapshots.setdefault(r["outer_step"] + 1, trainer.theta.detach().clone()))
    assert sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir()) == ["step_2", "step_4"]
    out = ship.ship(tmp_path / "run", "early", preset="tiny", command="c", dest=tmp_path, block=1, check_steps=3,
                    at_step=2, stop_reason="meta-loss collapsed after step 2")  # fmt: skip
    prov = json.loads((out / "PROVENANCE.json").read_text())
    assert prov["outer_steps"] == 2 and prov["planned_outer_steps"] == 4
    assert prov["stopped_early"] == {"at_outer_step": 2, "reason": "meta-loss collapsed after step 2"}
    assert len(prov["meta_loss"]["curve"]) == 2
    assert torch.equal(mulo.meta.theta.flatten(mulo.LOptNet.from_pretrained(out)), snapshots[2])
    with pytest.raises(FileNotFoundError, match="no snapshot of outer step 3"):
        ship.ship(tmp_path / "run", "x", preset="tiny", command="c", dest=tmp_path, at_step=3)


def test_a_second_stage_embeds_its_parent_and_totals_the_lineage(tmp_path):
    """Stage 2 (another meta-loss, started from stage 1's shipped weights) shipped under the SAME name:
    the parent's provenance (with its weights' SHA-256) is kept and steps/wall time add up."""
    import hashlib

    cfg = preset("tiny", **SHORT)
    MetaTrainer(cfg, tmp_path / "s1", progress=False).run()
    first = ship.ship(tmp_path / "s1", "lo", preset="tiny", command="s1", dest=tmp_path, block=2, check_steps=3)
    p1 = json.loads((first / "PROVENANCE.json").read_text())
    sha1 = hashlib.sha256((first / "model.safetensors").read_bytes()).hexdigest()
    assert p1["parent"] is None and p1["lineage_outer_steps"] == 4

    MetaTrainer(cfg.replace(meta_loss="log", outer_steps=2), tmp_path / "s2", progress=False, init_weights=first).run()
    second = ship.ship(tmp_path / "s2", "lo", preset="tiny", command="s2", dest=tmp_path, block=1, check_steps=3)
    p2 = json.loads((second / "PROVENANCE.json").read_text())
    assert p2["config"]["meta_loss"] == "log" and p2["outer_steps"] == 2
    assert p2["parent"]["command"] == "s1" and p2["parent"]["model_sha256"] == sha1
    assert p2["lineage_outer_steps"] == 6
    assert p2["lineage_wall_time_s"] == pytest.approx(p1["wall_time_s"] + p2["wall_time_s"], abs=0.11)
    assert (second / "meta_loss.png").stat().st_size > 1000


def test_parent_names_the_shipped_copy_of_a_bare_starting_directory(tmp_path):
    """A stage started from a run's bare meta_weights/ keeps its lineage through --parent, which must hold
    byte-identical weights (anything else is refused by name)."""
    cfg = preset("tiny", **SHORT)
    MetaTrainer(cfg, tmp_path / "s1", progress=False).run()
    first = ship.ship(tmp_path / "s1", "lo", preset="tiny", command="s1", dest=tmp_path / "a", check_steps=3)
    bare = tmp_path / "s1" / "meta_weights"
    MetaTrainer(cfg.replace(outer_steps=2), tmp_path / "s2", progress=False, init_weights=bare).run()
    kw = dict(preset="tiny", command="s2", dest=tmp_path / "b", check_steps=3)
    assert json.loads((ship.ship(tmp_path / "s2", "lo", **kw) / "PROVENANCE.json").read_text())["parent"] is None
    p2 = json.loads((ship.ship(tmp_path / "s2", "lo", parent=first, **kw) / "PROVENANCE.json").read_text())
    assert p2["parent"]["command"] == "s1" and p2["lineage_outer_steps"] == 6
    MetaTrainer(
        cfg, tmp_path / "other", progress=False, init_weights=pretrained.weights_dir(pretrained.PLACEHOLDER)
    ).run()
    wrong = ship.ship(tmp_path / "other", "lo", preset="tiny", command="o", dest=tmp_path / "c", check_steps=3)
    with pytest.raises(ValueError, match="does not hold the run's starting weights"):
        ship.ship(tmp_path / "s2", "lo", parent=wrong, **kw)
    args = [str(tmp_path / "s2"), "lo", "--preset", "tiny", "--command", "s2", "--dest", str(tmp_path / "d")]
    assert ship.main(args + ["--parent", str(tmp_path / "nothing")]) == 2


def test_ship_a_celo2_run_loads_in_celo2(tmp_path):
    """A --rule celo2 run ships in Celo2's published layout, with the rule on record, from its starting
    weights (the shipped placeholder by name), and mulo.Celo2 loads it."""
    from mulo.celo2 import Celo2Net
    from mulo.celo2 import pretrained as celo2_pretrained
    from mulo.celo2.population import flatten

    cfg = preset("tiny", **SHORT, rule="celo2")
    trainer = MetaTrainer(cfg, tmp_path / "run", progress=False, init_weights=celo2_pretrained.PLACEHOLDER)
    trainer.run()
    out = ship.ship(tmp_path / "run", "c2", preset="tiny", command="mulo meta-train --rule celo2 --preset tiny",
                    dest=tmp_path / "shipped", block=2, check_steps=5)  # fmt: skip
    prov = json.loads((out / "PROVENANCE.json").read_text())
    assert prov["rule"] == "celo2" and prov["outer_steps"] == 4 and prov["init_weights"] == celo2_pretrained.PLACEHOLDER
    assert 0 < prov["held_out_mean_normalized_loss_over_5_steps"]["w32"]["final_theta"] < 10
    net = Celo2Net.from_pretrained(out)
    assert net.config.info["name"] == "c2" and torch.equal(flatten(net), trainer.theta.detach())
    opt = mulo.Celo2([torch.nn.Parameter(torch.randn(5, 3))], meta_weights=out)
    assert opt is not None
    assert ship.shipped_dir("celo2") == celo2_pretrained.HERE
