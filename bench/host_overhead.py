"""What a MuLO step costs the host, against torch's AdamW, on GPT-2 124M's list of 148 tensors.

    python bench/host_overhead.py                  # CPU: the cpu backend
    python bench/host_overhead.py --device cuda    # a GPU: every GPU backend (host time: no sync per step)

The tensors have GPT-2 124M's structure (wte, wpe, 12 blocks of 12 tensors, ln_f: 148 in all) with every
dimension shrunk to 8 (vocabulary 16, context 8), so the per-element work is negligible and what is left is
the per-step and per-tensor work of the host: Python, argument marshalling, launches. One ``opt.step()`` of
each optimizer over the same parameters and gradients, interleaved, ``--repeats`` rounds of ``--steps``
steps; the median (p20/p80) per step, and each optimizer's ratio to fused AdamW. Each MuLO backend also
steps the same number of elements as one tensor (``*_one_tensor``): the difference, ``per_tensor_ms``, is
the per-tensor host work without the element work (≈ 4 kFLOP of MLP per element, which the CPU backend does
on the host and a GPU backend on the device). On a GPU the timer stops
when ``step()`` returns (launches are asynchronous), which is the host overhead the issue bounds. Rows are
appended as JSON lines to bench/results/host_overhead.jsonl with provenance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mulo  # noqa: E402
from bench.common import gpt2_like, provenance, summarize, sync  # noqa: E402
from mulo.backends import available_backends  # noqa: E402

SET = gpt2_like("gpt2-124m-structure", 12, 8, vocab=16, ctx=8)


def optimizers(device: torch.device) -> dict:
    out = {
        "adamw_fused": lambda ps: torch.optim.AdamW(ps, fused=True),
        "adamw_foreach": lambda ps: torch.optim.AdamW(ps, foreach=True),
    }
    for backend in available_backends(device.type, torch.float32, auto=True):  # not Triton's CPU interpreter
        if backend != "reference":
            out[f"mulo_{backend}"] = lambda ps, b=backend: mulo.MuLO(ps, backend=b)
            out[f"mulo_{backend}_unplanned"] = lambda ps, b=backend: Unplanned(ps, backend=b)
    return out


class Unplanned(mulo.MuLO):
    """MuLO with its step plan dropped before every step: the full walk over the parameters and the three
    separate ops, as every step ran before the plan existed (the comparison row)."""

    def step(self, closure=None):
        self._plan = None
        return super().step(closure)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "host_overhead.jsonl"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = [torch.nn.Parameter(torch.randn(s.shape, device=device)) for s in SET.specs]
    # the same number of elements as one tensor: what a step costs without the per-tensor work (on the CPU
    # backend the MLP's per-element work is not negligible even here: ≈ 4 kFLOP per element)
    one = [torch.nn.Parameter(torch.randn(sum(q.numel() for q in params) // 8, 8, device=device))]
    for q in (*params, *one):
        q.grad = torch.randn_like(q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opts = {name: make(params) for name, make in optimizers(device).items()}
        for name, make in optimizers(device).items():
            if name.startswith("mulo_") and not name.endswith("_unplanned"):
                opts[f"{name}_one_tensor"] = make(one)
    params = [*params, *one]
    snapshot = [q.detach().clone() for q in params]
    times: dict[str, list[float]] = {name: [] for name in opts}
    for opt in opts.values():  # warm-up (state allocation, first-call work)
        for _ in range(5):
            opt.step()
    for _ in range(args.repeats):
        for name, opt in opts.items():
            sync(device)
            for _ in range(args.steps):
                t0 = time.perf_counter()
                opt.step()
                times[name].append((time.perf_counter() - t0) * 1e3)
            sync(device)
            with torch.no_grad():  # every optimizer steps the same values
                for q, s in zip(params, snapshot):
                    q.copy_(s)
    stats = {name: summarize(t) for name, t in times.items()}
    base = stats["adamw_fused"]["median_ms"]
    row = {
        "bench": "host_overhead",
        "set": SET.name,
        "tensors": len(SET.specs),
        "elements": sum(s.numel for s in SET.specs),
        "threads": args.threads,
        "step_ms": stats,
        "ratio_to_fused_adamw": {name: s["median_ms"] / base for name, s in stats.items()},
        # the step over the 148 tensors less the same elements as one tensor: the per-tensor host work, which
        # is what a GPU backend still pays on the host (its element work runs on the device)
        "per_tensor_ms": {
            name: stats[name]["median_ms"] - stats[f"{name}_one_tensor"]["median_ms"]
            for name in stats
            if f"{name}_one_tensor" in stats
        },
        **provenance(device),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    for name, s in stats.items():
        print(f"{name:24s} {s['median_ms']:8.3f} ms  ({row['ratio_to_fused_adamw'][name]:.2f}× fused AdamW)")
    for name, ms in row["per_tensor_ms"].items():
        print(f"{name}: per-tensor work {ms:.3f} ms = {ms / base:.2f}× fused AdamW's whole step")
    print(f"appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
