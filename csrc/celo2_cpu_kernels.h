// The Celo2 CPU kernels (passes B, C and E of mulo/celo2/reference.py's pass plan): the CPU's tiling of the
// shared Celo2 math (celo2_math.h), compiled per instruction set.
//
// Included by lopt_cpu_{base,avx2,avx512}.cpp right after lopt_cpu_kernels.h, inside the same `#pragma GCC
// target`: it reuses μLO's tile machinery from there (the Vec value type, storage conversions and dtype dispatch
// with_types, load_tile, locate/gather_entries of the row/column entries, the register-blocked micro-GEMM
// `dense`). Internal linkage, no torch, as lopt_cpu_kernels.h.
//
// A tile holds up to T consecutive elements of one tensor's math view. Features are normalized per slice (the
// last two axes): a tile inside one slice scales by that slice's numbers, a tile across slices (slices smaller
// than a tile: conv kernels' H × W) by each lane's own; per-slice sums go to fp32 lanes flushed into doubles,
// or straight into the lane's slice for tiles across slices.
#pragma once

#include "celo2_cpu.h"
#include "celo2_math.h"

namespace {

namespace c2 = mulo::celo2;
constexpr int CF = c2::kFeatures;  // 30 features
constexpr int CH = c2::kHidden;    // hidden width 8
static_assert(CH % OB == 0, "μLO's output block must divide Celo2's hidden width");

// Elements of the tile at e0 (at most T, never past `end`); a slice of at least T elements is cut at its end,
// so that every tile of it lies in one slice.
inline int celo2_count(const mulo_cpu::Celo2Job& J, int64_t e0, int64_t end) {
  int64_t cnt = end - e0 < T ? end - e0 : T;
  if (J.L >= T) {
    const int64_t to_slice_end = (e0 / J.L + 1) * J.L - e0;
    cnt = cnt < to_slice_end ? cnt : to_slice_end;
  }
  return static_cast<int>(cnt);
}

// Sums over slices of W values per element: a tile in one slice adds into fp32 lanes (flushed into the slice's
// doubles when the slice changes and every 64 tiles); a tile across slices adds each lane into its own slice.
template <int W>
struct SliceSums {
  double* out;    // [slices from s0][W]
  int64_t s0, L;  // the first slice of the range, elements per slice
  int64_t slice = -1;
  int tiles = 0;
  alignas(64) float acc[W][T];

