"""``mulo eval --preset models``: the models people train, written in plain ``torch.nn``.

* ``gpt`` — :class:`CharGPT`, a GPT-style byte-level language model: token and position embeddings, pre-LN
  blocks (causal self-attention through ``F.scaled_dot_product_attention``, a 4× GELU MLP), a final
  LayerNorm and a head tied to the token embedding; trained on the first 90% of
  :func:`mulo.data.offline.python_source_text`, scored on windows of the last 10%.
* ``cnn`` — :class:`SmallCNN`: three 3×3 convolutions (ReLU, one 2×2 max-pool), global average pooling and
  a linear head, on the 8×8 ``digits_aug`` images (fresh shifts and noise every batch; held-out digits).
* ``vit`` — :class:`TinyViT`: 2×2 patches embedded by a Linear, learned position embeddings, pre-LN
  transformer blocks with ``nn.MultiheadAttention``, mean pooling and a linear head, on ``digits_aug``.

MuLO trains each model after :func:`mulo.mup.prepare` (μP readout, μP init, 1/d_head attention, roles) at
lr 1, with a constant lr and with warmup-cosine. AdamW (weight decay 0) trains the model as written, at the
lr of a grid with the lowest mean held-out loss on the same task (tuning seeds), tuned per schedule; Celo2
(on request, ``optimizers=...,celo2``) likewise.
Reported: held-out loss and accuracy, the training loss on a fixed training sample, and the median wall
time of a whole training step (forward, backward, ``opt.step()``) and of ``opt.step()`` alone.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import mulo
from mulo.eval import common
from mulo.eval.common import Column, Env, Rows

MODELS = ("gpt", "cnn", "vit")
OPTIMIZERS = ("mulo", "adamw", "celo2")
DEFAULT_OPTIMIZERS = ("mulo", "adamw")
TUNED = ("adamw", "celo2")  # peak lr tuned by the grid on each model


class GPTBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """A GPT-style causal LM in plain ``torch.nn`` (standard init as written; the head shares the token
    embedding's weight)."""

    def __init__(self, vocab: int = 256, d: int = 128, heads: int = 4, layers: int = 2, context: int = 64):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.Sequential(*[GPTBlock(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight  # weight tying, as GPT-2

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        return self.head(self.ln(self.blocks(x)))


class SmallCNN(nn.Module):
    """Conv(1→c) → Conv(c→c) → max-pool 2 → Conv(c→2c) → global mean → Linear(2c → classes)."""

    def __init__(self, channels: int = 32, classes: int = 10, side: int = 8):
        super().__init__()
        self.side = side
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(2 * channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, self.side, self.side)
        return self.head(self.features(x).mean((2, 3)))


class ViTBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyViT(nn.Module):
    """Patch embedding (Linear on p×p patches) + learned positions → blocks → LayerNorm → mean → Linear."""

    def __init__(self, d: int = 64, heads: int = 4, depth: int = 1, patch: int = 2, side: int = 8, classes: int = 10):
        super().__init__()
        self.side, self.patch = side, patch
        tokens = (side // patch) ** 2
        self.embed = nn.Linear(patch * patch, d)
        self.pos = nn.Embedding(tokens, d)
        self.blocks = nn.Sequential(*[ViTBlock(d, heads) for _ in range(depth)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, n = self.patch, self.side // self.patch
        x = x.reshape(-1, n, p, n, p).permute(0, 1, 3, 2, 4).reshape(-1, n * n, p * p)
        x = self.embed(x) + self.pos(torch.arange(n * n, device=x.device))
        return self.head(self.ln(self.blocks(x)).mean(1))


@dataclasses.dataclass(frozen=True)
class ModelTask:
    model: str  # gpt | cnn | vit
    width: int  # d_model (gpt, vit) or channels (cnn)
    depth: int  # blocks (gpt, vit); the CNN has 3 convolutions
    steps: int
    batch: int
    heads: int = 4
    context: int = 64  # gpt

    @property
    def name(self) -> str:
        return f"{self.model}-w{self.width}-d{self.depth}-T{self.steps}"

    @property
    def dataset(self) -> str:
        return "bytes" if self.model == "gpt" else "digits_aug"

    def build(self) -> nn.Module:
        if self.model == "gpt":
            return CharGPT(256, self.width, self.heads, self.depth, self.context)
        if self.model == "cnn":
            return SmallCNN(self.width)
        if self.model == "vit":
            return TinyViT(self.width, self.heads, self.depth)
        raise ValueError(f"unknown model {self.model!r}; choose from {list(MODELS)}")


@dataclasses.dataclass(frozen=True)
class ModelsPreset:
    tasks: tuple[ModelTask, ...]
    seeds: int = 5
    grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    tune_seeds: int = 2
    train_sample: int = 4096
    eval_points: int = common.EVAL_POINTS


PRESETS = {
    "models": ModelsPreset(
        tasks=(
            ModelTask("gpt", 64, 2, 1000, 32, heads=4, context=64),
            ModelTask("cnn", 16, 3, 1000, 128),
            ModelTask("vit", 64, 1, 1000, 128, heads=4),
        ),
        eval_points=5,
        train_sample=2048,
    ),
    "models_quick": ModelsPreset(
        tasks=(
            ModelTask("gpt", 16, 1, 12, 4, heads=2, context=16),
            ModelTask("cnn", 4, 3, 12, 16),
            ModelTask(
                "vit", 24, 1, 12, 16, heads=2
            ),  # d ≠ the 16 patches (prepare reads a 16-row Embedding as a vocabulary)
        ),
        seeds=1,
        grid=(1e-3, 1e-2),
        tune_seeds=1,
        train_sample=128,
        eval_points=2,
    ),
}


def build_run(task: ModelTask, column: Column, seed: int, lr: float = 1.0) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model and optimizer of one run: MuLO gets the model converted by :func:`mulo.mup.prepare` (its
    param groups), AdamW the model as written (``model.parameters()``)."""
    torch.manual_seed(seed)  # the plain modules' own initialization
    model = task.build()
    if column.optimizer == "mulo":
        groups = mulo.mup.prepare(model, generator=torch.Generator().manual_seed(seed))
        if not isinstance(model.head, mulo.mup.MuReadout):  # prepare's readout choice, as a user gets it
            readout = [n for n, m in model.named_modules() if isinstance(m, mulo.mup.MuReadout)]
            raise RuntimeError(f"mulo.mup.prepare chose {readout} as the readout of {task.name}, not 'head'")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mulo.PlaceholderMetaWeightsWarning)
            return model, mulo.MuLO(groups, lr=lr, meta_weights=column.meta_weights)
    if column.optimizer == "adamw":
        return model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if column.optimizer == "celo2":  # the model as written, like AdamW; Celo2 routes matrices and vectors itself
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mulo.PlaceholderMetaWeightsWarning)
            return model, mulo.Celo2(model.parameters(), lr=lr, meta_weights=column.meta_weights)
    raise ValueError(f"unknown optimizer {column.optimizer!r}; choose from {list(OPTIMIZERS)}")


def train(task: ModelTask, column: Column, seed: int, env: Env, *, lr: float = 1.0, on_step=None) -> dict:
    """One run: its row (without provenance)."""
    from mulo import evaluation

    model, opt = build_run(task, column, seed, lr)

    weights = column.meta_weights or evaluation.default_weights(column.optimizer)
    row = common.run_row(task, column, seed, env, model, opt, lr=lr, weights=weights, on_step=on_step)
    parameters = sum(p.numel() for p in model.parameters())
    return {"protocol": "models", "sweep": "models", **row, "dataset": task.dataset, "parameters": parameters}


def run(
    out: str | Path,
    preset: str = "models",
    meta_weights=None,
    log=print,
    models=MODELS,
    optimizers=DEFAULT_OPTIMIZERS,
    schedules=common.SCHEDULES,
    celo2_weights=None,
) -> Path:
    """Run the plain-model comparison of ``preset``; one JSON line per run appended to ``out``."""
    from mulo import evaluation
    from mulo.lopt import pretrained

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[preset]
    models, optimizers, schedules = (common.split_names(v) for v in (models, optimizers, schedules))
    common.check_subset("models", models, MODELS)
    common.check_subset("optimizers", optimizers, OPTIMIZERS)
    common.check_subset("schedules", schedules, common.SCHEDULES)
    weights = common.split_names(meta_weights) or (pretrained.DEFAULT,)
    rows = Rows(out, evaluation.provenance() | {"preset": preset}, log)
    env = Env(cfg)
    cols = []
    for opt in (o for o in OPTIMIZERS if o in optimizers):
        names = {"mulo": weights, "celo2": common.split_names(celo2_weights) or (None,)}.get(opt, (None,))
        cols += [Column(opt, s, w) for s in common.SCHEDULES if s in schedules for w in names]
    tune_seeds = tuple(common.TUNE_SEED + s for s in range(cfg.tune_seeds))
    for task in (t for t in cfg.tasks if t.model in models):
        for col in cols:
            lr = 1.0
            if col.optimizer in TUNED:

                def train_at(lr, seed, task=task, col=col):
                    return {**train(task, col, seed, env, lr=lr), "sweep": "tune"}

                key = {"protocol": "models", "task": task.name, "optimizer": col.optimizer, "schedule": col.schedule}
                lr = common.tune(rows, key, cfg.grid, tune_seeds, train_at, f"{col.label} on {task.name}")
            for seed in range(cfg.seeds):
                rows.emit(train(task, col, seed, env, lr=lr))
    return Path(out)


__all__ = ["MODELS", "OPTIMIZERS", "PRESETS", "CharGPT", "ModelTask", "SmallCNN", "TinyViT", "build_run", "run"]
