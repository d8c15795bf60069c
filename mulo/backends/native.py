"""The ``cpu`` and ``cuda`` backends: μLO through the native extension ``mulo._C`` (csrc/).

Both run the three passes of ALGORITHM.md §5 as ``torch.library`` ops, each over all tensors of a bucket
at once:

- ``torch.ops.mulo.lopt_reduce`` (A): per tensor the sums of s = g² + 1e-30 over the row axis d0 and the
  column axis d1, and a finite flag;
- ``torch.ops.mulo.lopt_sumsq`` (B): the 28 per-channel sums of squares;
- ``torch.ops.mulo.lopt_apply`` (C): features, MLP, update of the parameter and every accumulator.

A and B return plain sums, so a sharded caller can all-reduce them between the passes (:func:`reduce`,
:func:`sumsq`, :func:`apply` are the separately callable passes). The extension is imported on first use;
without it the backends raise ``ImportError`` naming the build command.
"""

from __future__ import annotations

import threading

import torch

from mulo.lopt import constants as C
from mulo.lopt.network import MetaWeights
from mulo.lopt.shapes import physical_factored_dims

BUILD_HINT = (
    "the native extension mulo._C is not built; build it with `make install` "
    "(or `pip install --no-build-isolation -e .` in the repository) and check the build log for a warning"
)
NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
STATE_DTYPES = (torch.float32, torch.bfloat16)

_lock = threading.Lock()
_ext = None


def load_extension():
    """``mulo._C`` with its ops registered (and their fake implementations); ImportError with the fix."""
    global _ext
    with _lock:
        if _ext is None:
            try:
                from mulo import _C
            except ImportError as e:
                raise ImportError(f"{BUILD_HINT} ({e})") from e
            _register_fakes()
            _ext = _C
    return _ext


def _register_fakes() -> None:
    @torch.library.register_fake("mulo::lopt_reduce")
    def _reduce_fake(grads, dims):
        sums = []
        for i, g in enumerate(grads):
            d1, d0 = dims[2 * i], dims[2 * i + 1]
            n = g.numel()
            size = 0 if d0 < 0 else n // g.shape[d0] + n // g.shape[d1]
            sums.append(g.new_empty((size,), dtype=torch.float32))
        return sums, grads[0].new_empty((len(grads),), dtype=torch.float32)

    @torch.library.register_fake("mulo::lopt_sumsq")
    def _sumsq_fake(params, grads, momentum, second_moment, acc_a, acc_b, sums, finite, dims, hyper):
        return params[0].new_empty((len(params), C.NUM_FEATURES), dtype=torch.float32)

    @torch.library.register_fake("mulo::lopt_apply")
    def _apply_fake(*args):
        return None


def hyper(weights: MetaWeights) -> list[float]:
    return [
        *map(float, weights.momentum_decays),
        float(weights.rms_decay),
        *map(float, weights.adafactor_decays),
        float(weights.exp_mult),
        float(weights.step_mult),
    ]


def dims_of(params: list[torch.Tensor], layout: str) -> list[int]:
    out: list[int] = []
    for p in params:
        d = physical_factored_dims(p.shape, layout)
        out.extend((-1, -1) if d is None else d)
    return out


def network_supported(weights: MetaWeights) -> bool:
    """The kernels hard-code the published 39→32→32→2 shape."""
    shapes = [tuple(w.shape) for w, _ in weights.layers]
    return shapes == [(C.HIDDEN_SIZE, C.INPUT_SIZE), (C.HIDDEN_SIZE, C.HIDDEN_SIZE), (2, C.HIDDEN_SIZE)]


def _accumulators(states):
    acc_a, acc_b = [], []
    for st in states:
        if "row" in st:
            acc_a.append(st["row"])
            acc_b.append(st["col"])
        else:
            acc_a.append(st["full"])
            acc_b.append(st["full"].new_empty((0,)))
    return acc_a, acc_b


def reduce(grads, dims):
    """Pass A: (sums per tensor, finite flags)."""
    return torch.ops.mulo.lopt_reduce(grads, dims)


def sumsq(params, grads, states, sums, finite, dims, weights):
    """Pass B: (n_tensors, 28) float32 sums of squares of the feature channels."""
    acc_a, acc_b = _accumulators(states)
    momentum = [st["momentum"] for st in states]
    second = [st["second_moment"] for st in states]
    return torch.ops.mulo.lopt_sumsq(params, grads, momentum, second, acc_a, acc_b, sums, finite, dims, hyper(weights))


def apply(params, grads, states, sums, sq, finite, lrs, weight_decays, dims, weights, weight_index=()):
    """Pass C: the update, in place. ``weights`` may be a population's (layers with a leading axis K, one
    meta-weight set per member); ``weight_index`` then says which set each tensor uses (CPU only)."""
    acc_a, acc_b = _accumulators(states)
    mlp = [t.float().contiguous() for layer in weights.layers for t in layer]
    torch.ops.mulo.lopt_apply(
        params,
        grads,
        [st["momentum"] for st in states],
        [st["second_moment"] for st in states],
        acc_a,
        acc_b,
        [st["step"] for st in states],
        [st["nonfinite_skips"] for st in states],
        sums,
        sq,
        finite,
        mlp,
        [float(x) for x in lrs],
        [float(x) for x in weight_decays],
        dims,
        hyper(weights),
        list(weight_index),
    )


