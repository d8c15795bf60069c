"""The plain-model presets of mulo eval (models): MuLO trains the model mulo.mup.prepare converted, AdamW
the model as written; rows carry held-out loss, step times and provenance."""

import json

import pytest
import torch
from torch import nn

from mulo.eval import models as me
from mulo.eval.common import Column
from mulo.mup import MuReadout
from mulo.mup.attention import MuMultiheadAttention


def test_quick_preset_runs_end_to_end_with_times_and_provenance(tmp_path):
    out = me.run(tmp_path / "m.jsonl", "models_quick", log=lambda *_: None)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    runs = [r for r in rows if r["sweep"] == "models"]
    assert {r["model"] for r in runs} == set(me.MODELS)
    assert {(r["optimizer"], r["schedule"]) for r in runs} == {
        (o, s) for o in ("mulo", "adamw") for s in ("constant", "cosine")
    }
    for r in rows:
        for key in ("git_sha", "torch_version", "date", "device", "threads", "preset", "heldout_loss", "parameters"):
            assert key in r, key
        assert r["protocol"] == "models" and r["step_ms"] > 0 and 0 < r["opt_step_ms"] <= r["step_ms"]
    for r in runs:
        if r["optimizer"] == "mulo":
            assert r["lr"] == 1.0 and len(r["meta_weights_sha256"]) == 16
        else:
            tuned = [
                t for t in rows if t["sweep"] == "tune" and t["task"] == r["task"] and t["schedule"] == r["schedule"]
            ]
            assert r["lr"] == min(tuned, key=lambda t: (t["heldout_loss"], t["lr"]))["lr"]
    with pytest.raises(ValueError, match="unknown models"):
        me.run(tmp_path / "x.jsonl", "models_quick", models=("rnn",))


@pytest.mark.parametrize("name", me.MODELS)
def test_mulo_trains_the_prepared_model_and_adamw_the_plain_one(name):
    task = next(t for t in me.PRESETS["models_quick"].tasks if t.model == name)
    model, opt = me.build_run(task, Column("mulo", meta_weights="mulo_cpu"), 0)
    assert isinstance(model.head, MuReadout)
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert trained == {id(p) for p in model.parameters()}
    roles = {g["role"] for g in opt.param_groups}
    assert "output" in roles or name == "gpt"  # a tied head is an embedding: role input
    if name == "gpt":
        assert model.head.weight is model.tok.weight
    if name == "vit":
        assert all(isinstance(b.attn, MuMultiheadAttention) for b in model.blocks)
    plain, adamw = me.build_run(task, Column("adamw"), 0, lr=1e-3)
    assert type(plain.head) is nn.Linear and isinstance(adamw, torch.optim.AdamW)
    assert {id(p) for g in adamw.param_groups for p in g["params"]} == {id(p) for p in plain.parameters()}
    # one step of MuLO moves the prepared model's own parameters
    env = me.Env(me.PRESETS["models_quick"])
    before = [p.detach().clone() for p in model.parameters()]
    x, y = next(me.common.stream(env.source(task), 0, task.batch))
    nn.functional.cross_entropy(model(x).reshape(-1, model(x).shape[-1]), y.reshape(-1)).backward()
    opt.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
