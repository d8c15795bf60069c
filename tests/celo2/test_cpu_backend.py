"""Celo2's ``cpu`` backend (csrc/celo2_*, mulo/celo2/cpu.py) against the float64 reference: one step from the same
state on fresh random inputs (every state tensor, the update), float32 trajectories, non-finite gradients, every
SIMD path this CPU runs, the backend choice and clear errors; and static checks of the C++ sources."""

import copy
import pathlib
import re
import warnings

import pytest
import torch

import mulo
from mulo.backends import BackendUnavailable
from mulo.celo2 import Celo2Config, Celo2Net, reference, spec
from tests.celo2.common import check_transposed_slices_share_one_chain, random_celo2_net, set_grads, sync_state
from tests.celo2.common import pair as _pair
from tests.helpers import hetero_grad
from tests.tolerances import TRAJECTORY, assert_close, movement_error

cpu = pytest.importorskip("mulo.celo2.cpu")
try:
    _C = cpu.load_extension()
except ImportError as e:  # the build is part of `make install`; a missing extension is a failure here
    pytest.fail(f"mulo._C is not built: {e}", pytrace=False)

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"

# odd sizes, single rows/columns, rank 3 and conv kernels (slices of 9 elements: tiles across slices), a slice
# wider than a tile, and one of more than a work chunk (12,288 elements: split across threads)
SHAPES = [(6, 4), (5, 7), (1, 9), (7, 1), (3, 4, 5), (4, 3, 3, 3), (2, 3, 1, 5), (33, 70), (2, 97, 131)]


def pair(shapes, dtype, net, **kw):
    return _pair(shapes, dtype, net, "cpu", **kw)


def _isas():
    out = []
    for isa in ("avx512", "avx2", "base"):
        try:
            _C.set_cpu_isa(_C.set_cpu_isa(isa))
            out.append(isa)
        except RuntimeError:
            pass
    return out


@pytest.fixture(params=_isas())
def isa(request):
    prev = _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa(prev)


