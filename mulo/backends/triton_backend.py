"""The ``triton`` backend: the exact μLO step (ALGORITHM.md §1–3) for all tensors of a group in three
launches — (A) :mod:`mulo.kernels.lopt_reduce`, (B) :mod:`mulo.kernels.lopt_sumsq`, (C)
:mod:`mulo.kernels.lopt_apply` — driven by the segment/chunk tables of :mod:`mulo.kernels.lopt_plan`.

The step is the ``torch.library`` custom op ``mulo::triton_lopt_step_`` (mutates parameters and state,
fake implementation for ``torch.compile``). Launches go to the parameters' device (made current for them) and
its current stream; nothing syncs with the host; the step counter stays on the device. Tables are cached
per group signature, pointer and lr tables per pointer / value set, so steady-state steps with static tensors
(e.g. under CUDA-graph capture) copy nothing.

The same kernels implement :meth:`TritonBackend.population_step` (every member's tensors in one segment table,
each row naming its member's meta-weight set: one launch per pass for the whole population) and the pass
contract of :mod:`mulo.backends.passes` (``pass_a``/``pass_b``/``pass_c`` on local shards, planned with the
whole tensors' geometry; the statistics summed across ranks are written back into the workspace between the
passes, and a shard without local elements runs the reference's passes).

Imported only when the registry is asked for ``"triton"``: importing :mod:`mulo` never imports Triton.
On CPU the kernels run only through Triton's interpreter (``TRITON_INTERPRET=1`` before the first import).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton  # noqa: F401  (ImportError here tells the registry the backend is unavailable)
import triton.language as tl

from mulo.backends import reference
from mulo.backends.passes import ShardGeometry, States, Tensors, TensorStats
from mulo.backends.population import PopulationMetaWeights, member_lr
from mulo.kernels import lopt_common, lopt_plan
from mulo.kernels.lopt_apply import DOT_MODES, lopt_apply
from mulo.kernels.lopt_reduce import lopt_reduce
from mulo.kernels.lopt_sumsq import lopt_sumsq
from mulo.lopt import constants as C
from mulo.lopt import spec
from mulo.lopt.network import MetaWeights
from mulo.lopt.shapes import factored_dims, math_shape

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
_STATE_KEYS = ("momentum", "second_moment")


class Workspace:
    """What the three passes share for one group: tables, the float32 workspace, meta-weights."""

    def __init__(
        self, plan, ptrs, hyper, ws, decays, taus, perm, layers, exp_mult, step_mult, time_clamp, dtypes, tiles, nsub,
        dot,
    ):  # fmt: skip
        self.plan, self.ptrs, self.hyper, self.ws = plan, ptrs, hyper, ws
        self.decays, self.taus, self.perm, self.layers = decays, taus, perm, layers
        self.exp_mult, self.step_mult, self.time_clamp = exp_mult, step_mult, time_clamp
        self.p_dt, self.g_dt, self.s_dt = dtypes
        self.block_x, self.block_y, self.block_xc = tiles
        self.nsub = nsub
        self.dot = dot
        # deterministic mode (torch.use_deterministic_algorithms(True) when the step began): passes A and B store
        # per-chunk partial sums here and add them up in a fixed order instead of adding atomically
        self.records = (
            torch.empty(plan.chunks_ab.shape[0] * lopt_plan.record_width(*tiles[:2]), dtype=torch.float32,
                        device=ws.device)
            if torch.are_deterministic_algorithms_enabled() else None
        )  # fmt: skip


class TritonBackend:
    """Fused μLO in Triton. ``block_x × block_y`` tiles for passes A/B, ``block_xc × block_y`` for pass C
    (block_xc·block_y ≥ 16 for ``tl.dot``; default 2 on GPU for register pressure, 8 in the interpreter,
    which pays per program rather than per element); each pass-C program loops over ``apply_subtiles``
    such tiles along X, folding the normalization and time features into the first layer once (default 8
    on GPU, 1 in the interpreter); ``dot`` is the MLP operand precision: "tf32" (default: tensor cores, the
    tf32 cut of the activations compensated in the weights, within the float32 tolerance), "tf32x3" (float32
    accuracy from tf32 tensor cores: each layer as three products of split operands), "ieee" or "bf16"
    (``MULO_TRITON_DOT`` overrides the default; interpreted, each mode rounds as the GPU does); ``index64``
    forces 64-bit offsets."""

    name = "triton"

    def __init__(
        self,
        block_x: int = 32,
        block_y: int = 64,
        block_xc: int | None = None,
        dot: str | None = None,
        index64: bool = False,
        apply_subtiles: int | None = None,
    ):
        block_xc = block_xc or (8 if lopt_common.INTERPRET else 2)
        for label, b in (("block_x", block_x), ("block_y", block_y), ("block_xc", block_xc)):
            if b < 1 or b & (b - 1):
                raise ValueError(f"TritonBackend: {label} must be a power of two, got {b}")
        if block_xc * block_y < 16:
            raise ValueError(f"TritonBackend: block_xc·block_y must be ≥ 16 (tl.dot), got {block_xc * block_y}")
        dot = dot or os.environ.get("MULO_TRITON_DOT", "tf32")
        if dot not in DOT_MODES:
            raise ValueError(f"TritonBackend: dot must be one of {DOT_MODES}, got {dot!r}")
        apply_subtiles = apply_subtiles or (1 if lopt_common.INTERPRET else 8)
        if apply_subtiles < 1:
            raise ValueError(f"TritonBackend: apply_subtiles must be ≥ 1, got {apply_subtiles}")
        self.tiles = (block_x, block_y, block_xc)
        self.apply_subtiles = apply_subtiles
        self.dot = dot
        self.index64 = index64  # 64-bit offsets even where 32 bits suffice (tests the large-tensor path)
        self._plans: dict = {}
        self._tables: dict = {}
        self._consts: dict = {}
        self._fallback = None  # the reference backend, for shards without local elements

    # ---- registry interface ------------------------------------------------------------------------
    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        if dtype not in _TL_DTYPES:
            return False  # float64 parameters: the reference backend
        if device.type == "cuda":
            return torch.cuda.is_available()
        return device.type == "cpu" and lopt_common.INTERPRET

    def step(self, params: Tensors, grads: Tensors, states: States, lrs, weight_decays, weights: MetaWeights) -> None:
        _check_weights(weights.layers)
        # a non-contiguous parameter (a transposed view, channels_last) steps through a contiguous copy, written
        # back after: state is indexed in the parameter's logical order, as by every backend
        work = [p if p.is_contiguous() else p.contiguous() for p in params]
        self._step_contiguous(work, grads, states, lrs, weight_decays, weights)
        for p, w in zip(params, work):
            if w is not p:
                p.copy_(w)

    def population_step(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        states: list[dict[str, torch.Tensor]],
        lrs: list,
        weight_decays: list[float],
        weights: PopulationMetaWeights,
    ) -> None:
        """:func:`mulo.backends.population.population_step` in ONE launch per pass: every member's tensors
        (views of the stacked (M, *S) tensors, no copies) in one segment table whose rows carry the member's
        meta-weight set; ``lrs[i]`` is a float shared by the members or M floats, one per member."""
        m = weights.size
        _check_weights(weights.layers, members=m)
        for i, p in enumerate(params):
            if not p.is_contiguous() or p.dim() == 0 or p.shape[0] != m:
                raise TypeError(
                    f"backend 'triton' population step: params[{i}] must be a contiguous (M = {m}, ...) stack, got "
                    f"shape {tuple(p.shape)}{'' if p.is_contiguous() else ' (non-contiguous)'}"
                )
        ps = [p[j] for j in range(m) for p in params]  # views: the kernels write through them
        gs = [g[j] for j in range(m) for g in grads]
        sts = [{k: v[j] for k, v in st.items()} for j in range(m) for st in states]
        member_lrs = [member_lr(lr, j, m) for j in range(m) for lr in lrs]
        index = [j for j in range(m) for _ in params]
        self._step_contiguous(ps, gs, sts, member_lrs, list(weight_decays) * m, weights, index)

    def _step_contiguous(self, params, grads, states, lrs, weight_decays, weights, weight_index=None) -> None:
        """One custom-op call per (gradient dtype, state dtype) group: three launches, or four when pass C
        splits by tensor rank (``lopt_apply.apply_launches``); ``weight_index[i]``: the meta-weight set of
        tensor i when ``weights`` stacks several (a population)."""
        groups, empty = _groups(params, grads, states)
        for i in empty:
            states[i]["step"].add_(1.0)  # nothing to update; the reference counts the step
        net = _net(weights)
        on_device = _has_tensor(lrs) or _has_tensor(weight_decays)
        for idx in groups.values():
            lr, wd, hyper = [], [], None
            if on_device:  # no host sync, and CUDA-graph replay reads the tensors' current values
                hyper = hyper_table([lrs[i] for i in idx], [weight_decays[i] for i in idx], params[idx[0]].device)
            else:
                lr, wd = [float(lrs[i]) for i in idx], [float(weight_decays[i]) for i in idx]
            torch.ops.mulo.triton_lopt_step_(
                *_op_tensors(params, grads, states, idx),
                lr,
                wd,
                *net,
                self.dot,
                [*self.tiles, self.apply_subtiles, int(self.index64)],
                None if weight_index is None else [weight_index[i] for i in idx],
                hyper,
            )

    # ---- the pass contract (mulo.backends.passes): the same kernels on local shards ------------------------
    def pass_a(self, params, grads, states, geoms, weights: MetaWeights) -> list[TensorStats]:
        """Pass A on each shard: :class:`TensorStats` of plain sums (views of the workspace); ``row_acc_sum``
        (Σ over d1 of the new row accumulator) for shards split along d1."""
        out: list = [None] * len(params)
        with _device_guard(params):
            for idx, w in self._shard_groups(params, grads, states, geoms, weights, out, "pass_a"):
                self.reduce(w)
                for t, i in enumerate(idx):
                    out[i] = _shard_stats(w, t, states[i], geoms[i], weights)
        return out

    def pass_b(self, params, grads, states, stats, geoms, weights: MetaWeights) -> list[torch.Tensor]:
        """Pass B on each shard, given pass A's statistics summed over the shard group: (28,) sums of squares."""
        out: list = [None] * len(params)
        work = _contiguous(params)
        with _device_guard(params):
            for idx, w in self._shard_groups(work, grads, states, geoms, weights, out, "pass_b", stats):
                _load_stats(self, w, idx, states, stats, geoms, weights)
                self.sumsq(w)
                for t, i in enumerate(idx):
                    ws_t = w.plan.rows[t][lopt_plan.M_WS_T] + lopt_plan.WS_SUMSQ
                    out[i] = w.ws[ws_t : ws_t + lopt_plan.NCHAN]
        return out

    def pass_c(self, params, grads, states, stats, sumsqs, geoms, lrs, weight_decays, weights: MetaWeights) -> None:
        """Pass C on each shard, given the summed statistics and sums of squares: the update, in place."""
        work = _contiguous(params)
        shards = self._shard_groups(work, grads, states, geoms, weights, None, "pass_c", stats, sumsqs, lrs=lrs,
                                    wds=weight_decays)  # fmt: skip
        with _device_guard(params):
            for idx, w in shards:
                _load_stats(self, w, idx, states, stats, geoms, weights, sumsqs)
                self.apply(w)
        for p, w in zip(params, work):
            if w is not p:
                p.copy_(w)

    def _shard_groups(self, params, grads, states, geoms, weights, out, method, *per_tensor, lrs=None, wds=None):
        """(tensor indices, Workspace) of every group of shards with local elements, planned with the whole
        tensors' geometry. Shards without local elements (and tensors without any) run ``method`` of the
        reference backend here, their results stored in ``out``: they have nothing for a kernel to tile."""
        _check_weights(weights.layers)
        groups, empty = _groups(params, grads, states)
        if empty:
            pick = [[arg[i] for i in empty] for arg in (params, grads, states, *per_tensor, geoms)]
            if method == "pass_c":
                pick += [[lrs[i] for i in empty], [wds[i] for i in empty]]
            result = getattr(self._reference(), method)(*pick, weights)
            for i, r in zip(empty, result or ()):
                out[i] = r
        net = _net(weights)
        on_device = lrs is not None and (_has_tensor(lrs) or _has_tensor(wds))
        for idx in groups.values():
            wholes = tuple(tuple(geoms[i].shape) for i in idx)
            if on_device:
                hyper = hyper_table([lrs[i] for i in idx], [wds[i] for i in idx], params[idx[0]].device)
                yield idx, self.prepare(*_op_tensors(params, grads, states, idx), [], [], *net, None, wholes, hyper)
                continue
            lr = [float(lrs[i]) if lrs is not None else 0.0 for i in idx]
            wd = [float(wds[i]) if wds is not None else 0.0 for i in idx]
            yield idx, self.prepare(*_op_tensors(params, grads, states, idx), lr, wd, *net, None, wholes)

    def _reference(self):
        if self._fallback is None:
            from mulo.backends.reference import ReferenceBackend

            self._fallback = ReferenceBackend()
        return self._fallback

    # ---- the three passes (separately callable: distributed exactness all-reduces between them) ----
    def prepare(self, params, grads, momentum, second_moment, accs, steps, skips, lrs, wds, flat, decays, exp_mult,
                step_mult, time_clamp, layout, weight_index=None, wholes=None, hyper=None) -> Workspace:  # fmt: skip
        """Tables and a zeroed workspace for one group (no kernel runs); ``wholes``: the whole tensors' shapes
        when ``params`` are local shards (the pass contract); ``hyper``: the (lr, weight decay) rows as a
        float32 device tensor (``hyper_table``) instead of ``lrs``/``wds``."""
        device = params[0].device
        bx, by, bxc = self.tiles
        shapes = tuple(tuple(p.shape) for p in params)
        widx = None if weight_index is None else tuple(weight_index)
        key = (shapes, layout, device, widx, wholes)
        plan = self._plans.get(key)
        if plan is None:
            plan = lopt_plan.build_plan(shapes, layout, bx, by, bxc * self.apply_subtiles, device, widx, wholes)
            self._plans[key] = plan
            plan.use_int64 = plan.use_int64 or self.index64
        rows, a = [], 0
        for i, (p, lay) in enumerate(zip(params, plan.layouts)):
            if lay.factored:
                row, col = accs[a], accs[a + 1]
                a += 2
                acc_x, acc_y = (col, row) if lay.d0_is_x else (row, col)
                ax, ay = acc_x.data_ptr(), acc_y.data_ptr()
            else:
                ax, ay = accs[a].data_ptr(), 0
                a += 1
            rows.append(
                [
                    p.data_ptr(),
                    grads[i].data_ptr(),
                    momentum[i].data_ptr(),
                    second_moment[i].data_ptr(),
                    ax,
                    ay,
                    steps[i].data_ptr(),
                    skips[i].data_ptr(),
                ]
            )
        ptrs = self._table(("ptrs", key), rows, torch.int64, device)
        if hyper is None:
            hyper = self._table(("hyper", key), [[lr, wd] for lr, wd in zip(lrs, wds)], torch.float32, device)
        decay_t = self._const(("decays", device, tuple(decays)), list(decays), torch.float32, device)
        taus = self._const(("taus", device), list(C.TIMESCALES), torch.float32, device)
        perm = self._const(("perm", device), lopt_plan.join_tree_order(), torch.int32, device)
        ws = torch.zeros(max(plan.ws_size, 1), dtype=torch.float32, device=device)
        layers = ((flat[0], flat[1]), (flat[2], flat[3]), (flat[4], flat[5]))
        dtypes = (_TL_DTYPES[params[0].dtype], _TL_DTYPES[grads[0].dtype], _TL_DTYPES[momentum[0].dtype])
        dot = self.dot
        w = Workspace(plan, ptrs, hyper, ws, decay_t, taus, perm, layers, exp_mult, step_mult, time_clamp, dtypes,
                      self.tiles, self.apply_subtiles, dot)  # fmt: skip
        w.key = key
        return w

    @staticmethod
    def reduce(w: Workspace) -> None:
        """Pass A: row/column sums of s and the finite flags into ``w.ws``."""
        lopt_reduce(w.plan, w.ptrs, w.ws, w.g_dt, w.s_dt, w.block_x, w.block_y, w.records)

    @staticmethod
    def sumsq(w: Workspace) -> None:
        """Pass B: the 28 per-channel sums of squares and the new accumulator vectors into ``w.ws``."""
        lopt_sumsq(w.plan, w.ptrs, w.ws, w.decays, w.p_dt, w.g_dt, w.s_dt, w.block_x, w.block_y, w.records)

    @staticmethod
    def apply(w: Workspace) -> None:
        """Pass C: features, MLP, update; writes parameters and state."""
        lopt_apply(
            w.plan, w.ptrs, w.ws, w.hyper, w.decays, w.taus, w.perm, w.layers, w.exp_mult, w.step_mult, w.time_clamp,
            w.p_dt, w.g_dt, w.s_dt, w.block_xc, w.block_y, w.nsub, w.dot,
        )  # fmt: skip

    # ---- small device tables, cached --------------------------------------------------------------
    def _table(self, key, rows, dtype, device) -> torch.Tensor:
        """Host rows → device tensor, re-copied only when the values change (pinned, non-blocking)."""
        values = tuple(tuple(r) for r in rows)
        cached = self._tables.get(key)
        if cached is not None and cached[0] == values:
            return cached[1]
        host = torch.tensor(rows, dtype=dtype)
        if device.type == "cuda":
            dev = host.pin_memory().to(device, non_blocking=True)
        else:
            dev = host
        self._tables[key] = (values, dev)
        return dev

    def _const(self, key, values, dtype, device) -> torch.Tensor:
        if key not in self._consts:
            self._consts[key] = torch.tensor(values, dtype=dtype).to(device)
        return self._consts[key]


