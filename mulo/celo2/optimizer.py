"""``Celo2``: the Celo2 learned optimizer as a drop-in ``torch.optim.Optimizer`` (docs/CELO2.md)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from mulo.backends import load_backend, resolve_backend
from mulo.celo2 import reference, spec
from mulo.celo2.network import Celo2Net, Celo2Weights
from mulo.distributed import is_dtensor
from mulo.optim.mulo import (
    NONFINITE_POLICIES,
    MuLO,
    _check_hparam,
    run_closure,
    warn_if_placeholder,
)


@dataclasses.dataclass(frozen=True)
class Celo2Options:
    backend: str = "auto"
    orthogonalize: bool = True
    normalize_axes: str = "last2"
    nonfinite: str = "skip"


def resolve_meta_weights(meta_weights: Celo2Net | str | os.PathLike | None) -> Celo2Net:
    """A ``Celo2Net`` from a ``Celo2Net``, a directory, a Hub id, a shipped name or ``None`` (the default)."""
    if isinstance(meta_weights, Celo2Net):
        return meta_weights
    if meta_weights is None:
        from mulo.celo2.pretrained import DEFAULT

        meta_weights = DEFAULT
    if isinstance(meta_weights, (str, os.PathLike)):
        return Celo2Net.from_pretrained(meta_weights)
    raise TypeError(
        "meta_weights must be a Celo2Net, a directory, a Hub id, a shipped name or None, got "
        f"{type(meta_weights).__name__}"
    )


class Celo2(Optimizer):
    r"""Celo2 (Moudgil, Knyazev, Belilovsky, 2026): a learned update rule whose step has unit RMS, so that the
    learning rate (and any ``torch.optim.lr_scheduler`` schedule) sets its size, as with AdamW.

    Routing: tensors of rank ≥ 2 take the learned rule — 30 features per element (each normalized by its RMS
    over the tensor's last two axes), a 30→8→8→3 network, Newton–Schulz orthogonalization of the direction,
    RMS normalization over the last two axes, then ``p ← p − lr · (step + weight_decay · p)``. Tensors of rank
    ≤ 1, and every tensor of a param group with ``embedding=True``, take AdamW with its own moments (equal to
    ``torch.optim.AdamW(lr=lr · adam_lr_mult, betas=adam_betas, eps=adam_eps, weight_decay=adam_weight_decay)``).
    Every gradient is clamped to [−1000, 1000] first.

    Args:
        params: parameters or param groups. Groups may set ``lr``, ``weight_decay``, ``embedding``,
            ``adam_lr_mult``, ``adam_betas``, ``adam_eps`` and ``adam_weight_decay``.
        lr: the step size (the learned step's RMS is 1). 1e-3 is the paper's peak with warmup + cosine.
        weight_decay: decoupled weight decay of the learned rule, ``lr · weight_decay · p`` with p before the step.
        meta_weights: a :class:`Celo2Net`, a directory or Hugging Face Hub id in the published Celo2 layout
            (``model.safetensors`` + ``config.json``), the name of Celo2 weights shipped with mulo
            (:func:`mulo.celo2.pretrained.names`), or ``None``: ``celo2_cpu``, meta-trained by mulo on CPU (the
            hand-set ``placeholder_handset_adam`` warns with :class:`~mulo.PlaceholderMetaWeightsWarning`).
        backend: ``"auto"`` (the fastest available: ``"cpu"`` on CPU when the native extension is built,
            ``"triton"`` on CUDA), ``"reference"`` (plain PyTorch, float64-capable, the oracle), ``"cpu"`` (fused
            C++ passes, :mod:`mulo.celo2.cpu`; float32/bfloat16/float16 CPU parameters) or ``"triton"`` (the same
            passes as Triton kernels, :mod:`mulo.celo2.triton`; float32/bfloat16/float16 CUDA parameters, or CPU
            ones in Triton's interpreter with ``TRITON_INTERPRET=1``).
        orthogonalize: Newton–Schulz on the learned direction (Celo2); ``False`` is Celo2-base.
        adam_lr_mult: the AdamW route's learning rate is ``lr · adam_lr_mult``.
        adam_betas, adam_eps: AdamW's moment decays and the epsilon added to √v̂.
        adam_weight_decay: AdamW's decoupled weight decay; ``None`` takes the group's ``weight_decay``.
        normalize_axes: ``"last2"`` (default, the public PyTorch port): features, Newton–Schulz and the step's
            RMS over each tensor's last two axes as stored — a conv kernel (O, I, H, W) per (o, i) slice over
            H × W. ``"io"``: a tensor of rank ≥ 3 is read as the optax original sees it, (*spatial, I, O):
            over (I, O) per spatial position (its Adafactor axes follow that shape too). 2-d tensors are the
            same under both.
        nonfinite: a gradient with an inf or NaN (before the clamp): ``"skip"`` (default) leaves that tensor and
            its state unchanged and counts it in ``state["nonfinite_skips"]`` (:meth:`nonfinite_skips`), decided
            on the device without a host sync; ``"raise"`` checks every gradient first (one host sync) and raises
            ``FloatingPointError`` naming the parameter, before anything changes.

    State per parameter (``self.state[p]``, float32 — float64 for float64 parameters): the learned rule keeps
    ``step``, ``momentum`` (3, *S), ``second_moment`` (S), ``row`` and ``col`` (3, …: the Adafactor
    accumulators of the shape the rule reads), ``nonfinite_skips``; the AdamW route ``step``, ``exp_avg``,
    ``exp_avg_sq``, ``nonfinite_skips``. ``step`` counts applied updates (float32 0-d on the parameter's device).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        meta_weights: Celo2Net | str | os.PathLike | None = None,
        backend: str = "auto",
        *,
        orthogonalize: bool = True,
        adam_lr_mult: float = 1.0,
        adam_betas: tuple[float, float] = spec.ADAM_BETAS,
        adam_eps: float = spec.ADAM_EPS,
        adam_weight_decay: float | None = None,
        normalize_axes: str = "last2",
        nonfinite: str = "skip",
    ):
        for name, value in (
            ("lr", lr),
            ("weight_decay", weight_decay),
            ("adam_lr_mult", adam_lr_mult),
            ("adam_eps", adam_eps),
        ):
            _check_hparam(name, value)
        if adam_weight_decay is not None:
            _check_hparam("adam_weight_decay", adam_weight_decay)
        if not isinstance(backend, str):
            raise ValueError(f"backend must be 'auto' or the name of one of Celo2's backends, got {backend!r}")
        if backend != "auto":
            load_backend(backend, rule="celo2")  # unknown → ValueError, unavailable → BackendUnavailable with the fix
        if not isinstance(orthogonalize, bool):
            raise TypeError(f"orthogonalize must be True (Celo2) or False (Celo2-base), got {orthogonalize!r}")
        if normalize_axes not in spec.NORMALIZE_AXES:
            raise ValueError(f"normalize_axes must be one of {spec.NORMALIZE_AXES}, got {normalize_axes!r}")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        self.options = Celo2Options(backend, orthogonalize, normalize_axes, nonfinite)
        self.net = resolve_meta_weights(meta_weights)
        warn_if_placeholder(
            self.net, "Celo2", "or meta_weights=None (mulo's meta-trained celo2_cpu), or published Celo2 weights "
            "(docs/CELO2.md), for a learned rule.",
        )  # fmt: skip
        self._weights_cache: dict[tuple[torch.device, torch.dtype], tuple[int, Celo2Weights]] = {}
        self._backends: dict[tuple[torch.device, torch.dtype], Any] = {}
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            embedding=False,
            adam_lr_mult=adam_lr_mult,
            adam_betas=tuple(adam_betas) if isinstance(adam_betas, (list, tuple)) else adam_betas,
            adam_eps=adam_eps,
            adam_weight_decay=adam_weight_decay,
        )
        super().__init__(params, defaults)

    # ---- param groups ------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        where = f"param_groups[{len(self.param_groups) - 1}]"
        for key in ("lr", "weight_decay", "adam_lr_mult", "adam_eps"):
            _check_hparam(f"{where}['{key}']", group[key])
        if group["adam_weight_decay"] is not None:
            _check_hparam(f"{where}['adam_weight_decay']", group["adam_weight_decay"])
        betas = group["adam_betas"]
        if not (
            isinstance(betas, tuple)
            and len(betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in betas)
        ):
            raise ValueError(f"{where}['adam_betas'] must be two numbers in [0, 1), e.g. (0.9, 0.95); got {betas!r}")
        if not isinstance(group["embedding"], bool):
            raise TypeError(f"{where}['embedding'] must be True or False, got {group['embedding']!r}")
        sharded = [i for i, p in enumerate(group["params"]) if is_dtensor(p)]
        if sharded:
            raise TypeError(
                f"{where}['params'][{sharded[0]}] is a DTensor (FSDP2 or tensor-parallel sharding); Celo2 normalizes "
                "and orthogonalizes over whole matrices and has no sharded step yet. Use mulo.MuLO, which steps "
                "DTensor parameters exactly, or Celo2 with DDP or unsharded parameters."
            )
        dtypes = [(i, p.dtype) for i, p in enumerate(group["params"]) if p.is_complex() or not p.is_floating_point()]
        if dtypes:
            raise TypeError(
                f"{where}['params'][{dtypes[0][0]}] has dtype {dtypes[0][1]}; Celo2 optimizes real floating tensors "
                "only (view complex parameters with torch.view_as_real)"
            )

    # ---- state ---------------------------------------------------------------------------------------
    @staticmethod
    def uses_adamw(p: torch.Tensor, group: dict[str, Any]) -> bool:
        """Whether ``p`` (in ``group``) takes the AdamW route: rank ≤ 1 or an ``embedding=True`` group."""
        return p.dim() <= 1 or group["embedding"]

    def _expected_shapes(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        if self.uses_adamw(p, group):
            return reference.adamw_state_shapes(p.shape)
        return reference.learned_state_shapes(p.shape, self.options.normalize_axes)

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        dtype = reference.compute_dtype(p)
        return reference.init_state(p.shape, self.uses_adamw(p, group), self.options.normalize_axes, dtype, p.device)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Like ``Optimizer.load_state_dict`` but every state tensor keeps its saved dtype (float32 state of
        bf16 parameters stays float32) and goes to its parameter's device; checks each state's keys and shapes."""
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        saved = {k: dict(v) for k, v in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group["adam_betas"] = tuple(group["adam_betas"])
        placed = [(p, g) for g in self.param_groups for p in g["params"]]
        for pid, (p, group) in zip(ids, placed):
            if pid not in saved:
                continue
            expected = self._expected_shapes(p, group)
            got = {k: tuple(v.shape) for k, v in saved[pid].items() if isinstance(v, torch.Tensor)}
            if got != expected:
                raise ValueError(
                    f"state_dict: the state of parameter {pid} (shape {tuple(p.shape)}) has {got}, expected "
                    f"{expected} (a {'AdamW' if self.uses_adamw(p, group) else 'learned-rule'} tensor, "
                    f"normalize_axes={self.options.normalize_axes!r})"
                )
            self.state[p] = {k: v.to(device=p.device, copy=True) for k, v in saved[pid].items()}

    nonfinite_skips = MuLO.nonfinite_skips

    # ---- the step ----------------------------------------------------------------------------------
    _meta_weights = MuLO._meta_weights  # the network's copy per (device, dtype), refreshed when it changes

    def backend_for(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Any:
        """The backend this optimizer runs for learned-rule tensors of ``dtype`` on ``device`` (``"auto"``: the
        best available there, announced once; an explicit backend that cannot run them raises, naming the fix)."""
        key = (torch.device(device), dtype)
        if key not in self._backends:
            self._backends[key] = resolve_backend(self.options.backend, *key, rule="celo2")
        return self._backends[key]

    @staticmethod
    def _raise_on_nonfinite(where: list[tuple[int, int, torch.Tensor]]) -> None:
        """One host sync per device; raise naming the first parameter whose gradient has an inf or NaN."""
        finite: dict[int, bool] = {}
        for device in {g.device for _, _, g in where}:
            idx = [i for i, (_, _, g) in enumerate(where) if g.device == device]
            finite.update(zip(idx, torch.stack([reference.grad_is_finite(where[i][2]) for i in idx]).tolist()))
        first = next((i for i in range(len(where)) if not finite[i]), None)
        if first is not None:
            gi, pi, g = where[first]
            raise FloatingPointError(
                f"param_groups[{gi}]['params'][{pi}] (shape {tuple(g.shape)}) has a non-finite gradient (inf or "
                "NaN); nothing was updated. Use Celo2(nonfinite='skip') to skip such updates."
            )

    @staticmethod
    def _check_grad(name: str, p: torch.Tensor, g: torch.Tensor) -> None:
        problem = (
            "has a sparse gradient; Celo2 needs dense gradients (use nn.Embedding(sparse=False))"
            if g.is_sparse
            else "has a complex gradient; Celo2 is real-valued"
            if g.is_complex()
            else f"has a gradient of shape {tuple(g.shape)} for a parameter of shape {tuple(p.shape)}"
            if g.shape != p.shape
            else None
        )
        if problem:
            raise (TypeError if g.is_complex() else RuntimeError)(f"{name} {problem}")

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = run_closure(closure)
        learned: dict[tuple, tuple[list, list, list, list, list]] = {}  # per (device, dtype)
        adamw: list[tuple] = []
        where: list[tuple[int, int, torch.Tensor]] = []
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                self._check_grad(f"param_groups[{gi}]['params'][{pi}]", p, g)
                state = self.state[p]
                if not state:
                    state.update(self._init_state(p, group))
                where.append((gi, pi, g))
                if self.uses_adamw(p, group):
                    wd = group["adam_weight_decay"]
                    wd = group["weight_decay"] if wd is None else wd
                    lr = group["lr"] * group["adam_lr_mult"]
                    adamw.append((p, g, state, lr, group["adam_betas"], group["adam_eps"], wd))
                    continue
                b = learned.setdefault((p.device, p.dtype), ([], [], [], [], []))
                for lst, value in zip(b, (p, g, state, group["lr"], group["weight_decay"])):
                    lst.append(value)

        if self.options.nonfinite == "raise" and where:
            self._raise_on_nonfinite(where)
        for (device, dtype), (params, grads, states, lrs, wds) in learned.items():
            weights = self._meta_weights(device, reference.compute_dtype(params[0]))
            self.backend_for(device, dtype).step(
                params,
                grads,
                states,
                lrs,
                wds,
                weights,
                orthogonalize=self.options.orthogonalize,
                axes=self.options.normalize_axes,
            )
        for args in adamw:
            reference.adamw_step(*args)
        return loss
