"""The static GPU performance model (bench/gpu_static.py): the SASS parser and the executed-instruction
count on literal snippets (loop trip counts from the source line, rare branches weighted, unreachable
padding and the generic-atomic fallback excluded), the pass byte model, the kernel-to-pass mapping of a
measured step, and the rows of a ``--check`` run (representative variants compiled for sm_90)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import gpu_static as gs
from bench.common import model_cost, param_set

ROOT = Path(__file__).resolve().parents[2]

TOY_SOURCE = """\
def toy(xt, NSUB):
    for sub in range(NSUB):
        if xt == 0:
            store(sub)
"""

# nvdisasm -g style: labels, line info; a loop over lines 2-4 whose body holds an `if xt == 0:` arm
NVDISASM = """\
	.section	.text.toy_kernel,"ax",@progbits
.text.toy_kernel:
	//## File "{src}", line 1
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
	//## File "{src}", line 2
.L_x_0:
        /*0020*/                   FFMA R3, R2, R2, R3 ;
        /*0030*/                   HMMA.1688.F32.TF32 R8, R12, R14, R8 ;
        /*0040*/                   MUFU.RSQ R5, R3 ;
        /*0050*/                   IMAD.WIDE R6, R0, 0x4, R6 ;
        /*0060*/                   ISETP.GE.AND P0, PT, R0, 0x10, PT ;
	//## File "{src}", line 3
        /*0070*/               @P0 BRA `(.L_x_1) ;
	//## File "{src}", line 4
        /*0080*/                   RED.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R6.64], R3 ;
        /*0090*/                   STG.E.128 desc[UR4][R6.64], R8 ;
.L_x_1:
	//## File "{src}", line 2
        /*00a0*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*00b0*/              @!P1 BRA `(.L_x_0) ;
        /*00c0*/                   EXIT ;
.L_x_2:
        /*00d0*/                   BRA `(.L_x_2);
        /*00e0*/                   NOP;
"""

# cuobjdump -sass style: hex branch targets, encodings on the right and on their own lines, no line info
CUOBJDUMP = """\
	code for sm_90
		Function : toy2
	.headerflags	@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   MOV R1, c[0x0][0x28] ;                        /* 0x00000a0000017a02 */
                                                                                 /* 0x000fe40000000f00 */
        /*0010*/                   IADD3 R2, R1, 0x1, RZ ;                       /* 0x0000000101027810 */
                                                                                 /* 0x000fc80007ffe0ff */
        /*0020*/               @P0 BRA 0x10 ;                                    /* 0xfffffffc00000947 */
                                                                                 /* 0x000fea000383ffff */
        /*0030*/                   ATOM.E.ADD.F32.FTZ.RN.STRONG.GPU P2, RZ, desc[UR4][R12.64], R11 ;
        /*0040*/               @P2 BRA 0x80 ;
        /*0050*/                   QSPC.E.S P2, RZ, [R12] ;
        /*0060*/                   LDS R12, [R16] ;
        /*0070*/                   ATOMS.CAST.SPIN R13, [R16], R12, R13 ;
        /*0080*/                   EXIT ;
        /*0090*/                   BRA 0x90;
"""


def test_parser_counts_a_literal_nvdisasm_snippet(tmp_path):
    src = tmp_path / "toy.py"
    src.write_text(TOY_SOURCE)
    funcs = gs.parse_sass(NVDISASM.format(src=src))
    assert list(funcs) == ["toy_kernel"]
    ins = funcs["toy_kernel"]
    assert len(ins) == 15
    assert [i.base for i in ins[:3]] == ["S2R", "LDG", "FFMA"]
    bra = ins[7]
    assert (bra.pred, bra.target, bra.conditional, bra.line) == ("@P0", 0xA0, True, 3)
    assert ins[11].target == 0x20 and ins[13].target == 0xD0  # back edge; the padding self-loop
    assert gs.access_bytes(ins[9]) == 16 and gs.access_bytes(ins[1]) == 4
    mix = gs.instruction_mix(ins)
    expected = {"tensor": 1, "ffma": 1, "fmul": 0, "fadd": 0, "fp32": 1, "mufu": 1, "int": 2, "move": 1, "ldg": 1,
                "stg": 1, "atomic": 1, "barrier": 1, "branch": 4, "nop": 1, "other": 0, "total": 14}  # fmt: skip
    assert {k: mix[k] for k in expected} == expected

    # executed per warp: the loop runs NSUB = 4 times (identified by its `for` line), the `if xt == 0:` arm
    # (RED + STG) a quarter of them in `low`; the unreachable padding never
    ctx = gs.Context("triton", 4, consts={"NSUB": 4}, frac={"f_xt0": 0.25})
    a = gs.analyze(ins, ctx)
    assert a.unresolved_loops == [] and len(a.loops) == 1
    assert a.loops[0]["trips"] == 4 and a.loops[0]["instrs"] == 10 and "range(NSUB)" in a.loops[0]["source"]
    assert a.high_mix["total"] == 2 + 4 * 10 + 1
    assert a.low_mix["total"] == pytest.approx(2 + 4 * (8 + 0.25 * 2) + 1)
    assert a.low_mix["atomic"] == pytest.approx(1.0) and a.high_mix["tensor"] == 4
    assert a.mma_macs_high == 4 * 16 * 8 * 8


INLINE_SOURCE = """\
def toy(xt):
    a = 1
    if xt == 0:
        helper()
    b = 2


def helper():
    x = 3
"""

# nvdisasm -gi style: a helper's line (9) inlined at a call (line 4) inside the kernel's `if xt == 0:` arm
NVDISASM_INLINED = """\
.text.inl_kernel:
	//## File "{src}", line 2
        /*0000*/                   S2R R0, SR_TID.X ;
	//## File "{src}", line 3
        /*0010*/               @P0 BRA `(.L_x_1) ;
	//## File "{src}", line 9 inlined at "{src}", line 4
	//## File "{src}", line 4
        /*0020*/                   FFMA R3, R2, R2, R3 ;
        /*0030*/                   FFMA R3, R2, R2, R3 ;
