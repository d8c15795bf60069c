"""Data loading for meta-training: the offline default and Hugging Face `datasets` copies saved locally."""

import numpy as np
import pytest
import torch

from mulo.data.datasets import load_image_classification


def test_offline_digits_default():
    data = load_image_classification("digits")
    assert data.x.shape == (1797, 64) and data.y.shape == (1797,) and data.num_classes == 10
    assert data.x.dtype == torch.float32 and data.y.dtype == torch.int64
    assert abs(float(data.x.mean())) < 1e-4


def _images(n=30, shape=(6, 5, 3), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8), rng.integers(0, 4, size=n)


def expected_x(images):
    x = torch.from_numpy(images.reshape(len(images), -1)).double() / 255.0
    return ((x - x.mean(0)) / (x.std(0) + 1e-6)).float()


def test_load_from_disk_array_column(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    images, labels = _images()
    features = datasets.Features(
        {
            "img": datasets.Array3D(shape=images.shape[1:], dtype="uint8"),
            "label": datasets.ClassLabel(num_classes=5),
        }
    )
    ds = datasets.Dataset.from_dict({"img": images, "label": labels}, features=features)
    ds.save_to_disk(str(tmp_path / "copy"))
    data = load_image_classification(str(tmp_path / "copy"))
    assert data.num_classes == 5  # from the ClassLabel feature, not from the labels present
    torch.testing.assert_close(data.x, expected_x(images), rtol=0, atol=1e-6)
    assert torch.equal(data.y, torch.from_numpy(labels).long())


def test_load_from_disk_image_feature_and_splits(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    images, labels = _images(shape=(8, 8))
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(im) for im in images], "labels": labels.tolist()},
        features=datasets.Features({"image": datasets.Image(), "labels": datasets.Value("int64")}),
    )
    datasets.DatasetDict({"train": ds, "test": ds.select(range(5))}).save_to_disk(str(tmp_path / "dd"))
    data = load_image_classification(str(tmp_path / "dd"))
    assert data.num_classes == int(labels.max()) + 1
    torch.testing.assert_close(data.x, expected_x(images), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="split"):
        load_image_classification(str(tmp_path / "dd"), split="validation")
    with pytest.raises(ValueError, match="image_column"):
        load_image_classification(str(tmp_path / "dd"), image_column="pixels")


def test_bad_dataset_specs(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_to_disk"):
        load_image_classification(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="hf:NAME"):
        load_image_classification("hf:")
