"""Non-memorizable data sources: deterministic given a seed, held-out data never in a training batch."""

import random

import numpy as np
import pytest
import torch

from mulo.data import procedural
from mulo.data.procedural import AugmentedDigitsSource, PoolSource, TeacherSource, mnist1d_pool
from mulo.meta.tasks import ImageMLPFamily, ImageMLPSpec

SMALL_MNIST1D = dict(num_train=400, num_heldout=100, cache=False)


@pytest.fixture(scope="module")
def sources():
    """One instance of each source (the MNIST-1D pool small: the real one is 1M samples)."""
    return {
        "mnist1d": procedural.mnist1d(**SMALL_MNIST1D),
        "digits_aug": AugmentedDigitsSource(),
        "teacher": TeacherSource(),
    }


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in x.reshape(-1, x.shape[-1]).numpy()}


@pytest.mark.parametrize("name", ["mnist1d", "digits_aug", "teacher"])
def test_sources_are_deterministic_given_a_seed(sources, name):
    src = sources[name]
    again = {
        "mnist1d": lambda: procedural.mnist1d(**SMALL_MNIST1D),
        "digits_aug": AugmentedDigitsSource,
        "teacher": TeacherSource,
    }[name]()
    for split in ("train", "heldout"):
        x, y = src.batches(torch.Generator().manual_seed(3), 2, 32, split)
        x2, y2 = again.batches(torch.Generator().manual_seed(3), 2, 32, split)
        assert torch.equal(x, x2) and torch.equal(y, y2), split
        assert x.shape == (2, 32, src.num_features) and x.dtype == torch.float32
        assert y.shape == (2, 32) and y.dtype == torch.int64 and 0 <= y.min() and y.max() < src.num_classes
        x3, _ = src.batches(torch.Generator().manual_seed(4), 2, 32, split)
        assert not torch.equal(x, x3), "another seed must give other batches"
    for a, b in zip(src.heldout_set(), again.heldout_set()):
        assert torch.equal(a, b)
    g = torch.Generator().manual_seed(5)
    assert not torch.equal(src.batches(g, 1, 32)[0], src.batches(g, 1, 32)[0]), "fresh examples per batch"


def test_mnist1d_uses_the_package_generator_and_leaves_global_rngs_alone(tmp_path, monkeypatch):
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state(), random.getstate()
    pools = mnist1d_pool(**SMALL_MNIST1D)
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and random.getstate() == py_state
    assert pools["train"][0].shape == (400, 40) and pools["heldout"][0].shape == (100, 40)
    assert sorted(torch.bincount(torch.cat([pools["train"][1], pools["heldout"][1]])).tolist()) == [50] * 10
    # the cache returns the very same pool (sizes are read at call time, so a run can be made small)
    monkeypatch.setenv("MULO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(procedural, "MNIST1D_TRAIN", 400)
    monkeypatch.setattr(procedural, "MNIST1D_HELDOUT", 100)
    first = mnist1d_pool()
    assert len(list(tmp_path.glob("mnist1d-*-400-100-seed0.pt"))) == 1
    cached = mnist1d_pool()
    for split in ("train", "heldout"):
        for a, b, c in zip(pools[split], first[split], cached[split]):
            assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(ValueError, match="divisible by 10"):
        mnist1d_pool(num_train=401, num_heldout=100, cache=False)


@pytest.mark.parametrize("name", ["mnist1d", "digits_aug", "teacher"])
def test_heldout_never_overlaps_training_batches(sources, name):
    src = sources[name]
    heldout = rows(src.heldout_set()[0])
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, _ = src.batches(gen, 4, 128)
        assert not rows(x) & heldout
    if isinstance(src, PoolSource):  # disjoint pools: not one shared sample
        assert not rows(src.pools["train"][0]) & rows(src.pools["heldout"][0])
        assert rows(src.batches(gen, 2, 64, "heldout")[0]) <= heldout
    if isinstance(src, AugmentedDigitsSource):  # no held-out digit is ever a training digit
        assert not rows(src.images["train"].flatten(1)) & rows(src.images["heldout"].flatten(1))
        assert len(src.labels["train"]) == procedural.DIGITS_TRAIN


def test_teacher_has_a_loss_floor_and_balanced_enough_classes(sources):
    teacher = sources["teacher"]
    assert 0.3 < teacher.bayes_loss < 0.7
    counts = torch.bincount(teacher.heldout_set()[1], minlength=10)
    assert counts.min() > 300  # every class present in the 10,000 held-out points


def test_tasks_draw_from_sources_and_expose_the_heldout_split():
    task = ImageMLPFamily(ImageMLPSpec("teacher", 8, 2, 16)).sample(torch.Generator())
    x, y = task.batches(torch.Generator().manual_seed(0), 3)
    assert x.shape == (3, 16, 32) and y.shape == (3, 16)
    params = task.init(torch.Generator().manual_seed(0))
    assert torch.isfinite(task.loss(params, (x[0], y[0])))
    hx, hy = task.heldout_set()
    assert hx.shape == (procedural.TEACHER_HELDOUT, 32)
    assert task.heldout_batches(torch.Generator().manual_seed(0), 2)[0].shape == (2, 16, 32)
    digits = ImageMLPFamily(ImageMLPSpec("digits", 8, 2, 16)).sample(torch.Generator())
    with pytest.raises(ValueError, match="no held-out split.*'mnist1d', 'digits_aug' or 'teacher'"):
        digits.heldout_set()
    with pytest.raises(ValueError, match="split must be one of"):
        task.data.batches(torch.Generator(), 1, 4, "test")
