"""Celo2's ``cpu`` backend: the pass plan of :mod:`mulo.celo2.reference` as fused C++ ops (csrc/celo2_cpu.cpp),
each over all tensors of a bucket at once:

- ``torch.ops.mulo.celo2_reduce`` (A): the row/column sums of s = clamp(g)² + 1e-30 and a finite flag per tensor;
- ``torch.ops.mulo.celo2_sumsq`` (B): commits the new accumulators (m, v, row, col) and returns the 30 features'
  sums of squares per slice (the last two axes);
- ``torch.ops.mulo.celo2_direction`` (C): the direction through the 30→8→8→3 network, and Σ d² per slice;
- with ``orthogonalize=True`` C writes the direction straight into one stacked buffer per slice shape, Newton–Schulz
  runs as one chain of batched matrix products per oriented slice shape (:func:`orthogonalize_buffers`: a (c, r)
  buffer joins the (r, c) one, transposed), and
  ``torch.ops.mulo.celo2_apply_steps`` (E) sums each slice's squares and applies the normalized step;
- without it (Celo2-base) no direction is materialized: C only sums d², and ``torch.ops.mulo.celo2_apply`` (E)
  recomputes d from the features and applies it.

Tensors are passed as the contiguous math view the rule reads (``normalize_axes="io"`` permutes a rank ≥ 3
tensor: a contiguous copy, written back). Float64 parameters, non-float32 state and meta-networks other than the
published 30→8→8→3 ReLU shape run the reference instead (exact, slower).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

import torch

from mulo.backends.native import NATIVE_DTYPES, _kernel_grads, load_extension
from mulo.celo2 import reference, spec
from mulo.celo2.network import Celo2Weights
from mulo.lopt.shapes import factored_dims

_fakes_lock = threading.Lock()
_fakes_registered = False


def _register_fakes() -> None:
    """Fake (meta) implementations of the celo2 ops, so that ``torch.compile`` can trace them."""
    global _fakes_registered
    with _fakes_lock:
        if _fakes_registered:
            return

        def slices(params) -> int:
            return sum(p.numel() // max(1, p.shape[-2] * p.shape[-1]) for p in params)

        @torch.library.register_fake("mulo::celo2_reduce")
        def _reduce_fake(grads, dims):
            sums = [g.new_empty((g.numel() // g.shape[dims[2 * i + 1]] + g.numel() // g.shape[dims[2 * i]],),
                                dtype=torch.float32) for i, g in enumerate(grads)]  # fmt: skip
            return sums, grads[0].new_empty((len(grads),), dtype=torch.float32)

        @torch.library.register_fake("mulo::celo2_sumsq")
        def _sumsq_fake(params, *args):
            return params[0].new_empty((slices(params), spec.NUM_FEATURES), dtype=torch.float32)

        @torch.library.register_fake("mulo::celo2_direction")
        def _direction_fake(params, *args, **kwargs):
            return params[0].new_empty((slices(params),), dtype=torch.float32)

        for name in ("celo2_apply", "celo2_apply_steps"):
            torch.library.register_fake(f"mulo::{name}")(lambda *args, **kwargs: None)
        _fakes_registered = True


def network_supported(w: Celo2Weights) -> bool:
    """The kernels hard-code the published network: 14 groups → 8 (ReLU) → 8 (ReLU) → ≥ 2 outputs."""
    return (
        w.activation == "relu"
        and [tuple(x.shape) for x in w.w0] == [(d, spec.HIDDEN_SIZE) for d in spec.FEATURE_DIMS]
        and len(w.dense) == spec.HIDDEN_LAYERS
        and tuple(w.dense[0][0].shape) == (spec.HIDDEN_SIZE, spec.HIDDEN_SIZE)
        and w.dense[1][0].shape[0] == spec.HIDDEN_SIZE
        and w.dense[1][0].shape[1] >= 2
    )


def mlp_tensors(w0: Sequence[torch.Tensor], b0, dense) -> list[torch.Tensor]:
    """The ops' ``mlp`` (W1, b1, W2, b2, W3, b3): float32, W as (out, in), the two used outputs (direction,
    magnitude) of the last layer. Each weight may carry leading member axes (K sets back to back)."""
    out = [
        torch.cat(list(w0), dim=-2).mT,
        b0,
        dense[0][0].mT,
        dense[0][1],
        dense[1][0][..., :2].mT,
        dense[1][1][..., :2],
    ]
    return [t.float().contiguous() for t in out]


def weights_mlp(w: Celo2Weights) -> list[torch.Tensor]:
    return mlp_tensors(w.w0, w.b0, w.dense)


@dataclasses.dataclass
class _Work:
    """One tensor as the ops take it: its math view, contiguous (``copy_back`` pairs: written back after E)."""

    param: torch.Tensor
    momentum: torch.Tensor
    second_moment: torch.Tensor
    state: dict[str, torch.Tensor]
    copy_back: list[tuple[torch.Tensor, torch.Tensor]]


def _contiguous(view: torch.Tensor, copy_back: list) -> torch.Tensor:
    if view.is_contiguous():
        return view
    work = view.contiguous()
    copy_back.append((view, work))
    return work


def _work(param, state, axes: str) -> _Work:
    back: list = []
    views = reference.state_views(state, axes)
    return _Work(
        param=_contiguous(reference.math_view(param, axes), back),
        momentum=_contiguous(views["momentum"], back),
        second_moment=_contiguous(views["second_moment"], back),
        state=state,
        copy_back=back,
    )


class _Bucket:
    """The tensors of one call as the ops take them, gradients aside. Reusable while the parameter and state
    storages stay the same and none needed a contiguous copy (``reusable``): a meta-training unroll steps the
    same stacks in place every inner step."""

    def __init__(self, works: list[_Work]):
        self.works = works
        self.params = [t.param for t in works]
        self.accumulators = (
            [t.momentum for t in works],
            [t.second_moment for t in works],
            [t.state["row"] for t in works],
            [t.state["col"] for t in works],
        )
        self.counters = ([t.state["step"] for t in works], [t.state["nonfinite_skips"] for t in works])
        self.dims = [d for p in self.params for d in factored_dims(p.shape)]
        self.offsets = _offsets(self.params)
        self.reusable = not any(t.copy_back for t in works)
        self._buffers = None

    def direction_buffers(self):
        """One float32 buffer per slice shape and each tensor's view into it (pass C overwrites every element
        each step: allocated once)."""
        if self._buffers is None:
            self._buffers = _direction_buffers(self.params, self.offsets)
        return self._buffers

    def copy_back(self) -> None:
        for t in self.works:
            for view, work in t.copy_back:
                view.copy_(work)


def run_passes(bucket: _Bucket, grads, lrs, weight_decays, mlp, *, orthogonalize: bool, weight_index=()) -> None:
    """Passes A–E of every tensor of ``bucket`` (rank ≥ 2, at least one element each) with ``grads`` (their
    math views), in place."""
    params, dims = bucket.params, bucket.dims
    grads = _kernel_grads(params, grads)
    ops = torch.ops.mulo
    sums, finite = ops.celo2_reduce(grads, dims)  # A
    accumulators = (params, grads, *bucket.accumulators, sums, finite, dims)
    sumsq = ops.celo2_sumsq(*accumulators)  # B (commits m, v, row, col)
    steps, skips = bucket.counters
    lrs, wds, index = [float(x) for x in lrs], [float(x) for x in weight_decays], list(weight_index)
    if not orthogonalize:
        dsumsq = ops.celo2_direction(*accumulators, sumsq, mlp, [], index)  # C: Σ d² only
        ops.celo2_apply(*accumulators, sumsq, mlp, dsumsq, steps, skips, lrs, wds, index)  # E
        return
    buffers, directions = bucket.direction_buffers()
    ops.celo2_direction(*accumulators, sumsq, mlp, directions, index)  # C, written into the buffers
    done = {key: x if x.is_contiguous() else x.contiguous() for key, x in orthogonalize_buffers(buffers).items()}
    orthogonal = [_slices_of(done, p, offset) for p, offset in zip(params, bucket.offsets)]
    ops.celo2_apply_steps(params, orthogonal, steps, skips, finite, lrs, wds)  # E


def orthogonalize_buffers(buffers: dict[tuple[int, int], torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
    """Newton–Schulz (pass D) of every slice of the direction buffers: one chain of batched matrix products per
    oriented slice shape (:func:`mulo.celo2.reference.matrix_key`), so a (c, r) buffer joins the (r, c) one,
    transposed — an MLP's up and down projections share one chain. Returns each buffer's result (a transposed
    view for the joined ones)."""
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for key in buffers:
        groups.setdefault(reference.matrix_key(key), []).append(key)
    out = {}
    for oriented, keys in groups.items():
        if len(keys) == 1:
            out[keys[0]] = reference.newton_schulz(buffers[keys[0]])
            continue
        parts = [buffers[k] if k == oriented else buffers[k].mT for k in keys]
        done = reference.newton_schulz(torch.cat(parts))
        for k, part in zip(keys, done.split([x.shape[0] for x in parts])):
            out[k] = part if k == oriented else part.mT
    return out


def _offsets(params) -> list[int]:
    """Each tensor's first slice in its slice-shape buffer."""
    seen: dict[tuple[int, int], int] = {}
    out = []
    for p in params:
        key = tuple(p.shape[-2:])
        out.append(seen.get(key, 0))
        seen[key] = out[-1] + p.numel() // (key[0] * key[1])
    return out


