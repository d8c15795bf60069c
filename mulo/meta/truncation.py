"""Truncation schedules (docs/ALGORITHM.md §7): how long an inner problem runs before it is reset.

Each inner problem's length is drawn log-uniformly, L = ⌊exp(U[ln min, ln max])⌋ (μLO: 100..1000), and at
initialization each particle's inner step starts at randint[0, max_initial_offset) (μLO: 50) so that the
particles of an estimator are out of phase and their windows cover every part of training.
"""

from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass(frozen=True)
class LogUniformTruncation:
    min_length: int = 100
    max_length: int = 1000
    max_initial_offset: int = 50

    def __post_init__(self) -> None:
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(
                f"truncation lengths need 1 ≤ min_length ≤ max_length, got {self.min_length}, {self.max_length}"
            )
        if self.max_initial_offset < 1:
            raise ValueError(f"max_initial_offset must be ≥ 1 (1 = no offset), got {self.max_initial_offset}")

    def sample_lengths(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` lengths ⌊exp(U[ln min, ln max])⌋ (int64, CPU)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        lo, hi = math.log(self.min_length), math.log(self.max_length)
        return torch.exp(lo + u * (hi - lo)).floor().to(torch.int64).clamp(self.min_length, self.max_length)

    def initial_offsets(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` starting inner steps in [0, max_initial_offset) (int64, CPU)."""
        return torch.randint(0, self.max_initial_offset, (n,), generator=generator, dtype=torch.int64)
