"""How far the triton backend's 40-step float32 trajectory drifts from the float64 reference for each
MLP operand precision (``python -m tests.kernels.dot_precision [seeds]``, CPU interpreter). "tf32", "tf32x3"
and "bf16" are emulated by cutting or rounding the operands as the GPU does (the interpreter itself computes
exact float32), so this measures the numerics a GPU would have. Prints one JSON line per (dot mode, seed)."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import json  # noqa: E402

from mulo.backends.triton_backend import TritonBackend  # noqa: E402
from tests.kernels.test_lopt_step import trajectory_errors  # noqa: E402

if __name__ == "__main__":
    seeds = [int(a) for a in sys.argv[1:]] or [0]
    for dot in ("ieee", "tf32_emulated", "tf32x3_emulated", "bf16_emulated"):
        for seed in seeds:
            errors = trajectory_errors(TritonBackend(dot=dot), seed=seed)
            print(json.dumps({"dot": dot, "seed": seed, "steps": 40, "movement_relative_error": errors}), flush=True)
