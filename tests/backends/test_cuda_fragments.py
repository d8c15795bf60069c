"""The tensor-core MLP of the CUDA apply kernel, checked on the CPU (no GPU needed).

csrc/lopt_cuda_mma.cuh holds every fragment index the kernel uses (which element and input unit it puts into
which lane and register of ``mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32``, the packed weights, the
shared-memory staging, layer 1's input order) and the 3xTF32 split. ``cuda_fragment_tables.cpp`` compiles that
header with the host compiler and prints its tables; here the warp-level MMA is emulated from the PTX ISA's own
statement of the fragment layouts (§9.7.14.5.7, restated below, independent of the header), the kernel's data
flow is replayed on those tables (staging rows, layer-1 k-steps of both the 2-d tile and the linear path,
ReLU + split, layers 2-3, the output hand-off), and the result is compared with the float64 MLP.

What this does not cover (statically only: compile checks, bench/gpu_static.py): that lopt_cuda.cu calls these
functions in the order replayed here, the inline PTX, the real tensor cores' rounding of the fp32 accumulation,
timing and shared-memory hazards between warps.
"""

from __future__ import annotations

import functools
import json
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SRC = pathlib.Path(__file__).with_name("cuda_fragment_tables.cpp")


@functools.cache
def tables(tmp: str) -> dict:
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    exe = pathlib.Path(tmp) / "cuda_fragment_tables"
    subprocess.run([cxx, "-std=c++17", "-O1", f"-I{ROOT / 'csrc'}", str(SRC), "-o", str(exe)], check=True)
    return json.loads(subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout)


@pytest.fixture(scope="module")
def T(tmp_path_factory) -> dict:
    return tables(str(tmp_path_factory.mktemp("frag")))


# ---- the PTX ISA, m16n8k8 with .tf32 A/B and .f32 C/D (groupID = lane >> 2, threadID_in_group = lane % 4) ----------
def isa_a(lane: int, i: int) -> tuple[int, int]:
    g, t = lane >> 2, lane % 4
    return (g if i in (0, 2) else g + 8), (t if i in (0, 1) else t + 4)


def isa_b(lane: int, i: int) -> tuple[int, int]:
    g, t = lane >> 2, lane % 4
    return (t if i == 0 else t + 4), g


def isa_c(lane: int, i: int) -> tuple[int, int]:
    g, t = lane >> 2, lane % 4
    return (g if i < 2 else g + 8), t * 2 + (i & 1)


