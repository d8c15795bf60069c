"""The backend registry: declared capabilities, and notices attributed to the user's line."""

import warnings

import pytest
import torch

import mulo
from mulo import backends
from mulo.backends import MuLOBackendNotice, has_capability, known_backends


def test_capabilities_are_declared_not_probed():
    assert has_capability("reference", "passes") and has_capability("reference", "population")
    assert has_capability("cpu", "passes") and has_capability("cuda", "passes")
    # the nominal term's third head: in the reference and the CPU kernels, not in the GPU kernels
    assert [n for n in ("reference", "cpu", "triton", "cuda") if has_capability(n, "nominal")] == ["reference", "cpu"]
    with pytest.raises(ValueError, match="unknown capability"):
        has_capability("cpu", "fly")
    for name in known_backends():
        spec = backends._REGISTRY[name]
        assert set(spec.capabilities) <= set(backends.CAPABILITIES), name


def test_auto_notice_names_the_users_line(monkeypatch):
    monkeypatch.setattr(backends, "_ANNOUNCED", set())
    p = torch.nn.Parameter(torch.randn(3, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = mulo.MuLO([p])
        p.grad = torch.randn(3, 4)
        opt.step()
    notices = [w for w in caught if issubclass(w.category, MuLOBackendNotice)]
    assert notices, "backend='auto' announces its choice once"
    assert notices[0].filename == __file__, f"attributed to {notices[0].filename}:{notices[0].lineno}"


def test_auto_on_a_gpu_prefers_triton_then_cuda_then_the_reference():
    """The order "auto" tries on CUDA when it does not measure (one fast candidate, a failed measurement,
    MULO_AUTO_MEASURE=0) follows the static model (Triton predicted faster than CUDA)."""
    from mulo.backends import _registry

    order = [s.name for s in sorted(_registry("mulo").values(), key=lambda s: s.priority) if s.auto_on("cuda")]
    assert order == ["triton", "cuda", "reference"]


@pytest.fixture
def deterministic_algorithms():
    """Turns torch.use_deterministic_algorithms on for one test (``set(warn_only)``) and restores it."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())

    def set_(warn_only: bool = False) -> None:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)

    yield set_
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_only_the_atomic_backends_are_declared_nondeterministic():
    """cuda (μLO) and triton (Celo2) sum with float atomics; the reference and cpu sum in a fixed order, and μLO's
    triton does under torch.use_deterministic_algorithms(True) (tests/kernels/test_deterministic.py)."""
    flags = {name: backends._REGISTRY[name].deterministic for name in known_backends()}
    assert flags == {"cpu": True, "cuda": False, "reference": True, "triton": True}
    celo2 = {name: s.deterministic for name, s in backends._registry("celo2").items()}
    assert celo2 == {"cpu": True, "reference": True, "triton": False}


def test_deterministic_algorithms_rule_out_atomic_backends(deterministic_algorithms, monkeypatch):
    """With torch.use_deterministic_algorithms(True), "auto" passes the nondeterministic backends over (and
    says so), naming one explicitly raises with the fix, and warn_only=True turns that into a warning. A
    nondeterministic backend registered for CPU stands in for the GPU ones on this machine."""
    monkeypatch.setattr(backends, "_ANNOUNCED", set())
    atomic = backends.BackendSpec("atomic_cpu", "mulo.backends.reference:ReferenceBackend", ("cpu",), 1,
                                  "(test)", deterministic=False)  # fmt: skip
    monkeypatch.setitem(backends._REGISTRY, "atomic_cpu", atomic)
    cpu = torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MuLOBackendNotice)
        assert backends.available_backends(cpu, auto=True)[0] == "atomic_cpu"  # the fastest, normally
    deterministic_algorithms()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = backends.resolve_backend("auto", cpu)
    assert type(chosen).__name__ == "CpuBackend"  # the native build is part of `make install`
    notes = [str(w.message) for w in caught if issubclass(w.category, MuLOBackendNotice)]
    assert notes and "passed over while deterministic algorithms are on: atomic_cpu" in notes[0], notes
    with pytest.raises(RuntimeError, match=r"backend 'atomic_cpu' sums with float atomics.*Fix: use backend='auto'"):
        backends.resolve_backend("atomic_cpu", cpu)
    deterministic_algorithms(warn_only=True)
    with pytest.warns(UserWarning, match="not deterministic"):
        backends.resolve_backend("atomic_cpu", cpu)


def test_the_optimizer_resolves_again_when_determinism_is_toggled(deterministic_algorithms, monkeypatch):
    """A nondeterministic backend named explicitly steps while determinism is off and raises once it is on
    (the optimizer resolves its backend again when the flag changes)."""
    atomic = backends.BackendSpec("atomic_cpu", "mulo.backends.reference:ReferenceBackend", ("cpu",), 1,
                                  "(test)", deterministic=False)  # fmt: skip
    monkeypatch.setitem(backends._REGISTRY, "atomic_cpu", atomic)
    p = torch.nn.Parameter(torch.randn(3, 4))
    opt = mulo.MuLO([p], backend="atomic_cpu")
    p.grad = torch.randn(3, 4)
    opt.step()  # fine: determinism is off
    deterministic_algorithms()
    with pytest.raises(RuntimeError, match="torch.use_deterministic_algorithms"):
        opt.step()


class _SlowReference:
    """A second fast-backend candidate for auto's measurement on the CPU: the reference step under a name."""

    name = "slow_reference"

    def __init__(self):
        from mulo.backends.reference import ReferenceBackend

        self._ref = ReferenceBackend()

    def supports(self, device, dtype):
        return self._ref.supports(device, dtype)

    def step(self, *args):
        self._ref.step(*args)


class _Broken(_SlowReference):
    name = "broken"

    def step(self, *args):
        raise RuntimeError("no kernel image is available for execution on the device")


def _with_candidates(monkeypatch, *extra):
    """A fresh μLO registry with ``extra`` (name, priority, factory) added as CPU backends "auto" may pick."""
    registry = dict(backends._REGISTRY)
    for name, priority, factory in extra:
        registry[name] = backends.BackendSpec(name, f"{__name__}:{factory}", ("cpu",), priority, "n/a")
    monkeypatch.setattr(backends, "_RULE_REGISTRY", {**backends._RULE_REGISTRY, "mulo": registry})
    for attr in ("_LOADED", "_FAILED", "_MEASURED", "_MEASURE_FAILED"):
        monkeypatch.setattr(backends, attr, {})
    monkeypatch.setattr(backends, "_ANNOUNCED", set())


def test_auto_measures_the_fast_candidates_once_and_picks_the_faster(monkeypatch):
    """On a GPU (here: MULO_AUTO_MEASURE=1 on the CPU) auto times each fast candidate's step on a fixed set, once
    per (device, dtype), and takes the faster even against the priority order; the notice gives the times."""
    from mulo.backends import measure

    if "cpu" not in backends.available_backends("cpu"):
        pytest.skip("needs the native cpu backend (make install)")
    _with_candidates(monkeypatch, ("slow_reference", 5, "_SlowReference"))  # ahead of cpu by priority
    calls = []
    real = measure.step_ms

    def small_step_ms(backend, device, dtype):
        calls.append(backend.name)
        return real(backend, device, dtype, shapes=((64, 48), (48,), (8, 4, 3, 3)), steps=3)

    monkeypatch.setattr(measure, "step_ms", small_step_ms)
    monkeypatch.setenv("MULO_AUTO_MEASURE", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = backends.resolve_backend("auto", torch.device("cpu"))
        again = backends.resolve_backend("auto", torch.device("cpu"))
    assert first.name == again.name == "cpu", "the native step beats the reference's on the same set"
    assert sorted(calls) == ["cpu", "slow_reference"], "measured once, each candidate"
    note = str([w for w in caught if issubclass(w.category, MuLOBackendNotice)][0].message)
    assert "measured once per step" in note and "slow_reference" in note
    monkeypatch.setenv("MULO_AUTO_MEASURE", "0")  # off: the priority order
    assert backends.resolve_backend("auto", torch.device("cpu")).name == "slow_reference"
    monkeypatch.setenv("MULO_AUTO_MEASURE", "yes")
    with pytest.raises(ValueError, match="MULO_AUTO_MEASURE must be 0"):
        backends.resolve_backend("auto", torch.device("cpu"))


def test_auto_leaves_out_a_candidate_whose_measurement_fails(monkeypatch):
    from mulo.backends import measure

    _with_candidates(monkeypatch, ("broken", 5, "_Broken"), ("slow_reference", 6, "_SlowReference"))
    monkeypatch.setattr(measure, "SHAPES", ((16, 8), (8,)))
    monkeypatch.setenv("MULO_AUTO_MEASURE", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = backends.resolve_backend("auto", torch.device("cpu"))
    assert chosen.name != "broken"
    note = str([w for w in caught if issubclass(w.category, MuLOBackendNotice)][0].message)
    assert "failed in auto's measurement: broken (RuntimeError: no kernel image" in note


def test_auto_measures_only_on_a_gpu_by_default(monkeypatch):
    from mulo.backends import measure

    monkeypatch.delenv("MULO_AUTO_MEASURE", raising=False)
    assert not measure.wanted(torch.device("cpu"), "mulo", ["cpu", "other"])
    assert measure.wanted(torch.device("cuda"), "mulo", ["triton", "cuda"])
    assert not measure.wanted(torch.device("cuda"), "mulo", ["triton"]), "one candidate: nothing to choose"
    assert not measure.wanted(torch.device("cuda"), "celo2", ["triton", "x"]), "Celo2 has one GPU backend"
