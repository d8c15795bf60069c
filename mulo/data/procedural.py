"""Classification data that cannot be memorized, for meta-training and evaluation (offline, no network).

Every source draws its training batches afresh from the generator it is given (deterministic given that
generator's state) and has a **held-out split drawn from the same generator procedure that never overlaps
the training batches**:

* ``"mnist1d"`` — MNIST-1D (Greydanus & Kobak 2020; the PyPI package ``mnist1d``), 40-point 1-d signals of
  10 classes made procedurally from 10 templates (padding, scaling, translation, correlated and iid noise,
  shear). Generated once by the package's own ``make_dataset`` (never its download) as one shuffled pool of
  :data:`MNIST1D_TRAIN` + :data:`MNIST1D_HELDOUT` samples, split by index: training batches sample the
  first part, the held-out split is the rest. The pool (≈ 1M samples, a few CPU-minutes) is far larger than
  what one inner run sees (1,000 steps × 128 examples) and is cached under :func:`cache_dir`.
* ``"digits_aug"`` — scikit-learn's 8×8 digits with augmentation drawn fresh per example: a random shift of
  up to :data:`DIGITS_MAX_SHIFT` pixels in each direction (zero fill) and Gaussian pixel noise
  (:data:`DIGITS_NOISE`, on pixels scaled to [0, 1]). A fixed split of the 1,797 digits: training batches
  augment the :data:`DIGITS_TRAIN` training digits, the held-out split augments the other 297 (so no
  held-out digit ever appears in training, augmented or not).
* ``"teacher"`` — :class:`TeacherSource`: x ~ N(0, I₃₂), labels sampled from the softmax of a fixed random
  two-layer tanh teacher network. Fresh points and fresh labels every batch; the Bayes loss (the teacher's
  mean label entropy, :attr:`TeacherSource.bayes_loss`, ≈ 0.48 nats) is a floor no model can beat, so growing the
  logits is never rewarded. The held-out split is a fixed set of :data:`TEACHER_HELDOUT` points drawn once
  from a dedicated generator stream.

Interface (:class:`ClassificationSource`): ``batches(generator, n, batch_size, split="train")`` → x
``(n, batch_size, features)`` float32 and y ``(n, batch_size)`` int64 on the source's device;
``heldout_set()`` → the fixed, deterministic held-out ``(x, y)``; ``num_features``, ``num_classes``,
``name``. :func:`load_source` builds one by name; :func:`is_source` says whether a name is one.
"""

from __future__ import annotations

import abc
import functools
import math
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

SPLITS = ("train", "heldout")

#: the pinned package version (requirements.txt); the cache key includes the installed one
MNIST1D_VERSION = "0.0.2.post1"
MNIST1D_TRAIN = 990_000
MNIST1D_HELDOUT = 10_000
MNIST1D_SEED = 0

DIGITS_HELDOUT = 297
DIGITS_TRAIN = 1797 - DIGITS_HELDOUT
DIGITS_SPLIT_SEED = 0
DIGITS_MAX_SHIFT = 1
DIGITS_NOISE = 0.15
#: augmented copies of each held-out digit in :meth:`AugmentedDigitsSource.heldout_set`
DIGITS_HELDOUT_COPIES = 10

TEACHER_FEATURES = 32
TEACHER_HIDDEN = 64
TEACHER_CLASSES = 10
TEACHER_SHARPNESS = 6.0
TEACHER_SEED = 0
TEACHER_HELDOUT = 10_000
#: seeds of the fixed streams (held-out sets, logit calibration): far from the trainer's small seeds
HELDOUT_STREAM = 0x5EED_4E1D_07
PROBE_STREAM = 0x5EED_9A0B_E7


