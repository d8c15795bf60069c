"""The apply kernel's tf32 operand handling (kernels/lopt_apply.py): ``_rn_tf32`` (the weights, once per
program) is round-to-nearest onto the tf32 grid (10 explicit mantissa bits, ties away from zero), checked
against an exact float64 construction on random values, exact ties, carries into the exponent, negatives and
subnormals; ``_cut_tf32`` is what the tensor cores read of an activation; and ``TF32_CUT_COMPENSATION`` is the
mean of that cut's relative shrinkage for log-uniform mantissas, measured here on such values."""

import os

import numpy as np
import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("runs the kernel helpers in the Triton interpreter", allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from mulo.kernels.lopt_apply import TF32_CUT_COMPENSATION, _cut_tf32, _rn_tf32  # noqa: E402


@triton.jit
def _round_kernel(x_ptr, rn_ptr, cut_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i, mask=i < n)
    tl.store(rn_ptr + i, _rn_tf32(x), mask=i < n)
    tl.store(cut_ptr + i, _cut_tf32(x), mask=i < n)


def tf32_grid(x: np.ndarray, to_int) -> np.ndarray:
    """|x| onto the tf32 grid with ``to_int`` (of |x| in ulps), in float64, sign kept: spacing 2^(e − 10) for
    |x| in [2^e, 2^(e+1)), subnormals on the fixed spacing 2^−136."""
    a = np.abs(x.astype(np.float64))
    e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    ulp = np.exp2(np.maximum(e, -126.0) - 10.0)
    return np.sign(x) * to_int(a / ulp) * ulp


def tf32_nearest(x: np.ndarray) -> np.ndarray:
    """Round to nearest, ties away from zero."""
    return tf32_grid(x, lambda u: np.floor(u + 0.5))


def test_rn_tf32_is_round_to_nearest_ties_away():
    rng = np.random.default_rng(0)
    grid = (rng.integers(1024, 2048, 600) * np.exp2(rng.integers(-40, 40, 600) - 10.0)).astype(np.float32)
    ulp = np.spacing(grid) * 2.0**13  # the tf32 spacing at each grid value
    values = np.concatenate([
        rng.standard_normal(2000).astype(np.float32) * np.exp2(rng.integers(-30, 30, 2000)).astype(np.float32),
        grid + ulp / 2,  # exact ties: away from zero
        -(grid + ulp / 2),
        grid + ulp / 2 - np.spacing(grid),  # just below a tie: down
        np.float32(2.0) - np.spacing(np.float32(1.0)) * np.arange(1, 40, dtype=np.float32),  # carry into 2.0
        np.array([0.0, -0.0, 1.0, -1.5, 3e-39, -7e-40, 1e-44], dtype=np.float32),  # subnormals
    ]).astype(np.float32)  # fmt: skip
    x = torch.from_numpy(values)
    rn, op = torch.empty_like(x), torch.empty_like(x)
    _round_kernel[(triton.cdiv(x.numel(), 256),)](x, rn, op, x.numel(), BLOCK=256)
    expected = tf32_nearest(values)
    np.testing.assert_array_equal(rn.numpy().astype(np.float64), expected)
    np.testing.assert_array_equal(op.numpy().astype(np.float64), tf32_grid(values, np.floor))
    assert (rn.numpy().view(np.uint32) & 0x1FFF == 0).all(), "not on the tf32 grid"
    # the ties went away from zero: a test that a truncation or ties-to-even would fail
    ties = values[2000:2600]
    assert (np.abs(rn.numpy()[2000:2600]) > np.abs(ties)).all()


def test_cut_compensation_is_the_mean_shrinkage_of_log_uniform_mantissas():
    rng = np.random.default_rng(1)
    values = np.exp2(rng.uniform(-20, 20, 1 << 18)).astype(np.float32)  # log-uniform: mantissas log-uniform
    x = torch.from_numpy(values)
    rn, cut = torch.empty_like(x), torch.empty_like(x)
    _round_kernel[(triton.cdiv(x.numel(), 1024),)](x, rn, cut, x.numel(), BLOCK=1024)
    shrink = 1 - cut.numpy().astype(np.float64) / values.astype(np.float64)
    assert (shrink >= 0).all() and (shrink < 2.0**-10).all()
    # the mean relative cut, 2⁻¹¹·E[1/m] = 2⁻¹¹/(2 ln 2) ≈ 3.52e-4, to 1% (standard error ≈ 0.4e-6)
    assert abs(shrink.mean() - (TF32_CUT_COMPENSATION.value - 1)) < 0.01 * (TF32_CUT_COMPENSATION.value - 1)
