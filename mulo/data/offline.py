"""Offline data that needs no network: scikit-learn's bundled 8×8 handwritten digits (1,797 images,
10 classes, UCI ML hand-written digits), shipped inside the scikit-learn wheel."""

from __future__ import annotations

import torch


def digits(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: x (1797, 64) scaled to [0, 1], standardized per pixel; y (1797,) int64 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float64) / 16.0
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.as_tensor(data.target, dtype=torch.int64)
    return x.to(device=device, dtype=dtype), y.to(device)


# Standard-library modules whose source is the offline text corpus (pure-Python, present in every CPython).
TEXT_MODULES = (
    "argparse",
    "textwrap",
    "json.decoder",
    "json.encoder",
    "dataclasses",
    "fractions",
    "string",
    "calendar",
    "difflib",
    "heapq",
)


def python_source_text(max_bytes: int = 400_000) -> bytes:
    """A byte corpus for offline language modelling: the source of a fixed list of stdlib modules.

    Deterministic for a given Python version (the text depends on it); returned as UTF-8 bytes, so the
    vocabulary is the 256 byte values.
    """
    import importlib
    import inspect

    parts = [inspect.getsource(importlib.import_module(name)) for name in TEXT_MODULES]
    return "\n".join(parts).encode("utf-8")[:max_bytes]
