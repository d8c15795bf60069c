"""The ``cuda`` backend (csrc/lopt_cuda.cu): compiled wherever a CUDA toolkit is (CI), parity on a GPU."""

import os
import sys

import pytest
import torch

from mulo.backends import reference as ref
from tests.backends.test_native_cpu import compare, new_state
from tests.helpers import SHAPES, hetero_grad, random_net, shape_id
from tests.tolerances import TRAJECTORY, movement_error

native = pytest.importorskip("mulo.backends.native")
_C = native.load_extension()


def _toolkit_present() -> bool:
    root = os.path.join(os.path.dirname(__file__), "..", "..", "csrc")
    sys.path.insert(0, root)
    try:
        import build_ext_config
    finally:
        sys.path.pop(0)
    return build_ext_config._cuda_home() is not None


@pytest.mark.skipif(os.environ.get("MULO_BUILD_CUDA") == "0", reason="MULO_BUILD_CUDA=0 builds the CPU kernels only")
def test_extension_contains_cuda_kernels_when_a_toolkit_is_present():
    """CI builds the CUDA kernels (nvcc is on the machine even without a GPU): the extension must carry
    them for sm_80 and sm_90, and register the CUDA implementations of the ops."""
    if not _toolkit_present():
        assert not _C.has_cuda()
        return
    assert _C.has_cuda(), "a CUDA toolkit is present but mulo._C was built without the CUDA kernels"
    archs = _C.cuda_archs().split(",")
    assert "800" in archs and "900" in archs, f"compiled for {archs}, expected sm_80 and sm_90"
    for op in ("lopt_reduce", "lopt_sumsq", "lopt_apply"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mulo::{op}", "CUDA"), op


def run_pair(shapes, steps, *, lrs, wds, pdtype=torch.float32, sdtype=torch.float32, ref64=True):
    net = random_net()
    w = net.meta_weights("cuda", torch.float32)
    rdt = torch.float64 if ref64 else pdtype
    wref = net.meta_weights("cpu", torch.float64 if ref64 else torch.float32)
    params = [torch.randn(s).to(pdtype) for s in shapes]
    ref_params = [p.to(rdt).clone() for p in params]
    params = [p.cuda() for p in params]
    states = [{k: v.cuda() for k, v in new_state(p, sdtype).items()} for p in params]
    ref_states = [new_state(p, torch.float64 if ref64 else sdtype) for p in ref_params]
    backend = native.CudaBackend()
    grad_max = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    for t in range(steps):
        grads = [hetero_grad(s, dtype=torch.float32).to(pdtype) for s in shapes]
        grad_max = [torch.maximum(m, g.abs().double()) for m, g in zip(grad_max, grads)]
        backend.step(params, [g.cuda() for g in grads], states, lrs, wds, w)
        ref.ReferenceBackend().step(ref_params, [g.to(rdt) for g in grads], ref_states, lrs, wds, wref)
        compare(params, states, ref_params, ref_states, ("kernel", pdtype), f"step {t}", grad_max)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES + [(4097,), (3, 4097), (33, 65, 3)], ids=shape_id)
def test_cuda_matches_reference_per_shape(shape):
    run_pair([shape], 3, lrs=[0.7], wds=[0.05])


# csrc/lopt_cuda.cu cuts factored tensors whose contiguous axis is factored (C == 1, ≥ 32 columns) into 2-d tiles of
# 1-8 strips of 32 columns (rows split among the block's warps, B > 1 strides the rows), the others run linear
# chunks (rank < 2; C > 1; narrow): every kind, partial strips and tiles, and a zero-size axis.
TILE_SHAPES = [(64, 33), (33, 64), (100, 300), (20, 3, 40), (40, 3, 20), (7, 257), (300, 31), (5, 9, 4, 3), (0, 5)]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", TILE_SHAPES, ids=shape_id)
def test_cuda_tiles_and_linear_chunks_match_reference(shape):
    run_pair([shape], 3, lrs=[0.7], wds=[0.05])


@pytest.mark.gpu
def test_cuda_mixed_shapes_one_call_mup_lrs():
    shapes = SHAPES + [(33, 65), (65, 33), (3, 9, 17)]
    lrs = [1.0 / (1 + i % 4) for i in range(len(shapes))]
    wds = [0.0 if i % 2 else 0.1 for i in range(len(shapes))]
    run_pair(shapes, 4, lrs=lrs, wds=wds)


@pytest.mark.gpu
@pytest.mark.parametrize("pdtype", [torch.bfloat16, torch.float16], ids=str)
def test_cuda_low_precision_params(pdtype):
    run_pair([(7,), (9, 33), (2, 3, 5)], 3, lrs=[0.8] * 3, wds=[0.01] * 3, pdtype=pdtype, ref64=False)


@pytest.mark.gpu
def test_cuda_bfloat16_state():
    run_pair([(5,), (17, 9), (3, 4, 5)], 3, lrs=[0.8] * 3, wds=[0.0] * 3, sdtype=torch.bfloat16, ref64=False)


