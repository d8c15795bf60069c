"""The meta-trainer: estimators (one per task family) → averaged meta-gradient → AdamW on θ (docs/ALGORITHM.md §7).

Per outer step: each estimator returns ĝ (non-finite entries → 0), the ĝ are averaged, AdamW (β 0.9/0.999,
eps 1e-8, weight decay 1e-4) proposes an update of θ, and the update is clipped to global norm 1.0; the
learning rate follows the config's warmup-cosine schedule.

Output directory ``DIR``:

* ``checkpoint.pt`` — every ``checkpoint_every`` outer steps and at the end, written atomically (temporary
  file + ``os.replace``): θ, the outer optimizer, every particle's state (inner parameters, optimizer
  accumulators, schedules, PES accumulators) and every RNG state. Running again with the same ``DIR``
  resumes exactly where the checkpoint stopped (bit-for-bit the same θ as an uninterrupted run);
  ``outer_steps`` may be raised to continue training, every other setting must match.
* ``log.jsonl`` — one JSON object per outer step (``outer_step``, ``meta_loss``, ``grad_norm``,
  ``update_norm``, ``lr``, ``seconds``, per-family meta-losses); lines past the checkpoint are dropped on
  resume, so each step appears once.
* ``meta_weights/`` — θ as the rule's network directory: an :class:`mulo.LOptNet`
  (``MuLO(meta_weights=DIR/meta_weights)``) or, with ``rule="celo2"``, a :class:`mulo.celo2.Celo2Net`
  (``Celo2(meta_weights=DIR/meta_weights)``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mulo.meta.estimators import ESTIMATORS, GradientEstimator
from mulo.meta.presets import MetaTrainConfig, family_labels
from mulo.meta.rules import lopt_config_for, rule_for  # noqa: F401 (lopt_config_for: μLO's)
from mulo.meta.tasks import ImageMLPFamily
from mulo.meta.truncation import LogUniformTruncation
from mulo.meta.unroll import PopulationUnroll

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
WEIGHTS_DIR = "meta_weights"
SNAPSHOTS = "snapshots"
FORMAT = "mulo-meta-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint in the output directory cannot be used; the message says what to do."""


def _map_tensors(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def check_output_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and make sure files can be written there (clear error otherwise)."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--out {path} exists and is not a directory; pass a directory path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PermissionError(
            f"--out {path} is not a writable directory ({e.strerror or e}); pass another --out"
        ) from e
    return path


def build_estimators(
    config: MetaTrainConfig, device: torch.device | str, inner_backend: str = "reference"
) -> list[GradientEstimator]:
    """One estimator per task family (each with its own population of ``num_pairs`` pairs); the inner
    optimizer steps run through ``inner_backend`` (the rule's population step: μLO's
    :func:`mulo.backends.population.backend_population_step`, Celo2's :func:`mulo.celo2.population.
    backend_population_step`)."""
    truncation = LogUniformTruncation(config.min_length, config.max_length, config.max_initial_offset)
    rule = rule_for(config)
    step_fn = rule.step_fn(inner_backend, device)
    estimators = []
    for spec in config.families:
        step = PopulationUnroll(
            ImageMLPFamily(spec, device),
            truncation,
            config.num_pairs,
            rule,
            step_fn=step_fn,
            meta_loss=config.meta_loss,
            **config.inner_options(),
        )
        estimators.append(ESTIMATORS[config.estimator](step, std=config.std, unroll_length=config.unroll_length))
    return estimators