def _device_guard(tensors: list[torch.Tensor]):
    """Make the tensors' CUDA device current while their kernels launch: Triton launches on the current
    device (and its current stream), which need not be the one the parameters live on (cuda:1 while cuda:0
    is current). A no-op on the CPU (the interpreter) and for an empty list."""
    if tensors and tensors[0].device.type == "cuda":
        return torch.cuda.device(tensors[0].device)
    return contextlib.nullcontext()


def _groups(params, grads, states) -> tuple[dict[tuple, list[int]], list[int]]:
    """Indices of the tensors with elements by (gradient dtype, state dtype) — one launch per pass each — and
    of those without elements."""
    groups: dict[tuple, list[int]] = {}
    empty = []
    for i, (p, g, st) in enumerate(zip(params, grads, states, strict=True)):
        _check_tensor(i, p, g, st)
        if p.numel() == 0:
            empty.append(i)
        else:
            groups.setdefault((g.dtype, st["momentum"].dtype), []).append(i)
    return groups, empty


def _op_tensors(params, grads, states, idx) -> tuple[list[torch.Tensor], ...]:
    """(params, grads, momentum, second_moment, accumulators, steps, skips) of tensors ``idx``, as
    ``mulo::triton_lopt_step_`` and :meth:`TritonBackend.prepare` take them."""
    accs = []
    for i in idx:
        st = states[i]
        accs.extend([st["row"], st["col"]] if "row" in st else [st["full"]])
    return (
        [params[i] for i in idx],
        [grads[i].contiguous() for i in idx],
        [states[i]["momentum"] for i in idx],
        [states[i]["second_moment"] for i in idx],
        accs,
        [states[i]["step"] for i in idx],
        [states[i]["nonfinite_skips"] for i in idx],
    )


