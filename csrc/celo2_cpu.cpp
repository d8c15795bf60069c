// CPU implementation of the mulo::celo2_* ops (celo2_ops.h): Celo2's passes A, B, C and E, each over all tensors
// of a call. OpenMP runs over chunks of all tensors at once (a chunk is whole slices, or part of one slice); the
// SIMD kernels of B, C and E (celo2_cpu_kernels.h) follow the instruction set μLO's kernels run with (cpu_isa).
// Per tensor the O(rows + cols) work is done here: the new Adafactor accumulators and their entry values
// (μLO's row_entry/col_entry), and per slice the normalization of the features and of the step.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <string>
#include <vector>

#include "celo2_cpu.h"
#include "celo2_math.h"
#include "celo2_ops.h"
#include "lopt_common.h"
#include "ops.h"

namespace mulo {
namespace {

using mulo_cpu::Celo2Job;
using Jobs = std::vector<Celo2Job>;

mulo_cpu::Celo2Kernels celo2_kernels() {
  const std::string isa = cpu_isa();
  if (isa == "avx512") return mulo_cpu::celo2_kernels_avx512();
  if (isa == "avx2") return mulo_cpu::celo2_kernels_avx2();
  return mulo_cpu::celo2_kernels_base();
}

// Celo2's decays in μLO's hyper vector (the shared accumulator math reads them from math::Hyper).
math::Hyper celo2_hyper(const char* op) {
  std::vector<double> h(spec::kNumHyper, 0.0);
  for (int k = 0; k < 3; ++k) {
    h[spec::kHyperBetaM0 + k] = celo2::kMomentumDecays[k];
    h[spec::kHyperBetaF0 + k] = celo2::kAdafactorDecays[k];
  }
  h[spec::kHyperBetaV] = celo2::kRmsDecay;
  h[spec::kHyperExpMult] = celo2::kExpMult;
  h[spec::kHyperStepMult] = 1.0;  // RMS_MULT multiplies the normalized step (celo2::step_scale), not d
  return make_hyper(h, op);
}

// Threads for `work` elements in `items` independent pieces: one below kParallelMin elements (a parallel region
// costs a scheduling quantum whenever a core is shared, more than a small call's whole work), else up to one per
// piece.
constexpr int64_t kParallelMin = int64_t{1} << 17;
int threads_for(int64_t work, int64_t items) {
  if (work < kParallelMin) return 1;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items)));
}

int64_t total_elements(const Jobs& jobs) {
  int64_t n = 0;
  for (const auto& J : jobs) n += J.n;
  return n;
}

// ---- pass A ---------------------------------------------------------------------------------------------------
template <class GT>
void reduce_tensor(const GT* g, const Layout& L, float* out, float* finite) {
  std::vector<double> row(L.nrow, 0.0), col(L.ncol, 0.0);
  double* on_a = L.d0_is_a ? row.data() : col.data();  // indexed without axis a
  double* on_b = L.d0_is_a ? col.data() : row.data();  // indexed without axis b
  bool ok = true;
  int64_t e = 0;
  for (int64_t x = 0; x < L.A; ++x)
    for (int64_t i = 0; i < L.Da; ++i)
      for (int64_t y = 0; y < L.B; ++y) {
        double* pb = on_b + ((x * L.Da + i) * L.B + y) * L.C;
        for (int64_t j = 0; j < L.Db; ++j) {
          double* pa = on_a + ((x * L.B + y) * L.Db + j) * L.C;
          for (int64_t z = 0; z < L.C; ++z, ++e) {
            const float gv = static_cast<float>(g[e]);
            ok = ok && celo2::finite_grad(gv);
            const double s = celo2::grad_sq(gv);
            pa[z] += s;
            pb[z] += s;
          }
        }
      }
  for (int64_t r = 0; r < L.nrow; ++r) out[r] = static_cast<float>(row[r]);
  for (int64_t c = 0; c < L.ncol; ++c) out[L.nrow + c] = static_cast<float>(col[c]);
  *finite = ok ? 1.f : 0.f;
}

// ---- per tensor: accumulators and their entry values (O(rows + cols)) ----------------------------------------
// Pass B: the new row/col accumulators from the old ones and pass A's sums, written in place.
void commit_accumulators(const Layout& L, const float* sums, float* row, float* col, const math::Hyper& H) {
  for (int k = 0; k < 3; ++k) {
    for (int64_t e = 0; e < L.nrow; ++e)
      row[k * L.nrow + e] = math::new_acc(H, k, row[k * L.nrow + e], sums[e], static_cast<float>(L.whole_d0));
    for (int64_t e = 0; e < L.ncol; ++e)
      col[k * L.ncol + e] = math::new_acc(H, k, col[k * L.ncol + e], sums[L.nrow + e], static_cast<float>(L.whole_d1));
  }
}

