// CPU implementation of the mulo::lopt_* ops (docs/ALGORITHM.md §5): pass A (row/column sums of s and the
// finite flag), pass B (the 28 sums of squares), pass C (apply). OpenMP runs over chunks of all tensors at
// once; the SIMD kernels of passes B and C are picked at run time (cpuid) among lopt_cpu_{avx512,avx2,base}.
// Per tensor and per pass, the O(rows + cols) work is done here: the new Adafactor accumulators and their
// factors, the channels 13-24 sums of squares, the normalization scales folded into layer 1's columns and
// the time features folded into its bias.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "lopt_common.h"
#include "lopt_cpu.h"
#include "ops.h"

namespace mulo {
namespace {

using mulo_cpu::Kernels;

// ---- instruction-set dispatch ----------------------------------------------------------------------
bool cpu_has(const std::string& isa) {
  if (isa == "base") return true;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx2") return avx2 && mulo_cpu::kernels_avx2().apply != nullptr;
  if (isa == "avx512")
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           mulo_cpu::kernels_avx512().apply != nullptr;
#endif
  return false;
}

Kernels kernels_named(const std::string& isa) {
  if (isa == "avx512") return mulo_cpu::kernels_avx512();
  if (isa == "avx2") return mulo_cpu::kernels_avx2();
  return mulo_cpu::kernels_base();
}

std::string best_isa() {
  const char* env = std::getenv("MULO_CPU_ISA");
  if (env != nullptr && *env != '\0') {
    const std::string want(env);
    TORCH_CHECK(want == "avx512" || want == "avx2" || want == "base",
                "MULO_CPU_ISA must be avx512, avx2 or base, got '", want, "'");
    TORCH_CHECK(cpu_has(want), "MULO_CPU_ISA=", want, " but this CPU (or this build) cannot run it");
    return want;
  }
  for (const char* isa : {"avx512", "avx2"})
    if (cpu_has(isa)) return isa;
  return "base";
}

std::mutex isa_mutex;
std::string& isa_name() {
  static std::string name = best_isa();
  return name;
}
Kernels current_kernels() {
  std::lock_guard<std::mutex> lock(isa_mutex);
  return kernels_named(isa_name());
}

// ---- small helpers ---------------------------------------------------------------------------------------
template <class T>
inline float load_f(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

// Accumulator state values by storage dtype (float32 or bfloat16; describe checked it).
float read_state(const void* p, int sdt, int64_t i) {
  if (sdt == kBF16) return static_cast<float>(static_cast<const c10::BFloat16*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

void write_state(void* p, int sdt, int64_t i, float x) {
  if (sdt == kBF16)
    static_cast<c10::BFloat16*>(p)[i] = c10::BFloat16(x);
  else
    static_cast<float*>(p)[i] = x;
}

int num_threads() { return std::max(1, at::get_num_threads()); }

// ---- pass A -----------------------------------------------------------------------------------------------
template <class GT>
void reduce_one(const GT* g, const Layout& L, float* out, float* finite, int threads, std::vector<double>& buf) {
  const int64_t n = L.n;
  // memory-bound and ~0.4 ns per element on one core: threads only pay off for very large tensors (and a
  // parallel region costs a scheduling quantum whenever a core is shared)
  const int nth = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n >> 22)));
  if (!L.factored) {
    int bad = 0;
#pragma omp parallel for if (nth > 1) num_threads(nth) reduction(| : bad) schedule(static)
    for (int64_t e = 0; e < n; ++e) {
      bad |= !math::finite_s(math::grad_sq(load_f(g, e)));
    }
    *finite = bad ? 0.f : 1.f;
    return;
  }
  const int64_t width = L.nrow + L.ncol;
  buf.assign(static_cast<size_t>(nth) * width, 0.0);
  const int64_t lines = L.A * L.Da * L.B, len = L.Db * L.C;
  int bad = 0;
#pragma omp parallel if (nth > 1) num_threads(nth) reduction(| : bad)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int tid = 0, nt = 1;
#endif
    double* row = buf.data() + tid * width;
    double* col = row + L.nrow;
    double* on_a = L.d0_is_a ? row : col;  // accumulator indexed without axis a
    double* on_b = L.d0_is_a ? col : row;  // accumulator indexed without axis b
    (void)nt;
    // dynamic: on a shared machine a descheduled thread must not hold the others at the barrier
#pragma omp for schedule(dynamic, 16)
    for (int64_t l = 0; l < lines; ++l) {
      const int64_t y = l % L.B, i = (l / L.B) % L.Da, x = l / (L.B * L.Da);
      const GT* gl = g + l * len;
      double* pa = on_a + (x * L.B + y) * L.Db * L.C;
      double* pb = on_b + ((x * L.Da + i) * L.B + y) * L.C;
      if (L.C == 1) {
        // the index without axis b is constant along the line: 16 float lanes, flushed to double
        constexpr int W = 16;
        float part[W] = {};
        int flags[W] = {};
        int64_t j = 0;
        for (; j + W <= L.Db; j += W) {
          for (int q = 0; q < W; ++q) {
            const float s = math::grad_sq(load_f(gl, j + q));
            flags[q] |= !math::finite_s(s);
            pa[j + q] += s;
            part[q] += s;
          }
          if ((j / W) % 256 == 255) {
            double t = 0.0;
            for (int q = 0; q < W; ++q) t += part[q], part[q] = 0.f;
            pb[0] += t;
          }
        }
        double t = 0.0;
        for (int q = 0; q < W; ++q) t += part[q], bad |= flags[q];
        for (; j < L.Db; ++j) {
          const float s = math::grad_sq(load_f(gl, j));
          bad |= !math::finite_s(s);
          pa[j] += s;
          t += s;
        }
        pb[0] += t;
        continue;
      }
      for (int64_t j = 0; j < L.Db; ++j) {
        double* __restrict paj = pa + j * L.C;
        const GT* glj = gl + j * L.C;
        for (int64_t z = 0; z < L.C; ++z) {
          const float s = math::grad_sq(load_f(glj, z));
          bad |= !math::finite_s(s);
          paj[z] += s;
          pb[z] += s;
        }
      }
    }
  }
  at::parallel_for(0, width, 4096, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      double s = 0.0;
      for (int t = 0; t < nth; ++t) s += buf[static_cast<size_t>(t) * width + k];
      out[k] = static_cast<float>(s);
    }
  });
  *finite = bad ? 0.f : 1.f;
}

