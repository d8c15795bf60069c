"""Inner-run options of meta-training: schedules reach the population step, decoupled weight decay,
reparam global leaves the function unchanged, defaults change nothing, CLI options reach the checkpoint."""

import math

import pytest
import torch

from mulo import cli
from mulo.backends.population import init_population_state, population_step
from mulo.lopt.network import LOptConfig
from mulo.meta import theta as theta_mod
from mulo.meta.inner import REPARAM_GLOBAL_RANGE, InnerSchedule
from mulo.meta.presets import OMITTED_AT_DEFAULT, MetaTrainConfig, preset
from mulo.meta.tasks import ImageMLPFamily, ImageMLPSpec
from mulo.meta.trainer import CHECKPOINT, MetaTrainer, evaluate
from mulo.meta.truncation import LogUniformTruncation
from mulo.meta.unroll import PopulationUnroll
from tests.helpers import hetero_grad, random_net

PAIRS = 3


def make_unroll(dataset="teacher", truncation=(3, 7, 4), **kw):
    family = ImageMLPFamily(ImageMLPSpec(dataset, 8, 2, 16))
    return PopulationUnroll(family, LogUniformTruncation(*truncation), PAIRS, LOptConfig(), **kw)


def thetas(n=2 * PAIRS):
    return torch.stack([theta_mod.flatten(random_net(torch.Generator().manual_seed(i))).float() for i in range(n)])