.L_x_1:
	//## File "{src}", line 5
        /*0040*/                   EXIT ;
"""


def test_inlined_code_counts_under_the_branch_around_its_call(tmp_path):
    """A helper's instructions carry their call site (``nvdisasm -gi``): the caller's `if xt == 0:` weights them
    (without it they would count as always run)."""
    src = tmp_path / "inl.py"
    src.write_text(INLINE_SOURCE)
    ins = gs.parse_sass(NVDISASM_INLINED.format(src=src))["inl_kernel"]
    assert [(i.line, i.outer) for i in ins[2:4]] == [(9, ((str(src), 4),))] * 2
    assert ins[4].line == 5 and ins[4].outer == ()
    a = gs.analyze(ins, gs.Context("triton", 4, frac={"f_xt0": 0.25}))
    assert a.high_mix["total"] == 5
    assert a.low_mix["total"] == pytest.approx(3 + 2 * 0.25)


UNSWITCHED_SOURCE = """\
def toy(factored, NSUB):
    if factored:
        tiles(True, NSUB)
    else:
        tiles(False, NSUB)


def tiles(FACT, NSUB):
    for sub in range(NSUB):
        x = 1
"""

# nvdisasm -gi style: one loop (lines 9-10) inlined at two call sites (lines 3 and 5), one per arm of `if factored:`
NVDISASM_UNSWITCHED = """\
.text.sw_kernel:
	//## File "{src}", line 1
        /*0000*/                   S2R R0, SR_TID.X ;
	//## File "{src}", line 2
        /*0010*/              @!P0 BRA `(.L_x_2) ;
.L_x_0:
	//## File "{src}", line 10 inlined at "{src}", line 3
	//## File "{src}", line 3
        /*0020*/                   FFMA R3, R2, R2, R3 ;
	//## File "{src}", line 9 inlined at "{src}", line 3
	//## File "{src}", line 3
        /*0030*/               @P1 BRA `(.L_x_0) ;
	//## File "{src}", line 3
        /*0040*/                   BRA `(.L_x_3) ;
.L_x_2:
	//## File "{src}", line 10 inlined at "{src}", line 5
	//## File "{src}", line 5
        /*0050*/                   FMUL R3, R2, R2 ;
	//## File "{src}", line 9 inlined at "{src}", line 5
	//## File "{src}", line 5
        /*0060*/               @P1 BRA `(.L_x_2) ;
.L_x_3:
	//## File "{src}", line 1
        /*0070*/                   EXIT ;
