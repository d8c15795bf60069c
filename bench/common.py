"""What every benchmark shares: parameter sets shaped like real models (with a μP role per tensor), the
one setup factory for speed and memory runs, the byte/FLOP model of docs/ALGORITHM.md §5, device floors
measured in the same run, and provenance for every result row.

Parameter sets follow the published architectures (PyTorch ``nn.Linear`` layout, (out, in)):

* ``gpt2-124m`` / ``gpt2-355m`` — GPT-2 small/medium (vocab 50257, context 1024, tied LM head).
* ``gpt3-xl-1.3b`` — GPT-3 XL in GPT-2 layout (24 layers, d 2048, context 2048).
* ``vit-b16`` — ViT-B/16 at 224², 1000 classes (conv patch embedding, class token, position embedding).
* ``llama-1b`` — a LLaMA-3.2-1B-like set (16 layers, d 2048, GQA 32/8 heads, SwiGLU 8192, vocab 128256,
  tied embeddings, RMSNorm gains).
* ``*-tiny`` — the same layouts at toy width, for ``--quick`` on CPU.
* ``synthetic-N`` — one (N/1024, 1024) hidden weight.

Roles (docs/ALGORITHM.md §4): embeddings and the patch embedding are ``input``; attention, MLP and fused QKV
weights ``hidden`` (lr_scale = 1/fan_in); a separate classifier head ``output``; biases, norm gains,
class token and position embeddings ``other``.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mulo.provenance import cpu_model, git, git_sha

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
SCHEMA = "mulo.bench.step_time/1"


# ---- parameter sets ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    role: str  # "input" | "hidden" | "output" | "other" (mulo.mup.ROLES)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def fan_in(self) -> int:
        """PyTorch's convention (``mulo.mup.fan_in``): shape[1]·prod(shape[2:]) for ≥ 2-d, else 1."""
        return self.shape[1] * math.prod(self.shape[2:]) if len(self.shape) >= 2 else 1

    @property
    def lr_scale(self) -> float:
        return 1.0 / self.fan_in if self.role == "hidden" else 1.0


@dataclasses.dataclass(frozen=True)
class ParamSet:
    name: str
    specs: tuple[ParamSpec, ...]

    @property
    def numel(self) -> int:
        return sum(s.numel for s in self.specs)

    def shape_summary(self) -> list[dict]:
        """Distinct (shape, role) pairs with their counts, in first-seen order (what a result row records)."""
        counts: dict[tuple[tuple[int, ...], str], int] = {}
        for s in self.specs:
            counts[(s.shape, s.role)] = counts.get((s.shape, s.role), 0) + 1
        return [{"shape": list(shape), "role": role, "count": c} for (shape, role), c in counts.items()]


def gpt2_like(name: str, n_layer: int, d: int, vocab: int = 50257, ctx: int = 1024) -> ParamSet:
    """GPT-2 layout: wte, wpe, per block ln_1, c_attn (3d×d), c_proj, ln_2, c_fc (4d×d), c_proj, then ln_f;
    the LM head is tied to wte."""
    specs = [ParamSpec("wte", (vocab, d), "input"), ParamSpec("wpe", (ctx, d), "input")]
    for i in range(n_layer):
        b = f"h.{i}."
        specs += [
            ParamSpec(b + "ln_1.weight", (d,), "other"),
            ParamSpec(b + "ln_1.bias", (d,), "other"),
            ParamSpec(b + "attn.c_attn.weight", (3 * d, d), "hidden"),
            ParamSpec(b + "attn.c_attn.bias", (3 * d,), "other"),
            ParamSpec(b + "attn.c_proj.weight", (d, d), "hidden"),
            ParamSpec(b + "attn.c_proj.bias", (d,), "other"),
            ParamSpec(b + "ln_2.weight", (d,), "other"),
            ParamSpec(b + "ln_2.bias", (d,), "other"),
            ParamSpec(b + "mlp.c_fc.weight", (4 * d, d), "hidden"),
            ParamSpec(b + "mlp.c_fc.bias", (4 * d,), "other"),
            ParamSpec(b + "mlp.c_proj.weight", (d, 4 * d), "hidden"),
            ParamSpec(b + "mlp.c_proj.bias", (d,), "other"),
        ]
    specs += [ParamSpec("ln_f.weight", (d,), "other"), ParamSpec("ln_f.bias", (d,), "other")]
    return ParamSet(name, tuple(specs))