def expected_multiplier(kind, t, length, warmup, final):
    """The schedule written out independently of InnerSchedule."""
    w = math.floor(warmup * length)
    if t < w:
        return (t + 1) / w
    f = min(max((t - w) / max(length - 1 - w, 1), 0.0), 1.0)
    if kind == "cosine":
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * f))
    if kind == "linear":
        return final + (1 - final) * (1 - f)
    return 1.0


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear"])
def test_schedule_values(kind):
    final = 0.0 if kind == "constant" else 0.1
    sched = InnerSchedule(kind, 0.1, final)
    for length in (1, 7, 100, 1000):
        for t in {0, 1, length // 10 - 1, length // 10, length // 2, length - 1, length + 3}:
            if t >= 0:
                assert sched(t, length) == pytest.approx(expected_multiplier(kind, t, length, 0.1, final), abs=1e-12)
    assert sched(9, 100) == 1.0 and sched(0, 100) == pytest.approx(0.1)  # warmup (t+1)/W, W = 10
    if kind != "constant":
        assert sched(10, 100) == 1.0 and sched(99, 100) == pytest.approx(final, abs=1e-12)
    assert InnerSchedule().is_constant and not sched.is_constant


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_a_schedule_reaches_the_population_step_unchanged(kind):
    """The lrs the population step receives are lr_scale × the schedule at each member's own step and
    length (pairs share them), through resets; weight decay arrives as given."""
    calls, holder = [], {}

    def recording(params, grads, states, lrs, wds, weights):
        state = holder["state"]
        steps, lengths = state["inner_step"].tolist(), state["length"].tolist()  # before this step's advance
        calls.append((steps, lengths, lrs, wds))
        population_step(params, grads, states, [v[0] for v in lrs], wds, weights)

    unroll = make_unroll(schedule=InnerSchedule(kind, 0.2, 0.05), weight_decay=0.01, step_fn=recording)
    gen = torch.Generator().manual_seed(0)
    state = holder["state"] = unroll.init_state(gen)
    names = list(state["params"])
    out = unroll.unroll(state, thetas(), 12, gen)
    assert out.masks.min() == 0, "want resets inside the window"
    assert len(calls) == 12
    seen = set()
    for steps, lengths, lrs, wds in calls:
        assert wds == [0.01] * len(names)
        for k, name in enumerate(names):
            scale = unroll.task.roles[name].lr_scale
            want = [scale * expected_multiplier(kind, t, n, 0.2, 0.05) for t, n in zip(steps, lengths)]
            assert lrs[k] == pytest.approx(want + want, rel=1e-12, abs=0)
        seen.update(steps)
    assert len(seen) > 3, "the window should cover several steps of the schedule"


def test_per_member_lrs_and_weight_decay_equal_single_member_steps():
    """population_step with per-member lrs: every member moves exactly as alone with its own lr and
    decoupled weight decay (float64); a member with a non-finite gradient changes nothing (no decay)."""
    m = 4
    gen = torch.Generator().manual_seed(0)
    net = random_net(gen)
    weights = theta_mod.population_weights(theta_mod.flatten(net).double().expand(m, -1).clone(), net.config)
    params = [torch.randn(m, 5, 3, dtype=torch.float64, generator=gen), torch.randn(m, 7, dtype=torch.float64)]
    grads = [torch.stack([hetero_grad(p.shape[1:], generator=gen) for _ in range(m)]) for p in params]
    grads[1][2, 0] = float("nan")
    states = [init_population_state(p) for p in params]
    lrs = [[0.5, 0.0, 2.0, 1.0], [1e-3, 0.3, 0.3, 0.7]]
    wds = [0.1, 0.02]
    got = [p.clone() for p in params]
    got_states = [{k: v.clone() for k, v in st.items()} for st in states]
    population_step(got, grads, got_states, lrs, wds, weights)
    for j in range(m):
        alone = [p[j : j + 1].clone() for p in params]
        st = [{k: v[j : j + 1].clone() for k, v in s.items()} for s in states]
        w = theta_mod.population_weights(theta_mod.flatten(net).double()[None], net.config)
        population_step(alone, [g[j : j + 1] for g in grads], st, [lr[j] for lr in lrs], wds, w)
        for i in range(len(params)):
            torch.testing.assert_close(got[i][j], alone[i][0], rtol=1e-12, atol=1e-14)
            for key in st[i]:
                torch.testing.assert_close(got_states[i][key][j], st[i][key][0], rtol=0, atol=0)
    assert torch.equal(got[1][2], params[1][2]), "a skipped step must not decay the parameter"
    assert not torch.equal(got[0][1], params[0][1]) or lrs[0][1] == 0.0


def test_defaults_change_nothing_and_a_schedule_draws_no_random_numbers():
    """Default options: the plain step, identical to the explicit defaults. A schedule and weight decay
    change the trajectory but not one random draw; reparam draws (only) the scales."""
    runs = {}
    for name, kw in {
        "default": {},
        "explicit": dict(schedule=InnerSchedule(), weight_decay=0.0, reparam=None),
        "schedule": dict(schedule=InnerSchedule("cosine", 0.1), weight_decay=1e-2),
    }.items():
        unroll = make_unroll(**kw)
        gen = torch.Generator().manual_seed(2)
        state = unroll.init_state(gen)
        out = unroll.unroll(state, thetas(), 10, gen)
        runs[name] = (unroll, state, out, gen.get_state())
    assert runs["default"][0]._plain_step and runs["explicit"][0]._plain_step
    assert not runs["schedule"][0]._plain_step
    for name in ("explicit", "schedule"):
        assert torch.equal(runs[name][3], runs["default"][3]), name
    assert torch.equal(runs["explicit"][2].losses, runs["default"][2].losses)
    assert not torch.equal(runs["schedule"][2].losses, runs["default"][2].losses)
    assert "scale" not in runs["default"][1]


@pytest.mark.parametrize("scale", [1e-3, 0.37, 1e3])
def test_reparam_leaves_the_function_unchanged(scale):
    """Loss at s·(w₀/s) equals loss at w₀ (float tolerance), and so does the unroll's first emitted loss."""
    from mulo.meta.inner import reparam_global

    task = ImageMLPFamily(ImageMLPSpec("teacher", 16, 2, 64)).sample(torch.Generator())
    w0 = task.init(torch.Generator().manual_seed(1))
    x, y = task.batches(torch.Generator().manual_seed(2), 1)
    s = torch.tensor(scale)
    got = reparam_global(task.loss)({k: v / s for k, v in w0.items()}, (x[0], y[0]), s)
    torch.testing.assert_close(got, task.loss(w0, (x[0], y[0])), rtol=1e-5, atol=1e-6)


def test_reparam_unroll_starts_at_w0_over_s_with_the_same_losses():
    plain, rep = make_unroll(), make_unroll(reparam=REPARAM_GLOBAL_RANGE)
    th = thetas()
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    s1, s2 = plain.init_state(g1), rep.init_state(g2)
    s = s2["scale"]
    assert torch.equal(s[:PAIRS], s[PAIRS:]), "a pair shares its task's scale"
    assert (s >= 1e-3).all() and (s <= 1e3).all() and s.max() / s.min() > 10
    for k, v in s1["params"].items():  # the scales are drawn after the inits: same w₀
        torch.testing.assert_close(s2["params"][k] * s.view(-1, *([1] * (v.dim() - 1))), v, rtol=1e-6, atol=1e-7)
    x, y = plain.task.batches(torch.Generator().manual_seed(8), PAIRS)
    batch = (torch.cat([x, x]), torch.cat([y, y]))
    (g_plain, l_plain), (g_rep, l_rep) = (u.grads_and_losses(st, batch) for u, st in ((plain, s1), (rep, s2)))
    torch.testing.assert_close(l_rep, l_plain, rtol=1e-5, atol=1e-6)  # the same function of w₀
    for k, g in g_plain.items():  # the optimizer sees the gradient times s
        torch.testing.assert_close(g_rep[k], g * s.view(-1, *([1] * (g.dim() - 1))), rtol=1e-4, atol=1e-6)
    out = rep.unroll(s2, th, 8, g2)  # through resets: new scales, still shared by pairs
    assert out.masks.min() == 0 and torch.equal(s2["scale"][:PAIRS], s2["scale"][PAIRS:])
    assert torch.isfinite(out.losses).all()


def test_config_json_omits_the_new_options_at_their_defaults():
    """Older checkpoints (written before these options) compare equal and resume unchanged."""
    for name in ("tiny", "small", "mulo_cpu", "mulo_m"):
        d = preset(name).to_json()
        assert not set(OMITTED_AT_DEFAULT) & set(d), name
        assert MetaTrainConfig.from_json(d) == preset(name)
    d = preset("tiny", inner_schedule="linear", reparam_global=True).to_json()
    assert (d["inner_schedule"], d["reparam_global"]) == ("linear", True)
    assert MetaTrainConfig.from_json(d) == preset("tiny", inner_schedule="linear", reparam_global=True)


def test_cli_inner_options_reach_the_checkpoint_and_resume_refuses_other_values(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["meta-train", "--out", str(out), "--outer-steps", "1", "--num-pairs", "1", "--no-progress"]
    opts = ["--dataset", "teacher", "--inner-schedule", "linear", "--inner-warmup", "0.1"]
    opts += ["--inner-lr-final", "0.05", "--inner-weight-decay", "0.001", "--reparam-global"]
    assert cli.main(args + opts) == 0
    saved = torch.load(out / CHECKPOINT, weights_only=True)
    cfg = saved["config"]
    assert (cfg["inner_schedule"], cfg["inner_warmup"], cfg["inner_lr_final"]) == ("linear", 0.1, 0.05)
    assert (cfg["inner_weight_decay"], cfg["reparam_global"]) == (0.001, True)
    assert {f["dataset"] for f in cfg["families"]} == {"teacher"}
    assert "scale" in saved["estimators"][0]["unroll"]
    assert cli.main(args + opts + ["--outer-steps", "2"]) == 0  # same options resume
    changed = opts[:6] + ["--no-reparam-global", "--inner-weight-decay", "0"]
    assert cli.main(args + changed) == 2
    err = capsys.readouterr().err
    assert "different settings (inner_lr_final, inner_weight_decay, reparam_global)" in err
    assert cli.main(args + ["--dataset", "teacher"]) == 2
    assert "inner_schedule, inner_warmup" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--inner-warmup", "1.5"], "--inner-warmup.*in \\[0, 1\\)"),
        (["--inner-warmup", "nan"], "--inner-warmup"),
        (["--inner-schedule", "cosine", "--inner-lr-final", "2"], "--inner-lr-final.*\\[0, 1\\]"),
        (["--inner-lr-final", "0.1"], "--inner-lr-final 0.1 needs a decay: pass --inner-schedule cosine or linear"),
        (["--inner-weight-decay", "-1"], "--inner-weight-decay.*≥ 0"),
        (["--dataset", "mnist2d"], "mnist2d"),
    ],
)
def test_bad_inner_options_are_clear_errors(tmp_path, capsys, bad, message):
    out = tmp_path / "run"
    args = ["meta-train", "--out", str(out), "--outer-steps", "1", "--num-pairs", "1", "--no-progress"]
    assert cli.main(args + bad) == 2
    err = capsys.readouterr().err
    assert __import__("re").search(message, err), err
    assert not (out / CHECKPOINT).exists()


