// CUDA implementation of the mulo::lopt_* ops (docs/ALGORITHM.md §5), multi-tensor (multi_tensor.cuh): every
// pass is one launch over the chunks of all tensors of a call, on the current stream, with no host sync
// (the finite flags and step counters stay on the device). Storage dtypes of parameters (P) and state (S)
// are template parameters (the gradient's, the parameter's or float32, is a warp-uniform branch); math is fp32.
//
// The per-element math is lopt_math.h, instantiated here with `float`: the same functions the CPU kernels
// run with their SIMD vectors (and the CPU tests execute): moment and accumulator updates, the feature
// channels, the Adafactor entry values (new accumulators, rsqrt(x + 1e-8), factors), the normalization and
// time features folded into layer 1, the output head and the update with decoupled weight decay. The
// per-tensor descriptor table comes from the builder shared with the CPU (lopt_common.h: describe).
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
// Device-only code (covered by the compile checks: sm_80/sm_90 builds, registers and spills; it has not run
// on a GPU in this repository's tests unless one was lent): the storage loads/stores (bf16/fp16
// conversions), the element → accumulator-entry indexing per thread, the reductions (warp shuffles, shared
// memory, atomics: pass A's sums, the row means over d1, the sums of squares), the layer-1..3 MLP loops over
// shared-memory weights, the scratch layout ([entry][kAccValues], array of structures) and the launches.
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

#include <string>
#include <vector>

#include "lopt_common.h"
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
constexpr int64_t kChunkAB = 8192;  // elements per block in passes A and B
constexpr int64_t kChunkC = 1024;   // elements per block in pass C
constexpr int kThreads = 256;
constexpr unsigned kFull = 0xffffffffu;

// One tensor: the shared descriptor (lopt_desc.h, built by lopt_common.h) plus the CUDA scratch.
struct Meta : TensorDesc {
  float* rowv = nullptr;  // scratch [nrow][kRV]
  float* colv = nullptr;  // scratch [ncol][kRV]
  float* mean = nullptr;  // scratch [3][nmean] (nmean = nrow / d1_size)
  float* w1f = nullptr;   // scratch: folded layer 1 [32][28] then bias [32]
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

// Row (d0 reduced) and column (d1 reduced) accumulator index of element e of a factored tensor.
__device__ __forceinline__ void rowcol(const Meta& M, int64_t e, int64_t& row, int64_t& col) {
  M.entries(M.coords(e), row, col);
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
// The 28 channels of element e (docs/ALGORITHM.md §2) and the element's new state, through lopt_math.h.
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

// ---- pass B ---------------------------------------------------------------------------------------------
template <class P, class S>
__global__ void sumsq_kernel(const Meta* metas, const mt::Chunk* chunks, const float* finite, math::Hyper H,
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
    if (M.factored && c >= spec::kChRow && c < spec::kChFacM) return;  // O(rows + cols): added by prepare_kernel
    float s = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) s += red[c][w];
    atomicAdd(sumsq + ch.tensor * kFeatures + c, s);
  }
}

// ---- fold (per tensor) -------------------------------------------------------------------------------------
__global__ void fold_kernel(const Meta* metas, const float* finite, const float* sumsq, const float* W1,
                            const float* b1, float time_clamp) {
  const int t = blockIdx.x;
  if (finite[t] == 0.f) return;
  const Meta& M = metas[t];
  constexpr int In = kFeatures + kTimescales;
  const float n = static_cast<float>(M.whole_n);
  for (int k = threadIdx.x; k < kHidden * kFeatures; k += blockDim.x) {
    const int o = k / kFeatures, j = k % kFeatures;
    M.w1f[k] = W1[o * In + j] * math::norm_scale(sumsq[t * kFeatures + j], n);
  }
  if (threadIdx.x < kHidden) {
    float tf[kTimescales];
    math::time_features(*M.step, time_clamp, tf);
    for (int o = threadIdx.x; o < kHidden; o += blockDim.x)
      M.w1f[kHidden * kFeatures + o] = math::folded_bias(b1[o], W1 + o * In, tf);
  }
}

// ---- pass C --------------------------------------------------------------------------------------------------
constexpr int kSmem = kHidden * kFeatures + kHidden + kHidden * kHidden + kHidden + 2 * kHidden + 2;

template <class P, class S>
__global__ void __launch_bounds__(kThreads) apply_kernel(const Meta* metas, const mt::Chunk* chunks,
                                                         const float* finite, math::Hyper H, const float* W2,
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
    const float q = math::updated_param(x[spec::kChP], math::step_of(H, d, mag), M.lr, M.wdlr);
    st(static_cast<P*>(M.p), e, q);
    S* Ms = static_cast<S*>(M.m);
#pragma unroll
    for (int k = 0; k < 3; ++k) st(Ms, k * M.n + e, m[k]);
    st(static_cast<S*>(M.v), e, v);
    if (!M.factored) {
      S* U = static_cast<S*>(M.acc_a);
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
    scratch += (M.factored ? kRV * (M.nrow + M.ncol) + 3 * M.nmean : 0) + kHidden * kFeatures + kHidden;
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
  std::vector<int64_t> set_of;
  const int64_t sets =
      describe_apply(op, c.metas, steps, skips, sumsq, mlp, lrs, wds, weight_index, params[0].device(), set_of);
  TORCH_CHECK(sets == 1, op, ": mlp holds ", sets, " meta-weight sets; the CUDA kernels take one per call");
  auto T = mt::upload(c.metas, c.numels, kChunkC, params[0].device());
  const float* fin = finite.data_ptr<float>();
  const int n = static_cast<int>(params.size());
  mt::launch(prepare_kernel, n, kThreads, 0, T.metas, fin, c.H, c.sdt, static_cast<float*>(nullptr), 1);
  mt::launch(fold_kernel, n, kThreads, 0, T.metas, fin, sumsq.data_ptr<float>(), mlp[0].data_ptr<float>(),
             mlp[1].data_ptr<float>(), c.H.time_clamp);
  dispatch_types(c.pdt, c.sdt, [&](auto p, auto s) {
    mt::launch(apply_kernel<decltype(p), decltype(s)>, T.num_chunks, kThreads, 0, T.metas, T.chunks, fin,
               c.H, mlp[2].data_ptr<float>(), mlp[3].data_ptr<float>(), mlp[4].data_ptr<float>(),
               mlp[5].data_ptr<float>());
  });
  mt::launch(finish_kernel, (n + kThreads - 1) / kThreads, kThreads, 0, T.metas, fin, n);
}

}  // namespace mulo
