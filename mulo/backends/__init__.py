"""A small registry of μLO backends.

Every backend implements one entry point with one signature::

    backend.step(params, grads, states, lrs, weight_decays, weights)

for a flat list of tensors on one device in one dtype (``weights`` is a :class:`mulo.lopt.MetaWeights`).
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
    # (:mod:`mulo.backends.population`).
    capabilities: frozenset[str] = frozenset()

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


_REGISTRY: dict[str, BackendSpec] = {}
_LOADED: dict[str, Backend] = {}
_FAILED: dict[str, str] = {}
_ANNOUNCED: set[tuple[str, str]] = set()


def register_backend(spec: BackendSpec) -> None:
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"a different backend named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def known_backends() -> list[str]:
    return sorted(_REGISTRY)


CAPABILITIES = ("passes", "population")


def has_capability(name: str, capability: str) -> bool:
    """Whether backend ``name`` declares ``capability`` (one of :data:`CAPABILITIES`) in its spec."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; choose one of {CAPABILITIES}")
    return capability in _REGISTRY[name].capabilities


def load_backend(name: str) -> Backend:
    """The backend called ``name``; raises :class:`BackendUnavailable` with the fix if it cannot load."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose 'auto' or one of {known_backends()}")
    if name in _LOADED:
        return _LOADED[name]
    spec = _REGISTRY[name]
    if name not in _FAILED:
        module, attr = spec.factory.split(":")
        try:
            _LOADED[name] = getattr(importlib.import_module(module), attr)()
            return _LOADED[name]
        except (ImportError, OSError, RuntimeError) as e:
            _FAILED[name] = f"{type(e).__name__}: {e}"
    raise BackendUnavailable(f"backend {name!r} is not available here ({_FAILED[name]}). Fix: {spec.fix}")


def available_backends(
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32, *, auto: bool = False
) -> list[str]:
    """Names of the backends that load here (and run on ``device`` with parameters of ``dtype`` if a device
    is given; with ``auto``, only those "auto" may pick there), best first."""
    dev = torch.device(device) if device is not None else None
    out = []
    for spec in sorted(_REGISTRY.values(), key=lambda s: s.priority):
        if dev is not None and dev.type not in spec.device_types:
            continue
        if dev is not None and auto and not spec.auto_on(dev.type):
            continue
        try:
            backend = load_backend(spec.name)
        except BackendUnavailable:
            continue
        if dev is None or backend.supports(dev, dtype):
            out.append(spec.name)
    return out


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> Backend:
    """The backend to run for parameters of ``dtype`` on ``device``: ``name`` itself, or for ``"auto"`` the
    best available one."""
    if name != "auto":
        backend = load_backend(name)
        if device.type not in _REGISTRY[name].device_types or not backend.supports(device, dtype):
            runs_on = ", ".join(_REGISTRY[name].device_types)
            raise BackendUnavailable(
                f"backend {name!r} (runs on {runs_on}) does not run {dtype} parameters on {device}; use "
                f"backend='auto' or one of {available_backends(device, dtype)}"
            )
        return backend
    candidates = available_backends(device, dtype, auto=True)
    chosen = candidates[0]  # "reference" runs everywhere
    key = (device.type, chosen)  # announce once per device type and choice
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        skipped = [
            f"{s.name} ({_FAILED.get(s.name, 'unavailable')})"
            for s in sorted(_REGISTRY.values(), key=lambda s: s.priority)
            if s.auto_on(device.type) and s.name not in candidates
        ]
        note = f"; not available: {', '.join(skipped)}" if skipped else ""
        warnings.warn(
            f"mulo: backend='auto' uses {chosen!r} on {device.type}{note}",
            MuLOBackendNotice,
            stacklevel=_caller_stacklevel(),
        )
    return load_backend(chosen)


_NATIVE_FIX = "build the native extension: `make install` (or `pip install --no-build-isolation -e .`)"
for _spec in (
    BackendSpec("reference", "mulo.backends.reference:ReferenceBackend", ("cpu", "cuda", "mps", "xpu", "meta"), 100,
                "(always available)", capabilities=frozenset({"passes", "population"})),
    BackendSpec("triton", "mulo.backends.triton_backend:TritonBackend", ("cuda", "cpu"), 20,
                "pip install triton (and a CUDA GPU; on CPU set TRITON_INTERPRET=1)", auto_device_types=("cuda",),
                capabilities=frozenset({"passes", "population"})),
    BackendSpec("cpu", "mulo.backends.native:CpuBackend", ("cpu",), 10, _NATIVE_FIX,
                capabilities=frozenset({"passes", "population"})),
    BackendSpec("cuda", "mulo.backends.native:CudaBackend", ("cuda",), 10, f"set CUDA_HOME and {_NATIVE_FIX}",
                capabilities=frozenset({"passes"})),
):  # fmt: skip
    register_backend(_spec)

__all__ = [
    "Backend",
    "BackendSpec",
    "BackendUnavailable",
    "MuLOBackendNotice",
    "CAPABILITIES",
    "available_backends",
    "has_capability",
    "known_backends",
    "load_backend",
    "register_backend",
    "resolve_backend",
]
