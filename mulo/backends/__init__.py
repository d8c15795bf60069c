"""A small registry of backends, per update rule (``"mulo"``: μLO, ``"celo2"``: Celo2).

Every backend of a rule implements one entry point with one signature; μLO's::

    backend.step(params, grads, states, lrs, weight_decays, weights)

for a flat list of tensors on one device in one dtype (``weights`` is a :class:`mulo.lopt.MetaWeights`); Celo2's
adds ``orthogonalize=`` and ``axes=`` keywords and takes :class:`mulo.celo2.Celo2Weights` (:mod:`mulo.celo2.cpu`).
The optimizer never knows which backend runs. Backends are loaded lazily, so a missing native
extension or Triton never breaks ``import mulo``; asking for an unavailable backend by name raises
:class:`BackendUnavailable` with the command that fixes it, while ``"auto"`` falls back and says so once.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import warnings
from typing import Protocol

import torch

from mulo.backends import measure
from mulo.backends.passes import States, Tensors
from mulo.lopt.network import MetaWeights


class Backend(Protocol):
    name: str

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool: ...

    def step(
        self, params: Tensors, grads: Tensors, states: States, lrs, weight_decays, weights: MetaWeights
    ) -> None: ...


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here; the message says how to fix that."""


class MuLOBackendNotice(UserWarning):
    """Emitted once when ``backend="auto"`` settles on a backend for a device type."""


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    name: str
    # "module:attribute" of a zero-argument factory; imported only when the backend is first asked for.
    factory: str
    # Device types the backend runs on, in "auto" preference order position (lower is preferred).
    device_types: tuple[str, ...]
    priority: int
    # What the user runs to make the backend available (shown when loading fails).
    fix: str
    # Device types on which "auto" may pick it (None: all of device_types). E.g. Triton runs on CPU only
    # through its slow interpreter: explicit backend="triton" may use it there, "auto" never does.
    auto_device_types: tuple[str, ...] | None = None
    # What the backend object implements beyond ``step`` (declared, never probed): "passes" — the pass
    # contract of :mod:`mulo.backends.passes` (pass_a/pass_b/pass_c on shards; FSDP2/DTensor parameters run
    # through it); "population" — ``population_step`` with per-member meta-weights in one call per pass
    # (:mod:`mulo.backends.population`; Celo2's: :mod:`mulo.celo2.population`); "nominal" — meta-weights with
    # the nominal term (LOptConfig.nominal: a third output head), which the GPU kernels do not implement.
    capabilities: frozenset[str] = frozenset()
    # The update rule whose step the backend runs: "mulo" (μLO) or "celo2"; each rule has its own names.
    rule: str = "mulo"
    # Whether a step's result is the same run to run (fixed summation order). False: float atomics, which
    # torch.use_deterministic_algorithms(True) forbids: "auto" then passes the backend over, and asking for it
    # by name raises (warns with warn_only=True), as torch's own nondeterministic operations do.
    deterministic: bool = True

    def auto_on(self, device_type: str) -> bool:
        return device_type in (self.auto_device_types if self.auto_device_types is not None else self.device_types)


# the mulo package and torch: a notice skips their frames (ARCHITECTURE.md: notices name the user's line)
_SKIPPED_DIRS = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
    os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside mulo and torch: a notice raised while ``opt.step()``
    resolves a backend names the user's line, not torch's optimizer wrappers or mulo's internals."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED_DIRS):
        frame, level = frame.f_back, level + 1
    return level


RULES = ("mulo", "celo2")
_REGISTRY: dict[str, BackendSpec] = {}  # μLO's backends by name
_RULE_REGISTRY: dict[str, dict[str, BackendSpec]] = {"mulo": _REGISTRY, "celo2": {}}
_LOADED: dict[str, Backend] = {}  # by _key(rule, name), as _FAILED
_FAILED: dict[str, str] = {}
_ANNOUNCED: set[tuple[str, ...]] = set()
_MEASURED: dict[tuple, dict[str, float]] = {}  # auto's one-time step measurements (mulo.backends.measure)
_MEASURE_FAILED: dict[str, str] = {}


