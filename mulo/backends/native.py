"""The ``cpu`` and ``cuda`` backends: μLO through the native extension ``mulo._C`` (csrc/).

Both run the three passes of docs/ALGORITHM.md §5 as ``torch.library`` ops, each over all tensors of a bucket
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

import functools
import threading

import torch

from mulo.backends import reference
from mulo.backends.passes import ShardGeometry, TensorStats
from mulo.lopt import constants as C
from mulo.lopt import spec
from mulo.lopt.network import MetaWeights
from mulo.lopt.shapes import math_shape, physical_factored_dims

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
    def _sumsq_fake(params, grads, momentum, second_moment, acc_a, acc_b, sums, finite, dims, hyper, whole=(),
                    row_acc_sums=()):  # fmt: skip
        return params[0].new_empty((len(params), C.NUM_FEATURES), dtype=torch.float32)

    @torch.library.register_fake("mulo::lopt_apply")
    def _apply_fake(*args):
        return None

    @torch.library.register_fake("mulo::lopt_population_step")
    def _population_step_fake(*args):
        return None


def hyper(weights: MetaWeights) -> list[float]:
    """The ops' hyper vector, in :data:`mulo.lopt.spec.HYPER_ORDER`."""
    return spec.hyper_vector(weights)


def dims_of(params: list[torch.Tensor], layout: str) -> list[int]:
    """(d1, d0) per tensor, (-1, -1) for rank < 2 (the ops' ``dims``)."""
    return list(_dims_of_shapes(tuple(tuple(p.shape) for p in params), layout))


@functools.lru_cache(maxsize=64)
def _dims_of_shapes(shapes: tuple[tuple[int, ...], ...], layout: str) -> tuple[int, ...]:
    out: list[int] = []
    for shape in shapes:
        d = physical_factored_dims(shape, layout)
        out.extend((-1, -1) if d is None else d)
    return tuple(out)


NETWORK_SHAPES = [(C.HIDDEN_SIZE, C.INPUT_SIZE), (C.HIDDEN_SIZE, C.HIDDEN_SIZE), (2, C.HIDDEN_SIZE)]
NOMINAL_NETWORK_SHAPES = NETWORK_SHAPES[:-1] + [(spec.OUTPUT_SIZE_NOMINAL, C.HIDDEN_SIZE)]


def network_supported(weights: MetaWeights, population: bool = False) -> bool:
    """The kernels hard-code the published 39→32→32→2 shape (``population``: layers with a leading axis M);
    the CPU kernels also run the nominal term's 39→32→32→3 (the CUDA backend refuses that one at resolution)."""
    want = NETWORK_SHAPES if weights.nominal is None else NOMINAL_NETWORK_SHAPES
    return [tuple(w.shape[population:]) for w, _ in weights.layers] == want


_EMPTY: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _empty_like(t: torch.Tensor) -> torch.Tensor:
    """One shared empty tensor per (device, dtype): the ``acc_b`` of a rank < 2 tensor (read by no kernel)."""
    key = (t.device, t.dtype)
    if key not in _EMPTY:
        _EMPTY[key] = t.new_empty((0,))
    return _EMPTY[key]


def _accumulators(states):
    acc_a, acc_b = [], []
    for st in states:
        if "row" in st:
            acc_a.append(st["row"])
            acc_b.append(st["col"])
        else:
            acc_a.append(st["full"])
            acc_b.append(_empty_like(st["full"]))
    return acc_a, acc_b