  SliceSums(double* o, int64_t start, int64_t l) : out(o), s0(start / l), L(l) {
    for (int w = 0; w < W; ++w)
      for (int e = 0; e < T; ++e) acc[w][e] = 0.f;
  }
  void flush() {
    if (slice < 0) return;
    for (int w = 0; w < W; ++w) {
      double s = 0.0;
      for (int e = 0; e < T; ++e) {
        s += acc[w][e];
        acc[w][e] = 0.f;
      }
      out[(slice - s0) * W + w] += s;
    }
  }
  // adds x² of lanes [0, cnt) of x[W][T] (elements e0...)
  void add_squares(const float (&x)[W][T], int64_t e0, int cnt) {
    const int64_t first = e0 / L, last = (e0 + cnt - 1) / L;
    if (first == last) {
      if (first != slice || tiles == 64) {
        flush();
        slice = first;
        tiles = 0;
      }
      ++tiles;
      for (int w = 0; w < W; ++w)
        for (int e = 0; e < cnt; ++e) acc[w][e] += x[w][e] * x[w][e];
      return;
    }
    for (int e = 0; e < cnt; ++e) {
      double* o = out + ((e0 + e) / L - s0) * W;
      for (int w = 0; w < W; ++w) o[w] += static_cast<double>(x[w][e]) * x[w][e];
    }
  }
};

// The new (UPDATE: from the old ones in t.m/t.v, written back there) or current moments and the 30 features of
// a loaded tile into X, through the shared math; g is clamped here.
template <bool UPDATE>
inline void celo2_features(const mulo_cpu::Celo2Job& J, const mulo_cpu::Hyper& Hp, const TilePos& tp, Tile& t,
                           float (&X)[CF][T]) {
  const int64_t nr = J.nrow, nc = J.ncol;
  alignas(64) float rg[mulo::math::kAccValues][T], cg[mulo::math::kAccValues][T];
  if (!tp.fast) gather_entries<0>(J, tp, rg, cg);
  for (int w = 0; w < NV; ++w) {
    const int o = w * VW;
    auto out = [&](int j, Vec x) { st(&X[j][o], x); };
    const Vec g = c2::clamp_grad(ld(t.g + o)), p = ld(t.p + o);
    Vec m[3] = {ld(t.m[0] + o), ld(t.m[1] + o), ld(t.m[2] + o)};
    Vec v = ld(t.v + o);
    if (UPDATE) {
      c2::moments(Hp, g, m, v);
      for (int k = 0; k < 3; ++k) st(t.m[k] + o, m[k]);
      st(t.v + o, v);
    }
    if (tp.fast && tp.row_const) {  // one row entry, consecutive column entries
      c2::features(g, p, m, v, [&](int j) { return bcast(J.rowv[j * nr + tp.r0]); },
                   [&](int j) { return ld(J.colv + j * nc + tp.c0 + o); }, out);
    } else if (tp.fast) {  // consecutive row entries, one column entry
      c2::features(g, p, m, v, [&](int j) { return ld(J.rowv + j * nr + tp.r0 + o); },
                   [&](int j) { return bcast(J.colv[j * nc + tp.c0]); }, out);
    } else {
      c2::features(g, p, m, v, [&](int j) { return ld(rg[j] + o); }, [&](int j) { return ld(cg[j] + o); }, out);
    }
  }
}

// The direction d of every lane of a tile whose moments are current: features, each times its slice's
// normalization, then the network 30 → 8 → 8 → 2 (relu) and d · exp(a · EXP_MULT) (math::step_of).
inline void celo2_direction_tile(const mulo_cpu::Celo2Job& J, const mulo_cpu::Hyper& Hp, const TilePos& tp,
                                 int64_t e0, int cnt, Tile& t, float (&d)[T]) {
  alignas(64) float X[CF][T];
  celo2_features<false>(J, Hp, tp, t, X);
  const int64_t first = e0 / J.L, last = (e0 + cnt - 1) / J.L;
  if (first == last) {
    const float* s = J.fscale + first * CF;
    for (int j = 0; j < CF; ++j)
      for (int e = 0; e < T; ++e) X[j][e] *= s[j];
  } else {
    for (int e = 0; e < T; ++e) {
      const float* s = J.fscale + (e < cnt ? (e0 + e) / J.L : first) * CF;
      for (int j = 0; j < CF; ++j) X[j][e] *= s[j];
    }
  }
  alignas(64) float h1[CH][T], h2[CH][T], out[2][T];
  dense<CF, CH, OB, true, CF, false>(J.w1, J.b1, nullptr, 0, &X[0][0], &h1[0][0]);
  dense<CH, CH, OB, true, CH, false>(J.w2, J.b2, nullptr, 0, &h1[0][0], &h2[0][0]);
  dense<CH, 2, 2, false, CH, false>(J.w3, J.b3, nullptr, 0, &h2[0][0], &out[0][0]);
  for (int w = 0; w < NV; ++w) st(d + w * VW, mulo::math::step_of(Hp, ld(out[0] + w * VW), ld(out[1] + w * VW)));
}

template <class ST>
inline void celo2_store_moments(const mulo_cpu::Celo2Job& J, int64_t e0, int cnt, const Tile& t) {
  ST* M = static_cast<ST*>(J.m);
  ST* V = static_cast<ST*>(J.v);
  for (int k = 0; k < 3; ++k)
    for (int e = 0; e < cnt; ++e) M[k * J.n + e0 + e] = from_f<ST>(t.m[k][e]);
  for (int e = 0; e < cnt; ++e) V[e0 + e] = from_f<ST>(t.v[e]);
}

template <class PT>
inline void celo2_store_param(const mulo_cpu::Celo2Job& J, int64_t e0, int cnt, const float (&p)[T]) {
  PT* P = static_cast<PT*>(J.p);
  for (int e = 0; e < cnt; ++e) P[e0 + e] = from_f<PT>(p[e]);
}

// p − lr·(d·scale + wd·p) per lane, each lane with its slice's step scale.
inline void celo2_update(const mulo_cpu::Celo2Job& J, int64_t e0, int cnt, const float (&p)[T], const float (&d)[T],
                         float (&pn)[T]) {
  for (int e = 0; e < T; ++e) {
    const float s = J.sscale[(e < cnt ? e0 + e : e0) / J.L];
    pn[e] = c2::updated_param(p[e], d[e], s, J.lr, J.wd);
  }
}

// ---- the passes on elements [start, end) of one tensor ------------------------------------------------------
// B: the new m, v (written) and the features' sums of squares per slice.
template <class PT, class GT, class ST>
void celo2_sumsq_range(const mulo_cpu::Celo2Job& J, const mulo_cpu::Hyper& Hp, int64_t start, int64_t end,
                       double* out) {
  Tile t;
  TilePos tp;
  alignas(64) float X[CF][T];
  SliceSums<CF> sums(out, start, J.L);
  for (int64_t e0 = start; e0 < end;) {
    const int cnt = celo2_count(J, e0, end);
    load_tile<PT, GT, ST, true>(J, e0, cnt, t);
    locate(J, e0, cnt, tp);
    celo2_features<true>(J, Hp, tp, t, X);
    celo2_store_moments<ST>(J, e0, cnt, t);
    sums.add_squares(X, e0, cnt);
    e0 += cnt;
  }
  sums.flush();
}

// C: the direction (written where J.dir is set) and its sum of squares per slice.
template <class PT, class GT, class ST>
void celo2_direction_range(const mulo_cpu::Celo2Job& J, const mulo_cpu::Hyper& Hp, int64_t start, int64_t end,
                           double* out) {
  Tile t;
  TilePos tp;
  alignas(64) float d[1][T];
  SliceSums<1> sums(out, start, J.L);
  for (int64_t e0 = start; e0 < end;) {
    const int cnt = celo2_count(J, e0, end);
    load_tile<PT, GT, ST, true>(J, e0, cnt, t);
    locate(J, e0, cnt, tp);
    celo2_direction_tile(J, Hp, tp, e0, cnt, t, d[0]);
    if (J.dir != nullptr)
      for (int e = 0; e < cnt; ++e) J.dir[e0 + e] = d[0][e];
    sums.add_squares(d, e0, cnt);
    e0 += cnt;
  }
  sums.flush();
}

// E (orthogonalize=False): the direction recomputed, normalized by its slice's RMS, and the update.
template <class PT, class GT, class ST>
void celo2_apply_range(const mulo_cpu::Celo2Job& J, const mulo_cpu::Hyper& Hp, int64_t start, int64_t end) {
  Tile t;
  TilePos tp;
  alignas(64) float d[T], pn[T];
  for (int64_t e0 = start; e0 < end;) {
    const int cnt = celo2_count(J, e0, end);
    load_tile<PT, GT, ST, true>(J, e0, cnt, t);
    locate(J, e0, cnt, tp);
    celo2_direction_tile(J, Hp, tp, e0, cnt, t, d);
    celo2_update(J, e0, cnt, t.p, d, pn);
    celo2_store_param<PT>(J, e0, cnt, pn);
    e0 += cnt;
  }
}

// E from given steps (orthogonalize=True: Newton–Schulz ran between C and E).
template <class PT>
void celo2_apply_steps_range(const mulo_cpu::Celo2Job& J, int64_t start, int64_t end) {
  const PT* P = static_cast<const PT*>(J.p);
  alignas(64) float p[T], d[T], pn[T];
  for (int64_t e0 = start; e0 < end;) {
    const int cnt = celo2_count(J, e0, end);
    for (int e = 0; e < T; ++e) {
      p[e] = e < cnt ? to_f(P[e0 + e]) : 0.f;
      d[e] = e < cnt ? J.steps[e0 + e] : 0.f;
    }
    celo2_update(J, e0, cnt, p, d, pn);
    celo2_store_param<PT>(J, e0, cnt, pn);
    e0 += cnt;
  }
}

// ---- dtype dispatch (μLO's with_types: the storage types as template parameters) ---------------------------
void celo2_sumsq_entry(const mulo_cpu::Celo2Job& J, const mulo_cpu::Hyper& Hp, int64_t s, int64_t e, double* o) {
  with_types(J, [&](auto pt, auto gt, auto st) {
    celo2_sumsq_range<decltype(pt), decltype(gt), decltype(st)>(J, Hp, s, e, o);
  });
}

void celo2_direction_entry(const mulo_cpu::Celo2Job& J, const mulo_cpu::Hyper& Hp, int64_t s, int64_t e,
                           double* o) {
  with_types(J, [&](auto pt, auto gt, auto st) {
    celo2_direction_range<decltype(pt), decltype(gt), decltype(st)>(J, Hp, s, e, o);
  });
}

void celo2_apply_entry(const mulo_cpu::Celo2Job& J, const mulo_cpu::Hyper& Hp, int64_t s, int64_t e) {
  with_types(J, [&](auto pt, auto gt, auto st) {
    celo2_apply_range<decltype(pt), decltype(gt), decltype(st)>(J, Hp, s, e);
  });
}

void celo2_apply_steps_entry(const mulo_cpu::Celo2Job& J, const mulo_cpu::Hyper&, int64_t s, int64_t e) {
  with_types(J, [&](auto pt, auto, auto) { celo2_apply_steps_range<decltype(pt)>(J, s, e); });
}

}  // namespace
