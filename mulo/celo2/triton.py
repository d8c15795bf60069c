"""Celo2's ``triton`` backend: the pass plan of :mod:`mulo.celo2.reference` as Triton kernels
(:mod:`mulo.kernels.celo2`), each pass one launch for every learned-rule tensor of a group, on μLO's segment/chunk
tables (:mod:`mulo.kernels.lopt_plan`):

- A: the Adafactor row/column sums of s = clamp(g)² + 1e-30 and the non-finite count per tensor;
- B: the new m, v (committed), the new accumulator vectors, the 30 features' sums of squares per slice;
- with ``orthogonalize=True``: C writes the direction into one float32 buffer per slice shape, Newton–Schulz runs
  as one chain of batched matrix products per oriented slice shape (:func:`mulo.celo2.cpu.orthogonalize_buffers`),
  its per-slice sums of squares go into a persistent buffer, and E reads the result where it lies (a table of
  pointers, copied only when the allocator moves it) and applies the RMS-normalized step;
- without it (Celo2-base) no direction is materialized: C sums d² per slice, and a second C recomputes d and
  applies it.

Parameters are taken as the contiguous math view the rule reads (``normalize_axes="io"`` permutes a rank ≥ 3
tensor: a contiguous copy, written back), as by the ``cpu`` backend (:class:`mulo.celo2.cpu.FusedBackend`).
Float64 parameters, non-float32 state and meta-networks other than the published 30→8→8→3 ReLU shape run the
reference instead. Learning rates and weight decays may be 0-d device tensors (never read on the host).
Launches go to the parameters' device and its current stream; nothing syncs with the host. Imported only when
the registry is asked for Celo2's ``"triton"``; on CPU the kernels run only in Triton's interpreter
(``TRITON_INTERPRET=1`` before the first import).
"""

from __future__ import annotations

import math

import torch
import triton  # noqa: F401  (ImportError here tells the registry the backend is unavailable)
import triton.language as tl

from mulo.backends.native import _kernel_grads
from mulo.backends.triton_backend import _device_guard, _has_tensor, hyper_table
from mulo.celo2.cpu import FusedBackend, _Bucket, orthogonalize_buffers
from mulo.kernels import celo2 as K
from mulo.kernels import lopt_common, lopt_plan
from mulo.lopt.shapes import factored_dims

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def net_table(mlp: list[torch.Tensor]) -> torch.Tensor:
    """The ops' ``mlp`` tensors (W1 (…, 8, 30), b1, W2, b2, W3 (…, 2, 8), b3; optional leading member axis K)
    as the kernels read them: one flat float32 row of :data:`mulo.kernels.celo2.NET_SIZE` per meta-weight set."""
    lead = mlp[1].shape[:-1]
    k = math.prod(lead)
    flat = torch.cat([t.reshape(k, -1) for t in mlp], dim=1).float().contiguous()
    assert flat.shape[1] == K.NET_SIZE, flat.shape
    return flat