class MetaTrainer:
    """Meta-trains θ with ``config`` into ``out`` (resuming from ``out/checkpoint.pt`` if there is one).

    Args:
        init_weights: meta-weights to start from (a directory or shipped name of the rule's network: LOptNet or
            Celo2Net); default: a fresh network drawn with the config's seed.
        progress: show a tqdm progress bar.
        inner_backend: the backend of the inner optimizer steps: ``"reference"`` (default: the vectorized
            population step), ``"auto"``, ``"cpu"``/``"triton"`` (all members in one fused call per pass),
            ``"cuda"`` (one fused step per member) — see :func:`mulo.backends.population.backend_population_step`.
            Not part of the config: a run may resume with another backend (results then differ in rounding).
    """

    def __init__(
        self,
        config: MetaTrainConfig,
        out: str | os.PathLike,
        *,
        device: torch.device | str = "cpu",
        init_weights: str | os.PathLike | None = None,
        progress: bool = True,
        inner_backend: str = "reference",
    ):
        self.config, self.device, self.progress = config, torch.device(device), progress
        self.init_weights = None if init_weights is None else str(init_weights)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
        self.out = check_output_dir(out)
        self.rule = rule_for(config)
        checkpoint = self._read_checkpoint()  # before anything is built or written: a bad one changes nothing
        self.estimators = build_estimators(config, self.device, inner_backend)
        if checkpoint is None:
            self._fresh_state(init_weights)
        else:
            self._restore(checkpoint)

    # ---- state ---------------------------------------------------------------------------------------
    def _fresh_state(self, init_weights) -> None:
        cfg = self.config
        if init_weights is not None:
            net = self.rule.load_net(init_weights)
        else:
            net = self.rule.fresh_net(torch.Generator().manual_seed(cfg.seed))
        self.theta = torch.nn.Parameter(self.rule.flatten(net).to(self.device))
        self.outer_opt = self._make_outer_opt()
        self.generators = [torch.Generator().manual_seed(cfg.seed * 1000 + 1 + i) for i in range(len(self.estimators))]
        self.states = [e.init_state(self.theta.detach(), g) for e, g in zip(self.estimators, self.generators)]
        self.next_step = 0

    def _make_outer_opt(self) -> torch.optim.AdamW:
        cfg = self.config
        return torch.optim.AdamW(
            [self.theta], lr=cfg.lr(0), betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )

    def _read_checkpoint(self) -> dict | None:
        path = self.out / CHECKPOINT
        if not path.exists():
            return None
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"{path} is unreadable or corrupted ({type(e).__name__}: {e}); nothing was changed. Delete it "
                "to start over in this directory, or pass a new --out."
            ) from e
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a mulo meta-training checkpoint ({FORMAT}); nothing was changed")
        saved = dict(ckpt["config"])
        now = self.config.to_json()
        saved.pop("outer_steps", None)
        now.pop("outer_steps", None)
        if saved != now:
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise CheckpointError(
                f"{path} was written with different settings ({', '.join(diff)}); only --outer-steps may change "
                "when resuming. Pass the same options or a new --out."
            )
        return ckpt

    def _restore(self, ckpt: dict) -> None:
        to_dev = lambda t: t.to(self.device)  # noqa: E731
        self.theta = torch.nn.Parameter(ckpt["theta"].to(self.device))
        self.outer_opt = self._make_outer_opt()
        self.outer_opt.load_state_dict(ckpt["outer_opt"])
        self.generators = []
        for state in ckpt["generators"]:
            g = torch.Generator()
            g.set_state(state)
            self.generators.append(g)
        states = []
        if len(ckpt["estimators"]) != len(self.estimators):
            raise CheckpointError("the checkpoint holds a different number of estimators; pass a new --out")
        for saved in ckpt["estimators"]:
            state = _map_tensors(saved, to_dev)
            # schedules live on the CPU (host-side bookkeeping, no device syncs)
            for key in ("inner_step", "length", "done"):
                state["unroll"][key] = saved["unroll"][key]
            states.append(state)
        self.states = states
        self.next_step = int(ckpt["next_step"])
        self.init_weights = ckpt.get("init_weights")
        self._trim_log(self.next_step)

    def _checkpoint(self) -> None:
        ckpt = {
            "format": FORMAT,
            "config": self.config.to_json(),
            "next_step": self.next_step,
            "theta": self.theta.detach().cpu(),
            "init_weights": self.init_weights,
            "outer_opt": _map_tensors(self.outer_opt.state_dict(), lambda t: t.cpu()),
            "estimators": [_map_tensors(s, lambda t: t.cpu()) for s in self.states],
            "generators": [g.get_state() for g in self.generators],
        }
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, self.out / CHECKPOINT)
        self.save_weights()
        # every checkpoint's meta-weights stay (≈ 10 KB each): a run that degrades later can ship an earlier θ
        # (python -m mulo.meta.ship --at-step N)
        self.meta_net().save_pretrained(self.out / SNAPSHOTS / f"step_{self.next_step}")

    def _trim_log(self, next_step: int) -> None:
        path = self.out / LOG
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["outer_step"] < next_step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by a kill mid-write
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in keep))
        os.replace(tmp, path)

    def meta_net(self):
        """θ as the rule's network (an LOptNet, or a Celo2Net for ``rule="celo2"``)."""
        info = {
            "name": "mulo meta-trained",
            "outer_steps": self.next_step,
            "config": self.config.to_json(),
            "init_weights": self.init_weights,  # None: a fresh network drawn with config.seed
        }
        return self.rule.to_net(self.theta.detach().cpu(), info)

    def save_weights(self) -> Path:
        return self.meta_net().save_pretrained(self.out / WEIGHTS_DIR)

    # ---- training --------------------------------------------------------------------------------------
    def outer_step(self) -> dict:
        """One outer iteration; returns its log record."""
        t0 = time.perf_counter()
        theta = self.theta.detach()
        grads, losses = [], []
        for est, state, gen in zip(self.estimators, self.states, self.generators):
            out = est.estimate(theta, state, gen)
            grads.append(torch.nan_to_num(out.grad, nan=0.0, posinf=0.0, neginf=0.0))
            losses.append(out.meta_loss)
        return self._update_theta(torch.stack(grads).mean(0), losses, t0)

    def _update_theta(self, grad: torch.Tensor, losses: list[float], t0: float) -> dict:
        """AdamW on θ with the outer schedule's lr and update clipping (one outer step); its log record."""
        cfg, step = self.config, self.next_step
        lr = cfg.lr(step)
        for group in self.outer_opt.param_groups:
            group["lr"] = lr
        self.theta.grad = grad.to(self.theta.dtype)
        before = self.theta.detach().clone()
        self.outer_opt.step()
        with torch.no_grad():
            update = self.theta - before
            norm = update.norm()
            scale = torch.clamp(cfg.clip_update_norm / norm.clamp_min(1e-30), max=1.0)
            self.theta.copy_(before + update * scale)
        self.theta.grad = None
        self.next_step += 1
        return {
            "outer_step": step,
            "meta_loss": sum(losses) / len(losses),
            "grad_norm": float(grad.norm()),
            "update_norm": float(norm * scale),
            "lr": lr,
            "seconds": time.perf_counter() - t0,
            "family_meta_loss": dict(zip(family_labels(cfg.families), losses)),
        }

    def run(self, *, on_step: Callable[[dict], None] | None = None) -> Path:
        """Train to ``config.outer_steps``; returns the meta-weights directory."""
        from tqdm import tqdm

        cfg = self.config
        if self.next_step >= cfg.outer_steps:  # a rerun of a finished run: say so instead of nothing
            print(
                f"mulo meta-train: {self.out} already holds all {cfg.outer_steps} outer steps; nothing to do "
                "(raise --outer-steps to train on, or choose a new --out)",
                file=sys.stderr,
            )
        bar = tqdm(total=cfg.outer_steps, initial=self.next_step, disable=not self.progress, desc="meta-train")
        with open(self.out / LOG, "a") as log:
            while self.next_step < cfg.outer_steps:
                record = self.outer_step()
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(meta_loss=f"{record['meta_loss']:.4f}", lr=f"{record['lr']:.2e}")
                if self.next_step % cfg.checkpoint_every == 0 or self.next_step == cfg.outer_steps:
                    self._checkpoint()
                if on_step is not None:
                    on_step(record)
        bar.close()
        if not (self.out / WEIGHTS_DIR).exists():
            self._checkpoint()
        return self.out / WEIGHTS_DIR