// Pass A of one tensor whose gradient has storage dtype `gdt`.
void reduce_typed(const void* g, int gdt, const Layout& L, float* out, float* finite, int threads,
                  std::vector<double>& buf) {
  if (gdt == kBF16)
    reduce_one(static_cast<const c10::BFloat16*>(g), L, out, finite, threads, buf);
  else if (gdt == kF16)
    reduce_one(static_cast<const c10::Half*>(g), L, out, finite, threads, buf);
  else
    reduce_one(static_cast<const float*>(g), L, out, finite, threads, buf);
}

// ---- per-tensor O(rows + cols) preparation ---------------------------------------------------------------
// One scratch block per call holds every tensor's preparation (no allocation per tensor); Block points into it.
struct Block {
  float* sums = nullptr;  // pass A's nrow + ncol sums (the stacked population step only)
  float* rowv = nullptr;  // [kAccValues][nrow] (structure of arrays)
  float* colv = nullptr;  // [kAccValues][ncol]
  float* rowt = nullptr;  // [kHidden][nrow]: folded layer-1 contributions of the row channels (pass C)
  float* colt = nullptr;  // [kHidden][ncol]
  float* w1 = nullptr;    // [kHidden][kFeatures]: layer 1 with the normalization folded in (pass C)
  float* b1 = nullptr;    // [kHidden]: its bias with the time features folded in (pass C)
};