def vit_like(
    name: str, n_layer: int, d: int, mlp: int, image: int = 224, patch: int = 16, classes: int = 1000
) -> ParamSet:
    """ViT layout (timm's names): conv patch embedding, class token, position embedding, pre-norm blocks
    with fused qkv, final norm, classifier head."""
    tokens = (image // patch) ** 2 + 1
    specs = [
        ParamSpec("patch_embed.proj.weight", (d, 3, patch, patch), "input"),
        ParamSpec("patch_embed.proj.bias", (d,), "other"),
        ParamSpec("cls_token", (1, 1, d), "other"),
        ParamSpec("pos_embed", (1, tokens, d), "other"),
    ]
    for i in range(n_layer):
        b = f"blocks.{i}."
        specs += [
            ParamSpec(b + "norm1.weight", (d,), "other"),
            ParamSpec(b + "norm1.bias", (d,), "other"),
            ParamSpec(b + "attn.qkv.weight", (3 * d, d), "hidden"),
            ParamSpec(b + "attn.qkv.bias", (3 * d,), "other"),
            ParamSpec(b + "attn.proj.weight", (d, d), "hidden"),
            ParamSpec(b + "attn.proj.bias", (d,), "other"),
            ParamSpec(b + "norm2.weight", (d,), "other"),
            ParamSpec(b + "norm2.bias", (d,), "other"),
            ParamSpec(b + "mlp.fc1.weight", (mlp, d), "hidden"),
            ParamSpec(b + "mlp.fc1.bias", (mlp,), "other"),
            ParamSpec(b + "mlp.fc2.weight", (d, mlp), "hidden"),
            ParamSpec(b + "mlp.fc2.bias", (d,), "other"),
        ]
    specs += [
        ParamSpec("norm.weight", (d,), "other"),
        ParamSpec("norm.bias", (d,), "other"),
        ParamSpec("head.weight", (classes, d), "output"),
        ParamSpec("head.bias", (classes,), "other"),
    ]
    return ParamSet(name, tuple(specs))


def llama_like(name: str, n_layer: int, d: int, ffn: int, heads: int, kv_heads: int, vocab: int) -> ParamSet:
    """LLaMA layout: tied token embedding, per block RMSNorm gains, q/k/v/o (grouped-query k/v), SwiGLU
    gate/up/down, final norm. No biases."""
    kv = d // heads * kv_heads
    specs = [ParamSpec("embed_tokens.weight", (vocab, d), "input")]
    for i in range(n_layer):
        b = f"layers.{i}."
        specs += [
            ParamSpec(b + "input_layernorm.weight", (d,), "other"),
            ParamSpec(b + "self_attn.q_proj.weight", (d, d), "hidden"),
            ParamSpec(b + "self_attn.k_proj.weight", (kv, d), "hidden"),
            ParamSpec(b + "self_attn.v_proj.weight", (kv, d), "hidden"),
            ParamSpec(b + "self_attn.o_proj.weight", (d, d), "hidden"),
            ParamSpec(b + "post_attention_layernorm.weight", (d,), "other"),
            ParamSpec(b + "mlp.gate_proj.weight", (ffn, d), "hidden"),
            ParamSpec(b + "mlp.up_proj.weight", (ffn, d), "hidden"),
            ParamSpec(b + "mlp.down_proj.weight", (d, ffn), "hidden"),
        ]
    specs.append(ParamSpec("norm.weight", (d,), "other"))
    return ParamSet(name, tuple(specs))


def synthetic(n: int) -> ParamSet:
    """One hidden weight of ``n`` elements, shape (n/1024, 1024) (n must be a multiple of 1024)."""
    if n < 1024 or n % 1024:
        raise ValueError(f"synthetic size must be a positive multiple of 1024, got {n}")
    return ParamSet(f"synthetic-{n}", (ParamSpec("weight", (n // 1024, 1024), "hidden"),))


MODEL_SETS: dict[str, Callable[[], ParamSet]] = {
    "gpt2-124m": lambda: gpt2_like("gpt2-124m", 12, 768),
    "gpt2-355m": lambda: gpt2_like("gpt2-355m", 24, 1024),
    "gpt3-xl-1.3b": lambda: gpt2_like("gpt3-xl-1.3b", 24, 2048, ctx=2048),
    "vit-b16": lambda: vit_like("vit-b16", 12, 768, 3072),
    "llama-1b": lambda: llama_like("llama-1b", 16, 2048, 8192, 32, 8, 128256),
    "gpt2-tiny": lambda: gpt2_like("gpt2-tiny", 2, 64, vocab=1024, ctx=128),
    "vit-tiny": lambda: vit_like("vit-tiny", 2, 64, 256, image=32, patch=8, classes=10),
    "llama-tiny": lambda: llama_like("llama-tiny", 2, 64, 256, 4, 2, 1024),
}


def param_set(name: str) -> ParamSet:
    """A set by name: a key of :data:`MODEL_SETS` or ``synthetic-N``."""
    if name.startswith("synthetic-"):
        return synthetic(int(name.removeprefix("synthetic-")))
    if name not in MODEL_SETS:
        raise ValueError(f"unknown parameter set {name!r}; choose one of {sorted(MODEL_SETS)} or synthetic-N")
    return MODEL_SETS[name]()


# ---- the setup factory -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
    """Parameters (with μP lr scales) and ``len(grad_sets)`` rotating gradient sets on one device."""

    pset: ParamSet
    params: list[torch.Tensor]
    grad_sets: list[list[torch.Tensor]]

    def use_grads(self, k: int) -> None:
        for p, g in zip(self.params, self.grad_sets[k % len(self.grad_sets)]):
            p.grad = g

    def groups(self, lr: float = 1.0, *, scale_lr: bool = False) -> list[dict]:
        """One param group per tensor: ``lr_scale`` for μLO, or (``scale_lr``) lr·lr_scale for AdamW (μAdam)."""
        out = []
        for spec, p in zip(self.pset.specs, self.params):
            if scale_lr:
                out.append({"params": [p], "lr": lr * spec.lr_scale})
            else:
                out.append({"params": [p], "lr": lr, "lr_scale": spec.lr_scale, "role": spec.role})
        return out

    def release(self) -> None:
        for p in self.params:
            p.grad = None
        self.params.clear()
        self.grad_sets.clear()


def make_setup(
    pset: ParamSet,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    grad_dtype: torch.dtype | None = None,
    n_grad_sets: int = 2,
    seed: int = 0,
) -> Setup:
    """Parameters ~ N(0, 1/fan_in) and gradient sets ~ N(0, 1e-3²) with per-row scales spanning two decades
    (heterogeneous statistics, as real gradients have), all on ``device``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    params, grad_sets = [], [[] for _ in range(n_grad_sets)]
    for spec in pset.specs:
        p = torch.randn(spec.shape, device=device, dtype=dtype, generator=gen) / math.sqrt(spec.fan_in)
        params.append(torch.nn.Parameter(p))
        for gs in grad_sets:
            g = torch.randn(spec.shape, device=device, dtype=grad_dtype or dtype, generator=gen).mul_(1e-3)
            if g.dim() >= 1:
                rows = torch.logspace(-1, 1, g.shape[0], device=device, dtype=g.dtype)
                g.mul_(rows.view(-1, *([1] * (g.dim() - 1))))
            gs.append(g)
    return Setup(pset, params, grad_sets)


def grad_sets_for(pset: ParamSet, itemsize: int, cache_bytes: int, free_bytes: int | None) -> int:
    """Enough rotating gradient sets that one full rotation is ≥ 2× the last-level cache (2..8), fewer only
    when memory is short (never below 1)."""
    per_set = pset.numel * itemsize
    k = min(8, max(2, math.ceil(2 * cache_bytes / max(per_set, 1))))
    if free_bytes is not None:
        k = max(1, min(k, int(0.2 * free_bytes // max(per_set, 1))))
    return k


# ---- the byte / FLOP model (docs/ALGORITHM.md §5) ---------------------------------------------------------------
MLP_MACS_PER_ELEMENT = 28 * 32 + 32 * 32 + 32 * 2  # 1,984: time features and norm scales fold into layer 1
ADAMW_FLOPS_PER_ELEMENT = 15  # m: 3, v: 4, denominator: 3, step: 3, decoupled decay: 2


def mulo_bytes(shape: tuple[int, ...], param_bytes: int = 4, grad_bytes: int = 4, state_bytes: int = 4) -> int:
    """Minimum bytes moved by one exact μLO step of one tensor: (A) read g; (B) read g, p, m₁₋₃, v;
    (C) read g, p, m₁₋₃, v, write p, m₁₋₃, v → 3G + 3P + 12S per element (72 B fp32). Rank < 2 tensors
    also read their full accumulators u₁₋₃ in B and read + write them in C (+9S). Factored row/col
    accumulators (3 × (rows + cols)) are read and written in A and read in B and C."""
    from mulo.lopt.shapes import accumulator_shapes, math_shape

    n = math.prod(shape)
    per_elem = 3 * grad_bytes + 3 * param_bytes + 12 * state_bytes
    accs = accumulator_shapes(math_shape(shape))
    if "full" in accs:
        return n * (per_elem + 9 * state_bytes)
    acc_elems = math.prod(accs["row"]) + math.prod(accs["col"])
    return n * per_elem + 4 * acc_elems * state_bytes


def adamw_bytes(shape: tuple[int, ...], param_bytes: int = 4, grad_bytes: int = 4) -> int:
    """Minimum bytes of one fused AdamW step: read p, g, m, v; write p, m, v (state in the parameter's
    dtype, as torch keeps it) → 28 B per element in fp32. Every AdamW variant is charged this floor."""
    n = math.prod(shape) if shape else 1
    return n * (2 * param_bytes + grad_bytes + 4 * param_bytes)


def model_cost(pset: ParamSet, optimizer: str, param_bytes: int, grad_bytes: int, state_bytes: int) -> dict:
    """``bytes_model`` and ``flops_model`` of one step over a parameter set."""
    if optimizer == "mulo":
        nbytes = sum(mulo_bytes(s.shape, param_bytes, grad_bytes, state_bytes) for s in pset.specs)
        flops = 2 * MLP_MACS_PER_ELEMENT * pset.numel
    else:
        nbytes = sum(adamw_bytes(s.shape, param_bytes, grad_bytes) for s in pset.specs)
        flops = ADAMW_FLOPS_PER_ELEMENT * pset.numel
    return {"bytes_model": nbytes, "flops_model": flops}


# ---- timing ------------------------------------------------------------------------------------------------
def summarize(times_ms: list[float]) -> dict:
    """Median and the 20th/80th percentiles (inclusive method, as numpy's default linear interpolation)."""
    if not times_ms:
        raise ValueError("no timings to summarize")
    if len(times_ms) == 1:
        q = [times_ms[0]] * 4
    else:
        q = statistics.quantiles(times_ms, n=5, method="inclusive")  # 20/40/60/80th
    return {
        "median_ms": statistics.median(times_ms),
        "p20_ms": q[0],
        "p80_ms": q[3],
        "min_ms": min(times_ms),
        "iters": len(times_ms),
    }


def cpu_cache_bytes() -> int:
    """Largest CPU cache (the last level) from sysfs; 64 MiB when it cannot be read."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes) if sizes else 64 << 20


def cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or (50 << 20)
    return cpu_cache_bytes()


class Timer:
    """CUDA events on a GPU, ``perf_counter`` on CPU. Before each timed call (untimed) a buffer of twice the
    last-level cache is overwritten, so parameters and state are read cold, as after a backward pass."""

    def __init__(self, device: torch.device, flush: bool = True):
        self.device = device
        self.kind = "cuda_event" if device.type == "cuda" else "perf_counter"
        self._flush = torch.empty(2 * cache_bytes(device), dtype=torch.uint8, device=device) if flush else None

    def time(self, fn: Callable[[int], None], before: Callable[[int], None], iters: int, start: int = 0) -> list[float]:
        """Run ``before(i)`` (untimed) then ``fn(i)`` (timed) for i in start..start+iters; milliseconds each."""
        out = []
        if self.device.type == "cuda":
            events = []
            for i in range(start, start + iters):
                before(i)
                if self._flush is not None:
                    self._flush.zero_()
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn(i)
                b.record()
                events.append((a, b))
            torch.cuda.synchronize(self.device)
            return [a.elapsed_time(b) for a, b in events]
        for i in range(start, start + iters):
            before(i)
            if self._flush is not None:
                self._flush.zero_()
            t0 = time.perf_counter()
            fn(i)
            out.append((time.perf_counter() - t0) * 1e3)
        return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- device floors, measured in the same run ---------------------------------------------------------------
def measure_copy_bandwidth(device: torch.device, nbytes: int | None = None, iters: int = 10) -> float:
    """Device copy bandwidth in bytes/s, counting bytes read plus bytes written (median of ``iters``)."""
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timer = Timer(device, flush=False)
    dst.copy_(src)
    sync(device)
    times = timer.time(lambda i: dst.copy_(src), lambda i: None, iters)
    return 2 * nbytes / (statistics.median(times) * 1e-3)


def measure_matmul_flops(device: torch.device, tf32: bool = False, iters: int = 5) -> float:
    """fp32 matrix-product throughput in FLOP/s (TF32 tensor cores when ``tf32`` on a GPU)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        torch.mm(a, b, out=c)
        sync(device)
        times = Timer(device, flush=False).time(lambda i: torch.mm(a, b, out=c), lambda i: None, iters)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return 2 * n**3 / (statistics.median(times) * 1e-3)


def device_floors(device: torch.device) -> dict:
    """Copy bandwidth and matmul peaks. The compute floor uses TF32 tensor cores on a GPU (docs/ALGORITHM.md §3:
    the per-element MLP is meant for tensor cores) and fp32 on a CPU."""
    bw = measure_copy_bandwidth(device)
    fp32 = measure_matmul_flops(device)
    out = {"copy_bandwidth_GBps": bw / 1e9, "matmul_fp32_TFLOPs": fp32 / 1e12}
    if device.type == "cuda":
        tf32 = measure_matmul_flops(device, tf32=True)
        out["matmul_tf32_TFLOPs"] = tf32 / 1e12
        out["compute_floor_basis"] = "tf32"
    else:
        out["compute_floor_basis"] = "fp32"
    return out


def floor_fields(cost: dict, floors: dict, median_ms: float | None) -> dict:
    """Time floors of one step and the fraction of the floor reached (floor / measured; 1.0 = at the floor)."""
    peak = floors.get(f"matmul_{floors['compute_floor_basis']}_TFLOPs", floors["matmul_fp32_TFLOPs"]) * 1e12
    bw_ms = cost["bytes_model"] / (floors["copy_bandwidth_GBps"] * 1e9) * 1e3
    compute_ms = cost["flops_model"] / peak * 1e3
    floor_ms = max(bw_ms, compute_ms)
    return {
        "bw_floor_ms": bw_ms,
        "compute_floor_ms": compute_ms,
        "floor_ms": floor_ms,
        "frac_of_floor": floor_ms / median_ms if median_ms else None,
    }


# ---- provenance --------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def provenance(device: torch.device) -> dict:
    """Where and with what a row was measured (no host name): device, versions, git SHA, UTC date."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    info = {
        "device": device_name(device),
        "device_type": device.type,
        "torch_version": torch.__version__,
        "triton_version": triton_version,
        "cuda_version": torch.version.cuda,
        "git_sha": git_sha(),
        "git_dirty": bool(dirty) if dirty is not None else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python_version": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_memory_bytes=props.total_memory,
            gpu_sm_count=props.multi_processor_count,
            gpu_l2_bytes=getattr(props, "L2_cache_size", None),
            cuda_driver=_driver_version(),
        )
    return info


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
