"""PES and ES against the exact gradient of a quadratic family, and their bookkeeping on scripted unrolls.

Statistical tests: the N particle terms of one estimate are i.i.d. (independent perturbations, histories and
data), so their mean is within z·(sample std)/√N of its expectation per coordinate. With d coordinates and
z = Φ⁻¹(1 − α/(2d)) (Bonferroni) a correct estimator fails with probability ≤ α = 1e-6 (CLT approximation;
N = 4000). The seed is fixed, so the outcome is reproducible; the power check below shows the same test
rejects a biased estimator by a wide margin.
"""

import math
from statistics import NormalDist

import pytest
import torch

from mulo.meta.estimators import ES, PES
from mulo.meta.truncation import LogUniformTruncation
from mulo.meta.unroll import QuadraticUnroll, TruncatedStep, UnrollOutput

ALPHA = 1e-6
N = 4000
T = 5
NO_RESET = LogUniformTruncation(10**6, 10**6, 1)  # never done, no offset: every particle is at step k·T


def quadratic():
    rho = torch.tensor([0.9, 0.5, 0.7])
    a = torch.tensor([1.0, 2.0, 0.5])
    c = torch.tensor([1.0, -1.0, 0.5])
    return QuadraticUnroll(rho, a, c, N, NO_RESET, noise=0.1, x0=torch.tensor([0.3, 0.0, -0.2]))


def z_scores(out, exact):
    se = out.particle_grads.std(0) / math.sqrt(out.particle_grads.shape[0])
    return ((out.grad - exact) / se).abs()


def z_limit(d):
    return NormalDist().inv_cdf(1 - ALPHA / (2 * d))


def exact_window_grad(q, theta, window):
    th = theta.clone().requires_grad_()
    return torch.autograd.grad(q.window_loss(th, window * T, T), th)[0]


@pytest.mark.parametrize("estimator", [PES, ES], ids=["PES", "ES"])
def test_first_window_matches_exact_gradient(estimator):
    """From fresh inner states both estimators are unbiased for the window's loss."""
    q = quadratic()
    est = estimator(q, std=0.01, unroll_length=T)
    theta = torch.tensor([0.05, -0.1, 0.2], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    state = est.init_state(theta, gen)
    out = est.estimate(theta, state, gen)
    z = z_scores(out, exact_window_grad(q, theta, 0))
    assert (z < z_limit(3)).all(), f"|z| = {z.tolist()} ≥ {z_limit(3):.2f} (estimate {out.grad}, failure prob 1e-6)"


def test_pes_is_unbiased_for_later_windows_and_truncated_es_is_not():
    """Third window of persistent unrolls: PES (with its accumulator) matches the gradient of the window's
    loss through the whole trajectory; truncated ES (A ≡ 0) misses the dependence on earlier windows and
    the same test rejects it — the test has power."""
    theta = torch.tensor([0.05, -0.1, 0.2], dtype=torch.float64)
    results = {}
    for estimator in (PES, ES):
        q = quadratic()
        est = estimator(q, std=0.01, unroll_length=T)
        gen = torch.Generator().manual_seed(2)
        state = est.init_state(theta, gen)
        for _ in range(3):
            out = est.estimate(theta, state, gen)
        results[estimator.__name__] = z_scores(out, exact_window_grad(q, theta, 2))
    assert (results["PES"] < z_limit(3)).all(), f"PES |z| = {results['PES'].tolist()}"
    assert results["ES"].max() > 5 * z_limit(3), f"ES should be detectably biased, |z| = {results['ES'].tolist()}"


class Scripted(TruncatedStep):
    """Returns given losses/dones regardless of θ, to check the estimator's arithmetic."""

    def __init__(self, losses, masks, dones):
        self.out = UnrollOutput(losses, masks, dones)
        self.num_particles = masks.shape[1]
        self.theta_size = 2

    def init_state(self, generator):
        return {}

    def unroll(self, state, thetas, steps, generator):
        self.thetas = thetas.clone()
        return self.out


def test_pes_split_before_and_after_done_and_accumulator_reset():
    # 2 particles, 4 steps; particle 1 is done at step 1 (its step 2 is a reset: mask 0).
    lp = torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 0.0], [4.0, 1.0]], dtype=torch.float64)
    ln = torch.tensor([[0.5, 1.0], [1.0, 1.0], [2.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    masks = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 1]], dtype=torch.float64)
    dones = torch.tensor([[0, 0], [0, 1], [0, 0], [0, 0]], dtype=torch.bool)
    step = Scripted(torch.cat([lp, ln], dim=1), masks, dones)
    sigma = 0.5
    est = PES(step, std=sigma, unroll_length=4)
    theta = torch.zeros(2, dtype=torch.float64)
    state = est.init_state(theta, torch.Generator().manual_seed(0))
    acc0 = torch.tensor([[1.0, -1.0], [2.0, 3.0]], dtype=torch.float64)
    state["accumulator"] = acc0.clone()
    gen = torch.Generator().manual_seed(5)
    out = est.estimate(theta, state, gen)
    eps = step.thetas[:2]
    assert torch.equal(step.thetas[2:], -eps)  # antithetic
    delta = lp - ln
    # particle 0: no done → all of Δ goes with (A + ε); particle 1: steps 1.. (inclusive) go with ε only
    a = torch.tensor([delta[:, 0].sum() / 4, delta[0, 1] / 3], dtype=torch.float64)
    b = torch.tensor([0.0, (delta[1, 1] + delta[3, 1]) / 3], dtype=torch.float64)
    per = (a[:, None] * (acc0 + eps) + b[:, None] * eps) / (2 * sigma**2)
    torch.testing.assert_close(out.particle_grads, per, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.grad, per.mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(state["accumulator"], torch.stack([acc0[0] + eps[0], eps[1]]), rtol=0, atol=0)
    expected_loss = (((lp + ln) / 2 * masks).sum(0) / masks.sum(0)).mean()
    assert out.meta_loss == pytest.approx(float(expected_loss), rel=1e-12)

    es = ES(step, std=sigma, unroll_length=4)
    es_state = es.init_state(theta, torch.Generator().manual_seed(0))
    out_es = es.estimate(theta, es_state, torch.Generator().manual_seed(5))
    torch.testing.assert_close(out_es.particle_grads, (a + b)[:, None] * eps / (2 * sigma**2), rtol=1e-12, atol=0)
    assert torch.equal(es_state["accumulator"], torch.zeros(2, 2, dtype=torch.float64))


def test_bad_estimator_settings_raise():
    with pytest.raises(ValueError, match="std"):
        PES(quadratic(), std=0.0)
    with pytest.raises(ValueError, match="unroll_length"):
        ES(quadratic(), unroll_length=0)
