"""A static performance model of the μLO GPU step on an H100, built without a GPU (issue 14, item 4).

    python bench/gpu_static.py              # every Triton variant + the CUDA extension; rows → results
    python bench/gpu_static.py --readme     # also a markdown table of the prediction
    python bench/gpu_static.py --check      # one representative variant per kernel (tests; ~20 s)

What it reads (nothing here runs a kernel):

* **Triton**: every shipped kernel variant (``tests/kernels/aot_compile.variants()``) compiled for sm_90
  with Triton's own compiler; registers, stack and spills from ``ptxas -v`` on the kernel's PTX (the same
  ``ptxas`` Triton used), shared memory from the compiled metadata, the SASS from ``nvdisasm`` on the cubin.
* **CUDA**: the sm_90 cubin inside ``mulo/_C*.so`` (``cuobjdump -xelf``), registers/stack/shared from
  ``cuobjdump -res-usage``, spills as local-memory instructions (``LDL``/``STL``) in the SASS.

From the SASS it counts the instruction mix (tensor core, FP32, MUFU, integer, memory, atomics, barriers,
branches) and, to turn static counts into *executed* warp-instructions per element, rebuilds each
kernel's control-flow graph: natural loops (back edges whose target dominates the source) get trip counts
from the kernel's tiling, identified by the source line of the loop (the SASS carries line info:
``-lineinfo`` for the extension, Triton's ``.loc``); loops the model cannot identify count once and are
listed as ``unresolved_loops``. A static count knows nothing of loop trip counts or branch outcomes, so:

* ``high`` = every reachable instruction, each loop at its trip count, both arms of every branch except a
  branch on the kind of tensor (``factored`` or not: a fact of the set, weighted by its share of the tiles);
* ``low``  = the same, but code under a branch whose source condition is known to be rare for the set
  (first tile of a row/column: ``xt == 0``/``yt == 0``, or first chunk ``xc == 0`` per program; the rank < 2
  arm of ``factored``; the once-per-tensor step counter; ``& ok``, a finite tensor, counts as true) weighted
  by how often that condition holds on the set's tiling.

A branch guards the code of a loop inside its arm too (a kernel that runs one of two copies of its tile loop
weights each copy by its arm); copies of one source loop the compiler makes (unswitching on a runtime
condition, the same call site) count once, the largest, in ``low``.

Prediction per pass (H100 SXM5: 132 SMs, 4 schedulers each issuing one warp-instruction per cycle, boost
clock 1.98 GHz, HBM3 3.35 TB/s at an achievable 80 %)::

    t_pass = max(DRAM bytes / bandwidth, warp-instructions / (132 · 4 · clock))

with the DRAM bytes each pass must move per element (from the kernels' loads and stores; docs/ALGORITHM.md §5):
A reads g; B reads g, p, m₁₋₃, v; C reads g, p, m₁₋₃, v and writes p, m₁₋₃, v (72 B/element in fp32,
plus the full accumulators of rank < 2 tensors and the O(rows + cols) Adafactor vectors). The ratio is to
fused AdamW's floor on the same set (28 B/element at the same bandwidth). What the model leaves out is
listed in ``APPROXIMATIONS`` (and in every summary row).

Loops in today's kernels (each kernel row lists its loops with source line and trip count): Triton
pass A has none (``tl.static_range`` unrolls); pass B walks its chunk ``for sub in range(BX // SX)``
(running sums per element, reduced once per program) and pass C ``for sub in range(NSUB)`` over the tiles
of its chunk (no software pipelining: the body counts once per tile, the per-program prologue once). Each CUDA
element kernel loops over its chunk block-strided (chunk / 256 threads: 32 iterations in A and B, 4 in
C); pass C also stages the weights (⌈n / 256⌉ each) and runs layer 2 as ``#pragma unroll 4`` over 32
outputs (8 iterations); the per-tensor kernels loop over rows and columns (⌈rows / 256⌉ per tensor, one
block per tensor: the largest tensor's block is their critical path). The CAS spin loops nvcc emits
behind generic-address atomics never run and are not counted.

Rows (one per kernel variant, one per pass and configuration, one summary per configuration) go to
``bench/results/gpu_static.jsonl`` with provenance ("static model, no GPU"). On a GPU machine
``bench/gpu_validate.sh`` adds ``--compare`` (the prediction on that device against bench/step_time.py's
rows) and ``--measure`` (per-pass device time of real steps from torch.profiler): ``validation`` rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/gpu_static.py` from anywhere
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "gpu_static.jsonl"
SCHEMA = "mulo.bench.gpu_static/1"
MODEL_SET = "gpt3-xl-1.3b"

# ---- the machine ---------------------------------------------------------------------------------------
H100 = {
    "name": "H100 SXM5 (model)",
    "sms": 132,
    "schedulers_per_sm": 4,
    "issue_per_scheduler_per_cycle": 1.0,
    "clock_ghz": 1.98,  # boost clock; sustained clocks under load can be lower (issue time scales with it)
    "hbm_TBps": 3.35,
    "bw_efficiency": 0.8,  # a large device copy reaches ~80-90 % of the HBM3 peak
    "max_warps_per_sm": 64,
    "regs_per_sm": 65536,
    "smem_per_sm": 228 * 1024,
    "max_blocks_per_sm": 32,
}

H200 = {**H100, "name": "H200 (model)", "hbm_TBps": 4.8}  # same SMs and clocks, HBM3e
MACHINES = {"h100": H100, "h200": H200}

APPROXIMATIONS = [
    "static SASS counts: loop trip counts come from the kernels' tiling (identified by source line), "
    "unresolved loops count once",
    "branch outcomes: 'high' counts both arms of every branch but the one on the tensor kind (factored or "
    "not: weighted by its share); 'low' weights arms whose condition is known to be rare on the set (first "
    "tile of a row/column, rank < 2 tensors) by how often it holds",
    "issue model: one warp-instruction per scheduler per cycle at the boost clock; no stall from latency, "
    "low occupancy (occupancy_warps_per_sm: 8 of 64 for the Triton sumsq/apply kernels), dependent loads, "
    "atomics contention or slower pipes (pipe_ms lists the integer, MUFU, conversion and tensor-core floors; "
    "predicted_ms_with_pipes takes them into account)",
    "DRAM model: each pass moves its minimum bytes once at 80 % of 3.35 TB/s; L2 hits, re-reads and "
    "workspace traffic are not counted",
    "issue and memory time overlap perfectly (max, not sum); launch gaps and the host path are excluded",
    "per-tensor kernels (CUDA prepare/fold/finish) are modelled as one block per tensor at issue rate on "
    "its own SM; their latency chains are not modelled",
    "slow-path subroutines reached only by CALL (fp32 division/sqrt corner cases) are not counted",
]

# ---- SASS: parsing and the instruction mix ---------------------------------------------------------------
_INSTR = re.compile(r"^\s*/\*([0-9a-fA-F]{4,})\*/\s+(?P<body>[^;]*?)\s*;")
_LINEINFO = re.compile(r'^\s*//## File "(?P<file>[^"]+)", line (?P<line>\d+)')
_LABEL = re.compile(r"^\s*(?P<label>\.L_x_\d+|\.L_\w+|__internal_\w+):\s*$")
_FUNC_NVDISASM = re.compile(r"^\.text\.(?P<name>[\w.$]+):\s*$")
_FUNC_CUOBJDUMP = re.compile(r"^\s*Function\s*:\s*(?P<name>\S+)\s*$")
_PRED = re.compile(r"^@!?U?P[0-9T]\s+")
_TARGET_LABEL = re.compile(r"`\((?P<label>[^)]+)\)")
_TARGET_ADDR = re.compile(r"(?:^|[\s,])(?P<addr>0x[0-9a-fA-F]+)\s*$")
_COND_OPERAND = re.compile(r"(?:^|[\s,])!?U?P[0-9]\b")

BRANCHES = {"BRA", "BRX", "JMP", "JMX"}
CALLS = {"CALL"}
RETURNS = {"RET"}
EXITS = {"EXIT"}


@dataclasses.dataclass
class Instr:
    addr: int
    opcode: str  # with modifiers, e.g. "LDG.E.128"
    operands: str
    pred: str | None = None  # "@P0", "@!UP1", ...
    target: int | None = None  # branch/call target address, resolved after parsing
    target_label: str | None = None
    file: str | None = None
    line: int | None = None
    # the call sites the instruction's code was inlined at (``nvdisasm -gi``), innermost first: a branch in the
    # caller around the call weights the callee's instructions too
    outer: tuple[tuple[str, int], ...] = ()

    @property
    def base(self) -> str:
        return self.opcode.split(".", 1)[0]

    @property
    def conditional(self) -> bool:
        """A branch that may fall through: predicated (not @PT), a predicate operand (BRA.U !UP0, ...), or
        BRA.DIV."""
        if self.pred and self.pred not in ("@PT", "@UPT"):
            return True
        return ".DIV" in self.opcode or bool(_COND_OPERAND.search(self.operands.split("`")[0]))


def parse_sass(text: str) -> dict[str, list[Instr]]:
    """Functions → instructions, from ``nvdisasm [-g]`` or ``cuobjdump -sass`` text. Branch targets are
    resolved to addresses (labels for nvdisasm, hex addresses for cuobjdump); ``//## File`` line info, when
    present, is attached to the instructions that follow it."""
    funcs: dict[str, list[Instr]] = {}
    labels: dict[str, dict[str, int]] = {}
    cur: list[Instr] | None = None
    name = None
    pending: list[str] = []
    loc: tuple[str | None, int | None] = (None, None)
    outer: list[tuple[str, int]] = []
    in_block = False  # the previous line was line info: an inlining chain continues
    for raw in text.splitlines():
        m = _FUNC_NVDISASM.match(raw) or _FUNC_CUOBJDUMP.match(raw)
        if m:
            name = m.group("name")
            cur = funcs.setdefault(name, [])
            labels[name] = {}
            pending, loc = [], (None, None)
            continue
        if cur is None:
            continue
        m = _LINEINFO.match(raw)
        if m:
            if not in_block:  # the first line of a chain is the innermost location
                loc, outer = (m.group("file"), int(m.group("line"))), []
            else:
                outer.append((m.group("file"), int(m.group("line"))))
            in_block = True
            continue
        in_block = False
        m = _LABEL.match(raw)
        if m:
            pending.append(m.group("label"))
            continue
        m = _INSTR.match(raw)
        if not m:
            continue
        addr = int(m.group(1), 16)
        for lab in pending:
            labels[name][lab] = addr
        pending = []
        body = m.group("body").strip()
        pred = None
        pm = _PRED.match(body)
        if pm:
            pred = pm.group(0).strip()
            body = body[pm.end() :]
        opcode, _, operands = body.partition(" ")
        ins = Instr(addr, opcode, operands.strip(), pred, file=loc[0], line=loc[1], outer=tuple(outer))
        if ins.base in BRANCHES or ins.base in CALLS:
            lm = _TARGET_LABEL.search(ins.operands)
            if lm:
                ins.target_label = lm.group("label")
            else:
                am = _TARGET_ADDR.search(ins.operands)
                if am:
                    ins.target = int(am.group("addr"), 16)
        cur.append(ins)
    for fname, instrs in funcs.items():
        for ins in instrs:
            if ins.target_label is not None:
                ins.target = labels[fname].get(ins.target_label)
    return funcs


# Instruction classes (sm_80/sm_90 SASS opcodes before the first "."); anything else counts as "other" (and
# in the total). "ldg" includes LDGSTS (cp.async, global → shared), "barrier" the async-copy and warpgroup waits.
CATEGORIES: dict[str, str] = {
    "tensor": "HMMA HGMMA IMMA IGMMA QGMMA BGMMA DMMA UTCMMA UTCHMMA",
    "ffma": "FFMA",
    "fmul": "FMUL",
    "fadd": "FADD",
    "fp32_other": "FMNMX FSEL FSETP FSET FCHK FSWZADD FMUL2 FFMA2 FADD2",
    "half": "HADD2 HMUL2 HFMA2 HSETP2 HMNMX2",
    "mufu": "MUFU",
    "conversion": "F2F F2FP F2I I2F I2FP F2IP FRND",
    "int": "IMAD IADD3 IADD IADD32I LOP3 LOP LOP32I SHF SHL SHR LEA ISETP IABS IMNMX VIADD VIMNMX SEL SGXT PRMT "
    "POPC FLO BMSK BREV IDP ISCADD XMAD IMUL PLOP3 P2R R2P VIADDMNMX VABSDIFF VABSDIFF4",
    "uniform": "UIADD3 UIMAD ULOP3 USHF ULEA UISETP USEL UMOV ULDC UPRMT USGXT UFLO UPOPC UBMSK UPLOP3 UP2UR UR2UP "
    "R2UR S2UR UBREV UIABS UIMNMX USETMAXREG UVIRTCOUNT ULEPC UCLEA UMEMSETS",
    "move": "MOV MOV32I SHFL S2R CS2R LDC VOTE VOTEU MATCH REDUX",
    "ldg": "LDG LD LDGSTS UBLKCP UTMALDG LDGMC",
    "stg": "STG ST UTMASTG",
    "lds": "LDS LDSM",
    "sts": "STS STSM",
    "local": "LDL STL",
    "atomic": "ATOM ATOMG RED REDG ATOMS REDAS UTMAREDG",
    "barrier": "BAR BARRIER SYNCS WARPGROUP MEMBAR DEPBAR LDGDEPBAR ERRBAR CCTL FENCE ARRIVES WARPSYNC",
    "branch": "BRA BRX JMP JMX CALL RET EXIT BSSY BSYNC BREAK BPT YIELD KILL NANOSLEEP",
    "nop": "NOP",
}
_CATEGORY_OF = {op: cat for cat, ops in reversed(CATEGORIES.items()) for op in ops.split()}
MIX_KEYS = (*CATEGORIES, "other", "total")


def category(ins: Instr) -> str:
    return _CATEGORY_OF.get(ins.base, "other")


def instruction_mix(instrs: list[Instr], weights: list[float] | None = None) -> dict[str, float]:
    """Counts per class (weighted by ``weights`` when given); ``total`` excludes NOPs (alignment padding);
    ``fp32`` = FFMA + FMUL + FADD."""
    mix: dict[str, float] = {k: 0 for k in MIX_KEYS}
    for i, ins in enumerate(instrs):
        w = 1 if weights is None else weights[i]
        if not w:
            continue
        c = category(ins)
        mix[c] += w
        if c != "nop":
            mix["total"] += w
    mix["fp32"] = mix["ffma"] + mix["fmul"] + mix["fadd"]
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in mix.items()}


def access_bytes(ins: Instr) -> int:
    """Bytes one lane moves with a global/shared/local load or store (from the width suffix)."""
    mods = ins.opcode.split(".")[1:]
    for m in mods:
        if m in ("64", "128", "U8", "S8", "U16", "S16", "32"):
            return {"64": 8, "128": 16, "U8": 1, "S8": 1, "U16": 2, "S16": 2, "32": 4}[m]
    return 4


# ---- control flow: basic blocks, dominators, natural loops ----------------------------------------------
@dataclasses.dataclass
class Block:
    start: int  # index of the first instruction
    end: int  # one past the last
    succ: list[int] = dataclasses.field(default_factory=list)
    pred: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Loop:
    header: int  # block index
    blocks: set[int]
    back_edges: list[tuple[int, int]]  # (from block, to header)
    trips: float = 1.0
    source: str | None = None  # the source line the trip count was identified from
    resolved: bool = False


class CFG:
    """Basic blocks of one function; ``EXIT`` (and ``RET``) go to a virtual exit node ``len(blocks)``.
    ``CALL`` falls through (the callee, a slow-path subroutine, is unreachable from the entry and not
    counted). Indirect branches (``BRX``/``JMX``) fall through."""

    def __init__(self, instrs: list[Instr]):
        self.instrs = instrs
        index = {ins.addr: i for i, ins in enumerate(instrs)}
        leaders = {0}
        for i, ins in enumerate(instrs):
            if ins.base in BRANCHES | EXITS | RETURNS:
                if i + 1 < len(instrs):
                    leaders.add(i + 1)
                if ins.target is not None and ins.target in index and ins.base in BRANCHES:
                    leaders.add(index[ins.target])
        starts = sorted(leaders)
        self.blocks = [Block(s, e) for s, e in zip(starts, [*starts[1:], len(instrs)])]
        self.block_of = {}
        for b, blk in enumerate(self.blocks):
            for i in range(blk.start, blk.end):
                self.block_of[i] = b
        self.exit = len(self.blocks)
        for b, blk in enumerate(self.blocks):
            last = instrs[blk.end - 1]
            succ: list[int] = []
            falls = True
            if last.base in BRANCHES and last.target is not None and last.target in index:
                succ.append(self.block_of[index[last.target]])
                falls = last.conditional
            elif last.base in EXITS | RETURNS:
                succ.append(self.exit)
                falls = bool(last.pred) and last.pred not in ("@PT", "@UPT")
            if falls and b + 1 < len(self.blocks):
                succ.append(b + 1)
            elif falls:
                succ.append(self.exit)
            blk.succ = list(dict.fromkeys(succ))
        for b, blk in enumerate(self.blocks):
            for s in blk.succ:
                if s != self.exit:
                    self.blocks[s].pred.append(b)
        self.reachable = self._reach()
        self.dom = self._dominators()
        self.pdom = self._postdominators()
        self.loops = self._loops()

    def _reach(self) -> set[int]:
        seen, stack = {0}, [0]
        while stack:
            for s in self.blocks[stack.pop()].succ:
                if s != self.exit and s not in seen:
                    seen.add(s)
                    stack.append(s)
        return seen

    def _dominators(self) -> dict[int, set[int]]:
        nodes = sorted(self.reachable)
        dom = {b: set(nodes) for b in nodes}
        dom[0] = {0}
        changed = True
        while changed:
            changed = False
            for b in nodes[1:]:
                preds = [p for p in self.blocks[b].pred if p in self.reachable]
                new = set.intersection(*(dom[p] for p in preds)) if preds else set()
                new = new | {b}
                if new != dom[b]:
                    dom[b], changed = new, True
        return dom

    def _postdominators(self) -> dict[int, set[int]]:
        nodes = sorted(self.reachable)
        allnodes = set(nodes) | {self.exit}
        pdom = {b: set(allnodes) for b in nodes}
        pdom[self.exit] = {self.exit}
        changed = True
        while changed:
            changed = False
            for b in reversed(nodes):
                succ = [s for s in self.blocks[b].succ if s == self.exit or s in self.reachable]
                new = set.intersection(*(pdom[s] for s in succ)) if succ else {b}
                new = new | {b}
                if new != pdom[b]:
                    pdom[b], changed = new, True
        return pdom

    def _loops(self) -> list[Loop]:
        loops: dict[int, Loop] = {}
        for b in self.reachable:
            for s in self.blocks[b].succ:
                if s != self.exit and s in self.dom[b]:  # back edge b → s
                    body = {s, b}
                    stack = [b]
                    while stack:
                        x = stack.pop()
                        if x == s:
                            continue
                        for p in self.blocks[x].pred:
                            if p in self.reachable and p not in body:
                                body.add(p)
                                stack.append(p)
                    lp = loops.setdefault(s, Loop(s, set(), []))
                    lp.blocks |= body
                    lp.back_edges.append((b, s))
        return sorted(loops.values(), key=lambda lp: (len(lp.blocks), lp.header))

    def loops_of(self, b: int) -> list[Loop]:
        return [lp for lp in self.loops if b in lp.blocks]

    def guarded(self, b: int) -> bool:
        """True when block ``b`` may be skipped in an execution of its innermost loop body (it does not
        post-dominate that loop's header), or its loop may be skipped in an execution of the enclosing one
        (its header does not post-dominate that loop's header), and so on out to the function's entry: code
        inside a loop that sits in one arm of a branch (a loop copied per arm) is guarded by that branch."""
        x = b
        for lp in self.loops_of(b):  # innermost first
            if x not in self.pdom.get(lp.header, set()):
                return True
            x = lp.header
        return x not in self.pdom.get(0, set())


def atomic_fallback(instrs: list[Instr]) -> set[int]:
    """Indices of the generic-address fallback nvcc emits after ``ATOM.E.* P, ...`` (address-space query
    ``QSPC`` then a shared-memory or local CAS spin loop, skipped by ``@P BRA`` when the atomic hit global
    memory, as it always does here). Never executed: neither bound counts it."""
    out: set[int] = set()
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    for i, ins in enumerate(instrs[:-3]):
        if ins.base != "ATOM" or not re.match(r"P[0-6]\b", ins.operands):
            continue
        flag = ins.operands.split(",")[0].strip()
        for j in range(i + 1, min(i + 4, len(instrs))):
            nxt = instrs[j]
            if nxt.base == "BRA" and nxt.pred == f"@{flag}" and nxt.target in index and nxt.target > nxt.addr:
                if any(x.base == "QSPC" for x in instrs[j + 1 : index[nxt.target]]):
                    out.update(range(j + 1, index[nxt.target]))
                break
    return out


# ---- source: loop trip counts and rare branches, by the source line the SASS line info names --------------
@functools.cache
def _source_lines(path: str) -> tuple[str, ...]:
    """A source file's lines, looked up first under ROOT by the recorded path's last two components
    (kernels/x.py, csrc/x.cu: the line info names the path at build time), then at that path."""
    p = Path(path)
    for cand in (ROOT / Path(*p.parts[-2:]), p):  # this checkout first: the build may have been elsewhere
        try:
            return tuple(cand.read_text().splitlines())
        except OSError:
            continue
    return ()


def source_line(path: str | None, line: int | None) -> str:
    if not path or not line:
        return ""
    lines = _source_lines(path)
    return lines[line - 1].strip() if 0 < line <= len(lines) else ""


@dataclasses.dataclass(frozen=True)
class Region:
    file: str  # last two path components
    first: int
    last: int
    cond: str
    arm: str  # "then" | "else"


@functools.cache
def python_regions(path: str) -> tuple[Region, ...]:
    """The then/else line ranges of every ``if`` statement of a Python file (with its condition's text)."""
    import ast

    text = "\n".join(_source_lines(path))
    if not text:
        return ()
    key = str(Path(*Path(path).parts[-2:]))
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.If):
            cond = ast.unparse(node.test)
            out.append(Region(key, node.body[0].lineno, node.body[-1].end_lineno, cond, "then"))
            if node.orelse:
                out.append(Region(key, node.orelse[0].lineno, node.orelse[-1].end_lineno, cond, "else"))
    return tuple(out)


def _matching(text: str, pos: int, open_: str, close: str) -> int:
    """Index of the bracket closing the one at ``text[pos]`` (the end of the text when unbalanced)."""
    depth = 0
    for k in range(pos, len(text)):
        if text[k] == open_:
            depth += 1
        elif text[k] == close:
            depth -= 1
            if depth == 0:
                return k
    return len(text) - 1


@functools.cache
def cpp_regions(path: str) -> tuple[Region, ...]:
    """The then/else line ranges of the braced ``if (...) { ... } [else { ... }]`` statements of a C++ file
    (single-statement bodies on the condition's line are not separable by line and are left out)."""
    lines = _source_lines(path)
    text = "\n".join(lines)
    if not text:
        return ()
    key = str(Path(*Path(path).parts[-2:]))
    starts = [0]
    for ln in lines:
        starts.append(starts[-1] + len(ln) + 1)

    def line_of(pos: int) -> int:
        lo, hi = 0, len(starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if starts[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1

    out = []
    for m in re.finditer(r"\bif\s*\(", text):
        cpos = m.end() - 1
        cend = _matching(text, cpos, "(", ")")
        cond = " ".join(text[cpos + 1 : cend].split())
        k = cend + 1
        while k < len(text) and text[k] in " \t\n":
            k += 1
        if k >= len(text) or text[k] != "{":
            continue
        bend = _matching(text, k, "{", "}")
        out.append(Region(key, line_of(k) + (0 if text[k + 1 : k + 2] != "\n" else 1), line_of(bend), cond, "then"))
        e = re.compile(r"\s*else\s*\{").match(text, bend + 1)
        if e:
            eb = e.end() - 1
            out.append(Region(key, line_of(eb) + 1, line_of(_matching(text, eb, "{", "}")), cond, "else"))
    return tuple(out)


def regions_for(path: str) -> tuple[Region, ...]:
    return (
        python_regions(path)
        if path.endswith(".py")
        else cpp_regions(path)
        if path.endswith((".cu", ".cuh", ".h", ".cpp"))
        else ()
    )


@functools.cache
def cpp_constants() -> dict[str, float]:
    """``constexpr int/int64_t NAME = VALUE;`` of csrc/ (kHidden, kFeatures, kChunkAB, kThreads, ...)."""
    out: dict[str, float] = {}
    for f in sorted((ROOT / "csrc").glob("*.[ch]*")):
        for m in re.finditer(r"constexpr\s+(?:int|int64_t|unsigned|size_t)\s+(\w+)\s*=\s*([^;]+);", f.read_text()):
            try:
                out[m.group(1)] = _eval_bound(m.group(2), out)
            except ValueError:
                pass
    return out


def _eval_bound(expr: str, names: dict[str, float]) -> float:
    """A constant integer expression of names, literals and + - * / ( ) (anything else: ValueError)."""
    expr = re.sub(r"\b(\d+)[uUlL]*\b", r"\1", expr.strip())
    expr = re.sub(r"int64_t\{([^}]*)\}", r"(\1)", expr)
    if not re.fullmatch(r"[\w\s+\-*/()]+", expr):
        raise ValueError(expr)

    def sub(m: re.Match) -> str:
        tok = m.group(0)
        if tok.isdigit():
            return tok
        if tok in names:
            return repr(names[tok])
        raise ValueError(tok)

    return float(eval(re.sub(r"\b\w+\b", sub, expr), {"__builtins__": {}}))  # noqa: S307 (digits and + - * / only)


@dataclasses.dataclass
class Context:
    """What the model knows about one launch: the tiling (for loop trip counts) and how often the rare
    branch conditions hold on the parameter set."""

    backend: str  # "triton" | "cuda"
    warps: int
    consts: dict = dataclasses.field(default_factory=dict)  # Triton constexprs / csrc constants
    chunk: float | None = None  # CUDA: elements per block of the element loop
    tensor: dict = dataclasses.field(default_factory=dict)  # per-tensor kernels: M.nrow, M.ncol, nmean
    frac: dict = dataclasses.field(default_factory=dict)  # f_fact, f_unf, f_xt0, f_yt0, f_first, f_d0x
    flags: dict = dataclasses.field(default_factory=dict)  # CUDA prepare_kernel: sumsq_out, write_state

    @property
    def threads(self) -> int:
        return 32 * self.warps


def _split_args(s: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch in "([{"
        depth -= ch in ")]}"
        cur += ch
    return [*out, cur] if cur.strip() else out


def loop_trips(path: str, line: int, ctx: Context) -> float | None:
    """Trip count of the loop whose ``for`` statement is at ``path:line`` under ``ctx``; None when the
    line is no loop the model understands."""
    text = source_line(path, line)
    names = {**cpp_constants(), **ctx.consts, **ctx.tensor}
    m = re.match(r"for\s+\w+\s+in\s+(?:tl\.)?(?:static_)?range\((.*)\)\s*:", text)
    if m:
        try:
            args = [_eval_bound(a, names) for a in _split_args(m.group(1))]
        except ValueError:
            return None
        lo, hi, step = (0.0, args[0], 1.0) if len(args) == 1 else (args[0], args[1], args[2] if len(args) > 2 else 1.0)
        return max(0.0, math.ceil((hi - lo) / step))
    m = re.match(r"for\s*\(([^;]*);([^;]*);([^)]*)\)", text)
    if not m:
        return None
    init, cond, incr = (x.strip() for x in m.groups())
    cm = re.match(r"(\w+)\s*(<|<=|>)\s*(.+)$", cond)
    if not cm:
        return None
    var, op, bound = cm.groups()
    if re.fullmatch(rf"{var}\s*\+=\s*blockDim\.x", incr):  # block-strided
        if bound == "end":  # [ch.start, min(ch.start + chunk, n)): the chunk
            return None if ctx.chunk is None else math.ceil(ctx.chunk / ctx.threads)
        try:
            return math.ceil(
                _eval_bound(bound.replace("M.", "M_"), {k.replace("M.", "M_"): v for k, v in names.items()})
                / ctx.threads
            )
        except ValueError:
            return None
    if re.fullmatch(rf"(\+\+{var}|{var}\+\+|{var}\s*\+=\s*1)", incr) and op in ("<", "<="):
        try:
            lo = _eval_bound(init.split("=", 1)[1], names) if "=" in init else 0.0
            n = _eval_bound(bound, names) - lo + (op == "<=")
        except ValueError:
            return None
        prev = source_line(path, line - 1)
        um = re.match(r"#pragma\s+unroll\s+(\d+)", prev)
        return math.ceil(n / int(um.group(1))) if um else n
    if re.fullmatch(rf"{var}\s*>>=\s*1", incr) and op == ">":
        try:
            return max(0, int(_eval_bound(init.split("=", 1)[1], names)).bit_length())
        except (ValueError, IndexError):
            return None
    return None


FACTORED_CONDITIONS = ("factored", "(flags & 1) != 0", "M.factored")


def known_weight(cond: str, arm: str, ctx: Context) -> float:
    """The weight ``high`` gives the ``arm`` of ``if cond``: 1 (both arms counted), except for a branch on
    what kind of tensor the code runs on (factored or not), a fact of the set and no uncertainty: its
    fraction, as in ``low``."""
    c = " ".join(cond.split())
    if c in FACTORED_CONDITIONS or c == "!M.factored":
        return rare_weight(c, arm, ctx)
    return 1.0


def rare_weight(cond: str, arm: str, ctx: Context) -> float:
    """How often the ``arm`` of ``if cond`` runs per execution of the enclosing code, for the conditions
    the model knows (the others: 1, i.e. counted as always run)."""
    c = " ".join(cond.split())
    f = ctx.frac
    then = arm == "then"
    # Triton pass C tests `& ok` (the tensor is finite: the modelled path) and `xc == 0` (its chunk is the
    # first along X: per program, not per tile) inside compound conditions
    atoms = {a.strip(" ()") for a in c.split("&")} - {"ok"}
    if "xc == 0" in atoms:
        if not then:
            return 1.0
        if "yt == 0" in atoms:
            return f.get("f_first_chunk", 0.0)
        return f.get("f_xc0", 1.0) * (f.get("f_fact", 1.0) if "factored" in atoms else 1.0)
    if len(atoms) == 1 and atoms != {c}:
        return rare_weight(next(iter(atoms)), arm, ctx)
    if "xt == 0" in c and "yt == 0" in c:
        return f.get("f_first", 0.0) if then else 1.0
    if c == "xt == 0":
        return f.get("f_xt0", 1.0) if then else 1.0
    if c == "yt == 0":
        return f.get("f_yt0", 1.0) if then else 1.0
    if c in FACTORED_CONDITIONS:
        return f.get("f_fact", 1.0) if then else f.get("f_unf", 1.0)
    if c == "!M.factored":
        return f.get("f_unf", 1.0) if then else f.get("f_fact", 1.0)
    if c == "aligned":  # Celo2: the tile's plane is one slice (the tensor's factored axes are its last two)
        return f.get("f_aligned", 1.0) if then else 1.0 - f.get("f_aligned", 1.0)
    if c == "finite":  # Celo2: the tensor's gradient is finite (the modelled path)
        return 1.0 if then else 0.0
    if c in ("d0x", "(flags & 2) != 0"):
        return f.get("f_d0x", 1.0) if then else 1.0 - f.get("f_d0x", 0.0)
    if c.startswith("threadIdx.x < kFeatures"):
        return 1.0 / ctx.warps if then else 1.0  # only warp 0 has such lanes
    if c.startswith("__all_sync"):
        return 0.5  # pass A: per element-warp one of the two sums (row, col) is warp-uniform, the other not
    if c == "sumsq != nullptr":
        return float(ctx.flags.get("sumsq_out", True)) if then else 1.0
    if "__syncthreads_or(bad)" in c:
        return 0.0 if then else 1.0  # a non-finite gradient: never on the modelled path
    return 1.0


@dataclasses.dataclass
class Analysis:
    n_instrs: int
    static_mix: dict
    high_mix: dict  # executed per warp per program (block), both arms
    low_mix: dict  # executed per warp per program, rare arms weighted
    loops: list[dict]
    unresolved_loops: list[str]
    atomic_fallback_instrs: int
    mma_macs_high: float  # tensor-core multiply-adds per warp per program
    mma_macs_low: float


def mma_macs(ins: Instr) -> float:
    """Multiply-adds one warp contributes with an HMMA/HGMMA (a warpgroup instruction's shape / 4)."""
    m = re.search(r"\.(\d+)x(\d+)x(\d+)", ins.opcode)
    if m and ins.base.endswith("GMMA"):
        return int(m.group(1)) * int(m.group(2)) * int(m.group(3)) / 4
    m = re.search(r"\.(\d\d)(\d)(\d+)\b", ins.opcode)  # HMMA.1688 / HMMA.16816
    if m and ins.base == "HMMA":
        return int(m.group(1)) * int(m.group(2)) * int(m.group(3))
    return 0.0


def analyze(instrs: list[Instr], ctx: Context, cfg: CFG | None = None) -> Analysis:
    """Executed warp-instructions per warp per program (block) under ``ctx`` (see the module docstring)."""
    cfg = cfg or CFG(instrs)
    for lp in cfg.loops:
        lp.trips, lp.resolved, lp.source = 1.0, False, None
    fallback = atomic_fallback(instrs)
    unresolved = []
    by_source: dict[tuple, list[Loop]] = {}
    for lp in cfg.loops:
        inner = {b for q in cfg.loops if q is not lp and q.blocks < lp.blocks for b in q.blocks}
        cands = [instrs[cfg.blocks[b].end - 1] for b, _ in lp.back_edges]
        cands.append(instrs[cfg.blocks[lp.header].start])
        own = [instrs[i] for b in sorted(lp.blocks - inner) for i in range(cfg.blocks[b].start, cfg.blocks[b].end)]
        seen = Counter((i.file, i.line) for i in own if i.file)
        cands += [Instr(0, "", "", file=f, line=ln) for (f, ln), _ in seen.most_common()]
        for c in cands:
            trips = loop_trips(c.file, c.line, ctx) if c.file else None
            if trips is not None:
                lp.trips, lp.resolved = float(trips), True
                lp.source = f"{Path(c.file).name}:{c.line}: {source_line(c.file, c.line)[:80]}"
                by_source.setdefault((c.file, c.line, c.outer), []).append(lp)
                break
        if not lp.resolved:
            if all(cfg.blocks[b].start in fallback for b in lp.blocks):
                lp.trips, lp.resolved, lp.source = 0.0, True, "generic-atomic fallback (never taken)"
            else:
                first = instrs[cfg.blocks[lp.header].start]
                unresolved.append(f"{Path(first.file or '?').name}:{first.line} @0x{first.addr:x}")
    # copies of one source loop made by the compiler (unswitched on a runtime condition): `low` counts the
    # largest. Copies the source makes (one call of a loop's function per branch arm: different call sites,
    # so different keys) are weighted by their branch instead.
    dup: set[int] = set()
    for lps in by_source.values():
        if len(lps) > 1 and all(cfg.guarded(lp.header) for lp in lps):
            keep = max(lps, key=lambda lp: len(lp.blocks))
            for lp in lps:
                if lp is not keep:
                    dup |= lp.blocks - keep.blocks
    high, low = [0.0] * len(instrs), [0.0] * len(instrs)
    for b, blk in enumerate(cfg.blocks):
        if b not in cfg.reachable:
            continue
        mult = math.prod(lp.trips for lp in cfg.loops_of(b))
        guarded = cfg.guarded(b)
        for i in range(blk.start, blk.end):
            if i in fallback:
                continue
            w = h = mult
            if b in dup:
                w = 0.0
            elif guarded and instrs[i].file:
                for path, line in ((instrs[i].file, instrs[i].line), *instrs[i].outer):
                    key = str(Path(*Path(path).parts[-2:]))
                    for r in regions_for(path):
                        if r.file == key and r.first <= line <= r.last:
                            w *= rare_weight(r.cond, r.arm, ctx)
                            h *= known_weight(r.cond, r.arm, ctx)
            high[i] = h
            low[i] = w
    loops = [
        {
            "instrs": sum(cfg.blocks[b].end - cfg.blocks[b].start for b in lp.blocks),
            "trips": lp.trips,
            "depth": len([q for q in cfg.loops if lp.blocks <= q.blocks]),
            "source": lp.source,
        }
        for lp in cfg.loops
    ]
    return Analysis(
        n_instrs=len(instrs),
        static_mix=instruction_mix(instrs),
        high_mix=instruction_mix(instrs, high),
        low_mix=instruction_mix(instrs, low),
        loops=loops,
        unresolved_loops=unresolved,
        atomic_fallback_instrs=len(fallback),
        mma_macs_high=sum(h * mma_macs(ins) for h, ins in zip(high, instrs)),
        mma_macs_low=sum(w * mma_macs(ins) for w, ins in zip(low, instrs)),
    )


# ---- tools and compiled code --------------------------------------------------------------------------------
def nvidia_bin() -> Path:
    """Triton's bundled cuobjdump/nvdisasm/ptxas."""
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def _run(args: list, **kw) -> str:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kw)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{out.stderr[-2000:]}")
    return out.stdout + out.stderr


def disassemble(cubin: Path) -> dict[str, list[Instr]]:
    return parse_sass(_run([nvidia_bin() / "nvdisasm", "-gi", "-c", cubin]))


def res_usage(cubin: Path) -> dict[str, dict[str, int]]:
    """Per function: REG, STACK, SHARED (static), LOCAL from ``cuobjdump -res-usage``."""
    out: dict[str, dict[str, int]] = {}
    name = None
    for line in _run([nvidia_bin() / "cuobjdump", "-res-usage", cubin]).splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        if name and "REG:" in line:
            out[name] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
            name = None
    return out


def ptxas_info(ptx: str, workdir: Path) -> dict:
    """Registers, stack frame and spill bytes from ``ptxas -v`` on a kernel's PTX (for its own target)."""
    target = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    src = workdir / "k.ptx"
    src.write_text(ptx)
    text = _run([nvidia_bin() / "ptxas", "-v", f"-arch={target}", src, "-o", workdir / "k.o"])
    info = {"arch": target}
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if m:
        info.update(stack_bytes=int(m.group(1)), spill_store_bytes=int(m.group(2)), spill_load_bytes=int(m.group(3)))
    m = re.search(r"Used (\d+) registers", text)
    if m:
        info["regs"] = int(m.group(1))
    return info


def ptxas_version() -> str | None:
    try:
        m = re.search(r"release ([\d.]+), (V[\d.]+)", _run([nvidia_bin() / "ptxas", "--version"]))
    except (RuntimeError, OSError):
        return None
    return f"{m.group(1)} ({m.group(2)})" if m else None


def occupancy(regs: int, shared: int, warps: int) -> int:
    """Resident warps per SM (H100: 64 warps, 64 K registers allocated per warp in units of 256, 228 KB
    shared memory with 1 KB reserved per block, 32 blocks)."""
    per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = H100["regs_per_sm"] // (per_warp * warps)
    by_smem = H100["smem_per_sm"] // (shared + 1024) if shared else H100["max_blocks_per_sm"]
    blocks = min(H100["max_blocks_per_sm"], H100["max_warps_per_sm"] // warps, by_regs, by_smem)
    return blocks * warps


@dataclasses.dataclass
class Kernel:
    backend: str
    kernel: str  # lopt_reduce / reduce_kernel / ...
    variant: str
    instrs: list[Instr]
    warps: int
    regs: int
    shared: int
    consts: dict = dataclasses.field(default_factory=dict)
    stages: int | None = None
    stack_bytes: int | None = None
    spill_store_bytes: int | None = None
    spill_load_bytes: int | None = None
    local_bytes: int | None = None  # cuobjdump -res-usage LOCAL (local memory per thread: spills, arrays)
    arch: str = "sm_90"

    def resources(self) -> dict:
        return {
            "arch": self.arch,
            "num_warps": self.warps,
            "num_stages": self.stages,
            "regs": self.regs,
            "shared_bytes": self.shared,
            "stack_bytes": self.stack_bytes,
            "spill_store_bytes": self.spill_store_bytes,
            "spill_load_bytes": self.spill_load_bytes,
            "local_bytes": self.local_bytes,
            "local_instrs": sum(category(i) == "local" for i in self.instrs),
            "occupancy_warps_per_sm": occupancy(self.regs, self.shared, self.warps),
        }


def compile_triton(only: set[str] | None = None, arch: int = 90) -> list[Kernel]:
    """Every shipped μLO Triton variant (``tests/kernels/aot_compile.variants()``; Celo2's kernels are not
    modelled), or those named in ``only``, compiled for ``sm_<arch>`` with the interpreter off."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget

    from tests.kernels.aot_compile import options, variants

    target = GPUTarget("cuda", arch, 32)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, fn, sig, consts in variants():
            if only is not None and name not in only:
                continue
            # the model is of the default step: deterministic mode's variants and finishing sums are left out
            if only is None and (not name.startswith("lopt_") or name.endswith(" det") or "_finish" in name):
                continue
            compiled = triton.compile(triton.compiler.ASTSource(fn, sig, consts), target=target, options=options(fn))
            md = compiled.metadata
            cubin = work / "k.cubin"
            cubin.write_bytes(compiled.asm["cubin"])
            funcs = disassemble(cubin)
            fname = md.name if md.name in funcs else next(iter(funcs))
            usage = res_usage(cubin).get(fname, {})
            info = ptxas_info(compiled.asm["ptx"], work)
            out.append(
                Kernel(
                    "triton",
                    name.split()[0],
                    name,
                    funcs[fname],
                    md.num_warps,
                    usage.get("REG", info.get("regs", 0)),
                    max(md.shared, usage.get("SHARED", 0)),
                    consts={k: v for k, v in consts.items() if isinstance(v, (int, str))},
                    stages=md.num_stages,
                    stack_bytes=info.get("stack_bytes", usage.get("STACK")),
                    spill_store_bytes=info.get("spill_store_bytes"),
                    spill_load_bytes=info.get("spill_load_bytes"),
                    local_bytes=usage.get("LOCAL"),
                    arch=info["arch"],
                )
            )
    return out


def extension_path() -> Path | None:
    found = sorted((ROOT / "mulo").glob("_C*.so"))
    return found[0] if found else None


_TYPES = {"float": "fp32", "__nv_bfloat16": "bf16", "__half": "fp16"}


def _short_name(mangled: str) -> tuple[str, str]:
    """(kernel, kernel<types>) of a mangled mulo CUDA kernel name (c++filt when present)."""
    pretty = mangled
    if shutil.which("c++filt"):
        pretty = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip() or mangled
    m = re.search(r"(\w+_kernel)(<[^>]*>)?\(", pretty)
    if not m:
        m2 = re.search(r"\d+(\w+_kernel)", mangled)
        base = m2.group(1) if m2 else mangled
        return base, base
    args = m.group(2) or ""
    for k, v in _TYPES.items():
        args = re.sub(rf"\b{k}\b", v, args)
    return m.group(1), m.group(1) + args.replace(" ", "")


def cuda_kernels(so: Path | None = None, only_fp32: bool = False) -> list[Kernel]:
    """The CUDA extension's sm_90 kernels (empty when the extension has no sm_90 code)."""
    so = so or extension_path()
    if so is None:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            listing = _run([nvidia_bin() / "cuobjdump", "--list-elf", so])
        except RuntimeError as err:  # a CPU-only build: no device code at all
            if "does not contain device code" not in str(err):
                raise
            print(f"gpu_static: WARNING {so.name} has no device code (a CPU-only build): no CUDA rows", file=sys.stderr)
            return []
        if "sm_90" not in listing:
            return []
        _run([nvidia_bin() / "cuobjdump", "-xelf", "sm_90", so], cwd=tmp)
        cubins = sorted(Path(tmp).glob("*sm_90*.cubin"))
        if not cubins:
            return []
        out = []
        for cubin in cubins:
            usage = res_usage(cubin)
            for mangled, instrs in disassemble(cubin).items():
                base, variant = _short_name(mangled)
                if only_fp32 and "<" in variant and set(re.findall(r"\w+", variant.split("<", 1)[1])) != {"fp32"}:
                    continue
                u = usage.get(mangled, {})
                warps = 8  # every launch in csrc/lopt_cuda.cu uses kThreads
                if "kThreads" in cpp_constants():
                    warps = int(cpp_constants()["kThreads"]) // 32
                out.append(
                    Kernel(
                        "cuda",
                        base,
                        variant,
                        instrs,
                        warps,
                        u.get("REG", 0),
                        u.get("SHARED", 0),
                        stack_bytes=u.get("STACK"),
                        local_bytes=u.get("LOCAL"),
                        arch="sm_90",
                    )
                )
        return out


# ---- the parameter set: bytes per pass, tiles, rare-branch frequencies ------------------------------------------
def pass_bytes(pset, p_bytes: int = 4, g_bytes: int = 4, s_bytes: int = 4) -> dict[str, int]:
    """Minimum DRAM bytes of each pass over a set (what the kernels load and store, each element once):
    A reads g (and reads + writes the O(rows + cols) accumulators' sums); B reads g, p, m₁₋₃, v (rank < 2:
    u₁₋₃; factored: the accumulators); C reads g, p, m₁₋₃, v (u₁₋₃) and writes p, m₁₋₃, v (u₁₋₃), reads
    the accumulators. Sums to ``bench.common.mulo_bytes`` (72 B/element in fp32)."""
    from mulo.lopt.shapes import accumulator_shapes, math_shape

    out = {"A": 0, "B": 0, "C": 0}
    for spec in pset.specs:
        n = spec.numel
        accs = accumulator_shapes(math_shape(spec.shape))
        out["A"] += n * g_bytes
        out["B"] += n * (g_bytes + p_bytes + 4 * s_bytes)
        out["C"] += n * (g_bytes + 2 * p_bytes + 8 * s_bytes)
        if "full" in accs:
            out["B"] += n * 3 * s_bytes
            out["C"] += n * 6 * s_bytes
        else:
            acc = (math.prod(accs["row"]) + math.prod(accs["col"])) * s_bytes
            out["A"] += 2 * acc
            out["B"] += acc
            out["C"] += acc
    return out


def adamw_floor_bytes(pset, p_bytes: int = 4, g_bytes: int = 4) -> int:
    from bench.common import adamw_bytes

    return sum(adamw_bytes(s.shape, p_bytes, g_bytes) for s in pset.specs)


def _layout(shape: tuple[int, ...], by: int):
    from mulo.kernels.lopt_plan import tensor_layout

    return tensor_layout(shape, "torch", by)


def triton_tiles(pset, bx: int, by: int, nsub: int = 1) -> dict:
    """Programs of a Triton pass over the set (chunks of ``nsub`` tiles of ``bx × by`` along X, as
    ``lopt_plan`` builds them) and how often, per tile, the rare conditions hold."""
    from mulo.lopt.shapes import factored_dims

    programs = tiles = xt0 = yt0 = fact = d0x = xc0 = aligned = 0
    for spec in pset.specs:
        lay = _layout(spec.shape, by)
        nb = lay.n_a * lay.n_b * lay.n_c
        nyt = math.ceil(lay.ny / by)
        chunks = nb * math.ceil(lay.nx / (bx * nsub)) * nyt
        xc0 += nb * nyt  # chunks at the first X position (as many as tiles at xt == 0)
        t = chunks * nsub  # every program runs nsub subtiles (those past nx masked)
        programs += chunks
        tiles += t
        xt0 += nb * nyt
        yt0 += nb * math.ceil(lay.nx / bx)
        fact += t if lay.factored else 0
        d0x += t if (lay.factored and lay.d0_is_x) else 0
        dims = factored_dims(spec.shape)
        aligned += t if dims is not None and sorted(dims) == [len(spec.shape) - 2, len(spec.shape) - 1] else 0
    return {
        "programs": programs,
        "frac": {
            "f_xt0": xt0 / tiles,
            "f_yt0": yt0 / tiles,
            "f_first": len(pset.specs) / tiles,
            "f_xc0": xc0 / programs,  # per program (code before a kernel's loop over its chunk's tiles)
            "f_first_chunk": len(pset.specs) / programs,
            "f_fact": fact / tiles,
            "f_unf": 1 - fact / tiles,
            "f_d0x": d0x / tiles,
            "f_aligned": aligned / tiles,
        },
    }


def cuda_blocks(pset, chunk: int) -> dict:
    """Blocks of a CUDA element pass (chunks of ``chunk`` elements per tensor) and the factored share."""
    blocks = fact = 0
    for spec in pset.specs:
        b = math.ceil(spec.numel / chunk)
        blocks += b
        fact += b if len(spec.shape) >= 2 and sorted(spec.shape)[-2] > 1 else 0
    return {"programs": blocks, "frac": {"f_fact": fact / blocks, "f_unf": 1 - fact / blocks}}


def cuda_tensor_geometry(pset) -> list[dict]:
    """Per tensor: the row/column accumulator lengths (per decay) and the row-mean count the CUDA
    per-tensor kernels loop over (0 for rank < 2 tensors, which return at once)."""
    from mulo.lopt.shapes import accumulator_shapes, factored_dims, math_shape

    out = []
    for spec in pset.specs:
        shape = math_shape(spec.shape)
        accs = accumulator_shapes(shape)
        if "full" in accs:
            out.append({"M_nrow": 0, "M_ncol": 0, "nmean": 0, "factored": False})
            continue
        d1, d0 = factored_dims(shape)
        nrow = math.prod(accs["row"][1:])
        out.append({"M_nrow": nrow, "M_ncol": math.prod(accs["col"][1:]), "nmean": nrow // shape[d1], "factored": True})
    return out


# ---- the prediction --------------------------------------------------------------------------------------------
def issue_ms(warp_instrs: float, machine: dict = H100) -> float:
    rate = machine["sms"] * machine["schedulers_per_sm"] * machine["issue_per_scheduler_per_cycle"]
    return warp_instrs / (rate * machine["clock_ghz"] * 1e9) * 1e3


def dram_ms(nbytes: float, machine: dict = H100) -> float:
    return nbytes / (machine["hbm_TBps"] * 1e12 * machine["bw_efficiency"]) * 1e3


# warp-instructions per SM per cycle of the pipes slower than issue (Hopper SM: 4 partitions, each with 32 FP32
# and 16 INT32 lanes; 16 MUFU results per SM per cycle); tensor cores in dense MACs per SM per cycle (wgmma)
PIPES = {"int": 2.0, "mufu": 0.5, "conversion": 0.5}
TENSOR_MACS_PER_SM_CYCLE = {"tf32": 1024, "bf16": 2048, "fp16": 2048, "ieee": 0}


def pipe_ms(mix_total: dict, macs: float, dot: str | None, machine: dict = H100) -> dict:
    """Lower bounds from the slower pipes: integer ALU, MUFU, and the tensor cores (wgmma rate; HMMA on
    Hopper runs at roughly half of it)."""
    cyc = machine["sms"] * machine["clock_ghz"] * 1e9
    out = {k: mix_total.get(k, 0) / (rate * cyc) * 1e3 for k, rate in PIPES.items()}
    rate = TENSOR_MACS_PER_SM_CYCLE.get("tf32" if (dot or "tf32").startswith("tf32") else dot) or 0
    out["tensor"] = macs / (rate * cyc) * 1e3 if rate and macs else 0.0
    return {k: round(v, 4) for k, v in out.items()}


def _scaled(mix: dict, factor: float) -> dict:
    return {k: v * factor for k, v in mix.items()}


def _round_mix(mix: dict, nd: int = 3) -> dict:
    return {k: round(v, nd) for k, v in mix.items() if v}


@dataclasses.dataclass
class Launch:
    """One kernel's modelled cost over the set: executed warp-instructions (low/high), bytes, time."""

    kernel: Kernel
    programs: int
    low: float
    high: float
    mix_low: dict  # per-class warp-instructions over the set (low)
    macs: float  # tensor-core multiply-adds over the set (low)
    dram_bytes: float = 0.0
    critical_ms: float = 0.0  # per-tensor kernels: the largest tensor's block alone on one SM
    analysis: Analysis | None = None
    context: dict = dataclasses.field(default_factory=dict)

    def issue_ms(self, bound: str = "low", machine: dict = H100) -> float:
        crit = self.critical_ms * H100["clock_ghz"] / machine["clock_ghz"]
        return max(issue_ms(self.low if bound == "low" else self.high, machine), crit)

    def time_ms(self, bound: str = "low", machine: dict = H100) -> float:
        return max(dram_ms(self.dram_bytes, machine), self.issue_ms(bound, machine))


_CFG_CACHE: dict[int, CFG] = {}


def _cfg(k: Kernel) -> CFG:
    if id(k) not in _CFG_CACHE:
        _CFG_CACHE[id(k)] = CFG(k.instrs)
    return _CFG_CACHE[id(k)]


def _uniform_launch(k: Kernel, programs: int, a: Analysis, context: dict) -> Launch:
    """``programs`` programs (blocks) of ``k.warps`` warps, each executing what ``a`` counted per warp."""
    f = programs * k.warps
    m = a.mma_macs_low * f
    return Launch(k, programs, a.low_mix["total"] * f, a.high_mix["total"] * f, _scaled(a.low_mix, f), m,
                  analysis=a, context={"programs": programs, **context})  # fmt: skip


def triton_launch(k: Kernel, pset) -> Launch:
    """A Triton pass kernel over the set: one program per chunk of NSUB tiles of BX × BY."""
    bx, by, nsub = int(k.consts["BX"]), int(k.consts["BY"]), int(k.consts.get("NSUB", 1))
    tiles = triton_tiles(pset, bx, by, nsub)
    a = analyze(k.instrs, Context("triton", k.warps, consts=dict(k.consts), frac=tiles["frac"]), _cfg(k))
    frac = {name: round(v, 6) for name, v in tiles["frac"].items()}
    ctx = {"tile": [bx, by], "subtiles": nsub, "elements_per_program": bx * by * nsub, **frac}
    return _uniform_launch(k, tiles["programs"], a, ctx)


_CUDA_CHUNK = {"reduce_kernel": "kChunkAB", "sumsq_kernel": "kChunkAB", "apply_kernel": "kChunkC"}


def cuda_chunk(kernel: str) -> int | None:
    """Elements per block of a CUDA element kernel: the ``ch.start + kChunk…`` bound in its body."""
    text = "\n".join(_source_lines(str(ROOT / "csrc" / "lopt_cuda.cu")))
    name = _CUDA_CHUNK.get(kernel)
    m = re.search(rf"__global__\s+void\s+{kernel}\s*\(", text)
    if m:
        start = text.find("{", m.end())
        cm = re.search(r"ch\.start\s*\+\s*(\w+)", text[start : _matching(text, start, "{", "}")])
        name = cm.group(1) if cm else name  # 2-d tile kernels: no linear bound, the table above
    value = cpp_constants().get(name) if name else None
    return int(value) if value else None


def cuda_launch(k: Kernel, pset, flags: dict | None = None) -> Launch:
    """A CUDA kernel over the set: element kernels (one block per chunk of every tensor) or per-tensor
    kernels (prepare/fold: one block per tensor; finish: one thread per tensor)."""
    chunk = cuda_chunk(k.kernel)
    cfg = _cfg(k)
    if chunk:
        blocks = cuda_blocks(pset, chunk)
        a = analyze(k.instrs, Context("cuda", k.warps, chunk=chunk, frac=blocks["frac"], flags=flags or {}), cfg)
        frac = {name: round(v, 6) for name, v in blocks["frac"].items()}
        return _uniform_launch(k, blocks["programs"], a, {"elements_per_program": chunk, **frac})
    if k.kernel == "finish_kernel":
        a = analyze(k.instrs, Context("cuda", k.warps), cfg)
        return _uniform_launch(k, math.ceil(len(pset.specs) / (32 * k.warps)), a, {})
    geos = Counter(tuple(sorted(g.items())) for g in cuda_tensor_geometry(pset))
    low = high = crit = 0.0
    mix: Counter = Counter()
    rep = None
    for geo, count in geos.items():
        g = dict(geo)
        fr = {"f_fact": float(g["factored"]), "f_unf": 1.0 - float(g["factored"])}
        a = analyze(
            k.instrs,
            Context(
                "cuda", k.warps, tensor={k_: v for k_, v in g.items() if k_ != "factored"}, frac=fr, flags=flags or {}
            ),
            cfg,
        )
        low += a.low_mix["total"] * k.warps * count
        high += a.high_mix["total"] * k.warps * count
        mix.update(_scaled(a.low_mix, k.warps * count))
        per_block = a.low_mix["total"] * math.ceil(k.warps / H100["schedulers_per_sm"])
        crit = max(crit, per_block / (H100["clock_ghz"] * 1e9) * 1e3)
        if rep is None or g["M_nrow"] + g["M_ncol"] > rep[0]:
            rep = (g["M_nrow"] + g["M_ncol"], a)
    return Launch(
        k,
        len(pset.specs),
        low,
        high,
        dict(mix),
        0.0,
        critical_ms=crit,
        analysis=rep[1] if rep else None,
        context={"programs": len(pset.specs), "per_tensor": True},
    )


# ---- passes, configurations, rows -------------------------------------------------------------------------------
CUDA_PASSES = {  # kernel, prepare_kernel flags; the element kernel of each pass carries the pass's DRAM bytes
    "A": [("reduce_kernel", None)],
    "B": [("prepare_kernel", {"sumsq_out": True}), ("sumsq_kernel", None)],
    "C": [
        ("prepare_kernel", {"sumsq_out": False}),
        ("fold_kernel", None),
        ("apply_kernel", None),
        ("finish_kernel", None),
    ],
}
TRITON_PASSES = {"A": "lopt_reduce", "B": "lopt_sumsq", "C": "lopt_apply"}
PASS_NAMES = {"A": "row/col sums", "B": "sums of squares", "C": "apply", "E": "apply (Newton–Schulz steps)"}
CELO2_PASS_NAMES = {"A": "row/col sums", "B": "moments, sums of squares", "C": "direction", "E": "apply"}
# Celo2's Triton passes (kernels/celo2.py): Celo2 stores the direction (C), Newton–Schulz runs in torch (not
# modelled here: batched matrix products, timed by bench/step_time.py on a GPU), E applies; Celo2-base sums d²
# in C and recomputes d to apply it in a second C.
CELO2_CONFIGS = {
    "celo2 triton": {"A": ["celo2_reduce"], "B": ["celo2_sumsq"], "C": ["celo2_direction mode=0"],
                     "E": ["celo2_apply"]},
    "celo2_base triton": {"A": ["celo2_reduce"], "B": ["celo2_sumsq"],
                          "C": ["celo2_direction mode=1", "celo2_direction mode=2"]},
}  # fmt: skip


def celo2_learned_set(pset):
    """The tensors Celo2's learned rule steps (rank ≥ 2); the others take its AdamW route."""
    return dataclasses.replace(pset, name=pset.name, specs=tuple(s for s in pset.specs if len(s.shape) >= 2))


def celo2_pass_bytes(pset, orthogonalize: bool) -> dict[str, int]:
    """Minimum DRAM bytes of Celo2's Triton passes over the learned tensors (fp32 parameters, gradients, state;
    float32 direction): A reads g; B reads g, p, m₁₋₃, v and writes m₁₋₃, v; C reads g, p, m₁₋₃, v and writes
    d (Celo2) — Celo2-base's two C passes read them twice and the second writes p; E reads the orthogonalized
    step and reads/writes p. Row/column accumulators as μLO's (O(rows + cols))."""
    from mulo.lopt.shapes import accumulator_shapes

    out = dict.fromkeys(("A", "B", "C", "E") if orthogonalize else ("A", "B", "C"), 0)
    for spec in celo2_learned_set(pset).specs:
        n = spec.numel
        accs = accumulator_shapes(tuple(spec.shape))
        acc = (math.prod(accs["row"]) + math.prod(accs["col"])) * 4
        out["A"] += n * 4 + 2 * acc
        out["B"] += n * (4 + 4 + 16 + 16) + acc
        if orthogonalize:
            out["C"] += n * (4 + 4 + 16 + 4) + acc
            out["E"] += n * (4 + 8) + acc
        else:
            out["C"] += n * (4 + 4 + 16) + n * (4 + 8 + 16) + 2 * acc
    return out


def celo2_rows(pset, machine: dict, check: bool = False) -> list[dict]:
    """Kernel, pass and summary rows of Celo2's Triton step over the set (the learned tensors' passes; the
    AdamW route's tensors charged at fused AdamW's floor; Newton–Schulz not modelled)."""
    learned = celo2_learned_set(pset)
    idx = "int64" if max(3 * s.numel for s in learned.specs) >= 2**31 - 1 else "int32"
    store = f"p=fp32 g=fp32 s=fp32 idx={idx}"
    names = {n: f"{n.split()[0]} {store}" + (f" {n.split()[1]}" if " " in n else "")
             for passes in CELO2_CONFIGS.values() for ks in passes.values() for n in ks}  # fmt: skip
    by_name = {k.variant: k for k in compile_triton(set(names.values()))}
    rows: list[dict] = []
    kernel_rows: list[dict] = []
    route = [s for s in pset.specs if len(s.shape) < 2]
    from bench.common import adamw_bytes

    route_ms = dram_ms(sum(adamw_bytes(s.shape) for s in route), machine)
    for config, passes in CELO2_CONFIGS.items():
        nbytes = celo2_pass_bytes(pset, config.startswith("celo2 "))
        by_pass = {p: [triton_launch(by_name[names[n]], learned) for n in ks] for p, ks in passes.items()}
        for p, launches_ in by_pass.items():  # Celo2-base's C is two kernels: 24 and 28 of its 52 B/element
            shares = [24 / 52, 28 / 52] if len(launches_) == 2 else [1.0]
            for L, share in zip(launches_, shares):
                L.dram_bytes = nbytes[p] * share
        out = predict(config, by_pass, learned, nbytes, kernel_rows, machine, pass_names=CELO2_PASS_NAMES)
        summary = out[-1]
        adamw = dram_ms(adamw_floor_bytes(pset), machine)
        for key in ("predicted_ms_low", "predicted_ms_high", "predicted_ms_with_pipes", "dram_floor_ms"):
            summary[key] = round(summary[key] + route_ms, 3)
        summary.update(
            set=pset.name,
            n_elements=pset.numel,
            learned_elements=learned.numel,
            adamw_route_ms=round(route_ms, 3),
            adamw_fused_floor_ms=round(adamw, 3),
            ratio_to_adamw_low=round(summary["predicted_ms_low"] / adamw, 3),
            ratio_to_adamw_high=round(summary["predicted_ms_high"] / adamw, 3),
            floor_ratio_to_adamw=round(summary["dram_floor_ms"] / adamw, 3),
            newton_schulz="not modelled (torch batched matrix products; bench/step_time.py times it on a GPU)",
        )
        rows += out
    return kernel_rows + rows


def triton_configs(kernels: list[Kernel], pset) -> dict[str, dict[str, list[Kernel]]]:
    """``triton dot=<mode>`` → pass → kernels, for fp32 storage at the index width the set needs; and
    ``triton dot=tf32 state=bf16``: fp32 parameters and gradients with bfloat16 optimizer state
    (``MuLO(state_dtype=torch.bfloat16)``). Under tf32, pass C is two launches as ``lopt_apply.apply_launches``
    makes them: tf32 over the rank ≥ 2 tensors, tf32x3 over the rank < 2 ones (``(kernel, {"tensors": kind})``)."""
    idx = "int64" if max(3 * s.numel for s in pset.specs) >= 2**31 - 1 else "int32"
    by_name = {k.variant: k for k in kernels}
    out = {}
    for state, dots in (("fp32", ("tf32", "tf32x3", "ieee", "bf16")), ("bf16", ("tf32",))):
        store = f"p=fp32 g=fp32 s={state} idx={idx}"
        for dot in dots:
            names = {"A": f"lopt_reduce {store}", "B": f"lopt_sumsq {store}", "C": f"lopt_apply {store} dot={dot}"}
            split = f"lopt_apply {store} dot=tf32x3"  # tf32's launch over the rank < 2 tensors (apply_launches)
            if all(n in by_name for n in names.values()) and (dot != "tf32" or split in by_name):
                passes = {p: [by_name[n]] for p, n in names.items()}
                if dot == "tf32":
                    passes["C"] = [
                        (by_name[names["C"]], {"tensors": "rank>=2"}),
                        (by_name[split], {"tensors": "rank<2"}),
                    ]
                out[f"triton dot={dot}" + ("" if state == "fp32" else f" state={state}")] = passes
    return out


def tensor_subset(pset, which: str | None):
    """The set's tensors of rank ≥ 2 (``"rank>=2"``) or rank < 2 (``"rank<2"``), or the set itself (``None``):
    the tensors a launch over one kind of chunk covers."""
    if which is None:
        return pset
    keep = {"rank>=2": lambda s: len(s.shape) >= 2, "rank<2": lambda s: len(s.shape) < 2}[which]
    return dataclasses.replace(pset, specs=tuple(s for s in pset.specs if keep(s)))


def config_bytes(config: str, pset) -> dict[str, int]:
    """Pass → DRAM bytes of a configuration (2-byte state where it says ``state=bf16``)."""
    return pass_bytes(pset, s_bytes=2 if "state=bf16" in config else 4)


def cuda_config(kernels: list[Kernel]) -> dict[str, list[tuple[Kernel, dict | None]]] | None:
    fp32 = {}
    for k in kernels:
        args = set(re.findall(r"\w+", k.variant.split("<", 1)[1])) if "<" in k.variant else {"fp32"}
        if args == {"fp32"}:
            fp32[k.kernel] = k
    if not all(name in fp32 for steps in CUDA_PASSES.values() for name, _ in steps):
        return None
    return {p: [(fp32[name], flags) for name, flags in steps] for p, steps in CUDA_PASSES.items()}


def extension_stale(so: Path | None) -> list[str]:
    """CUDA sources modified after the extension was built (its SASS line info then names other lines)."""
    if so is None:
        return []
    built = so.stat().st_mtime
    return [str(f.relative_to(ROOT)) for f in sorted((ROOT / "csrc").glob("*.[ch]*")) if f.stat().st_mtime > built]


def provenance() -> dict:
    import torch

    from mulo.provenance import cpu_model, git, git_sha

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "kernels", "csrc", "bench/gpu_static.py")
    so = extension_path()
    stale = extension_stale(so)
    if stale:
        print(
            f"gpu_static: WARNING {so.name} is older than {', '.join(stale)}: its line info may not match the "
            "sources (loops unresolved, branches mis-weighted); rebuild it (pip install -e .)",
            file=sys.stderr,
        )
    return {
        "source": "static model, no GPU",
        "model_device": H100["name"],
        "git_sha": git_sha(),
        "git_dirty_kernels": bool(dirty) if dirty is not None else None,
        "torch_version": torch.__version__,
        "triton_version": triton_version,
        "ptxas": ptxas_version(),
        "extension": so.name if so else None,
        "extension_older_than_sources": stale,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": f"{cpu_model()} ({platform.system()}-{platform.machine()}, no GPU)",
        "python_version": platform.python_version(),
    }


def _per(
    mix: dict,
    n: float,
    keys=(
        "total",
        "tensor",
        "fp32",
        "ffma",
        "mufu",
        "int",
        "conversion",
        "ldg",
        "stg",
        "lds",
        "sts",
        "atomic",
        "barrier",
        "branch",
    ),
) -> dict:
    return {k: round(mix.get(k, 0) / n, 4) for k in keys}


def kernel_row(launch: Launch, pset) -> dict:
    k, a = launch.kernel, launch.analysis
    per_tensor = launch.context.get("per_tensor") or k.kernel == "finish_kernel"
    row = {
        "kind": "kernel",
        "backend": k.backend,
        "kernel": k.kernel,
        "variant": k.variant,
        **k.resources(),
        "sass_instrs": a.n_instrs,
        "mix_static": _round_mix(a.static_mix),
        "global_access_widths": dict(Counter(str(access_bytes(i)) for i in k.instrs if category(i) in ("ldg", "stg"))),
        "loops": a.loops,
        "unresolved_loops": a.unresolved_loops,
        "atomic_fallback_instrs": a.atomic_fallback_instrs,
        "tiling": launch.context,
        "set": pset.name,
        "warp_instr_per_program_low": round(a.low_mix["total"] * k.warps, 1),
        "warp_instr_per_program_high": round(a.high_mix["total"] * k.warps, 1),
    }
    if not per_tensor:
        row["warp_instr_per_element_low"] = round(launch.low / pset.numel, 4)
        row["warp_instr_per_element_high"] = round(launch.high / pset.numel, 4)
        row["mix_per_element_low"] = _per(launch.mix_low, pset.numel)
        row["mma_macs_per_element"] = round(launch.macs / pset.numel, 1)
        row["issue_ms_low"] = round(issue_ms(launch.low), 3)
        row["issue_ms_high"] = round(issue_ms(launch.high), 3)
    else:
        row["issue_ms_low"] = round(max(issue_ms(launch.low), launch.critical_ms), 4)
        row["issue_ms_high"] = round(max(issue_ms(launch.high), launch.critical_ms), 4)
    return row


def launches(passes: dict, pset, nbytes: dict[str, int]) -> dict[str, list[Launch]]:
    """Pass → the modelled launches of one configuration (the element kernel carries the pass's bytes)."""
    out = {}
    for p, steps in passes.items():
        out[p] = []
        for step in steps:
            k, fl = step if isinstance(step, tuple) else (step, None)
            if k.backend == "triton":  # fl: {"tensors": kind} for a launch over one kind of tensor's chunks
                sub = tensor_subset(pset, (fl or {}).get("tensors"))
                if not sub.specs:
                    continue
                L = triton_launch(k, sub)
                L.dram_bytes = nbytes[p] * sub.numel / pset.numel  # the pass's bytes by element share
                if sub is not pset:
                    L.context["tensors"] = fl["tensors"]
            else:
                L = cuda_launch(k, pset, fl)
                if cuda_chunk(k.kernel):
                    L.dram_bytes = nbytes[p]
            out[p].append(L)
    return out


def predict(
    config: str,
    by_pass: dict[str, list[Launch]],
    pset,
    nbytes: dict[str, int],
    kernel_rows: list[dict],
    machine: dict = H100,
    pass_names: dict = PASS_NAMES,
) -> list[dict]:
    """Pass rows and the summary row of one configuration on ``machine``."""
    rows = []
    total_lo = total_hi = 0.0
    dot = config.split("dot=")[1] if "dot=" in config else None
    flags = {"spills": False, "tensor_cores_in_apply": False, "unresolved_loops": []}
    for p, launches in by_pass.items():
        for L in launches:
            k = L.kernel
            kr = kernel_row(L, pset)
            whole_set = "tensors" not in L.context  # a kernel's row describes its launch over the whole set
            if whole_set and kr["variant"] not in {r["variant"] for r in kernel_rows if r["kind"] == "kernel"}:
                kernel_rows.append(kr)
            flags["spills"] |= bool(kr.get("spill_store_bytes") or kr.get("local_instrs"))
            flags["unresolved_loops"] += [f"{k.kernel}: {u}" for u in L.analysis.unresolved_loops]
            if p == "C" and k.kernel in ("lopt_apply", "apply_kernel"):
                flags["tensor_cores_in_apply"] = L.analysis.static_mix["tensor"] > 0
        lo = sum(L.time_ms("low", machine) for L in launches)
        hi = sum(L.time_ms("high", machine) for L in launches)
        total_lo, total_hi = total_lo + lo, total_hi + hi
        mix: Counter = Counter()
        for L in launches:
            mix.update(L.mix_low)
        issue_lo = sum(L.issue_ms("low", machine) for L in launches)
        issue_hi = sum(L.issue_ms("high", machine) for L in launches)
        d = dram_ms(nbytes[p], machine)
        rows.append(
            {
                "kind": "pass",
                "backend": config.split()[0],
                "config": config,
                "machine": machine["name"],
                "pass": p,
                "pass_name": pass_names[p],
                "kernels": [L.kernel.variant for L in launches],
                "set": pset.name,
                "n_elements": pset.numel,
                "dram_bytes": nbytes[p],
                "bytes_per_element": round(nbytes[p] / pset.numel, 3),
                "dram_ms": round(d, 3),
                "warp_instr_per_element_low": round(sum(L.low for L in launches) / pset.numel, 3),
                "warp_instr_per_element_high": round(sum(L.high for L in launches) / pset.numel, 3),
                "mix_per_element_low": _per(mix, pset.numel),
                "issue_ms_low": round(issue_lo, 3),
                "issue_ms_high": round(issue_hi, 3),
                "pipe_ms": pipe_ms(mix, sum(L.macs for L in launches), dot, machine),
                "predicted_ms_low": round(lo, 3),
                "predicted_ms_high": round(hi, 3),
                "bound": "memory" if d >= issue_lo else "issue",
            }
        )
        slowest_pipe = max(rows[-1]["pipe_ms"].values())
        rows[-1]["predicted_ms_with_pipes"] = round(max(lo, slowest_pipe), 3)
        if slowest_pipe > max(d, issue_lo):
            rows[-1]["bound_with_pipes"] = max(rows[-1]["pipe_ms"], key=rows[-1]["pipe_ms"].get)
    adamw = dram_ms(adamw_floor_bytes(pset), machine)
    floor = dram_ms(sum(nbytes.values()), machine)
    rows.append(
        {
            "kind": "summary",
            "backend": config.split()[0],
            "config": config,
            "set": pset.name,
            "n_elements": pset.numel,
            "n_tensors": len(pset.specs),
            "predicted_ms_low": round(total_lo, 3),
            "predicted_ms_high": round(total_hi, 3),
            "predicted_ms_with_pipes": round(sum(r["predicted_ms_with_pipes"] for r in rows), 3),
            "per_pass_ms": {r["pass"]: [r["predicted_ms_low"], r["predicted_ms_high"]] for r in rows},
            "dram_floor_ms": round(floor, 3),
            "adamw_fused_floor_ms": round(adamw, 3),
            "ratio_to_adamw_low": round(total_lo / adamw, 3),
            "ratio_to_adamw_high": round(total_hi / adamw, 3),
            "floor_ratio_to_adamw": round(floor / adamw, 3),
            "spills": flags["spills"],
            "tensor_cores_in_apply": flags["tensor_cores_in_apply"],
            "unresolved_loops": flags["unresolved_loops"],
            "machine": machine,
            "approximations": APPROXIMATIONS,
        }
    )
    return rows


# ---- on a GPU: per-kernel device time of real steps, and the prediction against it ------------------------------
def kernel_pass(names: list[str]) -> list[str]:
    """The pass of each kernel of one step, in launch order: the three element kernels name their pass;
    the CUDA per-tensor kernels belong to the next element kernel's pass (prepare before sumsq: B; before
    apply: C), finish to C; anything else (fills, copies) is "other"."""
    element = {
        "lopt_reduce": "A",
        "reduce_kernel": "A",
        "lopt_sumsq": "B",
        "sumsq_kernel": "B",
        "lopt_apply": "C",
        "apply_kernel": "C",
    }
    out: list[str | None] = []
    for n in names:
        m = re.search(r"(lopt_(?:reduce|sumsq|apply)|(?:reduce|sumsq|apply|prepare|fold|finish)_kernel)", n)
        base = m.group(1) if m else None
        out.append(element.get(base) if base in element else ("C" if base == "finish_kernel" else base and "next"))
    nxt = "other"
    for i in range(len(out) - 1, -1, -1):
        if out[i] in ("A", "B", "C"):
            nxt = out[i]
        elif out[i] == "next":
            out[i] = nxt
        elif out[i] is None:
            out[i] = "other"
    return out  # type: ignore[return-value]


def measure(set_name: str, backends: list[str], steps: int = 3) -> dict:
    """On a CUDA device: per pass device time of ``steps`` μLO steps (torch.profiler, per kernel, in launch
    order) for each backend, the step's own time (events), fused AdamW's step and the copy bandwidth."""
    import statistics

    import torch
    from torch.profiler import ProfilerActivity, profile

    import mulo
    from bench.common import make_setup, measure_copy_bandwidth, param_set

    dev = torch.device("cuda")
    pset = param_set(set_name)
    setup = make_setup(pset, dev, n_grad_sets=1)
    setup.use_grads(0)
    out = {"device": torch.cuda.get_device_name(dev), "copy_bandwidth_GBps": measure_copy_bandwidth(dev) / 1e9}

    def timed(fn) -> float:
        times = []
        for _ in range(steps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        return statistics.median(times)

    opt = torch.optim.AdamW(setup.groups(1e-3, scale_lr=True), lr=1e-3, fused=True)
    opt.step()
    out["adamw_fused_ms"] = timed(opt.step)
    del opt
    torch.cuda.empty_cache()
    for b in backends:
        try:
            opt = mulo.MuLO(setup.groups(1.0), backend=b)
            opt.step()
            opt.step()  # compile, allocate state, warm up
            torch.cuda.synchronize()
            step_ms = timed(opt.step)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(steps):
                    opt.step()
                torch.cuda.synchronize()
            kern = [e for e in prof.events() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
            kern.sort(key=lambda e: e.time_range.start)
            names = [e.name for e in kern]
            per_pass: Counter = Counter()
            per_kernel: Counter = Counter()
            for e, p in zip(kern, kernel_pass(names)):
                t = e.time_range.elapsed_us() / 1e3 / steps  # a kernel's own interval, µs → ms
                per_pass[p] += t
                m = re.search(r"(lopt_\w+?_kernel|\w+_kernel)", e.name)
                per_kernel[m.group(1) if m else e.name[:60]] += t
            out[b] = {"step_ms": step_ms, "per_pass_ms": dict(per_pass), "per_kernel_ms": dict(per_kernel)}
        except Exception as exc:  # one backend failing must not lose the others' numbers
            out[b] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        finally:
            opt = None
            torch.cuda.empty_cache()
    setup.release()
    return out


def step_time_measurements(path: Path, set_name: str) -> dict:
    """Median step times of μLO backends and fused AdamW for ``set_name`` in bench/step_time.py rows (fp32)."""
    out: dict = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("set") != set_name or r.get("status") != "ok" or r.get("device_type") != "cuda":
            continue
        if r.get("param_dtype") != "float32" or r.get("state_dtype") not in ("float32", None):
            continue
        key = r["backend"] if r.get("optimizer") == "mulo" else r.get("optimizer")
        out[key] = r["median_ms"]
        out["copy_bandwidth_GBps"] = r.get("copy_bandwidth_GBps")
        out["device"] = r.get("device")
    return out


def validation_rows(configs: dict, pset, nbytes: dict, measured: dict, source: str) -> list[dict]:
    """The prediction on the measuring device (its preset, the measured copy bandwidth) against the
    measured per-pass and whole-step times."""
    name = (measured.get("device") or "").upper()
    machine = dict(H200 if "H200" in name else H100)
    if measured.get("copy_bandwidth_GBps"):
        machine.update(
            hbm_TBps=measured["copy_bandwidth_GBps"] / 1e3,
            bw_efficiency=1.0,
            name=f"{machine['name']} at the measured copy bandwidth",
        )
    rows = []
    for config, by_pass in configs.items():
        backend = config.split()[0]
        if backend == "triton" and "dot=tf32" not in config:
            continue  # the backends run their default (tf32)
        pred = predict(config, by_pass, pset, nbytes, [], machine)
        summary = pred[-1]
        m = measured.get(backend)
        if isinstance(m, dict):
            step, per_pass = m.get("step_ms"), m.get("per_pass_ms", {})
        else:
            step, per_pass = m, {}
        adamw = measured.get("adamw_fused_ms") or measured.get("adamw_fused")
        row = {
            "kind": "validation",
            "source_of_measurement": source,
            "backend": backend,
            "config": config,
            "device": measured.get("device"),
            "machine": machine,
            "set": pset.name,
            "predicted_ms": [summary["predicted_ms_low"], summary["predicted_ms_high"]],
            "measured_step_ms": step,
            "predicted_per_pass_ms": summary["per_pass_ms"],
            "measured_per_pass_ms": per_pass,
            "measured_adamw_fused_ms": adamw,
            "predicted_ratio": [summary["ratio_to_adamw_low"], summary["ratio_to_adamw_high"]],
            "measured_ratio": step / adamw if step and adamw else None,
            "measured_over_predicted_low": step / summary["predicted_ms_low"] if step else None,
        }
        if isinstance(m, dict) and "error" in m:
            row["error"] = m["error"]
        rows.append(row)
    return rows


# ---- output -------------------------------------------------------------------------------------------------
CHECK_VARIANTS = {  # --check: one representative variant per kernel (the default GPU path)
    "lopt_reduce p=fp32 g=fp32 s=fp32 idx=int32",
    "lopt_sumsq p=fp32 g=fp32 s=fp32 idx=int32",
    "lopt_apply p=fp32 g=fp32 s=fp32 idx=int32 dot=tf32",
    "lopt_apply p=fp32 g=fp32 s=fp32 idx=int32 dot=tf32x3",  # the default's launch over the rank < 2 tensors
    "lopt_reduce p=fp32 g=fp32 s=bf16 idx=int32",
    "lopt_sumsq p=fp32 g=fp32 s=bf16 idx=int32",
    "lopt_apply p=fp32 g=fp32 s=bf16 idx=int32 dot=tf32",
    "lopt_apply p=fp32 g=fp32 s=bf16 idx=int32 dot=tf32x3",
}


def _ms(lo: float, hi: float) -> str:
    return f"{lo:.1f}" if abs(hi - lo) < 0.05 else f"{lo:.1f}–{hi:.1f}"


def table(rows: list[dict]) -> str:
    """Plain-text tables: the kernels' resources, then per configuration the passes and the total."""
    out = []
    kern = [r for r in rows if r["kind"] == "kernel"]
    if kern:
        out.append(
            f"{'kernel':<52} {'regs':>4} {'spill':>5} {'smem':>6} {'warps/SM':>8} {'SASS':>5} "
            f"{'tensor':>6} {'winstr/elem lo-hi':>18}"
        )
        for r in kern:
            per = (
                f"{r['warp_instr_per_element_low']:.2f}-{r['warp_instr_per_element_high']:.2f}"
                if "warp_instr_per_element_low" in r
                else "per tensor"
            )
            spill = (r.get("spill_store_bytes") or 0) + (r.get("spill_load_bytes") or 0) + r["local_instrs"]
            out.append(
                f"{r['variant'][:52]:<52} {r['regs']:>4} {spill:>5} {r['shared_bytes']:>6} "
                f"{r['occupancy_warps_per_sm']:>8} {r['sass_instrs']:>5} {r['mix_static'].get('tensor', 0):>6} "
                f"{per:>18}"
            )
    for s in (r for r in rows if r["kind"] == "summary"):
        out.append("")
        out.append(
            f"{s['config']} on {s['machine']['name']}, {s['set']} ({s['n_elements']:,} elements, fp32): "
            f"{_ms(s['predicted_ms_low'], s['predicted_ms_high'])} ms = "
            f"{s['ratio_to_adamw_low']:.1f}–{s['ratio_to_adamw_high']:.1f}× fused AdamW's floor "
            f"{s['adamw_fused_floor_ms']:.1f} ms (memory floor {s['dram_floor_ms']:.1f} ms = "
            f"{s['floor_ratio_to_adamw']:.2f}×); with the pipe floors {s['predicted_ms_with_pipes']:.1f} ms"
        )
        out.append(
            f"  {'pass':<18} {'B/elem':>6} {'DRAM ms':>8} {'winstr/elem':>12} {'issue ms':>12} "
            f"{'predicted ms':>13} {'bound':>7}  pipes (ms)"
        )
        for p in (r for r in rows if r["kind"] == "pass" and r["config"] == s["config"]):
            wi = f"{p['warp_instr_per_element_low']:.1f}-{p['warp_instr_per_element_high']:.1f}"
            pipes = " ".join(f"{k} {v:.1f}" for k, v in p["pipe_ms"].items() if v >= 0.05)
            out.append(
                f"  {p['pass'] + ' ' + p['pass_name']:<18} {p['bytes_per_element']:>6.1f} {p['dram_ms']:>8.2f} "
                f"{wi:>12} {_ms(p['issue_ms_low'], p['issue_ms_high']):>12} "
                f"{_ms(p['predicted_ms_low'], p['predicted_ms_high']):>13} {p['bound']:>7}  {pipes}"
            )
        if s["unresolved_loops"]:
            out.append(f"  unresolved loops (counted once): {s['unresolved_loops']}")
    for v in (r for r in rows if r["kind"] == "validation"):
        out.append(
            f"\nvalidation {v['config']} on {v['device']}: predicted {v['predicted_ms']} ms, measured "
            f"{v['measured_step_ms']} ms; per pass predicted {v['predicted_per_pass_ms']}, measured "
            f"{v['measured_per_pass_ms']}; ratio predicted {v['predicted_ratio']}, measured {v['measured_ratio']}"
        )
    return "\n".join(out)


def readme_table(rows: list[dict]) -> str:
    """Markdown: per pass the DRAM time and each μLO configuration's predicted time (H100, the 1.3B set); then
    Celo2's passes (:func:`celo2_readme_table`)."""
    celo2 = celo2_readme_table(rows)
    rows = [r for r in rows if not str(r.get("config", "")).startswith("celo2")]
    sums = [r for r in rows if r["kind"] == "summary"]
    if not sums:
        return ""
    cols = [s["config"] for s in sums]
    s0 = sums[0]
    lines = [
        f"Static model (`python bench/gpu_static.py`): {s0['machine']['name']}, {s0['set']} fp32 "
        f"({s0['n_elements'] / 1e9:.2f} B elements), predicted ms = max(DRAM, issue), low–high:",
        "",
        "| pass | B/elem | DRAM | " + " | ".join(f"`{c}`" for c in cols) + " |",
        "|---|---:|---:|" + "---:|" * len(cols),
    ]
    for p in "ABC":
        prs = {r["config"]: r for r in rows if r["kind"] == "pass" and r["pass"] == p}
        any_ = next(iter(prs.values()))
        cells = [f"{_ms(prs[c]['predicted_ms_low'], prs[c]['predicted_ms_high'])} ({prs[c]['bound']})" for c in cols]
        lines.append(
            f"| {p} {PASS_NAMES[p]} | {any_['bytes_per_element']:.0f} | {any_['dram_ms']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    lines.append(
        f"| total | {sum(r['bytes_per_element'] for r in rows if r['kind'] == 'pass' and r['config'] == cols[0]):.0f} "
        f"| {s0['dram_floor_ms']:.1f} | "
        + " | ".join(f"{_ms(s['predicted_ms_low'], s['predicted_ms_high'])}" for s in sums)
        + " |"
    )
    lines.append(
        f"| × fused AdamW ({s0['adamw_fused_floor_ms']:.1f} ms floor) | | {s0['floor_ratio_to_adamw']:.2f}× | "
        + " | ".join(f"{s['ratio_to_adamw_low']:.1f}–{s['ratio_to_adamw_high']:.1f}×" for s in sums)
        + " |"
    )
    return "\n".join(lines) + ("\n\n" + celo2 if celo2 else "")


def celo2_readme_table(rows: list[dict]) -> str:
    """Markdown: Celo2's Triton passes per configuration (B/elem, DRAM, warp-instructions, predicted ms)."""
    sums = [r for r in rows if r["kind"] == "summary" and str(r["config"]).startswith("celo2")]
    if not sums:
        return ""
    lines = ["| Celo2 (Triton) | pass | B/elem | DRAM ms | warp-instr/elem | predicted ms |"]
    lines.append("|---|---|---:|---:|---:|---:|")
    for s in sums:
        for p in (r for r in rows if r["kind"] == "pass" and r["config"] == s["config"]):
            lines.append(
                f"| `{s['config']}` | {p['pass']} {p['pass_name']} | {p['bytes_per_element']:.0f} | "
                f"{p['dram_ms']:.1f} | "
                f"{p['warp_instr_per_element_low']:.1f}–{p['warp_instr_per_element_high']:.1f} | "
                f"{_ms(p['predicted_ms_low'], p['predicted_ms_high'])} ({p['bound']}) |"
            )
        lines.append(
            f"| `{s['config']}` | total (+ AdamW route {s['adamw_route_ms']:.2f} ms; Newton–Schulz not modelled) | | "
            f"{s['dram_floor_ms']:.1f} | | {_ms(s['predicted_ms_low'], s['predicted_ms_high'])} = "
            f"{s['ratio_to_adamw_low']:.1f}–{s['ratio_to_adamw_high']:.1f}× fused AdamW |"
        )
    return "\n".join(lines)


def run(check: bool = False, set_name: str = MODEL_SET, machine: dict = H100) -> tuple[list[dict], dict]:
    """Compile, disassemble, model. Returns (rows without provenance, {config: pass → launches})."""
    from bench.common import param_set

    pset = param_set(set_name)
    nbytes = pass_bytes(pset)
    tk = compile_triton(CHECK_VARIANTS if check else None)
    ck = cuda_kernels(only_fp32=check)
    configs: dict = {}
    for config, passes in triton_configs(tk, pset).items():
        configs[config] = launches(passes, pset, config_bytes(config, pset))
    cc = cuda_config(ck)
    if cc:
        configs["cuda"] = launches(cc, pset, nbytes)
    kernel_rows: list[dict] = []
    rows: list[dict] = []
    for config, by_pass in configs.items():
        rows += predict(config, by_pass, pset, config_bytes(config, pset), kernel_rows, machine)
    seen = {r["variant"] for r in kernel_rows}
    for k in [*tk, *ck]:
        if k.variant not in seen:
            L = triton_launch(k, pset) if k.backend == "triton" else cuda_launch(k, pset, {"sumsq_out": True})
            kernel_rows.append(kernel_row(L, pset))
    if not check:  # Celo2's Triton step (its own table: bench/gpu_static.py --readme prints it after μLO's)
        celo2 = celo2_rows(pset, machine)
        kernel_rows += [r for r in celo2 if r["kind"] == "kernel"]
        rows += [r for r in celo2 if r["kind"] != "kernel"]
    return kernel_rows + rows, configs


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--check", action="store_true", help="one representative variant per kernel (fast; for tests)")
    ap.add_argument("--readme", action="store_true", help="also print a markdown table of the prediction")
    ap.add_argument("--set", default=MODEL_SET, help=f"parameter set of bench/common.py (default {MODEL_SET})")
    ap.add_argument("--machine", default="h100", choices=sorted(MACHINES), help="the modelled GPU (default h100)")
    ap.add_argument("--clock-ghz", type=float, default=None, help="override the modelled clock")
    ap.add_argument("--bw-efficiency", type=float, default=None, help="override the achievable HBM fraction")
    ap.add_argument(
        "--out",
        action="append",
        default=None,
        help=f"append rows to this JSONL (repeatable; default {RESULTS.relative_to(ROOT)}, none with --check)",
    )
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="bench/step_time.py rows measured on a GPU: the prediction against their step times",
    )
    ap.add_argument(
        "--measure",
        action="store_true",
        help="on a CUDA device: time each pass of real steps (torch.profiler) and compare",
    )
    args = ap.parse_args(argv)
    machine = dict(MACHINES[args.machine])
    if args.clock_ghz:
        machine["clock_ghz"] = args.clock_ghz
    if args.bw_efficiency:
        machine["bw_efficiency"] = args.bw_efficiency
    t0 = time.time()
    rows, configs = run(args.check, args.set, machine)
    if args.compare or args.measure:
        from bench.common import param_set

        pset = param_set(args.set)
        if args.compare:
            rows += validation_rows(
                configs,
                pset,
                pass_bytes(pset),
                step_time_measurements(args.compare, args.set),
                f"step_time rows ({args.compare.name})",
            )
        if args.measure:
            import torch

            if not torch.cuda.is_available():
                raise SystemExit("gpu_static --measure: needs a CUDA device")
            from mulo.backends import available_backends

            avail = [b for b in ("triton", "cuda") if b in available_backends(torch.device("cuda"))]
            rows += validation_rows(configs, pset, pass_bytes(pset), measure(args.set, avail), "torch.profiler")
    prov = provenance()
    run_id = f"{int(time.time()):x}"
    rows = [{"schema": SCHEMA, "run_id": run_id, **prov, **r} for r in rows]
    print(table(rows))
    if args.readme:
        print("\n" + readme_table(rows))
    outs = [] if args.no_write else [Path(p) for p in (args.out or ([] if args.check else [RESULTS]))]
    for path in outs:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"{len(rows)} rows appended to {path}")
    print(f"gpu_static: {time.time() - t0:.1f} s")
    return rows


if __name__ == "__main__":
    main()
