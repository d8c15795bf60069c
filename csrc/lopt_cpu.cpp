// CPU implementation of the mulo::lopt_* ops (ALGORITHM.md §5): pass A (row/column sums of s and the
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
#include <cfloat>
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
int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return mulo_cpu::kF32;
    case at::kBFloat16:
      return mulo_cpu::kBF16;
    case at::kHalf:
      return mulo_cpu::kF16;
    default:
      TORCH_CHECK(false, "mulo: unsupported dtype ", t);
  }
}

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

mulo_cpu::Hyper make_hyper(at::ArrayRef<double> h, const char* op) {
  TORCH_CHECK(h.size() == kNumHyper, op, ": hyper needs ", kNumHyper,
              " values (β_m ×3, β_v, β_f ×3, exp_mult, step_mult), got ", h.size());
  mulo_cpu::Hyper H;
  for (int k = 0; k < 3; ++k) {
    // the reference forms (1 - β) from a float32 tensor of decays: same rounding here
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

std::vector<Layout> layouts(at::TensorList ts, at::IntArrayRef dims, const char* op) {
  TORCH_CHECK(dims.size() == 2 * ts.size(), op, ": dims needs 2 entries (d1, d0) per tensor, got ", dims.size(),
              " for ", ts.size(), " tensors");
  std::vector<Layout> out;
  out.reserve(ts.size());
  for (size_t i = 0; i < ts.size(); ++i) out.push_back(make_layout(ts[i].sizes(), dims[2 * i], dims[2 * i + 1], op, i));
  return out;
}

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
      const float x = load_f(g, e);
      bad |= !(x * x + spec::kEpsGradSq <= FLT_MAX);
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
            const float gv = load_f(gl, j + q);
            const float s = gv * gv + spec::kEpsGradSq;
            flags[q] |= !(s <= FLT_MAX);
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
          const float gv = load_f(gl, j);
          const float s = gv * gv + spec::kEpsGradSq;
          bad |= !(s <= FLT_MAX);
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
          const float gv = load_f(glj, z);
          const float s = gv * gv + spec::kEpsGradSq;
          bad |= !(s <= FLT_MAX);
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
  std::vector<float> rowv, colv;  // [kRowVals][entries] (structure of arrays)
  std::vector<float> rowt, colt;  // [kHidden][entries]: folded layer-1 contributions (pass C)
};

// New Adafactor accumulators from the old state and the pass-A sums, with rsqrt(acc + 1e-8) and the factors.
void prepare_rowcol(const Layout& L, const float* sums, const at::Tensor& row_state, const at::Tensor& col_state,
                    const mulo_cpu::Hyper& H, Prepared& P) {
  constexpr int RV = mulo_cpu::kRowVals;
  const int64_t nr = L.nrow, nc = L.ncol;
  P.rowv.assign(static_cast<size_t>(nr) * RV, 0.f);
  P.colv.assign(static_cast<size_t>(nc) * RV, 0.f);
  // means over the WHOLE tensor's axes (a shard's sums were all-reduced by the caller)
  const float n_d0 = static_cast<float>(L.whole_d0), n_d1 = static_cast<float>(L.whole_d1);
  const int64_t nmean = L.nmean;
  std::vector<double> mean(static_cast<size_t>(3 * nmean), 0.0);
  // mean index of a row entry: the row accumulator keeps axis d1; drop it as well
  auto mean_index = [&](int64_t e) -> int64_t {
    const int64_t z = e % L.C;
    if (L.d0_is_a) return (e / (L.C * L.Db)) * L.C + z;  // row entry ((x·B + y)·Db + w)·C + z
    const int64_t y = (e / L.C) % L.B, x = e / (L.C * L.B * L.Da);  // ((x·Da + w)·B + y)·C + z
    return (x * L.B + y) * L.C + z;
  };
  for (int64_t e = 0; e < nr; ++e) {
    const float mean_s = sums[e] / n_d0;
    const int64_t mi = mean_index(e);
    for (int k = 0; k < 3; ++k) {
      const float r = H.bf[k] * read_f(row_state, k * nr + e) + H.of[k] * mean_s;
      P.rowv[k * nr + e] = r;
      mean[k * nmean + mi] += r;
    }
  }
  for (int64_t e = 0; e < nr; ++e) {
    const int64_t mi = mean_index(e);
    for (int k = 0; k < 3; ++k) {
      const float r = P.rowv[k * nr + e];
      const double total = L.row_acc_sum ? L.row_acc_sum[k * nmean + mi] : mean[k * nmean + mi];
      const float rm = static_cast<float>(total / static_cast<double>(L.whole_d1));
      P.rowv[(3 + k) * nr + e] = 1.0f / std::sqrt(r + spec::kEpsAccFeature);
      P.rowv[(6 + k) * nr + e] = 1.0f / std::sqrt(std::max(r / (rm + spec::kEpsSafeRsqrt), spec::kEpsSafeRsqrt));
    }
  }
  for (int64_t e = 0; e < nc; ++e) {
    const float mean_s = sums[nr + e] / n_d1;
    for (int k = 0; k < 3; ++k) {
      const float c = H.bf[k] * read_f(col_state, k * nc + e) + H.of[k] * mean_s;
      P.colv[k * nc + e] = c;
      P.colv[(3 + k) * nc + e] = 1.0f / std::sqrt(c + spec::kEpsAccFeature);
      P.colv[(6 + k) * nc + e] = 1.0f / std::sqrt(std::max(c, spec::kEpsSafeRsqrt));
    }
  }
}

// Layer-1 contributions of the row channels (13-15, 19-21) per row entry and of the column channels
// (16-18, 22-24) per column entry; `wf` is the folded layer 1 in kernel row order.
void fold_rowcol(const Layout& L, const float* wf, Prepared& P) {
  using mulo_cpu::row_of_channel;
  const int64_t nr = L.nrow, nc = L.ncol;
  P.rowt.assign(static_cast<size_t>(kHidden) * nr, 0.f);
  P.colt.assign(static_cast<size_t>(kHidden) * nc, 0.f);
  for (int o = 0; o < kHidden; ++o) {
    const float* w = wf + o * kFeatures;
    for (int64_t e = 0; e < nr; ++e) {
      float a = 0.f;
      for (int k = 0; k < 3; ++k)
        a += w[row_of_channel(spec::kChRow + k)] * P.rowv[k * nr + e] +
             w[row_of_channel(spec::kChRsqrtRow + k)] * P.rowv[(3 + k) * nr + e];
      P.rowt[o * nr + e] = a;
    }
    for (int64_t e = 0; e < nc; ++e) {
      float a = 0.f;
      for (int k = 0; k < 3; ++k)
        a += w[row_of_channel(spec::kChCol + k)] * P.colv[k * nc + e] +
             w[row_of_channel(spec::kChRsqrtCol + k)] * P.colv[(3 + k) * nc + e];
      P.colt[o * nc + e] = a;
    }
  }
}

struct Chunk {
  int tensor;
  int64_t start, end;
};

constexpr int64_t kChunk = 12288;  // elements per work item (a multiple of every ISA's tile)

std::vector<Chunk> make_chunks(const std::vector<Layout>& L, const float* finite) {
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < L.size(); ++i) {
    if (finite[i] == 0.f) continue;
    for (int64_t s = 0; s < L[i].n; s += kChunk) chunks.push_back({static_cast<int>(i), s, std::min(L[i].n, s + kChunk)});
  }
  return chunks;
}

