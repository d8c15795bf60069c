"""Inner problems for meta-training (learned_optimization style): a ``Task`` has ``init``, ``loss`` and
``batches``; a ``TaskFamily`` samples tasks.

Two families (docs/ALGORITHM.md §8): a μP ReLU MLP classifying images (the model is :class:`mulo.mup.models.MuMLP`
with its declared roles: hidden weights get lr/fan_in, readout zero-initialized with a 1/width output
multiplier) and its SP twin (same architecture, plain Linear readout initialized like every other weight,
every lr_scale 1 — the SP small_fc_lopt baseline). Biases start N(0, 1) as in the reference ``mu_mlp``.

The data is an image data set held whole (:func:`mulo.data.datasets.load_image_classification`: ``digits``,
``hf:NAME``, a directory), sampled with replacement — small sets get memorized within an inner run — or a
non-memorizable source (:mod:`mulo.data.procedural`: ``mnist1d``, ``digits_aug``, ``teacher``) that draws
fresh examples per batch and has a held-out split (:meth:`ImageMLPTask.heldout_batches`,
:meth:`ImageMLPTask.heldout_set`).

Everything a population needs is functional: ``loss(params, batch)`` runs the module through
``torch.func.functional_call`` so that ``torch.func.vmap`` trains all members in one batched pass.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from mulo.data.datasets import ImageClassificationData, load_image_classification
from mulo.data.procedural import ClassificationSource, is_source, load_source
from mulo.mup import ParamRole, fan_in, init_
from mulo.mup.models import MuMLP

PARAMETERIZATIONS = ("mup", "sp")
META_LOSSES = ("normalized", "log")
#: floor of the "log" meta-loss, relative to the loss clip (ln C·1.5·1e-6 ≈ 3.5e-6 nats for 10 classes).
LOG_LOSS_FLOOR = 1e-6


class Task(abc.ABC):
    """One inner problem. ``params`` are a dict name → tensor; ``batch`` is whatever ``loss`` takes."""

    #: μP role of each parameter (gives its lr_scale).
    roles: dict[str, ParamRole]
    #: upper clip of the normalized loss (docs/ALGORITHM.md §7: 1.5·ln C for C classes).
    loss_clip: float

    @abc.abstractmethod
    def init(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Fresh parameters."""

    @abc.abstractmethod
    def loss(self, params: dict[str, torch.Tensor], batch) -> torch.Tensor:
        """Scalar training loss of ``params`` on one batch (functional: vmap-able)."""

    @abc.abstractmethod
    def batches(self, generator: torch.Generator, n: int):
        """``n`` independent batches stacked on a leading axis."""

    def population_grads_and_losses(self, params: dict[str, torch.Tensor], batch):
        """Every member's gradient and loss at once (``params`` and ``batch`` stacked on a leading member
        axis): ``vmap(grad_and_value(self.loss))``; tasks with a faster batched form override it."""
        return self._vmapped_grad(params, batch)

    @functools.cached_property
    def _vmapped_grad(self):
        return torch.func.vmap(torch.func.grad_and_value(self.loss))

    def heldout_batches(self, generator: torch.Generator, n: int):
        """``n`` batches of the held-out split (never seen in training); tasks without one raise."""
        raise ValueError(f"{type(self).__name__} has no held-out split")

    def heldout_set(self):
        """The whole fixed held-out set as one batch; tasks without one raise."""
        raise ValueError(f"{type(self).__name__} has no held-out split")

    def normalized_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """clip(ℓ, 0, loss_clip) with NaN → loss_clip (what PES differences)."""
        return torch.nan_to_num(loss, nan=self.loss_clip).clamp(0.0, self.loss_clip)

    def meta_loss(self, loss: torch.Tensor, kind: str = "normalized") -> torch.Tensor:
        """The per-step loss PES differences: ``"normalized"`` is :meth:`normalized_loss` (docs/ALGORITHM.md §7);
        ``"log"`` is ln(normalized + LOG_LOSS_FLOOR · loss_clip), which weighs a halving of the loss the
        same at 1.0 and at 1e-4, so the late, low-loss phase of training is not drowned out by the first
        steps (a spike from 1e-4 to 1e-1 costs as much as the first steps' whole descent)."""
        normalized = self.normalized_loss(loss)
        if kind == "normalized":
            return normalized
        if kind == "log":
            return torch.log(normalized + LOG_LOSS_FLOOR * self.loss_clip)
        raise ValueError(f"meta_loss must be one of {META_LOSSES}, got {kind!r}")


