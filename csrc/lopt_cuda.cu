// CUDA implementation of the mulo::lopt_* ops (ALGORITHM.md §5), multi-tensor (multi_tensor.cuh): every
// pass is one launch over the chunks of all tensors of a call, on the current stream, with no host sync
// (the finite flags and step counters stay on the device). Storage dtypes of parameters (P) and state (S)
// are template parameters (the gradient's, the parameter's or float32, is a warp-uniform branch); math is fp32.
//
//   A  reduce_kernel   : s = g² + 1e-30 summed into row (d0 reduced) and column (d1 reduced) sums with
//                        warp-aggregated atomics; finite flag per tensor.
//   -  prepare_kernel  : one block per factored tensor: new accumulators r, c, their rsqrt(x + 1e-8), the
//                        row/column factors (O(rows + cols)); in pass B also the channel 13-24 sums of squares,
//                        in pass C also the write of the new row/col state.
//   B  sumsq_kernel    : the per-element channels' sums of squares (block reduction, one atomic per channel).
//   -  fold_kernel     : normalization scales into layer 1's columns, time features into its bias (per tensor).
//   C  apply_kernel    : features, the MLP (weights in shared memory), the update; then finish_kernel counts
//                        the step (or the skip) on the device.
//
// Why the MLP runs on CUDA cores (fp32 FMA) and not on tensor cores: the parity contract is 2e-4 relative
// to the float64 reference per step and 1e-3 over a 40-step trajectory; TF32/BF16 mma inputs (10/7-bit
// mantissas) miss that by an order of magnitude, and the exact alternative (3xTF32 split products) costs
// three mma per product. At 1,984 MACs per element the fp32 path is ≈4 µs per million elements of H100
// FP32 throughput per pass, within ~3x of the 72-byte memory floor; a 3xTF32 mma.sync path is the
// planned next step, behind the same op.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <string>
#include <vector>

#include "lopt_common.h"
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

constexpr int kRV = 9;             // per row/col entry: acc_k, rsqrt(acc_k + 1e-8), factor_k
constexpr int64_t kChunkAB = 8192;  // elements per block in passes A and B
constexpr int64_t kChunkC = 1024;   // elements per block in pass C
constexpr int kThreads = 256;
constexpr unsigned kFull = 0xffffffffu;

enum : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

struct Hyper {
  float bm[3], om[3], bv, ov, bf[3], of[3], exp_mult, step_mult;
};

