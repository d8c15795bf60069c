"""The native kernels share one per-element math (csrc/lopt_math.h) and one host-side descriptor (csrc/lopt_desc.h,
built by csrc/lopt_common.h): the CPU kernels (whose parity tests run here) and the CUDA kernels compile the same
functions, and no other file of csrc/ restates a feature, a moment or accumulator update, the output head or the
update. Static checks of the sources: they need neither the built extension nor a GPU."""

import pathlib
import re

import pytest

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"
MATH = "lopt_math.h"
CPU_KERNELS, CPU_HOST, CUDA = "lopt_cpu_kernels.h", "lopt_cpu.cpp", "lopt_cuda.cu"
ISA_UNITS = ("lopt_cpu_avx512.cpp", "lopt_cpu_avx2.cpp", "lopt_cpu_base.cpp")

# per-element functions each device calls: the element-wise passes, and the per-entry / per-tensor preparation
ELEMENT_FUNCTIONS = ("moment_channels", "factored_channels", "full_channels", "step_of", "updated_param")
PREPARE_FUNCTIONS = ("grad_sq", "finite_s", "new_acc", "row_entry", "col_entry", "norm_scale", "time_features",
                     "folded_bias")  # fmt: skip


def code(name: str) -> str:
    """The file's text without comments (// to the end of a line)."""
    return "\n".join(line.split("//", 1)[0] for line in (CSRC / name).read_text().splitlines())


def others() -> list[str]:
    """Every csrc file but the math and constants headers (Celo2's, celo2_math.h and celo2_spec.h, have their own
    checks in tests/celo2/test_cpu_backend.py)."""
    names = [p.name for p in sorted(CSRC.iterdir()) if p.suffix in (".h", ".cpp", ".cu", ".cuh")]
    return [n for n in names if n not in (MATH, "lopt_spec.h", "celo2_math.h", "celo2_spec.h")]


def includes(name: str) -> set[str]:
    return set(re.findall(r'#include\s+"([^"]+)"', code(name)))


def test_both_devices_compile_the_shared_header():
    assert MATH in includes(CUDA), f"{CUDA} must include {MATH}"
    assert MATH in includes(CPU_KERNELS), f"{CPU_KERNELS} must include {MATH}"
    assert MATH in includes("lopt_common.h") and "lopt_common.h" in includes(CPU_HOST)
    for unit in ISA_UNITS:  # every SIMD variant instantiates the shared math with its vector type
        assert CPU_KERNELS in includes(unit), unit
    # the CPU units' pragma must come before the math (its templates are then compiled for that ISA)
    for unit in ISA_UNITS[:2]:
        text = code(unit)
        assert text.index("#pragma GCC target") < text.index(f'#include "{CPU_KERNELS}"'), unit


@pytest.mark.parametrize("fn", ELEMENT_FUNCTIONS)
def test_cpu_and_cuda_kernels_call_the_same_element_math(fn):
    for name in (CPU_KERNELS, CUDA):
        assert re.search(rf"\bmath::{fn}\(", code(name)), f"{name} does not call math::{fn}"
    assert re.search(rf"\b{fn}\(", code(MATH))


@pytest.mark.parametrize("fn", PREPARE_FUNCTIONS)
def test_cpu_host_and_cuda_call_the_same_preparation_math(fn):
    for name in (CPU_HOST, CUDA):
        assert re.search(rf"\bmath::{fn}\(", code(name)), f"{name} does not call math::{fn}"


def test_every_shared_function_compiles_for_host_and_device():
    text = code(MATH)
    definitions = re.findall(r"^(?:template <[^>]*>\n)?(.*\bMULO_INLINE\b.*)$", text, flags=re.M)
    definitions = [d for d in definitions if not d.startswith("#")]
    assert len(definitions) >= len(ELEMENT_FUNCTIONS) + len(PREPARE_FUNCTIONS)
    for d in definitions:
        assert d.startswith("MULO_HD MULO_INLINE"), f"{MATH}: {d!r} is not __host__ __device__ (MULO_HD)"


# What only lopt_math.h may write: (what, pattern, files allowed to match and how often)
FORBIDDEN = [
    ("an epsilon of the algorithm", r"\bkEps\w+", {}),
    (
        "a square root (rsqrt features, factors, normalization)",
        r"\b(?:std::)?r?sqrtf?\s*\(|__builtin_sqrtf|\bsqrt_",
        {CPU_KERNELS: 2},
    ),  # the CPU vector's rsqrt primitive (its name and its __builtin_sqrtf)
    ("an exponential (the output head)", r"\b(?:std::)?expf?\s*\(|__expf|exp_approx|__builtin_expf|\bexp2f?\s*\(", {}),
    ("a time feature", r"\b(?:std::)?tanhf?\s*\(|__builtin_tanhf", {}),
    ("a decay of a moment or accumulator", r"\.(?:bm|om|bf|of)\s*\[|\.(?:bv|ov)\b", {"lopt_common.h": 8}),  # make_hyper
    ("the output head's multipliers", r"\.(?:exp_mult|step_mult)\b", {"lopt_common.h": 2}),  # make_hyper
    ("the decoupled weight decay", r"\bwdlr\s*\*|\*\s*(?:\w+\.)?wdlr\b", {}),
    ("a feature channel written by index", r"\[[^\]\n]*spec::kCh[^\]\n]*\](?:\s*\[[^\]\n]*\])?\s*=(?!=)", {}),
]


@pytest.mark.parametrize("what,pattern,allowed", FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_no_other_file_restates_the_element_math(what, pattern, allowed):
    for name in others():
        hits = re.findall(pattern, code(name))
        limit = allowed.get(name, 0)
        assert len(hits) <= limit, (
            f"csrc/{name} computes {what} ({hits[:3]}); the per-element math lives in csrc/{MATH} only"
        )


def test_host_descriptor_is_defined_once():
    """Hyper, the dtype enum, Layout and the per-tensor descriptor: lopt_desc.h; make_hyper and the table
    builder (describe): lopt_common.h. The CPU and CUDA records derive from the shared TensorDesc."""
    defined = {
        r"\bstruct\s+Hyper\b": "lopt_desc.h",
        r"\bkF32\s*=": "lopt_desc.h",
        r"\bstruct\s+Layout\b": "lopt_desc.h",
        r"\bstruct\s+TensorDesc\b": "lopt_desc.h",
        r"\bmake_hyper\s*\([^;)]*\)\s*\{": "lopt_common.h",
        r"\bdescribe\s*\([^;]*?\)\s*\{": "lopt_common.h",
    }
    for pattern, home in defined.items():
        where = [n for n in [*others(), MATH] if re.search(pattern, code(n))]
        assert where == [home], f"{pattern} is defined in {where}, expected only in {home}"
    assert re.search(r"struct\s+TensorJob\s*:\s*mulo::TensorDesc", code("lopt_cpu.h"))
    assert re.search(r"struct\s+Meta\s*:\s*TensorDesc", code(CUDA))
    for name in (CPU_HOST, CUDA):
        assert re.search(r"\bdescribe<", code(name)), f"{name} must build its table with describe"