def _net(weights) -> tuple:
    """(the six layer tensors, the decay vector, exp_mult, step_mult, time_clamp (+inf: none), layout) as the
    custom op takes them."""
    flat = [t.contiguous() for layer in weights.layers for t in layer]
    decays = [*weights.momentum_decays, weights.rms_decay, *weights.adafactor_decays, 1.0 - weights.rms_decay]
    clamp = spec.time_clamp_value(weights.time_clamp)
    return flat, decays, float(weights.exp_mult), float(weights.step_mult), clamp, weights.layout


def _contiguous(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p if p.is_contiguous() else p.contiguous() for p in params]


# ---- shards: pass A's statistics in and out of the workspace (ALGORITHM.md §5) ----------------------------
def _shape(geom: ShardGeometry, weights: MetaWeights) -> tuple[int, ...]:
    """The whole tensor's math shape."""
    return math_shape(geom.shape, weights.layout)


def _new_accumulators(st, stats: TensorStats, geom: ShardGeometry, weights: MetaWeights):
    """The new row and column accumulators of a factored shard from pass A's summed sums, by the reference's
    formulas (a shard without elements runs the reference: replicated accumulators agree on every rank)."""
    shape = _shape(geom, weights)
    d1, _ = factored_dims(shape)
    row = reference.new_row_accumulator(st, stats, weights, shape)
    beta = reference._decays(weights.adafactor_decays, stats.col_sum.dim(), stats.col_sum)
    col = beta * st["col"].to(stats.col_sum.dtype) + (1 - beta) * stats.col_sum / shape[d1]
    return row, col


