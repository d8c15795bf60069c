"""What does a μLO (or Celo2) step cost compared with AdamW, on my model, on my device — and how close is it to
what the hardware allows?

    python bench/step_time.py --quick                       # CPU-sized subset, well under a minute
    python bench/step_time.py --device cuda                 # model-shaped sets + synthetic 1M.. largest
    python bench/step_time.py --sets gpt2-124m,vit-b16 --sizes 1048576,16777216 --backends reference

Every available mulo backend (``mulo.backends.available_backends(device, auto=True)``, or ``--backends``)
runs against torch AdamW (for-loop, foreach, fused) on the same parameters in the same run (``triton`` also in
its deterministic mode, rows ``mulo_deterministic``: ``torch.use_deterministic_algorithms(True)``), and so does every
Celo2 backend (``--celo2-backends``; rows ``celo2`` and ``celo2_base`` = orthogonalize off), with the batched
Newton–Schulz of the set's matrices timed alone (row ``celo2_newton_schulz``: part of each ``celo2`` row). Timing:
CUDA events with an L2 flush on a GPU, ``perf_counter`` on CPU; warm-up steps (the first allocates the
state) are not timed; each timed step sees the next of several rotating gradient sets, so caches don't
flatter small sizes. Each row: median and p20/p80, the ratio to fused AdamW measured in the same run,
bytes and FLOPs by docs/ALGORITHM.md §5's model, the fraction of the floor set by the copy bandwidth and matmul
peak measured in the same run, peak memory (GPU), optimizer-state bytes per element, and provenance.
Rows are APPENDED as JSON lines to bench/results/step_time.jsonl (``--out``, repeatable). A ``--quick``
run only prints its rows unless ``--out`` is given: trying the benchmark never dirties the repository.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import common

ADAMW_VARIANTS = {
    "adamw_fused": {"fused": True},
    "adamw_foreach": {"foreach": True},
    "adamw_forloop": {"foreach": False},
}
BASELINE = "adamw_fused"
QUICK_SETS = ["gpt2-tiny", "vit-tiny", "llama-tiny"]
QUICK_SIZES = [1 << 16, 1 << 18, 1 << 20]
FULL_SETS = ["gpt2-124m", "vit-b16", "gpt2-355m", "gpt3-xl-1.3b", "llama-1b"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Bytes per element a synthetic run needs besides backend scratch: params + 2 gradient sets + μLO state.
SYNTHETIC_BYTES_PER_ELEMENT = 48


def fused_adamw_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch has fused AdamW for ``device``/``dtype`` (CPU since torch 2.4): one tiny step."""
    p = torch.nn.Parameter(torch.zeros(4, device=device, dtype=dtype))
    p.grad = torch.ones_like(p)
    try:
        torch.optim.AdamW([p], fused=True).step()
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def synthetic_sizes(device: torch.device, spec: str) -> list[int]:
    """``--sizes``: a comma list of element counts, or ``auto`` = 1M, 4M, 16M, … up to the largest whose
    parameters, two gradient sets and μLO state fit in 90% of free memory (CPU: up to 16M)."""
    if spec != "auto":
        return [int(float(s)) for s in spec.split(",") if s]
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        limit = 0.9 * free / SYNTHETIC_BYTES_PER_ELEMENT
    else:
        limit = 1 << 24
    sizes, n = [], 1 << 20
    while n <= limit:
        sizes.append(n)
        n *= 4
    return sizes


class Deterministic:
    """An optimizer whose steps run with ``torch.use_deterministic_algorithms(True)`` (the flag restored after
    each step): the ``mulo_deterministic`` rows time the triton backend's deterministic mode."""

    def __init__(self, opt: torch.optim.Optimizer):
        self.opt, self.state = opt, opt.state

    def step(self) -> None:
        before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        torch.use_deterministic_algorithms(True)
        try:
            self.opt.step()
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])