// Lays out the blocks of `jobs` in `arena` (pass C: `apply`; the population step: `sums`) and points the jobs'
// scratch pointers at them.
std::vector<Block> attach_scratch(std::vector<mulo_cpu::TensorJob>& jobs, bool apply, bool sums,
                                  std::unique_ptr<float[]>& arena) {
  constexpr int64_t RV = math::kAccValues;
  std::vector<Block> blocks(jobs.size());
  std::vector<int64_t> off(jobs.size());
  int64_t total = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const auto& J = jobs[i];
    const int64_t entries = J.factored ? J.nrow + J.ncol : 0;
    off[i] = total;
    total += (sums ? entries : 0) + RV * entries + (apply ? kHidden * (entries + kFeatures + 1) : 0);
  }
  arena.reset(new float[std::max<int64_t>(total, 1)]);
  for (size_t i = 0; i < jobs.size(); ++i) {
    auto& J = jobs[i];
    Block& B = blocks[i];
    float* q = arena.get() + off[i];
    const int64_t nr = J.factored ? J.nrow : 0, nc = J.factored ? J.ncol : 0;
    if (sums) B.sums = q, q += nr + nc, J.sums = B.sums;
    B.rowv = q, q += RV * nr;
    B.colv = q, q += RV * nc;
    if (apply) {
      B.rowt = q, q += kHidden * nr;
      B.colt = q, q += kHidden * nc;
      B.w1 = q, q += kHidden * kFeatures;
      B.b1 = q;
      J.rowt = B.rowt, J.colt = B.colt, J.w1 = B.w1, J.b1 = B.b1;
    }
    J.rowv = B.rowv;
    J.colv = B.colv;
  }
  return blocks;
}

// New Adafactor accumulators from the old state and the pass-A sums, with rsqrt(acc + 1e-8) and the factors
// (lopt_math.h: new_acc, row_entry, col_entry); the means over d1 of the row accumulators in double.
void prepare_rowcol(const mulo_cpu::TensorJob& J, const math::Hyper& H, const Block& P) {
  const int64_t nr = J.nrow, nc = J.ncol;
  // means over the WHOLE tensor's axes (a shard's sums were all-reduced by the caller)
  const float n_d0 = static_cast<float>(J.whole_d0), n_d1 = static_cast<float>(J.whole_d1);
  const int64_t nmean = J.nmean;
  double small[48];
  std::vector<double> big;
  double* mean = small;
  if (3 * nmean > 48) big.resize(static_cast<size_t>(3 * nmean)), mean = big.data();
  std::fill(mean, mean + 3 * nmean, 0.0);
  for (int64_t e = 0; e < nr; ++e) {
    const int64_t mi = J.mean_index(e);
    for (int k = 0; k < 3; ++k) {
      const float r = math::new_acc(H, k, read_state(J.acc_a, J.sdt, k * nr + e), J.sums[e], n_d0);
      P.rowv[k * nr + e] = r;
      mean[k * nmean + mi] += r;
    }
  }
  for (int64_t e = 0; e < nr; ++e) {
    const int64_t mi = J.mean_index(e);
    float r[3], rm[3];
    for (int k = 0; k < 3; ++k) {
      r[k] = P.rowv[k * nr + e];
      const double total = J.row_acc_sum ? J.row_acc_sum[k * nmean + mi] : mean[k * nmean + mi];
      rm[k] = static_cast<float>(total / static_cast<double>(J.whole_d1));
    }
    math::row_entry(r, rm, [&](int j, float x) { P.rowv[j * nr + e] = x; });
  }
  for (int64_t e = 0; e < nc; ++e) {
    float c[3];
    for (int k = 0; k < 3; ++k) c[k] = math::new_acc(H, k, read_state(J.acc_b, J.sdt, k * nc + e), J.sums[nr + e], n_d1);
    math::col_entry(c, [&](int j, float x) { P.colv[j * nc + e] = x; });
  }
}