struct Entries {
  std::vector<float> rowv, colv;  // [kAccValues][entries] (structure of arrays, as the kernels gather them)
};

// The values the element passes read per row/column entry (acc_k, rsqrt(acc_k + 1e-8), factor_k) from the
// current accumulators; the row factor divides by the mean of the row accumulator over d1 (double).
void entry_values(const Layout& L, const float* row, const float* col, Entries& P) {
  const int64_t nr = L.nrow, nc = L.ncol, nm = L.nmean;
  P.rowv.assign(static_cast<size_t>(nr) * math::kAccValues, 0.f);
  P.colv.assign(static_cast<size_t>(nc) * math::kAccValues, 0.f);
  std::vector<double> total(static_cast<size_t>(3 * nm), 0.0);
  for (int k = 0; k < 3; ++k)
    for (int64_t e = 0; e < nr; ++e) total[k * nm + L.mean_index(e)] += row[k * nr + e];
  for (int64_t e = 0; e < nr; ++e) {
    float r[3], mean[3];
    for (int k = 0; k < 3; ++k) {
      r[k] = row[k * nr + e];
      mean[k] = static_cast<float>(total[k * nm + L.mean_index(e)] / static_cast<double>(L.d1_size));
    }
    math::row_entry(r, mean, [&](int j, float x) { P.rowv[j * nr + e] = x; });
  }
  for (int64_t e = 0; e < nc; ++e) {
    const float c[3] = {col[e], col[nc + e], col[2 * nc + e]};
    math::col_entry(c, [&](int j, float x) { P.colv[j * nc + e] = x; });
  }
}

// ---- the descriptor table and the slices ---------------------------------------------------------------------
struct Table {
  Jobs jobs;
  std::vector<int64_t> first_slice;  // per tensor: its first slice among all of the call's
  int64_t slices = 0;
  math::Hyper H;
  const float* finite = nullptr;
};

void set_slices(const char* op, at::TensorList params, Table& T) {
  T.first_slice.resize(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const auto sizes = params[i].sizes();
    TORCH_CHECK(sizes.size() >= 2, op, ": params[", i, "] has rank ", sizes.size(), "; Celo2's learned rule takes ",
                "tensors of rank ≥ 2 (rank ≤ 1 goes through AdamW)");
    Celo2Job& J = T.jobs[i];
    J.L = std::max<int64_t>(1, sizes[sizes.size() - 2] * sizes[sizes.size() - 1]);
    T.first_slice[i] = T.slices;
    T.slices += J.n / J.L;
  }
}

void check_float_state(const char* op, at::TensorList momentum, at::TensorList row, at::TensorList col) {
  for (size_t i = 0; i < momentum.size(); ++i)
    TORCH_CHECK(momentum[i].scalar_type() == at::kFloat && row[i].scalar_type() == at::kFloat &&
                    col[i].scalar_type() == at::kFloat,
                op, ": the state of params[", i, "] is ", momentum[i].scalar_type(), "; the cpu backend keeps Celo2's ",
                "state in float32 (mulo.Celo2 allocates it so; float64 runs on backend='reference')");
}

// The table of passes B, C and E: μLO's checked descriptor (describe) plus the slices and the hyper vector.
Table make_table(const char* op, at::TensorList params, at::TensorList grads, at::TensorList momentum,
                 at::TensorList second_moment, at::TensorList row, at::TensorList col, at::TensorList sums,
                 const at::Tensor& finite, at::IntArrayRef dims) {
  Table T;
  T.jobs = describe<Celo2Job>(op, at::kCPU, params, grads, momentum, second_moment, row, col, sums, finite, dims, {},
                              {});
  for (size_t i = 0; i < params.size(); ++i)
    TORCH_CHECK(T.jobs[i].factored, op, ": dims for params[", i, "] must be its factored axes (d1, d0), not -1");
  check_float_state(op, momentum, row, col);
  set_slices(op, params, T);
  T.H = celo2_hyper(op);
  T.finite = finite.data_ptr<float>();
  return T;
}