class StateLists:
    """The state arguments of the ops for a fixed list of tensors (the accumulators, moments, step counters
    and skip counters as the ops take them, and the ``dims``): built once and reused by
    :meth:`_NativeBackend.planned_step` while the parameters and their state dicts stay the same (the ops
    update the state tensors in place, so the lists stay valid across steps)."""

    def __init__(self, params, states, layout: str):
        self.acc_a, self.acc_b = _accumulators(states)
        self.momentum = [st["momentum"] for st in states]
        self.second = [st["second_moment"] for st in states]
        self.steps = [st["step"] for st in states]
        self.skips = [st["nonfinite_skips"] for st in states]
        self.dims = dims_of(params, layout)
        self.layout = layout
        self.kernels_cover = all(m.dtype in STATE_DTYPES for m in self.momentum) and all(
            p.dtype in NATIVE_DTYPES for p in params
        )
        self.one_call = None  # CPU: the state as a population of one member (see CpuBackend.plan)
        # CPU: the meta-weights these were made for, their tensors as a population of one, their hyper vector
        self.weights_of, self.mlp_one, self.hyper = None, None, None


def refuse_graph_capture(tensors) -> None:
    """The CUDA ops copy their per-step tables (learning rates included) from pinned host memory and read
    float learning rates on the host: a CUDA graph would replay the captured tables, freezing an lr schedule,
    and a tensor lr cannot be read while capturing. Raise, with the fix, instead of capturing that."""
    if tensors and tensors[0].is_cuda and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "backend 'cuda' cannot be captured in a CUDA graph: its step uploads per-step tables (learning rates "
            "included) from the host, which a replay would repeat frozen. Fix: use backend='triton' (for a "
            "captured step name it: 'auto' may measure 'cuda' faster), whose step is capturable and reads lr and "
            "weight_decay from 0-d device tensors"
        )


def host_floats(values) -> list[float]:
    """``values`` (floats or 0-d tensors: learning rates, weight decays) as host floats, the tensors read with
    one device-to-host copy per device rather than one per tensor (a tensor lr on a GPU syncs once per step)."""
    out = list(values)
    if set(map(type, out)) <= {float}:  # the common case: plain floats, returned as they are
        return out
    others = [i for i, v in enumerate(out) if type(v) is not float]
    by_device: dict[torch.device, list[int]] = {}
    for i in others:
        if isinstance(out[i], torch.Tensor):
            by_device.setdefault(out[i].device, []).append(i)
    for idx in by_device.values():
        read = torch.stack([out[i].detach().reshape(()).to(torch.float64) for i in idx]).tolist()
        for i, x in zip(idx, read):
            out[i] = x
    return [float(x) for x in out]


def reduce(grads, dims):
    """Pass A: (sums per tensor, finite flags)."""
    refuse_graph_capture(grads)
    return torch.ops.mulo.lopt_reduce(grads, dims)


def sumsq(params, grads, states, sums, finite, dims, weights, whole=(), row_acc_sums=()):
    """Pass B: (n_tensors, 28) float32 sums of squares of the feature channels over the (local) elements.
    ``whole``/``row_acc_sums``: a shard's whole-tensor geometry (see :func:`whole_geometry`); ``states``
    may be a :class:`StateLists`."""
    refuse_graph_capture(params)
    s = states if isinstance(states, StateLists) else StateLists(params, states, weights.layout)
    return torch.ops.mulo.lopt_sumsq(
        params, grads, s.momentum, s.second, s.acc_a, s.acc_b, sums, finite, dims, hyper(weights), whole,
        row_acc_sums,
    )  # fmt: skip


def apply(
    params, grads, states, sums, sq, finite, lrs, weight_decays, dims, weights, weight_index=(), whole=(),
    row_acc_sums=(),
):  # fmt: skip
    """Pass C: the update, in place. ``weights`` may be a population's (layers with a leading axis K, one
    meta-weight set per member); ``weight_index`` then says which set each tensor uses (CPU only).
    ``whole``/``row_acc_sums``: a shard's whole-tensor geometry (see :func:`whole_geometry`); ``states``
    may be a :class:`StateLists`."""
    refuse_graph_capture(params)
    s = states if isinstance(states, StateLists) else StateLists(params, states, weights.layout)
    torch.ops.mulo.lopt_apply(
        params, grads, s.momentum, s.second, s.acc_a, s.acc_b, s.steps, s.skips, sums, sq, finite, _mlp(weights),
        host_floats(lrs), host_floats(weight_decays), dims, hyper(weights), list(weight_index),
        list(whole), list(row_acc_sums),
    )  # fmt: skip