class NewtonSchulzOnly:
    """A stand-in optimizer whose step is Celo2's Newton–Schulz alone: the directions of the set's ≥ 2-d
    tensors (random, float32) stacked per slice shape as the cpu backend stacks them, one batched chain each."""

    def __init__(self, params: list[torch.Tensor]):
        from mulo.celo2 import cpu, reference

        self._ns = reference.newton_schulz
        matrices = [p for p in params if p.dim() >= 2]
        self.buffers, views = cpu._direction_buffers(matrices)
        for v in views:
            v.copy_(torch.randn(v.shape))
        self.state: dict = {}

    def step(self) -> None:
        for buf in self.buffers.values():
            self._ns(buf)


def optimizers(
    setup: common.Setup,
    device: torch.device,
    dtype: torch.dtype,
    backends: list[str],
    state_dtype: str | None,
    celo2_backends: list[str] = (),
) -> list[tuple[str, str, Callable[[], torch.optim.Optimizer]]]:
    """(optimizer, backend, factory) in measuring order: the AdamW baseline first."""
    import mulo

    out = []
    for name, kw in ADAMW_VARIANTS.items():
        if name == "adamw_fused" and not fused_adamw_supported(device, dtype):
            continue
        out.append((name, "torch", lambda kw=kw: torch.optim.AdamW(setup.groups(1e-3, scale_lr=True), **kw)))
    for b in backends:
        out.append(("mulo", b, lambda b=b: mulo.MuLO(setup.groups(1.0), backend=b, state_dtype=state_dtype)))
        if b == "triton":  # its deterministic mode: per-chunk records and fixed-order sums instead of atomics
            out.append(("mulo_deterministic", b, lambda b=b: Deterministic(
                mulo.MuLO(setup.groups(1.0), backend=b, state_dtype=state_dtype))))  # fmt: skip
    for b in celo2_backends:  # Celo2's lr is the step's RMS: one group, the paper's 1e-3
        for name, orth in (("celo2", True), ("celo2_base", False)):
            out.append((name, b, lambda b=b, o=orth: mulo.Celo2(setup.params, lr=1e-3, backend=b, orthogonalize=o)))
    if celo2_backends:
        out.append(("celo2_newton_schulz", "torch", lambda: NewtonSchulzOnly(setup.params)))
    return out


# ---- Celo2's byte / FLOP model per pass (docs/CELO2.md "Cost") ---------------------------------------------
CELO2_MLP_MACS = 30 * 8 + 8 * 8 + 8 * 2  # 320: the network up to the two outputs the step reads


def celo2_cost(pset: common.ParamSet, optimizer: str, param_bytes: int, grad_bytes: int) -> dict:
    """Minimum bytes and FLOPs of one fused Celo2 step (float32 state, direction in float32). Per element of
    a ≥ 2-d tensor: A reads g; B reads g, p, m₁₋₃, v and writes m₁₋₃, v; C reads g, p, m, v and (Celo2) writes
    d; Celo2's E reads d twice (its per-slice RMS, then the update) and reads/writes p: 3G + 4P + 12S + 3D;
    Celo2-base's E recomputes d instead (reads g, p, m, v, writes p): 4G + 4P + 16S and a second network pass.
    Row/col accumulators are O(rows + cols); ≤ 1-d tensors are charged AdamW's floor. Newton–Schulz (Celo2):
    per slice (r ≤ c) 5 × (4r²c + 2r³) FLOPs on top of the network's 2 × 320 per element and pass."""
    orth = optimizer == "celo2"
    nbytes = flops = 0
    for spec in pset.specs:
        n = math.prod(spec.shape) if spec.shape else 1
        if len(spec.shape) < 2:
            nbytes += common.adamw_bytes(spec.shape, param_bytes, grad_bytes)
            flops += common.ADAMW_FLOPS_PER_ELEMENT * n
            continue
        per = 3 * grad_bytes + 4 * param_bytes + 12 * 4 + 3 * 4 if orth else 4 * grad_bytes + 4 * param_bytes + 16 * 4
        nbytes += n * per
        flops += n * 2 * CELO2_MLP_MACS * (1 if orth else 2)
        if orth:
            r, c = sorted(spec.shape[-2:])
            flops += (n // (r * c)) * 5 * (4 * r * r * c + 2 * r**3)
    return {"bytes_model": nbytes, "flops_model": flops}


def state_nbytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size() for st in opt.state.values() for t in st.values() if isinstance(t, torch.Tensor)
    )