// Every finite tensor's accumulator-entry values (from its current row/col state) into the table.
std::vector<Entries> prepare_entries(Table& T, at::TensorList row, at::TensorList col) {
  std::vector<Entries> prep(T.jobs.size());
  for (size_t i = 0; i < T.jobs.size(); ++i) {  // O(rows + cols) each: not worth a parallel region
    Celo2Job& J = T.jobs[i];
    if (T.finite[i] == 0.f || J.n == 0) continue;
    entry_values(J, row[i].data_ptr<float>(), col[i].data_ptr<float>(), prep[i]);
    J.rowv = prep[i].rowv.data();
    J.colv = prep[i].colv.data();
  }
  return prep;
}

// A tensor (n_slices, width) float32 of per-slice sums, checked.
const float* slice_sums(const char* op, const char* what, const at::Tensor& t, int64_t slices, int64_t width) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu() &&
                  t.numel() == slices * width,
              op, ": ", what, " must be the contiguous float32 CPU output of the previous pass, ", slices, " × ",
              width, " values; got ", t.sizes(), " ", t.scalar_type());
  return t.data_ptr<float>();
}

// Each feature's normalization per slice, from pass B's sums of squares.
std::vector<float> feature_scales(const char* op, const Table& T, const at::Tensor& sumsq) {
  const float* sq = slice_sums(op, "sumsq", sumsq, T.slices, celo2::kFeatures);
  std::vector<float> scale(static_cast<size_t>(T.slices) * celo2::kFeatures);
  for (size_t i = 0; i < T.jobs.size(); ++i)
    for (int64_t s = T.first_slice[i]; s < T.first_slice[i] + T.jobs[i].n / T.jobs[i].L; ++s)
      for (int j = 0; j < celo2::kFeatures; ++j)
        scale[s * celo2::kFeatures + j] = celo2::slice_scale(sq[s * celo2::kFeatures + j], T.jobs[i].L);
  return scale;
}

// The step's normalization per slice from its sums of squares.
std::vector<float> step_scales(const Table& T, const double* sq) {
  std::vector<float> scale(static_cast<size_t>(T.slices));
  for (size_t i = 0; i < T.jobs.size(); ++i)
    for (int64_t s = T.first_slice[i]; s < T.first_slice[i] + T.jobs[i].n / T.jobs[i].L; ++s)
      scale[s] = celo2::step_scale(sq[s], T.jobs[i].L);
  return scale;
}

// The meta-network's K sets and each tensor's set, into the table.
void set_network(const char* op, Table& T, at::TensorList mlp, at::IntArrayRef weight_index) {
  constexpr int64_t F = celo2::kFeatures, H = celo2::kHidden;
  TORCH_CHECK(mlp.size() == 6, op, ": mlp must be (W1, b1, W2, b2, W3, b3), got ", mlp.size(), " tensors");
  const int64_t per_set[6] = {H * F, H, H * H, H, 2 * H, 2};
  const int64_t sets = mlp[0].numel() / per_set[0];
  for (int k = 0; k < 6; ++k)
    TORCH_CHECK(mlp[k].scalar_type() == at::kFloat && mlp[k].is_contiguous() && mlp[k].device().is_cpu() &&
                    sets >= 1 && mlp[k].numel() == sets * per_set[k],
                op, ": mlp[", k, "] must be a contiguous float32 CPU tensor of K·", per_set[k], " elements (K sets ",
                "of Celo2's 30→8→8→2 network, W as (out, in); K = ", sets, "); got ", mlp[k].sizes(), " ",
                mlp[k].scalar_type());
  TORCH_CHECK(weight_index.empty() || weight_index.size() == T.jobs.size(), op, ": weight_index must be empty or ",
              "give one meta-weight set per tensor; got ", weight_index.size(), " for ", T.jobs.size(), " tensors");
  for (size_t i = 0; i < T.jobs.size(); ++i) {
    const int64_t k = weight_index.empty() ? 0 : weight_index[i];
    TORCH_CHECK(k >= 0 && k < sets, op, ": weight_index[", i, "] = ", k, " is not one of the ", sets,
                " meta-weight sets in mlp");
    Celo2Job& J = T.jobs[i];
    J.w1 = mlp[0].data_ptr<float>() + k * per_set[0];
    J.b1 = mlp[1].data_ptr<float>() + k * per_set[1];
    J.w2 = mlp[2].data_ptr<float>() + k * per_set[2];
    J.b2 = mlp[3].data_ptr<float>() + k * per_set[3];
    J.w3 = mlp[4].data_ptr<float>() + k * per_set[4];
    J.b3 = mlp[5].data_ptr<float>() + k * per_set[5];
  }
}