def _shard_stats(w: Workspace, t: int, st, geom: ShardGeometry, weights: MetaWeights) -> TensorStats:
    """Tensor ``t`` of ``w``'s statistics after pass A, as views of the workspace."""
    row, lay = w.plan.rows[t], w.plan.layouts[t]
    stats = TensorStats(nonfinite=w.ws[row[lopt_plan.M_WS_T] + lopt_plan.WS_FLAG])
    if lay.factored:
        sum_x = w.ws[row[lopt_plan.M_WS_SX] : row[lopt_plan.M_WS_SX] + row[lopt_plan.M_LX]]
        sum_y = w.ws[row[lopt_plan.M_WS_SY] : row[lopt_plan.M_WS_SY] + row[lopt_plan.M_LY]]
        row_sum, col_sum = (sum_y, sum_x) if lay.d0_is_x else (sum_x, sum_y)
        stats.row_sum = row_sum.view(st["row"].shape[1:])
        stats.col_sum = col_sum.view(st["col"].shape[1:])
        if geom.sharded_dim == geom.factored_dims(weights.layout)[0]:  # split along d1
            new_row = _new_accumulators(st, stats, geom, weights)[0]
            stats.row_acc_sum = reference.row_acc_sum(new_row, _shape(geom, weights))
    return stats


