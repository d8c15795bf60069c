"""Truncated unrolls of a population of inner problems (docs/ALGORITHM.md §7, step 2).

A :class:`TruncatedStep` owns N particles, each with a "+" and a "−" member (2N members in all, "+" first);
``unroll(state, thetas, T, generator)`` advances every member T inner steps, member j using meta-parameters
``thetas[j]``. The two members of a pair always get the same batch, the same fresh initialization and the
same schedule, so they differ only through θ⁺ − θ⁻.

One inner step of a member: if its particle's ``done`` was set on the previous step it is reset (fresh
task init, optimizer state zeroed, inner step 0) and emits loss 0 with mask 0; otherwise it emits the
normalized loss at its current parameters (measured before the update), takes one optimizer step,
advances its inner step and sets ``done`` once the step reaches its length L (a new L is drawn at once).

:class:`PopulationUnroll` trains μLO on a task family with one batched forward/backward
(``torch.func.vmap`` over the task's functional loss) and ONE population optimizer call
(:func:`mulo.backends.population.population_step`) per inner step; optionally each inner run follows a
learning-rate schedule over its length, with decoupled weight decay, and each task is reparameterized by a
global scale (:mod:`mulo.meta.inner`). :class:`QuadraticUnroll` is a linear system with a quadratic loss
whose exact meta-gradient is known: it tests the estimators.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable

import torch

from mulo.lopt.network import LOptConfig
from mulo.meta.inner import InnerSchedule, log_uniform
from mulo.meta.rules import Celo2Rule, MuLORule
from mulo.meta.tasks import META_LOSSES, Task, TaskFamily
from mulo.meta.truncation import LogUniformTruncation


@dataclasses.dataclass
class UnrollOutput:
    """``losses`` (T, 2N) normalized ("+" members first), ``masks`` (T, N) 0/1, ``dones`` (T, N) bool."""

    losses: torch.Tensor
    masks: torch.Tensor
    dones: torch.Tensor


class TruncatedStep(abc.ABC):
    num_particles: int
    theta_size: int

    @abc.abstractmethod
    def init_state(self, generator: torch.Generator) -> dict:
        """Fresh particles ("+" and "−" members identical), with random initial inner-step offsets."""

    @abc.abstractmethod
    def unroll(self, state: dict, thetas: torch.Tensor, steps: int, generator: torch.Generator) -> UnrollOutput:
        """Advance ``state`` in place by ``steps`` inner steps; ``thetas`` is (2N, theta_size)."""


def _schedule_state(truncation: LogUniformTruncation, n: int, generator: torch.Generator) -> dict:
    return {
        "inner_step": truncation.initial_offsets(n, generator),
        "length": truncation.sample_lengths(n, generator),
        "done": torch.zeros(n, dtype=torch.bool),
    }


def _advance_schedule(state: dict, reset: torch.Tensor, truncation: LogUniformTruncation, generator) -> torch.Tensor:
    """Bookkeeping after one step; returns the new ``done`` flags (CPU, shape (N,))."""
    step = state["inner_step"]
    step[reset] = 0
    step[~reset] += 1
    done = ~reset & (step >= state["length"])
    fresh_lengths = truncation.sample_lengths(step.shape[0], generator)  # drawn every step: fixed RNG use
    state["length"] = torch.where(done, fresh_lengths, state["length"])
    state["done"] = done
    return done


class PopulationUnroll(TruncatedStep):
    """A learned optimizer (meta-weights θ per member: μLO or Celo2) training a population of tasks from one family.

    Args:
        family: the task family (one sampled task; members share its parameter shapes).
        truncation: inner-problem lengths and initial offsets.
        num_pairs: N (2N members).
        lopt_config: the update rule (:mod:`mulo.meta.rules`), or a μLO ``LOptConfig`` (its non-θ settings:
            decays, step_mult, layout), which is μLO's rule.
        dtype: parameter/meta-weight dtype of the inner problems.
        step_fn: the population optimizer entry point (default: the rule's reference semantics).
        meta_loss: the per-step loss emitted, ``"normalized"`` or ``"log"`` (:meth:`Task.meta_loss`).
        schedule: the learning-rate multiplier of each inner run over its length (default: constant 1).
        weight_decay: decoupled weight decay of the inner runs (times each step's lr, as in ``MuLO``).
        reparam: ``(low, high)``: reparameterize every task by a global scale log-uniform in that range
            (:func:`mulo.meta.inner.reparam_global`; the state then holds each member's ``scale``).

    With the defaults the inner run is the plain μLO one and no extra random number is drawn.
    """

    def __init__(
        self,
        family: TaskFamily,
        truncation: LogUniformTruncation,
        num_pairs: int,
        lopt_config: LOptConfig | MuLORule | Celo2Rule,
        *,
        dtype: torch.dtype = torch.float32,
        step_fn: Callable | None = None,
        meta_loss: str = "normalized",
        schedule: InnerSchedule | None = None,
        weight_decay: float = 0.0,
        reparam: tuple[float, float] | None = None,
    ):
        if num_pairs < 1:
            raise ValueError(f"num_pairs must be ≥ 1, got {num_pairs}")
        self.family, self.truncation, self.num_particles = family, truncation, num_pairs
        self.rule = MuLORule(lopt_config) if isinstance(lopt_config, LOptConfig) else lopt_config
        self.config, self.dtype = self.rule.config, dtype
        self.step_fn = step_fn if step_fn is not None else self.rule.step_fn()
        if meta_loss not in META_LOSSES:
            raise ValueError(f"meta_loss must be one of {META_LOSSES}, got {meta_loss!r}")
        self.meta_loss = meta_loss
        self.theta_size = self.rule.theta_size()
        self.task: Task = family.sample(torch.Generator().manual_seed(0))
        self.schedule = InnerSchedule() if schedule is None else schedule
        if not (math.isfinite(weight_decay) and weight_decay >= 0.0):
            raise ValueError(
                f"inner weight decay (--inner-weight-decay) must be a finite number ≥ 0, got {weight_decay!r}"
            )
        if reparam is not None and not 0.0 < reparam[0] <= reparam[1] < math.inf:
            raise ValueError(f"reparam scale range must satisfy 0 < low ≤ high < inf, got {reparam!r}")
        self.weight_decay, self.reparam = weight_decay, reparam
        self._plain_step = self.schedule.is_constant and weight_decay == 0.0

    def _fresh_params(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        inits = [self.task.init(generator) for _ in range(n)]
        return {k: torch.stack([p[k] for p in inits]).to(self.dtype) for k in inits[0]}

    def _fresh_tasks(self, n: int, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """``n`` fresh initializations; with ``reparam`` also their scales s (drawn after the inits), the
        parameters divided by s."""
        params = self._fresh_params(n, generator)
        if self.reparam is None:
            return params, None
        scale = log_uniform(n, *self.reparam, generator).to(next(iter(params.values())).device, self.dtype)
        return {k: v / scale.view(-1, *([1] * (v.dim() - 1))) for k, v in params.items()}, scale

    def init_state(self, generator: torch.Generator) -> dict:
        fresh, scale = self._fresh_tasks(self.num_particles, generator)
        params = {k: torch.cat([v, v]) for k, v in fresh.items()}
        opt = {k: self.rule.init_state(v) for k, v in params.items()}
        state = {"params": params, "opt": opt, **_schedule_state(self.truncation, self.num_particles, generator)}
        if scale is not None:
            state["scale"] = torch.cat([scale, scale])
        return state

    def _step(self, state: dict, names: list[str], grads: dict, lrs: list[float], weights) -> None:
        params, opt = state["params"], state["opt"]
        args = [params[k] for k in names], [grads[k] for k in names], [opt[k] for k in names]
        if self._plain_step:
            self.step_fn(*args, lrs, [0.0] * len(names), weights)
            return
        m = self.schedule.multipliers(state["inner_step"], state["length"]).tolist()
        m = m + m  # "+" members, then "−": a pair shares its run's schedule
        member_lrs = [[scale * v for v in m] for scale in lrs]
        self.step_fn(*args, member_lrs, [self.weight_decay] * len(names), weights)

    def grads_and_losses(self, state: dict, batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every member's gradient and loss on its slice of ``batch`` (stacked on the member axis), at its
        current parameters (for a reparameterized task: at s·w, the gradient with respect to w)."""
        params, batched = state["params"], self.task.population_grads_and_losses
        if self.reparam is None:
            return batched(params, batch)
        scale = state["scale"]
        expand = {k: scale.view(-1, *([1] * (v.dim() - 1))) for k, v in params.items()}
        grads, losses = batched({k: v * expand[k] for k, v in params.items()}, batch)
        return {k: g * expand[k] for k, g in grads.items()}, losses  # d loss(s·w) / dw = s · ∇loss(s·w)

    @torch.no_grad()
    def unroll(self, state: dict, thetas: torch.Tensor, steps: int, generator: torch.Generator) -> UnrollOutput:
        n = self.num_particles
        params, opt = state["params"], state["opt"]
        names = list(params)
        device = params[names[0]].device
        if thetas.shape != (2 * n, self.theta_size):
            raise ValueError(f"thetas has shape {tuple(thetas.shape)}, expected ({2 * n}, {self.theta_size})")
        weights = self.rule.population_weights(thetas.to(device, self.dtype))
        lrs = [self.rule.lr * self.task.roles[k].lr_scale for k in names]
        losses = torch.zeros(steps, 2 * n, device=device, dtype=self.dtype)
        masks = torch.zeros(steps, n)
        dones = torch.zeros(steps, n, dtype=torch.bool)
        for t in range(steps):
            reset = state["done"].clone()
            x, y = self.task.batches(generator, n)
            grads, loss = self.grads_and_losses(state, (torch.cat([x, x]), torch.cat([y, y])))
            self._step(state, names, grads, lrs, weights)
            if reset.any():
                idx = reset.nonzero().flatten()
                fresh, scale = self._fresh_tasks(len(idx), generator)
                members = torch.cat([idx, idx + n]).to(device)
                for k in names:
                    params[k][members] = torch.cat([fresh[k], fresh[k]]).to(device)
                    for value in opt[k].values():
                        value[members] = 0
                if scale is not None:
                    state["scale"][members] = torch.cat([scale, scale])
            done = _advance_schedule(state, reset, self.truncation, generator)
            keep = (~reset).to(device).repeat(2)
            losses[t] = torch.where(keep, self.task.meta_loss(loss.to(self.dtype), self.meta_loss), 0.0)
            masks[t] = (~reset).to(masks.dtype)
            dones[t] = done
        return UnrollOutput(losses, masks.to(device), dones.to(device))


class QuadraticUnroll(TruncatedStep):
    """A test problem with an exact meta-gradient: x ← ρ ⊙ x + θ, loss ½ Σ_j a_j (x_j − c_j − ξ_j)².

    The loss of step t (before the update) is quadratic in θ, so Gaussian smoothing does not move its
    gradient and ES/PES must be unbiased for it. ξ ~ N(0, noise²) is drawn per step and particle and shared
    by the pair (the "same batch"). Resets return x to ``x0``.
    """

    def __init__(
        self,
        rho: torch.Tensor,
        a: torch.Tensor,
        c: torch.Tensor,
        num_pairs: int,
        truncation: LogUniformTruncation,
        *,
        noise: float = 0.0,
        x0: torch.Tensor | None = None,
    ):
        self.rho, self.a, self.c = rho.double(), a.double(), c.double()
        self.x0 = torch.zeros_like(self.c) if x0 is None else x0.double()
        self.num_particles, self.truncation, self.noise = num_pairs, truncation, noise
        self.theta_size = self.c.numel()

    def loss(self, x: torch.Tensor, xi: torch.Tensor | float = 0.0) -> torch.Tensor:
        return 0.5 * (self.a * (x - self.c - xi) ** 2).sum(-1)

    def init_state(self, generator: torch.Generator) -> dict:
        x = self.x0.expand(2 * self.num_particles, -1).clone()
        return {"x": x, **_schedule_state(self.truncation, self.num_particles, generator)}

    def unroll(self, state: dict, thetas: torch.Tensor, steps: int, generator: torch.Generator) -> UnrollOutput:
        n = self.num_particles
        losses = torch.zeros(steps, 2 * n, dtype=torch.float64)
        masks = torch.zeros(steps, n, dtype=torch.float64)
        dones = torch.zeros(steps, n, dtype=torch.bool)
        thetas = thetas.double()
        for t in range(steps):
            reset = state["done"].clone()
            xi = self.noise * torch.randn(n, self.theta_size, generator=generator, dtype=torch.float64)
            loss = self.loss(state["x"], torch.cat([xi, xi]))
            x = self.rho * state["x"] + thetas
            state["x"] = torch.where(reset.repeat(2)[:, None], self.x0, x)
            done = _advance_schedule(state, reset, self.truncation, generator)
            losses[t] = torch.where(reset.repeat(2), 0.0, loss)
            masks[t] = (~reset).double()
            dones[t] = done
        return UnrollOutput(losses, masks, dones)

    def window_loss(self, theta: torch.Tensor, start: int, steps: int) -> torch.Tensor:
        """Mean loss of steps [start, start + steps) of an unperturbed trajectory from x0 with no reset
        (ξ = 0): the objective whose gradient PES estimates for that window."""
        x = self.x0
        total = theta.new_zeros(())
        for t in range(start + steps):
            if t >= start:
                total = total + self.loss(x)
            x = self.rho * x + theta
        return total / steps


__all__ = ["PopulationUnroll", "QuadraticUnroll", "TruncatedStep", "UnrollOutput"]
