"""The held-out presets of mulo eval (nm): rows with provenance, the held-out metric reads the held-out set
(and nothing feeds it to training), schedules reach the optimizer, tuning is transferred and reused,
divergence is recorded, the preset's base is the mulo_nm meta-training's."""

import json
import math

import pytest
import torch

from mulo.data.procedural import ClassificationSource
from mulo.eval import common, heldout
from mulo.eval.common import Column
from mulo.meta.inner import InnerSchedule

PROVENANCE = ("git_sha", "torch_version", "python", "device", "threads", "date", "preset")


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def quick_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("nm") / "h.jsonl"
    heldout.run(out, "nm_quick", log=lambda *_: None)
    return out, _rows(out)


def test_quick_preset_rows_have_provenance_columns_and_transferred_lrs(quick_rows):
    _, rows = quick_rows
    assert {r["sweep"] for r in rows} == {"tune", "width", "depth", "horizon", "ood_lm"}
    for r in rows:
        for key in (*PROVENANCE, "task", "dataset", "optimizer", "schedule", "lr", "seed", "heldout_loss"):
            assert key in r, key
        assert r["preset"] == "nm_quick" and r["protocol"] == "heldout" and not r["diverged"]
        assert r["heldout_curve"][-1] == [r["steps"], r["heldout_loss"], r["train_loss"]]
        assert [t for t, _ in r["param_norm_curve"]] == [t for t, _, _ in r["heldout_curve"]]
        assert all(n > 0 and math.isfinite(n) for _, n in r["param_norm_curve"])
    runs = [r for r in rows if r["sweep"] != "tune"]
    cols = {(r["optimizer"], r["schedule"]) for r in runs if r["kind"] == "mlp"}
    assert cols == {(o, s) for o in ("mulo", "muadam", "adamw") for s in ("constant", "cosine")}
    assert {r["optimizer"] for r in runs if r["kind"] == "lm"} == {"mulo", "muadam"}  # no SP twin for AdamW
    for r in runs:
        if r["optimizer"] == "mulo":
            assert r["lr"] == 1.0 and r["meta_weights"] == "mulo_nm" and len(r["meta_weights_sha256"]) == 16
            # the config settings that change the update: mulo_nm clamps its time features, has no nominal term
            assert r["meta_weights_time_clamp"] == 1000.0 and r["meta_weights_nominal"] is None
        else:
            assert r["meta_weights_sha256"] is None
    # per base task, optimizer and schedule: the tuned lr is the grid point with the lowest mean held-out
    # loss, and every run of that family (any width, depth or horizon) uses it
    for dataset, width in heldout.PRESETS["nm_quick"].families:
        for opt in ("muadam", "adamw"):
            for sched in ("constant", "cosine"):
                tune = [
                    r
                    for r in rows
                    if r["sweep"] == "tune"
                    and r["dataset"] == dataset
                    and r["optimizer"] == opt
                    and r["schedule"] == sched
                ]
                assert {r["width"] for r in tune} == {width} and len(tune) == 2
                best = min(tune, key=lambda r: (r["heldout_loss"], r["lr"]))["lr"]
                used = {
                    r["lr"]
                    for r in runs
                    if r["dataset"] == dataset and r["optimizer"] == opt and r["schedule"] == sched
                }
                assert used == {best}
    widths = sorted({r["width"] for r in runs if r["dataset"] == "teacher" and r["sweep"] == "width"})
    assert widths == [8, 16]
    assert {r["base_width"] for r in runs if r["dataset"] == "teacher"} == {8}


def test_tuning_rows_already_written_are_reused(quick_rows, tmp_path):
    out, rows = quick_rows
    copy = tmp_path / "h.jsonl"
    copy.write_text(out.read_text())
    heldout.run(copy, "nm_quick", log=lambda *_: None, sweeps=("width",), optimizers=("adamw",), datasets=("teacher",))
    new = _rows(copy)[len(rows) :]
    assert new and all(r["sweep"] == "width" and r["optimizer"] == "adamw" for r in new)  # no tuning rerun


class _Fixed(ClassificationSource):
    """Training draws from a fixed pool; the held-out set is whatever it is given."""

    name, num_features, num_classes = "fixed", 6, 3

    def __init__(self, heldout_set, shift=0.0):
        super().__init__()
        self._held, self.shift = heldout_set, shift
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(500, 6, generator=g), torch.randint(0, 3, (500,), generator=g)

    def _draw(self, generator, count, split):
        idx = torch.randint(0, 500, (count,), generator=generator)
        return self.x[idx] + self.shift, self.y[idx]

    def heldout_set(self):
        return self._held


