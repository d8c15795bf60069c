// CUDA implementation of the mulo::lopt_* ops (docs/ALGORITHM.md §5), multi-tensor (multi_tensor.cuh): every
// pass is one launch over the work items of all tensors of a call, on the current stream, with no host sync
// (the finite flags and step counters stay on the device). Storage dtypes of parameters (P) and state (S)
// are template parameters (the gradient's, the parameter's or float32, is a warp-uniform branch); math is fp32.
//
// The per-element math is lopt_math.h, instantiated here with `float`: the same functions the CPU kernels
// run with their SIMD vectors (and the CPU tests execute): moment and accumulator updates, the feature
// channels, the Adafactor entry values (new accumulators, rsqrt(x + 1e-8), factors), the normalization and
// time features folded into layer 1, the output head and the update with decoupled weight decay. The
// per-tensor descriptor table comes from the builder shared with the CPU (lopt_common.h: describe).
//
// Work items: a factored tensor whose contiguous axis is a factored one (C == 1, ≥ 32 columns: every 2-d weight)
// is cut into 2-d tiles (a warp: one 32-column strip × R rows of one [Da, Db] plane; coordinates decoded once per
// tile, no division per element; the entry without axis a is one per column, the one without b one per row).
// Other tensors (rank < 2; C > 1) run linear chunks (factored ones: Layout::coords per element).
//
//   A  reduce_kernel   : s = g² + 1e-30; tiles: column partials in registers over the warp's rows (one RED per
//                        column), a warp sum and one RED per row; linear: warp-aggregated RED; finite flag.
//   -  prepare_kernel  : one block per factored tensor: new accumulators r, c, their rsqrt(x + 1e-8), the
//                        row/column factors (O(rows + cols)); in pass B also the channel 13-24 sums of squares,
//                        in pass C also the write of the new row/col state.
//   B  sumsq_kernel    : the per-element channels' sums of squares, partials in registers over the whole block's
//                        elements, one block reduction and one RED per channel.
//   -  fold_kernel     : normalization scales into layer 1's columns (in the kernel's unit order, lopt_cuda_mma.cuh),
//                        time features into its bias (per tensor).
//   C  apply_kernel    : features, the MLP on tensor cores, the update; then finish_kernel counts the step (or the
//                        skip) on the device.
//
// Pass C's MLP: mma.sync m16n8k8 with TF32 operands and fp32 accumulation, every product in 3xTF32 (hi·hi + hi·lo +
// lo·hi, hi = TF32 truncation, lo = the exact fp32 remainder: ~2^-21 relative per product, the fp32 path's order,
// inside the 2e-4 parity tolerance that plain TF32 misses). Weights split and packed in fragment order once per
// block (shared memory); per warp 32 elements = 2 m-tiles: each lane computes its element's 16 per-element channels
// (0-12, 25-27), stages them in shared memory (swizzled, conflict-free), and the warp loads them as A fragments.
// Channels 13-24 are never computed per element on the tiles: the column entry's six (units 16-21) go through one
// k-step once per tile, folded with the bias into the accumulators' initial value (shared memory, per lane); the row
// entry's six (units 24-29) are one k-step per row whose A is the same for all 32 elements (two loads per lane).
// Layers 2-3 take their A straight from the previous accumulators (lopt_cuda_mma.cuh: a_from_c), ReLU + split in
// registers; layer 3 is one n-tile (2 of 8 outputs used); the outputs go back to the element lanes via shared memory.
//
// Verified on the CPU (tests/backends/test_cuda_fragments.py): every fragment index the kernels take from
// lopt_cuda_mma.cuh against the PTX ISA's layouts, by emulating the warp-level MMA on the kernel's data flow (both
// paths; the staged MLP equals the float64 MLP to ~1e-7 of its terms), the split's exactness, the staging's freedom
// from bank conflicts, layer 1's unit order. Verified statically only (compile checks: sm_80/sm_90 builds;
// bench/gpu_static.py: registers, spills, SASS mix): everything else on the device: that this file sequences the
// header's functions as the test replays them, the inline PTX (mma.sync, red.global), the storage loads/stores
// (bf16/fp16 conversions), the tile decoding and strip/row bounds, the reductions (warp shuffles, shared memory,
// RED), the per-tensor kernels, shared-memory ordering (__syncwarp), and the launches. It has not run on a GPU in
// this repository's tests unless one was lent (tests/backends/test_native_cuda.py: parity on a GPU).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>
#include <vector>

#include "lopt_common.h"
#include "lopt_cuda_mma.cuh"
#include "lopt_math.h"
#include "multi_tensor.cuh"
#include "ops.h"

#define MULO_STR2(...) #__VA_ARGS__
#define MULO_STR(...) MULO_STR2(__VA_ARGS__)