struct Meta {
  void* p;
  const void* g;
  void* m;
  void* v;
  void* full;       // rank < 2: (3, n) accumulator
  void* row_state;  // rank >= 2: (3, nrow)
  void* col_state;  // rank >= 2: (3, ncol)
  float* sums;      // pass A output: nrow row sums then ncol column sums
  float* rowv;      // scratch [nrow][kRV]
  float* colv;      // scratch [ncol][kRV]
  float* mean;      // scratch [3][nmean] (nmean = nrow / d1_size)
  float* w1f;       // scratch: folded layer 1 [32][28] then bias [32]
  float* step;
  float* skips;
  int64_t n, A, Da, B, Db, C, nrow, ncol, nmean, d0_size, d1_size;
  int64_t whole_d0, whole_d1, whole_n;  // the whole tensor's (a shard's means and normalization use these)
  const float* row_acc_sum;             // [3][nmean] when d1 is split across ranks, else null
  int factored, d0_is_a;
  int gdt;  // gradient dtype: the parameter's or float32 (a warp-uniform branch, not a template)
  float lr, wdlr;
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

__device__ __forceinline__ float rsq(float x) { return 1.0f / sqrtf(x); }

// Row (d0 reduced) and column (d1 reduced) accumulator index of element e of a factored tensor.
__device__ __forceinline__ void rowcol(const Meta& M, int64_t e, int64_t& row, int64_t& col) {
  const int64_t z = e % M.C;
  int64_t r = e / M.C;
  const int64_t j = r % M.Db;
  r /= M.Db;
  const int64_t y = r % M.B;
  r /= M.B;
  const int64_t i = r % M.Da, x = r / M.Da;
  const int64_t without_a = ((x * M.B + y) * M.Db + j) * M.C + z;
  const int64_t without_b = ((x * M.Da + i) * M.B + y) * M.C + z;
  row = M.d0_is_a ? without_a : without_b;
  col = M.d0_is_a ? without_b : without_a;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// atomicAdd(base[idx], v) for a full warp; one atomic when every lane targets the same entry.
__device__ __forceinline__ void warp_atomic_add(float* base, long long idx, float v) {
  const long long idx0 = __shfl_sync(kFull, idx, 0);
  if (__all_sync(kFull, idx == idx0)) {
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) atomicAdd(base + idx0, v);
  } else {
    atomicAdd(base + idx, v);
  }
}

// ---- pass A ---------------------------------------------------------------------------------------------
template <class G>
__global__ void reduce_kernel(const Meta* metas, const mt::Chunk* chunks, float* finite) {
  const mt::Chunk ch = chunks[blockIdx.x];
  const Meta& M = metas[ch.tensor];
  const G* g = static_cast<const G*>(M.g);
  const int64_t end = min(ch.start + kChunkAB, M.n);
  bool bad = false;
  for (int64_t b = ch.start; b < end; b += blockDim.x) {
    const int64_t e = b + threadIdx.x;
    const bool act = e < end;
    if (__ballot_sync(kFull, act) == 0) continue;  // uniform per warp
    float s = 0.f;
    if (act) {
      const float gv = ld(g, e);
      s = gv * gv + spec::kEpsGradSq;
      bad |= !(s <= FLT_MAX);
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
__device__ __forceinline__ int64_t mean_index(const Meta& M, int64_t e) {
  const int64_t z = e % M.C;
  if (M.d0_is_a) return (e / (M.C * M.Db)) * M.C + z;
  const int64_t y = (e / M.C) % M.B, x = e / (M.C * M.B * M.Da);
  return (x * M.B + y) * M.C + z;
}

// One block per tensor. sumsq != nullptr: add the channel 13-24 sums of squares (pass B).
// write_state: store the new row/col accumulators (pass C).
__global__ void prepare_kernel(const Meta* metas, const float* finite, Hyper H, int sdt, float* sumsq,
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
    const float ms = M.sums[e] / d0;
    const int64_t mi = mean_index(M, e);
    for (int k = 0; k < 3; ++k) {
      const float r = H.bf[k] * ld_state(M.row_state, sdt, k * M.nrow + e) + H.of[k] * ms;
      M.rowv[e * kRV + k] = r;
      atomicAdd(M.mean + k * nmean + mi, r);
    }
  }
  __syncthreads();
  float part[12] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int64_t e = threadIdx.x; e < M.nrow; e += blockDim.x) {
    const int64_t mi = mean_index(M, e);
    for (int k = 0; k < 3; ++k) {
      const float r = M.rowv[e * kRV + k];
      const float rm = (M.row_acc_sum ? M.row_acc_sum[k * nmean + mi] : M.mean[k * nmean + mi]) / d1;
      const float rs = rsq(r + spec::kEpsAccFeature);
      M.rowv[e * kRV + 3 + k] = rs;
      M.rowv[e * kRV + 6 + k] = rsq(fmaxf(r / (rm + spec::kEpsSafeRsqrt), spec::kEpsSafeRsqrt));
      part[k] += r * r * l0;           // channel 13 + k
      part[6 + k] += rs * rs * l0;     // channel 19 + k
      if (write_state) st_state(M.row_state, sdt, k * M.nrow + e, r);
    }
  }
  for (int64_t e = threadIdx.x; e < M.ncol; e += blockDim.x) {
    const float ms = M.sums[M.nrow + e] / d1;
    for (int k = 0; k < 3; ++k) {
      const float c = H.bf[k] * ld_state(M.col_state, sdt, k * M.ncol + e) + H.of[k] * ms;
      const float cs = rsq(c + spec::kEpsAccFeature);
      M.colv[e * kRV + k] = c;
      M.colv[e * kRV + 3 + k] = cs;
      M.colv[e * kRV + 6 + k] = rsq(fmaxf(c, spec::kEpsSafeRsqrt));
      part[3 + k] += c * c * l1;   // channel 16 + k
      part[9 + k] += cs * cs * l1;  // channel 22 + k
      if (write_state) st_state(M.col_state, sdt, k * M.ncol + e, c);
    }
  }
  if (sumsq != nullptr) {
    for (int q = 0; q < 12; ++q) {
      const float v = warp_sum(part[q]);
      if ((threadIdx.x & 31) == 0) atomicAdd(sumsq + t * kFeatures + spec::kChRow + q, v);  // 13-24
    }
  }
}

// ---- features ----------------------------------------------------------------------------------------------
// The 28 channels of element e (ALGORITHM.md §2) and the element's new state.
template <class P, class S>
__device__ __forceinline__ void features(const Meta& M, const Hyper& H, int64_t e, float (&x)[kFeatures],
                                         float (&m)[3], float& v, float (&u)[3]) {
  const float g = ld_grad(M.g, M.gdt, e);
  const float p = ld(static_cast<const P*>(M.p), e);
  const S* Ms = static_cast<const S*>(M.m);
  x[spec::kChG] = g;
  x[spec::kChP] = p;
  v = H.bv * ld(static_cast<const S*>(M.v), e) + H.ov * g * g;
  x[spec::kChV] = v;
  const float rv = rsq(v + spec::kEpsRms);
  x[spec::kChRsqrtV] = rv;
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    m[k] = H.bm[k] * ld(Ms, k * M.n + e) + H.om[k] * g;
    x[spec::kChM + k] = m[k];
    x[spec::kChMRsqrtV + k] = m[k] * rv;
  }
  if (M.factored) {
    int64_t row, col;
    rowcol(M, e, row, col);
    const float* rw = M.rowv + row * kRV;
    const float* cl = M.colv + col * kRV;
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      const float prod = rw[6 + k] * cl[6 + k];
      x[spec::kChFacG + k] = g * prod;
      x[spec::kChRow + k] = rw[k];
      x[spec::kChCol + k] = cl[k];
      x[spec::kChRsqrtRow + k] = rw[3 + k];
      x[spec::kChRsqrtCol + k] = cl[3 + k];
      x[spec::kChFacM + k] = m[k] * prod;
    }
  } else {
    const S* U = static_cast<const S*>(M.full);
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      u[k] = H.bf[k] * ld(U, k * M.n + e) + H.of[k] * (g * g + spec::kEpsGradSq);
      x[spec::kChFacG + k] = g * rsq(fmaxf(u[k] + spec::kEpsSafeRsqrt, spec::kEpsSafeRsqrt));
      x[spec::kChRow + k] = u[k];
      x[spec::kChCol + k] = u[k];
      const float ru = rsq(u[k] + spec::kEpsAccFeature);
      x[spec::kChRsqrtRow + k] = ru;
      x[spec::kChRsqrtCol + k] = ru;
      x[spec::kChFacM + k] = m[k] * rsq(u[k] + spec::kEpsRms);
    }
  }
}