def tf32_operand(x: np.ndarray) -> np.ndarray:
    """What the tensor core reads of an fp32 register given as .tf32: its 19 high bits (truncation; rounding the
    13 dropped bits instead changes the results below by < 2^-21 relative)."""
    return (np.asarray(x, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def mma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """One warp's mma.sync m16n8k8: a [32, 4], b [32, 2] fp32 bit patterns as TF32, c [32, 4] fp32 → d [32, 4]."""
    A, B, C = np.zeros((16, 8)), np.zeros((8, 8)), np.zeros((16, 8))
    for lane in range(32):
        for i in range(4):
            A[isa_a(lane, i)] = tf32_operand(a[lane, i])
            C[isa_c(lane, i)] = c[lane, i]
        for i in range(2):
            B[isa_b(lane, i)] = tf32_operand(b[lane, i])
    D = (A @ B + C).astype(np.float32)  # products exact in fp64; fp32 accumulation rounded once here
    return np.array([[D[isa_c(lane, i)] for i in range(4)] for lane in range(32)], np.float32)


# ---- the kernel's data flow on the header's tables ------------------------------------------------------------------
def split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float32)
    hi = (x.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
    return hi, (x - hi).astype(np.float32)


def mma3(d: np.ndarray, a: np.ndarray, bpack: np.ndarray) -> np.ndarray:
    """The kernel's mma3: lo(a)·hi(w), hi(a)·lo(w), hi(a)·hi(w) accumulated in that order; bpack [32, 4]."""
    ah, al = split(a)
    d = mma(al, bpack[:, 0:2], d)
    d = mma(ah, bpack[:, 2:4], d)
    return mma(ah, bpack[:, 0:2], d)


def pack(T: dict, W: np.ndarray, n_tiles: int, n_out: int) -> np.ndarray:
    """Packed weights as the kernel stages them: slot b_slot(ks, nt, lane) → {hi b0, hi b1, lo b0, lo b1}."""
    slots = T["b_slot4"] if n_tiles == 4 else T["b_slot1"]
    out = np.zeros((T["hidden_tiles"] * n_tiles * 32, 4), np.float32)
    for ks in range(W.shape[1] // 8):
        for lane in range(32):
            for nt in range(n_tiles):
                o = T["b_out"][nt][lane][0]
                w = [W[o, T["b_unit"][ks][lane][r]] if o < n_out else 0.0 for r in range(2)]
                hi, lo = split(np.array(w, np.float32))
                out[slots[ks][lane][nt]] = [hi[0], hi[1], lo[0], lo[1]]
    return out


def stage_rows(T: dict, X16: np.ndarray) -> np.ndarray:
    """The warp's staging rows after every lane (element) stored its 16 units (16-byte chunks at stage_word)."""
    words = np.full(32 * T["stage_words"], np.nan, np.float32)
    for row in range(32):
        for u in range(16):
            words[T["stage_word"][row][u]] = X16[row, u]
    return words


def stage_a(T: dict, words: np.ndarray, mt: int, s: int) -> np.ndarray:
    """The kernel's stage_a: registers 0, 2 from one 8-byte load of row a_elem(.., 0), 1, 3 of row a_elem(.., 1)."""
    a = np.zeros((32, 4), np.float32)
    for lane in range(32):
        for r0, r1 in ((0, 2), (1, 3)):
            w = T["stage_word"][T["a_elem"][mt][lane][r0]][T["a_unit"][s][lane][r0]]
            a[lane, r0], a[lane, r1] = words[w], words[w + 1]
    return a


def bias_init(T: dict, b: np.ndarray, nt: int) -> np.ndarray:
    return np.array([[b[T["c_out"][nt][lane][r]] for r in range(4)] for lane in range(32)], np.float32)


def kernel_mlp(T: dict, X: np.ndarray, W1, b1, W2, b2, W3, b3, path: str) -> np.ndarray:
    """(direction, magnitude) of 32 elements as the apply kernel computes them. X [32, 32]: layer 1's inputs in
    unit order. path "tile": units 16-23 one value per element (the column), staged once and folded with the bias
    (ta); units 24-31 the same for all 32 elements (the row), A = (y0, y0, y1, y1); "linear": two staged halves."""
    w1, w2, w3 = pack(T, W1, 4, 32), pack(T, W2, 4, 32), pack(T, W3, 1, 2)
    H = T["hidden_tiles"]
    d1 = [[bias_init(T, b1, nt) for nt in range(H)] for _ in range(2)]
    if path == "tile":
        xa = np.zeros((32, 16), np.float32)
        xa[:, :8] = X[:, 16:24]
        words = stage_rows(T, xa)
        for mt in range(2):
            a = stage_a(T, words, mt, 0)
            for nt in range(H):
                d1[mt][nt] = mma3(d1[mt][nt], a, w1[[T["b_slot4"][2][lane][nt] for lane in range(32)]])
        assert np.all(X[:, 24:] == X[0, 24:]), "the tile path's row units are one per row"
        words = stage_rows(T, X[:, :16])
        steps = [(words, 0, 0), (words, 1, 1)]
    else:
        lo, hi = stage_rows(T, X[:, :16]), stage_rows(T, X[:, 16:])
        steps = [(lo, 0, 0), (lo, 1, 1), (hi, 0, 2), (hi, 1, 3)]
    for words, s, ks in steps:
        for mt in range(2):
            a = stage_a(T, words, mt, s)
            for nt in range(H):
                d1[mt][nt] = mma3(d1[mt][nt], a, w1[[T["b_slot4"][ks][lane][nt] for lane in range(32)]])
    if path == "tile":  # the row's k-step: lane takes units ub0 = a_unit(3, lane, 0) and ub0 + 1
        a = np.zeros((32, 4), np.float32)
        for lane in range(32):
            ub0 = T["a_unit"][3][lane][0]
            assert T["a_unit"][3][lane] == [ub0, ub0, ub0 + 1, ub0 + 1]
            a[lane] = [X[0, ub0], X[0, ub0], X[0, ub0 + 1], X[0, ub0 + 1]]
        for mt in range(2):
            for nt in range(H):
                d1[mt][nt] = mma3(d1[mt][nt], a, w1[[T["b_slot4"][3][lane][nt] for lane in range(32)]])
    relu_a = lambda d: np.maximum(d[:, T["a_from_c"]], 0.0).astype(np.float32)  # noqa: E731
    out = np.full((32, 2), np.nan, np.float32)
    for mt in range(2):
        d2 = [bias_init(T, b2, nt) for nt in range(H)]
        for ks in range(H):
            a = relu_a(d1[mt][ks])
            for nt in range(H):
                d2[nt] = mma3(d2[nt], a, w2[[T["b_slot4"][ks][lane][nt] for lane in range(32)]])
        b3p = np.concatenate([b3, np.zeros(6)])
        d3 = bias_init(T, b3p, 0)
        for ks in range(H):
            d3 = mma3(d3, relu_a(d2[ks]), w3[[T["b_slot1"][ks][lane][0] for lane in range(32)]])
        for lane in range(32):
            for r in range(4):
                o = T["c_out"][0][lane][r]
                if o < 2:
                    out[T["c_elem"][mt][lane][r], o] = d3[lane, r]
    return out


def reference_mlp(X, W1, b1, W2, b2, W3, b3) -> np.ndarray:
    h = np.maximum(X.astype(np.float64) @ W1.T + b1, 0.0)
    h = np.maximum(h @ W2.T + b2, 0.0)
    return h @ W3.T + b3


def random_problem(T: dict, seed: int, path: str):
    rng = np.random.default_rng(seed)
    W1 = (rng.standard_normal((32, 32)) * 0.3).astype(np.float32)
    pads = [u for u in range(32) if T["channel_of_unit_0"][u] < 0]
    W1[:, pads] = 0.0
    b1, b2 = (rng.standard_normal(32) * 0.3).astype(np.float32), (rng.standard_normal(32) * 0.3).astype(np.float32)
    W2 = (rng.standard_normal((32, 32)) * 0.2).astype(np.float32)
    W3, b3 = (rng.standard_normal((2, 32)) * 0.2).astype(np.float32), (rng.standard_normal(2) * 0.3).astype(np.float32)
    X = (rng.standard_normal((32, 32)) * np.exp(rng.uniform(-3, 3, (32, 32)))).astype(np.float32)
    if path == "tile":
        X[:, 24:] = X[0, 24:]
    X[:, pads] = 0.0
    return X, W1, b1, W2, b2, W3, b3


# ---- tests ----------------------------------------------------------------------------------------------------------
def test_fragment_indices_follow_the_isa_layouts(T):
    """Register r of a lane holds, by the ISA, A[row][k] / B[k][n] / C[row][n]; the kernel's bookkeeping must name
    the same element, output unit and one consistent input unit per K position (the same in A and in B)."""
    for ks in range(4):
        unit_of_kpos = {}
        for lane in range(32):
            for r in range(4):
                row, k = isa_a(lane, r)
                for mt in range(2):
                    assert T["a_elem"][mt][lane][r] == 16 * mt + row
                unit_of_kpos.setdefault(k, T["a_unit"][ks][lane][r])
                assert unit_of_kpos[k] == T["a_unit"][ks][lane][r], (ks, lane, r)
            for r in range(2):
                k, n = isa_b(lane, r)
                assert T["b_unit"][ks][lane][r] == unit_of_kpos[k], (ks, lane, r)
        assert sorted(unit_of_kpos.values()) == list(range(8 * ks, 8 * ks + 8))
    for nt in range(4):
        for lane in range(32):
            assert T["b_out"][nt][lane][0] == 8 * nt + isa_b(lane, 0)[1]
            for r in range(4):
                row, n = isa_c(lane, r)
                assert T["c_out"][nt][lane][r] == 8 * nt + n
                for mt in range(2):
                    assert T["c_elem"][mt][lane][r] == 16 * mt + row
                # the next layer's A from this accumulator: same element, and unit = the accumulator's output
                src = T["a_from_c"][r]
                assert T["a_elem"][0][lane][r] == T["c_elem"][0][lane][src]
                assert T["a_unit"][nt][lane][r] == T["c_out"][nt][lane][src]
    slots = sorted(s for ks in T["b_slot4"] for lane in ks for s in lane)
    assert slots == list(range(4 * 4 * 32))


@pytest.mark.parametrize("path", ["tile", "linear"])
@pytest.mark.parametrize("seed", range(3))
def test_staged_mlp_matches_the_float64_mlp(T, path, seed):
    X, W1, b1, W2, b2, W3, b3 = random_problem(T, seed, path)
    got = kernel_mlp(T, X, W1, b1, W2, b2, W3, b3, path).astype(np.float64)
    want = reference_mlp(X, W1, b1, W2, b2, W3, b3)
    # scale of the terms each output sums (|W3| |h2| + |b3|): 3xTF32 rounds like fp32, ~1e-7 of it
    h = np.maximum(np.maximum(X.astype(np.float64) @ W1.T + b1, 0) @ W2.T + b2, 0)
    scale = np.abs(h) @ np.abs(W3.T) + np.abs(b3)
    err = np.abs(got - want) / scale
    assert err.max() < 2e-6, f"max error {err.max():.3g} of the terms' scale"
    # one TF32 product (no split) would be ~2^-11: the split is what makes the MMA path exact enough
    single = np.abs(X.astype(np.float64) @ (W1 - tf32_operand(W1)).T).max() / np.abs(X @ W1.T).max()
    assert single > 1e-5


def test_split_is_exact(T):
    x = np.array([s[0] for s in T["split"]], np.uint32).view(np.float32)
    hi = np.array([s[1] for s in T["split"]], np.uint32).view(np.float32)
    lo = np.array([s[2] for s in T["split"]], np.uint32).view(np.float32)
    assert np.array_equal(hi, tf32_operand(hi)), "hi must be exact in TF32"
    assert np.array_equal((hi.astype(np.float64) + lo), x.astype(np.float64)), "hi + lo must be x exactly"
    # what the tensor core reads of lo is within 2^-21 of x
    assert np.all(np.abs(hi.astype(np.float64) + tf32_operand(lo) - x) <= np.abs(x) * 2.0**-21)


def test_staging_is_free_of_bank_conflicts(T):
    """Writes: 16-byte chunks, 8 lanes per phase; reads: 8-byte pairs, 16 lanes per phase (32 banks × 4 bytes)."""
    sw = T["stage_word"]
    assert sorted(w for row in sw for w in row) == list(range(32 * 16))
    for phase in range(4):  # a warp's 16-byte stores (chunk c of rows 8p .. 8p + 7)
        for c in range(4):
            groups = [(sw[row][4 * c] // 4) % 8 for row in range(8 * phase, 8 * phase + 8)]
            assert len(set(groups)) == 8 and all(sw[row][4 * c] % 4 == 0 for row in range(32))
    for mt in range(2):
        for s in range(2):
            for r in (0, 1):
                for phase in range(2):
                    banks = []
                    for lane in range(16 * phase, 16 * phase + 16):
                        w = sw[T["a_elem"][mt][lane][r]][T["a_unit"][s][lane][r]]
                        assert w % 2 == 0
                        banks += [w % 32, (w + 1) % 32]
                    assert len(set(banks)) == 32, (mt, s, r, phase)


@pytest.mark.parametrize("d0a", [0, 1])
def test_layer1_unit_order(T, d0a):
    """Units 0-15: the per-element channels; 16-21: value/rsqrt of the entry without axis a (the row entry when d0 is
    axis a), 24-29: of the entry without b; 22, 23, 30, 31 zero pads."""
    u_of, c_of = T[f"unit_of_channel_{d0a}"], T[f"channel_of_unit_{d0a}"]
    assert sorted(u_of) == [u for u in range(32) if c_of[u] >= 0]
    for c, u in enumerate(u_of):
        assert c_of[u] == c
        per_element = c < T["ch_row"] or c >= T["ch_fac_m"]
        assert (u < 16) == per_element
        if per_element:
            continue
        is_row = T["ch_row"] <= c < T["ch_col"] or T["ch_rsqrt_row"] <= c < T["ch_rsqrt_col"]
        assert (u < T["unit_entry_b"]) == (is_row == bool(d0a)), (c, u)
        k = (c - T["ch_row"]) % 3
        value = c < T["ch_rsqrt_row"]
        assert T["entry_value_of_unit"][u] == (T["acc_value"] if value else T["acc_rsqrt"]) + k