namespace mulo {

std::string cuda_archs() {
#ifdef __CUDA_ARCH_LIST__
  return MULO_STR(__CUDA_ARCH_LIST__);
#else
  return "unknown";
#endif
}

namespace {

constexpr int kRV = math::kAccValues;  // per row/col entry: acc_k, rsqrt(acc_k + 1e-8), factor_k
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRowsAB = 32;  // passes A and B: rows of a 2-d tile per warp (elements per lane of a block)
constexpr int kRowsC = 16;   // pass C: the same
constexpr int64_t kChunkAB = kRowsAB * kThreads;  // elements per block in passes A and B (8192)
constexpr int64_t kChunkC = kRowsC * kThreads;    // elements per block in pass C (4096)
constexpr unsigned kFull = 0xffffffffu;
using frag::kHiddenTiles;
using frag::kLanes;
using frag::kUnits;
using spec::kOutput;
constexpr int kHid = kHiddenTiles;          // 4: n-tiles of layers 1-2, k-steps of layers 2-3
using frag::kPackedSlots;   // packed float4 of layer 1 or 2 per block
using frag::kPackedSlots3;  // layer 3
using frag::kW1Words;       // folded layer 1 in unit order (then its bias)
constexpr int kW12Slots = kPackedSlots;
constexpr int kW3Slots = kPackedSlots3;
constexpr int kBiasWords = 2 * kHidden + kOutput;  // b1 (folded), b2, b3 staged per block

// One tensor: the shared descriptor (lopt_desc.h, built by lopt_common.h) plus the CUDA scratch and tiling.
struct Meta : TensorDesc {
  float* rowv = nullptr;  // scratch [nrow][kRV]
  float* colv = nullptr;  // scratch [ncol][kRV]
  float* mean = nullptr;  // scratch [3][nmean] (nmean = nrow / d1_size)
  float* w1f = nullptr;   // scratch: folded layer 1 [32][frag::kUnits] in kernel unit order, then bias [32]
  int tiled = 0;   // 2-d tiles: factored with C == 1 (rows: axis a, columns: axis b, contiguous)
  int strips = 1;  // tiled: 32-column strips per block (1, 2, 4 or 8); the block's warps split its rows
};

__device__ __forceinline__ float ld(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ld(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float ld(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ void st(float* p, int64_t i, float x) { p[i] = x; }
__device__ __forceinline__ void st(__nv_bfloat16* p, int64_t i, float x) { p[i] = __float2bfloat16_rn(x); }
__device__ __forceinline__ void st(__half* p, int64_t i, float x) { p[i] = __float2half_rn(x); }

// state of either dtype, chosen per tensor at run time (only used on O(rows + cols) data)
__device__ __forceinline__ float ld_state(const void* p, int sdt, int64_t i) {
  return sdt == kBF16 ? ld(static_cast<const __nv_bfloat16*>(p), i) : ld(static_cast<const float*>(p), i);
}
__device__ __forceinline__ void st_state(void* p, int sdt, int64_t i, float x) {
  if (sdt == kBF16)
    st(static_cast<__nv_bfloat16*>(p), i, x);
  else
    st(static_cast<float*>(p), i, x);
}

__device__ __forceinline__ float ld_grad(const void* g, int gdt, int64_t i) {
  if (gdt == kBF16) return ld(static_cast<const __nv_bfloat16*>(g), i);
  if (gdt == kF16) return ld(static_cast<const __half*>(g), i);
  return ld(static_cast<const float*>(g), i);
}

// Row (d0 reduced) and column (d1 reduced) accumulator index of element e of a factored tensor (the linear path
// of untiled tensors: C > 1 or fewer than 32 columns; int64 division per element).
__device__ __forceinline__ void rowcol(const Meta& M, int64_t e, int64_t& row, int64_t& col) {
  M.entries(M.coords(e), row, col);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Relaxed fire-and-forget float add to global memory (RED, no return value, no CAS loop).
__device__ __forceinline__ void red_add(float* p, float v) {
  asm volatile("red.relaxed.gpu.global.add.f32 [%0], %1;" ::"l"(__cvta_generic_to_global(p)), "f"(v) : "memory");
}

// atomicAdd(base[idx], v) for a full warp; one atomic when every lane targets the same entry.
__device__ __forceinline__ void warp_atomic_add(float* base, long long idx, float v) {
  const long long idx0 = __shfl_sync(kFull, idx, 0);
  if (__all_sync(kFull, idx == idx0)) {
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) red_add(base + idx0, v);
  } else {
    red_add(base + idx, v);
  }
}

// ---- 2-d tiles -----------------------------------------------------------------------------------------------------
// A tiled tensor's block covers `strips` 32-column strips × (kWarps / strips) · R rows of one [Da, Db] plane
// (fixed x, y of the [A, Da, B, Db, 1] view); chunk.start is the tile's first element. A warp owns one strip and R
// rows: lane = column j, row r = element e0 + r·e_step, entry without b (the line) line0 + r·line_step, entry
// without a: ea (per column). Decoded once per tile (a few int64 divisions per warp, none per element).
struct Strip {
  int64_t e0, line0, ea, e_step, line_step;
  int rows;    // rows of this warp (≤ R; 0: none)
  bool lane;   // this lane's column exists
  bool any;    // some lane's column exists (warp-uniform)
};

template <int R>
__device__ __forceinline__ Strip strip_of(const Meta& M, int64_t start) {
  const int warp = threadIdx.x >> 5;
  const int64_t L0 = start / M.Db, j0 = start - L0 * M.Db;
  const int64_t q = L0 / M.B, y = L0 - q * M.B;
  const int64_t x = q / M.Da, i0 = q - x * M.Da;
  const int64_t i = i0 + static_cast<int64_t>(warp / M.strips) * R;
  const int64_t jw = j0 + 32 * (warp % M.strips), j = jw + (threadIdx.x & 31);
  Strip s;
  s.rows = static_cast<int>(max(int64_t{0}, min(int64_t{R}, M.Da - i)));
  s.lane = j < M.Db;
  s.any = jw < M.Db && s.rows > 0;
  s.line0 = (x * M.Da + i) * M.B + y;
  s.e0 = s.line0 * M.Db + j;
  s.ea = (x * M.B + y) * M.Db + j;
  s.line_step = M.B;
  s.e_step = M.B * M.Db;
  return s;
}

// The entry values (scratch, [entry][kRV]) of the entries without axis a and without axis b.
__device__ __forceinline__ const float* values_a(const Meta& M) { return M.d0_is_a ? M.rowv : M.colv; }
__device__ __forceinline__ const float* values_b(const Meta& M) { return M.d0_is_a ? M.colv : M.rowv; }

// ---- pass A ---------------------------------------------------------------------------------------------
// 2-d tiles: column partials in a register over the warp's rows, one RED per column; a warp sum and one RED per row.
template <class G>
__global__ void __launch_bounds__(kThreads) reduce_kernel(const Meta* metas, const mt::Chunk* chunks, float* finite) {
  const mt::Chunk ch = chunks[blockIdx.x];
  const Meta& M = metas[ch.tensor];
  const G* g = static_cast<const G*>(M.g);
  bool bad = false;
  const Strip S = strip_of<kRowsAB>(M, ch.start);
  float* sum_a = M.sums + (M.d0_is_a ? 0 : M.nrow);  // sums over axis a: entries without a
  float* sum_b = M.sums + (M.d0_is_a ? M.nrow : 0);
  float col = 0.f;
  if (S.any) {
    // fully unrolled: every row's load in flight at once (rows past the tensor's edge predicated off)
#pragma unroll
    for (int r = 0; r < kRowsAB; ++r) {
      const bool in = r < S.rows;  // warp-uniform
      float s = 0.f;
      if (in && S.lane) {
        s = math::grad_sq(ld(g, S.e0 + r * S.e_step));
        bad |= !math::finite_s(s);
      }
      col += s;
      const float row = warp_sum(s);
      if (in && (threadIdx.x & 31) == 0) red_add(sum_b + S.line0 + r * S.line_step, row);
    }
    if (S.lane) red_add(sum_a + S.ea, col);
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) finite[ch.tensor] = 0.f;
}

// Linear chunks (rank < 2: the finite flag only; factored with C > 1: warp-aggregated RED per element).
template <class G>
__global__ void __launch_bounds__(kThreads) reduce_linear_kernel(const Meta* metas, const mt::Chunk* chunks,
                                                                 float* finite) {
  const mt::Chunk ch = chunks[blockIdx.x];
  const Meta& M = metas[ch.tensor];
  const G* g = static_cast<const G*>(M.g);
  bool bad = false;
  const int64_t end = min(ch.start + kChunkAB, M.n);
  for (int64_t b = ch.start; b < end; b += blockDim.x) {
    const int64_t e = b + threadIdx.x;
    const bool act = e < end;
    if (__ballot_sync(kFull, act) == 0) continue;  // uniform per warp
    float s = 0.f;
    if (act) {
      s = math::grad_sq(ld(g, e));
      bad |= !math::finite_s(s);
    }
    if (M.factored) {
      int64_t row = 0, col = 0;
      if (act) rowcol(M, e, row, col);
      const long long r0 = __shfl_sync(kFull, static_cast<long long>(row), 0);
      const long long c0 = __shfl_sync(kFull, static_cast<long long>(col), 0);
      warp_atomic_add(M.sums, act ? row : r0, s);
      warp_atomic_add(M.sums + M.nrow, act ? col : c0, s);
    }
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) finite[ch.tensor] = 0.f;
}

// ---- per-tensor O(rows + cols) ----------------------------------------------------------------------------
// One block per tensor. sumsq != nullptr: add the channel 13-24 sums of squares (pass B).
// write_state: store the new row/col accumulators (pass C).
__global__ void prepare_kernel(const Meta* metas, const float* finite, math::Hyper H, int sdt, float* sumsq,
                               int write_state) {
  const int t = blockIdx.x;
  const Meta& M = metas[t];
  // a zero-element tensor has nothing to update: its accumulators stay as they are (no 0/0 means)
  if (!M.factored || finite[t] == 0.f || M.whole_n == 0) return;
  const int64_t nmean = M.nmean;
  for (int64_t k = threadIdx.x; k < 3 * nmean; k += blockDim.x) M.mean[k] = 0.f;
  __syncthreads();
  const float d0 = static_cast<float>(M.whole_d0), d1 = static_cast<float>(M.whole_d1);
  const float l0 = static_cast<float>(M.d0_size), l1 = static_cast<float>(M.d1_size);  // local (the sums)
  for (int64_t e = threadIdx.x; e < M.nrow; e += blockDim.x) {
    const int64_t mi = M.mean_index(e);
    for (int k = 0; k < 3; ++k) {
      const float r = math::new_acc(H, k, ld_state(M.acc_a, sdt, k * M.nrow + e), M.sums[e], d0);
      M.rowv[e * kRV + math::kAccValue + k] = r;
      atomicAdd(M.mean + k * nmean + mi, r);
    }
  }
  __syncthreads();
  // channels 13-24 sums of squares (pass B) and the new state (pass C) of one entry: `vals` its kRV values,
  // `count` the local elements it repeats over, part[0..2] / part[6..8] (rows) or part[3..5] / part[9..11]
  float part[12] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  auto finish_entry = [&](const float* vals, float count, int ch_value, int ch_rsqrt, void* state, int64_t n,
                          int64_t e) {
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      const float a = vals[math::kAccValue + k], rs = vals[math::kAccRsqrt + k];
      part[ch_value - spec::kChRow + k] += a * a * count;
      part[ch_rsqrt - spec::kChRow + k] += rs * rs * count;
      if (write_state) st_state(state, sdt, k * n + e, a);
    }
  };
  for (int64_t e = threadIdx.x; e < M.nrow; e += blockDim.x) {
    const int64_t mi = M.mean_index(e);
    float* rv = M.rowv + e * kRV;
    float r[3], rm[3];
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      r[k] = rv[math::kAccValue + k];
      rm[k] = (M.row_acc_sum ? M.row_acc_sum[k * nmean + mi] : M.mean[k * nmean + mi]) / d1;
    }
    math::row_entry(r, rm, [&](int j, float x) { rv[j] = x; });
    finish_entry(rv, l0, spec::kChRow, spec::kChRsqrtRow, M.acc_a, M.nrow, e);
  }
  for (int64_t e = threadIdx.x; e < M.ncol; e += blockDim.x) {
    float* cv = M.colv + e * kRV;
    float c[3];
#pragma unroll
    for (int k = 0; k < 3; ++k)
      c[k] = math::new_acc(H, k, ld_state(M.acc_b, sdt, k * M.ncol + e), M.sums[M.nrow + e], d1);
    math::col_entry(c, [&](int j, float x) { cv[j] = x; });
    finish_entry(cv, l1, spec::kChCol, spec::kChRsqrtCol, M.acc_b, M.ncol, e);
  }
  if (sumsq != nullptr) {
    for (int q = 0; q < 12; ++q) {
      const float v = warp_sum(part[q]);
      if ((threadIdx.x & 31) == 0) atomicAdd(sumsq + t * kFeatures + spec::kChRow + q, v);  // 13-24
    }
  }
}

// ---- features ----------------------------------------------------------------------------------------------
// The 28 channels of element e (docs/ALGORITHM.md §2) and the element's new state, through lopt_math.h (the
// linear path: untiled tensors).
template <class P, class S>
__device__ __forceinline__ void features(const Meta& M, const math::Hyper& H, int64_t e, float (&x)[kFeatures],
                                         float (&m)[3], float& v, float (&u)[3]) {
  const float g = ld_grad(M.g, M.gdt, e);
  const S* Ms = static_cast<const S*>(M.m);
  auto out = [&](int channel, float value) { x[channel] = value; };
#pragma unroll
  for (int k = 0; k < 3; ++k) m[k] = ld(Ms, k * M.n + e);
  v = ld(static_cast<const S*>(M.v), e);
  math::moment_channels(H, g, ld(static_cast<const P*>(M.p), e), m, v, out);
  if (M.factored) {
    int64_t row, col;
    rowcol(M, e, row, col);
    const float* rw = M.rowv + row * kRV;
    const float* cl = M.colv + col * kRV;
    math::factored_channels(g, m, [&](int j) { return rw[j]; }, [&](int j) { return cl[j]; }, true, out);
  } else {
    const S* U = static_cast<const S*>(M.acc_a);
#pragma unroll
    for (int k = 0; k < 3; ++k) u[k] = ld(U, k * M.n + e);
    math::full_channels(H, g, m, u, out);
  }
}

// The per-element channels (0-12, 25-27) of element e of a tiled tensor, given the factors of its two entries
// (fa: without a, per column; fb: without b, per row; factored_channels takes their product, which is symmetric).
template <class P, class S>
__device__ __forceinline__ void tile_features(const Meta& M, const math::Hyper& H, int64_t e, const float (&fa)[3],
                                              const float (&fb)[3], float (&x)[kFeatures], float (&m)[3], float& v) {
  const float g = ld_grad(M.g, M.gdt, e);
  const S* Ms = static_cast<const S*>(M.m);
  auto out = [&](int channel, float value) { x[channel] = value; };
#pragma unroll
  for (int k = 0; k < 3; ++k) m[k] = ld(Ms, k * M.n + e);
  v = ld(static_cast<const S*>(M.v), e);
  math::moment_channels(H, g, ld(static_cast<const P*>(M.p), e), m, v, out);
  math::factored_channels(
      g, m, [&](int j) { return fa[j - math::kAccFactor]; }, [&](int j) { return fb[j - math::kAccFactor]; }, false,
      out);
}

__device__ __forceinline__ bool per_element(int c) { return c < spec::kChRow || c >= spec::kChFacM; }

// ---- pass B ---------------------------------------------------------------------------------------------
// Sums of squares of the per-element channels: partials in registers over the block's elements, one block
// reduction and one RED per channel at the end (channels 13-24 of factored tensors: prepare_kernel).
__device__ __forceinline__ void sumsq_flush(const Meta& M, int t, const float (&acc)[kFeatures], float* sumsq) {
  __shared__ float red[kFeatures][kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int c = 0; c < kFeatures; ++c) {
    const float s = warp_sum(acc[c]);
    if (lane == 0) red[c][warp] = s;
  }
  __syncthreads();
  if (threadIdx.x < kFeatures) {
    const int c = threadIdx.x;
    if (M.factored && c >= spec::kChRow && c < spec::kChFacM) return;  // O(rows + cols): added by prepare_kernel
    float s = 0.f;
    for (int w = 0; w < kWarps; ++w) s += red[c][w];
    red_add(sumsq + t * kFeatures + c, s);
  }
}

// 2-d tiles: the factors of the column's entry once per tile, of the row's entry once per row (uniform loads).
template <class P, class S>
__global__ void __launch_bounds__(kThreads) sumsq_kernel(const Meta* metas, const mt::Chunk* chunks,
                                                         const float* finite, math::Hyper H, float* sumsq) {
  const mt::Chunk ch = chunks[blockIdx.x];
  if (finite[ch.tensor] == 0.f) return;
  const Meta& M = metas[ch.tensor];
  float acc[kFeatures];
#pragma unroll
  for (int c = 0; c < kFeatures; ++c) acc[c] = 0.f;
  const Strip T = strip_of<kRowsAB>(M, ch.start);
  const float* va = values_a(M);
  const float* vb = values_b(M);
  float fa[3] = {0.f, 0.f, 0.f};
  if (T.lane) {
#pragma unroll
    for (int k = 0; k < 3; ++k) fa[k] = va[T.ea * kRV + math::kAccFactor + k];
  }
  if (T.any) {
    for (int r = 0; r < kRowsAB; ++r) {
      if (r >= T.rows) break;
      const int64_t lb = T.line0 + r * T.line_step;
      float fb[3];
#pragma unroll
      for (int k = 0; k < 3; ++k) fb[k] = vb[lb * kRV + math::kAccFactor + k];
      if (T.lane) {
        float x[kFeatures], m[3], v;
        tile_features<P, S>(M, H, T.e0 + r * T.e_step, fa, fb, x, m, v);
#pragma unroll
        for (int c = 0; c < kFeatures; ++c)
          if (per_element(c)) acc[c] += x[c] * x[c];
      }
    }
  }
  sumsq_flush(M, ch.tensor, acc, sumsq);
}

template <class P, class S>
__global__ void __launch_bounds__(kThreads) sumsq_linear_kernel(const Meta* metas, const mt::Chunk* chunks,
                                                                const float* finite, math::Hyper H, float* sumsq) {
  const mt::Chunk ch = chunks[blockIdx.x];
  if (finite[ch.tensor] == 0.f) return;
  const Meta& M = metas[ch.tensor];
  float acc[kFeatures];
#pragma unroll
  for (int c = 0; c < kFeatures; ++c) acc[c] = 0.f;
  const int64_t end = min(ch.start + kChunkAB, M.n);
  for (int64_t e = ch.start + threadIdx.x; e < end; e += blockDim.x) {
    float x[kFeatures], m[3], v, u[3];
    features<P, S>(M, H, e, x, m, v, u);
#pragma unroll
    for (int c = 0; c < kFeatures; ++c) acc[c] += x[c] * x[c];
  }
  sumsq_flush(M, ch.tensor, acc, sumsq);
}

// ---- fold (per tensor) -------------------------------------------------------------------------------------
// Layer 1 with the normalization scales folded into its columns, in the kernel's unit order (lopt_cuda_mma.cuh:
// unit_of_channel; zero pads), and its bias with the time features folded in.
__global__ void fold_kernel(const Meta* metas, const float* finite, const float* sumsq, const float* W1,
                            const float* b1, float time_clamp) {
  const int t = blockIdx.x;
  if (finite[t] == 0.f) return;
  const Meta& M = metas[t];
  constexpr int In = kFeatures + kTimescales;
  const float n = static_cast<float>(M.whole_n);
  for (int k = threadIdx.x; k < kW1Words; k += blockDim.x) {
    const int o = k / frag::kUnits, j = frag::channel_of_unit(k % frag::kUnits, M.d0_is_a);
    M.w1f[k] = j < 0 ? 0.f : W1[o * In + j] * math::norm_scale(sumsq[t * kFeatures + j], n);
  }
  if (threadIdx.x < kHidden) {
    float tf[kTimescales];
    math::time_features(*M.step, time_clamp, tf);
    for (int o = threadIdx.x; o < kHidden; o += blockDim.x)
      M.w1f[kHidden * frag::kUnits + o] = math::folded_bias(b1[o], W1 + o * In, tf);
  }
}

// ---- pass C: the MLP on tensor cores (mma.sync m16n8k8 TF32, 3xTF32 products; lopt_cuda_mma.cuh) ---------------
// d += a·b for one k-step of one (m-tile, n-tile): lo(a)·hi(b) + hi(a)·lo(b) + hi(a)·hi(b), small terms first.
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], float b0, float b1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(__float_as_uint(b0)), "r"(__float_as_uint(b1)));
}
__device__ __forceinline__ void mma3(float (&d)[4], const uint32_t (&ah)[4], const uint32_t (&al)[4], float4 b) {
  mma_tf32(d, al, b.x, b.y);
  mma_tf32(d, ah, b.z, b.w);
  mma_tf32(d, ah, b.x, b.y);
}
__device__ __forceinline__ void split4(const float (&x)[4], uint32_t (&h)[4], uint32_t (&l)[4]) {
#pragma unroll
  for (int r = 0; r < 4; ++r) frag::split_tf32(x[r], h[r], l[r]);
}
__device__ __forceinline__ float4 pack_pair(float w0, float w1) {
  uint32_t h0, l0, h1, l1;
  frag::split_tf32(w0, h0, l0);
  frag::split_tf32(w1, h1, l1);
  return make_float4(__uint_as_float(h0), __uint_as_float(h1), __uint_as_float(l0), __uint_as_float(l1));
}