// Pass B's channels 13-24 of a factored tensor: constant along d0 (rows) or d1 (columns), so O(rows + cols).
void rowcol_sumsq(const mulo_cpu::TensorJob& J, double* out) {
  // local counts: each row entry repeats along the shard's d0, each column entry along its d1
  auto sum_squares = [&](const float* vals, int64_t n, double count, int ch_value, int ch_rsqrt) {
    for (int k = 0; k < 3; ++k) {
      double a = 0, b = 0;
      for (int64_t r = 0; r < n; ++r) {
        const double x = vals[(math::kAccValue + k) * n + r], y = vals[(math::kAccRsqrt + k) * n + r];
        a += x * x;
        b += y * y;
      }
      out[ch_value + k] = a * count;
      out[ch_rsqrt + k] = b * count;
    }
  };
  sum_squares(J.rowv, J.nrow, static_cast<double>(J.d0_size), spec::kChRow, spec::kChRsqrtRow);
  sum_squares(J.colv, J.ncol, static_cast<double>(J.d1_size), spec::kChCol, spec::kChRsqrtCol);
}

// Pass C's layer 1 of one tensor: the normalization (sq: its 28 sums of squares) folded into W1's columns, the
// time features into its bias; W1, B1: the tensor's meta-weight set.
// The folded bias of the last meta-weight set and step count seen: the tensors of one member share it (and the
// time features, all members in step).
struct BiasCache {
  int64_t set = -1;
  float step = std::numeric_limits<float>::quiet_NaN();
  float tf_step = std::numeric_limits<float>::quiet_NaN();
  float tf[kTimescales];
  float b1[kHidden];
};

// Pass C's layer 1 of one tensor: the normalization (sq: its 28 sums of squares) folded into W1's columns, the
// time features into its bias; `set`: the tensor's meta-weight set in W1/B1 (K sets back to back).
void fold_layer1(const mulo_cpu::TensorJob& J, const float* sq, const float* W1, const float* B1, int64_t set,
                 const math::Hyper& H, const Block& P, BiasCache& cache) {
  W1 += set * kHidden * (kFeatures + kTimescales);
  float scale[kFeatures];
  for (int j = 0; j < kFeatures; ++j) scale[j] = math::norm_scale(sq[j], static_cast<float>(J.whole_n));
  // the channel ranges whose kernel rows are consecutive (lopt_cpu.h: row_of_channel), so no per-channel branch
  constexpr int ranges[3][2] = {{0, spec::kChRow}, {spec::kChRow, spec::kChFacM}, {spec::kChFacM, kFeatures}};
  for (int o = 0; o < kHidden; ++o) {
    const float* row = W1 + o * (kFeatures + kTimescales);
    for (const auto& r : ranges) {
      float* dst = P.w1 + o * kFeatures + mulo_cpu::row_of_channel(r[0]) - r[0];
      for (int j = r[0]; j < r[1]; ++j) dst[j] = row[j] * scale[j];
    }
  }
  const float t = *J.step;
  if (cache.set != set || !(cache.step == t)) {
    if (!(cache.tf_step == t)) math::time_features(t, H.time_clamp, cache.tf);
    for (int o = 0; o < kHidden; ++o)
      cache.b1[o] = math::folded_bias(B1[set * kHidden + o], W1 + o * (kFeatures + kTimescales), cache.tf);
    cache.set = set, cache.step = t, cache.tf_step = t;
  }
  std::copy(cache.b1, cache.b1 + kHidden, P.b1);
}

// Layer-1 contributions of the row channels (13-15, 19-21) per row entry and of the column channels
// (16-18, 22-24) per column entry, from the folded layer 1 (kernel row order; the ISA's FoldFn).
void fold_rowcol(const mulo_cpu::TensorJob& J, const Block& P, const Kernels& K) {
  K.fold(P.w1, P.rowv, J.nrow, spec::kChRow, spec::kChRsqrtRow, P.rowt);
  K.fold(P.w1, P.colv, J.ncol, spec::kChCol, spec::kChRsqrtCol, P.colt);
}