// Learning rates, weight decays and the step/skip counters of pass E.
void set_update(const char* op, Table& T, at::TensorList steps, at::TensorList skips, at::ArrayRef<double> lrs,
                at::ArrayRef<double> wds) {
  const size_t nt = T.jobs.size();
  check_same_length(nt, steps.size(), op, "steps");
  check_same_length(nt, skips.size(), op, "skips");
  check_same_length(nt, lrs.size(), op, "lrs");
  check_same_length(nt, wds.size(), op, "wds");
  for (size_t i = 0; i < nt; ++i) {
    for (const auto& t : {steps[i], skips[i]})
      TORCH_CHECK(t.numel() == 1 && t.scalar_type() == at::kFloat && t.device().is_cpu(), op, ": steps[", i,
                  "] and skips[", i, "] must be float32 CPU scalars (the state's step and nonfinite_skips)");
    T.jobs[i].step = steps[i].data_ptr<float>();
    T.jobs[i].skips = skips[i].data_ptr<float>();
    T.jobs[i].lr = static_cast<float>(lrs[i]);
    T.jobs[i].wd = static_cast<float>(wds[i]);
  }
}

void count_steps(const Table& T) {
  for (size_t i = 0; i < T.jobs.size(); ++i) *(T.finite[i] != 0.f ? T.jobs[i].step : T.jobs[i].skips) += 1.0f;
}

// ---- chunks over all tensors, and per-slice sums in a fixed order --------------------------------------------
struct Chunk {
  int tensor;
  int64_t start, end;
  int64_t partial;  // index of its first slice's partial sums
};

constexpr int64_t kChunk = 12288;  // elements per work item (a multiple of every ISA's tile)

// Whole slices per chunk, or a slice of more than kChunk elements in pieces; finite tensors only.
std::vector<Chunk> make_chunks(const Table& T, int64_t& partials) {
  std::vector<Chunk> chunks;
  partials = 0;
  for (size_t i = 0; i < T.jobs.size(); ++i) {
    const Celo2Job& J = T.jobs[i];
    if (T.finite[i] == 0.f || J.n == 0) continue;
    if (J.L >= kChunk) {
      for (int64_t s = 0; s < J.n; s += J.L)
        for (int64_t e = s; e < s + J.L; e += kChunk) chunks.push_back({static_cast<int>(i), e, std::min(e + kChunk, s + J.L), partials++});
      continue;
    }
    const int64_t per = (kChunk / J.L) * J.L;
    for (int64_t e = 0; e < J.n; e += per) {
      const int64_t end = std::min(e + per, J.n);
      chunks.push_back({static_cast<int>(i), e, end, partials});
      partials += (end - e) / J.L;
    }
  }
  return chunks;
}

template <class Fn>
void run_chunks(const Table& T, const std::vector<Chunk>& chunks, Fn&& fn) {
  const int64_t nc = static_cast<int64_t>(chunks.size());
  const int nt = threads_for(total_elements(T.jobs), nc);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (int64_t c = 0; c < nc; ++c) fn(chunks[c]);
}

// Runs a summing kernel (width values per slice) over the chunks; returns the per-slice sums of the call.
std::vector<double> sum_slices(const Table& T, const std::vector<Chunk>& chunks, int64_t partials, int width,
                               mulo_cpu::Celo2SumsFn kernel) {
  std::vector<double> partial(static_cast<size_t>(partials) * width, 0.0);
  run_chunks(T, chunks, [&](const Chunk& c) {
    kernel(T.jobs[c.tensor], T.H, c.start, c.end, &partial[c.partial * width]);
  });
  std::vector<double> total(static_cast<size_t>(T.slices) * width, 0.0);
  for (const Chunk& c : chunks) {  // fixed order: the result does not depend on scheduling
    const int64_t L = T.jobs[c.tensor].L, s0 = c.start / L, count = (c.end - 1) / L - s0 + 1;
    for (int64_t s = 0; s < count; ++s)
      for (int w = 0; w < width; ++w)
        total[(T.first_slice[c.tensor] + s0 + s) * width + w] += partial[(c.partial + s) * width + w];
  }
  return total;
}

