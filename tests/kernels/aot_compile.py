"""Compile every Triton kernel (μLO's and Celo2's) ahead of time for GPU targets: ``python -m tests.kernels.aot_compile
[--all] 90 80``. Needs no GPU, only Triton's bundled compilers; run with TRITON_INTERPRET unset. Without
``--all``, each kernel is compiled in the variants that differ in code shape (float32/int32 and
bf16/int64 storage, every dot mode); ``--all`` compiles the full dtype × index × dot matrix (~1 min per
target). Prints one line per variant (cubin and shared-memory size, local-memory instructions — spills —
and tensor-core MMA instructions in its SASS) and exits non-zero on the first failure."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise SystemExit("aot_compile: unset TRITON_INTERPRET (the interpreter does not compile)")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from mulo.kernels import celo2, lopt_apply, lopt_reduce, lopt_sumsq  # noqa: E402
from mulo.kernels.lopt_apply import lopt_apply_kernel  # noqa: E402
from mulo.kernels.lopt_reduce import lopt_reduce_kernel  # noqa: E402
from mulo.kernels.lopt_sumsq import lopt_sumsq_kernel  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

TABLES = {"chunks": "*i32", "meta": "*i64", "ptrs": "*i64", "ws": "*fp32"}
BLOCKS = {"BX": 32, "BY": 64}


def variants():
    """(name, kernel, signature, constexprs) for every kernel × storage dtypes × index width × dot mode."""
    for p_dt, g_dt, s_dt in ((tl.float32, tl.float32, tl.float32), (tl.bfloat16, tl.bfloat16, tl.bfloat16),
                             (tl.float16, tl.float32, tl.float32), (tl.float32, tl.float32, tl.bfloat16)):  # fmt: skip
        for idx in (tl.int32, tl.int64):
            tag = f"p={p_dt} g={g_dt} s={s_dt} idx={idx}"
            for det in (False, True):  # deterministic mode: partial sums to per-chunk records, no atomics
                dtag = tag + (" det" if det else "")
                yield (
                    f"lopt_reduce {dtag}",
                    lopt_reduce_kernel,
                    {**TABLES, "records": "*fp32", "G_DT": "constexpr", "S_DT": "constexpr", "BX": "constexpr",
                     "BY": "constexpr", "IDX": "constexpr", "DET": "constexpr"},
                    {"G_DT": g_dt, "S_DT": s_dt, **BLOCKS, "IDX": idx, "DET": det},
                )  # fmt: skip
                consts = {"P_DT": p_dt, "G_DT": g_dt, "S_DT": s_dt, "IDX": idx, "DET": det}
                yield (
                    f"lopt_sumsq {dtag}",
                    lopt_sumsq_kernel,
                    {**TABLES, "decays": "*fp32", "records": "*fp32",
                     **{k: "constexpr" for k in (*consts, *BLOCKS, "SX")}},
                    {**consts, **BLOCKS, "SX": lopt_sumsq.SUBTILE_X},
                )  # fmt: skip
            if (p_dt, s_dt) == (tl.float32, tl.float32):  # the finishing sums read only float32 records
                yield (
                    f"lopt_reduce_finish idx={idx}",
                    lopt_reduce.lopt_reduce_finish_kernel,
                    {"batches": "*i32", "meta": "*i64", "ws": "*fp32", "records": "*fp32", "BX": "constexpr",
                     "BY": "constexpr", "IDX": "constexpr"},
                    {**BLOCKS, "IDX": idx},
                )  # fmt: skip
                yield (
                    f"lopt_sumsq_finish idx={idx}",
                    lopt_sumsq.lopt_sumsq_finish_kernel,
                    {"meta": "*i64", "ws": "*fp32", "records": "*fp32", "BX": "constexpr", "BY": "constexpr",
                     "IDX": "constexpr"},
                    {**BLOCKS, "IDX": idx},
                )  # fmt: skip
            for dot in ("tf32", "tf32x3", "ieee", "bf16"):
                sig = {**TABLES, "hyper": "*fp32", "decays": "*fp32", "taus": "*fp32", "perm": "*i32"}
                sig.update({k: "*fp32" for k in ("w1", "b1", "w2", "b2", "w3", "b3")})
                sig.update({"exp_mult": "fp32", "step_mult": "fp32", "time_clamp": "fp32"})
                store = {"P_DT": p_dt, "G_DT": g_dt, "S_DT": s_dt, "IDX": idx}
                c = {**store, "BX": 2, "BY": 64, "NSUB": 8, "HID": 32, "DOT": dot}
                sig.update({k: "constexpr" for k in c})
                yield f"lopt_apply {tag} dot={dot}", lopt_apply_kernel, sig, c
            if (p_dt, s_dt) != (tl.float32, tl.bfloat16):  # Celo2's state is float32: that pair is fp32's
                yield from celo2_variants(p_dt, g_dt, idx, tag)


def celo2_variants(p_dt, g_dt, idx, tag):
    """Celo2's four kernels (its state is float32 whatever the parameters)."""
    c = {"P_DT": p_dt, "G_DT": g_dt, "S_DT": tl.float32, "BX": 8, "BY": 64, "IDX": idx}  # the GPU default tiles
    tag = tag.replace(f"s={tl.bfloat16}", f"s={tl.float32}")
    sig = {**TABLES, "cmeta": "*i64"}
    yield (
        f"celo2_reduce {tag}",
        celo2.celo2_reduce_kernel,
        {**TABLES, **{k: "constexpr" for k in ("G_DT", "S_DT", "BX", "BY", "IDX")}},
        {"G_DT": g_dt, "S_DT": tl.float32, **BLOCKS, "IDX": idx},
    )
    yield f"celo2_sumsq {tag}", celo2.celo2_sumsq_kernel, {**sig, **{k: "constexpr" for k in c}}, c
    for mode in (celo2.STORE_DIRECTION, celo2.SUM_DIRECTION_SQ, celo2.APPLY_DIRECTION):
        s = {**sig, "net": "*fp32", "dptrs": "*i64", "hyper": "*fp32", **{k: "constexpr" for k in (*c, "MODE")}}
        yield f"celo2_direction {tag} mode={mode}", celo2.celo2_direction_kernel, s, {**c, "MODE": mode}
    s = {**sig, "xptrs": "*i64", "hyper": "*fp32", **{k: "constexpr" for k in c}}
    yield f"celo2_apply {tag}", celo2.celo2_apply_kernel, s, c