struct Inputs {
  std::vector<Layout> L;
  std::vector<mulo_cpu::TensorJob> jobs;
  mulo_cpu::Hyper H;
};

Inputs collect(const char* op, at::TensorList params, at::TensorList grads, at::TensorList momentum,
               at::TensorList second_moment, at::TensorList acc_a, at::TensorList acc_b, at::TensorList sums,
               const at::Tensor& finite, at::IntArrayRef dims, at::ArrayRef<double> hyper, at::IntArrayRef whole,
               at::TensorList row_acc_sums) {
  const size_t nt = params.size();
  for (auto [what, list] : {std::pair<const char*, at::TensorList>{"grads", grads}, {"momentum", momentum},
                            {"second_moment", second_moment}, {"acc_a", acc_a}, {"acc_b", acc_b}, {"sums", sums}})
    check_same_length(nt, list.size(), op, what);
  TORCH_CHECK(finite.dim() == 1 && finite.numel() == static_cast<int64_t>(nt) && finite.scalar_type() == at::kFloat &&
                  finite.is_contiguous(),
              op, ": finite must be a contiguous float32 vector with one entry per tensor (from lopt_reduce)");
  Inputs in;
  in.H = make_hyper(hyper, op);
  in.L = layouts(params, dims, op);
  apply_geometry(in.L, whole, row_acc_sums, op);
  in.jobs.resize(nt);
  for (size_t i = 0; i < nt; ++i) {
    const auto& p = params[i];
    const auto& g = grads[i];
    const Layout& L = in.L[i];
    TORCH_CHECK(p.device().is_cpu(), op, ": params[", i, "] is on ", p.device(), "; this is the CPU kernel");
    check_param_grad(p, g, op, i);
    check_state(momentum[i], p, 3 * L.n, op, "momentum", i);
    check_state(second_moment[i], p, L.n, op, "second_moment", i);
    check_state(acc_a[i], p, 3 * (L.factored ? L.nrow : L.n), op, L.factored ? "acc_a (row)" : "acc_a (full)", i);
    if (L.factored) check_state(acc_b[i], p, 3 * L.ncol, op, "acc_b (col)", i);
    const auto sdt = momentum[i].scalar_type();
    TORCH_CHECK(second_moment[i].scalar_type() == sdt && acc_a[i].scalar_type() == sdt &&
                    (!L.factored || acc_b[i].scalar_type() == sdt),
                op, ": the state tensors of parameter ", i, " must share one dtype");
    TORCH_CHECK(sums[i].scalar_type() == at::kFloat && sums[i].is_contiguous() &&
                    sums[i].numel() == (L.factored ? L.nrow + L.ncol : 0),
                op, ": sums[", i, "] must be the float32 output of lopt_reduce for this tensor");
    auto& J = in.jobs[i];
    J.p = p.data_ptr();
    J.g = g.data_ptr();
    J.m = momentum[i].data_ptr();
    J.v = second_moment[i].data_ptr();
    J.full = L.factored ? nullptr : acc_a[i].data_ptr();
    J.pdt = dtype_code(p.scalar_type());
    J.gdt = dtype_code(g.scalar_type());
    J.sdt = dtype_code(sdt);
    J.n = L.n;
    J.factored = L.factored;
    J.d0_is_a = L.d0_is_a;
    J.A = L.A, J.Da = L.Da, J.B = L.B, J.Db = L.Db, J.C = L.C;
    J.nrow = L.nrow, J.ncol = L.ncol;
  }
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
  auto fopts = at::TensorOptions().dtype(at::kFloat).device(at::kCPU);
  at::Tensor finite = at::ones({static_cast<int64_t>(nt)}, fopts);
  std::vector<at::Tensor> sums;
  sums.reserve(nt);
  for (size_t i = 0; i < nt; ++i) {
    const auto& g = grads[i];
    TORCH_CHECK(g.device().is_cpu(), op, ": grads[", i, "] is on ", g.device(), "; this is the CPU kernel");
    TORCH_CHECK(g.is_contiguous(), op, ": grads[", i, "] must be contiguous (call .contiguous() on it)");
    const auto t = g.scalar_type();
    TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf, op, ": grads[", i, "] has dtype ", t,
                "; the native backends take float32, bfloat16 or float16 gradients");
    sums.push_back(at::empty({L[i].factored ? L[i].nrow + L[i].ncol : 0}, fopts));
  }
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
      const Layout& L = in.L[i];
      if (!L.factored || fin[i] == 0.f || L.whole_n == 0) continue;  // zero elements: nothing to update
      prepare_rowcol(L, sums[i].data_ptr<float>(), acc_a[i], acc_b[i], in.H, prep[i]);
      in.jobs[i].rowv = prep[i].rowv.data();
      in.jobs[i].colv = prep[i].colv.data();
      // channels 13-24 are constant along d0 (rows) or d1 (columns): O(rows + cols)
      double* out = &total[i * kFeatures];
      const float* rv = prep[i].rowv.data();
      const float* cv = prep[i].colv.data();
      for (int k = 0; k < 3; ++k) {
        double a = 0, b = 0, c = 0, d = 0;
        for (int64_t r = 0; r < L.nrow; ++r) {
          const double x = rv[k * L.nrow + r], y = rv[(3 + k) * L.nrow + r];
          a += x * x;
          b += y * y;
        }
        for (int64_t e = 0; e < L.ncol; ++e) {
          const double x = cv[k * L.ncol + e], y = cv[(3 + k) * L.ncol + e];
          c += x * x;
          d += y * y;
        }
        out[spec::kChRow + k] = a * L.d0_size;  // local counts: each entry repeats along the shard's d0 / d1
        out[spec::kChRsqrtRow + k] = b * L.d0_size;
        out[spec::kChCol + k] = c * L.d1_size;
        out[spec::kChRsqrtCol + k] = d * L.d1_size;
      }
    }
  });
  const auto chunks = make_chunks(in.L, fin);
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
  check_same_length(nt, steps.size(), op, "steps");
  check_same_length(nt, skips.size(), op, "skips");
  check_same_length(nt, lrs.size(), op, "lrs");
  check_same_length(nt, wds.size(), op, "weight_decays");
  TORCH_CHECK(sumsq.scalar_type() == at::kFloat && sumsq.is_contiguous() && sumsq.dim() == 2 &&
                  sumsq.size(0) == static_cast<int64_t>(nt) && sumsq.size(1) == kFeatures,
              op, ": sumsq must be the (n_tensors, 28) float32 output of lopt_sumsq");
  TORCH_CHECK(mlp.size() == 6, op, ": mlp must be (W1, b1, W2, b2, W3, b3), got ", mlp.size(), " tensors");
  const int64_t shapes[6][2] = {{kHidden, kFeatures + kTimescales}, {kHidden, 1}, {kHidden, kHidden}, {kHidden, 1},
                                {2, kHidden},                       {2, 1}};
  // K meta-weight sets back to back in every mlp tensor (K = 1 for one optimizer)
  const int64_t sets = mlp[0].numel() / (shapes[0][0] * shapes[0][1]);
  for (int k = 0; k < 6; ++k) {
    const auto& w = mlp[k];
    TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() && w.device().is_cpu() && sets >= 1 &&
                    w.numel() == sets * shapes[k][0] * shapes[k][1],
                op, ": mlp[", k, "] must be a contiguous float32 CPU tensor of K·", shapes[k][0] * shapes[k][1],
                " elements (K sets of the 39→32→32→2 meta-network, K = ", sets, "); got ", w.sizes(), " ",
                w.scalar_type());
  }
  TORCH_CHECK(weight_index.empty() || weight_index.size() == nt, op, ": weight_index must be empty or give one "
              "meta-weight set per tensor; got ", weight_index.size(), " for ", nt, " tensors");
  std::vector<int64_t> widx(nt, 0);
  for (size_t i = 0; i < weight_index.size(); ++i) {
    TORCH_CHECK(weight_index[i] >= 0 && weight_index[i] < sets, op, ": weight_index[", i, "] = ", weight_index[i],
                " is not one of the ", sets, " meta-weight sets in mlp");
    widx[i] = weight_index[i];
  }
  for (size_t i = 0; i < nt; ++i) {
    for (const auto& t : {steps[i], skips[i]})
      TORCH_CHECK(t.numel() == 1 && t.scalar_type() == at::kFloat && t.device().is_cpu(), op,
                  ": steps/skips[", i, "] must be float32 scalars on the CPU");
  }
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
      const Layout& L = in.L[i];
      if (fin[i] == 0.f || L.whole_n == 0) continue;  // zero elements: only the step count moves
      auto& J = in.jobs[i];
      if (L.factored) {
        prepare_rowcol(L, sums[i].data_ptr<float>(), acc_a[i], acc_b[i], in.H, prep[i]);
        J.rowv = prep[i].rowv.data();
        J.colv = prep[i].colv.data();
      }
      // normalization folded into layer 1's columns, time features into its bias
      float scale[kFeatures];
      for (int j = 0; j < kFeatures; ++j)
        scale[j] = 1.0f / std::sqrt(spec::kEpsNormalize + sq[i * kFeatures + j] / static_cast<float>(L.whole_n));
      const float t = steps[i].data_ptr<float>()[0];
      float tf[kTimescales];
      for (int q = 0; q < kTimescales; ++q) tf[q] = std::tanh(t / spec::timescale(q) - 1.0f);
      float* wf = &w1f[i * kHidden * kFeatures];
      float* bf = &b1f[i * kHidden];
      const float* W1 = mlp[0].data_ptr<float>() + widx[i] * nW1;
      const float* B1 = mlp[1].data_ptr<float>() + widx[i] * kHidden;
      for (int o = 0; o < kHidden; ++o) {
        const float* row = W1 + o * (kFeatures + kTimescales);
        for (int j = 0; j < kFeatures; ++j) wf[o * kFeatures + mulo_cpu::row_of_channel(j)] = row[j] * scale[j];
        float acc = B1[o];
        for (int q = 0; q < kTimescales; ++q) acc += row[kFeatures + q] * tf[q];
        bf[o] = acc;
      }
      J.w1 = wf;
      J.b1 = bf;
      if (L.factored) {
        fold_rowcol(L, wf, prep[i]);
        J.rowt = prep[i].rowt.data();
        J.colt = prep[i].colt.data();
      }
      J.lr = static_cast<float>(lrs[i]);
      J.wdlr = static_cast<float>(wds[i] * lrs[i]);
    }
  });
  const auto chunks = make_chunks(in.L, fin);
  const Kernels K = current_kernels();
  const int64_t nc = static_cast<int64_t>(chunks.size());
#pragma omp parallel for num_threads(num_threads()) schedule(dynamic, 1)
  for (int64_t c = 0; c < nc; ++c) {
    const Chunk& ch = chunks[c];
    K.apply(in.jobs[ch.tensor], in.H, nets[widx[ch.tensor]], ch.start, ch.end);
  }
  for (size_t i = 0; i < nt; ++i) {
    if (fin[i] == 0.f) {
      skips[i].data_ptr<float>()[0] += 1.0f;
      continue;
    }
    const Layout& L = in.L[i];
    if (L.factored && L.whole_n > 0) {  // the new Adafactor accumulators (the apply pass read them from `prep`)
      for (int k = 0; k < 3; ++k) {
        for (int64_t r = 0; r < L.nrow; ++r) write_f(acc_a[i], k * L.nrow + r, prep[i].rowv[k * L.nrow + r]);
        for (int64_t c = 0; c < L.ncol; ++c) write_f(acc_b[i], k * L.ncol + c, prep[i].colv[k * L.ncol + c]);
      }
    }
    steps[i].data_ptr<float>()[0] += 1.0f;
  }
}

}  // namespace mulo