// ---- pass B ---------------------------------------------------------------------------------------------
template <class P, class S>
__global__ void sumsq_kernel(const Meta* metas, const mt::Chunk* chunks, const float* finite, Hyper H,
                             float* sumsq) {
  const mt::Chunk ch = chunks[blockIdx.x];
  if (finite[ch.tensor] == 0.f) return;
  const Meta& M = metas[ch.tensor];
  const int64_t end = min(ch.start + kChunkAB, M.n);
  float acc[kFeatures];
#pragma unroll
  for (int c = 0; c < kFeatures; ++c) acc[c] = 0.f;
  for (int64_t e = ch.start + threadIdx.x; e < end; e += blockDim.x) {
    float x[kFeatures], m[3], v, u[3];
    features<P, S>(M, H, e, x, m, v, u);
#pragma unroll
    for (int c = 0; c < kFeatures; ++c) acc[c] += x[c] * x[c];
  }
  __shared__ float red[kFeatures][kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int c = 0; c < kFeatures; ++c) {
    const float s = warp_sum(acc[c]);
    if (lane == 0) red[c][warp] = s;
  }
  __syncthreads();
  if (threadIdx.x < kFeatures) {
    const int c = threadIdx.x;
    if (M.factored && c >= 13 && c < 25) return;  // O(rows + cols): added by prepare_kernel
    float s = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) s += red[c][w];
    atomicAdd(sumsq + ch.tensor * kFeatures + c, s);
  }
}