def _kernel_grads(params, grads) -> list[torch.Tensor]:
    """Gradients as the kernels read them: the parameter's dtype or float32, contiguous (read-only: a copy
    where needed is harmless)."""
    out = []
    for p, g in zip(params, grads, strict=True):
        if g.dtype != p.dtype and g.dtype != torch.float32:
            g = g.float()
        out.append(g if g.is_contiguous() else g.contiguous())
    return out


class _NativeBackend:
    name = "native"
    device_type = "cpu"
    uniform_grad_dtype = False

    def __init__(self) -> None:
        self._C = load_extension()
        self._fallback = None

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        return torch.device(device).type == self.device_type and dtype in NATIVE_DTYPES

    def _reference(self):
        if self._fallback is None:
            from mulo.backends.reference import ReferenceBackend

            self._fallback = ReferenceBackend()
        return self._fallback

    def step(self, params, grads, states, lrs, weight_decays, weights: MetaWeights) -> None:
        if not params:
            return
        if not network_supported(weights) or any(st["momentum"].dtype not in STATE_DTYPES for st in states):
            # another meta-network shape or float64 state: the kernels do not cover it; stay exact
            self._reference().step(params, grads, states, lrs, weight_decays, weights)
            return
        for i, p in enumerate(params):
            if p.dtype not in NATIVE_DTYPES:
                raise TypeError(
                    f"backend {self.name!r}: params[{i}] has dtype {p.dtype}; it runs float32/bfloat16/float16 "
                    "parameters (use backend='reference' or 'auto' for others)"
                )
        work = [p if p.is_contiguous() else p.contiguous() for p in params]
        gs = _kernel_grads(params, grads)
        if self.uniform_grad_dtype and len({g.dtype for g in gs}) > 1:
            gs = [g.float() for g in gs]  # the CUDA kernels take one gradient dtype per call
        dims = dims_of(params, weights.layout)
        sums, finite = reduce(gs, dims)
        sq = sumsq(work, gs, states, sums, finite, dims, weights)
        apply(work, gs, states, sums, sq, finite, lrs, weight_decays, dims, weights)
        for p, w in zip(params, work):
            if w is not p:
                p.copy_(w)


class CpuBackend(_NativeBackend):
    """Fused C++ μLO on the CPU: OpenMP over chunks, AVX-512/AVX2/portable SIMD chosen at run time."""

    name = "cpu"
    device_type = "cpu"

    def population_step(self, params, grads, states, lrs, weight_decays, weights) -> None:
        """:func:`mulo.backends.population.population_step` in ONE call per pass: every member's tensors
        (views of the stacked (M, *S) tensors, no copies) in one list, with a meta-weight index per tensor."""
        m = weights.size
        if not network_supported(weights.member(0)) or any(st["momentum"].dtype not in STATE_DTYPES for st in states):
            from mulo.backends.population import population_step

            population_step(params, grads, states, lrs, weight_decays, weights)
            return
        ps = [p[j] for j in range(m) for p in params]  # views: the kernels write through them
        gs = _kernel_grads(ps, [g[j] for j in range(m) for g in grads])
        sts = [{k: v[j] for k, v in st.items()} for j in range(m) for st in states]
        for i, p in enumerate(params):
            if p.dtype not in NATIVE_DTYPES or not p.is_contiguous():
                raise TypeError(
                    f"backend 'cpu' population step: params[{i}] must be a contiguous float32/bfloat16/float16 "
                    f"(M, ...) stack, got {p.dtype} {'contiguous' if p.is_contiguous() else 'non-contiguous'}"
                )
        dims = dims_of(ps, weights.layout)
        sums, finite = reduce(gs, dims)
        sq = sumsq(ps, gs, sts, sums, finite, dims, weights)
        index = [j for j in range(m) for _ in params]
        apply(ps, gs, sts, sums, sq, finite, list(lrs) * m, list(weight_decays) * m, dims, weights, index)

    @property
    def isa(self) -> str:
        return self._C.cpu_isa()


class CudaBackend(_NativeBackend):
    """Multi-tensor CUDA μLO (csrc/lopt_cuda.cu)."""

    name = "cuda"
    device_type = "cuda"
    uniform_grad_dtype = True

    def __init__(self) -> None:
        super().__init__()
        if not self._C.has_cuda():
            raise ImportError(
                "mulo._C was built without CUDA kernels (no CUDA toolkit found at build time); set CUDA_HOME to "
                "the toolkit root and rebuild with `make install` (or `pip install --no-build-isolation -e .`)"
            )