class TaskFamily(abc.ABC):
    """Samples tasks. Tasks of one family share parameter shapes, so one population trains them together;
    shape-changing settings (width, depth) are separate families, one gradient estimator each."""

    name: str

    @abc.abstractmethod
    def sample(self, generator: torch.Generator) -> Task: ...


class SPMLP(nn.Module):
    """The SP twin of :class:`MuMLP`: the same layers, a plain Linear readout (no 1/width multiplier)."""

    def __init__(self, in_features: int, width: int, depth: int, out_features: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(in_features, width)])
        self.layers.extend(nn.Linear(width, width) for _ in range(depth - 1))
        self.readout = nn.Linear(width, out_features)

    def roles(self) -> dict[str, ParamRole]:
        # every weight initialized N(0, 1/fan_in) like an input layer; every lr_scale 1
        return {n: ParamRole("other" if p.dim() < 2 else "input", fan_in(p)) for n, p in self.named_parameters()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.readout(x)


class ImageMLPTask(Task):
    """Cross-entropy of a ReLU MLP (``depth`` hidden layers of ``width``) on an image data set or a
    non-memorizable classification source."""

    def __init__(
        self,
        data: ImageClassificationData | ClassificationSource,
        width: int,
        depth: int,
        batch_size: int,
        parameterization: str = "mup",
        bias_std: float = 1.0,
        label_noise: float = 0.0,
    ):
        if not 0.0 <= label_noise < 1.0:
            raise ValueError(f"label_noise must lie in [0, 1), got {label_noise!r}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
        for name, value in (("width", width), ("depth", depth), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.data, self.batch_size, self.bias_std, self.label_noise = data, batch_size, bias_std, label_noise
        self.parameterization = parameterization
        args = (data.num_features, width, depth, data.num_classes)
        # a CPU template: init_ draws into it; in loss() functional_call supplies every parameter
        self.module = MuMLP(*args) if parameterization == "mup" else SPMLP(*args)
        self.roles = self.module.roles()
        self.loss_clip = 1.5 * math.log(data.num_classes)

    @torch.no_grad()
    def init(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        init_(self.module, self.roles, bias_std=self.bias_std, generator=generator)
        device = self.data.device if isinstance(self.data, ClassificationSource) else self.data.x.device
        return {n: p.detach().clone().to(device) for n, p in self.module.named_parameters()}

    def loss(self, params: dict[str, torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits = torch.func.functional_call(self.module, params, (x,))
        return F.cross_entropy(logits, y)

    def population_grads_and_losses(
        self, params: dict[str, torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every member's gradient and loss at once: ``params`` stacked on a leading member axis M, ``batch``
        (M, B, ...) inputs and (M, B) labels. The same values as ``vmap(grad_and_value(self.loss))``, by a
        hand-written forward and backward of the MLP in batched matrix products (a few kernel calls per
        layer instead of vmap's per-operator dispatch, which dominated a small task's inner step;
        tests/meta/test_unroll.py checks it against the vmap form)."""
        x, y = batch
        depth = len(self.module.layers)
        h = x.flatten(2).to(params["layers.0.weight"].dtype)
        acts = [h]  # the input of every layer, then the last hidden activations (bias and ReLU in place: on
        # CPU a bmm and an add are faster than baddbmm's broadcast of the bias into its output)
        for i in range(depth):
            w, b = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
            h = torch.bmm(h, w.transpose(1, 2)).add_(b.unsqueeze(1)).relu_()
            acts.append(h)
        mult = self.module.readout.output_mult / h.shape[-1] if self.parameterization == "mup" else 1.0
        # logits class-major, (M, C, B): torch's CPU log_softmax over a short last axis (C = 10) is ~15× slower
        # than over a strided one, and it was the largest single cost of a small task's inner step
        logits = torch.bmm(params["readout.weight"], h.transpose(1, 2)).add_(params["readout.bias"].unsqueeze(2))
        if mult != 1.0:
            logits.mul_(mult)
        d = torch.log_softmax(logits, dim=1)
        label = y.unsqueeze(1)
        loss = d.gather(1, label).squeeze(1).mean(-1).neg_()
        # d loss / d logits = (softmax − onehot) / B, times the readout multiplier for its pre-activation
        d.exp_().scatter_add_(1, label, torch.full(label.shape, -1.0, dtype=d.dtype, device=d.device))
        d.mul_(mult / y.shape[-1])
        grads = {"readout.weight": torch.bmm(d, h), "readout.bias": d.sum(2)}
        d = torch.bmm(d.transpose(1, 2), params["readout.weight"])
        for i in reversed(range(depth)):
            # ReLU's backward from its output, as autograd does (one kernel: no mask tensor)
            d = torch.ops.aten.threshold_backward(d, acts[i + 1], 0)
            grads[f"layers.{i}.weight"] = torch.bmm(d.transpose(1, 2), acts[i])
            grads[f"layers.{i}.bias"] = d.sum(1)
            if i:
                d = torch.bmm(d, params[f"layers.{i}.weight"])
        return {k: grads[k] for k in params}, loss

    def batches(self, generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.data, ClassificationSource):
            x, y = self.data.batches(generator, n, self.batch_size)
        else:
            idx = torch.randint(0, self.data.x.shape[0], (n, self.batch_size), generator=generator)
            idx = idx.to(self.data.x.device)
            x, y = self.data.x[idx], self.data.y[idx]
        if self.label_noise > 0:  # fresh noise per draw: the data cannot be memorized (no draws when 0)
            flip = torch.rand(y.shape, generator=generator) < self.label_noise
            fresh = torch.randint(0, self.data.num_classes, y.shape, generator=generator)
            y = torch.where(flip.to(y.device), fresh.to(y.device), y)
        return x, y

    def _source(self) -> ClassificationSource:
        if not isinstance(self.data, ClassificationSource):
            raise ValueError(
                f"dataset {self.data.name!r} has no held-out split (the whole set is the training set); use a "
                "non-memorizable one: 'mnist1d', 'digits_aug' or 'teacher'"
            )
        return self.data

    def heldout_batches(self, generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` batches of ``batch_size`` held-out examples (no label noise)."""
        return self._source().batches(generator, n, self.batch_size, split="heldout")

    def heldout_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._source().heldout_set()


@dataclasses.dataclass(frozen=True)
class ImageMLPSpec:
    """What a family of image-MLP tasks is: data set (an image set or a non-memorizable source, see the
    module docstring), width, depth, batch and parameterization;
    ``label_noise`` replaces that fraction of each batch's labels by uniform random classes, drawn afresh
    every batch (the set can no longer be memorized: the loss keeps a floor, as on large data sets)."""

    dataset: str = "digits"
    width: int = 128
    depth: int = 3
    batch_size: int = 128
    parameterization: str = "mup"
    label_noise: float = 0.0


@functools.lru_cache(maxsize=8)
def _load(dataset: str, device: str) -> ImageClassificationData | ClassificationSource:
    if is_source(dataset):
        return load_source(dataset, device)
    return load_image_classification(dataset, device)


class ImageMLPFamily(TaskFamily):
    """All tasks of the family share the architecture; what a sample varies is the initialization and
    the data order, both drawn from the generator the estimator passes (so ± members stay paired)."""

    def __init__(self, spec: ImageMLPSpec, device: torch.device | str = "cpu"):
        self.spec = spec
        noise = f"_noise{spec.label_noise:g}" if spec.label_noise else ""
        self.name = f"{spec.parameterization}_mlp_w{spec.width}_d{spec.depth}_{spec.dataset}{noise}"
        data = _load(spec.dataset, str(torch.device(device)))
        self._task = ImageMLPTask(
            data, spec.width, spec.depth, spec.batch_size, spec.parameterization, label_noise=spec.label_noise
        )

    def sample(self, generator: torch.Generator) -> ImageMLPTask:
        return self._task


__all__ = [
    "LOG_LOSS_FLOOR",
    "META_LOSSES",
    "ImageMLPFamily",
    "ImageMLPSpec",
    "ImageMLPTask",
    "SPMLP",
    "Task",
    "TaskFamily",
]
