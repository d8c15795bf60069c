"""Every Triton kernel (μLO's and Celo2's) compiles for sm_90 and sm_80 (in a subprocess with the interpreter
off): catches what the interpreter accepts and a GPU compiler rejects (tl.dot shapes, dtype mixes, scalar control flow).
From the SASS: no shipped variant spills registers (no local-memory instructions), and the apply kernel's
MLP runs on tensor cores (HMMA/HGMMA) in its tf32 and bf16 modes; the PTX holds no tf32 conversion of Triton's
own (the tf32 mode's rounding depends on the MMA reading register bits unconverted)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("arch", [90, 80], ids=lambda a: f"sm_{a}")
def test_kernels_compile_for_gpu(arch):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-m", "tests.kernels.aot_compile", str(arch)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"AOT compile for sm_{arch} failed:\n{out.stdout}\n{out.stderr[-4000:]}"
    compiled = [line for line in out.stdout.splitlines() if line.startswith(f"sm_{arch} ")]
    kernels = {line.split()[1] for line in compiled}
    assert kernels == {"lopt_reduce", "lopt_sumsq", "lopt_apply", "lopt_reduce_finish", "lopt_sumsq_finish",
                       "celo2_reduce", "celo2_sumsq", "celo2_direction", "celo2_apply"}, out.stdout  # fmt: skip
    for line in compiled:
        local = int(re.search(r"(\d+) local-memory instrs", line).group(1))
        mma = int(re.search(r"(\d+) MMA instrs", line).group(1))
        assert local == 0, f"a shipped variant spills registers to local memory: {line}"
        if line.split()[1] == "lopt_apply" and "dot=ieee" not in line:
            assert mma > 0, f"the apply kernel no longer runs its MLP on tensor cores: {line}"
        # tf32 operands are rounded by adding half an ulp and letting the MMA cut: a conversion the compiler
        # inserted would round a second time
        assert int(re.search(r"(\d+) tf32 conversions", line).group(1)) == 0, line