def _env_with(source):
    env = heldout.Env(heldout.PRESETS["nm_quick"])
    task = heldout.HTask("mlp", 8, 2, 15, batch=16, dataset="fixed")
    env._data[env.key(task)] = source
    return env, task


def test_heldout_metric_reads_the_heldout_set_and_never_trains_on_it():
    g = torch.Generator().manual_seed(1)
    held_a = (torch.randn(200, 6, generator=g), torch.randint(0, 3, (200,), generator=g))
    held_b = (torch.randn(200, 6, generator=g), torch.randint(0, 3, (200,), generator=g))
    col = Column("muadam")
    runs = {}
    for name, held, shift in (("a", held_a, 0.0), ("b", held_b, 0.0), ("a_moved", held_a, 3.0)):
        env, task = _env_with(_Fixed(held, shift))
        runs[name] = heldout.train(task, col, 0, env, lr=1e-2, record_every=1)
    # another held-out set: the same training (minibatch losses), another held-out loss
    assert runs["a"]["curve"] == runs["b"]["curve"] and runs["a"]["train_loss"] == runs["b"]["train_loss"]
    assert runs["a"]["heldout_loss"] != runs["b"]["heldout_loss"]
    # other training batches: training changes, the held-out set is the same — a fixed model's held-out
    # metric does not depend on the training stream, its training-sample metric does
    assert runs["a"]["curve"] != runs["a_moved"]["curve"]
    env_a, task = _env_with(_Fixed(held_a))
    env_moved, _ = _env_with(_Fixed(held_a, 3.0))
    model = heldout.build(task, "muadam", 0, env_a.source(task))
    torch.nn.init.normal_(model.readout.weight, generator=torch.Generator().manual_seed(2))  # μP: zero at init
    m_a, m_moved = env_a.metrics(task)(model), env_moved.metrics(task)(model)
    assert m_a["heldout_loss"] == m_moved["heldout_loss"] and m_a["train_loss"] != m_moved["train_loss"]
    assert m_a["heldout_loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(model(held_a[0]), held_a[1]).item(), rel=1e-6
    )


@pytest.mark.parametrize("optimizer", ["mulo", "muadam"])
def test_the_schedule_is_the_lr_the_optimizer_steps_with(optimizer):
    """At step t every group steps with its lr × m(t) of meta-training's InnerSchedule (warmup 5%, cosine to
    0 at the last step); μAdam's hidden groups keep their base/width ratio; constant leaves the lr alone."""
    env, _ = _env_with(_Fixed((torch.randn(10, 6), torch.randint(0, 3, (10,)))))
    task = heldout.HTask("mlp", 16, 3, 40, batch=8, dataset="fixed")  # base width 8: μAdam's hidden lr × 1/2
    peak = 1.0 if optimizer == "mulo" else 3e-3
    for schedule in ("cosine", "constant"):
        seen = []
        heldout.train(
            task,
            Column(optimizer, schedule),
            0,
            env,
            lr=peak,
            base_width=8,
            on_step=lambda t, opt, seen=seen: seen.append([(g["role"], g["lr"]) for g in opt.param_groups]),
        )
        assert len(seen) == task.steps
        m = InnerSchedule("cosine", common.WARMUP, 0.0) if schedule == "cosine" else (lambda t, n: 1.0)
        for t, groups in enumerate(seen):
            assert {role for role, _ in groups} >= {"input", "hidden", "output"}
            for role, lr in groups:
                ratio = 0.5 if optimizer == "muadam" and role == "hidden" else 1.0
                assert lr == pytest.approx(peak * ratio * m(t, task.steps), rel=1e-12, abs=1e-15)
        if schedule == "cosine":  # W = ⌊0.05·40⌋ = 2 warmup steps, 0 at the last step
            assert [lr for _, lr in seen[0]][0] == pytest.approx(peak / 2) and all(lr == 0 for _, lr in seen[-1])


def test_a_nonfinite_loss_is_a_recorded_divergence():
    env, task = _env_with(_Fixed((torch.randn(10, 6), torch.randint(0, 3, (10,)))))
    row = heldout.train(task, Column("adamw"), 0, env, lr=1e30)
    assert row["diverged"] and row["diverged_step"] is not None
    assert row["heldout_loss"] == float("inf") and row["train_loss"] == float("inf")