// After pass C: the skip counter of a tensor with a non-finite gradient, else its new Adafactor accumulators
// (the kernels read them from the block) and its step counter.
void finish(const mulo_cpu::TensorJob& J, bool finite, const Block& P) {
  if (!finite) {
    *J.skips += 1.0f;
    return;
  }
  if (J.factored && J.whole_n > 0) {
    for (int k = 0; k < 3; ++k) {
      for (int64_t r = 0; r < J.nrow; ++r)
        write_state(J.acc_a, J.sdt, k * J.nrow + r, P.rowv[(math::kAccValue + k) * J.nrow + r]);
      for (int64_t c = 0; c < J.ncol; ++c)
        write_state(J.acc_b, J.sdt, k * J.ncol + c, P.colv[(math::kAccValue + k) * J.ncol + c]);
    }
  }
  *J.step += 1.0f;
}

struct Chunk {
  int tensor;
  int64_t start, end;
};

constexpr int64_t kChunk = 12288;  // elements per work item (a multiple of every ISA's tile)

std::vector<Chunk> make_chunks(const std::vector<mulo_cpu::TensorJob>& L, const float* finite) {
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < L.size(); ++i) {
    if (finite[i] == 0.f) continue;
    for (int64_t s = 0; s < L[i].n; s += kChunk) chunks.push_back({static_cast<int>(i), s, std::min(L[i].n, s + kChunk)});
  }
  return chunks;
}

// Pass B over a table: the accumulator entries of every factored tensor into its block, then the 28 sums of
// squares per tensor into total[n_tensors][28] (summed in a fixed chunk order: independent of scheduling).
void sumsq_pass(std::vector<mulo_cpu::TensorJob>& jobs, const std::vector<Block>& blocks, const float* fin,
                const math::Hyper& H, double* total) {
  const int64_t nt = static_cast<int64_t>(jobs.size());
  at::parallel_for(0, nt, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const auto& J = jobs[i];
      if (!J.factored || fin[i] == 0.f || J.whole_n == 0) continue;  // zero elements: nothing to update
      prepare_rowcol(J, H, blocks[i]);
      rowcol_sumsq(J, &total[i * kFeatures]);
    }
  });
  const auto chunks = make_chunks(jobs, fin);
  std::vector<double> partial(chunks.size() * kFeatures, 0.0);
  const Kernels K = current_kernels();
  const int64_t nc = static_cast<int64_t>(chunks.size());
#pragma omp parallel for if (nc > 1) num_threads(num_threads()) schedule(dynamic, 1)
  for (int64_t c = 0; c < nc; ++c) {
    const Chunk& ch = chunks[c];
    K.sumsq(jobs[ch.tensor], H, ch.start, ch.end, &partial[c * kFeatures]);
  }
  for (size_t c = 0; c < chunks.size(); ++c)  // fixed order: the result does not depend on scheduling
    for (int j = 0; j < kFeatures; ++j) total[chunks[c].tensor * kFeatures + j] += partial[c * kFeatures + j];
}