@pytest.mark.gpu
def test_cuda_trajectory_40_steps_float32():
    shapes = [(24, 40), (40, 24), (16, 8, 3, 3), (40,), ()]
    net = random_net()
    w32, w64 = net.meta_weights("cuda", torch.float32), net.meta_weights("cpu", torch.float64)
    params = [torch.randn(s) for s in shapes]
    start = [p.double().clone() for p in params]
    ref_params = [p.double().clone() for p in params]
    params = [p.cuda() for p in params]
    states = [{k: v.cuda() for k, v in new_state(p, torch.float32).items()} for p in params]
    ref_states = [new_state(p, torch.float64) for p in ref_params]
    lrs, wds = [1.0, 1 / 24, 1 / 16, 1.0, 1.0], [0.01] * 5
    backend = native.CudaBackend()
    for _ in range(40):
        grads = [hetero_grad(s, dtype=torch.float64) + 0.1 * p for s, p in zip(shapes, ref_params)]
        backend.step(params, [g.float().cuda() for g in grads], states, lrs, wds, w32)
        ref.ReferenceBackend().step(ref_params, grads, ref_states, lrs, wds, w64)
    for i, (p, rp, s0) in enumerate(zip(params, ref_params, start)):
        err = movement_error(p, rp, s0)
        assert err < TRAJECTORY[torch.float32], f"param {i} {shapes[i]}: trajectory error {err:.3g}"


@pytest.mark.gpu
def test_cuda_nonfinite_gradient_skips_without_sync():
    net = random_net()
    w = net.meta_weights("cuda", torch.float32)
    params = [torch.randn(4, 5, device="cuda"), torch.randn(6, device="cuda")]
    states = [{k: v.cuda() for k, v in new_state(p, torch.float32).items()} for p in params]
    before = [p.clone() for p in params]
    g0 = hetero_grad((4, 5), dtype=torch.float32).cuda()
    g0[1, 2] = float("nan")
    g1 = hetero_grad((6,), dtype=torch.float32).cuda()
    native.CudaBackend().step(params, [g0, g1], states, [1.0, 1.0], [0.0, 0.0], w)
    assert torch.equal(params[0], before[0])
    assert states[0]["nonfinite_skips"].item() == 1 and states[0]["step"].item() == 0
    assert not torch.equal(params[1], before[1]) and states[1]["step"].item() == 1


@pytest.mark.gpu
def test_cuda_opcheck():
    net = random_net()
    w = net.meta_weights("cuda", torch.float32)
    params = [torch.randn(5, 7, device="cuda"), torch.randn(3, device="cuda")]
    grads = [hetero_grad(tuple(p.shape), dtype=torch.float32).cuda() for p in params]
    dims = native.dims_of(params, "torch")
    torch.library.opcheck(torch.ops.mulo.lopt_reduce.default, (grads, dims))
    states = [{k: v.cuda() for k, v in new_state(p, torch.float32).items()} for p in params]
    sums, finite = native.reduce(grads, dims)
    acc_a, acc_b = native._accumulators(states)
    mom = [st["momentum"] for st in states]
    sec = [st["second_moment"] for st in states]
    torch.library.opcheck(
        torch.ops.mulo.lopt_sumsq.default,
        (params, grads, mom, sec, acc_a, acc_b, sums, finite, dims, native.hyper(w)),
    )


def test_cuda_backend_runs_only_on_architectures_the_build_covers(monkeypatch):
    """SASS for sm_80/sm_90 and PTX of sm_90: sm_80/86/89/90 run the SASS, sm_100/120 JIT the PTX, sm_75 is
    refused (auto moves on; an explicit backend='cuda' names the reason)."""
    from mulo.backends.native import runs_on_arch

    for sm, ok in ((80, True), (86, True), (89, True), (90, True), (100, True), (120, True), (75, False), (70, False)):
        assert runs_on_arch(sm, "800,900") is ok, sm
    assert not runs_on_arch(90, "unknown")
    assert runs_on_arch(90, "900") and not runs_on_arch(86, "900")


@pytest.mark.skipif(not _C.has_cuda(), reason="this build has no CUDA kernels (no toolkit at build time)")
def test_cuda_supports_checks_the_device_architecture(monkeypatch):
    backend = native.CudaBackend()
    caps = {0: (9, 0), 1: (7, 5)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: caps[index])
    monkeypatch.setattr(backend._C, "cuda_archs", lambda: "800,900")
    assert backend.supports(torch.device("cuda:0"), torch.float32)
    assert not backend.supports(torch.device("cuda:1"), torch.float32)
    assert not backend.supports(torch.device("cuda:0"), torch.float64)


class _OnCuda:
    """Stands in for a CUDA tensor where only its device is asked (this machine may have no GPU)."""

    is_cuda = True


def test_cuda_ops_refuse_graph_capture(monkeypatch):
    """The CUDA ops upload per-step tables from the host: while a CUDA graph is being captured they raise with
    the fix (backend='triton') instead of recording tables a replay would repeat frozen; outside a capture,
    and for CPU tensors, nothing is refused."""
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match=r"cannot be captured in a CUDA graph.*Fix: use backend='triton'"):
        native.refuse_graph_capture([_OnCuda()])
    native.refuse_graph_capture([torch.zeros(2)])  # CPU tensors: the CPU ops are not captured
    native.refuse_graph_capture([])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    native.refuse_graph_capture([_OnCuda()])


@pytest.mark.gpu
def test_cuda_step_under_graph_capture_raises_the_fix():
    net = random_net()
    w = net.meta_weights("cuda", torch.float32)
    p = [torch.randn(8, 16, device="cuda")]
    st = [{k: v.cuda() for k, v in new_state(p[0], torch.float32).items()}]
    g = [torch.randn(8, 16, device="cuda")]
    backend = native.CudaBackend()
    backend.step(p, g, st, [0.1], [0.0], w)  # warm up outside the capture
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream), pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph"):
        with torch.cuda.graph(torch.cuda.CUDAGraph(), stream=stream):
            backend.step(p, g, st, [0.1], [0.0], w)