def _registry(rule: str) -> dict[str, BackendSpec]:
    if rule not in _RULE_REGISTRY:
        raise ValueError(f"unknown update rule {rule!r}; choose one of {RULES}")
    return _RULE_REGISTRY[rule]


def _key(rule: str, name: str) -> str:
    return name if rule == "mulo" else f"{rule}:{name}"


def register_backend(spec: BackendSpec) -> None:
    registry = _registry(spec.rule)
    if spec.name in registry and registry[spec.name] != spec:
        raise ValueError(f"a different {spec.rule} backend named {spec.name!r} is already registered")
    registry[spec.name] = spec


def known_backends(rule: str = "mulo") -> list[str]:
    return sorted(_registry(rule))


CAPABILITIES = ("passes", "population", "nominal")
# what needs a capability that a caller can require (resolve_backend(requires=...)), for the refusal message
_REQUIRED_BY = {"nominal": "meta-weights whose LOptConfig.nominal is set, with the nominal term's third output head"}


def has_capability(name: str, capability: str, rule: str = "mulo") -> bool:
    """Whether ``rule``'s backend ``name`` declares ``capability`` (one of :data:`CAPABILITIES`) in its spec."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; choose one of {CAPABILITIES}")
    return capability in _registry(rule)[name].capabilities


def load_backend(name: str, rule: str = "mulo") -> Backend:
    """``rule``'s backend called ``name``; raises :class:`BackendUnavailable` with the fix if it cannot load."""
    registry = _registry(rule)
    if name not in registry:
        what = "backend" if rule == "mulo" else f"{rule} backend"
        raise ValueError(f"unknown {what} {name!r}; choose 'auto' or one of {known_backends(rule)}")
    key = _key(rule, name)
    if key in _LOADED:
        return _LOADED[key]
    spec = registry[name]
    if key not in _FAILED:
        module, attr = spec.factory.split(":")
        try:
            _LOADED[key] = getattr(importlib.import_module(module), attr)()
            return _LOADED[key]
        except (ImportError, OSError, RuntimeError) as e:
            _FAILED[key] = f"{type(e).__name__}: {e}"
    raise BackendUnavailable(f"backend {name!r} is not available here ({_FAILED[key]}). Fix: {spec.fix}")


def available_backends(
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    auto: bool = False,
    rule: str = "mulo",
    requires: frozenset[str] = frozenset(),
) -> list[str]:
    """Names of ``rule``'s backends that load here (and run on ``device`` with parameters of ``dtype`` if a
    device is given; with ``auto``, only those "auto" may pick there; only those declaring every capability in
    ``requires``), best first."""
    dev = torch.device(device) if device is not None else None
    out = []
    for spec in sorted(_registry(rule).values(), key=lambda s: s.priority):
        if dev is not None and dev.type not in spec.device_types:
            continue
        if not requires <= spec.capabilities:
            continue
        if dev is not None and auto and not spec.auto_on(dev.type):
            continue
        try:
            backend = load_backend(spec.name, rule)
        except BackendUnavailable:
            continue
        if dev is None or backend.supports(dev, dtype):
            out.append(spec.name)
    return out


def _check_determinism(spec: BackendSpec, device: torch.device) -> None:
    """Raise (or, with ``warn_only``, warn) when deterministic algorithms are on and ``spec`` is not one."""
    if spec.deterministic or not torch.are_deterministic_algorithms_enabled():
        return
    others = [s.name for s in _registry(spec.rule).values() if s.deterministic and device.type in s.device_types]
    msg = (
        f"backend {spec.name!r} sums with float atomics, so its step is not deterministic, and "
        f"torch.use_deterministic_algorithms(True) is set. Fix: use backend='auto' (it picks a deterministic "
        f"backend then) or one of {sorted(others)} on {device.type}, or "
        "torch.use_deterministic_algorithms(True, warn_only=True) to run it anyway with a warning"
    )
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(msg, UserWarning, stacklevel=_caller_stacklevel())
    else:
        raise RuntimeError(msg)


