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

float read_f(const at::Tensor& t, int64_t i) {
  if (t.scalar_type() == at::kBFloat16) return static_cast<float>(t.data_ptr<c10::BFloat16>()[i]);
  return t.data_ptr<float>()[i];
}

void write_f(const at::Tensor& t, int64_t i, float x) {
  if (t.scalar_type() == at::kBFloat16)
    t.data_ptr<c10::BFloat16>()[i] = c10::BFloat16(x);
  else
    t.data_ptr<float>()[i] = x;
}

int num_threads() { return std::max(1, at::get_num_threads()); }

// ---- pass A -----------------------------------------------------------------------------------------------
template <class GT>
void reduce_one(const GT* g, const Layout& L, float* out, float* finite, int threads) {
  const int64_t n = L.n;
  // memory-bound and ~0.4 ns per element on one core: threads only pay off for very large tensors (and a
  // parallel region costs a scheduling quantum whenever a core is shared)
  const int nth = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n >> 22)));
  if (!L.factored) {
    int bad = 0;
#pragma omp parallel for num_threads(nth) reduction(| : bad) schedule(static)
    for (int64_t e = 0; e < n; ++e) {
      bad |= !math::finite_s(math::grad_sq(load_f(g, e)));
    }
    *finite = bad ? 0.f : 1.f;
    return;
  }
  const int64_t width = L.nrow + L.ncol;
  std::vector<double> buf(static_cast<size_t>(nth) * width, 0.0);
  const int64_t lines = L.A * L.Da * L.B, len = L.Db * L.C;
  int bad = 0;
#pragma omp parallel num_threads(nth) reduction(| : bad)
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

// ---- per-tensor O(rows + cols) preparation ---------------------------------------------------------------
struct Prepared {
  std::vector<float> rowv, colv;  // [kAccValues][entries] (structure of arrays)
  std::vector<float> rowt, colt;  // [kHidden][entries]: folded layer-1 contributions (pass C)
};

// New Adafactor accumulators from the old state and the pass-A sums, with rsqrt(acc + 1e-8) and the factors
// (lopt_math.h: new_acc, row_entry, col_entry); the means over d1 of the row accumulators in double.
void prepare_rowcol(const Layout& L, const float* sums, const at::Tensor& row_state, const at::Tensor& col_state,
                    const math::Hyper& H, Prepared& P) {
  constexpr int RV = math::kAccValues;
  const int64_t nr = L.nrow, nc = L.ncol;
  P.rowv.assign(static_cast<size_t>(nr) * RV, 0.f);
  P.colv.assign(static_cast<size_t>(nc) * RV, 0.f);
  // means over the WHOLE tensor's axes (a shard's sums were all-reduced by the caller)
  const float n_d0 = static_cast<float>(L.whole_d0), n_d1 = static_cast<float>(L.whole_d1);
  const int64_t nmean = L.nmean;
  std::vector<double> mean(static_cast<size_t>(3 * nmean), 0.0);
  for (int64_t e = 0; e < nr; ++e) {
    const int64_t mi = L.mean_index(e);
    for (int k = 0; k < 3; ++k) {
      const float r = math::new_acc(H, k, read_f(row_state, k * nr + e), sums[e], n_d0);
      P.rowv[k * nr + e] = r;
      mean[k * nmean + mi] += r;
    }
  }
  for (int64_t e = 0; e < nr; ++e) {
    const int64_t mi = L.mean_index(e);
    float r[3], rm[3];
    for (int k = 0; k < 3; ++k) {
      r[k] = P.rowv[k * nr + e];
      const double total = L.row_acc_sum ? L.row_acc_sum[k * nmean + mi] : mean[k * nmean + mi];
      rm[k] = static_cast<float>(total / static_cast<double>(L.whole_d1));
    }
    math::row_entry(r, rm, [&](int j, float x) { P.rowv[j * nr + e] = x; });
  }
  for (int64_t e = 0; e < nc; ++e) {
    float c[3];
    for (int k = 0; k < 3; ++k) c[k] = math::new_acc(H, k, read_f(col_state, k * nc + e), sums[nr + e], n_d1);
    math::col_entry(c, [&](int j, float x) { P.colv[j * nc + e] = x; });
  }
}

