"""The README's torchrun command works: 2 gloo ranks, FSDP2, MuLO, loss goes down."""

import re
import subprocess
import sys

from tests.distributed.test_sharded import TIMEOUT_S


def test_torchrun_fsdp_demo_trains():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "mulo.distributed.demo", "--wrap", "fsdp", "--steps", "20", "--width", "32"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stdout[-2000:] + "\n".join(out.stderr.splitlines()[-80:])
    losses = [float(v) for v in re.findall(r"fsdp world 2 step +\d+ loss ([0-9.]+)", out.stdout)]
    assert len(losses) >= 2, out.stdout
    assert losses[-1] < losses[0], f"loss did not go down: {losses}"
