"""How the inner runs of meta-training are trained: learning-rate schedules over each run's sampled length,
decoupled weight decay, and the "reparam global" task augmentation. All off by default (the plain μLO
inner run of ALGORITHM.md §7).

**Schedule** (:class:`InnerSchedule`): inner run i of length L_i (drawn by the truncation) takes its step t
(0-based) with learning rate ``lr_scale × m(t; L_i)``, where m is a linear warmup over the first
⌊warmup·L⌋ = W steps ((t+1)/W), then ``constant`` (1), ``cosine`` (final + (1−final)·½(1+cos πf)) or
``linear`` (final + (1−final)(1−f)) decay with f = (t−W)/(L−1−W), reaching ``final`` (default 0) at the
run's last step t = L−1. MuLO's ``lr`` multiplies the learned step, so this is exactly ``MuLO(lr=m(t))``
under a scheduler. Every particle has its own L and phase: the two members of a pair share m, different
pairs do not.

**Per-member learning rates.** Every population entry point (:func:`mulo.backends.population.
population_step` and the fused steps of :func:`~mulo.backends.population.backend_population_step`) takes
``lrs[i]`` as a list of M floats, one per member, so the inner run passes them straight through:
member j's tensor i steps with ``lrs[i][j]`` and decays by ``wd·lrs[i][j]`` after the step, where the step
was applied — the update of ``reference.step_one`` at that lr (tested against it).

**Reparam global** (learned_optimization's ReparamWeights, global level): per task a scale s log-uniform in
``REPARAM_GLOBAL_RANGE`` = [1e-3, 1e3]; the task's parameters start at w₀/s and its loss is evaluated at s·w,
so the function is unchanged (loss at s·(w₀/s) = loss at w₀) but the parameters and gradients the
optimizer sees are rescaled by 1/s and s. Drawn with the task's initialization, so pairs share it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

INNER_SCHEDULES = ("constant", "cosine", "linear")
REPARAM_GLOBAL_RANGE = (1e-3, 1e3)


@dataclasses.dataclass(frozen=True)
class InnerSchedule:
    """The learning-rate multiplier of an inner run of length L at its step t (see the module docstring)."""

    kind: str = "constant"
    warmup: float = 0.0
    final: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in INNER_SCHEDULES:
            raise ValueError(f"inner schedule (--inner-schedule) must be one of {INNER_SCHEDULES}, got {self.kind!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(
                f"inner warmup (--inner-warmup) is a fraction of each inner run's length in [0, 1), got "
                f"{self.warmup!r}; e.g. 0.05 warms up over the first 5% of the steps"
            )
        if not 0.0 <= self.final <= 1.0:
            raise ValueError(
                f"inner final lr (--inner-lr-final) is a fraction of the peak in [0, 1], got {self.final!r}; "
                "0 decays to zero at the end of each inner run"
            )
        if self.kind == "constant" and self.final != 0.0:
            raise ValueError(
                f"--inner-lr-final {self.final} needs a decay: pass --inner-schedule cosine or linear "
                "(a constant schedule has no final lr)"
            )

    @property
    def is_constant(self) -> bool:
        """True when every multiplier is 1 (no warmup, no decay)."""
        return self.kind == "constant" and self.warmup == 0.0

    def multipliers(self, step: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """m(t; L) for integer tensors ``step`` and ``length`` of one shape (float64; steps past L-1 get
        the end value)."""
        t, n = step.to(torch.float64), length.to(torch.float64).clamp_min(1.0)
        w = torch.floor(self.warmup * n)
        warm = (t + 1) / w.clamp_min(1.0)
        f = ((t - w) / (n - 1 - w).clamp_min(1.0)).clamp(0.0, 1.0)
        if self.kind == "cosine":
            decay = self.final + (1 - self.final) * 0.5 * (1 + torch.cos(math.pi * f))
        elif self.kind == "linear":
            decay = self.final + (1 - self.final) * (1 - f)
        else:
            decay = torch.ones_like(f)
        return torch.where(t < w, warm, decay)

    def __call__(self, step: int, length: int) -> float:
        return float(self.multipliers(torch.tensor([step]), torch.tensor([length]))[0])


def log_uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws of exp(U[ln low, ln high]) (float64, CPU)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def reparam_global(loss: Callable) -> Callable:
    """``loss(params, batch)`` → ``scaled(params, batch, scale)`` = loss(scale·params, batch)."""

    def scaled(params: dict[str, torch.Tensor], batch, scale: torch.Tensor) -> torch.Tensor:
        return loss({k: v * scale for k, v in params.items()}, batch)

    return scaled


__all__ = [
    "INNER_SCHEDULES",
    "REPARAM_GLOBAL_RANGE",
    "InnerSchedule",
    "log_uniform",
    "reparam_global",
]
