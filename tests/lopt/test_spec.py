"""The algorithm's one specification (mulo/lopt/spec.py) is what every implementation uses: the C header is
generated from it, no kernel or backend restates an epsilon, and the reference's channels follow its order."""

import ast
import pathlib
import re

import torch

from mulo.backends.reference import features_and_state
from mulo.lopt import spec
from mulo.lopt.network import LOptNet
from mulo.lopt.state import init_state

ROOT = pathlib.Path(__file__).resolve().parents[2]
EPSILONS = {spec.EPS_GRAD_SQ, spec.EPS_SAFE_RSQRT, spec.EPS_RMS, spec.EPS_ACC_FEATURE, spec.EPS_NORMALIZE}


def test_c_header_is_generated_from_the_spec():
    header = (ROOT / "csrc" / "lopt_spec.h").read_text()
    assert header == spec.c_header(), "csrc/lopt_spec.h is stale: run `python -m mulo.lopt.spec > csrc/lopt_spec.h`"


def test_no_kernel_or_backend_restates_an_epsilon():
    python = [*ROOT.glob("kernels/*.py"), *ROOT.glob("mulo/backends/*.py"), *ROOT.glob("mulo/lopt/*.py")]
    for path in python:
        if path.name == "spec.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, float):
                assert node.value not in EPSILONS, f"{path}:{node.lineno} restates {node.value}; use mulo.lopt.spec"
    literal = re.compile(r"(?<![\w.])1e-(30|9|8|6|5)f?\b")
    for path in [*ROOT.glob("csrc/*.cpp"), *ROOT.glob("csrc/*.cu"), *ROOT.glob("csrc/*.h"), *ROOT.glob("csrc/*.cuh")]:
        if path.name in ("lopt_spec.h", "celo2_spec.h"):  # the generated constants (Celo2's: mulo/celo2/spec.py)
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//", 1)[0]
            assert not literal.search(code), f"{path}:{n} restates an epsilon; use spec:: (csrc/lopt_spec.h)"


def test_channel_table_is_the_reference_feature_order():
    assert spec.NUM_FEATURES == 28 and spec.INPUT_SIZE == 39
    assert [spec.CHANNEL[name] for name, _, _ in spec.CHANNEL_GROUPS] == [0, 1, 2, 5, 6, 9, 10, 13, 16, 19, 22, 25]
    w = LOptNet().meta_weights("cpu", torch.float64)
    g, p = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    feats, new = features_and_state(g, p, init_state((4, 6), torch.float64), w)
    v = (1 - w.rms_decay) * g * g
    torch.testing.assert_close(feats[spec.CHANNEL["g"]], g)
    torch.testing.assert_close(feats[spec.CHANNEL["p"]], p)
    torch.testing.assert_close(feats[spec.CHANNEL["v"]], v)
    torch.testing.assert_close(feats[spec.CHANNEL["rsqrt_v"]], torch.rsqrt(v + spec.EPS_RMS))
    for k in range(3):
        m = (1 - w.momentum_decays[k]) * g
        torch.testing.assert_close(feats[spec.CHANNEL["m"] + k], m)
        torch.testing.assert_close(feats[spec.CHANNEL["m_rsqrt_v"] + k], m * torch.rsqrt(v + spec.EPS_RMS))
        row = new["row"][k].unsqueeze(1).expand(4, 6)  # d0 is axis 1 (the larger): one row entry per row
        torch.testing.assert_close(feats[spec.CHANNEL["row"] + k], row)
        torch.testing.assert_close(feats[spec.CHANNEL["rsqrt_row"] + k], torch.rsqrt(row + spec.EPS_ACC_FEATURE))


def test_hyper_vector_follows_hyper_order():
    w = LOptNet().meta_weights("cpu", torch.float32)
    h = dict(zip(spec.HYPER_ORDER, spec.hyper_vector(w), strict=True))
    assert h["beta_v"] == float(w.rms_decay) and h["step_mult"] == float(w.step_mult)
    assert [h[f"beta_m{k}"] for k in range(3)] == [float(b) for b in w.momentum_decays]
    assert [h[f"beta_f{k}"] for k in range(3)] == [float(b) for b in w.adafactor_decays]