def measure(
    factory: Callable[[], torch.optim.Optimizer],
    setup: common.Setup,
    timer: common.Timer,
    device: torch.device,
    warmup: int,
    iters: int,
    min_iters: int,
    max_seconds: float,
) -> dict:
    """Warm up (the first step allocates the state), then time up to ``iters`` steps within ``max_seconds``."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    opt = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = factory()
            t0 = time.perf_counter()
            for i in range(warmup):
                setup.use_grads(i)
                opt.step()
            common.sync(device)
            per_step = (time.perf_counter() - t0) / max(warmup, 1)
            n = max(min_iters, min(iters, int(max_seconds / max(per_step, 1e-9))))
            times = timer.time(lambda i, o=opt: o.step(), setup.use_grads, n, start=warmup)
        out = {"status": "ok", **common.summarize(times)}
        state = state_nbytes(opt)
        out.update(state_bytes=state, state_bytes_per_element=state / setup.pset.numel)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
            out.update(peak_mem_bytes=peak, peak_extra_bytes=peak - base)
        else:
            out.update(peak_mem_bytes=None, peak_extra_bytes=None)
        return out
    except torch.OutOfMemoryError as e:
        return {"status": "oom", "error": str(e).splitlines()[0][:300]}
    except Exception as e:  # one failing backend must not lose the other rows; reported, exit code 1
        return {"status": "error", "error": f"{type(e).__name__}: {e}"[:500]}
    finally:
        opt = None  # free the state before the next measurement
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def run_set(
    pset: common.ParamSet, args: argparse.Namespace, device: torch.device, ctx: dict, deadline: float
) -> list[dict]:
    dtype = DTYPES[args.dtype]
    grad_dtype = DTYPES[args.grad_dtype] if args.grad_dtype else dtype
    itemsize = torch.tensor([], dtype=grad_dtype).element_size()
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    k = common.grad_sets_for(pset, itemsize, common.cache_bytes(device), free)
    try:
        setup = common.make_setup(pset, device, dtype, grad_dtype, n_grad_sets=k, seed=args.seed)
    except torch.OutOfMemoryError as e:
        print(f"  {pset.name}: parameters and gradients do not fit ({str(e).splitlines()[0][:120]})", file=sys.stderr)
        return []
    timer = common.Timer(device)
    p_bytes = torch.tensor([], dtype=dtype).element_size()
    s_bytes = 2 if args.state_dtype == "bfloat16" else (8 if dtype == torch.float64 else 4)
    rows = []
    for optimizer, backend, factory in optimizers(
        setup, device, dtype, ctx["backends"], args.state_dtype, ctx["celo2_backends"]
    ):
        if time.monotonic() > deadline:
            print(f"  budget spent: skipping {optimizer}/{backend} on {pset.name}", file=sys.stderr)
            continue
        limit = ctx["max_n"].get(backend)
        if limit is not None and pset.numel > limit:
            print(f"  {backend}: {pset.name} is above --max-n {backend}={limit:g}; skipped", file=sys.stderr)
            continue
        res = measure(factory, setup, timer, device, args.warmup, args.iters, args.min_iters, args.max_seconds)
        opt_kind = "mulo" if optimizer == "mulo" else "adamw"
        if optimizer.startswith("celo2"):
            cost = celo2_cost(pset, optimizer, p_bytes, itemsize)
        else:
            cost = common.model_cost(pset, opt_kind, p_bytes, itemsize, s_bytes if opt_kind == "mulo" else p_bytes)
        median = res.get("median_ms")
        row = {
            "schema": common.SCHEMA,
            "run_id": ctx["run_id"],
            **ctx["provenance"],
            **ctx["floors"],
            "set": pset.name,
            "n_elements": pset.numel,
            "n_tensors": len(pset.specs),
            "shapes": pset.shape_summary(),
            "param_dtype": args.dtype,
            "grad_dtype": str(grad_dtype).removeprefix("torch."),
            "state_dtype": (args.state_dtype or "float32")
            if opt_kind == "mulo" or optimizer.startswith("celo2")
            else args.dtype,
            "optimizer": optimizer,
            "backend": backend,
            "timer": timer.kind,
            "warmup": args.warmup,
            "grad_sets": k,
            **res,
            "ns_per_element": median * 1e6 / pset.numel if median else None,
            **cost,
            "bytes_per_element_model": cost["bytes_model"] / pset.numel,
            "achieved_GBps": cost["bytes_model"] / (median * 1e-3) / 1e9 if median else None,
            **common.floor_fields(cost, ctx["floors"], median),
        }
        rows.append(row)
    base = next((r for r in rows if r["optimizer"] == BASELINE and r["status"] == "ok"), None)
    for r in rows:
        r["baseline"] = BASELINE if base else None
        ok = base is not None and r.get("median_ms")
        r["ratio_to_adamw_fused"] = r["median_ms"] / base["median_ms"] if ok else None
    setup.release()
    del setup, timer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        if r["status"] != "ok":
            print(f"  {r['optimizer']:14s} {r['backend']:10s} {r['status']}: {r.get('error', '')[:100]}")
            continue
        ratio = f"{r['ratio_to_adamw_fused']:8.2f}x" if r["ratio_to_adamw_fused"] is not None else "       -"
        print(
            f"  {r['optimizer']:14s} {r['backend']:10s} {r['median_ms']:10.3f} ms [{r['p20_ms']:.3f}, "
            f"{r['p80_ms']:.3f}] {ratio}  {r['ns_per_element']:8.2f} ns/elem  floor {r['frac_of_floor']:6.1%}  "
            f"state {r['state_bytes_per_element']:5.1f} B/elem"
        )


def parse_max_n(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--max-n takes BACKEND=N (e.g. reference=3e8), got {item!r}")
        out[name] = float(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU-sized subset: tiny model sets and 64K..1M synthetic")
    ap.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available, else cpu)")
    ap.add_argument("--sets", default=None, help=f"comma list of {sorted(common.MODEL_SETS)} ('' for none)")
    ap.add_argument("--sizes", default=None, help="synthetic sizes: comma list of element counts, 'auto', or ''")
    ap.add_argument("--backends", default=None, help="comma list of mulo backends (default: all available here)")
    ap.add_argument(
        "--celo2-backends",
        default=None,
        help="comma list of Celo2 backends (default: all available here but Triton's CPU interpreter; '' for none)",
    )
    ap.add_argument("--max-n", action="append", default=[], help="BACKEND=N: skip sets above N elements")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--grad-dtype", default=None, choices=sorted(DTYPES))
    ap.add_argument("--state-dtype", default=None, choices=["bfloat16"], help="μLO state dtype (default float32)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None, help="most timed steps per measurement")
    ap.add_argument("--min-iters", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=None, help="time budget per measurement")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting measurements after this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out",
        action="append",
        default=None,
        help="JSONL file(s) to append rows to (default: bench/results/step_time.jsonl; with --quick: none)",
    )
    return ap


def output_paths(args: argparse.Namespace) -> list[Path]:
    """Where rows are appended: every ``--out``; by default the tracked results file, except for ``--quick``."""
    if args.out:
        return [Path(p) for p in args.out]
    return [] if args.quick else [common.RESULTS_DIR / "step_time.jsonl"]


def run(argv: list[str] | None = None) -> list[dict]:
    """Parse ``argv``, measure, append rows to every ``--out``; returns the rows."""
    args = build_parser().parse_args(argv)
    from mulo.backends import available_backends, known_backends

    if args.quick and args.device is None:
        args.device = "cpu"
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    gpu = device.type == "cuda"
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.iters = args.iters if args.iters is not None else (20 if gpu else 5)
    args.max_seconds = args.max_seconds if args.max_seconds is not None else (10.0 if gpu else 3.0)
    if args.sets is None:
        args.sets = ",".join(QUICK_SETS if args.quick else FULL_SETS)
    if args.sizes is None:
        args.sizes = ",".join(map(str, QUICK_SIZES)) if args.quick else "auto"
    dtype = DTYPES[args.dtype]
    if args.backends is None:
        backends = available_backends(device, dtype, auto=True)
    else:
        backends = [b for b in args.backends.split(",") if b]
        unknown = sorted(set(backends) - set(known_backends()))
        if unknown:
            raise SystemExit(f"--backends: unknown {unknown}; known: {known_backends()}")
        here = available_backends(device, dtype)
        missing = [b for b in backends if b not in here]
        if missing:
            print(f"not available on {device} ({dtype}): {missing}; measuring {[b for b in backends if b in here]}")
        backends = [b for b in backends if b in here]
    not_here = sorted(set(known_backends()) - set(backends))
    print(f"mulo backends measured on {device}: {backends}" + (f" (not measured: {not_here})" if not_here else ""))
    celo2_here = available_backends(device, dtype, rule="celo2")
    if args.celo2_backends is None:  # as for μLO: what "auto" may pick here (not Triton's CPU interpreter)
        celo2_backends = available_backends(device, dtype, auto=True, rule="celo2")
    else:
        celo2_backends = [b for b in args.celo2_backends.split(",") if b]
        unknown = sorted(set(celo2_backends) - set(known_backends("celo2")))
        if unknown:
            raise SystemExit(f"--celo2-backends: unknown {unknown}; known: {known_backends('celo2')}")
        celo2_backends = [b for b in celo2_backends if b in celo2_here]
    print(f"Celo2 backends measured on {device}: {celo2_backends}")

    psets = [common.param_set(s) for s in args.sets.split(",") if s]
    psets += [common.synthetic(n) for n in synthetic_sizes(device, args.sizes)]
    outs = output_paths(args)
    if not outs:
        print("--quick: rows are printed, not saved (pass --out FILE to append them to FILE)")
    ctx = {
        "run_id": uuid.uuid4().hex[:12],
        "provenance": common.provenance(device),
        "floors": common.device_floors(device),
        "backends": backends,
        "celo2_backends": celo2_backends,
        "max_n": parse_max_n(args.max_n),
    }
    f = ctx["floors"]
    print(
        f"{ctx['provenance']['device']}: copy {f['copy_bandwidth_GBps']:.1f} GB/s, fp32 matmul "
        f"{f['matmul_fp32_TFLOPs']:.2f} TFLOP/s" + (f", tf32 {f['matmul_tf32_TFLOPs']:.1f}" if gpu else "")
    )
    deadline = time.monotonic() + (args.budget_s if args.budget_s is not None else math.inf)
    all_rows = []
    for pset in psets:
        if time.monotonic() > deadline:
            print(f"budget spent: skipping {pset.name}", file=sys.stderr)
            continue
        print(f"{pset.name}: {pset.numel:,} elements in {len(pset.specs)} tensors")
        rows = run_set(pset, args, device, ctx, deadline)
        print_rows(rows)
        for path in outs:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                for r in rows:
                    fh.write(json.dumps(r) + "\n")
        all_rows += rows
    return all_rows


def main(argv: list[str] | None = None) -> int:
    rows = run(argv)
    failed = [r for r in rows if r["status"] == "error"]
    for r in failed:
        print(f"ERROR {r['set']} {r['optimizer']}/{r['backend']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