// ---- fold (per tensor) -------------------------------------------------------------------------------------
__global__ void fold_kernel(const Meta* metas, const float* finite, const float* sumsq, const float* W1,
                            const float* b1) {
  const int t = blockIdx.x;
  if (finite[t] == 0.f) return;
  const Meta& M = metas[t];
  constexpr int In = kFeatures + kTimescales;
  const float step = *M.step;
  const float n = static_cast<float>(M.whole_n);
  for (int k = threadIdx.x; k < kHidden * kFeatures; k += blockDim.x) {
    const int o = k / kFeatures, j = k % kFeatures;
    M.w1f[k] = W1[o * In + j] * rsq(spec::kEpsNormalize + sumsq[t * kFeatures + j] / n);
  }
  for (int o = threadIdx.x; o < kHidden; o += blockDim.x) {
    float acc = b1[o];
    for (int q = 0; q < kTimescales; ++q) acc += W1[o * In + kFeatures + q] * tanhf(step / spec::timescale(q) - 1.0f);
    M.w1f[kHidden * kFeatures + o] = acc;
  }
}

// ---- pass C --------------------------------------------------------------------------------------------------
constexpr int kSmem = kHidden * kFeatures + kHidden + kHidden * kHidden + kHidden + 2 * kHidden + 2;