// A registers of m-tile mt from the warp's staging rows, units 8s .. 8s + 7 of the staged half (s = 0, 1).
__device__ __forceinline__ void stage_a(const float* stage, int mt, int s, int lane, float (&a)[4]) {
  const float2 r0 = *reinterpret_cast<const float2*>(stage + frag::stage_word(frag::a_elem(mt, lane, 0),
                                                                             frag::a_unit(s, lane, 0)));
  const float2 r1 = *reinterpret_cast<const float2*>(stage + frag::stage_word(frag::a_elem(mt, lane, 1),
                                                                             frag::a_unit(s, lane, 1)));
  a[0] = r0.x;  // a_unit(s, lane, 0)
  a[2] = r0.y;  // a_unit(s, lane, 2) = a_unit(s, lane, 0) + 1
  a[1] = r1.x;
  a[3] = r1.y;
}
// Lane `lane` stages units 4c .. 4c + 3 of its element (row `lane`).
__device__ __forceinline__ void stage_put(float* stage, int lane, int c, float x0, float x1, float x2, float x3) {
  *reinterpret_cast<float4*>(stage + frag::stage_word(lane, 4 * c)) = make_float4(x0, x1, x2, x3);
}
// Accumulators of every (m-tile, n-tile) of a layer set to a bias vector b[32] (c_out order).
__device__ __forceinline__ void init_bias(float (&d)[frag::kMTiles][kHid][4], const float* b, int lane) {
#pragma unroll
  for (int nt = 0; nt < kHid; ++nt)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float x = b[frag::c_out(nt, lane, r)];
      d[0][nt][r] = x;
      d[1][nt][r] = x;
    }
}
// One k-step of layer 1 for both m-tiles from the staging rows.
__device__ __forceinline__ void l1_staged(float (&d)[frag::kMTiles][kHid][4], const float* stage, int s, int ks,
                                          const float4* w1s, int lane) {
#pragma unroll
  for (int mt = 0; mt < frag::kMTiles; ++mt) {
    float a[4];
    uint32_t ah[4], al[4];
    stage_a(stage, mt, s, lane, a);
    split4(a, ah, al);
#pragma unroll
    for (int nt = 0; nt < kHid; ++nt) mma3(d[mt][nt], ah, al, w1s[frag::b_slot(ks, nt, lane, kHid)]);
  }
}
// Layers 2 and 3 from layer 1's pre-activations; returns (direction, magnitude) of element `lane` through `ob`.
__device__ __forceinline__ void mlp_tail(const float (&d1)[frag::kMTiles][kHid][4], const float4* w2s,
                                         const float4* w3s, const float* sb2, const float* sb3, float* ob, int lane,
                                         float& dir, float& mag) {
  float d2[frag::kMTiles][kHid][4];
  init_bias(d2, sb2, lane);
#pragma unroll
  for (int ks = 0; ks < kHid; ++ks)
#pragma unroll
    for (int mt = 0; mt < frag::kMTiles; ++mt) {
      float a[4];
      uint32_t ah[4], al[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = fmaxf(d1[mt][ks][frag::a_from_c(r)], 0.f);
      split4(a, ah, al);
#pragma unroll
      for (int nt = 0; nt < kHid; ++nt) mma3(d2[mt][nt], ah, al, w2s[frag::b_slot(ks, nt, lane, kHid)]);
    }
  float d3[frag::kMTiles][4];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int o = frag::c_out(0, lane, r);
    d3[0][r] = d3[1][r] = o < spec::kOutput ? sb3[o] : 0.f;
  }
#pragma unroll
  for (int ks = 0; ks < kHid; ++ks)
#pragma unroll
    for (int mt = 0; mt < frag::kMTiles; ++mt) {
      float a[4];
      uint32_t ah[4], al[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = fmaxf(d2[mt][ks][frag::a_from_c(r)], 0.f);
      split4(a, ah, al);
      mma3(d3[mt], ah, al, w3s[frag::b_slot(ks, 0, lane, 1)]);
    }
#pragma unroll
  for (int mt = 0; mt < frag::kMTiles; ++mt)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int o = frag::c_out(0, lane, r);
      if (o < spec::kOutput) ob[spec::kOutput * frag::c_elem(mt, lane, r) + o] = d3[mt][r];
    }
  __syncwarp();
  dir = ob[spec::kOutput * lane];
  mag = ob[spec::kOutput * lane + 1];
}

