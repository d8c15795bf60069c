"""``make demo``: train a small μP MLP on offline digits with MuLO and with AdamW, print and plot both."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import mulo
from mulo.data.offline import digits
from mulo.mup.models import MuMLP


def train(opt_name: str, steps: int, width: int, depth: int, batch: int, seed: int) -> list[float]:
    x, y = digits()
    gen = torch.Generator().manual_seed(seed)
    model = MuMLP(x.shape[1], width, depth, 10, generator=gen)
    if opt_name == "mulo":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mulo.backends.MuLOBackendNotice)
            opt = mulo.MuLO(mulo.mup.param_groups(model, model.roles()))
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    data_gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=data_gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def main(
    steps: int = 300, width: int = 128, depth: int = 3, batch: int = 128, seed: int = 0, out: str = "demo_out"
) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    curves, seconds = {}, {}
    for name in ("mulo", "adamw"):
        t0 = time.perf_counter()
        curves[name] = train(name, steps, width, depth, batch, seed)
        seconds[name] = time.perf_counter() - t0
    print(f"μP MLP width {width}, depth {depth}, digits 8×8, batch {batch}, seed {seed}")
    print(f"{'step':>6s} {'MuLO':>10s} {'AdamW':>10s}")
    every = max(1, steps // 12)
    for i in list(range(0, steps, every)) + [steps - 1]:
        print(f"{i:6d} {curves['mulo'][i]:10.4f} {curves['adamw'][i]:10.4f}")
    print(f"time: MuLO {seconds['mulo']:.1f}s, AdamW {seconds['adamw']:.1f}s")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "curves.json").write_text(json.dumps({"curves": curves, "seconds": seconds}) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, label in (("mulo", "MuLO"), ("adamw", "AdamW (lr 3e-3)")):
            ax.plot(curves[name], label=label, lw=1)
        ax.set(xlabel="step", ylabel="training loss", yscale="log", title=f"μP MLP w={width} on digits")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "curves.png", dpi=120)
        print(f"plot: {out_dir / 'curves.png'}")
    except ImportError:
        print("matplotlib not installed: no plot (curves are in curves.json)")
    return curves