class ClassificationSource(abc.ABC):
    """A classification data generator with a training and a held-out split (see the module docstring)."""

    name: str
    num_features: int
    num_classes: int

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def batches(
        self, generator: torch.Generator, n: int, batch_size: int, split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` independent batches of ``batch_size`` examples of ``split`` (every draw from ``generator``)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        for what, value in (("n", n), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        x, y = self._draw(generator, n * batch_size, split)
        return x.reshape(n, batch_size, -1).to(self.device), y.reshape(n, batch_size).to(self.device)

    @abc.abstractmethod
    def _draw(self, generator: torch.Generator, count: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` examples (x (count, features), y (count,)) of ``split``."""

    @abc.abstractmethod
    def heldout_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed held-out set (the same tensors on every call, on the source's device)."""


class PoolSource(ClassificationSource):
    """Examples sampled uniformly (with replacement) from fixed pools, one per split."""

    def __init__(self, name: str, pools: dict, num_classes: int, device: torch.device | str = "cpu"):
        super().__init__(device)
        self.name, self.num_classes = name, num_classes
        self.pools = {
            s: (x.to(self.device, torch.float32), y.to(self.device, torch.int64)) for s, (x, y) in pools.items()
        }
        self.num_features = self.pools["train"][0].shape[1]

    def _draw(self, generator, count, split):
        x, y = self.pools[split]
        idx = torch.randint(0, y.shape[0], (count,), generator=generator).to(self.device)
        return x[idx], y[idx]

    def heldout_set(self):
        return self.pools["heldout"]


# ---- MNIST-1D ----------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where generated pools are cached: ``$MULO_CACHE_DIR``, else ``$XDG_CACHE_HOME/mulo``, else ``~/.cache/mulo``."""
    if os.environ.get("MULO_CACHE_DIR"):
        return Path(os.environ["MULO_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "mulo"


def _mnist1d_module():
    try:
        import mnist1d.data
    except ImportError as e:
        raise ImportError(
            f"dataset 'mnist1d' needs the `mnist1d` package: pip install mnist1d=={MNIST1D_VERSION} "
            "(or pick 'digits_aug' or 'teacher', which need nothing)"
        ) from e
    return mnist1d


def mnist1d_pool(
    num_train: int | None = None, num_heldout: int | None = None, seed: int = MNIST1D_SEED, *, cache: bool = True
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"train": (x, y), "heldout": (x, y)}``: ONE pool of ``num_train + num_heldout`` MNIST-1D samples made
    by ``mnist1d.data.make_dataset`` with ``seed`` (the package's procedure, standardized over the pool; no
    download), split by index — the splits never share a sample. Deterministic given the arguments (the
    package seeds NumPy's and ``random``'s global generators; both are restored afterwards). Cached as a
    ``.pt`` file under :func:`cache_dir` unless ``cache=False``. Sizes default to :data:`MNIST1D_TRAIN` and
    :data:`MNIST1D_HELDOUT` (read at call time)."""
    num_train = MNIST1D_TRAIN if num_train is None else num_train
    num_heldout = MNIST1D_HELDOUT if num_heldout is None else num_heldout
    total = num_train + num_heldout
    if num_train < 1 or num_heldout < 1 or total % 10:
        raise ValueError(
            f"mnist1d_pool: need num_train, num_heldout ≥ 1 with a total divisible by 10 (10 balanced classes), "
            f"got {num_train} + {num_heldout}"
        )
    mnist1d = _mnist1d_module()
    version = getattr(mnist1d, "__version__", None) or _installed_version("mnist1d")
    path = cache_dir() / f"mnist1d-{version}-{num_train}-{num_heldout}-seed{seed}.pt"
    if cache and path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            return {s: (saved[s][0], saved[s][1]) for s in SPLITS}
        except Exception:  # a cut or foreign file: regenerate it
            pass
    if total >= 100_000:
        print(f"mulo: generating the MNIST-1D pool ({total:,} samples, once; cached in {path.parent})", file=sys.stderr)
    args = mnist1d.data.get_dataset_args()
    args.num_samples, args.train_split, args.seed = total, 1.0, seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = mnist1d.data.make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = torch.from_numpy(np.ascontiguousarray(data["x"], dtype=np.float32))
    y = torch.from_numpy(np.asarray(data["y"], dtype=np.int64))
    pools = {
        "train": (x[:num_train].clone(), y[:num_train].clone()),
        "heldout": (x[num_train:].clone(), y[num_train:].clone()),
    }
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({s: list(pools[s]) for s in SPLITS}, tmp)
            os.replace(tmp, path)
        except OSError as e:  # a read-only cache only costs the regeneration next time
            print(f"mulo: could not cache the MNIST-1D pool in {path.parent} ({e})", file=sys.stderr)
    return pools


def _installed_version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def mnist1d(device: torch.device | str = "cpu", **pool_kwargs) -> PoolSource:
    """The ``"mnist1d"`` source (``pool_kwargs`` go to :func:`mnist1d_pool`)."""
    return PoolSource("mnist1d", mnist1d_pool(**pool_kwargs), 10, device)


# ---- augmented digits ----------------------------------------------------------------------------------------
class AugmentedDigitsSource(ClassificationSource):
    """scikit-learn's 8×8 digits, shifted and noised afresh per example (see the module docstring)."""

    name = "digits_aug"
    num_classes = 10
    num_features = 64

    def __init__(
        self,
        device: torch.device | str = "cpu",
        *,
        max_shift: int = DIGITS_MAX_SHIFT,
        noise: float = DIGITS_NOISE,
        num_heldout: int = DIGITS_HELDOUT,
    ):
        super().__init__(device)
        from sklearn.datasets import load_digits

        data = load_digits()
        images = torch.as_tensor(data.images, dtype=torch.float32) / 16.0  # (1797, 8, 8) in [0, 1]
        labels = torch.as_tensor(data.target, dtype=torch.int64)
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
        split = {"heldout": perm[:num_heldout], "train": perm[num_heldout:]}
        self.images = {s: images[i] for s, i in split.items()}
        self.labels = {s: labels[i] for s, i in split.items()}
        self.max_shift, self.noise = max_shift, noise
        # one scalar standardization from the (unaugmented) training digits: shifts move ink between pixels
        train = self.images["train"]
        self.mean, self.std = float(train.mean()), float(train.std())
        self._heldout = None

    def augment(self, generator: torch.Generator, split: str, idx: torch.Tensor) -> torch.Tensor:
        """Digits ``idx`` of ``split``, each shifted by (dy, dx) ∈ [-max_shift, max_shift]² and noised."""
        s, count = self.max_shift, idx.shape[0]
        padded = torch.nn.functional.pad(self.images[split], (s, s, s, s))
        dy = torch.randint(-s, s + 1, (count, 1), generator=generator)
        dx = torch.randint(-s, s + 1, (count, 1), generator=generator)
        grid = torch.arange(8)[None, :] + s
        rows, cols = grid - dy, grid - dx  # out[r, c] = image[r - dy, c - dx]
        x = padded[idx[:, None, None], rows[:, :, None], cols[:, None, :]].reshape(count, 64)
        x = x + self.noise * torch.randn(count, 64, generator=generator)
        return (x - self.mean) / self.std

    def _draw(self, generator, count, split):
        idx = torch.randint(0, self.labels[split].shape[0], (count,), generator=generator)
        return self.augment(generator, split, idx), self.labels[split][idx]

    def heldout_set(self):
        if self._heldout is None:
            n = self.labels["heldout"].shape[0]
            idx = torch.arange(n).repeat(DIGITS_HELDOUT_COPIES)
            x = self.augment(torch.Generator().manual_seed(HELDOUT_STREAM), "heldout", idx)
            self._heldout = (x.to(self.device), self.labels["heldout"][idx].to(self.device))
        return self._heldout


# ---- random teacher ------------------------------------------------------------------------------------------
class TeacherSource(ClassificationSource):
    """Inputs x ~ N(0, I_d); labels y ~ softmax(z(x)) where z is a fixed random teacher network
    d → ``hidden`` (tanh) → C with weights N(0, 1/fan_in), its logits centred per class and scaled to
    standard deviation ``sharpness`` (calibrated once on a probe set). Everything about the teacher is fixed
    by ``seed``; each batch draws new points and new labels, so no sample is ever seen twice and the loss
    keeps a floor: the mean entropy of the teacher's label distribution (:attr:`bayes_loss`, ≈ 0.48 nats at
    the default sharpness 6, where the teacher's own argmax is right 82% of the time). The held-out split is
    :data:`TEACHER_HELDOUT` points (with their sampled labels) drawn once from a dedicated stream; training
    draws come from the caller's generator; ``split="heldout"`` batches sample that fixed set. Points are
    continuous draws, so a training point equals a held-out one with probability ~2⁻⁷⁰⁰ (tested)."""

    num_classes = TEACHER_CLASSES

    def __init__(
        self,
        device: torch.device | str = "cpu",
        *,
        features: int = TEACHER_FEATURES,
        hidden: int = TEACHER_HIDDEN,
        classes: int = TEACHER_CLASSES,
        sharpness: float = TEACHER_SHARPNESS,
        seed: int = TEACHER_SEED,
        num_heldout: int = TEACHER_HELDOUT,
    ):
        super().__init__(device)
        self.name, self.num_features, self.num_classes = "teacher", features, classes
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(features, hidden, generator=g) / math.sqrt(features)
        self.b1 = 0.5 * torch.randn(hidden, generator=g)
        self.w2 = torch.randn(hidden, classes, generator=g) / math.sqrt(hidden)
        self.shift, self.scale = torch.zeros(classes), torch.ones(())
        probe = torch.randn(8192, features, generator=torch.Generator().manual_seed(PROBE_STREAM + seed))
        raw = self.logits(probe)
        self.shift, self.scale = raw.mean(0), sharpness / (raw - raw.mean(0)).std()
        logp = torch.log_softmax(self.logits(probe), -1)
        self.bayes_loss = float(-(logp.exp() * logp).sum(-1).mean())
        x, y = self._sample(torch.Generator().manual_seed(HELDOUT_STREAM + seed), num_heldout)
        self._heldout = (x.to(self.device), y.to(self.device))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(x @ self.w1 + self.b1) @ self.w2 - self.shift) * self.scale

    def _sample(self, generator: torch.Generator, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(count, self.num_features, generator=generator)
        probs = torch.softmax(self.logits(x), -1)
        y = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return x, y

    def _draw(self, generator, count, split):
        if split == "train":
            return self._sample(generator, count)
        x, y = self._heldout
        idx = torch.randint(0, y.shape[0], (count,), generator=generator).to(self.device)
        return x[idx], y[idx]

    def heldout_set(self):
        return self._heldout


SOURCES = {"mnist1d": mnist1d, "digits_aug": AugmentedDigitsSource, "teacher": TeacherSource}


def is_source(name: str) -> bool:
    return name in SOURCES


@functools.lru_cache(maxsize=8)
def load_source(name: str, device: str = "cpu") -> ClassificationSource:
    """The source ``name`` (one of :data:`SOURCES`) on ``device`` (built once per process and device)."""
    if name not in SOURCES:
        raise ValueError(f"unknown data source {name!r}; the non-memorizable ones are {sorted(SOURCES)}")
    return SOURCES[name](device)


__all__ = [
    "SOURCES",
    "AugmentedDigitsSource",
    "ClassificationSource",
    "PoolSource",
    "TeacherSource",
    "cache_dir",
    "is_source",
    "load_source",
    "mnist1d",
    "mnist1d_pool",
]