def _load_stats(backend, w: Workspace, idx, states, stats, geoms, weights: MetaWeights, sumsqs=None) -> None:
    """Write the statistics summed over the shard group where the kernels read them: the non-finite count,
    the sums of s and, per batch, Σ over d1 of the new row accumulators (FLAG_ROW_MEAN_GIVEN); for pass C
    (``sumsqs`` given) also the step counters, the 28 sums of squares and the new accumulators (pass B
    computes those itself). One ``index_copy_`` per group."""
    spans, values = [], []

    def put(offset: int, value: torch.Tensor) -> None:
        spans.append((offset, value.numel()))
        values.append(value.reshape(-1).float())

    for t, i in enumerate(idx):
        row, lay, sa = w.plan.rows[t], w.plan.layouts[t], stats[i]
        ws_t = row[lopt_plan.M_WS_T]
        put(ws_t + lopt_plan.WS_FLAG, sa.nonfinite)
        if sumsqs is not None:
            put(ws_t + lopt_plan.WS_T, states[i]["step"])
            put(ws_t + lopt_plan.WS_SUMSQ, sumsqs[i])
        if lay.factored:
            new_row, new_col = _new_accumulators(states[i], sa, geoms[i], weights)
            rsum = sa.row_acc_sum
            if rsum is None:
                rsum = reference.row_acc_sum(new_row, _shape(geoms[i], weights))
            put(ws_t + lopt_plan.WS_BATCH + row[lopt_plan.M_NBATCH], rsum)
            sums, accs = (sa.col_sum, sa.row_sum), (new_col, new_row)
            if not lay.d0_is_x:
                sums, accs = sums[::-1], accs[::-1]
            put(row[lopt_plan.M_WS_SX], sums[0])
            put(row[lopt_plan.M_WS_SY], sums[1])
            if sumsqs is not None:
                put(row[lopt_plan.M_WS_NX], accs[0])
                put(row[lopt_plan.M_WS_NY], accs[1])
    key = ("fill", w.key, sumsqs is not None)
    if key not in backend._consts:
        index = torch.cat([torch.arange(o, o + n, dtype=torch.int64) for o, n in spans])
        backend._consts[key] = index.to(w.ws.device)
    w.ws.index_copy_(0, backend._consts[key], torch.cat(values))


