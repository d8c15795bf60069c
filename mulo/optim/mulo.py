"""``MuLO``: the μLO learned optimizer as a drop-in ``torch.optim.Optimizer`` (docs/ALGORITHM.md §1–4)."""

from __future__ import annotations

import dataclasses
import operator
import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from mulo.backends import Backend, _caller_stacklevel, resolve_backend
from mulo.backends.reference import grad_is_finite
from mulo.distributed import is_dtensor
from mulo.lopt import constants as C
from mulo.lopt.network import LOptNet, MetaWeights
from mulo.lopt.shapes import accumulator_shapes, math_shape, physical_shape
from mulo.lopt.state import init_state
from mulo.mup import is_readout_parameter

NONFINITE_POLICIES = ("skip", "raise")
STATE_DTYPES = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16}


class PlaceholderMetaWeightsWarning(UserWarning):
    """The optimizer runs the package's placeholder meta-weights, not meta-trained μLO weights."""


class MuPWarning(UserWarning):
    """μLO meta-weights were given parameters that are not set up for μP (no roles, or a model that is not
    μP); such runs usually diverge. The message names the parameters and the fix (:func:`mulo.mup.prepare`)."""


def warn_if_placeholder(net, optimizer: str, advice: str) -> None:
    """Warn once, at the user's line, when ``net`` holds hand-set placeholder (not meta-trained) weights."""
    if net.is_placeholder:
        info = net.config.info
        warnings.warn(
            f"{optimizer} is using mulo's placeholder meta-weights {info.get('name')!r}: "
            f"{info.get('description', '')} Pass meta_weights=<directory or Hub id> {advice}",
            PlaceholderMetaWeightsWarning,
            stacklevel=_caller_stacklevel(),
        )