// Layer-1 contributions of the row channels (13-15, 19-21) per row entry and of the column channels
// (16-18, 22-24) per column entry; `wf` is the folded layer 1 in kernel row order.
void fold_rowcol(const Layout& L, const float* wf, Prepared& P) {
  using mulo_cpu::row_of_channel;
  // vals: [kAccValues][n] entry values; ch_value/ch_rsqrt: the channels of acc_k and its rsqrt
  auto fold = [&](const std::vector<float>& vals, int64_t n, int ch_value, int ch_rsqrt, std::vector<float>& out) {
    out.assign(static_cast<size_t>(kHidden) * n, 0.f);
    for (int o = 0; o < kHidden; ++o) {
      const float* w = wf + o * kFeatures;
      for (int64_t e = 0; e < n; ++e) {
        float a = 0.f;
        for (int k = 0; k < 3; ++k)
          a += w[row_of_channel(ch_value + k)] * vals[(math::kAccValue + k) * n + e] +
               w[row_of_channel(ch_rsqrt + k)] * vals[(math::kAccRsqrt + k) * n + e];
        out[o * n + e] = a;
      }
    }
  };
  fold(P.rowv, L.nrow, spec::kChRow, spec::kChRsqrtRow, P.rowt);
  fold(P.colv, L.ncol, spec::kChCol, spec::kChRsqrtCol, P.colt);
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
  for (size_t i = 0; i < nt; ++i) {
    const auto& g = grads[i];
    float* out = sums[i].data_ptr<float>();
    switch (g.scalar_type()) {
      case at::kBFloat16:
        reduce_one(g.data_ptr<c10::BFloat16>(), L[i], out, fin + i, threads);
        break;
      case at::kHalf:
        reduce_one(g.data_ptr<c10::Half>(), L[i], out, fin + i, threads);
        break;
      default:
        reduce_one(g.data_ptr<float>(), L[i], out, fin + i, threads);
    }
  }
  return {sums, finite};
}

at::Tensor lopt_sumsq_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                          at::TensorList second_moment, at::TensorList acc_a, at::TensorList acc_b,
                          at::TensorList sums, const at::Tensor& finite, at::IntArrayRef dims,
                          at::ArrayRef<double> hyper, at::IntArrayRef whole, std::optional<at::TensorList> row_acc_sums) {
  const char* op = "mulo::lopt_sumsq";
  Inputs in = collect(op, params, grads, momentum, second_moment, acc_a, acc_b, sums, finite, dims, hyper, whole,
                      row_acc_sums.value_or(at::TensorList()));
  const size_t nt = params.size();
  const float* fin = finite.data_ptr<float>();
  std::vector<Prepared> prep(nt);
  std::vector<double> total(nt * kFeatures, 0.0);
  at::parallel_for(0, static_cast<int64_t>(nt), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      auto& J = in.jobs[i];
      if (!J.factored || fin[i] == 0.f || J.whole_n == 0) continue;  // zero elements: nothing to update
      prepare_rowcol(J, J.sums, acc_a[i], acc_b[i], in.H, prep[i]);
      J.rowv = prep[i].rowv.data();
      J.colv = prep[i].colv.data();
      // channels 13-24 are constant along d0 (rows) or d1 (columns): O(rows + cols)
      double* out = &total[i * kFeatures];
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
  });
  const auto chunks = make_chunks(in.jobs, fin);
  std::vector<double> partial(chunks.size() * kFeatures, 0.0);
  const Kernels K = current_kernels();
  const int64_t nc = static_cast<int64_t>(chunks.size());
