"""The one-time measurement behind ``backend="auto"`` on a GPU.

When more than one fast μLO backend can run on a CUDA device (``triton`` and ``cuda``), ``auto`` times a few
steps of each on a fixed set of tensors (:data:`SHAPES`: a hidden matrix, a wide readout, a conv kernel and
two vectors, 6.9M elements) the first time it resolves that (device, dtype) in a process, and picks the faster.
The registry's priority order (which the static model of the sm_90 kernels set: bench/gpu_static.py) decides
when there is one candidate, when a measurement fails, and on the CPU. ``MULO_AUTO_MEASURE=0`` turns the
measurement off; ``=1`` measures on any device (the CPU too). Deterministic mode filters the candidates first;
inside a ``torch.compile`` trace or a CUDA-graph capture nothing is timed.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

SHAPES = ((2048, 2048), (4096, 512), (256, 256, 3, 3), (2048,), (512,))
WARMUP, STEPS = 2, 5


def wanted(device: torch.device, rule: str, candidates: list[str]) -> bool:
    """Whether ``auto`` measures ``candidates`` (the fast ones, the reference left out) on ``device``."""
    setting = os.environ.get("MULO_AUTO_MEASURE", "")
    if setting not in ("", "0", "1"):
        raise ValueError(
            f"MULO_AUTO_MEASURE must be 0 (never measure), 1 (measure on any device) or unset, got {setting!r}"
        )
    if setting == "0" or rule != "mulo" or len(candidates) < 2:
        return False
    capturing = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    if torch.compiler.is_compiling() or capturing:
        return False  # no timing inside a trace or a CUDA-graph capture: the priority order decides
    return setting == "1" or device.type == "cuda"


def step_ms(backend, device: torch.device, dtype: torch.dtype, shapes=None, steps: int = STEPS) -> float:
    """Median wall time (ms, the device synchronized) of one μLO step of ``backend`` over fresh tensors of
    ``shapes`` (default :data:`SHAPES`) in ``dtype`` on ``device`` with random meta-weights, after
    :data:`WARMUP` untimed steps (which also compile what the backend compiles). The caller's random state is
    left alone."""
    from mulo.lopt.network import LOptConfig, LOptNet
    from mulo.lopt.state import init_state

    shapes = SHAPES if shapes is None else shapes

    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    states = [init_state(tuple(s), compute, device) for s in shapes]
    weights = LOptNet(LOptConfig(), generator=gen).meta_weights(device, compute)
    lrs, wds = [1e-3] * len(shapes), [0.0] * len(shapes)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for i in range(WARMUP + steps):
        sync()
        t0 = time.perf_counter()
        backend.step(params, grads, states, lrs, wds, weights)
        sync()
        if i >= WARMUP:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def numel_text() -> str:
    """The measured set's size for the notice, e.g. ``"6.9M-element"``."""
    n = sum(torch.Size(s).numel() for s in SHAPES)
    return f"{n / 1e6:.1f}M-element"


__all__ = ["SHAPES", "numel_text", "step_ms", "wanted"]