def run_closure(closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
    """``closure()`` with gradients enabled (``step()`` itself runs under no_grad), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


@dataclasses.dataclass(frozen=True)
class MuLOOptions:
    backend: str = "auto"
    nonfinite: str = "skip"
    state_dtype: torch.dtype | None = None


def resolve_meta_weights(meta_weights: LOptNet | str | os.PathLike | None, layout: str | None) -> LOptNet:
    """An ``LOptNet`` from an ``LOptNet``, a directory, a Hub id, a shipped name, or ``None`` (the default)."""
    if isinstance(meta_weights, LOptNet):
        net = meta_weights
        if layout is not None and layout != net.config.layout:
            net = LOptNet.blank(dataclasses.replace(net.config, layout=layout))
            net.load_state_dict(meta_weights.state_dict())
        return net
    overrides = {"layout": layout} if layout is not None else {}
    if meta_weights is None:
        from mulo.lopt.pretrained import default_weights_dir

        return LOptNet.from_pretrained(default_weights_dir(), **overrides)
    if isinstance(meta_weights, (str, os.PathLike)):
        return LOptNet.from_pretrained(meta_weights, **overrides)
    raise TypeError(
        f"meta_weights must be an LOptNet, a directory, a Hub id or None, got {type(meta_weights).__name__}"
    )


class MuLO(Optimizer):
    r"""The μLO learned optimizer (Thérien et al. 2024): small_fc_lopt under μP.

    Each element of each parameter gets 39 features (gradient, parameter, three momenta, second moment,
    factored Adafactor statistics, their combinations — each channel normalized by its RMS over the
    tensor — and 11 time features) and a 39→32→32→2 MLP turns them into the step
    ``d · exp(0.001 a) · 0.01``; then ``p ← p − lr_p · step`` and ``p ← p − wd · lr_p · p``.

    μP: ``lr_p = lr · lr_scale`` where a param group's ``lr_scale`` is ``1/fan_in`` for hidden weights.
    Build the groups with :func:`mulo.mup.prepare` (a model written with plain ``torch.nn``: it also makes
    the model μP) or :func:`mulo.mup.param_groups` (a model that is already μP). Passing
    ``model.parameters()`` directly gives every parameter ``lr_scale = 1``: that is the SP small_fc_lopt,
    not μLO. With μLO meta-weights, construction warns once (:class:`MuPWarning`, at the caller's line) when
    there are no roles, no ``output`` role, or an ``output`` weight that is neither a :class:`~mulo.mup.MuReadout`'s
    nor zero; ``step()`` checks nothing and never syncs.

    Args:
        params: parameters or param groups (groups may set ``lr``, ``weight_decay``, ``lr_scale``).
        lr: multiplies the learned step (1.0 is the meta-trained setting).
        weight_decay: decoupled weight decay (applied after the step, scaled by ``lr_p``).
        meta_weights: an :class:`~mulo.LOptNet`, a directory in the μLO checkpoint layout, a Hugging Face Hub
            id, the name of weights shipped with mulo (``mulo.lopt.pretrained.names()``), or ``None`` for
            the default ``mulo_nm`` (μLO meta-trained by mulo on tasks that cannot be memorized, with inner runs
            up to 10,000 steps; best with a warmup-cosine schedule on ``lr``; see its ``PROVENANCE.json``).
        backend: ``"auto"`` (best available per device, announced once), ``"reference"``, or another
            registered backend (:func:`mulo.backends.known_backends`).
        nonfinite: what a non-finite gradient does. ``"skip"`` (default): that tensor's update is skipped
            (parameter and every accumulator unchanged, its step counter not advanced) and counted in
            ``state["nonfinite_skips"]`` (read them with :meth:`nonfinite_skips`), without a host sync.
            ``"raise"``: ``step()`` checks every gradient first (one host sync) and raises
            ``FloatingPointError`` naming the parameter, before anything changes.
        layout: ``"torch"`` or ``"jax"`` axis convention for 2-d weights; ``None`` takes the meta-weights'.
            Use ``"jax"`` for weights meta-trained in JAX (e.g. the published μLO_M).
        state_dtype: ``None`` (float32, or float64 for float64 parameters) or ``"bfloat16"`` to halve state memory.

    State per parameter (``self.state[p]``): ``step`` (float32 scalar on the parameter's device, the
    0-based count of applied updates), ``momentum`` (3, *S), ``second_moment`` (S), ``row``/``col``
    (rank ≥ 2) or ``full`` (rank < 2) Adafactor accumulators with a leading decay axis of 3, and
    ``nonfinite_skips``. ``S`` is the parameter's shape (0-d treated as (1,)); the accumulators follow the
    math shape, which in the ``"jax"`` layout is the transpose of a 2-d parameter.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        weight_decay: float = 0.0,
        meta_weights: LOptNet | str | os.PathLike | None = None,
        backend: str = "auto",
        *,
        nonfinite: str = "skip",
        layout: str | None = None,
        state_dtype: str | None = None,
    ):
        _check_hparam("lr", lr)
        _check_hparam("weight_decay", weight_decay)
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a string, got {type(backend).__name__}")
        if backend != "auto":
            from mulo.backends import load_backend

            load_backend(backend)  # unknown → ValueError, unavailable → BackendUnavailable with the fix
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"state_dtype must be one of {list(STATE_DTYPES)}, got {state_dtype!r}")
        if layout is not None and layout not in ("torch", "jax"):
            raise ValueError(f"layout must be 'torch', 'jax' or None, got {layout!r}")
        self.options = MuLOOptions(backend=backend, nonfinite=nonfinite, state_dtype=STATE_DTYPES[state_dtype])
        self.net = resolve_meta_weights(meta_weights, layout)
        if backend != "auto":  # e.g. the nominal term's weights on a backend without its third head
            from mulo.backends import check_capabilities

            check_capabilities(backend, self.net.config.capabilities)
        warn_if_placeholder(
            self.net, "MuLO", "or meta_weights=None (the shipped meta-trained mulo_nm) for learned μLO weights."
        )
        self._weights_cache: dict[tuple[torch.device, torch.dtype], tuple[int, MetaWeights]] = {}
        self._backends: dict[tuple[torch.device, torch.dtype, bool], Backend] = {}
        self._plan: _StepPlan | None = None  # how step() groups the parameters, reused while nothing changes
        defaults = dict(lr=lr, weight_decay=weight_decay, lr_scale=1.0, role="other")
        params = list(params)
        roles_given = any(isinstance(g, dict) and ("role" in g or "lr_scale" in g) for g in params)
        super().__init__(params, defaults)
        problem = _mup_setup_problem(self.param_groups, roles_given, self.net)
        if problem:
            warnings.warn(problem, MuPWarning, stacklevel=_caller_stacklevel())

    # ---- param groups ------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._plan = None
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        index = len(self.param_groups) - 1
        for key in ("lr", "weight_decay"):
            _check_hparam(f"param_groups[{index}]['{key}']", group[key])
        scale = group["lr_scale"]
        if not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"param_groups[{index}]['lr_scale'] must be a positive number, got {scale!r}")
        for i, p in enumerate(group["params"]):
            if p.is_complex() or not p.is_floating_point():
                raise TypeError(
                    f"param_groups[{index}]['params'][{i}] has dtype {p.dtype}; MuLO optimizes real floating "
                    "tensors only (view complex parameters with torch.view_as_real)"
                )

    # ---- state ---------------------------------------------------------------------------------------
    @property
    def layout(self) -> str:
        return self.net.config.layout

    def _state_dtype(self, p: torch.Tensor) -> torch.dtype:
        if self.options.state_dtype is not None:
            return self.options.state_dtype
        return torch.float64 if p.dtype == torch.float64 else torch.float32

    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        dt = self._state_dtype(p)
        if is_dtensor(p):  # FSDP2 / DTensor: state as DTensors on the parameter's mesh
            from mulo.distributed.sharded import init_state as init_sharded_state

            return init_sharded_state(p, self.layout, dt)
        return init_state(p.shape, dt, p.device, self.layout)

    def _expected_shapes(self, p: torch.Tensor) -> dict[str, tuple[int, ...]]:
        phys = physical_shape(p.shape)
        return {
            "step": (),
            "momentum": (3, *phys),
            "second_moment": phys,
            "nonfinite_skips": (),
            **accumulator_shapes(math_shape(p.shape, self.layout)),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Like ``Optimizer.load_state_dict`` but keeps every state tensor's saved dtype (fp32 state of
        bf16 parameters stays fp32) and moves it to the parameter's device; checks state shapes."""
        self._plan = None
        saved_groups = state_dict["param_groups"]
        ids = [i for g in saved_groups for i in g["params"]]
        saved_state = {k: dict(v) for k, v in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(ids, params):
            if pid not in saved_state:
                continue
            expected = self._expected_shapes(p)
            st = {}
            for key, value in saved_state[pid].items():
                if isinstance(value, torch.Tensor):
                    if key in expected and tuple(value.shape) != expected[key]:
                        raise ValueError(
                            f"state_dict: state '{key}' of parameter {pid} has shape {tuple(value.shape)}, "
                            f"expected {expected[key]} for a parameter of shape {tuple(p.shape)} in the "
                            f"{self.layout!r} layout"
                        )
                    value = value.to(device=p.device, copy=True)
                    if is_dtensor(p):  # a whole (e.g. single-process) state is split like the parameter
                        from mulo.distributed.sharded import shard_state_value

                        value = shard_state_value(p, key, value, self.layout)
                st[key] = value
            missing = sorted(set(expected) - set(st))
            if missing:
                raise ValueError(f"state_dict: parameter {pid} is missing state {missing}")
            self.state[p] = st

    def nonfinite_skips(self, *, per_parameter: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """How many updates were skipped for a non-finite gradient (``nonfinite="skip"``), read now from
        ``state["nonfinite_skips"]``: ``step()`` never syncs to count them, and neither does this call —
        the result is a tensor on the parameters' device; ``int(opt.nonfinite_skips())`` syncs once, when
        you choose (e.g. when logging).

        Returns the total over all parameters as a 0-d float32 tensor (on the first stepped parameter's
        device; zero on the CPU before any step), or with ``per_parameter=True`` a dict
        ``{"param_groups[i]['params'][j]": 0-d tensor}`` for every parameter stepped so far.
        """
        counts = {
            f"param_groups[{gi}]['params'][{pi}]": self.state[p]["nonfinite_skips"]
            for gi, group in enumerate(self.param_groups)
            for pi, p in enumerate(group["params"])
            if "nonfinite_skips" in self.state.get(p, {})
        }
        if per_parameter:
            return counts
        if not counts:
            return torch.zeros((), dtype=torch.float32)
        values = list(counts.values())
        device = values[0].device
        return torch.stack([v.to(device, non_blocking=True) for v in values]).sum()

    # ---- the step ----------------------------------------------------------------------------------
    def _meta_weights(self, device: torch.device, dtype: torch.dtype) -> MetaWeights:
        key = (device, dtype)
        version = self.net.version()
        cached = self._weights_cache.get(key)
        if cached is None or cached[0] != version:
            cached = (version, self.net.meta_weights(device, dtype))
            self._weights_cache[key] = cached
        return cached[1]

    def backend_for(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Backend:
        """The backend this optimizer runs for parameters of ``dtype`` on ``device``."""
        # resolved again when torch.use_deterministic_algorithms is toggled (it can rule a backend out)
        key = (torch.device(device), dtype, torch.are_deterministic_algorithms_enabled())
        if key not in self._backends:
            requires = self.net.config.capabilities
            self._backends[key] = resolve_backend(self.options.backend, *key[:2], requires=requires)
        return self._backends[key]

    @staticmethod
    def _raise_on_nonfinite(where: list[tuple[int, int, torch.Tensor]]) -> None:
        """One host sync per device: find the first gradient the reference would skip, raise naming it."""
        by_device: dict[torch.device, list[int]] = {}
        for i, (_, _, g) in enumerate(where):
            by_device.setdefault(g.device, []).append(i)
        flags = [True] * len(where)
        for idx in by_device.values():
            ok = torch.stack([grad_is_finite(where[i][2]) for i in idx]).tolist()
            for i, f in zip(idx, ok):
                flags[i] = f
        if all(flags):
            return
        gi, pi, g = where[flags.index(False)]
        raise FloatingPointError(
            f"param_groups[{gi}]['params'][{pi}] (shape {tuple(g.shape)}) has a non-finite gradient (or one "
            "whose square overflows); nothing was updated. Use MuLO(nonfinite='skip') to skip such updates."
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = run_closure(closure)
        plan = self._plan
        if plan is not None and plan.matches(self):  # the same parameters with gradients as last step
            if self.options.nonfinite == "raise":
                self._raise_on_nonfinite(plan.where())
            for (device, dtype), b in plan.buckets.items():
                compute = torch.float64 if dtype == torch.float64 else torch.float32
                lrs, wds = b.hyper(self.param_groups)
                backend = self.backend_for(device, dtype)
                if hasattr(backend, "planned_step"):  # native backends: state arguments built once per plan
                    if b.backend_plan is None:
                        b.backend_plan = backend.plan(b.params, b.states, self.layout)
                    weights = self._meta_weights(device, compute)
                    backend.planned_step(b.backend_plan, b.params, b.grads, b.states, lrs, wds, weights)
                    continue
                backend.step(b.params, b.grads, b.states, lrs, wds, self._meta_weights(device, compute))
            return loss
        self._plan = None
        buckets: dict[tuple, tuple[list, list, list, list, list]] = {}  # per (device, dtype)
        where: list[tuple[int, int, torch.Tensor]] = []
        sharded: list[tuple] = []
        for gi, group in enumerate(self.param_groups):
            lr = group["lr"] * group["lr_scale"]
            wd = group["weight_decay"]
            for pi, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise RuntimeError(
                        f"param_groups[{gi}]['params'][{pi}] has a sparse gradient; MuLO needs dense gradients "
                        "(use nn.Embedding(sparse=False))"
                    )
                if g.is_complex():
                    raise TypeError(f"param_groups[{gi}]['params'][{pi}] has a complex gradient; MuLO is real-valued")
                if g.shape != p.shape:
                    raise RuntimeError(
                        f"param_groups[{gi}]['params'][{pi}]: gradient shape {tuple(g.shape)} != parameter "
                        f"shape {tuple(p.shape)}"
                    )
                state = self.state[p]
                if not state:
                    state.update(self._init_state(p))
                if is_dtensor(p):  # stepped by mulo.distributed (statistics all-reduced over the mesh)
                    sharded.append((gi, pi, p, g, state, lr, wd))
                    continue
                b = buckets.setdefault((p.device, p.dtype), ([], [], [], [], []))
                b[0].append(p)
                b[1].append(g)
                b[2].append(state)
                b[3].append(lr)
                b[4].append(wd)
                where.append((gi, pi, g))

        if self.options.nonfinite == "raise" and where:
            self._raise_on_nonfinite(where)
        if sharded:
            from mulo.distributed.sharded import sharded_step

            sharded_step(self, sharded)

        for (device, dtype), (params, grads, states, lrs, wds) in buckets.items():
            compute = torch.float64 if dtype == torch.float64 else torch.float32
            weights = self._meta_weights(device, compute)
            self.backend_for(device, dtype).step(params, grads, states, lrs, wds, weights)
        if not sharded:
            self._plan = _StepPlan.build(self, buckets, where)
        return loss


class _Bucket:
    """One (device, dtype) group of a :class:`_StepPlan`: its parameters, their state dicts, and for each
    the param group it belongs to and its index there."""

    def __init__(self, params: list, states: list, where: list[tuple[int, int]]):
        self.params, self.states, self.where = params, states, where
        self.grads: list = []
        self.backend_plan = None  # a native backend's state arguments (mulo.backends.native.StateLists)
        # runs of consecutive parameters of one group: lrs/wds are rebuilt per step from (group, count)
        self.runs: list[tuple[int, int]] = []
        for gi, _ in where:
            if self.runs and self.runs[-1][0] == gi:
                self.runs[-1] = (gi, self.runs[-1][1] + 1)
            else:
                self.runs.append((gi, 1))

    def hyper(self, groups: list[dict]) -> tuple[list[float], list[float]]:
        lrs, wds = [], []
        for gi, n in self.runs:
            g = groups[gi]
            lrs += [g["lr"] * g["lr_scale"]] * n
            wds += [g["weight_decay"]] * n
        return lrs, wds


class _StepPlan:
    """The grouping of the last ``step()``, reused while it still holds: the same param groups (objects and
    lists), the same state dicts, and gradients on exactly the same parameters, none of them sparse. Checking
    that reads every ``p.grad`` once; anything else (a gradient appearing or vanishing, a new param group,
    ``load_state_dict``, a replaced state) falls back to the full walk, which rebuilds the plan."""

    def __init__(self, key: tuple, buckets: dict, others: list, state: dict):
        self.key, self.buckets, self.others = key, buckets, others
        # the optimizer's state entries when the plan was built, compared in order by identity: a dict's i-th
        # key maps to its i-th value, so equal sequences mean the same parameter → state-dict mapping, read
        # without hashing a tensor (Tensor.__hash__ is Python code: ~0.5 µs per parameter per step)
        self.state_keys, self.state_values = tuple(state), tuple(state.values())

    @staticmethod
    def _key(opt: MuLO) -> tuple:
        return (id(opt.state), *((id(g), id(g["params"]), len(g["params"])) for g in opt.param_groups))

    @classmethod
    def build(cls, opt: MuLO, buckets: dict, where: list) -> _StepPlan:
        at = iter(where)
        plan_buckets = {}
        for key, (params, _, states, _, _) in buckets.items():
            plan_buckets[key] = _Bucket(params, states, [next(at)[:2] for _ in params])
        with_grad = {id(p) for b in plan_buckets.values() for p in b.params}
        others = [p for g in opt.param_groups for p in g["params"] if id(p) not in with_grad]
        return cls(cls._key(opt), plan_buckets, others, opt.state)

    def matches(self, opt: MuLO) -> bool:
        if self._key(opt) != self.key:
            return False
        state = opt.state
        if (
            len(state) != len(self.state_keys)
            or not all(map(operator.is_, state, self.state_keys))
            or not all(map(operator.is_, state.values(), self.state_values))
        ):
            return False
        for p in self.others:
            if p.grad is not None:
                return False
        for b in self.buckets.values():
            grads = [p.grad for p in b.params]
            for g in grads:
                if g is None or g.is_sparse:
                    return False
            b.grads = grads
        return True

    def where(self) -> list[tuple[int, int, torch.Tensor]]:
        return [(gi, pi, g) for b in self.buckets.values() for (gi, pi), g in zip(b.where, b.grads)]


def trained_parameterization(net: LOptNet) -> str:
    """``"sp"`` for meta-weights meta-trained on standard-parameterized models (their provenance says so, or
    their step multiplier is the SP learned optimizer's 0.001), else ``"mup"``."""
    families = net.config.info.get("config", {}).get("families", [])
    kinds = {f.get("parameterization") for f in families if isinstance(f, dict)} - {None}
    if kinds:
        return "sp" if kinds == {"sp"} else "mup"
    return "sp" if net.config.step_mult < C.STEP_MULT else "mup"


def _mup_setup_problem(groups: list[dict[str, Any]], roles_given: bool, net: LOptNet) -> str | None:
    """What is wrong with giving these groups to μLO meta-weights, or ``None`` (checked once, at construction:
    step() never looks). One host sync per device at most (reading whether readout weights are zero)."""
    if trained_parameterization(net) == "sp":
        return None
    fix = (
        "Fix: `groups = mulo.mup.prepare(model)` (converts a torch.nn model to μP in place: MuReadout, μP "
        "init, 1/d attention, roles) then `mulo.MuLO(groups)`; see the README, 'Use it on your model'."
    )
    if not roles_given:
        return (
            "MuLO got parameters without μP roles (e.g. model.parameters()): every parameter gets lr_scale 1, "
            "which is the SP small_fc_lopt run with μLO meta-weights — it diverges on most models. "
            + fix
            + " (For the SP learned optimizer on a standard model pass meta_weights='mulo_cpu_sp'.)"
        )
    readout_seen = any(is_readout_parameter(p) for g in groups for p in g["params"])
    outputs = [
        (gi, pi, p)
        for gi, g in enumerate(groups)
        if g.get("role") == "output"
        for pi, p in enumerate(g["params"])
        if p.dim() >= 2 and not is_readout_parameter(p)
    ]
    if not readout_seen and not any(g.get("role") == "output" for g in groups):
        return (
            "MuLO got μP roles but no parameter has role 'output': the model's readout is missing from them "
            "(a plain nn.Linear output layer guessed 'hidden' gets lr/fan_in and no μP output multiplier). " + fix
        )
    checkable = [(gi, pi, p) for gi, pi, p in outputs if p.device.type != "meta" and not is_dtensor(p)]
    by_device: dict[torch.device, list[tuple[int, int, torch.Tensor]]] = {}
    for item in checkable:
        by_device.setdefault(item[2].device, []).append(item)
    plain = []
    for items in by_device.values():
        nonzero = torch.stack([(p.detach() != 0).any() for _, _, p in items]).tolist()
        plain += [f"param_groups[{gi}]['params'][{pi}] {tuple(p.shape)}" for (gi, pi, p), z in zip(items, nonzero) if z]
    if plain:
        return (
            f"MuLO got role 'output' for {', '.join(plain)}, which is not a μP readout: not the weight of a "
            "mulo.mup.MuReadout and not zero-initialized (a plain nn.Linear head with standard init, which "
            "makes μLO diverge). " + fix
        )
    return None


def _check_hparam(name: str, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"{name} must be finite and ≥ 0, got {value}")