template <class P, class S>
__global__ void __launch_bounds__(kThreads) apply_kernel(const Meta* metas, const mt::Chunk* chunks,
                                                         const float* finite, Hyper H, const float* W2,
                                                         const float* b2, const float* W3, const float* b3) {
  const mt::Chunk ch = chunks[blockIdx.x];
  if (finite[ch.tensor] == 0.f) return;
  const Meta& M = metas[ch.tensor];
  __shared__ float w[kSmem];
  float* sw1 = w;
  float* sb1 = sw1 + kHidden * kFeatures;
  float* sw2 = sb1 + kHidden;
  float* sb2 = sw2 + kHidden * kHidden;
  float* sw3 = sb2 + kHidden;
  float* sb3 = sw3 + 2 * kHidden;
  for (int k = threadIdx.x; k < kHidden * kFeatures + kHidden; k += blockDim.x) sw1[k] = M.w1f[k];
  for (int k = threadIdx.x; k < kHidden * kHidden; k += blockDim.x) sw2[k] = W2[k];
  for (int k = threadIdx.x; k < kHidden; k += blockDim.x) sb2[k] = b2[k];
  for (int k = threadIdx.x; k < 2 * kHidden; k += blockDim.x) sw3[k] = W3[k];
  if (threadIdx.x < 2) sb3[threadIdx.x] = b3[threadIdx.x];
  __syncthreads();
  const int64_t end = min(ch.start + kChunkC, M.n);
  for (int64_t e = ch.start + threadIdx.x; e < end; e += blockDim.x) {
    float x[kFeatures], m[3], v, u[3];
    features<P, S>(M, H, e, x, m, v, u);
    float h1[kHidden];
#pragma unroll
    for (int o = 0; o < kHidden; ++o) {
      float a = sb1[o];
#pragma unroll
      for (int j = 0; j < kFeatures; ++j) a = fmaf(sw1[o * kFeatures + j], x[j], a);
      h1[o] = fmaxf(a, 0.f);
    }
    float d = sb3[0], mag = sb3[1];
#pragma unroll 4
    for (int o = 0; o < kHidden; ++o) {
      float a = sb2[o];
#pragma unroll
      for (int j = 0; j < kHidden; ++j) a = fmaf(sw2[o * kHidden + j], h1[j], a);
      a = fmaxf(a, 0.f);
      d = fmaf(sw3[o], a, d);
      mag = fmaf(sw3[kHidden + o], a, mag);
    }
    const float stepv = d * expf(mag * H.exp_mult) * H.step_mult;
    float q = x[spec::kChP] - M.lr * stepv;
    q = q - M.wdlr * q;
    st(static_cast<P*>(M.p), e, q);
    S* Ms = static_cast<S*>(M.m);
#pragma unroll
    for (int k = 0; k < 3; ++k) st(Ms, k * M.n + e, m[k]);
    st(static_cast<S*>(M.v), e, v);
    if (!M.factored) {
      S* U = static_cast<S*>(M.full);
#pragma unroll
      for (int k = 0; k < 3; ++k) st(U, k * M.n + e, u[k]);
    }
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
int code(at::ScalarType t) {
  return t == at::kBFloat16 ? kBF16 : (t == at::kHalf ? kF16 : kF32);
}

Hyper make_hyper(at::ArrayRef<double> h, const char* op) {
  TORCH_CHECK(h.size() == kNumHyper, op, ": hyper needs ", kNumHyper, " values, got ", h.size());
  Hyper H;
  for (int k = 0; k < 3; ++k) {
    H.bm[k] = static_cast<float>(h[k]);
    H.om[k] = 1.0f - H.bm[k];
    H.bf[k] = static_cast<float>(h[4 + k]);
    H.of[k] = 1.0f - H.bf[k];
  }
  H.bv = static_cast<float>(h[3]);
  H.ov = static_cast<float>(1.0 - h[3]);
  H.exp_mult = static_cast<float>(h[7]);
  H.step_mult = static_cast<float>(h[8]);
  return H;
}

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

struct Call {
  std::vector<Meta> metas;
  std::vector<Layout> L;
  std::vector<int64_t> numels;
  Hyper H;
  int pdt = kF32, sdt = kF32;
  at::Tensor scratch;
};

std::vector<Layout> layouts(at::TensorList ts, at::IntArrayRef dims, const char* op) {
  TORCH_CHECK(dims.size() == 2 * ts.size(), op, ": dims needs 2 entries (d1, d0) per tensor");
  std::vector<Layout> out;
  for (size_t i = 0; i < ts.size(); ++i) out.push_back(make_layout(ts[i].sizes(), dims[2 * i], dims[2 * i + 1], op, i));
  return out;
}

// Checks the arguments of passes B and C and fills the per-tensor table (scratch included).
Call collect(const char* op, at::TensorList params, at::TensorList grads, at::TensorList momentum,
             at::TensorList second_moment, at::TensorList acc_a, at::TensorList acc_b, at::TensorList sums,
             const at::Tensor& finite, at::IntArrayRef dims, at::ArrayRef<double> hyper, at::IntArrayRef whole,
             at::TensorList row_acc_sums) {
  const size_t nt = params.size();
  TORCH_CHECK(nt > 0, op, ": no tensors");
  for (auto [what, list] : {std::pair<const char*, at::TensorList>{"grads", grads}, {"momentum", momentum},
                            {"second_moment", second_moment}, {"acc_a", acc_a}, {"acc_b", acc_b}, {"sums", sums}})
    check_same_length(nt, list.size(), op, what);
  TORCH_CHECK(finite.is_cuda() && finite.scalar_type() == at::kFloat && finite.numel() == static_cast<int64_t>(nt),
              op, ": finite must be the float32 CUDA flags from lopt_reduce");
  Call c;
  c.H = make_hyper(hyper, op);
  c.L = layouts(params, dims, op);
  apply_geometry(c.L, whole, row_acc_sums, op);
  for (size_t i = 0; i < row_acc_sums.size(); ++i)
    TORCH_CHECK(row_acc_sums[i].numel() == 0 || row_acc_sums[i].device() == params[0].device(), op,
                ": row_acc_sums[", i, "] must be on ", params[0].device());
  c.pdt = code(params[0].scalar_type());
  c.sdt = code(momentum[0].scalar_type());
  int64_t scratch = 0;
  std::vector<int64_t> offsets(nt);
  for (size_t i = 0; i < nt; ++i) {
    const Layout& L = c.L[i];
    const auto& p = params[i];
    TORCH_CHECK(p.is_cuda() && p.device() == params[0].device(), op, ": params[", i,
                "] must be on the CUDA device of params[0]");
    check_param_grad(p, grads[i], op, i);
    check_state(momentum[i], p, 3 * L.n, op, "momentum", i);
    check_state(second_moment[i], p, L.n, op, "second_moment", i);
    check_state(acc_a[i], p, 3 * (L.factored ? L.nrow : L.n), op, "acc_a", i);
    if (L.factored) check_state(acc_b[i], p, 3 * L.ncol, op, "acc_b", i);
    TORCH_CHECK(code(p.scalar_type()) == c.pdt &&
                    code(momentum[i].scalar_type()) == c.sdt && code(second_moment[i].scalar_type()) == c.sdt &&
                    code(acc_a[i].scalar_type()) == c.sdt && (!L.factored || code(acc_b[i].scalar_type()) == c.sdt),
                op, ": the CUDA kernels take one (param, state) dtype combination per call; tensor ", i,
                " differs from tensor 0 (the Python backend groups them)");
    TORCH_CHECK(sums[i].scalar_type() == at::kFloat && sums[i].is_cuda() &&
                    sums[i].numel() == (L.factored ? L.nrow + L.ncol : 0),
                op, ": sums[", i, "] must be the float32 output of lopt_reduce for this tensor");
    offsets[i] = scratch;
    const int64_t nmean = L.factored ? L.nmean : 0;
    scratch += (L.factored ? kRV * (L.nrow + L.ncol) + 3 * nmean : 0) + kHidden * kFeatures + kHidden;
    scratch = mt::align_up(scratch, 32);
  }
  c.scratch = at::empty({scratch}, params[0].options().dtype(at::kFloat));
  float* base = c.scratch.data_ptr<float>();
  for (size_t i = 0; i < nt; ++i) {
    const Layout& L = c.L[i];
    Meta M{};
    M.p = params[i].data_ptr();
    M.g = grads[i].data_ptr();
    M.m = momentum[i].data_ptr();
    M.v = second_moment[i].data_ptr();
    M.full = L.factored ? nullptr : acc_a[i].data_ptr();
    M.row_state = L.factored ? acc_a[i].data_ptr() : nullptr;
    M.col_state = L.factored ? acc_b[i].data_ptr() : nullptr;
    M.sums = sums[i].data_ptr<float>();
    float* s = base + offsets[i];
    if (L.factored) {
      M.rowv = s;
      M.colv = s + kRV * L.nrow;
      M.mean = M.colv + kRV * L.ncol;
      s = M.mean + 3 * L.nmean;
    }
    M.w1f = s;
    M.n = L.n, M.A = L.A, M.Da = L.Da, M.B = L.B, M.Db = L.Db, M.C = L.C;
    M.nrow = L.nrow, M.ncol = L.ncol, M.nmean = L.nmean, M.d0_size = L.d0_size, M.d1_size = L.d1_size;
    M.whole_d0 = L.whole_d0, M.whole_d1 = L.whole_d1, M.whole_n = L.whole_n, M.row_acc_sum = L.row_acc_sum;
    M.factored = L.factored, M.d0_is_a = L.d0_is_a;
    M.gdt = code(grads[i].scalar_type());
    c.metas.push_back(M);
    c.numels.push_back(L.n);
  }
  return c;
}

}  // namespace

std::tuple<std::vector<at::Tensor>, at::Tensor> lopt_reduce_cuda(at::TensorList grads, at::IntArrayRef dims) {
  const char* op = "mulo::lopt_reduce";
  TORCH_CHECK(!grads.empty(), op, ": no tensors");
  const c10::cuda::CUDAGuard guard(grads[0].device());
  const auto L = layouts(grads, dims, op);
  const size_t nt = grads.size();
  const int gdt = code(grads[0].scalar_type());
  auto fopts = grads[0].options().dtype(at::kFloat);
  std::vector<at::Tensor> sums;
  std::vector<Meta> metas(nt);
  std::vector<int64_t> numels(nt);
  for (size_t i = 0; i < nt; ++i) {
    const auto& g = grads[i];
    TORCH_CHECK(g.is_cuda() && g.device() == grads[0].device(), op, ": grads[", i, "] must be on ", grads[0].device());
    TORCH_CHECK(g.is_contiguous(), op, ": grads[", i, "] must be contiguous (call .contiguous() on it)");
    TORCH_CHECK(code(g.scalar_type()) == gdt && (g.scalar_type() == at::kFloat || g.scalar_type() == at::kBFloat16 ||
                                                 g.scalar_type() == at::kHalf),
                op, ": grads must share one dtype among float32/bfloat16/float16; grads[", i, "] is ", g.scalar_type());
    sums.push_back(at::zeros({L[i].factored ? L[i].nrow + L[i].ncol : 0}, fopts));
    Meta& M = metas[i];
    M.g = g.data_ptr();
    M.sums = sums.back().data_ptr<float>();
    M.n = L[i].n, M.A = L[i].A, M.Da = L[i].Da, M.B = L[i].B, M.Db = L[i].Db, M.C = L[i].C;
    M.nrow = L[i].nrow, M.ncol = L[i].ncol, M.factored = L[i].factored, M.d0_is_a = L[i].d0_is_a;
    numels[i] = L[i].n;
  }
  at::Tensor finite = at::ones({static_cast<int64_t>(nt)}, fopts);
  auto T = mt::upload(metas, numels, kChunkAB, grads[0].device());
  float* fin = finite.data_ptr<float>();
  if (gdt == kBF16)
    mt::launch(reduce_kernel<__nv_bfloat16>, T.num_chunks, kThreads, 0, T.metas, T.chunks, fin);
  else if (gdt == kF16)
    mt::launch(reduce_kernel<__half>, T.num_chunks, kThreads, 0, T.metas, T.chunks, fin);
  else
    mt::launch(reduce_kernel<float>, T.num_chunks, kThreads, 0, T.metas, T.chunks, fin);
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
  auto T = mt::upload(c.metas, c.numels, kChunkAB, params[0].device());
  const float* fin = finite.data_ptr<float>();
  float* sq = out.data_ptr<float>();
  mt::launch(prepare_kernel, nt, kThreads, 0, T.metas, fin, c.H, c.sdt, sq, 0);
  dispatch_types(c.pdt, c.sdt, [&](auto p, auto s) {
    mt::launch(sumsq_kernel<decltype(p), decltype(s)>, T.num_chunks, kThreads, 0, T.metas, T.chunks, fin,
               c.H, sq);
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
  const size_t nt = params.size();
  check_same_length(nt, steps.size(), op, "steps");
  check_same_length(nt, skips.size(), op, "skips");
  check_same_length(nt, lrs.size(), op, "lrs");
  check_same_length(nt, wds.size(), op, "weight_decays");
  TORCH_CHECK(sumsq.is_cuda() && sumsq.scalar_type() == at::kFloat && sumsq.numel() == static_cast<int64_t>(nt) * kFeatures,
              op, ": sumsq must be the (n_tensors, 28) float32 output of lopt_sumsq");
  TORCH_CHECK(mlp.size() == 6, op, ": mlp must be (W1, b1, W2, b2, W3, b3)");
  const int64_t numel[6] = {kHidden * (kFeatures + kTimescales), kHidden, kHidden * kHidden, kHidden, 2 * kHidden, 2};
  for (int k = 0; k < 6; ++k)
    TORCH_CHECK(mlp[k].is_cuda() && mlp[k].scalar_type() == at::kFloat && mlp[k].is_contiguous() &&
                    mlp[k].numel() == numel[k],
                op, ": mlp[", k, "] must be a contiguous float32 CUDA tensor of ", numel[k], " elements");
  for (size_t i = 0; i < nt; ++i) {
    TORCH_CHECK(steps[i].is_cuda() && steps[i].scalar_type() == at::kFloat && steps[i].numel() == 1 &&
                    skips[i].is_cuda() && skips[i].scalar_type() == at::kFloat && skips[i].numel() == 1,
                op, ": steps/skips[", i, "] must be float32 scalars on the parameters' device");
    c.metas[i].step = steps[i].data_ptr<float>();
    c.metas[i].skips = skips[i].data_ptr<float>();
    c.metas[i].lr = static_cast<float>(lrs[i]);
    c.metas[i].wdlr = static_cast<float>(wds[i] * lrs[i]);
  }
  auto T = mt::upload(c.metas, c.numels, kChunkC, params[0].device());
  const float* fin = finite.data_ptr<float>();
  const int n = static_cast<int>(nt);
  mt::launch(prepare_kernel, n, kThreads, 0, T.metas, fin, c.H, c.sdt, static_cast<float*>(nullptr), 1);
  mt::launch(fold_kernel, n, kThreads, 0, T.metas, fin, sumsq.data_ptr<float>(), mlp[0].data_ptr<float>(),
             mlp[1].data_ptr<float>());
  dispatch_types(c.pdt, c.sdt, [&](auto p, auto s) {
    mt::launch(apply_kernel<decltype(p), decltype(s)>, T.num_chunks, kThreads, 0, T.metas, T.chunks, fin,
               c.H, mlp[2].data_ptr<float>(), mlp[3].data_ptr<float>(), mlp[4].data_ptr<float>(),
               mlp[5].data_ptr<float>());
  });
  mt::launch(finish_kernel, (n + kThreads - 1) / kThreads, kThreads, 0, T.metas, fin, n);
}

}  // namespace mulo