template <class P>
__device__ __forceinline__ void update_param(const Meta& M, const math::Hyper& H, int64_t e, float p, float dir,
                                             float mag) {
  st(static_cast<P*>(M.p), e, math::updated_param(p, math::step_of(H, dir, mag), M.lr, M.wdlr));
}

// Dynamic shared memory of apply_kernel, in float4: packed layers 1-3, per warp the per-column accumulator init
// (ta: one float4 per lane, m-tile and n-tile), the staging rows and the outputs, then the biases.
constexpr int kTaSlots = (frag::kMTiles * kHid + 1) * frag::kLanes;  // + the column's factors
constexpr int kStageSlots = frag::kLanes * frag::kStageWords / 4;
constexpr int kOutSlots = frag::kLanes * spec::kOutput / 4;
constexpr int kApplySmemSlots =
    2 * kW12Slots + kW3Slots + kWarps * (kTaSlots + kStageSlots + kOutSlots) + (kBiasWords + 3) / 4;
constexpr int kApplySmemBytes = kApplySmemSlots * 16;

// Per block: the packed layers 1-3 (split into TF32 hi/lo once; layer 1: the tensor's folded copy) and the biases in
// dynamic shared memory; per warp its ta, staging and output areas.
struct ApplySmem {
  const float4 *w1s, *w2s, *w3s;
  float4* ta;
  float *stage, *ob;
  const float *sb1, *sb2, *sb3;
};
__device__ __forceinline__ ApplySmem stage_weights(const Meta& M, const float* W2, const float* b2, const float* W3,
                                                   const float* b3) {
  extern __shared__ float4 smem4[];
  float4* w1s = smem4;
  float4* w2s = w1s + kW12Slots;
  float4* w3s = w2s + kW12Slots;
  float4* ta_all = w3s + kW3Slots;
  float* stage_all = reinterpret_cast<float*>(ta_all + kWarps * kTaSlots);
  float* out_all = stage_all + kWarps * kStageSlots * 4;
  float* sb = out_all + kWarps * kOutSlots * 4;
  // weights in fragment order, split into TF32 hi/lo once per block (layer 1: this tensor's folded copy)
  const float* W1u = M.w1f;
  for (int k = threadIdx.x; k < kPackedSlots; k += blockDim.x) {
    const int lane = k % frag::kLanes, nt = (k / frag::kLanes) % kHid, ks = k / (frag::kLanes * kHid);
    const int o = frag::b_out(nt, lane), u0 = frag::b_unit(ks, lane, 0), u1 = frag::b_unit(ks, lane, 1);
    w1s[frag::b_slot(ks, nt, lane, kHid)] = pack_pair(W1u[o * frag::kUnits + u0], W1u[o * frag::kUnits + u1]);
    w2s[frag::b_slot(ks, nt, lane, kHid)] = pack_pair(W2[o * kHidden + u0], W2[o * kHidden + u1]);
  }
  for (int k = threadIdx.x; k < kPackedSlots3; k += blockDim.x) {
    const int lane = k % frag::kLanes, ks = k / frag::kLanes, o = frag::b_out(0, lane);
    const int u0 = frag::b_unit(ks, lane, 0), u1 = frag::b_unit(ks, lane, 1);
    w3s[frag::b_slot(ks, 0, lane, 1)] =
        o < spec::kOutput ? pack_pair(W3[o * kHidden + u0], W3[o * kHidden + u1]) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  for (int k = threadIdx.x; k < kBiasWords; k += blockDim.x)
    sb[k] = k < kHidden ? W1u[kHidden * frag::kUnits + k] : (k < 2 * kHidden ? b2[k - kHidden] : b3[k - 2 * kHidden]);
  __syncthreads();
  const int warp = threadIdx.x >> 5;
  float* stage = stage_all + warp * kStageSlots * 4;
  float* ob = out_all + warp * kOutSlots * 4;
  const float* sb1 = sb;
  const float* sb2 = sb + kHidden;
  const float* sb3 = sb + 2 * kHidden;
  return {w1s, w2s, w3s, ta_all + warp * kTaSlots, stage, ob, sb1, sb2, sb3};
}

template <class P, class S>
__global__ void __launch_bounds__(kThreads, 2) apply_kernel(const Meta* metas, const mt::Chunk* chunks,
                                                            const float* finite, math::Hyper H, const float* W2,
                                                            const float* b2, const float* W3, const float* b3) {
  const mt::Chunk ch = chunks[blockIdx.x];
  if (finite[ch.tensor] == 0.f) return;
  const Meta& M = metas[ch.tensor];
  const ApplySmem Sm = stage_weights(M, W2, b2, W3, b3);
  const int lane = threadIdx.x & 31;
  const float4 *w1s = Sm.w1s, *w2s = Sm.w2s, *w3s = Sm.w3s;
  float *stage = Sm.stage, *ob = Sm.ob;
  const float *sb1 = Sm.sb1, *sb2 = Sm.sb2, *sb3 = Sm.sb3;
  S* Ms = static_cast<S*>(M.m);
  S* Vs = static_cast<S*>(M.v);
  // a 32-column strip × kRowsC rows per warp: units 16-23 (entry without a) are one per column, folded with the
  // bias into the accumulators' initial value (ta, shared memory) once per tile; units 24-31 (entry without b)
  // one per row, the same A for every element of the row
  const Strip T = strip_of<kRowsC>(M, ch.start);
  if (!T.any) return;  // no block barrier follows
  const float* va = values_a(M);
  const float* vb = values_b(M);
  float xa[6] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f}, fa[3] = {0.f, 0.f, 0.f};
  if (T.lane) {
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      fa[k] = va[T.ea * kRV + math::kAccFactor + k];
      xa[k] = va[T.ea * kRV + math::kAccValue + k];
      xa[3 + k] = va[T.ea * kRV + math::kAccRsqrt + k];
    }
  }
  stage_put(stage, lane, 0, xa[0], xa[1], xa[2], xa[3]);
  stage_put(stage, lane, 1, xa[4], xa[5], 0.f, 0.f);
  __syncwarp();
  float4* ta = Sm.ta;
  {
    float d[frag::kMTiles][kHid][4];
    init_bias(d, sb1, lane);
    l1_staged(d, stage, 0, frag::kUnitEntryA / frag::kTileK, w1s, lane);
#pragma unroll
    for (int mt = 0; mt < frag::kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < kHid; ++nt)
        ta[(mt * kHid + nt) * frag::kLanes + lane] = make_float4(d[mt][nt][0], d[mt][nt][1], d[mt][nt][2], d[mt][nt][3]);
    ta[frag::kMTiles * kHid * frag::kLanes + lane] = make_float4(fa[0], fa[1], fa[2], 0.f);
  }
  // this lane's units of the per-row k-step (entry without b): 24 + 2q, 25 + 2q
  const int ub0 = frag::a_unit(frag::kUnitEntryB / frag::kTileK, lane, 0);
  const int vb0 = frag::entry_value_of_unit(ub0), vb1 = frag::entry_value_of_unit(ub0 + 1);
  for (int r = 0; r < kRowsC; ++r) {
    if (r >= T.rows) break;
    const int64_t e = T.e0 + r * T.e_step, lb = T.line0 + r * T.line_step;
    const float* rb = vb + lb * kRV;
    float fb[3];
#pragma unroll
    for (int k = 0; k < 3; ++k) fb[k] = rb[math::kAccFactor + k];
    float x[kFeatures], m[3], v;
#pragma unroll
    for (int c = 0; c < kFeatures; ++c) x[c] = 0.f;
    if (T.lane) {
      const float4 f4 = ta[frag::kMTiles * kHid * frag::kLanes + lane];  // the column's factors
      const float fa_r[3] = {f4.x, f4.y, f4.z};
      tile_features<P, S>(M, H, e, fa_r, fb, x, m, v);
#pragma unroll
      for (int k = 0; k < 3; ++k) st(Ms, k * M.n + e, m[k]);
      st(Vs, e, v);
    }
    __syncwarp();  // the previous row's readers are done with the staging rows and the outputs
#pragma unroll
    for (int c = 0; c < 4; ++c)
      stage_put(stage, lane, c, x[frag::channel_of_unit(4 * c, false)], x[frag::channel_of_unit(4 * c + 1, false)],
                x[frag::channel_of_unit(4 * c + 2, false)], x[frag::channel_of_unit(4 * c + 3, false)]);
    __syncwarp();
    float d1[frag::kMTiles][kHid][4];
#pragma unroll
    for (int mt = 0; mt < frag::kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < kHid; ++nt) {
        const float4 t = ta[(mt * kHid + nt) * frag::kLanes + lane];
        d1[mt][nt][0] = t.x, d1[mt][nt][1] = t.y, d1[mt][nt][2] = t.z, d1[mt][nt][3] = t.w;
      }
    l1_staged(d1, stage, 0, 0, w1s, lane);
    l1_staged(d1, stage, 1, 1, w1s, lane);
    {  // the row's entry: the same A for every element
      const float y0 = vb0 < 0 ? 0.f : rb[vb0], y1 = vb1 < 0 ? 0.f : rb[vb1];
      const float a[4] = {y0, y0, y1, y1};  // a_unit(.., 0) = a_unit(.., 1) = ub0; registers 2, 3: ub0 + 1
      uint32_t ah[4], al[4];
      split4(a, ah, al);
#pragma unroll
      for (int mt = 0; mt < frag::kMTiles; ++mt)
#pragma unroll
        for (int nt = 0; nt < kHid; ++nt)
          mma3(d1[mt][nt], ah, al, w1s[frag::b_slot(frag::kUnitEntryB / frag::kTileK, nt, lane, kHid)]);
    }
    float dir, mag;
    mlp_tail(d1, w2s, w3s, sb2, sb3, ob, lane, dir, mag);
    if (T.lane) update_param<P>(M, H, e, x[spec::kChP], dir, mag);
  }
}