#pragma omp parallel for num_threads(num_threads()) schedule(dynamic, 1)
  for (int64_t c = 0; c < nc; ++c) {
    const Chunk& ch = chunks[c];
    K.sumsq(in.jobs[ch.tensor], in.H, ch.start, ch.end, &partial[c * kFeatures]);
  }
  for (size_t c = 0; c < chunks.size(); ++c)  // fixed order: the result does not depend on scheduling
    for (int j = 0; j < kFeatures; ++j) total[chunks[c].tensor * kFeatures + j] += partial[c * kFeatures + j];
  at::Tensor out = at::empty({static_cast<int64_t>(nt), kFeatures}, at::TensorOptions().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  for (size_t k = 0; k < nt * kFeatures; ++k) o[k] = static_cast<float>(total[k]);
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
  const size_t nt = params.size();
  std::vector<int64_t> widx;  // K meta-weight sets back to back in every mlp tensor (K = 1 for one optimizer)
  const int64_t sets =
      describe_apply(op, in.jobs, steps, skips, sumsq, mlp, lrs, wds, weight_index, at::Device(at::kCPU), widx);
  const int64_t nW1 = kHidden * (kFeatures + kTimescales), nW2 = kHidden * kHidden, nW3 = 2 * kHidden;
  std::vector<mulo_cpu::Net> nets;
  for (int64_t k = 0; k < sets; ++k)
    nets.push_back({mlp[2].data_ptr<float>() + k * nW2, mlp[3].data_ptr<float>() + k * kHidden,
                    mlp[4].data_ptr<float>() + k * nW3, mlp[5].data_ptr<float>() + k * 2});
  const float* fin = finite.data_ptr<float>();
  const float* sq = sumsq.data_ptr<float>();
  std::vector<Prepared> prep(nt);
  std::vector<float> w1f(nt * kHidden * kFeatures), b1f(nt * kHidden);
  at::parallel_for(0, static_cast<int64_t>(nt), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      auto& J = in.jobs[i];
      if (fin[i] == 0.f || J.whole_n == 0) continue;  // zero elements: only the step count moves
      if (J.factored) {
        prepare_rowcol(J, J.sums, acc_a[i], acc_b[i], in.H, prep[i]);
        J.rowv = prep[i].rowv.data();
        J.colv = prep[i].colv.data();
      }
      // normalization folded into layer 1's columns, time features into its bias
      float scale[kFeatures];
      for (int j = 0; j < kFeatures; ++j)
        scale[j] = math::norm_scale(sq[i * kFeatures + j], static_cast<float>(J.whole_n));
      float tf[kTimescales];
      math::time_features(*J.step, in.H.time_clamp, tf);
      float* wf = &w1f[i * kHidden * kFeatures];
      float* bf = &b1f[i * kHidden];
      const float* W1 = mlp[0].data_ptr<float>() + widx[i] * nW1;
      const float* B1 = mlp[1].data_ptr<float>() + widx[i] * kHidden;
      for (int o = 0; o < kHidden; ++o) {
        const float* row = W1 + o * (kFeatures + kTimescales);
        for (int j = 0; j < kFeatures; ++j) wf[o * kFeatures + mulo_cpu::row_of_channel(j)] = row[j] * scale[j];
        bf[o] = math::folded_bias(B1[o], row, tf);
      }
      J.w1 = wf;
      J.b1 = bf;
      if (J.factored) {
        fold_rowcol(J, wf, prep[i]);
        J.rowt = prep[i].rowt.data();
        J.colt = prep[i].colt.data();
      }
    }
  });
  const auto chunks = make_chunks(in.jobs, fin);
  const Kernels K = current_kernels();
  const int64_t nc = static_cast<int64_t>(chunks.size());
#pragma omp parallel for num_threads(num_threads()) schedule(dynamic, 1)
  for (int64_t c = 0; c < nc; ++c) {
    const Chunk& ch = chunks[c];
    K.apply(in.jobs[ch.tensor], in.H, nets[widx[ch.tensor]], ch.start, ch.end);
  }
  for (size_t i = 0; i < nt; ++i) {
    const auto& J = in.jobs[i];
    if (fin[i] == 0.f) {
      *J.skips += 1.0f;
      continue;
    }
    if (J.factored && J.whole_n > 0) {  // the new Adafactor accumulators (the apply pass read them from `prep`)
      for (int k = 0; k < 3; ++k) {
        for (int64_t r = 0; r < J.nrow; ++r)
          write_f(acc_a[i], k * J.nrow + r, prep[i].rowv[(math::kAccValue + k) * J.nrow + r]);
        for (int64_t c = 0; c < J.ncol; ++c)
          write_f(acc_b[i], k * J.ncol + c, prep[i].colv[(math::kAccValue + k) * J.ncol + c]);
      }
    }
    *J.step += 1.0f;
  }
}

}  // namespace mulo
