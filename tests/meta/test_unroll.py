"""Truncated population unrolls: antithetic pairs share data, inits and resets; schedules; batching."""

import pytest
import torch

from mulo.backends.population import population_step
from mulo.lopt.network import LOptConfig
from mulo.meta import theta as theta_mod
from mulo.meta.tasks import ImageMLPFamily, ImageMLPSpec
from mulo.meta.truncation import LogUniformTruncation
from mulo.meta.unroll import PopulationUnroll
from tests.helpers import random_net

SPEC = ImageMLPSpec("digits", width=8, depth=2, batch_size=16)
PAIRS = 3


def make_unroll(truncation, parameterization="mup", **kw):
    family = ImageMLPFamily(ImageMLPSpec(SPEC.dataset, SPEC.width, SPEC.depth, SPEC.batch_size, parameterization))
    return PopulationUnroll(family, truncation, PAIRS, LOptConfig(), **kw)


def random_theta():
    return theta_mod.flatten(random_net())


def test_equal_thetas_keep_pairs_identical_through_resets():
    """With θ⁺ = θ⁻ the two members of a pair must stay bit-identical: same batches, same fresh inits on
    reset, same schedule. Different particles must differ (they get different data and inits)."""
    unroll = make_unroll(LogUniformTruncation(3, 6, 4))
    gen = torch.Generator().manual_seed(0)
    state = unroll.init_state(gen)
    thetas = torch.stack([random_theta() for _ in range(PAIRS)])
    out = unroll.unroll(state, torch.cat([thetas, thetas]), 12, gen)
    assert out.masks.min() == 0, "the schedule should have reset some particle within 12 steps"
    assert torch.equal(out.losses[:, :PAIRS], out.losses[:, PAIRS:])
    for name, p in state["params"].items():
        assert torch.equal(p[:PAIRS], p[PAIRS:]), name
        assert not torch.equal(p[0], p[1]), name
        for key, value in state["opt"][name].items():
            assert torch.equal(value[:PAIRS], value[PAIRS:]), (name, key)


def test_batches_are_shared_within_pairs():
    unroll = make_unroll(LogUniformTruncation(50, 50, 1))
    seen = []
    original = unroll.task.batches

    def recording(generator, n):
        batch = original(generator, n)
        seen.append(batch)
        return batch

    unroll.task.batches = recording
    gen = torch.Generator().manual_seed(1)
    state = unroll.init_state(gen)
    grads_seen = []

    def step_fn(params, grads, states, lrs, wds, weights):
        grads_seen.append([g.clone() for g in grads])
        population_step(params, grads, states, lrs, wds, weights)

    unroll.step_fn = step_fn
    theta = random_theta()
    eps = 0.01 * torch.randn(PAIRS, theta.numel())
    unroll.unroll(state, torch.cat([theta + eps, theta - eps]), 2, gen)
    assert len(seen) == 2 and seen[0][0].shape[:2] == (PAIRS, SPEC.batch_size)
    assert not torch.equal(seen[0][0][0], seen[0][0][1])  # particles get different batches
    # step 0: the pair's members start equal and see the same batch → identical gradients
    for g in grads_seen[0]:
        assert torch.equal(g[:PAIRS], g[PAIRS:])


def test_schedule_offsets_lengths_masks():
    trunc = LogUniformTruncation(4, 9, 5)
    gen = torch.Generator().manual_seed(3)
    lengths = trunc.sample_lengths(20000, gen)
    assert lengths.min() == 4 and lengths.max() <= 9
    # log-uniform: P(L < 6) = ln(6/4)/ln(9/4) ≈ 0.5 (vs 0.4 for uniform on [4, 9])
    assert abs(float((lengths < 6).double().mean()) - 0.5) < 0.02
    offsets = trunc.initial_offsets(20000, gen)
    assert offsets.min() == 0 and offsets.max() == 4
    unroll = make_unroll(trunc)
    state = unroll.init_state(gen)
    start, length = state["inner_step"].clone(), state["length"].clone()
    thetas = torch.stack([random_theta() for _ in range(2 * PAIRS)])
    out = unroll.unroll(state, thetas, 12, gen)
    for i in range(PAIRS):
        # first done where start + (t + 1) reaches L, then the next step is a reset with mask 0
        t_done = max(0, int(length[i] - start[i]) - 1)
        assert out.dones[:t_done, i].sum() == 0 and bool(out.dones[t_done, i])
        assert out.masks[t_done + 1, i] == 0 and out.masks[: t_done + 1, i].min() == 1
        assert (out.losses[t_done + 1, [i, i + PAIRS]] == 0).all()


def test_population_trains_the_sp_twin_too_and_losses_are_normalized():
    unroll = make_unroll(LogUniformTruncation(50, 50, 1), parameterization="sp")
    assert all(r.lr_scale == 1.0 for r in unroll.task.roles.values())
    gen = torch.Generator().manual_seed(4)
    state = unroll.init_state(gen)
    out = unroll.unroll(state, torch.stack([random_theta() for _ in range(2 * PAIRS)]), 3, gen)
    clip = unroll.task.loss_clip
    assert (out.losses >= 0).all() and (out.losses <= clip).all()
    got = unroll.task.normalized_loss(torch.tensor([float("nan"), -1.0, 100.0], dtype=torch.float64))
    assert got.tolist() == [clip, 0.0, clip]