// Linear chunks (rank < 2, C > 1): 32 consecutive elements per warp and iteration, all 28 channels per element
// (a rare path: one block per SM's worth of registers, no spills).
template <class P, class S>
__global__ void __launch_bounds__(kThreads, 1) apply_linear_kernel(const Meta* metas, const mt::Chunk* chunks,
                                                            const float* finite, math::Hyper H, const float* W2,
                                                            const float* b2, const float* W3, const float* b3) {
  const mt::Chunk ch = chunks[blockIdx.x];
  if (finite[ch.tensor] == 0.f) return;
  const Meta& M = metas[ch.tensor];
  const ApplySmem Sm = stage_weights(M, W2, b2, W3, b3);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float4 *w1s = Sm.w1s, *w2s = Sm.w2s, *w3s = Sm.w3s;
  float *stage = Sm.stage, *ob = Sm.ob;
  const float *sb1 = Sm.sb1, *sb2 = Sm.sb2, *sb3 = Sm.sb3;
  S* Ms = static_cast<S*>(M.m);
  S* Vs = static_cast<S*>(M.v);
  // linear: 32 consecutive elements per warp and iteration, all 28 channels per element (two staged halves)
  const int64_t end = min(ch.start + kChunkC, M.n);
  const bool d0a = M.d0_is_a;
  for (int it = 0; it < kRowsC; ++it) {
    const int64_t e = ch.start + (static_cast<int64_t>(it) * kWarps + warp) * frag::kLanes + lane;
    if (__all_sync(kFull, e >= end)) break;
    const bool act = e < end;
    float x[kFeatures], m[3], v, u[3];
#pragma unroll
    for (int c = 0; c < kFeatures; ++c) x[c] = 0.f;
    if (act) {
      features<P, S>(M, H, e, x, m, v, u);
#pragma unroll
      for (int k = 0; k < 3; ++k) st(Ms, k * M.n + e, m[k]);
      st(Vs, e, v);
      if (!M.factored) {
        S* U = static_cast<S*>(M.acc_a);
#pragma unroll
        for (int k = 0; k < 3; ++k) st(U, k * M.n + e, u[k]);
      }
    }
    float d1[frag::kMTiles][kHid][4];
    init_bias(d1, sb1, lane);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      __syncwarp();
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float y[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int u_ = 16 * half + 4 * c + i;
          const int ca = frag::channel_of_unit(u_, true), cb = frag::channel_of_unit(u_, false);
          y[i] = d0a ? (ca < 0 ? 0.f : x[ca < 0 ? 0 : ca]) : (cb < 0 ? 0.f : x[cb < 0 ? 0 : cb]);
        }
        stage_put(stage, lane, c, y[0], y[1], y[2], y[3]);
      }
      __syncwarp();
      l1_staged(d1, stage, 0, 2 * half, w1s, lane);
      l1_staged(d1, stage, 1, 2 * half + 1, w1s, lane);
    }
    float dir, mag;
    mlp_tail(d1, w2s, w3s, sb2, sb3, ob, lane, dir, mag);
    if (act) update_param<P>(M, H, e, x[spec::kChP], dir, mag);
  }
}