def options(fn) -> dict:
    """The launch options the kernel's launcher uses (warps, pipeline stages), for ``triton.compile``."""
    modules = {lopt_reduce_kernel: lopt_reduce, lopt_sumsq_kernel: lopt_sumsq, lopt_apply_kernel: lopt_apply,
               lopt_reduce.lopt_reduce_finish_kernel: lopt_reduce}  # fmt: skip
    if fn is lopt_sumsq.lopt_sumsq_finish_kernel:  # one warp: a program per tensor walks its records
        return {"num_warps": 1, "num_stages": 3}
    module = modules.get(fn, celo2)
    return {"num_warps": module.NUM_WARPS, "num_stages": getattr(module, "NUM_STAGES", 3)}


REPRESENTATIVE = (
    "lopt_reduce p=fp32 g=fp32 s=fp32 idx=int32",
    "lopt_reduce p=bf16 g=bf16 s=bf16 idx=int64",
    "lopt_sumsq p=fp32 g=fp32 s=fp32 idx=int32",
    "lopt_sumsq p=bf16 g=bf16 s=bf16 idx=int64",
    "lopt_reduce p=fp32 g=fp32 s=fp32 idx=int32 det",
    "lopt_sumsq p=fp32 g=fp32 s=fp32 idx=int32 det",
    "lopt_sumsq p=bf16 g=bf16 s=bf16 idx=int64 det",
    "lopt_reduce_finish idx=int32",
    "lopt_reduce_finish idx=int64",
    "lopt_sumsq_finish idx=int32",
    "lopt_apply p=fp32 g=fp32 s=fp32 idx=int32 dot=tf32",
    "lopt_apply p=fp32 g=fp32 s=fp32 idx=int32 dot=tf32x3",
    "lopt_apply p=fp32 g=fp32 s=fp32 idx=int32 dot=ieee",
    "lopt_apply p=bf16 g=bf16 s=bf16 idx=int64 dot=bf16",
    "celo2_reduce p=fp32 g=fp32 s=fp32 idx=int32",
    "celo2_sumsq p=fp32 g=fp32 s=fp32 idx=int32",
    "celo2_sumsq p=bf16 g=bf16 s=fp32 idx=int64",
    "celo2_direction p=fp32 g=fp32 s=fp32 idx=int32 mode=0",
    "celo2_direction p=fp32 g=fp32 s=fp32 idx=int32 mode=1",
    "celo2_direction p=bf16 g=bf16 s=fp32 idx=int64 mode=2",
    "celo2_apply p=fp32 g=fp32 s=fp32 idx=int32",
)


def sass_counts(cubin: bytes) -> tuple[int, int]:
    """(local-memory instructions — register spills, tensor-core MMA instructions) in a cubin's SASS, read
    with the ``nvdisasm`` Triton ships."""
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([str(nvdisasm), str(path)], capture_output=True, text=True, check=True).stdout
    ops = re.findall(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9]+)", sass, re.M)
    return sum(op in ("LDL", "STL") for op in ops), sum(op in ("HMMA", "HGMMA") for op in ops)


def main(archs: list[int], everything: bool = False) -> None:
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        for name, fn, sig, consts in variants():
            if not everything and name not in REPRESENTATIVE:
                continue
            compiled = triton.compile(triton.compiler.ASTSource(fn, sig, consts), target=target, options=options(fn))
            local, mma = sass_counts(compiled.asm["cubin"])
            # conversions to tf32 Triton itself emits: the "tf32" mode's rounding (kernels/lopt_apply.py
            # _rn_operand) relies on the tensor cores reading the register bits as they are
            cvt = len(re.findall(r"cvt\.rna?\.tf32\.f32", compiled.asm["ptx"]))
            print(f"sm_{arch} {name}: {len(compiled.asm['cubin'])} B cubin, {compiled.metadata.shared} B smem, "
                  f"{local} local-memory instrs, {mma} MMA instrs, {cvt} tf32 conversions")  # fmt: skip


if __name__ == "__main__":
    args = sys.argv[1:]
    main([int(a) for a in args if a != "--all"] or [90, 80], everything="--all" in args)