def test_nm_preset_is_the_mulo_nm_base_and_bad_names_raise(tmp_path):
    from mulo.meta.presets import PRESETS as META

    nm = heldout.PRESETS["nm"]
    meta = META["mulo_nm"]
    assert nm.families == tuple((f.dataset, f.width) for f in meta.families)
    assert nm.families == (("mnist1d", 64), ("digits_aug", 32), ("teacher", 16))
    assert (nm.depth, nm.batch, nm.steps) == (2, 128, meta.max_length) == (2, 128, 1000)
    assert (nm.widths, nm.depths, nm.horizons, nm.seeds) == ((1, 4, 16), (3,), (5, 25), 5)
    tasks = nm.tasks(heldout.SWEEPS, ("mnist1d", "digits_aug", "teacher"))
    assert len(tasks) == 3 * 6 + 1 and tasks[-1][1].kind == "lm"
    assert {t.name for _, t, _ in tasks if t.dataset == "teacher"} == {
        "teacher-w16-d2-T1000",
        "teacher-w64-d2-T1000",
        "teacher-w256-d2-T1000",
        "teacher-w16-d6-T1000",
        "teacher-w16-d2-T5000",
        "teacher-w16-d2-T25000",
    }
    for kwargs, match in (
        ({"datasets": ("mnist1d",)}, "unknown datasets"),
        ({"schedules": ("step",)}, "unknown schedules"),
        ({"optimizers": ("sgd",)}, "unknown optimizers"),
    ):
        with pytest.raises(ValueError, match=match):
            heldout.run(tmp_path / "x.jsonl", "nm_quick", **kwargs)


def test_celo2_column_trains_the_sp_twin_with_a_tuned_lr_and_records_its_weights(tmp_path):
    """--optimizers ...,celo2: Celo2 trains the plain (SP) network, its peak lr is tuned per schedule like
    AdamW's and transferred, and its rows name the Celo2 weights (digest of the Celo2 directory, not of a μLO
    one that happens to share the name)."""
    from mulo import evaluation
    from mulo.celo2 import pretrained as celo2_pretrained
    from mulo.lopt import pretrained

    out = tmp_path / "c.jsonl"
    heldout.run(out, "nm_quick", log=lambda *_: None, optimizers="celo2", schedules="constant", datasets="teacher",
                sweeps="width")  # fmt: skip
    rows = _rows(out)
    tune = [r for r in rows if r["sweep"] == "tune"]
    runs = [r for r in rows if r["sweep"] != "tune"]
    assert tune and runs and {r["optimizer"] for r in rows} == {"celo2"}
    assert {r["lr"] for r in runs} == {min(tune, key=lambda r: (r["heldout_loss"], r["lr"]))["lr"]}
    digest = pretrained.model_digest(celo2_pretrained.weights_dir(celo2_pretrained.DEFAULT))[:16]
    assert {(r["meta_weights"], r["meta_weights_sha256"]) for r in runs} == {(celo2_pretrained.DEFAULT, digest)}
    model = heldout.build(heldout.HTask("mlp", 8, 2, 10, 8, dataset="teacher"), "celo2", 0, _Fixed(None))
    assert type(model).__name__ == "SPMLP"
    assert isinstance(evaluation._optimizer(evaluation.OptSpec("celo2", 0.01), model, None), evaluation.mulo.Celo2)


def test_mulo_lr_sets_the_learned_columns_lr_and_rows_record_it(tmp_path):
    """--mulo-lr: the μLO columns run at that lr (no tuning rows), the other columns are untouched, and a bad
    value or a preset without it is refused with the fix."""
    from mulo import evaluation

    out = tmp_path / "m.jsonl"
    kwargs = {"optimizers": "mulo,muadam", "schedules": "constant", "datasets": "teacher", "sweeps": "width"}
    heldout.run(out, "nm_quick", log=lambda *_: None, mulo_lr=0.5, **kwargs)
    rows = [r for r in _rows(out) if r["sweep"] != "tune"]
    assert {r["lr"] for r in rows if r["optimizer"] == "mulo"} == {0.5}
    assert 0.5 not in {r["lr"] for r in rows if r["optimizer"] == "muadam"}
    assert not [r for r in _rows(out) if r["sweep"] == "tune" and r["optimizer"] == "mulo"]
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="mulo_lr must be a positive finite number"):
            heldout.run(tmp_path / "x.jsonl", "nm_quick", mulo_lr=bad, **kwargs)
    with pytest.raises(ValueError, match="held-out presets"):
        evaluation.run(tmp_path / "y.jsonl", "quick", mulo_lr=0.5)