at::Tensor to_tensor(const std::vector<double>& v, at::IntArrayRef shape) {
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  for (size_t k = 0; k < v.size(); ++k) o[k] = static_cast<float>(v[k]);
  return out;
}

}  // namespace

std::tuple<std::vector<at::Tensor>, at::Tensor> celo2_reduce_cpu(at::TensorList grads, at::IntArrayRef dims) {
  const char* op = "mulo::celo2_reduce";
  const auto L = layouts(grads, dims, op);
  std::vector<at::Tensor> sums = check_reduce_args(op, at::kCPU, grads, L);
  const int64_t nt = static_cast<int64_t>(grads.size());
  for (int64_t i = 0; i < nt; ++i)
    TORCH_CHECK(L[i].factored, op, ": dims for grads[", i, "] must be its factored axes (d1, d0), not -1");
  at::Tensor finite = at::ones({nt}, at::TensorOptions().dtype(at::kFloat));
  float* fin = finite.data_ptr<float>();
  int64_t work = 0;
  for (const auto& l : L) work += l.n;
  const int threads = threads_for(work, nt);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
  for (int64_t i = 0; i < nt; ++i) {
    float* out = sums[i].data_ptr<float>();
    switch (grads[i].scalar_type()) {
      case at::kBFloat16:
        reduce_tensor(grads[i].data_ptr<c10::BFloat16>(), L[i], out, fin + i);
        break;
      case at::kHalf:
        reduce_tensor(grads[i].data_ptr<c10::Half>(), L[i], out, fin + i);
        break;
      default:
        reduce_tensor(grads[i].data_ptr<float>(), L[i], out, fin + i);
    }
  }
  return {sums, finite};
}

at::Tensor celo2_sumsq_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                           at::TensorList second_moment, at::TensorList row, at::TensorList col, at::TensorList sums,
                           const at::Tensor& finite, at::IntArrayRef dims) {
  const char* op = "mulo::celo2_sumsq";
  Table T = make_table(op, params, grads, momentum, second_moment, row, col, sums, finite, dims);
  for (size_t i = 0; i < T.jobs.size(); ++i)
    if (T.finite[i] != 0.f && T.jobs[i].n > 0)
      commit_accumulators(T.jobs[i], T.jobs[i].sums, row[i].data_ptr<float>(), col[i].data_ptr<float>(), T.H);
  const auto prep = prepare_entries(T, row, col);
  int64_t partials = 0;
  const auto chunks = make_chunks(T, partials);
  return to_tensor(sum_slices(T, chunks, partials, celo2::kFeatures, celo2_kernels().sumsq),
                   {T.slices, celo2::kFeatures});
}

at::Tensor celo2_direction_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                               at::TensorList second_moment, at::TensorList row, at::TensorList col,
                               at::TensorList sums, const at::Tensor& finite, at::IntArrayRef dims,
                               const at::Tensor& sumsq, at::TensorList mlp, at::TensorList directions,
                               at::IntArrayRef weight_index) {
  const char* op = "mulo::celo2_direction";
  Table T = make_table(op, params, grads, momentum, second_moment, row, col, sums, finite, dims);
  TORCH_CHECK(directions.empty() || directions.size() == params.size(), op, ": directions must be empty (only the ",
              "sums of squares) or one float32 tensor per parameter; got ", directions.size());
  for (size_t i = 0; i < directions.size(); ++i) {
    const auto& d = directions[i];
    TORCH_CHECK(d.scalar_type() == at::kFloat && d.is_contiguous() && d.device().is_cpu() && d.numel() == T.jobs[i].n,
                op, ": directions[", i, "] must be a contiguous float32 CPU tensor of ", T.jobs[i].n, " elements");
    if (T.finite[i] == 0.f)
      d.zero_();  // a skipped tensor's direction: zeros (Newton–Schulz keeps them 0; pass E ignores them)
    else
      T.jobs[i].dir = d.data_ptr<float>();
  }
  const auto scale = feature_scales(op, T, sumsq);
  for (size_t i = 0; i < T.jobs.size(); ++i) T.jobs[i].fscale = scale.data() + T.first_slice[i] * celo2::kFeatures;
  set_network(op, T, mlp, weight_index);
  const auto prep = prepare_entries(T, row, col);
  int64_t partials = 0;
  const auto chunks = make_chunks(T, partials);
  return to_tensor(sum_slices(T, chunks, partials, 1, celo2_kernels().direction), {T.slices});
}

