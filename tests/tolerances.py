"""The one tolerance table of the suite: (what is compared, compute dtype) → (rtol, atol).

A backend's result ``x`` matches the oracle ``y`` when ``|x − y| ≤ atol + rtol·|y|`` elementwise, and
trajectories are compared relative to how far the oracle moved (``‖x − y‖ / ‖y − y₀‖``).
"""

import torch

TOL = {
    # reference (float64) vs the independent numpy oracle: same math, different code → rounding only
    ("oracle", torch.float64): (1e-10, 1e-12),
    # a fast backend in float32 against the float64 reference, one step
    ("kernel", torch.float32): (2e-4, 2e-6),
    # a fast backend whose MLP operands are tf32 rounded to nearest (triton's default): each operand carries up
    # to 2⁻¹² relative rounding, so an update carries ~1e-4…1e-3 of its own size (observed: ≤ 7.5e-6 absolute
    # after 3 steps at lr 0.7, updates ≲ 3e-3 each), which a parameter brought near 0 keeps as absolute error;
    # the states never pass through the MLP (only through later gradients)
    ("kernel tf32", torch.float32): (2e-4, 2e-5),
    # a fast backend with bf16 parameters (state fp32): parameters carry bf16 rounding
    ("kernel", torch.bfloat16): (2e-2, 2e-3),
    # a fast backend with fp16 parameters (state fp32): fp16 rounding (2^-11 relative) of the parameters
    ("kernel", torch.float16): (4e-3, 1e-4),
    # reference float32 vs reference float64
    ("reference", torch.float32): (1e-4, 1e-6),
    # population step (vectorized over members) vs each member alone through the reference, same dtype:
    # the same operations per element; only the order of a few reductions may differ (observed: bitwise
    # equal, up to 2e-18 absolute in float64 with the "jax" layout). float32: a parameter of size ~1 that an
    # update brings near 0 keeps the absolute rounding of size 1 (1 ulp = 1.2e-7, observed ~1 run in 40), so
    # atol is a few ulps at 1, not at the result
    ("population", torch.float64): (1e-13, 1e-16),
    ("population", torch.float32): (1e-6, 5e-7),
    # Celo2: a fast backend's update Δp in float32 against the float64 reference, one step from the same state,
    # relative to the tensor's largest |Δp| (``scale``: the step is RMS-normalized, so its elements near 0 carry
    # the rounding of the largest). Without Newton–Schulz: observed ≤ 2e-5. With it, float32 rounding of the
    # direction is amplified on small singular values (≈ 3.4445 per iteration, 5 iterations): observed ≤ 1.6e-4,
    # the same for the reference in float32.
    ("celo2 step", torch.float32): (1e-4, 0.0),
    ("celo2 step newton-schulz", torch.float32): (1e-3, 0.0),
    # a DTensor-sharded step vs the same backend on the whole tensor: only summation order differs
    ("sharded", torch.float64): (1e-10, 1e-12),
    ("sharded", torch.float32): (1e-4, 1e-6),
}
# trajectory movement-relative errors (acceptance numbers of the issues)
TRAJECTORY = {torch.float64: 1e-9, torch.float32: 1e-3}


def kernel_key(backend, dtype: torch.dtype = torch.float32) -> tuple:
    """The row for ``backend``'s step in ``dtype``: "kernel tf32" where its MLP operands are tf32 (the triton
    backend's default ``dot``), "kernel" otherwise."""
    return ("kernel tf32", dtype) if getattr(backend, "dot", None) in ("tf32", "tf32c") else ("kernel", dtype)


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, key: tuple, what: str = "", scale: torch.Tensor | None = None
) -> None:
    """Elementwise check with a failure message saying how many elements differ, where and by how much.

    ``scale`` (broadcastable to ``expected``): the magnitude of the terms a value was summed from, for
    accumulators whose terms cancel — a momentum is a convex combination of gradients, so a small momentum
    built from large gradients of opposite signs carries the rounding of those gradients, not of itself.
    The relative bound then applies to max(|expected|, scale)."""
    rtol, atol = TOL[key]
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    err = (a - e).abs()
    size = e.abs() if scale is None else torch.maximum(e.abs(), scale.detach().to("cpu", torch.float64))
    bad = err > atol + rtol * size
    if bad.any():
        n = int(bad.sum())
        worst = int(torch.argmax(torch.where(bad, err / (atol + rtol * size), torch.zeros_like(err))))
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape)) if a.dim() else ()
        raise AssertionError(
            f"{what}: {n}/{a.numel()} elements differ beyond rtol={rtol}, atol={atol}; worst at {idx}: "
            f"got {a.reshape(-1)[worst].item():.10g}, expected {e.reshape(-1)[worst].item():.10g} "
            f"(max abs err {err.max().item():.3g})"
        )


def movement_error(actual: torch.Tensor, expected: torch.Tensor, start: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected − start‖ (float64)."""
    a, e, s = (t.detach().to("cpu", torch.float64) for t in (actual, expected, start))
    return float((a - e).norm() / (e - s).norm().clamp_min(1e-300))


def state_scale(name: str, grad_max: torch.Tensor, physical: tuple) -> torch.Tensor | None:
    """The ``scale`` of state ``name`` (see :func:`assert_close`): the largest |gradient| an element's momentum
    has averaged (``grad_max``, the running elementwise max over steps, reshaped to the physical shape);
    ``None`` for the other states, whose terms are all non-negative (no cancellation)."""
    return grad_max.reshape(physical) if name == "momentum" else None