class _Launch:
    """Everything the passes of one bucket read, built once while its tensors stay the same storage: the plan
    tables, the Celo2 table, pointers, workspace, direction and Newton–Schulz buffers."""

    def __init__(self, backend: TritonBackend, bucket: _Bucket, grads, weight_index, orthogonalize: bool):
        params = bucket.params
        device = params[0].device
        bx, by, bxc = backend.tiles
        shapes = tuple(tuple(p.shape) for p in params)
        widx = tuple(weight_index) if weight_index else None
        self.plan = lopt_plan.build_plan(shapes, "torch", bx, by, bxc, device, widx)
        if backend.index64:
            self.plan.use_int64 = True
        ws = self.plan.ws_size
        crows = []
        for p, lay in zip(params, self.plan.layouts):
            assert lay.factored, p.shape  # the learned rule takes rank ≥ 2 tensors only
            last2 = p.shape[-2] * p.shape[-1]
            slices = p.numel() // last2
            aligned = sorted(factored_dims(p.shape)) == [p.dim() - 2, p.dim() - 1]
            crows.append([last2, ws, ws + K.SLICE_STRIDE * slices, int(aligned)])
            ws += (K.SLICE_STRIDE + 1) * slices
        self.cmeta = torch.tensor(crows, dtype=torch.int64).to(device)
        self.ws = torch.zeros(ws, dtype=torch.float32, device=device)
        moms, vs, rows, cols = bucket.accumulators
        steps, skips = bucket.counters
        ptr_rows = []
        for i, (p, lay) in enumerate(zip(params, self.plan.layouts)):
            acc_x, acc_y = (cols[i], rows[i]) if lay.d0_is_x else (rows[i], cols[i])
            ptr_rows.append([p.data_ptr(), 0, moms[i].data_ptr(), vs[i].data_ptr(), acc_x.data_ptr(),
                             acc_y.data_ptr(), steps[i].data_ptr(), skips[i].data_ptr()])  # fmt: skip
        self.ptr_rows = ptr_rows
        self.ptrs = torch.tensor(ptr_rows, dtype=torch.int64).to(device)
        self.grad_ptrs: tuple = ()
        self.dtypes = (_TL_DTYPES[params[0].dtype], _TL_DTYPES[grads[0].dtype], _TL_DTYPES[moms[0].dtype])
        self.dptrs = self.xptrs = torch.zeros(1, dtype=torch.int64, device=device)
        self.buffers: dict = {}
        if orthogonalize:
            self.buffers, directions = bucket.direction_buffers()
            self.dptrs = torch.tensor([d.data_ptr() for d in directions], dtype=torch.int64).to(device)
            # Σx² per slice of each orthogonalized buffer; pass E's table points at each tensor's slices of both
            self.xsq = {key: torch.empty(buf.shape[0], dtype=torch.float32, device=device)
                        for key, buf in self.buffers.items()}  # fmt: skip
            self.x_keys = [tuple(p.shape[-2:]) for p in params]
            self.x_offsets = [4 * offset for offset in bucket.offsets]
            self.x_slice = {key: 4 * key[0] * key[1] for key in self.buffers}
            self.x_ptrs: tuple = ()
            self.xptrs = torch.zeros((len(params), 2), dtype=torch.int64, device=device)
        self.lr_key = None
        self.hyper = None

    def set_grads(self, grads) -> None:
        """Point the table at this step's gradients (one small copy when they moved)."""
        ptrs = tuple(g.data_ptr() for g in grads)
        if ptrs != self.grad_ptrs:
            for row, ptr in zip(self.ptr_rows, ptrs):
                row[1] = ptr
            self.ptrs.copy_(torch.tensor(self.ptr_rows, dtype=torch.int64))
            self.grad_ptrs = ptrs

    def set_orthogonal(self, xs: dict) -> None:
        """Point pass E at Newton–Schulz's results ``xs`` (contiguous, one per slice shape: the caching
        allocator usually hands out the same blocks every step, so the table is rarely copied)."""
        bases = {key: x.data_ptr() for key, x in xs.items()}
        ptrs = tuple(bases[key] for key in self.x_keys)
        if ptrs != self.x_ptrs:
            rows = [[bases[k] + off * self.x_slice[k] // 4, self.xsq[k].data_ptr() + off]
                    for k, off in zip(self.x_keys, self.x_offsets)]  # fmt: skip
            self.xptrs.copy_(torch.tensor(rows, dtype=torch.int64))
            self.x_ptrs = ptrs

    def set_hyper(self, lrs, wds, device) -> None:
        if _has_tensor(lrs) or _has_tensor(wds):  # device tensors: never read on the host
            self.hyper, self.lr_key = hyper_table(list(lrs), list(wds), device), None
            return
        key = (tuple(float(x) for x in lrs), tuple(float(x) for x in wds))
        if key != self.lr_key:
            self.hyper = torch.tensor(list(zip(*key)), dtype=torch.float32).to(device)
            self.lr_key = key


class TritonBackend(FusedBackend):
    """Fused Celo2 in Triton. Pass A tiles are ``block_x × block_y``; passes B, C and E (30 features and the
    network per element in registers) take ``block_xc × block_y`` (default 8 × 64: four elements per thread
    of 4 warps, so that each of the network's 338 weights, a scalar load per thread, serves four elements:
    pass C compiled for sm_90 runs 20.5 warp-instructions per element in 168 registers without spills,
    ``bench/gpu_static.py``)."""

    name = "triton"

    def __init__(self, block_x: int = 32, block_y: int = 64, block_xc: int | None = None, index64: bool = False):
        super().__init__()
        block_xc = block_xc or 8
        for label, b in (("block_x", block_x), ("block_y", block_y), ("block_xc", block_xc)):
            if b < 1 or b & (b - 1):
                raise ValueError(f"Celo2 TritonBackend: {label} must be a power of two, got {b}")
        self.tiles = (block_x, block_y, block_xc)
        self.index64 = index64

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        if dtype not in _TL_DTYPES:
            return False
        device = torch.device(device)
        if device.type == "cuda":
            return torch.cuda.is_available()
        return device.type == "cpu" and lopt_common.INTERPRET

    def _launch(self, bucket: _Bucket, grads, weight_index, orthogonalize: bool) -> _Launch:
        """The bucket's launch tables, built on its first step and kept with it (a bucket lives while its
        tensors are the same storage: see ``FusedBackend._step_bucket``)."""
        key = (self.tiles, self.index64, tuple(weight_index) if weight_index else None, orthogonalize)
        cached = getattr(bucket, "triton_launch", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        launch = _Launch(self, bucket, grads, weight_index, orthogonalize)
        bucket.triton_launch = (key, launch)
        return launch

    def _run_passes(self, bucket, grads, lrs, weight_decays, mlp, *, orthogonalize, weight_index=()) -> None:
        params = bucket.params
        device = params[0].device
        grads = _kernel_grads(params, grads)
        with _device_guard(params):
            w = self._launch(bucket, grads, weight_index, orthogonalize)
            w.set_grads(grads)
            w.set_hyper(lrs, weight_decays, device)
            net = net_table(mlp).to(device)
            w.ws.zero_()
            bx, by, bxc = self.tiles
            K.celo2_reduce(w.plan, w.ptrs, w.ws, w.dtypes[1], w.dtypes[2], bx, by)  # A
            K.celo2_sumsq(w.plan, w.cmeta, w.ptrs, w.ws, w.dtypes, bxc, by)  # B
            if not orthogonalize:
                for mode in (K.SUM_DIRECTION_SQ, K.APPLY_DIRECTION):  # C: Σd², then d recomputed and applied
                    K.celo2_direction(w.plan, w.cmeta, w.ptrs, w.ws, net, w.dptrs, w.hyper, w.dtypes, bxc, by, mode)
                return
            K.celo2_direction(w.plan, w.cmeta, w.ptrs, w.ws, net, w.dptrs, w.hyper, w.dtypes, bxc, by,
                              K.STORE_DIRECTION)  # fmt: skip
            xs = {}
            for key, x in orthogonalize_buffers(w.buffers).items():  # D: one chain per oriented slice shape
                xs[key] = x if x.is_contiguous() else x.contiguous()  # (only a transposed, joined buffer copies)
                torch.linalg.vector_norm(xs[key], dim=(-2, -1), out=w.xsq[key])
                w.xsq[key].square_()
            w.set_orthogonal(xs)
            K.celo2_apply(w.plan, w.cmeta, w.ptrs, w.ws, w.xptrs, w.hyper, w.dtypes, bxc, by)  # E