@torch.no_grad()
def evaluate(
    theta: torch.Tensor,
    config: MetaTrainConfig,
    *,
    steps: int = 50,
    seeds: int = 4,
    family: int = 0,
    device: torch.device | str = "cpu",
    seed: int = 12345,
    split: str = "train",
) -> float:
    """Mean normalized training loss of ``seeds`` fresh tasks of family ``family`` trained ``steps`` steps
    by the config's rule (μLO or Celo2) with meta-weights ``theta`` (all seeds batched in one population), with
    the config's inner-run options (schedule over ``steps``, weight decay, reparameterization).
    ``split="heldout"``: instead, the mean normalized loss of the trained parameters on the family's whole
    held-out set (non-memorizable data sets only). Lower is better."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    truncation = LogUniformTruncation(steps + 1, steps + 1, 1)
    unroll = PopulationUnroll(
        ImageMLPFamily(config.families[family], device),
        truncation,
        seeds,
        rule_for(config),
        **config.inner_options(),
    )
    if split == "heldout":
        heldout = unroll.task.heldout_set()  # before training: a data set without one fails at once
    gen = torch.Generator().manual_seed(seed)
    state = unroll.init_state(gen)
    # schedules count from step 0 here (the truncation's initial offset is 0)
    thetas = theta.detach().to(device, torch.float32).expand(2 * seeds, -1)
    out = unroll.unroll(state, thetas, steps, gen)
    if split == "train":
        return float(out.losses[:, :seeds].mean())
    x, y = (t.expand(2 * seeds, *t.shape) for t in heldout)
    _, loss = unroll.grads_and_losses(state, (x, y))
    return float(unroll.task.normalized_loss(loss[:seeds]).mean())


def meta_train(config: MetaTrainConfig, out: str | os.PathLike, **options) -> Path:
    """Meta-train (or resume) into ``out``; returns the directory of the final meta-weights. ``options``:
    those of :class:`MetaTrainer` (device, init_weights, progress, inner_backend)."""
    return MetaTrainer(config, out, **options).run()


__all__ = ["CheckpointError", "MetaTrainer", "build_estimators", "check_output_dir", "evaluate", "meta_train"]
