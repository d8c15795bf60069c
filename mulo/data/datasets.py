"""Image-classification data for meta-training, as device tensors.

``load_image_classification(spec)`` takes:

* ``"digits"`` — the offline default: scikit-learn's bundled 8×8 digits (:mod:`mulo.data.offline`), no
  network, no extra dependency;
* ``"hf:NAME"`` or ``"hf:NAME:SPLIT"`` — ``datasets.load_dataset(NAME, split=SPLIT)`` (Hugging Face Hub;
  needs the network the first time, then the local cache);
* a directory — ``datasets.load_from_disk`` (a copy saved with ``Dataset.save_to_disk``; a ``DatasetDict``
  uses ``split``).

Images (any ``H×W`` or ``H×W×C`` array column, or an ``Image`` feature) are scaled to [0, 1] when stored as
integers (8-bit), flattened and standardized per input feature, then kept on the device whole: a batch is one
gather with an index tensor, never a Python loop over examples.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

IMAGE_COLUMNS = ("image", "img", "pixel_values", "pixels", "x")
LABEL_COLUMNS = ("label", "labels", "fine_label", "y")


@dataclasses.dataclass(frozen=True)
class ImageClassificationData:
    """``x`` (n, features) float32 standardized, ``y`` (n,) int64 in [0, num_classes)."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str

    @property
    def num_features(self) -> int:
        return self.x.shape[1]

    def to(self, device: torch.device | str) -> ImageClassificationData:
        return dataclasses.replace(self, x=self.x.to(device), y=self.y.to(device))


def _standardize(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float64)
    return ((x - x.mean(0)) / (x.std(0) + 1e-6)).to(torch.float32)


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, source: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{source}: no column {wanted!r} for the {what} ({what}_column); columns are {columns}")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise ValueError(f"{source}: cannot tell which column holds the {what} (columns {columns}); pass {what}_column=...")


def from_hf_dataset(
    ds, *, name: str, image_column: str | None = None, label_column: str | None = None
) -> ImageClassificationData:
    """Convert a ``datasets.Dataset`` of images and integer labels (decoding is the library's, columnar)."""
    columns = list(ds.column_names)
    img_col = _pick(columns, image_column, IMAGE_COLUMNS, "image", name)
    lab_col = _pick(columns, label_column, LABEL_COLUMNS, "label", name)
    if len(ds) == 0:
        raise ValueError(f"{name}: the dataset is empty")
    table = ds.select_columns([img_col, lab_col]).with_format("numpy")[:]  # whole columns, decoded by the library
    images = table[img_col]
    if not isinstance(images, np.ndarray) or images.dtype == object:
        images = np.stack([np.asarray(im) for im in images])  # ragged rows: images must share one size
    labels = np.asarray(table[lab_col])
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: label column {lab_col!r} has dtype {labels.dtype}; integer class ids are needed")
    x = torch.from_numpy(np.ascontiguousarray(images)).reshape(len(images), -1).to(torch.float64)
    if np.issubdtype(images.dtype, np.integer):  # integer pixels: 8-bit unless they say otherwise
        x = x / max(255.0, float(x.max()))
    feature = ds.features.get(lab_col)
    num_classes = int(getattr(feature, "num_classes", 0) or int(labels.max()) + 1)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{name}: labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return ImageClassificationData(_standardize(x), torch.from_numpy(labels.astype(np.int64)), num_classes, name)


def load_image_classification(
    spec: str,
    device: torch.device | str = "cpu",
    *,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
) -> ImageClassificationData:
    """Load ``spec`` ("digits", "hf:NAME[:SPLIT]" or a ``save_to_disk`` directory) onto ``device``."""
    if spec == "digits":
        from mulo.data.offline import digits

        x, y = digits()
        return ImageClassificationData(x.to(torch.float32), y, 10, "digits").to(device)
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"dataset {spec!r} needs the Hugging Face `datasets` library: pip install datasets "
            "(the offline default 'digits' needs nothing)"
        ) from e
    if spec.startswith("hf:"):
        name, _, hf_split = spec[3:].partition(":")
        if not name:
            raise ValueError(f"dataset spec {spec!r}: expected 'hf:NAME' or 'hf:NAME:SPLIT'")
        try:
            ds = datasets.load_dataset(name, split=hf_split or split)
        except Exception as e:  # offline, unknown name, ...: one clear message
            raise FileNotFoundError(
                f"could not load Hugging Face dataset {name!r} ({type(e).__name__}: {e}). Offline? Save it once "
                f"with Dataset.save_to_disk(DIR) and pass DIR, or use the offline default 'digits'."
            ) from e
        return from_hf_dataset(ds, name=spec, image_column=image_column, label_column=label_column).to(device)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"dataset {spec!r} is neither 'digits', 'hf:NAME[:SPLIT]' nor a directory saved with save_to_disk "
            "(the non-memorizable sources are 'mnist1d', 'digits_aug' and 'teacher')"
        )
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"{path} holds splits {list(ds)}; pick one with split=...")
        ds = ds[split]
    return from_hf_dataset(ds, name=str(path), image_column=image_column, label_column=label_column).to(device)


__all__ = ["ImageClassificationData", "from_hf_dataset", "load_image_classification"]