def population(params, grads, states, lrs, weight_decays, weights) -> None:
    """Passes A, B and C of a whole population in one call, in place: ``params``/``grads``/``states`` hold the
    (M, *S) stacks as they are; ``lrs``: one float per member and tensor, member-major; ``weights``: a
    population's (K = M sets, member j uses set j)."""
    acc_a, acc_b = _accumulators(states)
    torch.ops.mulo.lopt_population_step(
        params, grads, [st["momentum"] for st in states], [st["second_moment"] for st in states], acc_a, acc_b,
        [st["step"] for st in states], [st["nonfinite_skips"] for st in states], _mlp(weights), lrs,
        [float(x) for x in weight_decays], _member_dims(params, weights.layout), hyper(weights),
    )  # fmt: skip


def _mlp(weights: MetaWeights) -> list[torch.Tensor]:
    """The ops' ``mlp``: (W1, b1, W2, b2, W3, b3) float32, contiguous (a population's: K sets back to back)."""
    return [
        t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()
        for layer in weights.layers
        for t in layer
    ]


def _member_dims(params, layout: str) -> list[int]:
    """(d1, d0) of each stack's MEMBER shape (the (M, *S) stack without its leading axis)."""
    return list(_dims_of_shapes(tuple(tuple(p.shape[1:]) for p in params), layout))