def check_capabilities(
    name: str,
    requires: frozenset[str],
    rule: str = "mulo",
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Raise :class:`BackendUnavailable` when ``rule``'s backend ``name`` lacks a capability in ``requires``
    (e.g. ``{"nominal"}``: meta-weights with the nominal term), naming the backends that have them (those
    running on ``device`` when one is given)."""
    registry = _registry(rule)
    if name not in registry or requires <= registry[name].capabilities:
        return
    lacking = sorted(requires - registry[name].capabilities)
    missing = ", ".join(f"{c} ({_REQUIRED_BY[c]})" if c in _REQUIRED_BY else c for c in lacking)
    if device is not None:
        able, where = available_backends(device, dtype, rule=rule, requires=requires), f" on {device.type}"
    else:
        able, where = sorted(n for n, s in registry.items() if requires <= s.capabilities), ""
    raise BackendUnavailable(
        f"backend {name!r} does not implement {missing}; use backend='auto' or one of {able}{where}"
    )


def resolve_backend(
    name: str,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    rule: str = "mulo",
    requires: frozenset[str] = frozenset(),
) -> Backend:
    """``rule``'s backend to run for parameters of ``dtype`` on ``device``: ``name`` itself, or for ``"auto"``
    the best available one (a deterministic one while ``torch.use_deterministic_algorithms(True)`` is set)
    among those declaring every capability in ``requires`` (e.g. ``{"nominal"}`` for meta-weights with the
    nominal term)."""
    registry = _registry(rule)
    if name != "auto":
        check_capabilities(name, requires, rule, device, dtype)
        backend = load_backend(name, rule)
        if device.type not in registry[name].device_types or not backend.supports(device, dtype):
            runs_on = ", ".join(registry[name].device_types)
            raise BackendUnavailable(
                f"backend {name!r} (runs on {runs_on}) does not run {dtype} parameters on {device}; use "
                f"backend='auto' or one of {available_backends(device, dtype, rule=rule)}"
            )
        _check_determinism(registry[name], device)
        return backend
    candidates = available_backends(device, dtype, auto=True, rule=rule, requires=requires)
    deterministic = torch.are_deterministic_algorithms_enabled()
    if deterministic:
        candidates = [c for c in candidates if registry[c].deterministic]
    chosen = candidates[0]  # "reference" runs everywhere, deterministically
    measured = _measured(rule, device, dtype, [c for c in candidates if c != "reference"])
    if measured:  # on a GPU with more than one fast candidate: the faster one in a one-time measurement
        chosen = min(measured, key=measured.get)
    key = (device.type, chosen) if rule == "mulo" else (rule, device.type, chosen)  # announce once per choice
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        skipped = [
            f"{s.name} ({_FAILED.get(_key(rule, s.name), 'unavailable')})"
            for s in sorted(registry.values(), key=lambda s: s.priority)
            if s.auto_on(device.type) and s.name not in candidates
        ]
        note = f"; not available: {', '.join(skipped)}" if skipped else ""
        if deterministic:
            passed = [s.name for s in registry.values() if not s.deterministic and s.auto_on(device.type)]
            note += f"; passed over while deterministic algorithms are on: {', '.join(sorted(passed))}"
        if measured:
            times = ", ".join(f"{n} {t:.3g} ms" for n, t in sorted(measured.items(), key=lambda kv: kv[1]))
            note += f"; measured once per step of a {measure.numel_text()} set: {times} (MULO_AUTO_MEASURE=0: off)"
        failed = [f"{n} ({_MEASURE_FAILED[_key(rule, n)]})" for n in candidates if _key(rule, n) in _MEASURE_FAILED]
        if failed:
            note += f"; failed in auto's measurement: {', '.join(failed)}"
        who = "mulo" if rule == "mulo" else f"mulo.{rule.capitalize()}"
        warnings.warn(
            f"{who}: backend='auto' uses {chosen!r} on {device.type}{note}",
            MuLOBackendNotice,
            stacklevel=_caller_stacklevel(),
        )
    return load_backend(chosen, rule)


def _measured(rule: str, device: torch.device, dtype: torch.dtype, candidates: list[str]) -> dict[str, float]:
    """Step times (ms) of ``candidates`` measured once per (rule, device, dtype, candidates) in this process
    when :func:`mulo.backends.measure.wanted` says so, else ``{}``; a candidate whose measurement raises is left
    out (its error kept in ``_MEASURE_FAILED`` for the notice), and with fewer than two left the priority
    order decides."""
    if not measure.wanted(device, rule, candidates):
        return {}
    key = (rule, str(device), dtype, tuple(candidates))
    if key not in _MEASURED:
        times = {}
        for name in candidates:
            try:
                times[name] = measure.step_ms(load_backend(name, rule), device, dtype)
            except Exception as e:  # noqa: BLE001 — any failure rules the candidate out of the choice
                _MEASURE_FAILED[_key(rule, name)] = f"{type(e).__name__}: {e}"
        _MEASURED[key] = times if len(times) >= 2 else {}
    return _MEASURED[key]


_NATIVE_FIX = "build the native extension: `make install` (or `pip install --no-build-isolation -e .`)"
for _spec in (
    BackendSpec("reference", "mulo.backends.reference:ReferenceBackend", ("cpu", "cuda", "mps", "xpu", "meta"), 100,
                "(always available)", capabilities=frozenset({"passes", "population", "nominal"})),
    # triton is deterministic: under torch.use_deterministic_algorithms(True) its passes A and B add per-chunk
    # partial sums in a fixed order instead of atomically (kernels/lopt_plan.py)
    BackendSpec("triton", "mulo.backends.triton_backend:TritonBackend", ("cuda", "cpu"), 20,
                "pip install triton (and a CUDA GPU; on CPU set TRITON_INTERPRET=1)", auto_device_types=("cuda",),
                capabilities=frozenset({"passes", "population"})),
    BackendSpec("cpu", "mulo.backends.native:CpuBackend", ("cpu",), 10, _NATIVE_FIX,
                capabilities=frozenset({"passes", "population", "nominal"})),
    # "auto" on a GPU prefers Triton: the static model of the sm_90 kernels (bench/gpu_static.py, rows in
    # bench/results/gpu_static.jsonl) predicts 2.6× fused AdamW on the 1.3B set for Triton, 3.7× for CUDA
    BackendSpec("cuda", "mulo.backends.native:CudaBackend", ("cuda",), 30, f"set CUDA_HOME and {_NATIVE_FIX}",
                capabilities=frozenset({"passes"}), deterministic=False),
    # Celo2 (mulo.Celo2): the oracle, the fused C++ passes (mulo/celo2/cpu.py), the Triton ones (mulo/celo2/triton.py)
    BackendSpec("reference", "mulo.celo2.reference:ReferenceBackend", ("cpu", "cuda", "mps", "xpu", "meta"), 100,
                "(always available)", capabilities=frozenset({"population"}), rule="celo2"),
    BackendSpec("cpu", "mulo.celo2.cpu:CpuBackend", ("cpu",), 10, _NATIVE_FIX, capabilities=frozenset({"population"}),
                rule="celo2"),
    BackendSpec("triton", "mulo.celo2.triton:TritonBackend", ("cuda", "cpu"), 20,
                "pip install triton (and a CUDA GPU; on CPU set TRITON_INTERPRET=1)", auto_device_types=("cuda",),
                capabilities=frozenset({"population"}), rule="celo2", deterministic=False),
):  # fmt: skip
    register_backend(_spec)

__all__ = [
    "Backend",
    "BackendSpec",
    "BackendUnavailable",
    "MuLOBackendNotice",
    "CAPABILITIES",
    "RULES",
    "available_backends",
    "check_capabilities",
    "has_capability",
    "known_backends",
    "load_backend",
    "register_backend",
    "resolve_backend",
]