@pytest.mark.parametrize("orthogonalize", [True, False], ids=["celo2", "celo2_base"])
@pytest.mark.parametrize("axes", ["last2", "io"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_one_step_matches_the_reference(orthogonalize, axes, dtype):
    """After a few reference steps (non-trivial state), one step of both from the same state: every state tensor
    within the kernel tolerance, the update Δp within Celo2's step tolerance (fp32) or the parameter within its
    storage dtype's (bf16, fp16)."""
    net = random_celo2_net(int(torch.randint(0, 1000, ())))
    ref, fast, opt_ref, opt_fast = pair(SHAPES, dtype, net, orthogonalize=orthogonalize, normalize_axes=axes)
    for _ in range(3):
        set_grads(ref, fast)
        opt_ref.step()
    sync_state(opt_ref, opt_fast, ref, fast)
    before = [a.clone() for a in ref]
    set_grads(ref, fast)
    # a momentum β·m + (1 − β)·g that cancels carries the rounding of its terms (tests/tolerances.py)
    terms = [torch.maximum(opt_ref.state[a]["momentum"].abs().amax(0), a.grad.abs()) for a in ref]
    opt_ref.step()
    opt_fast.step()
    for a, b, p0, term in zip(ref, fast, before, terms):
        where = f"{tuple(a.shape)} {axes}"
        for key, value in opt_ref.state[a].items():
            got = opt_fast.state[b][key]
            assert got.dtype == torch.float32 and got.shape == value.shape, key
            scale = term if key == "momentum" else None
            assert_close(got, value, ("kernel", torch.float32), f"{key} of {where}", scale=scale)
        if dtype != torch.float32:  # the parameter carries its storage rounding
            assert_close(b, a, ("kernel", dtype), f"parameter {where}")
            continue
        step_ref, step_fast = a - p0, b.double() - p0
        key = ("celo2 step newton-schulz" if orthogonalize else "celo2 step", torch.float32)
        assert_close(step_fast, step_ref, key, f"update of {where}", scale=step_ref.abs().max())


@pytest.mark.parametrize("orthogonalize", [True, False], ids=["celo2", "celo2_base"])
def test_every_isa_matches_the_reference(isa, orthogonalize):
    net = random_celo2_net(3)
    ref, fast, opt_ref, opt_fast = pair(SHAPES, torch.float32, net, orthogonalize=orthogonalize)
    before = [a.clone() for a in ref]
    set_grads(ref, fast)
    opt_ref.step()
    opt_fast.step()
    key = ("celo2 step newton-schulz" if orthogonalize else "celo2 step", torch.float32)
    for a, b, p0 in zip(ref, fast, before):
        assert_close(b.double() - p0, a - p0, key, f"{isa}: update of {tuple(a.shape)}", scale=(a - p0).abs().max())
        for k, v in opt_ref.state[a].items():
            assert_close(opt_fast.state[b][k], v, ("kernel", torch.float32), f"{isa}: {k} of {tuple(a.shape)}")


@pytest.mark.parametrize("orthogonalize", [True, False], ids=["celo2", "celo2_base"])
def test_float32_trajectory_follows_the_float64_reference(orthogonalize):
    """The issue's target: 20 steps in float32 stay within 1e-3 of the float64 reference's movement (conv,
    rank 3, 2-d, weight decay), gradients that shrink and change scale as a training run's do."""
    shapes = [(8, 3, 3, 3), (3, 6, 10), (17, 24), (40, 9)]
    ref, fast, opt_ref, opt_fast = pair(shapes, torch.float32, random_celo2_net(7), orthogonalize=orthogonalize)
    start = [a.clone() for a in ref]
    for t in range(20):
        set_grads(ref, fast, scale=10.0 ** (-t / 10))
        opt_ref.step()
        opt_fast.step()
    for a, b, s in zip(ref, fast, start):
        err = movement_error(b, a, s)
        assert err <= TRAJECTORY[torch.float32], f"{tuple(a.shape)}: {err:.2e} of the movement"
        assert opt_fast.state[b]["step"].item() == 20


def test_nonfinite_gradients_skip_their_tensor_and_clamp_huge_ones():
    """An inf or NaN skips that tensor (only nonfinite_skips moves); a huge finite gradient is clamped to ±1000
    and applied, as the reference does."""
    ref, fast, opt_ref, opt_fast = pair([(5, 6), (4, 3, 3), (7, 8)], torch.float32, random_celo2_net(1))
    set_grads(ref, fast)
    opt_ref.step()
    opt_fast.step()
    sync_state(opt_ref, opt_fast, ref, fast)
    before = [b.clone() for b in fast]
    states = [copy.deepcopy(opt_fast.state[b]) for b in fast]
    set_grads(ref, fast)
    for grads in ([a.grad for a in ref], [b.grad for b in fast]):
        grads[0][2, 3] = float("nan")
        grads[1][0, 1, 2] = -float("inf")
        grads[2][1, 1] = 1e30
    opt_ref.step()
    opt_fast.step()
    for i in (0, 1):
        assert torch.equal(fast[i], before[i])
        for key, value in states[i].items():
            assert torch.equal(opt_fast.state[fast[i]][key], value + (key == "nonfinite_skips")), key
    assert not torch.equal(fast[2], before[2])
    assert_close(fast[2] - before[2], ref[2] - before[2].double(), ("celo2 step newton-schulz", torch.float32),
                 "the clamped tensor's update", scale=(ref[2] - before[2].double()).abs().max())  # fmt: skip
    assert opt_fast.nonfinite_skips().item() == 2


def test_zero_size_and_other_networks_run_as_the_reference():
    """An empty tensor only counts its step; a meta-network the kernels do not hard-code (tanh, wider) runs the
    reference inside the cpu backend: bit for bit the reference's float32 result."""
    wide = Celo2Net(Celo2Config(hidden_size=12, activation="tanh"), generator=torch.Generator().manual_seed(0))
    params = [torch.randn(0, 5), torch.randn(6, 7)]
    twins = [p.clone() for p in params]
    opt = mulo.Celo2(params, meta_weights=wide, backend="cpu")
    opt_ref = mulo.Celo2(twins, meta_weights=wide, backend="reference")
    for _ in range(2):
        for a, b in zip(params, twins):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        opt.step()
        opt_ref.step()
    assert torch.equal(params[1], twins[1])
    assert opt.state[params[0]]["step"].item() == 2


def test_auto_picks_cpu_for_native_dtypes_and_the_reference_for_float64():
    opt = mulo.Celo2([torch.randn(3, 4)], meta_weights=random_celo2_net())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert opt.backend_for("cpu", torch.float32).name == "cpu"
        assert opt.backend_for("cpu", torch.bfloat16).name == "cpu"
        assert opt.backend_for("cpu", torch.float64).name == "reference"


def test_bad_backend_and_dtype_are_named():
    known = r"\['cpu', 'reference', 'triton'\]"
    with pytest.raises(ValueError, match=rf"unknown celo2 backend 'cuda'; choose 'auto' or one of {known}"):
        mulo.Celo2([torch.randn(3, 3)], meta_weights=random_celo2_net(), backend="cuda")
    p = torch.randn(3, 3, dtype=torch.float64)
    opt = mulo.Celo2([p], meta_weights=random_celo2_net(), backend="cpu")
    p.grad = torch.randn_like(p)
    with pytest.raises(BackendUnavailable, match=r"does not run torch.float64 parameters on cpu.*'reference'"):
        opt.step()


def test_ops_reject_bad_input_with_the_argument_named():
    ops = torch.ops.mulo
    with pytest.raises(RuntimeError, match=r"dims for grads\[0\] must be its factored axes"):
        ops.celo2_reduce([torch.randn(4)], [-1, -1])
    p, g = torch.randn(4, 6), torch.randn(4, 6)
    st = reference.init_state(p.shape, False, "last2", torch.float32, p.device)
    sums, finite = ops.celo2_reduce([g], [0, 1])
    args = ([p], [g], [st["momentum"]], [st["second_moment"]], [st["row"]], [st["col"]], sums, finite, [0, 1])
    sq = ops.celo2_sumsq(*args)
    assert sq.shape == (1, spec.NUM_FEATURES)
    mlp = cpu.weights_mlp(random_celo2_net().meta_weights("cpu", torch.float32))
    with pytest.raises(RuntimeError, match=r"mlp\[2\] must be a contiguous float32 CPU tensor"):
        ops.celo2_direction(*args, sq, [*mlp[:2], mlp[2][:5], *mlp[3:]], [])
    with pytest.raises(RuntimeError, match=r"weight_index\[0\] = 1 is not one of the 1 meta-weight sets"):
        ops.celo2_direction(*args, sq, mlp, [], [1])
    with pytest.raises(RuntimeError, match="sumsq must be the contiguous float32 CPU output"):
        ops.celo2_direction(*args, sq[:, :5].contiguous(), mlp, [])
    with pytest.raises(RuntimeError, match=r"directions\[0\] must be a contiguous float32 CPU tensor of 24"):
        ops.celo2_direction(*args, sq, mlp, [torch.empty(5)])
    bad = ([p], [g], [st["momentum"].double()], *args[3:])
    with pytest.raises(RuntimeError, match="state in float32"):
        ops.celo2_sumsq(*bad)


# ---- the C++ sources -------------------------------------------------------------------------------------------
def code(name: str) -> str:
    return "\n".join(line.split("//", 1)[0] for line in (CSRC / name).read_text().splitlines())


def test_c_header_is_generated_from_the_spec():
    assert (CSRC / "celo2_spec.h").read_text() == spec.c_header(), (
        "csrc/celo2_spec.h is stale: run `python -m mulo.celo2.spec > csrc/celo2_spec.h`"
    )


def test_kernels_and_host_call_the_shared_celo2_math():
    """celo2_math.h computes every Celo2 feature, moment, normalization and update; the kernels and the host call
    it, and no other file names a Celo2 epsilon or clamp."""
    for fn in ("features", "moments", "clamp_grad", "updated_param"):
        assert re.search(rf"\bc2::{fn}\(", code("celo2_cpu_kernels.h")), fn
    for fn in ("slice_scale", "step_scale", "grad_sq", "finite_grad"):
        assert re.search(rf"\bcelo2::{fn}\(", code("celo2_cpu.cpp")), fn
    for fn in ("new_acc", "row_entry", "col_entry"):  # the Adafactor entries are μLO's (lopt_math.h)
        assert re.search(rf"\bmath::{fn}\(", code("celo2_cpu.cpp")), fn
    for name in ("celo2_cpu.cpp", "celo2_cpu_kernels.h", "celo2_cpu.h", "celo2_ops.h"):
        hits = re.findall(r"\bk(?:Eps\w+|GradClamp|FeatureClip|RmsMult)\b|\bsqrtf?\s*\(|\bexpf?\s*\(", code(name))
        assert not hits, f"csrc/{name} restates Celo2's math ({hits[:3]}); it lives in csrc/celo2_math.h"


@pytest.mark.parametrize("orthogonalize", [True, False], ids=["celo2", "celo2_base"])
def test_threads_do_not_change_the_result(orthogonalize):
    """Enough elements for the passes to run on several threads (chunks of whole slices and pieces of a large
    slice): bit for bit the single-threaded result (per-slice sums are added in a fixed order)."""
    shapes = [(3, 300, 160), (700, 300), (64, 8, 3, 3)]
    net = random_celo2_net(2)
    runs = []
    for threads in (1, 2):
        torch.manual_seed(0)
        params = [torch.randn(s) for s in shapes]
        opt = mulo.Celo2(params, lr=0.01, weight_decay=0.1, meta_weights=net, backend="cpu",
                         orthogonalize=orthogonalize)  # fmt: skip
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for _ in range(2):
                for p in params:
                    p.grad = hetero_grad(p.shape, dtype=torch.float32)
                opt.step()
        finally:
            torch.set_num_threads(before)
        runs.append((params, [opt.state[p] for p in params]))
    (p1, s1), (p2, s2) = runs
    for a, b, sa, sb in zip(p1, p2, s1, s2):
        assert torch.equal(a, b)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_transposed_slice_shapes_share_one_newton_schulz_chain(monkeypatch):
    """(5, 3) and (3, 5) slices share one batched Newton–Schulz chain; the step matches the reference's."""
    check_transposed_slices_share_one_chain(monkeypatch, "cpu")