def test_log_meta_loss_is_the_log_of_the_normalized_loss_on_the_same_trajectory():
    """The "log" meta-loss changes what is emitted, never the trajectory: same seed → same parameters, and
    the emitted values are ln(normalized + floor·clip) of the "normalized" run's, reset slots still 0."""
    from mulo.meta.tasks import LOG_LOSS_FLOOR

    outs, params = [], []
    thetas = torch.stack([random_theta() for _ in range(2 * PAIRS)])
    for kind in ("normalized", "log"):
        unroll = make_unroll(LogUniformTruncation(3, 6, 4), meta_loss=kind)
        gen = torch.Generator().manual_seed(11)
        state = unroll.init_state(gen)
        outs.append(unroll.unroll(state, thetas, 12, gen))
        params.append(state["params"])
    lin, log = outs
    assert torch.equal(lin.masks, log.masks) and torch.equal(lin.dones, log.dones)
    for name in params[0]:
        assert torch.equal(params[0][name], params[1][name]), name
    live = lin.masks.repeat(1, 2).bool()
    assert live.sum() > 0 and (~live).sum() > 0, "want both live and reset slots in the window"
    clip = unroll.task.loss_clip
    torch.testing.assert_close(log.losses[live], torch.log(lin.losses[live] + LOG_LOSS_FLOOR * clip))
    assert (log.losses[~live] == 0).all()
    assert not torch.equal(log.losses[live], lin.losses[live])


def test_log_meta_loss_weighs_a_halving_the_same_at_every_scale_and_names_bad_kinds():
    task = make_unroll(LogUniformTruncation(5, 5, 1)).task
    loss = torch.tensor([1.0, 0.5, 1e-3, 5e-4, float("nan")], dtype=torch.float64)
    got = task.meta_loss(loss, "log")
    assert abs(float(got[0] - got[1]) - float(got[2] - got[3])) < 0.01
    assert float(got[4]) == float(task.meta_loss(torch.tensor(task.loss_clip, dtype=torch.float64), "log"))
    with pytest.raises(ValueError, match="meta_loss must be one of .*'log'"):
        task.meta_loss(loss, "square")
    with pytest.raises(ValueError, match="meta_loss must be one of"):
        make_unroll(LogUniformTruncation(5, 5, 1), meta_loss="square")


def test_label_noise_replaces_a_fraction_of_labels_afresh_and_zero_noise_draws_nothing():
    family = ImageMLPFamily(ImageMLPSpec("digits", 8, 2, 512, "mup", label_noise=0.3))
    clean = ImageMLPFamily(ImageMLPSpec("digits", 8, 2, 512, "mup"))
    assert family.name.endswith("_noise0.3") and clean.name.endswith("_digits")
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    xn, yn = family.sample(g1).batches(g1, 4)
    xc, yc = clean.sample(g2).batches(g2, 4)
    assert torch.equal(xn, xc), "the same images: noise only touches labels"
    changed = (yn != yc).float().mean()
    assert 0.2 < changed < 0.34, changed  # 0.3 replaced, 1/10 of those by their own class
    # a clean family draws only the indices (label noise off changes no random stream)
    ref = torch.Generator().manual_seed(5)
    torch.randint(0, 1797, (4, 512), generator=ref)
    assert torch.equal(g2.get_state(), ref.get_state())
    with pytest.raises(ValueError, match="label_noise must lie in"):
        ImageMLPFamily(ImageMLPSpec("digits", 8, 2, 16, "mup", label_noise=1.0))


@pytest.mark.parametrize("parameterization", ["mup", "sp"])
@pytest.mark.parametrize("depth", [1, 3])
def test_batched_mlp_gradients_equal_vmap_of_the_loss(parameterization, depth):
    """The hand-written batched forward/backward (what the inner steps use) against vmap(grad(loss))."""
    spec = ImageMLPSpec("digits", width=12, depth=depth, batch_size=9, parameterization=parameterization)
    task = ImageMLPFamily(spec).sample(torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    inits = [task.init(gen) for _ in range(4)]
    params = {k: torch.stack([p[k] for p in inits]).double() for k in inits[0]}
    params = {k: v + 0.3 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    x, y = task.batches(gen, 4)
    want_g, want_l = torch.func.vmap(torch.func.grad_and_value(task.loss))(params, (x.double(), y))
    got_g, got_l = task.population_grads_and_losses(params, (x.double(), y))
    torch.testing.assert_close(got_l, want_l, rtol=1e-12, atol=1e-14)
    assert set(got_g) == set(want_g)
    for k in want_g:
        torch.testing.assert_close(got_g[k], want_g[k], rtol=1e-10, atol=1e-13, msg=k)


def test_reparameterized_gradients_are_the_chain_rule_of_the_scaled_loss():
    from mulo.meta.inner import reparam_global

    spec = ImageMLPSpec("digits", width=8, depth=2, batch_size=6)
    unroll = PopulationUnroll(
        ImageMLPFamily(spec), LogUniformTruncation(10, 20), num_pairs=2, lopt_config=LOptConfig(),
        dtype=torch.float64, reparam=(1e-3, 1e3),
    )  # fmt: skip
    gen = torch.Generator().manual_seed(2)
    state = unroll.init_state(gen)
    x, y = unroll.task.batches(gen, 4)
    batch = (x.double(), y)
    got_g, got_l = unroll.grads_and_losses(state, batch)
    fn = torch.func.vmap(torch.func.grad_and_value(reparam_global(unroll.task.loss)))
    want_g, want_l = fn(state["params"], batch, state["scale"])
    torch.testing.assert_close(got_l, want_l, rtol=1e-12, atol=1e-14)
    for k in want_g:
        torch.testing.assert_close(got_g[k], want_g[k], rtol=1e-10, atol=1e-13, msg=k)