__global__ void finish_kernel(const Meta* metas, const float* finite, int n) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  if (finite[t] != 0.f)
    *metas[t].step += 1.0f;
  else
    *metas[t].skips += 1.0f;
}

// ---- host side ------------------------------------------------------------------------------------------
// Calls f(P{}, S{}) with the parameter and state storage types of the call (uniform across its tensors).
template <class F>
void dispatch_types(int pdt, int sdt, F&& f) {
  auto with_state = [&](auto p) {
    if (sdt == kBF16)
      f(p, __nv_bfloat16{});
    else
      f(p, float{});
  };
  if (pdt == kF32)
    with_state(float{});
  else if (pdt == kBF16)
    with_state(__nv_bfloat16{});
  else
    with_state(__half{});
}

// The 2-d tiling of a factored tensor whose contiguous axis is a factored one (C == 1) and at least a strip wide.
void plan_tiles(std::vector<Meta>& metas) {
  for (Meta& M : metas) {
    M.tiled = M.factored && M.C == 1 && M.Db >= frag::kLanes && M.n > 0;
    int strips = 1;
    while (strips < kWarps && strips * frag::kLanes < M.Db) strips *= 2;
    M.strips = strips;
  }
}

// The work items of a pass: first every tiled tensor's 2-d tiles (strips · 32 columns × (kWarps / strips) · rows
// rows of one [Da, Db] plane; start = the tile's first element), then the other tensors' linear chunks of
// kWarps · 32 · rows elements. `tiles`: how many of the first kind.
std::vector<mt::Chunk> work_items(const std::vector<Meta>& metas, int rows, int64_t& tiles) {
  std::vector<mt::Chunk> out;
  for (size_t t = 0; t < metas.size(); ++t) {
    const Meta& M = metas[t];
    if (!M.tiled) continue;
    const int64_t tile_rows = int64_t{kWarps / M.strips} * rows, tile_cols = int64_t{frag::kLanes} * M.strips;
    for (int64_t x = 0; x < M.A; ++x)
      for (int64_t y = 0; y < M.B; ++y)
        for (int64_t i = 0; i < M.Da; i += tile_rows)
          for (int64_t j = 0; j < M.Db; j += tile_cols)
            out.push_back({((x * M.Da + i) * M.B + y) * M.Db + j, static_cast<int32_t>(t), 0});
  }
  tiles = static_cast<int64_t>(out.size());
  for (size_t t = 0; t < metas.size(); ++t)
    if (!metas[t].tiled)
      for (int64_t s = 0; s < metas[t].n; s += int64_t{kThreads} * rows) out.push_back({s, static_cast<int32_t>(t), 0});
  return out;
}