def _slices_of(buffers, p: torch.Tensor, offset: int) -> torch.Tensor:
    key = tuple(p.shape[-2:])
    n = p.numel() // (key[0] * key[1])
    return buffers[key][offset : offset + n].view(p.shape)


def _direction_buffers(params, offsets=None) -> tuple[dict[tuple[int, int], torch.Tensor], list[torch.Tensor]]:
    """One (slices, rows, cols) float32 buffer per slice shape, and each tensor's view into its buffer."""
    counts: dict[tuple[int, int], int] = {}
    for p in params:
        key = tuple(p.shape[-2:])
        counts[key] = counts.get(key, 0) + p.numel() // (key[0] * key[1])
    device = params[0].device if params else None
    buffers = {key: torch.empty((n, *key), dtype=torch.float32, device=device) for key, n in counts.items()}
    offsets = _offsets(params) if offsets is None else offsets
    return buffers, [_slices_of(buffers, p, off) for p, off in zip(params, offsets)]


class FusedBackend:
    """What Celo2's fused backends share around their passes (``_run_passes``): the routing of tensors the
    kernels do not cover to the reference, zero-size tensors, contiguous math views written back, and the
    population step with every member's learned tensors in one call per pass."""

    name = "fused"
    STEP_CACHE = 4

    def __init__(self) -> None:
        self._fallback = reference.ReferenceBackend()

    def _run_passes(self, bucket: _Bucket, grads, lrs, weight_decays, mlp, *, orthogonalize: bool,
                    weight_index=()) -> None:  # fmt: skip
        raise NotImplementedError

    @staticmethod
    def _exact_here(states, weights: Celo2Weights) -> bool:
        return network_supported(weights) and all(st["momentum"].dtype == torch.float32 for st in states)

    def step(self, params, grads, states, lrs, weight_decays, weights: Celo2Weights, *, orthogonalize, axes) -> None:
        if not params:
            return
        if not self._exact_here(states, weights):  # another network shape or float64 state: stay exact
            self._fallback.step(params, grads, states, lrs, weight_decays, weights, orthogonalize=orthogonalize,
                                axes=axes)  # fmt: skip
            return
        bad = [(i, p.dtype) for i, p in enumerate(params) if p.dtype not in NATIVE_DTYPES]
        if bad:
            raise TypeError(
                f"Celo2 backend '{self.name}' runs float32/bfloat16/float16 parameters; params[{bad[0][0]}] has "
                f"dtype {bad[0][1]} (use backend='reference' or 'auto' for it)"
            )
        keep = []
        for i, (p, st) in enumerate(zip(params, states, strict=True)):
            if p.numel() == 0:
                st["step"].add_(1.0)  # nothing to update (as the reference)
            else:
                keep.append(i)
        if not keep:
            return
        bucket = self._step_bucket([params[i] for i in keep], [states[i] for i in keep], axes)
        grads = [reference.math_view(grads[i], axes) for i in keep]
        lrs, wds = [lrs[i] for i in keep], [weight_decays[i] for i in keep]
        self._run_passes(bucket, grads, lrs, wds, weights_mlp(weights), orthogonalize=orthogonalize)
        bucket.copy_back()

    def population_step(self, params, grads, states, lrs, weight_decays, weights, options) -> None:
        """:func:`mulo.celo2.population.population_step` with every member's learned tensors in ONE call per pass
        (views of the stacked (M, *S) tensors, a meta-weight index per tensor, per-member lrs) and one
        Newton–Schulz chain per oriented slice shape for the whole population; the AdamW route vectorized."""
        from mulo.celo2 import population as pop

        learned, adamw = pop.split_routes(params, grads, states, lrs, weight_decays)
        m = weights.size
        if learned and not self._exact_here([st for _, _, st, _, _ in learned], weights.member(0)):
            pop.population_step(params, grads, states, lrs, weight_decays, weights, options)
            return
        for p, _, st, _, _ in learned:
            if p[0].numel() == 0:
                st["step"].add_(1.0)
        learned = [item for item in learned if item[0][0].numel() > 0]
        if learned:
            bucket = self._population_bucket(learned, m, options.axes)
            grads = [reference.math_view(g[j], options.axes) for j in range(m) for _, g, *_ in learned]
            member_lrs = [pop.member_lr(lr, j, m) for j in range(m) for *_, lr, _ in learned]
            wds = [wd for _ in range(m) for *_, wd in learned]
            index = [j for j in range(m) for _ in learned]
            mlp = mlp_tensors(weights.w0, weights.b0, weights.dense)
            self._run_passes(bucket, grads, member_lrs, wds, mlp, orthogonalize=options.orthogonalize,
                             weight_index=index)  # fmt: skip
            bucket.copy_back()
        if adamw:
            pop.adamw_route(*zip(*adamw), options)

    def _step_bucket(self, params, states, axes: str) -> _Bucket:
        """The tensors of an optimizer step as the passes take them, kept while they are the same storage (the
        launch tables and direction buffers built for them are then reused). The backend object is shared by
        every optimizer of the process: the last ``STEP_CACHE`` parameter sets are kept (their tensors with
        them, until that many other sets have stepped)."""
        key = (axes, *((p.data_ptr(), p.shape, p.stride()) for p in params))
        key += tuple(v.data_ptr() for st in states for v in st.values())
        cache = self.__dict__.setdefault("_step_cache", {})
        bucket = cache.pop(key, None)
        if bucket is None:
            bucket = _Bucket([_work(p, st, axes) for p, st in zip(params, states)])
            if not bucket.reusable:
                return bucket
        cache[key] = bucket  # most recent last
        while len(cache) > self.STEP_CACHE:
            cache.pop(next(iter(cache)))
        return bucket

    def _population_bucket(self, learned, m: int, axes: str) -> _Bucket:
        """Every member's views of the stacked tensors (member-major), kept while the stacks are the same
        storage (an inner run steps them in place; a reset that allocates new stacks changes the key)."""
        key = (m, axes, *((p.data_ptr(), p.shape) for p, *_ in learned))
        key += tuple(v.data_ptr() for _, _, st, _, _ in learned for v in st.values())
        cached = getattr(self, "_bucket_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        works = [_work(p[j], {k: v[j] for k, v in st.items()}, axes) for j in range(m) for p, _, st, _, _ in learned]
        bucket = _Bucket(works)
        self._bucket_cache = (key, bucket) if bucket.reusable else None
        return bucket


class CpuBackend(FusedBackend):
    """Fused C++ Celo2 on the CPU (OpenMP over chunks of all tensors, SIMD chosen at run time as μLO's)."""

    name = "cpu"

    def __init__(self) -> None:
        super().__init__()
        self._C = load_extension()
        _register_fakes()

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        return torch.device(device).type == "cpu" and dtype in NATIVE_DTYPES

    def _run_passes(self, bucket, grads, lrs, weight_decays, mlp, *, orthogonalize, weight_index=()) -> None:
        run_passes(bucket, grads, lrs, weight_decays, mlp, orthogonalize=orthogonalize, weight_index=weight_index)

    @property
    def isa(self) -> str:
        return self._C.cpu_isa()
