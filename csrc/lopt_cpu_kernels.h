// The μLO CPU kernels (passes B and C of docs/ALGORITHM.md §5): the CPU's tiling of the shared per-element math
// (lopt_math.h, the code the CUDA kernels compile too), compiled per instruction set.
//
// Included by lopt_cpu_{base,avx2,avx512}.cpp after they set MULO_VW (fp32 lanes per vector), MULO_NV
// (vectors per tile of elements), MULO_OB (outputs per register block of the micro-GEMM) and, for x86
// SIMD, a `#pragma GCC target`. Everything here has internal linkage (anonymous namespace) and uses no
// torch or standard-library templates, so nothing compiled for one ISA can leak into another.
//
// Layout: a tile holds T = VW·NV consecutive elements of one tensor, elements along vector lanes
// ("structure of arrays"). The shared math runs on one Vec (VW elements) at a time and writes the features
// into X[28][T]; the MLP is three register-blocked micro-GEMMs: for each block of OB outputs, OB×NV
// accumulators live in registers while the K inputs stream through, each input row loaded once per block and
// each weight broadcast once per block. Normalization and time features are folded into layer 1 (per
// tensor, lopt_cpu.cpp); for tiles inside one line of a 2-d tensor the row/column channels (13-24) are
// folded into layer 1's initial value as well.
//
// Device-specific here: storage conversions (bf16/fp16), tile loads/stores, the tile's accumulator indices
// and gathers of their entry values, the micro-GEMM MLP, the pass-B partial sums, and the exp/rsqrt primitives of Vec.
#pragma once

#include <cstdint>
#include <cstring>

#include "lopt_cpu.h"
#include "lopt_math.h"