void celo2_apply_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                     at::TensorList second_moment, at::TensorList row, at::TensorList col, at::TensorList sums,
                     const at::Tensor& finite, at::IntArrayRef dims, const at::Tensor& sumsq, at::TensorList mlp,
                     const at::Tensor& dsumsq, at::TensorList steps, at::TensorList skips, at::ArrayRef<double> lrs,
                     at::ArrayRef<double> wds, at::IntArrayRef weight_index) {
  const char* op = "mulo::celo2_apply";
  Table T = make_table(op, params, grads, momentum, second_moment, row, col, sums, finite, dims);
  const auto fscale = feature_scales(op, T, sumsq);
  const float* dsq = slice_sums(op, "dsumsq", dsumsq, T.slices, 1);
  const auto sscale = step_scales(T, std::vector<double>(dsq, dsq + T.slices).data());
  for (size_t i = 0; i < T.jobs.size(); ++i) {
    T.jobs[i].fscale = fscale.data() + T.first_slice[i] * celo2::kFeatures;
    T.jobs[i].sscale = sscale.data() + T.first_slice[i];
  }
  set_network(op, T, mlp, weight_index);
  set_update(op, T, steps, skips, lrs, wds);
  const auto prep = prepare_entries(T, row, col);
  int64_t partials = 0;
  const auto chunks = make_chunks(T, partials);
  const auto kernel = celo2_kernels().apply;
  run_chunks(T, chunks, [&](const Chunk& c) { kernel(T.jobs[c.tensor], T.H, c.start, c.end); });
  count_steps(T);
}

void celo2_apply_steps_cpu(at::TensorList params, at::TensorList directions, at::TensorList steps,
                           at::TensorList skips, const at::Tensor& finite, at::ArrayRef<double> lrs,
                           at::ArrayRef<double> wds) {
  const char* op = "mulo::celo2_apply_steps";
  const size_t nt = params.size();
  check_same_length(nt, directions.size(), op, "directions");
  TORCH_CHECK(finite.scalar_type() == at::kFloat && finite.is_contiguous() && finite.numel() == static_cast<int64_t>(nt),
              op, ": finite must be a contiguous float32 vector with one entry per tensor (from celo2_reduce)");
  Table T;
  T.jobs.resize(nt);
  for (size_t i = 0; i < nt; ++i) {
    const auto& p = params[i];
    const auto& d = directions[i];
    TORCH_CHECK(p.device().is_cpu() && p.is_contiguous(), op, ": params[", i, "] must be a contiguous CPU tensor");
    TORCH_CHECK(d.scalar_type() == at::kFloat && d.is_contiguous() && d.device().is_cpu() && d.sizes() == p.sizes(),
                op, ": directions[", i, "] must be a contiguous float32 CPU tensor of the parameter's shape ",
                p.sizes(), "; got ", d.sizes(), " ", d.scalar_type());
    Celo2Job& J = T.jobs[i];
    J.n = p.numel();
    J.p = p.data_ptr();
    J.pdt = J.gdt = dtype_code(p.scalar_type());
    J.steps = d.data_ptr<float>();
  }
  set_slices(op, params, T);
  T.H = celo2_hyper(op);
  T.finite = finite.data_ptr<float>();
  set_update(op, T, steps, skips, lrs, wds);
  // the step's sums of squares per slice, then its normalization
  std::vector<double> sq(static_cast<size_t>(T.slices), 0.0);
  const int threads = threads_for(total_elements(T.jobs), T.slices);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16) if (threads > 1)
  for (int64_t s = 0; s < T.slices; ++s) {
    const size_t i = std::upper_bound(T.first_slice.begin(), T.first_slice.end(), s) - T.first_slice.begin() - 1;
    const float* d = T.jobs[i].steps + (s - T.first_slice[i]) * T.jobs[i].L;
    double a = 0.0;
    for (int64_t k = 0; k < T.jobs[i].L; ++k) a += static_cast<double>(d[k]) * d[k];
    sq[s] = a;
  }
  const auto sscale = step_scales(T, sq.data());
  for (size_t i = 0; i < nt; ++i) T.jobs[i].sscale = sscale.data() + T.first_slice[i];
  int64_t partials = 0;
  const auto chunks = make_chunks(T, partials);
  const auto kernel = celo2_kernels().apply_steps;
  run_chunks(T, chunks, [&](const Chunk& c) { kernel(T.jobs[c.tensor], T.H, c.start, c.end); });
  count_steps(T);
}

}  // namespace mulo
