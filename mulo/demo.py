"""``make demo``: one plain ``torch.nn`` MLP on the offline 8×8 digits, trained by MuLO and by AdamW.

* The model is what a user writes: ``nn.Sequential`` of ``nn.Linear``/``nn.ReLU`` in PyTorch's default init.
* MuLO trains it after :func:`mulo.mup.prepare` (μP readout and init, roles) at its meta-trained setting
  ``lr=1`` — nothing tuned.
* AdamW trains it as written, at the learning rate of :data:`ADAMW_GRID` with the lowest validation loss.
* The digits are split once into train (1,197), validation (300: picks AdamW's lr) and test (300: the
  reported held-out loss and accuracy; no choice looks at it). Losses are full-split cross-entropies,
  never minibatch losses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import mulo
from mulo.data.offline import digits

ADAMW_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
SPLIT = (1197, 300, 300)  # train, validation, test


def split_digits(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    x, y = digits()
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    parts, start = {}, 0
    for name, n in zip(("train", "val", "test"), SPLIT):
        idx = order[start : start + n]
        parts[name], start = (x[idx], y[idx]), start + n
    return parts


def build_mlp(width: int, depth: int, seed: int) -> nn.Sequential:
    """``depth`` hidden ReLU layers of ``width``, PyTorch's default initialization."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = [nn.Linear(64, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(width, 10))


@torch.no_grad()
def evaluate(model: nn.Module, xy: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    """Cross-entropy and accuracy on a whole split."""
    logits = model(xy[0])
    return F.cross_entropy(logits, xy[1]).item(), (logits.argmax(1) == xy[1]).float().mean().item()


def train(optimizer: str, lr: float, data: dict, steps: int, width: int, depth: int, batch: int, seed: int) -> dict:
    """One run; the curve holds (step, train, validation, test loss) every ``steps // 30`` steps."""
    model = build_mlp(width, depth, seed)
    if optimizer == "mulo":
        opt = mulo.MuLO(mulo.mup.prepare(model, generator=torch.Generator().manual_seed(seed)), lr=lr)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    x, y = data["train"]
    gen = torch.Generator().manual_seed(seed + 1)
    every = max(1, steps // 30)
    curve, seconds = [], 0.0
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            curve.append((step, *(evaluate(model, data[k])[0] for k in ("train", "val", "test"))))
        if step == steps:
            break
        t0 = time.perf_counter()
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - t0
    test_loss, test_acc = evaluate(model, data["test"])
    return {
        "optimizer": optimizer,
        "lr": lr,
        "train_loss": curve[-1][1],
        "val_loss": curve[-1][2],
        "test_loss": test_loss,
        "test_acc": test_acc,
        "seconds": seconds,
        "curve": curve,
    }


def fmt(x: float) -> str:
    """Three significant digits, scientific when small: a loss of 3.2e-05 never prints as 0.0000."""
    return f"{x:.3g}"


def main(
    steps: int = 300, width: int = 128, depth: int = 3, batch: int = 128, seed: int = 0, out: str = "demo_out"
) -> dict:
    data = split_digits()
    print(
        f"plain torch.nn MLP ({depth} hidden layers of {width}) on 8×8 digits: {SPLIT[0]} train / {SPLIT[1]} "
        f"validation / {SPLIT[2]} test, {steps} steps of batch {batch}, seed {seed}"
    )
    print("AdamW, the lr picked by validation loss:")
    grid = [train("adamw", lr, data, steps, width, depth, batch, seed) for lr in ADAMW_GRID]
    for r in grid:
        print(f"  lr {r['lr']:<7g} validation loss {fmt(r['val_loss'])}")
    adamw = min(grid, key=lambda r: r["val_loss"])
    runs = {"mulo": train("mulo", 1.0, data, steps, width, depth, batch, seed), "adamw": adamw}
    label = {"mulo": "MuLO (after mulo.mup.prepare, lr 1)", "adamw": f"AdamW (lr {adamw['lr']:g}, tuned)"}
    print(f"\nheld-out test set ({SPLIT[2]} digits never trained on or tuned on):")
    print(f"  {'optimizer':38s} {'test loss':>9s} {'accuracy':>9s} {'train loss':>10s} {'training':>8s}")
    for name, r in runs.items():
        print(
            f"  {label[name]:38s} {fmt(r['test_loss']):>9s} {r['test_acc']:9.1%} {fmt(r['train_loss']):>10s} "
            f"{r['seconds']:7.1f}s"
        )
    print(
        "  (train loss: the whole training split. A train loss far below the test loss is memorization: the\n"
        "   test loss then grows with over-confident mistakes even while accuracy holds.)"
    )
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "curves.json").write_text(json.dumps({"runs": runs, "adamw_grid": grid}) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (curves are in curves.json)")
        return runs
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for name, r in runs.items():
        steps_, train_, _, test = zip(*r["curve"])
        axes[0].plot(steps_, test, label=label[name], lw=1.5)
        axes[1].plot(steps_, train_, label=label[name], lw=1.5)
    axes[0].set(ylabel="cross-entropy (linear axis)", title=f"held-out: {SPLIT[2]} test digits")
    axes[1].set(title=f"training set: all {SPLIT[0]} training digits")
    for ax in axes:
        ax.set(xlabel="training step", ylim=(0, None))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"plain MLP, {depth} hidden layers of {width}, on 8×8 digits")
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=120)
    print(f"plot: {out_dir / 'curves.png'}")
    return runs