def _check_weights(layers, members: int | None = None) -> None:
    """The 39→H→H→2 network in float32; with ``members``, every layer stacks that many sets on a leading axis."""
    lead = () if members is None else (members,)
    shapes = [tuple(t.shape) for layer in layers for t in layer]
    if len(shapes) == 6 and shapes[-1] == lead + (3,):
        raise ValueError(
            "the triton backend has no nominal term (meta-weights whose LOptConfig.nominal is set, with a third "
            "output head); run them with backend='cpu' or backend='reference' (backend='auto' picks one)"
        )
    hid = shapes[0][len(lead)] if shapes and len(shapes[0]) > len(lead) else 0
    want = [(hid, C.INPUT_SIZE), (hid,), (hid, hid), (hid,), (2, hid), (2,)]
    ok = len(layers) == 3 and shapes == [lead + s for s in want] and hid >= 16 and hid & (hid - 1) == 0
    if not ok:
        raise ValueError(
            f"the triton backend runs the 39→H→H→2 network with one hidden layer and H a power of two ≥ 16; "
            f"these meta-weights have layers {shapes}. Use backend='reference' for them."
        )
    if any(t.dtype != torch.float32 for layer in layers for t in layer):
        raise ValueError("the triton backend needs float32 meta-weights (MetaWeights from LOptNet.meta_weights)")