// Pass C over a table: per tensor layer 1 folded (normalization from sq[n_tensors][28], time features, the
// row/column channels), the update of every element, then the counters and new accumulators. `prepare`:
// compute the accumulator entries (the separate lopt_apply); else pass B left them in the blocks.
void apply_pass(std::vector<mulo_cpu::TensorJob>& jobs, const std::vector<Block>& blocks, const float* fin,
                const float* sq, at::TensorList mlp, const std::vector<int64_t>& set_of, const math::Hyper& H,
                bool prepare) {
  const int64_t outs = H.nominal != 0.f ? spec::kOutputNominal : spec::kOutput;  // the nominal term's third head
  const int64_t nW1 = kHidden * (kFeatures + kTimescales), nW2 = kHidden * kHidden, nW3 = outs * kHidden;
  const int64_t sets = mlp[0].numel() / nW1;
  TORCH_CHECK(mlp[4].numel() == sets * nW3 && mlp[5].numel() == sets * outs, "mulo: the meta-network's output layer has ",
              mlp[5].numel() / (sets ? sets : 1), " outputs per set; the hyper vector's nominal = ", H.nominal,
              " needs ", outs, " (3 with the nominal term, else 2)");
  const float *W1 = mlp[0].data_ptr<float>(), *B1 = mlp[1].data_ptr<float>();
  std::vector<mulo_cpu::Net> nets;
  for (int64_t k = 0; k < sets; ++k)
    nets.push_back({mlp[2].data_ptr<float>() + k * nW2, mlp[3].data_ptr<float>() + k * kHidden,
                    mlp[4].data_ptr<float>() + k * nW3, mlp[5].data_ptr<float>() + k * outs});
  const int64_t nt = static_cast<int64_t>(jobs.size());
  const Kernels K = current_kernels();
  at::parallel_for(0, nt, 1, [&](int64_t b, int64_t e) {
    BiasCache cache;
    for (int64_t i = b; i < e; ++i) {
      const auto& J = jobs[i];
      if (fin[i] == 0.f || J.whole_n == 0) continue;  // zero elements: only the step count moves
      if (J.factored && prepare) prepare_rowcol(J, H, blocks[i]);
      fold_layer1(J, sq + i * kFeatures, W1, B1, set_of[i], H, blocks[i], cache);
      if (J.factored) fold_rowcol(J, blocks[i], K);
    }
  });
  const auto chunks = make_chunks(jobs, fin);
  const int64_t nc = static_cast<int64_t>(chunks.size());
#pragma omp parallel for if (nc > 1) num_threads(num_threads()) schedule(dynamic, 1)
  for (int64_t c = 0; c < nc; ++c) {
    const Chunk& ch = chunks[c];
    K.apply(jobs[ch.tensor], H, nets[set_of[ch.tensor]], ch.start, ch.end);
  }
  for (int64_t i = 0; i < nt; ++i) finish(jobs[i], fin[i] != 0.f, blocks[i]);
}

struct Inputs {
  std::vector<mulo_cpu::TensorJob> jobs;  // the shared descriptor table (lopt_common.h: describe)
  math::Hyper H;
};

Inputs collect(const char* op, at::TensorList params, at::TensorList grads, at::TensorList momentum,
               at::TensorList second_moment, at::TensorList acc_a, at::TensorList acc_b, at::TensorList sums,
               const at::Tensor& finite, at::IntArrayRef dims, at::ArrayRef<double> hyper, at::IntArrayRef whole,
               at::TensorList row_acc_sums) {
  Inputs in;
  in.H = make_hyper(hyper, op);
  in.jobs = describe<mulo_cpu::TensorJob>(op, at::kCPU, params, grads, momentum, second_moment, acc_a, acc_b, sums,
                                          finite, dims, whole, row_acc_sums);
  return in;
}

}  // namespace

std::string cpu_isa() {
  std::lock_guard<std::mutex> lock(isa_mutex);
  return isa_name();
}

