"""Gradient estimators: PES and (truncated) ES behind one interface (docs/ALGORITHM.md §7, steps 1 and 3).

For N antithetic pairs with perturbations ε_i ~ N(0, σ²I), one window of T inner steps gives per step
Δ_t = ℓ⁺_t − ℓ⁻_t, the mask m_t and h_t = 1 from the first step of the window at which ``done`` was set
(inclusive). With D = Σ_t m_t:

    a_i = Σ_t Δ_t (1 − h_t) m_t / D,    b_i = Σ_t Δ_t h_t m_t / D
    ĝ   = (1/N) Σ_i [a_i (A_i + ε_i) + b_i ε_i] / (2σ²)
    A_i ← ε_i if ``done`` was set in this window, else A_i + ε_i

PES keeps the accumulator A_i (the sum of the perturbations the current trajectory has seen before this
window), which makes it unbiased for the whole trajectory; ES is the same with A_i ≡ 0 (biased by the
truncation, lower variance). Swapping one for the other is one line.
"""

from __future__ import annotations

import abc
import dataclasses

import torch

from mulo.meta.unroll import TruncatedStep


@dataclasses.dataclass
class EstimatorOutput:
    """``grad`` (D,), the per-particle terms ``particle_grads`` (N, D) whose mean is ``grad``, and
    ``meta_loss``: the masked mean of (ℓ⁺ + ℓ⁻)/2 over the window (a Python float)."""

    grad: torch.Tensor
    particle_grads: torch.Tensor
    meta_loss: float


class GradientEstimator(abc.ABC):
    truncated_step: TruncatedStep

    @abc.abstractmethod
    def init_state(self, theta: torch.Tensor, generator: torch.Generator) -> dict: ...

    @abc.abstractmethod
    def estimate(self, theta: torch.Tensor, state: dict, generator: torch.Generator) -> EstimatorOutput:
        """One meta-gradient estimate at ``theta``; advances ``state`` in place."""


class PES(GradientEstimator):
    """Persistent evolution strategies over a :class:`TruncatedStep` (σ = 0.01, T = 50 by default)."""

    persistent = True

    def __init__(self, truncated_step: TruncatedStep, *, std: float = 0.01, unroll_length: int = 50):
        if not std > 0:
            raise ValueError(f"std (σ of the perturbations) must be > 0, got {std}")
        if unroll_length < 1:
            raise ValueError(f"unroll_length (T) must be ≥ 1, got {unroll_length}")
        self.truncated_step, self.std, self.unroll_length = truncated_step, std, unroll_length

    def init_state(self, theta: torch.Tensor, generator: torch.Generator) -> dict:
        n = self.truncated_step.num_particles
        return {
            "unroll": self.truncated_step.init_state(generator),
            "accumulator": torch.zeros(n, theta.numel(), dtype=theta.dtype, device=theta.device),
        }

    def estimate(self, theta: torch.Tensor, state: dict, generator: torch.Generator) -> EstimatorOutput:
        n = self.truncated_step.num_particles
        eps = self.std * torch.randn(n, theta.numel(), generator=generator, dtype=theta.dtype)
        eps = eps.to(theta.device)
        theta = theta.detach()
        thetas = torch.cat([theta + eps, theta - eps])
        out = self.truncated_step.unroll(state["unroll"], thetas, self.unroll_length, generator)
        losses = out.losses.to(theta.device, theta.dtype)
        mask = out.masks.to(theta.device, theta.dtype)
        after_done = (torch.cumsum(out.dones.to(torch.int64), dim=0) > 0).to(theta.device)
        h = after_done.to(theta.dtype)
        count = mask.sum(0).clamp_min(1.0)  # D per particle (a window of only resets contributes 0)
        delta = losses[:, :n] - losses[:, n:]
        a = (delta * (1 - h) * mask).sum(0) / count
        b = (delta * h * mask).sum(0) / count
        acc = state["accumulator"] if self.persistent else torch.zeros_like(eps)
        particle = (a[:, None] * (acc + eps) + b[:, None] * eps) / (2 * self.std**2)
        if self.persistent:
            reset = after_done[-1][:, None]
            state["accumulator"] = torch.where(reset, eps, acc + eps)
        mean_pair = 0.5 * (losses[:, :n] + losses[:, n:])
        meta_loss = float(((mean_pair * mask).sum(0) / count).mean())
        return EstimatorOutput(particle.mean(0), particle, meta_loss)


class ES(PES):
    """Truncated ES: PES with the accumulator held at zero (no persistence)."""

    persistent = False


ESTIMATORS = {"pes": PES, "es": ES}

__all__ = ["ES", "ESTIMATORS", "EstimatorOutput", "GradientEstimator", "PES"]