def _check_tensor(i: int, p: torch.Tensor, g: torch.Tensor, st: dict[str, torch.Tensor]) -> None:
    if p.dtype not in _TL_DTYPES:
        raise ValueError(f"params[{i}] has dtype {p.dtype}; the triton backend runs float32/bfloat16/float16 "
                         "(use backend='reference' for float64)")  # fmt: skip
    if g.dtype not in _TL_DTYPES:
        raise ValueError(f"grads[{i}] has dtype {g.dtype}; expected float32, bfloat16 or float16")
    for key in (*_STATE_KEYS, "row", "col", "full"):
        if key in st and not st[key].is_contiguous():
            raise ValueError(f"state[{i}]['{key}'] is not contiguous; the backend contract requires it")
    if st["momentum"].dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(
            f"state[{i}] has dtype {st['momentum'].dtype}; the triton backend keeps float32 or bfloat16 state"
        )


def _has_tensor(values) -> bool:
    return any(isinstance(v, torch.Tensor) for v in values)


def hyper_table(lrs: list, wds: list, device: torch.device) -> torch.Tensor:
    """The (lr, weight decay) row of each tensor as a float32 ``[n, 2]`` tensor on ``device``, built by device
    operations only: a tensor learning rate (``param_group["lr"]`` a 0-d CUDA tensor, as torch's capturable
    optimizers take it) is never read on the host, and a captured CUDA graph recomputes the table from the
    tensors' current values at every replay (an LR schedule that updates them in place keeps working).
    Python floats become constants (a fill, no host-to-device copy)."""

    made: dict = {}  # one conversion per distinct value: a param group repeats one lr for all its tensors

    def one(v):
        key = ("t", id(v)) if isinstance(v, torch.Tensor) else ("f", float(v))
        if key not in made:
            made[key] = (
                v.detach().to(device=device, dtype=torch.float32).reshape(())
                if isinstance(v, torch.Tensor)
                else torch.full((), float(v), dtype=torch.float32, device=device)
            )
        return made[key]

    def column(values):
        return torch.stack([one(v) for v in values])

    return torch.stack([column(lrs), column(wds)], dim=1)