def test_cli_rejects_an_unknown_schedule(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["meta-train", "--out", str(tmp_path), "--inner-schedule", "step"])
    assert "invalid choice: 'step'" in capsys.readouterr().err


def test_nm_families_resume_exactly_with_small_checkpoints(tmp_path, monkeypatch):
    """The mulo_nm families (MNIST-1D pool shrunk for the test), schedule and reparam: a killed run resumes
    to the uninterrupted θ, and the checkpoint of the real preset's shapes stays a few MB."""
    from mulo.data import procedural
    from mulo.meta import tasks

    monkeypatch.setenv("MULO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(procedural, "MNIST1D_TRAIN", 900)
    monkeypatch.setattr(procedural, "MNIST1D_HELDOUT", 100)
    procedural.load_source.cache_clear()
    tasks._load.cache_clear()
    try:
        cfg = preset("mulo_nm", num_pairs=2, unroll_length=3, outer_steps=4, checkpoint_every=2, reparam_global=True)
        assert [f.dataset for f in cfg.families] == ["mnist1d", "digits_aug", "teacher"]
        straight = MetaTrainer(cfg, tmp_path / "a", progress=False)
        straight.run()

        def kill(record):
            if record["outer_step"] == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            MetaTrainer(cfg, tmp_path / "b", progress=False).run(on_step=kill)
        resumed = MetaTrainer(cfg, tmp_path / "b", progress=False)
        assert resumed.next_step == 2
        resumed.run()
        assert torch.equal(resumed.theta.detach(), straight.theta.detach())
        log = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
        assert set(__import__("json").loads(log[0])["family_meta_loss"]) == {
            "mnist1d_w64",
            "digits_aug_w32",
            "teacher_w16",
        }
        # the preset's own checkpoint (8 pairs, every particle's state) stays small enough to commit
        MetaTrainer(preset("mulo_nm", unroll_length=1, outer_steps=1), tmp_path / "c", progress=False).run()
        assert (tmp_path / "c" / CHECKPOINT).stat().st_size < 5e6
        held = evaluate(straight.theta.detach(), cfg, steps=5, seeds=2, family=2, split="heldout")
        assert 0 < held < 1.5 * math.log(10)
    finally:
        procedural.load_source.cache_clear()
        tasks._load.cache_clear()


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_scheduled_inner_steps_through_the_fused_kernels_match_the_reference(tmp_path, backend, monkeypatch):
    """A schedule and weight decay on --inner-backend cpu|triton (one fused call per pass for the whole
    population, per-member lrs passed straight to the kernels) give the reference run's numbers, rounding
    aside. Triton runs in its interpreter on CPU."""
    if backend == "triton":
        pytest.importorskip("mulo.backends.triton_backend", reason="needs triton")
    from mulo.backends import load_backend

    calls = []
    impl = load_backend(backend)
    real = impl.population_step
    monkeypatch.setattr(impl, "population_step", lambda *a: calls.append(a[3]) or real(*a))
    unroll = 6 if backend == "cpu" else 2  # the interpreter takes seconds per population step
    cfg = preset("tiny", num_pairs=2, unroll_length=unroll, outer_steps=1, inner_schedule="cosine", inner_warmup=0.1)
    cfg = cfg.replace(inner_weight_decay=1e-2, min_length=5, max_length=9, max_initial_offset=3)
    runs = {}
    for name in ("reference", backend):
        trainer = MetaTrainer(cfg, tmp_path / name, progress=False, inner_backend=name)
        trainer.run()
        runs[name] = trainer
    ref, fused = (runs[b].states[0]["unroll"]["params"] for b in ("reference", backend))
    for k in ref:
        torch.testing.assert_close(fused[k], ref[k], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(runs[backend].theta.detach(), runs["reference"].theta.detach(), rtol=0, atol=1e-5)
    assert calls and all(isinstance(lr, list) and len(lr) == 2 * 2 for lrs in calls for lr in lrs), (
        "an estimator's whole population (2 pairs, ± each) in one call, with one lr per member"
    )
