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
    """The order "auto" tries on CUDA follows the static model (Triton predicted faster than CUDA)."""
    from mulo.backends import _registry

    order = [s.name for s in sorted(_registry("mulo").values(), key=lambda s: s.priority) if s.auto_on("cuda")]
    assert order == ["triton", "cuda", "reference"]