def whole_geometry(geoms: list[ShardGeometry], layout: str) -> tuple[list[int], list[int]]:
    """(dims, whole) of shards for the ops: (d1, d0) of each WHOLE tensor (a shard's own shape may order
    its axes otherwise) and its (d0 size, d1 size, numel)."""
    dims: list[int] = []
    whole: list[int] = []
    for geom in geoms:
        d = geom.factored_dims(layout)
        dims.extend((-1, -1) if d is None else d)
        whole.extend((1, 1) if d is None else (geom.shape[d[1]], geom.shape[d[0]]))
        whole.append(geom.numel)
    return dims, whole


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

    def _grads(self, params, grads) -> list[torch.Tensor]:
        gs = _kernel_grads(params, grads)
        if self.uniform_grad_dtype and len({g.dtype for g in gs}) > 1:
            gs = [g.float() for g in gs]  # the CUDA kernels take one gradient dtype per call
        return gs

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
        self._run(params, grads, StateLists(params, states, weights.layout), lrs, weight_decays, weights)

    def plan(self, params, states, layout: str) -> StateLists:
        """The state arguments of the ops for ``params`` (see :meth:`planned_step`)."""
        return StateLists(params, states, layout)

    def planned_step(self, plan: StateLists, params, grads, states, lrs, weight_decays, weights) -> None:
        """:meth:`step` with the state arguments of :meth:`plan` built at an earlier step (``MuLO`` keeps one
        per (device, dtype) while its parameters, their gradients' presence and their state dicts stay the
        same): no per-tensor Python work but the gradients'."""
        if plan.layout != weights.layout or not plan.kernels_cover or not network_supported(weights):
            self.step(params, grads, states, lrs, weight_decays, weights)
            return
        self._run(params, grads, plan, lrs, weight_decays, weights)

    def _run(self, params, grads, lists: StateLists, lrs, weight_decays, weights) -> None:
        work = [p if p.is_contiguous() else p.contiguous() for p in params]
        gs = self._grads(params, grads)
        sums, finite = reduce(gs, lists.dims)
        sq = sumsq(work, gs, lists, sums, finite, lists.dims, weights)
        apply(work, gs, lists, sums, sq, finite, lrs, weight_decays, lists.dims, weights)
        for p, w in zip(params, work):
            if w is not p:
                p.copy_(w)

    # ---- the pass contract (mulo.backends.passes): the same three ops on local shards -------------------
    def _exact_here(self, states, weights: MetaWeights) -> bool:
        return network_supported(weights) and all(st["momentum"].dtype in STATE_DTYPES for st in states)

    def pass_a(self, params, grads, states, geoms, weights: MetaWeights) -> list[TensorStats]:
        if not self._exact_here(states, weights):
            return self._reference().pass_a(params, grads, states, geoms, weights)
        if not params:
            return []
        dims, _ = whole_geometry(geoms, weights.layout)
        sums, finite = reduce(self._grads(params, grads), dims)
        nonfinite = (1.0 - finite).unbind(0)
        out = []
        for i, (st, geom) in enumerate(zip(states, geoms, strict=True)):
            stats = TensorStats(nonfinite=nonfinite[i])
            if "row" in st:
                row_shape, col_shape = st["row"].shape[1:], st["col"].shape[1:]
                nrow = row_shape.numel()
                stats.row_sum = sums[i][:nrow].view(row_shape)
                stats.col_sum = sums[i][nrow:].view(col_shape)
                if geom.sharded_dim == geom.factored_dims(weights.layout)[0]:  # split along d1: d0 is whole
                    shape = math_shape(geom.shape, weights.layout)  # the shard's new row accumulator is local
                    new_row = reference.new_row_accumulator(st, stats, weights, shape)
                    stats.row_acc_sum = reference.row_acc_sum(new_row, shape)
            out.append(stats)
        return out

    def _pass_inputs(self, stats: list[TensorStats], geoms, weights: MetaWeights):
        """The ops' (sums, finite, dims, whole, row_acc_sums) from pass A's (all-reduced) statistics."""
        sums = [
            torch.cat([s.row_sum.reshape(-1), s.col_sum.reshape(-1)]).float()
            if s.row_sum is not None
            else s.nonfinite.new_empty((0,), dtype=torch.float32)
            for s in stats
        ]
        finite = torch.stack([(s.nonfinite == 0).float() for s in stats])
        dims, whole = whole_geometry(geoms, weights.layout)
        row_acc = [
            s.row_acc_sum.reshape(-1).float().contiguous()
            if s.row_acc_sum is not None
            else s.nonfinite.new_empty((0,), dtype=torch.float32)
            for s in stats
        ]
        return sums, finite, dims, whole, row_acc

    def pass_b(self, params, grads, states, stats, geoms, weights: MetaWeights) -> list[torch.Tensor]:
        if not self._exact_here(states, weights):
            return self._reference().pass_b(params, grads, states, stats, geoms, weights)
        if not params:
            return []
        sums, finite, dims, whole, row_acc = self._pass_inputs(stats, geoms, weights)
        work = [p if p.is_contiguous() else p.contiguous() for p in params]
        sq = sumsq(work, self._grads(params, grads), states, sums, finite, dims, weights, whole, row_acc)
        return list(sq.unbind(0))

    def pass_c(self, params, grads, states, stats, sumsqs, geoms, lrs, weight_decays, weights: MetaWeights) -> None:
        if not self._exact_here(states, weights):
            self._reference().pass_c(params, grads, states, stats, sumsqs, geoms, lrs, weight_decays, weights)
            return
        if not params:
            return
        sums, finite, dims, whole, row_acc = self._pass_inputs(stats, geoms, weights)
        work = [p if p.is_contiguous() else p.contiguous() for p in params]
        gs = self._grads(params, grads)
        sq = torch.stack([s.float() for s in sumsqs]).contiguous()
        apply(work, gs, states, sums, sq, finite, lrs, weight_decays, dims, weights, (), whole, row_acc)
        for p, w in zip(params, work):
            if w is not p:
                p.copy_(w)