struct Call {
  std::vector<Meta> metas;  // the shared descriptor table (lopt_common.h: describe) + the CUDA scratch
  std::vector<int64_t> numels;
  math::Hyper H;
  int pdt = kF32, sdt = kF32;
  at::Tensor scratch;
};

// Checks the arguments of passes B and C and fills the per-tensor table (scratch included).
Call collect(const char* op, at::TensorList params, at::TensorList grads, at::TensorList momentum,
             at::TensorList second_moment, at::TensorList acc_a, at::TensorList acc_b, at::TensorList sums,
             const at::Tensor& finite, at::IntArrayRef dims, at::ArrayRef<double> hyper, at::IntArrayRef whole,
             at::TensorList row_acc_sums) {
  const size_t nt = params.size();
  TORCH_CHECK(nt > 0, op, ": no tensors");
  Call c;
  c.H = make_hyper(hyper, op);
  TORCH_CHECK(c.H.nominal == 0.f, op, ": the CUDA kernels have no nominal term (meta-weights with "
              "LOptConfig.nominal set); run them with backend='cpu' or backend='reference'");
  c.metas = describe<Meta>(op, at::kCUDA, params, grads, momentum, second_moment, acc_a, acc_b, sums, finite, dims,
                           whole, row_acc_sums);
  c.pdt = c.metas[0].pdt;
  c.sdt = c.metas[0].sdt;
  int64_t scratch = 0;
  std::vector<int64_t> offsets(nt);
  for (size_t i = 0; i < nt; ++i) {
    const Meta& M = c.metas[i];
    TORCH_CHECK(M.pdt == c.pdt && M.sdt == c.sdt, op, ": the CUDA kernels take one (param, state) dtype ",
                "combination per call; tensor ", i, " differs from tensor 0 (the Python backend groups them)");
    offsets[i] = scratch;
    scratch += (M.factored ? kRV * (M.nrow + M.ncol) + 3 * M.nmean : 0) + kHidden * frag::kUnits + kHidden;
    scratch = mt::align_up(scratch, 32);
  }
  c.scratch = at::empty({scratch}, params[0].options().dtype(at::kFloat));
  float* base = c.scratch.data_ptr<float>();
  for (size_t i = 0; i < nt; ++i) {
    Meta& M = c.metas[i];
    float* s = base + offsets[i];
    if (M.factored) {
      M.rowv = s;
      M.colv = s + kRV * M.nrow;
      M.mean = M.colv + kRV * M.ncol;
      s = M.mean + 3 * M.nmean;
    }
    M.w1f = s;
    c.numels.push_back(M.n);
  }
  plan_tiles(c.metas);
  return c;
}

}  // namespace