"""


def test_a_loop_copied_per_branch_arm_counts_under_its_arm(tmp_path):
    """A kernel that runs one of two copies of its tile loop (``if factored:`` around two calls of the loop's
    function): each copy's instructions count at its arm's share of the set, in both bounds (which kind of
    tensor a program steps is a fact of the set, not an unknown branch). Without the guard through the loop
    header both copies would count in full; as copies of one source loop (compiler unswitching) the smaller
    would count 0."""
    src = tmp_path / "sw.py"
    src.write_text(UNSWITCHED_SOURCE)
    ins = gs.parse_sass(NVDISASM_UNSWITCHED.format(src=src))["sw_kernel"]
    assert [i.base for i in ins] == ["S2R", "BRA", "FFMA", "BRA", "BRA", "FMUL", "BRA", "EXIT"]
    ctx = gs.Context("triton", 4, consts={"NSUB": 4}, frac={"f_fact": 0.9, "f_unf": 0.1})
    a = gs.analyze(ins, ctx)
    assert a.unresolved_loops == [] and [lp["trips"] for lp in a.loops] == [4, 4]
    expected = 2 + 0.9 * (4 * 2 + 1) + 0.1 * 4 * 2 + 1  # entry; the factored copy and its exit branch; the other
    assert a.low_mix["total"] == pytest.approx(expected)
    assert a.high_mix["total"] == pytest.approx(expected)
    assert a.low_mix["ffma"] == pytest.approx(0.9 * 4) and a.low_mix["fmul"] == pytest.approx(0.1 * 4)


def test_parser_reads_cuobjdump_and_skips_the_generic_atomic_fallback():
    ins = gs.parse_sass(CUOBJDUMP)["toy2"]
    assert [i.addr for i in ins] == list(range(0, 0xA0, 0x10))
    assert ins[2].target == 0x10 and ins[4].target == 0x80
    assert gs.atomic_fallback(ins) == {5, 6, 7}  # QSPC + shared CAS, skipped when the ATOM hit global memory
    a = gs.analyze(ins, gs.Context("cuda", 8))
    assert len(a.unresolved_loops) == 1  # no line info: the loop counts once
    assert a.high_mix["total"] == 6  # MOV, the loop (IADD3, BRA) once, ATOM, BRA, EXIT
    assert a.atomic_fallback_instrs == 3


def test_conditions_and_trip_counts_from_source(tmp_path):
    cu = tmp_path / "k.cu"
    cu.write_text(
        textwrap.dedent("""\
        for (int64_t e = ch.start + threadIdx.x; e < end; e += blockDim.x) {
        for (int k = threadIdx.x; k < 2 * kHidden; k += blockDim.x) x[k] = 0;
        #pragma unroll 4
        for (int o = 0; o < kHidden; ++o) {
        for (int64_t e = threadIdx.x; e < M.ncol; e += blockDim.x) {
        if (M.factored) {
          a();
        } else {
          b();
        }
        """)
    )
    ctx = gs.Context("cuda", 8, chunk=8192, tensor={"M_ncol": 1000}, frac={"f_fact": 0.9, "f_unf": 0.1})
    trips = [gs.loop_trips(str(cu), line, ctx) for line in (1, 2, 4, 5)]
    assert trips == [32, 1, 8, 4]
    regions = gs.cpp_regions(str(cu))
    assert [(r.first, r.last, r.cond, r.arm) for r in regions] == [
        (7, 8, "M.factored", "then"),
        (9, 10, "M.factored", "else"),
    ]
    assert gs.rare_weight("M.factored", "else", ctx) == 0.1


def test_pass_bytes_sum_to_the_step_model():
    pset = param_set(gs.MODEL_SET)  # shapes only
    nbytes = gs.pass_bytes(pset)
    assert sum(nbytes.values()) == model_cost(pset, "mulo", 4, 4, 4)["bytes_model"]
    n = pset.numel
    assert 4 * n <= nbytes["A"] < 4.1 * n and 24 * n <= nbytes["B"] < 25 * n and 44 * n <= nbytes["C"] < 46 * n


def test_kernel_pass_follows_launch_order():
    ns = "void mulo::(anonymous namespace)::"
    names = ["void at::native::vectorized_elementwise_kernel<...>", ns + "reduce_kernel<float>(...)",
             ns + "prepare_kernel(...)", ns + "sumsq_kernel<float, float>(...)", ns + "prepare_kernel(...)",
             ns + "fold_kernel(...)", ns + "apply_kernel<float, float>(...)", ns + "finish_kernel(...)",
             "lopt_reduce_kernel", "lopt_sumsq_kernel", "lopt_apply_kernel"]  # fmt: skip
    assert gs.kernel_pass(names) == ["other", "A", "B", "B", "C", "C", "C", "C", "A", "B", "C"]


ROW_FIELDS = {
    "kernel": ["backend", "kernel", "variant", "regs", "shared_bytes", "spill_store_bytes", "local_instrs",
               "occupancy_warps_per_sm", "mix_static", "loops", "unresolved_loops", "warp_instr_per_program_low"],
    "pass": ["config", "pass", "dram_bytes", "bytes_per_element", "dram_ms", "warp_instr_per_element_low",
             "warp_instr_per_element_high", "issue_ms_low", "predicted_ms_low", "predicted_ms_high", "bound",
             "pipe_ms"],
    "summary": ["config", "predicted_ms_low", "predicted_ms_high", "adamw_fused_floor_ms", "ratio_to_adamw_low",
                "ratio_to_adamw_high", "dram_floor_ms", "spills", "tensor_cores_in_apply", "machine", "approximations"],
}  # fmt: skip
PROVENANCE = ["schema", "run_id", "source", "git_sha", "torch_version", "triton_version", "date", "host"]


def test_check_run_rows(tmp_path):
    """``--check`` compiles one variant per Triton kernel for sm_90 (and reads the CUDA extension's sm_90
    kernels when it has them), writes rows with provenance, and compares with step_time rows."""
    out = tmp_path / "rows.jsonl"
    fake = tmp_path / "step_time.jsonl"
    base = {"set": gs.MODEL_SET, "status": "ok", "device_type": "cuda", "device": "NVIDIA H100 80GB HBM3",
            "param_dtype": "float32", "state_dtype": "float32", "copy_bandwidth_GBps": 3000.0}  # fmt: skip
    fake.write_text(
        "\n".join(
            json.dumps({**base, **r})
            for r in (
                {"optimizer": "mulo", "backend": "triton", "median_ms": 80.0},
                {"optimizer": "adamw_fused", "backend": "torch", "median_ms": 15.0},
            )
        )  # fmt: skip
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "bench/gpu_static.py", "--check", "--readme", "--out", str(out), "--compare", str(fake)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = {r["kind"] for r in rows}
    assert {"kernel", "pass", "summary", "validation"} <= kinds
    for r in rows:
        assert r["schema"] == gs.SCHEMA and r["source"] == "static model, no GPU"
        assert all(f in r for f in PROVENANCE), sorted(set(PROVENANCE) - set(r))
        assert all(f in r for f in ROW_FIELDS.get(r["kind"], [])), (
            r["kind"],
            sorted(set(ROW_FIELDS[r["kind"]]) - set(r)),
        )
    kernels = {r["kernel"] for r in rows if r["kind"] == "kernel" and r["backend"] == "triton"}
    assert kernels == {"lopt_reduce", "lopt_sumsq", "lopt_apply"}
    tri = next(r for r in rows if r["kind"] == "summary" and r["config"] == "triton dot=tf32")
    assert 0 < tri["dram_floor_ms"] <= tri["predicted_ms_low"] <= tri["predicted_ms_high"]
    assert tri["ratio_to_adamw_low"] == pytest.approx(tri["predicted_ms_low"] / tri["adamw_fused_floor_ms"], rel=1e-2)
    assert tri["tensor_cores_in_apply"] is True and not tri["unresolved_loops"]
    passes = {r["pass"]: r for r in rows if r["kind"] == "pass" and r["config"] == "triton dot=tf32"}
    assert set(passes) == {"A", "B", "C"}
    assert [round(passes[p]["bytes_per_element"]) for p in "ABC"] == [4, 24, 44]
    for p in passes.values():
        assert 0 < p["warp_instr_per_element_low"] <= p["warp_instr_per_element_high"]
        assert p["predicted_ms_low"] == pytest.approx(max(p["dram_ms"], p["issue_ms_low"]), rel=1e-2)
    val = next(r for r in rows if r["kind"] == "validation" and r["backend"] == "triton")
    assert val["measured_step_ms"] == 80.0 and val["measured_ratio"] == pytest.approx(80.0 / 15.0)
    assert "| pass |" in proc.stdout and "triton dot=tf32" in proc.stdout