_BACKEND_FOR_OP: dict[tuple, TritonBackend] = {}


@torch.library.custom_op(
    "mulo::triton_lopt_step_",
    mutates_args=("params", "momentum", "second_moment", "accumulators", "steps", "skips"),
)
def triton_lopt_step_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum: list[torch.Tensor],
    second_moment: list[torch.Tensor],
    accumulators: list[torch.Tensor],
    steps: list[torch.Tensor],
    skips: list[torch.Tensor],
    lrs: list[float],
    weight_decays: list[float],
    net: list[torch.Tensor],
    decays: list[float],
    exp_mult: float,
    step_mult: float,
    time_clamp: float,
    layout: str,
    dot: str,
    tiles: list[int],
    weight_index: list[int] | None = None,
    hyper: torch.Tensor | None = None,
) -> None:
    """One μLO step of a group (same device, parameter dtype, gradient dtype and state dtype): passes A, B, C.

    ``accumulators`` holds ``row, col`` for each rank ≥ 2 parameter and ``full`` for each other one, in order;
    ``net`` the six meta-weight tensors (W, b per layer), each with a leading axis K when ``weight_index``
    gives each tensor's set (a population); ``decays`` β_m (3), β_v, β_f (3), 1 − β_v;
    ``tiles`` = (block_x, block_y, block_xc, apply_subtiles, index64); ``hyper``: the (lr, weight decay) rows
    on the device (``hyper_table``), which then replace ``lrs`` and ``weight_decays`` (empty).
    """
    key = (dot, *tiles)
    backend = _BACKEND_FOR_OP.get(key)
    if backend is None:
        *blocks, nsub, index64 = tiles
        backend = _BACKEND_FOR_OP[key] = TritonBackend(*blocks, dot=dot, index64=bool(index64), apply_subtiles=nsub)
    with _device_guard(params):
        w = backend.prepare(params, grads, momentum, second_moment, accumulators, steps, skips, lrs, weight_decays,
                            net, decays, exp_mult, step_mult, time_clamp, layout, weight_index,
                            hyper=hyper)  # fmt: skip
        backend.reduce(w)
        backend.sumsq(w)
        backend.apply(w)


@triton_lopt_step_.register_fake
def _(params, grads, momentum, second_moment, accumulators, steps, skips, lrs, weight_decays, net, decays, exp_mult,
      step_mult, time_clamp, layout, dot, tiles, weight_index=None, hyper=None) -> None:  # fmt: skip
    return None
