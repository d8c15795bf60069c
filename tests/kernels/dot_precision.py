"""How far the triton backend's 40-step float32 trajectory drifts from the float64 reference for each
MLP operand precision (``python -m tests.kernels.dot_precision [seeds]``, CPU interpreter). The kernel makes
the tensor cores' tf32 cut itself when interpreted and runs bf16 as bf16-rounded operands, so this measures
the numerics a GPU has. Prints one JSON line per (dot mode, seed)."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import json  # noqa: E402

from mulo.backends.triton_backend import TritonBackend  # noqa: E402
from tests.kernels.test_lopt_step import trajectory_errors  # noqa: E402

if __name__ == "__main__":
    seeds = [int(a) for a in sys.argv[1:]] or [0]
    for dot in ("ieee", "tf32", "tf32x3", "bf16"):
        for seed in seeds:
            errors = trajectory_errors(TritonBackend(dot=dot), seed=seed)
            print(json.dumps({"dot": dot, "seed": seed, "steps": 40, "movement_relative_error": errors}), flush=True)