std::string set_cpu_isa(const std::string& isa) {
  TORCH_CHECK(isa == "avx512" || isa == "avx2" || isa == "base", "set_cpu_isa: isa must be avx512, avx2 or base");
  TORCH_CHECK(cpu_has(isa), "set_cpu_isa: this CPU (or this build) cannot run ", isa);
  std::lock_guard<std::mutex> lock(isa_mutex);
  std::string old = isa_name();
  isa_name() = isa;
  return old;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> lopt_reduce_cpu(at::TensorList grads, at::IntArrayRef dims) {
  const char* op = "mulo::lopt_reduce";
  const auto L = layouts(grads, dims, op);
  const size_t nt = grads.size();
  std::vector<at::Tensor> sums = check_reduce_args(op, at::kCPU, grads, L);
  at::Tensor finite = at::ones({static_cast<int64_t>(nt)}, at::TensorOptions().dtype(at::kFloat));
  float* fin = finite.data_ptr<float>();
  const int threads = num_threads();
  std::vector<double> buf;
  for (size_t i = 0; i < nt; ++i)
    reduce_typed(grads[i].data_ptr(), dtype_code(grads[i].scalar_type()), L[i], sums[i].data_ptr<float>(), fin + i,
                 threads, buf);
  return {sums, finite};
}

at::Tensor lopt_sumsq_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                          at::TensorList second_moment, at::TensorList acc_a, at::TensorList acc_b,
                          at::TensorList sums, const at::Tensor& finite, at::IntArrayRef dims,
                          at::ArrayRef<double> hyper, at::IntArrayRef whole, std::optional<at::TensorList> row_acc_sums) {
  const char* op = "mulo::lopt_sumsq";
  Inputs in = collect(op, params, grads, momentum, second_moment, acc_a, acc_b, sums, finite, dims, hyper, whole,
                      row_acc_sums.value_or(at::TensorList()));
  const float* fin = finite.data_ptr<float>();
  std::unique_ptr<float[]> arena;
  const auto blocks = attach_scratch(in.jobs, false, false, arena);
  std::vector<double> total(params.size() * kFeatures, 0.0);
  sumsq_pass(in.jobs, blocks, fin, in.H, total.data());
  at::Tensor out = at::empty({static_cast<int64_t>(params.size()), kFeatures}, at::TensorOptions().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  for (size_t k = 0; k < total.size(); ++k) o[k] = static_cast<float>(total[k]);
  return out;
}

void lopt_apply_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                    at::TensorList second_moment, at::TensorList acc_a, at::TensorList acc_b, at::TensorList steps,
                    at::TensorList skips, at::TensorList sums, const at::Tensor& sumsq, const at::Tensor& finite,
                    at::TensorList mlp, at::ArrayRef<double> lrs, at::ArrayRef<double> wds, at::IntArrayRef dims,
                    at::ArrayRef<double> hyper, at::IntArrayRef weight_index, at::IntArrayRef whole,
                    std::optional<at::TensorList> row_acc_sums) {
  const char* op = "mulo::lopt_apply";
  Inputs in = collect(op, params, grads, momentum, second_moment, acc_a, acc_b, sums, finite, dims, hyper, whole,
                      row_acc_sums.value_or(at::TensorList()));
  std::vector<int64_t> widx;  // K meta-weight sets back to back in every mlp tensor (K = 1 for one optimizer)
  describe_apply(op, in.jobs, steps, skips, sumsq, mlp, lrs, wds, weight_index, at::Device(at::kCPU), widx);
  std::unique_ptr<float[]> arena;
  const auto blocks = attach_scratch(in.jobs, true, false, arena);
  apply_pass(in.jobs, blocks, finite.data_ptr<float>(), sumsq.data_ptr<float>(), mlp, widx, in.H, true);
}

void lopt_population_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                              at::TensorList second_moment, at::TensorList acc_a, at::TensorList acc_b,
                              at::TensorList steps, at::TensorList skips, at::TensorList mlp, at::ArrayRef<double> lrs,
                              at::ArrayRef<double> wds, at::IntArrayRef dims, at::ArrayRef<double> hyper) {
  const char* op = "mulo::lopt_population_step";
  const math::Hyper H = make_hyper(hyper, op);
  std::vector<int64_t> set_of;
  auto jobs = describe_population<mulo_cpu::TensorJob>(op, params, grads, momentum, second_moment, acc_a, acc_b,
                                                       steps, skips, mlp, lrs, wds, dims, set_of);
  std::unique_ptr<float[]> arena;
  const auto blocks = attach_scratch(jobs, true, true, arena);
  const size_t nj = jobs.size();
  // pass A
  std::vector<float> fin(nj);
  std::vector<double> buf;
  const int threads = num_threads();
  for (size_t i = 0; i < nj; ++i) reduce_typed(jobs[i].g, jobs[i].gdt, jobs[i], blocks[i].sums, &fin[i], threads, buf);
  // pass B: the same float32 sums of squares the separate passes hand from lopt_sumsq to lopt_apply
  std::vector<double> total(nj * kFeatures, 0.0);
  sumsq_pass(jobs, blocks, fin.data(), H, total.data());
  std::vector<float> sq(total.begin(), total.end());
  // pass C, reusing pass B's accumulator entries
  apply_pass(jobs, blocks, fin.data(), sq.data(), mlp, set_of, H, false);
}

}  // namespace mulo