std::tuple<std::vector<at::Tensor>, at::Tensor> lopt_reduce_cuda(at::TensorList grads, at::IntArrayRef dims) {
  const char* op = "mulo::lopt_reduce";
  TORCH_CHECK(!grads.empty(), op, ": no tensors");
  const c10::cuda::CUDAGuard guard(grads[0].device());
  auto metas = layouts<Meta>(grads, dims, op);
  const size_t nt = grads.size();
  std::vector<at::Tensor> sums = check_reduce_args(op, at::kCUDA, grads, metas);
  const int gdt = dtype_code(grads[0].scalar_type());
  std::vector<int64_t> numels(nt);
  for (size_t i = 0; i < nt; ++i) {
    TORCH_CHECK(dtype_code(grads[i].scalar_type()) == gdt, op, ": grads must share one dtype; grads[", i, "] is ",
                grads[i].scalar_type(), ", grads[0] ", grads[0].scalar_type());
    metas[i].g = grads[i].data_ptr();
    metas[i].sums = sums[i].data_ptr<float>();
    numels[i] = metas[i].n;
  }
  at::Tensor finite = at::ones({static_cast<int64_t>(nt)}, grads[0].options().dtype(at::kFloat));
  plan_tiles(metas);
  int64_t tiles = 0;
  auto T = mt::upload(metas, work_items(metas, kRowsAB, tiles), grads[0].device());
  float* fin = finite.data_ptr<float>();
  auto run = [&](auto g) {
    using G = decltype(g);
    mt::launch(reduce_kernel<G>, tiles, kThreads, 0, T.metas, T.chunks, fin);
    mt::launch(reduce_linear_kernel<G>, T.num_chunks - tiles, kThreads, 0, T.metas, T.chunks + tiles, fin);
  };
  if (gdt == kBF16)
    run(__nv_bfloat16{});
  else if (gdt == kF16)
    run(__half{});
  else
    run(float{});
  return {sums, finite};
}

at::Tensor lopt_sumsq_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                           at::TensorList second_moment, at::TensorList acc_a, at::TensorList acc_b,
                           at::TensorList sums, const at::Tensor& finite, at::IntArrayRef dims,
                           at::ArrayRef<double> hyper, at::IntArrayRef whole, std::optional<at::TensorList> row_acc_sums) {
  const char* op = "mulo::lopt_sumsq";
  TORCH_CHECK(!params.empty(), op, ": no tensors");
  const c10::cuda::CUDAGuard guard(params[0].device());
  Call c = collect(op, params, grads, momentum, second_moment, acc_a, acc_b, sums, finite, dims, hyper, whole,
                   row_acc_sums.value_or(at::TensorList()));
  const int nt = static_cast<int>(params.size());
  at::Tensor out = at::zeros({nt, kFeatures}, params[0].options().dtype(at::kFloat));
  int64_t tiles = 0;
  auto T = mt::upload(c.metas, work_items(c.metas, kRowsAB, tiles), params[0].device());
  const float* fin = finite.data_ptr<float>();
  float* sq = out.data_ptr<float>();
  mt::launch(prepare_kernel, nt, kThreads, 0, T.metas, fin, c.H, c.sdt, sq, 0);
  dispatch_types(c.pdt, c.sdt, [&](auto p, auto s) {
    using P = decltype(p);
    using S = decltype(s);
    mt::launch(sumsq_kernel<P, S>, tiles, kThreads, 0, T.metas, T.chunks, fin, c.H, sq);
    mt::launch(sumsq_linear_kernel<P, S>, T.num_chunks - tiles, kThreads, 0, T.metas, T.chunks + tiles, fin, c.H, sq);
  });
  return out;
}

void lopt_apply_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                     at::TensorList second_moment, at::TensorList acc_a, at::TensorList acc_b, at::TensorList steps,
                     at::TensorList skips, at::TensorList sums, const at::Tensor& sumsq, const at::Tensor& finite,
                     at::TensorList mlp, at::ArrayRef<double> lrs, at::ArrayRef<double> wds, at::IntArrayRef dims,
                     at::ArrayRef<double> hyper, at::IntArrayRef weight_index, at::IntArrayRef whole,
                     std::optional<at::TensorList> row_acc_sums) {
  const char* op = "mulo::lopt_apply";
  for (const int64_t w : weight_index)
    TORCH_CHECK(w == 0, op, ": per-tensor meta-weight sets (weight_index) are implemented on the CPU only; "
                "on CUDA call once per set");
  TORCH_CHECK(!params.empty(), op, ": no tensors");
  const c10::cuda::CUDAGuard guard(params[0].device());
  Call c = collect(op, params, grads, momentum, second_moment, acc_a, acc_b, sums, finite, dims, hyper, whole,
                   row_acc_sums.value_or(at::TensorList()));
  std::vector<int64_t> set_of;
  const int64_t sets =
      describe_apply(op, c.metas, steps, skips, sumsq, mlp, lrs, wds, weight_index, params[0].device(), set_of);
  TORCH_CHECK(sets == 1, op, ": mlp holds ", sets, " meta-weight sets; the CUDA kernels take one per call");
  TORCH_CHECK(mlp[5].numel() == spec::kOutput, op, ": the CUDA kernels run the two-output network; this one has ",
              mlp[5].numel(), " outputs (the nominal term's head: use backend='cpu' or backend='reference')");
  int64_t tiles = 0;
  auto T = mt::upload(c.metas, work_items(c.metas, kRowsC, tiles), params[0].device());
  const float* fin = finite.data_ptr<float>();
  const int n = static_cast<int>(params.size());
  mt::launch(prepare_kernel, n, kThreads, 0, T.metas, fin, c.H, c.sdt, static_cast<float*>(nullptr), 1);
  mt::launch(fold_kernel, n, kThreads, 0, T.metas, fin, sumsq.data_ptr<float>(), mlp[0].data_ptr<float>(),
             mlp[1].data_ptr<float>(), c.H.time_clamp);
  const float *W2 = mlp[2].data_ptr<float>(), *b2 = mlp[3].data_ptr<float>(), *W3 = mlp[4].data_ptr<float>(),
              *b3 = mlp[5].data_ptr<float>();
  dispatch_types(c.pdt, c.sdt, [&](auto p, auto s) {
    using P = decltype(p);
    using S = decltype(s);
    for (auto kernel : {apply_kernel<P, S>, apply_linear_kernel<P, S>})
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kApplySmemBytes));
    mt::launch(apply_kernel<P, S>, tiles, kThreads, kApplySmemBytes, T.metas, T.chunks, fin, c.H, W2, b2, W3, b3);
    mt::launch(apply_linear_kernel<P, S>, T.num_chunks - tiles, kThreads, kApplySmemBytes, T.metas, T.chunks + tiles,
               fin, c.H, W2, b2, W3, b3);
  });
  mt::launch(finish_kernel, (n + kThreads - 1) / kThreads, kThreads, 0, T.metas, fin, n);
}

}  // namespace mulo