class CpuBackend(_NativeBackend):
    """Fused C++ μLO on the CPU: OpenMP over chunks, AVX-512/AVX2/portable SIMD chosen at run time."""

    name = "cpu"
    device_type = "cpu"

    def population_step(self, params, grads, states, lrs, weight_decays, weights) -> None:
        """:func:`mulo.backends.population.population_step` in ONE call of ``mulo::lopt_population_step``: the
        (M, *S) stacks go to the op as they are, and its descriptor builder points at member j's slice of each
        (no per-member tensors, lists or intermediate sums on the Python side); ``lrs[i]`` is a float shared by
        the members or M floats, one per member."""
        from mulo.backends.population import member_lr, population_step

        m = weights.size
        if not self._population_native(params, states, weights):
            population_step(params, grads, states, lrs, weight_decays, weights)
            return
        # one check per tensor (not per member and tensor): a float lr is shared, else one per member
        per_tensor = [[float(lr)] * m if type(lr) is float else [member_lr(lr, j, m) for j in range(m)] for lr in lrs]
        member_lrs = [lr[j] for j in range(m) for lr in per_tensor]
        population(params, _kernel_grads(params, grads), states, member_lrs, weight_decays, weights)

    def population_step_views(self, params, grads, states, lrs, weight_decays, weights) -> None:
        """The same step through the three separate passes on every member's views, one tensor per member and
        parameter with a meta-weight index each (the population step before ``lopt_population_step``; kept as the
        baseline of bench/meta_throughput.py and the check that both give the same result)."""
        from mulo.backends.population import member_lr, population_step

        m = weights.size
        if not self._population_native(params, states, weights):
            population_step(params, grads, states, lrs, weight_decays, weights)
            return
        ps, sts = self._member_views(params, states, m)
        gs = _kernel_grads(ps, [g[j] for j in range(m) for g in grads])
        dims = dims_of(ps, weights.layout)
        sums, finite = reduce(gs, dims)
        sq = sumsq(ps, gs, sts, sums, finite, dims, weights)
        index = [j for j in range(m) for _ in params]
        member_lrs = [member_lr(lr, j, m) for j in range(m) for lr in lrs]
        apply(ps, gs, sts, sums, sq, finite, member_lrs, list(weight_decays) * m, dims, weights, index)

    def plan(self, params, states, layout: str) -> StateLists:
        """The state arguments of the ops for ``params``, and — when every tensor has elements — the same
        state viewed as a population of ONE member, so that :meth:`planned_step` runs passes A, B and C in one
        call of ``mulo::lopt_population_step`` (bit-identical to the three ops; tests/optim/test_step_plan.py)."""
        lists = StateLists(params, states, layout)
        if all(p.numel() > 0 for p in params):
            one = [[t.unsqueeze(0) for t in ts] for ts in (lists.momentum, lists.second, lists.acc_a, lists.acc_b)]
            steps = [t.view(1) for t in lists.steps]
            skips = [t.view(1) for t in lists.skips]
            lists.one_call = (*one, steps, skips)
        return lists

    def _run(self, params, grads, lists: StateLists, lrs, weight_decays, weights) -> None:
        views = None if lists.one_call is None else _member_of_one(params, lists)
        if views is None:  # a tensor without elements, or a non-contiguous parameter
            super()._run(params, grads, lists, lrs, weight_decays, weights)
            return
        momentum, second, acc_a, acc_b, steps, skips = lists.one_call
        if lists.weights_of is not weights:  # MuLO makes a new MetaWeights whenever its network changes
            lists.weights_of, lists.mlp_one = weights, [t.unsqueeze(0) for t in _mlp(weights)]
            lists.hyper = hyper(weights)
        torch.ops.mulo.lopt_population_step(
            views, _grads_of_one(params, grads), momentum, second, acc_a, acc_b, steps,
            skips, lists.mlp_one, host_floats(lrs), host_floats(weight_decays), lists.dims, lists.hyper,
        )  # fmt: skip

    def _population_native(self, params, states, weights) -> bool:
        """Whether the kernels run this population (else the reference population step does: another
        meta-network shape or float64 state); a TypeError for stacks they cannot take."""
        if not network_supported(weights, population=True) or any(
            st["momentum"].dtype not in STATE_DTYPES for st in states
        ):
            return False
        for i, p in enumerate(params):
            if p.dtype not in NATIVE_DTYPES or not p.is_contiguous():
                raise TypeError(
                    f"backend 'cpu' population step: params[{i}] must be a contiguous float32/bfloat16/float16 "
                    f"(M, ...) stack, got {p.dtype} {'contiguous' if p.is_contiguous() else 'non-contiguous'}"
                )
        return True

    def _member_views(self, params, states, m: int):
        """Every member's views of the stacked parameters and state (the kernels write through them), built
        once and reused while the stacks are the same storage (an inner run steps them in place; a reset
        that allocates new stacks changes the key)."""
        key = (m, *((p.data_ptr(), p.shape) for p in params), *(v.data_ptr() for st in states for v in st.values()))
        if key != getattr(self, "_views_key", None):
            ps = [p[j] for j in range(m) for p in params]
            sts = [{k: v[j] for k, v in st.items()} for j in range(m) for st in states]
            self._views_key, self._views = key, (ps, sts)
        return self._views

    @property
    def isa(self) -> str:
        return self._C.cpu_isa()