namespace {

namespace spec = mulo::spec;  // the algorithm's constants (lopt_spec.h, from mulo/lopt/spec.py)

constexpr int VW = MULO_VW;
constexpr int NV = MULO_NV;
constexpr int OB = MULO_OB;
constexpr int T = VW * NV;
constexpr int F = mulo_cpu::kFeatures;
constexpr int H = mulo_cpu::kHidden;

typedef float vf __attribute__((vector_size(VW * 4)));

MULO_INLINE vf vload(const float* p) {
  vf r;
  std::memcpy(&r, p, sizeof(vf));
  return r;
}
MULO_INLINE void vstore(float* p, vf x) { std::memcpy(p, &x, sizeof(vf)); }
MULO_INLINE vf vbcast(float x) {
  vf r = {};
  return r + x;
}

// ---- storage types ---------------------------------------------------------------------------------
struct bf16 {
  uint16_t x;
};
struct f16 {
  uint16_t x;
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float to_f(float x) { return x; }
inline float to_f(bf16 x) { return bits_to_float(static_cast<uint32_t>(x.x) << 16); }
inline float to_f(f16 h) {
  const uint32_t sign = static_cast<uint32_t>(h.x & 0x8000u) << 16;
  const uint32_t em = h.x & 0x7fffu;
  uint32_t o;
  if (em >= 0x7c00u) {
    o = (em << 13) | 0x7f800000u;  // inf / nan
  } else if (em >= 0x0400u) {
    o = (em << 13) + (112u << 23);  // normal: rebias 15 → 127
  } else {
    o = float_to_bits(static_cast<float>(em) * 5.9604644775390625e-8f);  // subnormal: em · 2^-24
  }
  return bits_to_float(o | sign);
}

template <class S>
inline S from_f(float x);
template <>
inline float from_f<float>(float x) {
  return x;
}
template <>
inline bf16 from_f<bf16>(float f) {  // round to nearest even, as c10::BFloat16
  const uint32_t u = float_to_bits(f);
  if (f != f) return bf16{0x7fc0};
  return bf16{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
template <>
inline f16 from_f<f16>(float f) {  // round to nearest even, as c10::Half
  const uint32_t x = float_to_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  uint32_t r;
  if (ax >= 0x7f800000u) {
    r = ax > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (ax >= 0x477ff000u) {  // ≥ 65520 rounds to inf
    r = 0x7c00u;
  } else if (ax < 0x38800000u) {  // below 2^-14: subnormal half; adding 0.5 rounds to multiples of 2^-24
    r = float_to_bits(bits_to_float(ax) + 0.5f) - 0x3f000000u;
  } else {
    ax += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + ((ax >> 13) & 1u);
    r = ax >> 13;
  }
  return f16{static_cast<uint16_t>(r | sign)};
}

// ---- the value type of the shared math: one vector of VW fp32 lanes -------------------------------------
typedef int32_t vi __attribute__((vector_size(VW * 4)));

// A thin wrapper so that lopt_math.h's templates find the primitives by argument-dependent lookup (a GCC
// vector type has no namespace). Zero cost: every member is inlined into the ISA's vector instructions.
struct Vec {
  vf x;
  friend MULO_INLINE Vec operator+(Vec a, Vec b) { return {a.x + b.x}; }
  friend MULO_INLINE Vec operator-(Vec a, Vec b) { return {a.x - b.x}; }
  friend MULO_INLINE Vec operator*(Vec a, Vec b) { return {a.x * b.x}; }
  friend MULO_INLINE Vec operator+(Vec a, float b) { return {a.x + b}; }
  friend MULO_INLINE Vec operator*(Vec a, float b) { return {a.x * b}; }
  friend MULO_INLINE Vec operator*(float a, Vec b) { return {a * b.x}; }
  // 1 / sqrt per lane (vsqrtps + vdivps: IEEE, like CUDA's 1.0f / sqrtf)
  friend MULO_INLINE Vec rsqrt(Vec a) {
    vf r;
    for (int l = 0; l < VW; ++l) r[l] = __builtin_sqrtf(a.x[l]);
    return {1.0f / r};
  }
  friend MULO_INLINE Vec vmax(Vec a, float b) {
    const vf bv = vbcast(b);
    return {a.x > bv ? a.x : bv};
  }
  // e^x for the magnitude output: Cody-Waite reduction + degree-6 polynomial (≈1 ulp on the clamped range).
  friend MULO_INLINE Vec vexp(Vec a) {
    const vf lo = vbcast(-87.0f), hi = vbcast(88.0f);
    vf x = a.x < lo ? lo : a.x;
    x = x > hi ? hi : x;
    const vf y = x * 1.44269504088896341f;
    vf n;
    for (int l = 0; l < VW; ++l) n[l] = __builtin_rintf(y[l]);
    const vf r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
    vf q = vbcast(1.0f / 720.0f);
    q = q * r + 1.0f / 120.0f;
    q = q * r + 1.0f / 24.0f;
    q = q * r + 1.0f / 6.0f;
    q = q * r + 0.5f;
    q = q * r + 1.0f;
    q = q * r + 1.0f;
    const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    vf scale;
    std::memcpy(&scale, &bits, sizeof(vf));
    return {q * scale};
  }
};

MULO_INLINE Vec ld(const float* p) { return {vload(p)}; }
MULO_INLINE void st(float* p, Vec x) { vstore(p, x.x); }
MULO_INLINE Vec bcast(float x) { return {vbcast(x)}; }

// ---- micro-GEMM ---------------------------------------------------------------------------------------
// out[O][T] = act(W[O][0:K] · in[K][T] + init); W row-major with leading dimension LDW.
// init: bias b[o] broadcast; or (VEC) per vector v of the tile b[o·NV + v] broadcast plus the contiguous
// vec[o·vstride + voff[v] + lane].
template <int K, int O, int BLOCK, bool RELU, int LDW, bool VEC>
inline void dense(const float* __restrict W, const float* __restrict b, const float* __restrict vec, int64_t vstride,
                  const int64_t* __restrict voff, const float* __restrict in, float* __restrict out) {
  static_assert(O % BLOCK == 0, "output block must divide the layer width");
  for (int o0 = 0; o0 < O; o0 += BLOCK) {
    vf acc[BLOCK][NV];
#pragma GCC unroll 16
    for (int ob = 0; ob < BLOCK; ++ob) {
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v)
        acc[ob][v] = VEC ? vbcast(b[(o0 + ob) * NV + v]) + vload(vec + (o0 + ob) * vstride + voff[v]) : vbcast(b[o0 + ob]);
    }
    for (int k = 0; k < K; ++k) {
      vf xv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) xv[v] = vload(in + k * T + v * VW);
#pragma GCC unroll 16
      for (int ob = 0; ob < BLOCK; ++ob) {
        const float w = W[(o0 + ob) * LDW + k];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[ob][v] += xv[v] * w;
      }
    }
    const vf zero = {};
#pragma GCC unroll 16
    for (int ob = 0; ob < BLOCK; ++ob) {
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        vf a = acc[ob][v];
        if (RELU) a = a > zero ? a : zero;
        vstore(out + (o0 + ob) * T + v * VW, a);
      }
    }
  }
}

template <int K, int O, int BLOCK, bool RELU, int LDW, bool VEC>
inline void dense(const float* __restrict W, const float* __restrict b, const float* __restrict vec, int64_t vstride,
                  const float* __restrict in, float* __restrict out) {
  static_assert(!VEC, "a per-vector initial value needs the offsets voff");
  dense<K, O, BLOCK, RELU, LDW, false>(W, b, vec, vstride, nullptr, in, out);
}

// Layers 2 and 3 fused: each block of layer-2 outputs goes through ReLU and into the NOUT outputs while
// still in registers (out[NOUT][T] = W3 relu(W2 in + b2) + b3; NOUT = 3 with the nominal term's head).
template <int BLOCK, int NOUT>
inline void dense_out(const float* __restrict W2, const float* __restrict b2, const float* __restrict W3,
                      const float* __restrict b3, const float* __restrict in, float* __restrict out) {
  static_assert(NOUT == 2 || NOUT == 3, "the network has two outputs, three with the nominal head");
  vf d[NV], a[NV], nm[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) d[v] = vbcast(b3[0]), a[v] = vbcast(b3[1]), nm[v] = vbcast(NOUT == 3 ? b3[2] : 0.f);
  const vf zero = {};
  for (int o0 = 0; o0 < H; o0 += BLOCK) {
    vf acc[BLOCK][NV];
#pragma GCC unroll 16
    for (int ob = 0; ob < BLOCK; ++ob) {
      const vf bias = vbcast(b2[o0 + ob]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[ob][v] = bias;
    }
    for (int k = 0; k < H; ++k) {
      vf xv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) xv[v] = vload(in + k * T + v * VW);
#pragma GCC unroll 16
      for (int ob = 0; ob < BLOCK; ++ob) {
        const float w = W2[(o0 + ob) * H + k];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[ob][v] += xv[v] * w;
      }
    }
#pragma GCC unroll 16
    for (int ob = 0; ob < BLOCK; ++ob) {
      const float wd = W3[o0 + ob], wa = W3[H + o0 + ob], wn = NOUT == 3 ? W3[2 * H + o0 + ob] : 0.f;
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        const vf h = acc[ob][v] > zero ? acc[ob][v] : zero;
        d[v] += h * wd;
        a[v] += h * wa;
        if (NOUT == 3) nm[v] += h * wn;
      }
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    vstore(out + v * VW, d[v]);
    vstore(out + T + v * VW, a[v]);
    if (NOUT == 3) vstore(out + 2 * T + v * VW, nm[v]);
  }
}

// ---- features ------------------------------------------------------------------------------------------
// Position of a tile in the [A, Da, B, Db, C] view of a factored tensor.
struct TilePos {
  // fast: the tile lies in one line of a C == 1 view, so one accumulator index is constant over the tile
  // and the other runs contiguously (2-d weights: always but at line ends).
  bool fast = false;
  bool row_const = false;  // fast: the row index is constant (else the column index is)
  int64_t r0 = 0, c0 = 0;  // fast: row/col index of the first element
  alignas(64) int64_t ridx[T];
  alignas(64) int64_t cidx[T];
};

// Coordinates c moved from the end of one line (j == Db) to the start of the next.
inline void next_line(const mulo_cpu::TensorJob& J, mulo::Coords& c) {
  c.j = 0;
  if (++c.y == J.B) {
    c.y = 0;
    if (++c.i == J.Da) {
      c.i = 0;
      ++c.x;
    }
  }
}

// The generic path: the row and column entry of every lane, from the coordinates c of the first element
// (padding lanes of the last tile read entry 0).
template <class Pos>
inline void locate_lanes(const mulo_cpu::TensorJob& J, mulo::Coords c, int cnt, Pos& tp) {
  for (int l = 0; l < T; ++l) {
    if (l < cnt) {
      J.entries(c, tp.ridx[l], tp.cidx[l]);
      if (++c.z == J.C) {  // the next element's coordinates
        c.z = 0;
        if (++c.j == J.Db) next_line(J, c);
      }
    } else {
      tp.ridx[l] = 0;
      tp.cidx[l] = 0;
    }
  }
}

inline void locate(const mulo_cpu::TensorJob& J, int64_t e0, int cnt, TilePos& tp) {
  mulo::Coords c = J.coords(e0);
  tp.fast = J.C == 1 && cnt == T && c.j + T <= J.Db;
  if (tp.fast) {
    tp.row_const = !J.d0_is_a;  // the index without axis b is constant along the line
    J.entries(c, tp.r0, tp.c0);
    return;
  }
  locate_lanes(J, c, cnt, tp);
}

// μLO's tile position: fast when every VECTOR of the tile lies in one line of a C == 1 view, so over each
// vector one accumulator index is constant and the other runs contiguously (2-d weights whose rows hold
// whole vectors, e.g. 16 × 16 with 16 lanes: every tile).
struct VecPos {
  bool fast = false;
  bool row_const = false;  // fast: the row index is constant (else the column index is)
  int64_t r0[NV], c0[NV];  // fast: row/col index of each vector's first lane
  alignas(64) int64_t ridx[T];
  alignas(64) int64_t cidx[T];
};

inline void locate_vectors(const mulo_cpu::TensorJob& J, int64_t e0, int cnt, VecPos& tp) {
  mulo::Coords c = J.coords(e0);
  tp.fast = J.C == 1;
  tp.row_const = !J.d0_is_a;  // the index without axis b is constant along a line
  for (int v = 0; tp.fast && v < NV; ++v) {
    if (v * VW >= cnt) {  // a padding vector reads the first one's entries
      tp.r0[v] = tp.r0[0];
      tp.c0[v] = tp.c0[0];
      continue;
    }
    if (c.j + VW > J.Db) {  // crosses the end of a line (or of the tensor)
      tp.fast = false;
      break;
    }
    J.entries(c, tp.r0[v], tp.c0[v]);
    if ((c.j += VW) == J.Db) next_line(J, c);  // the next vector starts the next line
  }
  if (!tp.fast) locate_lanes(J, J.coords(e0), cnt, tp);
}

// One tile's inputs and new state (fp32).
struct Tile {
  alignas(64) float g[T];
  alignas(64) float p[T];
  alignas(64) float m[3][T];
  alignas(64) float v[T];
  alignas(64) float u[3][T];  // rank < 2 only
  alignas(64) float X[F][T];  // channels in the row order of mulo_cpu::row_of_channel
};

template <class PT, class GT, class ST, bool FACT>
inline void load_tile(const mulo_cpu::TensorJob& J, int64_t e0, int cnt, Tile& t) {
  const PT* P = static_cast<const PT*>(J.p);
  const GT* G = static_cast<const GT*>(J.g);
  const ST* M = static_cast<const ST*>(J.m);
  const ST* V = static_cast<const ST*>(J.v);
  const ST* U = static_cast<const ST*>(J.acc_a);
  const int64_t n = J.n;
  if (cnt == T) {
    for (int e = 0; e < T; ++e) t.g[e] = to_f(G[e0 + e]);
    for (int e = 0; e < T; ++e) t.p[e] = to_f(P[e0 + e]);
    for (int k = 0; k < 3; ++k)
      for (int e = 0; e < T; ++e) t.m[k][e] = to_f(M[k * n + e0 + e]);
    for (int e = 0; e < T; ++e) t.v[e] = to_f(V[e0 + e]);
    if (!FACT)
      for (int k = 0; k < 3; ++k)
        for (int e = 0; e < T; ++e) t.u[k][e] = to_f(U[k * n + e0 + e]);
    return;
  }
  for (int e = 0; e < T; ++e) {
    const bool in = e < cnt;
    t.g[e] = in ? to_f(G[e0 + e]) : 0.f;
    t.p[e] = in ? to_f(P[e0 + e]) : 0.f;
    for (int k = 0; k < 3; ++k) t.m[k][e] = in ? to_f(M[k * n + e0 + e]) : 0.f;
    t.v[e] = in ? to_f(V[e0 + e]) : 0.f;
    if (!FACT)
      for (int k = 0; k < 3; ++k) t.u[k][e] = in ? to_f(U[k * n + e0 + e]) : 0.f;
  }
}

constexpr int R(int channel) { return mulo_cpu::row_of_channel(channel); }

// Values J0.. of the row and column accumulator entries of every lane of a tile (generic path).
template <int J0, class Pos>
inline void gather_entries(const mulo_cpu::TensorJob& J, const Pos& tp, float (&rg)[mulo::math::kAccValues][T],
                           float (&cg)[mulo::math::kAccValues][T]) {
  for (int e = 0; e < T; ++e) {
    const float* r = J.rowv + tp.ridx[e];
    const float* c = J.colv + tp.cidx[e];
#pragma GCC unroll 9
    for (int j = J0; j < mulo::math::kAccValues; ++j) {
      rg[j][e] = r[j * J.nrow];
      cg[j][e] = c[j * J.ncol];
    }
  }
}

// The new state into t.m/t.v/t.u and the channels into t.X, one vector at a time through the shared math
// (lopt_math.h). For factored tensors the row/column channels (13-24) are written only with `rowcol`
// (otherwise pass B sums them per row/column, and pass C folds them into layer 1's initial value).
template <bool FACT>
inline void features(const mulo_cpu::TensorJob& J, const mulo_cpu::Hyper& Hp, const VecPos& tp, bool rowcol,
                     Tile& t) {
  namespace math = mulo::math;
  const int64_t nr = J.nrow, nc = J.ncol;
  // generic path (tiles across lines, C > 1): the lanes' row/column entry values, gathered once per tile
  alignas(64) float rg[math::kAccValues][T], cg[math::kAccValues][T];
  if (FACT && !tp.fast) {
    if (rowcol)
      gather_entries<0>(J, tp, rg, cg);
    else
      gather_entries<math::kAccFactor>(J, tp, rg, cg);
  }
  for (int w = 0; w < NV; ++w) {
    const int o = w * VW;
    auto out = [&](int channel, Vec x) { st(&t.X[R(channel)][o], x); };
    const Vec g = ld(t.g + o);
    Vec m[3] = {ld(t.m[0] + o), ld(t.m[1] + o), ld(t.m[2] + o)};
    Vec v = ld(t.v + o);
    math::moment_channels(Hp, g, ld(t.p + o), m, v, out);
    if (FACT) {
      if (tp.fast && tp.row_const) {  // one row entry, consecutive column entries
        math::factored_channels(g, m, [&](int j) { return bcast(J.rowv[j * nr + tp.r0[w]]); },
                                [&](int j) { return ld(J.colv + j * nc + tp.c0[w]); }, false, out);
      } else if (tp.fast) {  // consecutive row entries, one column entry
        math::factored_channels(g, m, [&](int j) { return ld(J.rowv + j * nr + tp.r0[w]); },
                                [&](int j) { return bcast(J.colv[j * nc + tp.c0[w]]); }, false, out);
      } else {
        math::factored_channels(g, m, [&](int j) { return ld(rg[j] + o); }, [&](int j) { return ld(cg[j] + o); },
                                rowcol, out);
      }
    } else {
      Vec u[3] = {ld(t.u[0] + o), ld(t.u[1] + o), ld(t.u[2] + o)};
      math::full_channels(Hp, g, m, u, out);
      for (int k = 0; k < 3; ++k) st(t.u[k] + o, u[k]);
    }
    for (int k = 0; k < 3; ++k) st(t.m[k] + o, m[k]);
    st(t.v + o, v);
  }
}

template <class PT, class GT, class ST, bool FACT>
void sumsq_range(const mulo_cpu::TensorJob& J, const mulo_cpu::Hyper& Hp, int64_t start, int64_t end, double* out) {
  Tile t;
  VecPos tp;
  constexpr int NR = FACT ? mulo_cpu::kPerElement : F;  // rows summed per element
  alignas(64) float acc[F][T];
  for (int c = 0; c < F; ++c)
    for (int e = 0; e < T; ++e) acc[c][e] = 0.f;
  int tiles = 0, used = 0;  // tiles and lanes accumulated since the last flush
  for (int64_t e0 = start; e0 < end; e0 += T) {
    const int cnt = static_cast<int>(end - e0 < T ? end - e0 : T);
    used = cnt > used ? cnt : used;
    load_tile<PT, GT, ST, FACT>(J, e0, cnt, t);
    if (FACT) locate_vectors(J, e0, cnt, tp);
    features<FACT>(J, Hp, tp, false, t);
    if (cnt == T) {
      for (int r = 0; r < NR; ++r)
        for (int e = 0; e < T; ++e) acc[r][e] += t.X[r][e] * t.X[r][e];
    } else {
      for (int r = 0; r < NR; ++r)
        for (int e = 0; e < cnt; ++e) acc[r][e] += t.X[r][e] * t.X[r][e];
    }
    // flush fp32 partials into fp64 every 64 tiles to bound rounding error on long ranges: 8 fp64 partial
    // sums over the lanes used (the others hold zeros), then their fixed-order total
    if (++tiles == 64 || e0 + T >= end) {
      tiles = 0;
      const int lanes = (used + 7) & ~7;
      used = 0;
      for (int r = 0; r < NR; ++r) {
        double part[8] = {};
        for (int e = 0; e < lanes; e += 8)
          for (int q = 0; q < 8; ++q) part[q] += acc[r][e + q];
        for (int e = 0; e < lanes; ++e) acc[r][e] = 0.f;
        const double s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
        out[mulo_cpu::channel_of_row(r)] += s;
      }
    }
  }
}

template <class PT, class GT, class ST, bool FACT>
void apply_range(const mulo_cpu::TensorJob& J, const mulo_cpu::Hyper& Hp, const mulo_cpu::Net& N, int64_t start,
                 int64_t end) {
  Tile t;
  VecPos tp;
  alignas(64) float H1[H][T];
  alignas(64) float out[3][T];
  const bool nominal = Hp.nominal != 0.f;  // the third output head and the nominal term
  PT* P = static_cast<PT*>(J.p);
  ST* M = static_cast<ST*>(J.m);
  ST* V = static_cast<ST*>(J.v);
  ST* U = static_cast<ST*>(J.acc_a);
  const int64_t n = J.n;
  const float lr = J.lr, wdlr = J.wdlr;
  alignas(64) float b1tile[H * NV];
  int64_t voff[NV];
#if defined(__x86_64__)
  // flush denormals to zero inside the kernel (x86 FMA units slow down on subnormal operands/results);
  // subnormal fp32 values are below every epsilon of the algorithm
  const unsigned csr = __builtin_ia32_stmxcsr();
  __builtin_ia32_ldmxcsr(csr | 0x8040u);
#endif
  for (int64_t e0 = start; e0 < end; e0 += T) {
    const int cnt = static_cast<int>(end - e0 < T ? end - e0 : T);
    load_tile<PT, GT, ST, FACT>(J, e0, cnt, t);
    if (FACT) locate_vectors(J, e0, cnt, tp);
    const bool folded = FACT && tp.fast;
    features<FACT>(J, Hp, tp, FACT && !folded, t);
    if (folded) {
      // layer 1 = W1[:, per-element] x + b1 + (row part at each vector's constant index) + (column part,
      // contiguous)
      const float* cst = tp.row_const ? J.rowt : J.colt;
      const int64_t cst_stride = tp.row_const ? J.nrow : J.ncol;
      const int64_t* cidx = tp.row_const ? tp.r0 : tp.c0;
      const float* vec = tp.row_const ? J.colt : J.rowt;
      const int64_t vec_stride = tp.row_const ? J.ncol : J.nrow;
      for (int v = 0; v < NV; ++v) voff[v] = tp.row_const ? tp.c0[v] : tp.r0[v];
      for (int o = 0; o < H; ++o)
        for (int v = 0; v < NV; ++v) b1tile[o * NV + v] = J.b1[o] + cst[o * cst_stride + cidx[v]];
      dense<mulo_cpu::kPerElement, H, OB, true, F, true>(J.w1, b1tile, vec, vec_stride, voff, &t.X[0][0], &H1[0][0]);
    } else {
      dense<F, H, OB, true, F, false>(J.w1, J.b1, nullptr, 0, nullptr, &t.X[0][0], &H1[0][0]);
    }
    if (nominal)
      dense_out<OB, 3>(N.w2, N.b2, N.w3, N.b3, &H1[0][0], &out[0][0]);
    else
      dense_out<OB, 2>(N.w2, N.b2, N.w3, N.b3, &H1[0][0], &out[0][0]);
    alignas(64) float pn[T];
    for (int w = 0; w < NV; ++w) {
      const int o = w * VW;
      Vec step = mulo::math::step_of(Hp, ld(out[0] + o), ld(out[1] + o));
      if (nominal)
        step = step + mulo::math::nominal_of(Hp, ld(out[2] + o), ld(t.m[0] + o), ld(t.m[1] + o), ld(t.m[2] + o),
                                             ld(t.v + o));
      st(pn + o, mulo::math::updated_param(ld(t.p + o), step, lr, wdlr));
    }
    if (cnt == T) {
      for (int e = 0; e < T; ++e) P[e0 + e] = from_f<PT>(pn[e]);
      for (int k = 0; k < 3; ++k)
        for (int e = 0; e < T; ++e) M[k * n + e0 + e] = from_f<ST>(t.m[k][e]);
      for (int e = 0; e < T; ++e) V[e0 + e] = from_f<ST>(t.v[e]);
      if (!FACT)
        for (int k = 0; k < 3; ++k)
          for (int e = 0; e < T; ++e) U[k * n + e0 + e] = from_f<ST>(t.u[k][e]);
    } else {
      for (int e = 0; e < cnt; ++e) {
        P[e0 + e] = from_f<PT>(pn[e]);
        for (int k = 0; k < 3; ++k) M[k * n + e0 + e] = from_f<ST>(t.m[k][e]);
        V[e0 + e] = from_f<ST>(t.v[e]);
        if (!FACT)
          for (int k = 0; k < 3; ++k) U[k * n + e0 + e] = from_f<ST>(t.u[k][e]);
      }
    }
  }
#if defined(__x86_64__)
  __builtin_ia32_ldmxcsr(csr);
#endif
}

// ---- per-entry layer-1 contributions (mulo_cpu::FoldFn) ------------------------------------------------------
void fold_entries(const float* wf, const float* vals, int64_t n, int ch_value, int ch_rsqrt, float* out) {
  namespace math = mulo::math;
  for (int o = 0; o < H; ++o) {
    float wv[3], wr[3];
    for (int k = 0; k < 3; ++k) wv[k] = wf[o * F + R(ch_value + k)], wr[k] = wf[o * F + R(ch_rsqrt + k)];
    float* dst = out + o * n;
    int64_t e = 0;
    for (; e + VW <= n; e += VW) {
      Vec a = bcast(0.f);
      for (int k = 0; k < 3; ++k)
        a = a + (wv[k] * ld(vals + (math::kAccValue + k) * n + e) + wr[k] * ld(vals + (math::kAccRsqrt + k) * n + e));
      st(dst + e, a);
    }
    for (; e < n; ++e) {
      float a = 0.f;
      for (int k = 0; k < 3; ++k)
        a += wv[k] * vals[(math::kAccValue + k) * n + e] + wr[k] * vals[(math::kAccRsqrt + k) * n + e];
      dst[e] = a;
    }
  }
}

// ---- dtype dispatch (storage types are template parameters; one switch here, no copied branches) ----
template <class PT, class GT, class ST>
inline void sumsq_typed(const mulo_cpu::TensorJob& J, const mulo_cpu::Hyper& Hp, int64_t s, int64_t e, double* o) {
  if (J.factored)
    sumsq_range<PT, GT, ST, true>(J, Hp, s, e, o);
  else
    sumsq_range<PT, GT, ST, false>(J, Hp, s, e, o);
}

template <class PT, class GT, class ST>
inline void apply_typed(const mulo_cpu::TensorJob& J, const mulo_cpu::Hyper& Hp, const mulo_cpu::Net& N, int64_t s,
                        int64_t e) {
  if (J.factored)
    apply_range<PT, GT, ST, true>(J, Hp, N, s, e);
  else
    apply_range<PT, GT, ST, false>(J, Hp, N, s, e);
}

// Supported (param, grad) pairs: grad in the param's dtype or fp32; state fp32 or bf16.
template <class F3>
inline void with_types(const mulo_cpu::TensorJob& J, F3&& f) {
  using namespace mulo_cpu;
  auto by_state = [&](auto pt, auto gt) {
    if (J.sdt == kBF16)
      f(pt, gt, bf16{});
    else
      f(pt, gt, 0.f);
  };
  switch (J.pdt) {
    case kF32:
      by_state(0.f, 0.f);
      break;
    case kBF16:
      if (J.gdt == kF32)
        by_state(bf16{}, 0.f);
      else
        by_state(bf16{}, bf16{});
      break;
    default:
      if (J.gdt == kF32)
        by_state(f16{}, 0.f);
      else
        by_state(f16{}, f16{});
      break;
  }
}

void sumsq_entry(const mulo_cpu::TensorJob& J, const mulo_cpu::Hyper& Hp, int64_t s, int64_t e, double* o) {
  with_types(J, [&](auto pt, auto gt, auto st) {
    sumsq_typed<decltype(pt), decltype(gt), decltype(st)>(J, Hp, s, e, o);
  });
}

void apply_entry(const mulo_cpu::TensorJob& J, const mulo_cpu::Hyper& Hp, const mulo_cpu::Net& N, int64_t s,
                 int64_t e) {
  with_types(J, [&](auto pt, auto gt, auto st) {
    apply_typed<decltype(pt), decltype(gt), decltype(st)>(J, Hp, N, s, e);
  });
}

}  // namespace