def runs_on_arch(sm: int, built: str) -> bool:
    """Whether kernels built for ``built`` (``__CUDA_ARCH_LIST__``, e.g. ``"800,900"``: SASS for each, PTX of
    the newest) run on a GPU of compute capability ``sm`` (e.g. 86): SASS of the same major version and a
    minor version no higher (sm_80 code runs on sm_86), or PTX JIT-compiled on any GPU newer than the newest."""
    archs = [int(a) // 10 for a in built.replace(";", ",").split(",") if a.strip().isdigit()]
    return bool(archs) and (any(a // 10 == sm // 10 and a <= sm for a in archs) or sm > max(archs))


def _member_of_one(params, lists: StateLists) -> list[torch.Tensor] | None:
    """The parameters as (1, *S) views — ``None`` if one is not contiguous — kept with the plan's state lists
    while every parameter's storage is the one they view (a ``p.data = ...`` elsewhere rebuilds them; the plan
    already assumes fixed shapes): a view costs more host time than the check."""
    ptrs = list(map(torch.Tensor.data_ptr, params))
    if getattr(lists, "param_ptrs", None) != ptrs:
        contiguous = all(p.is_contiguous() for p in params)
        lists.param_views = [p.unsqueeze(0) for p in params] if contiguous else None
        lists.param_ptrs = ptrs
    return lists.param_views


def _grads_of_one(params, grads) -> list[torch.Tensor]:
    """:func:`_kernel_grads` in one pass over the list, in their own shapes: the population op takes a
    gradient without the member axis when there is one member (no (1, *S) view per tensor and step)."""
    out = []
    f32 = torch.float32
    for p, g in zip(params, grads):
        if g.dtype is not p.dtype and g.dtype is not f32:
            g = g.float()
        out.append(g if g.is_contiguous() else g.contiguous())
    return out


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
        self._runs_on: dict[int, bool] = {}

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        """CUDA parameters of a native dtype on a GPU the build runs on: one of its SASS architectures, or a
        newer one, which JIT-compiles the embedded PTX of the newest (an older GPU gets ``auto``'s next
        backend, and an explicit ``backend="cuda"`` says why)."""
        if not super().supports(device, dtype):
            return False
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        if index not in self._runs_on:
            major, minor = torch.cuda.get_device_capability(index)
            self._runs_on[index] = runs_on_arch(10 * major + minor, self._C.cuda_archs())
        return self._runs_on[index]
