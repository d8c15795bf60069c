// Host side shared by the CPU and CUDA implementations of the mulo::lopt_* ops: argument checks, the
// [A, Da, B, Db, C] view of each tensor (Layout, lopt_desc.h), the hyper vector (math::Hyper) and the one
// builder of the per-tensor descriptor table (describe) that both devices' kernels read
// (docs/ALGORITHM.md §1, ARCHITECTURE.md "backend contract").
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "lopt_desc.h"
#include "lopt_math.h"
#include "lopt_spec.h"

namespace mulo {

using spec::kFeatures;  // the algorithm's constants: lopt_spec.h, generated from mulo/lopt/spec.py
using spec::kHidden;
using spec::kNumHyper;
using spec::kTimescales;

// `d1`, `d0`: physical factored axes (mulo.lopt.shapes.physical_factored_dims) or -1, -1 for rank < 2.
inline Layout make_layout(at::IntArrayRef sizes, int64_t d1, int64_t d0, const char* op, size_t i) {
  Layout L;
  L.n = 1;
  for (auto s : sizes) L.n *= s;
  L.whole_n = L.n;
  if (d0 < 0 || d1 < 0) return L;
  const int64_t rank = static_cast<int64_t>(sizes.size());
  TORCH_CHECK(d0 < rank && d1 < rank && d0 != d1, op, ": dims for tensor ", i, " are (d1=", d1, ", d0=", d0,
              ") but the tensor has rank ", rank, "; pass mulo.lopt.shapes.physical_factored_dims(shape, layout)");
  L.factored = true;
  const int64_t a = d0 < d1 ? d0 : d1, b = d0 < d1 ? d1 : d0;
  L.d0_is_a = d0 == a;
  for (int64_t k = 0; k < a; ++k) L.A *= sizes[k];
  L.Da = sizes[a];
  for (int64_t k = a + 1; k < b; ++k) L.B *= sizes[k];
  L.Db = sizes[b];
  for (int64_t k = b + 1; k < rank; ++k) L.C *= sizes[k];
  L.d0_size = L.whole_d0 = sizes[d0];
  L.d1_size = L.whole_d1 = sizes[d1];
  // products over the other axes, not n / size: a zero-size axis must not zero (or divide) the other one
  L.nrow = 1;
  L.ncol = 1;
  L.nmean = 1;  // entries of the row accumulator's mean over d1 (the row accumulator without d1 as well)
  for (int64_t k = 0; k < rank; ++k) {
    if (k != d0) L.nrow *= sizes[k];
    if (k != d1) L.ncol *= sizes[k];
    if (k != d0 && k != d1) L.nmean *= sizes[k];
  }
  return L;
}

// Applies the optional whole-tensor geometry of a shard: `whole` holds (d0 size, d1 size, numel) per tensor
// (empty: every tensor is whole), `row_acc_sums[i]` the pass-A `row_acc_sum` (3·nmean floats) or an empty
// tensor. Checks that a shard fits inside its whole tensor.
template <class R>
void apply_geometry(std::vector<R>& layouts, at::IntArrayRef whole, at::TensorList row_acc_sums, const char* op,
                    std::optional<at::Device> device = std::nullopt) {
  const size_t nt = layouts.size();
  TORCH_CHECK(whole.empty() || whole.size() == 3 * nt, op, ": whole needs 3 entries (d0 size, d1 size, numel) ",
              "per tensor, or none; got ", whole.size(), " for ", nt, " tensors");
  TORCH_CHECK(row_acc_sums.empty() || row_acc_sums.size() == nt, op, ": row_acc_sums needs one tensor per ",
              "tensor (empty where d1 is not split), or none; got ", row_acc_sums.size(), " for ", nt);
  for (size_t i = 0; i < nt; ++i) {
    Layout& L = layouts[i];
    if (!whole.empty()) {
      const int64_t d0 = whole[3 * i], d1 = whole[3 * i + 1], n = whole[3 * i + 2];
      TORCH_CHECK(n >= L.n && (!L.factored || (d0 >= L.d0_size && d1 >= L.d1_size)), op, ": whole geometry of ",
                  "tensor ", i, " (d0 ", d0, ", d1 ", d1, ", numel ", n, ") is smaller than its local shard (d0 ",
                  L.d0_size, ", d1 ", L.d1_size, ", numel ", L.n, ")");
      if (L.factored) L.whole_d0 = d0, L.whole_d1 = d1;
      L.whole_n = n;
    }
    if (!row_acc_sums.empty() && row_acc_sums[i].numel() > 0) {
      const auto& t = row_acc_sums[i];
      TORCH_CHECK(device.has_value() ? t.device() == *device : true, op, ": row_acc_sums[", i, "] is on ",
                  t.device(), " but the parameters are on ", device.value_or(at::kCPU));
      TORCH_CHECK(L.factored && t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == 3 * L.nmean, op,
                  ": row_acc_sums[", i, "] must be a contiguous float32 tensor of 3·", L.nmean,
                  " elements (pass A's row_acc_sum of a tensor split along d1), got ", t.numel(), " ",
                  t.scalar_type());
      L.row_acc_sum = t.data_ptr<float>();
    }
  }
}

inline void check_same_length(size_t n, size_t m, const char* op, const char* what) {
  TORCH_CHECK(n == m, op, ": ", what, " has ", m, " entries but params has ", n, "; pass one per parameter");
}

inline void check_state(const at::Tensor& t, const at::Tensor& p, int64_t numel, const char* op, const char* what,
                        size_t i) {
  TORCH_CHECK(t.device() == p.device(), op, ": ", what, "[", i, "] is on ", t.device(), " but params[", i,
              "] is on ", p.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", what, "[", i, "] must be contiguous (MuLO allocates it so; call ",
              ".contiguous() on state loaded from elsewhere)");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, op, ": ", what, "[", i,
              "] has dtype ", t.scalar_type(), "; the native backends keep state in float32 or bfloat16 ",
              "(use backend='reference' for float64)");
  TORCH_CHECK(t.numel() == numel, op, ": ", what, "[", i, "] has ", t.numel(), " elements, expected ", numel);
}

// ``member_axis_optional``: a population of one member may pass each gradient without the leading member axis
// of its (1, ...) parameter stack (no view per tensor and step on the host; the kernels read the same elements)
inline void check_param_grad(const at::Tensor& p, const at::Tensor& g, const char* op, size_t i,
                             bool member_axis_optional = false) {
  TORCH_CHECK(p.is_contiguous(), op, ": params[", i, "] must be contiguous (the Python backend passes a ",
              "contiguous copy of non-contiguous parameters)");
  TORCH_CHECK(g.is_contiguous(), op, ": grads[", i, "] must be contiguous (call .contiguous() on it)");
  TORCH_CHECK(g.sizes() == p.sizes() || (member_axis_optional && p.dim() >= 1 && g.sizes() == p.sizes().slice(1)),
              op, ": grads[", i, "] has shape ", g.sizes(), " but params[", i, "] has shape ", p.sizes());
  TORCH_CHECK(g.device() == p.device(), op, ": grads[", i, "] is on ", g.device(), ", params[", i, "] on ",
              p.device());
  const auto pt = p.scalar_type();
  TORCH_CHECK(pt == at::kFloat || pt == at::kBFloat16 || pt == at::kHalf, op, ": params[", i, "] has dtype ", pt,
              "; the native backends run float32, bfloat16 and float16 parameters (use backend='reference')");
  TORCH_CHECK(g.scalar_type() == pt || g.scalar_type() == at::kFloat, op, ": grads[", i, "] has dtype ",
              g.scalar_type(), "; pass it in the parameter's dtype (", pt, ") or float32");
}

inline int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return kF32;
    case at::kBFloat16:
      return kBF16;
    case at::kHalf:
      return kF16;
    default:
      TORCH_CHECK(false, "mulo: unsupported dtype ", t);
  }
}

// The op's hyper vector (mulo.lopt.spec.HYPER_ORDER) as the kernels take it.
inline math::Hyper make_hyper(at::ArrayRef<double> h, const char* op) {
  TORCH_CHECK(h.size() == kNumHyper, op, ": hyper needs ", kNumHyper,
              " values (β_m ×3, β_v, β_f ×3, exp_mult, step_mult, time_clamp, nominal), got ", h.size());
  math::Hyper H;
  for (int k = 0; k < 3; ++k) {
    // the reference forms (1 - β) from a float32 tensor of decays: same rounding here
    H.bm[k] = static_cast<float>(h[spec::kHyperBetaM0 + k]);
    H.om[k] = 1.0f - H.bm[k];
    H.bf[k] = static_cast<float>(h[spec::kHyperBetaF0 + k]);
    H.of[k] = 1.0f - H.bf[k];
  }
  H.bv = static_cast<float>(h[spec::kHyperBetaV]);
  H.ov = static_cast<float>(1.0 - h[spec::kHyperBetaV]);
  H.exp_mult = static_cast<float>(h[spec::kHyperExpMult]);
  H.step_mult = static_cast<float>(h[spec::kHyperStepMult]);
  H.time_clamp = static_cast<float>(h[spec::kHyperTimeClamp]);
  H.nominal = static_cast<float>(h[spec::kHyperNominal]);
  return H;
}

// One record per tensor with its Layout filled in (`R`: Layout or a record derived from it).
template <class R = Layout>
std::vector<R> layouts(at::TensorList ts, at::IntArrayRef dims, const char* op) {
  TORCH_CHECK(dims.size() == 2 * ts.size(), op, ": dims needs 2 entries (d1, d0) per tensor, got ", dims.size(),
              " for ", ts.size(), " tensors");
  std::vector<R> out(ts.size());
  for (size_t i = 0; i < ts.size(); ++i)
    static_cast<Layout&>(out[i]) = make_layout(ts[i].sizes(), dims[2 * i], dims[2 * i + 1], op, i);
  return out;
}

// Pass A's gradients: on `device` (the kernel's device type; CUDA: all on grads[0]'s device), contiguous, of
// a supported dtype. Returns the sums tensor of each (float32, nrow + ncol entries).
template <class R>
std::vector<at::Tensor> check_reduce_args(const char* op, at::DeviceType device, at::TensorList grads,
                                          const std::vector<R>& L) {
  std::vector<at::Tensor> sums;
  sums.reserve(grads.size());
  for (size_t i = 0; i < grads.size(); ++i) {
    const auto& g = grads[i];
    TORCH_CHECK(g.device().type() == device && g.device() == grads[0].device(), op, ": grads[", i, "] is on ",
                g.device(), "; this is the ", c10::DeviceTypeName(device), " kernel and every tensor of a call ",
                "must be on ", grads[0].device());
    TORCH_CHECK(g.is_contiguous(), op, ": grads[", i, "] must be contiguous (call .contiguous() on it)");
    const auto t = g.scalar_type();
    TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf, op, ": grads[", i, "] has dtype ", t,
                "; the native backends take float32, bfloat16 or float16 gradients");
    sums.push_back(at::zeros({L[i].factored ? L[i].nrow + L[i].ncol : 0}, g.options().dtype(at::kFloat)));
  }
  return sums;
}

// The one builder of the per-tensor descriptor table of passes B and C (both devices): checks every argument
// and fills the TensorDesc part of each record (`Desc` derives from TensorDesc and adds the device's scratch
// pointers, filled by the caller). Every tensor must be on params[0]'s device, of type `device`.
template <class Desc>
std::vector<Desc> describe(const char* op, at::DeviceType device, at::TensorList params, at::TensorList grads,
                           at::TensorList momentum, at::TensorList second_moment, at::TensorList acc_a,
                           at::TensorList acc_b, at::TensorList sums, const at::Tensor& finite, at::IntArrayRef dims,
                           at::IntArrayRef whole, at::TensorList row_acc_sums) {
  const size_t nt = params.size();
  for (auto [what, list] : {std::pair<const char*, at::TensorList>{"grads", grads}, {"momentum", momentum},
                            {"second_moment", second_moment}, {"acc_a", acc_a}, {"acc_b", acc_b}, {"sums", sums}})
    check_same_length(nt, list.size(), op, what);
  const at::Device dev = nt > 0 ? params[0].device() : at::Device(device);
  TORCH_CHECK(finite.dim() == 1 && finite.numel() == static_cast<int64_t>(nt) && finite.scalar_type() == at::kFloat &&
                  finite.is_contiguous() && finite.device() == dev,
              op, ": finite must be a contiguous float32 vector on ", dev, " with one entry per tensor (from ",
              "lopt_reduce)");
  std::vector<Desc> out = layouts<Desc>(params, dims, op);
  apply_geometry(out, whole, row_acc_sums, op, dev);
  for (size_t i = 0; i < nt; ++i) {
    const auto& p = params[i];
    const auto& g = grads[i];
    Desc& D = out[i];
    TORCH_CHECK(p.device().type() == device && p.device() == dev, op, ": params[", i, "] is on ", p.device(),
                "; this is the ", c10::DeviceTypeName(device), " kernel and every tensor of a call must be on ", dev);
    check_param_grad(p, g, op, i);
    check_state(momentum[i], p, 3 * D.n, op, "momentum", i);
    check_state(second_moment[i], p, D.n, op, "second_moment", i);
    check_state(acc_a[i], p, 3 * (D.factored ? D.nrow : D.n), op, D.factored ? "acc_a (row)" : "acc_a (full)", i);
    if (D.factored) check_state(acc_b[i], p, 3 * D.ncol, op, "acc_b (col)", i);
    const auto sdt = momentum[i].scalar_type();
    TORCH_CHECK(second_moment[i].scalar_type() == sdt && acc_a[i].scalar_type() == sdt &&
                    (!D.factored || acc_b[i].scalar_type() == sdt),
                op, ": the state tensors of parameter ", i, " must share one dtype");
    TORCH_CHECK(sums[i].scalar_type() == at::kFloat && sums[i].is_contiguous() && sums[i].device() == dev &&
                    sums[i].numel() == (D.factored ? D.nrow + D.ncol : 0),
                op, ": sums[", i, "] must be the float32 output of lopt_reduce for this tensor");
    D.p = p.data_ptr();
    D.g = g.data_ptr();
    D.m = momentum[i].data_ptr();
    D.v = second_moment[i].data_ptr();
    D.acc_a = acc_a[i].data_ptr();
    D.acc_b = D.factored ? acc_b[i].data_ptr() : nullptr;
    D.sums = sums[i].data_ptr<float>();
    D.pdt = dtype_code(p.scalar_type());
    D.gdt = dtype_code(g.scalar_type());
    D.sdt = dtype_code(sdt);
  }
  return out;
}

// The meta-network argument of pass C: (W1, b1, W2, b2, W3, b3), each holding K sets back to back; returns K.
// The output layer has 2 outputs, or 3 with the nominal term's head (the kernels check that against the hyper
// vector's nominal).
inline int64_t check_mlp(const char* op, at::TensorList mlp, at::Device dev) {
  TORCH_CHECK(mlp.size() == 6, op, ": mlp must be (W1, b1, W2, b2, W3, b3), got ", mlp.size(), " tensors");
  const int64_t in_sets = mlp[0].numel() / (kHidden * (kFeatures + kTimescales));
  const int64_t outs = in_sets >= 1 && mlp[5].numel() == in_sets * spec::kOutputNominal ? spec::kOutputNominal
                                                                                         : spec::kOutput;
  const int64_t shapes[6][2] = {{kHidden, kFeatures + kTimescales}, {kHidden, 1}, {kHidden, kHidden}, {kHidden, 1},
                                {outs, kHidden},                    {outs, 1}};
  const int64_t sets = mlp[0].numel() / (shapes[0][0] * shapes[0][1]);
  for (int k = 0; k < 6; ++k) {
    const auto& w = mlp[k];
    TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() && w.device() == dev && sets >= 1 &&
                    w.numel() == sets * shapes[k][0] * shapes[k][1],
                op, ": mlp[", k, "] must be a contiguous float32 tensor on ", dev, " of K·",
                shapes[k][0] * shapes[k][1], " elements (K sets of the 39→32→32→2 meta-network, →3 with the nominal head, K = ", sets,
                "); got ", w.sizes(), " ", w.scalar_type(), " on ", w.device());
  }
  return sets;
}

// Pass C's own arguments, checked and written into the table (step and skip counters, lr, weight decay).
// Returns K, the number of meta-weight sets stacked in mlp (each tensor holds K sets back to back), and the
// set of each tensor in `set_of` (weight_index; empty = set 0 for all).
template <class Desc>
int64_t describe_apply(const char* op, std::vector<Desc>& table, at::TensorList steps, at::TensorList skips,
                       const at::Tensor& sumsq, at::TensorList mlp, at::ArrayRef<double> lrs,
                       at::ArrayRef<double> wds, at::IntArrayRef weight_index, at::Device dev,
                       std::vector<int64_t>& set_of) {
  const size_t nt = table.size();
  check_same_length(nt, steps.size(), op, "steps");
  check_same_length(nt, skips.size(), op, "skips");
  check_same_length(nt, lrs.size(), op, "lrs");
  check_same_length(nt, wds.size(), op, "weight_decays");
  TORCH_CHECK(sumsq.scalar_type() == at::kFloat && sumsq.is_contiguous() && sumsq.dim() == 2 && sumsq.device() == dev &&
                  sumsq.size(0) == static_cast<int64_t>(nt) && sumsq.size(1) == kFeatures,
              op, ": sumsq must be the (n_tensors, 28) float32 output of lopt_sumsq");
  const int64_t sets = check_mlp(op, mlp, dev);
  TORCH_CHECK(weight_index.empty() || weight_index.size() == nt, op, ": weight_index must be empty or give one "
              "meta-weight set per tensor; got ", weight_index.size(), " for ", nt, " tensors");
  set_of.assign(nt, 0);
  for (size_t i = 0; i < weight_index.size(); ++i) {
    TORCH_CHECK(weight_index[i] >= 0 && weight_index[i] < sets, op, ": weight_index[", i, "] = ", weight_index[i],
                " is not one of the ", sets, " meta-weight sets in mlp");
    set_of[i] = weight_index[i];
  }
  for (size_t i = 0; i < nt; ++i) {
    for (const auto& t : {steps[i], skips[i]})
      TORCH_CHECK(t.numel() == 1 && t.scalar_type() == at::kFloat && t.device() == dev, op, ": steps/skips[", i,
                  "] must be float32 scalars on ", dev);
    table[i].step = steps[i].data_ptr<float>();
    table[i].skips = skips[i].data_ptr<float>();
    table[i].lr = static_cast<float>(lrs[i]);
    table[i].wdlr = static_cast<float>(wds[i] * lrs[i]);
  }
  return sets;
}

// The descriptor table of a stacked population step (lopt_population_step): every argument holds one (M, ...)
// stack per tensor, member j's slice of each is exactly a single optimizer's tensor (contiguous, so it starts
// at j·(numel/M)), and the table has M·n_tensors records, member-major (record j·n_tensors + i is member j's
// tensor i), pointing into the stacks; no per-member tensor is built. `dims` holds (d1, d0) of the MEMBER
// shape; steps/skips are (M,) float32; lrs has one entry per record; wds one per tensor; mlp holds M sets
// (member j uses set j, written to `set_of`). Checks every argument once per stack.
template <class Desc>
std::vector<Desc> describe_population(const char* op, at::TensorList params, at::TensorList grads,
                                      at::TensorList momentum, at::TensorList second_moment, at::TensorList acc_a,
                                      at::TensorList acc_b, at::TensorList steps, at::TensorList skips,
                                      at::TensorList mlp, at::ArrayRef<double> lrs, at::ArrayRef<double> wds,
                                      at::IntArrayRef dims, std::vector<int64_t>& set_of) {
  const size_t nt = params.size();
  for (auto [what, list] : {std::pair<const char*, at::TensorList>{"grads", grads}, {"momentum", momentum},
                            {"second_moment", second_moment}, {"acc_a", acc_a}, {"acc_b", acc_b}, {"steps", steps},
                            {"skips", skips}})
    check_same_length(nt, list.size(), op, what);
  check_same_length(nt, wds.size(), op, "weight_decays");
  TORCH_CHECK(dims.size() == 2 * nt, op, ": dims needs 2 entries (d1, d0) of the member shape per tensor, got ",
              dims.size(), " for ", nt, " tensors");
  const at::Device dev(at::kCPU);
  const int64_t members = check_mlp(op, mlp, dev);
  TORCH_CHECK(lrs.size() == nt * static_cast<size_t>(members), op, ": lrs needs one entry per member and tensor (",
              members, " × ", nt, ", member-major), got ", lrs.size());
  std::vector<Desc> out(nt * members);
  set_of.resize(nt * members);
  for (size_t i = 0; i < nt; ++i) {
    const auto& p = params[i];
    const auto& g = grads[i];
    TORCH_CHECK(p.device() == dev, op, ": params[", i, "] is on ", p.device(), "; this is the CPU kernel");
    TORCH_CHECK(p.dim() >= 1 && p.size(0) == members, op, ": params[", i, "] must be a stack (M, ...) of the M = ",
                members, " members of the meta-weights, got shape ", p.sizes());
    check_param_grad(p, g, op, i, members == 1);
    Layout L = make_layout(p.sizes().slice(1), dims[2 * i], dims[2 * i + 1], op, i);
    check_state(momentum[i], p, members * 3 * L.n, op, "momentum", i);
    check_state(second_moment[i], p, members * L.n, op, "second_moment", i);
    const int64_t na = 3 * (L.factored ? L.nrow : L.n), nb = L.factored ? 3 * L.ncol : 0;
    check_state(acc_a[i], p, members * na, op, L.factored ? "acc_a (row)" : "acc_a (full)", i);
    if (L.factored) check_state(acc_b[i], p, members * nb, op, "acc_b (col)", i);
    const auto sdt = momentum[i].scalar_type();
    TORCH_CHECK(second_moment[i].scalar_type() == sdt && acc_a[i].scalar_type() == sdt &&
                    (!L.factored || acc_b[i].scalar_type() == sdt),
                op, ": the state tensors of parameter ", i, " must share one dtype");
    for (const auto& t : {steps[i], skips[i]})
      TORCH_CHECK(t.numel() == members && t.scalar_type() == at::kFloat && t.is_contiguous() && t.device() == dev,
                  op, ": steps/skips[", i, "] must be contiguous float32 (M,) vectors on the CPU, M = ", members);
    const int pdt = dtype_code(p.scalar_type()), gdt = dtype_code(g.scalar_type()), sd = dtype_code(sdt);
    const int64_t pe = p.element_size(), ge = g.element_size(), se = momentum[i].element_size();
    char* pp = static_cast<char*>(p.data_ptr());
    const char* gp = static_cast<const char*>(g.data_ptr());
    char* mp = static_cast<char*>(momentum[i].data_ptr());
    char* vp = static_cast<char*>(second_moment[i].data_ptr());
    char* ap = static_cast<char*>(acc_a[i].data_ptr());
    char* bp = L.factored ? static_cast<char*>(acc_b[i].data_ptr()) : nullptr;
    float* step = steps[i].data_ptr<float>();
    float* skip = skips[i].data_ptr<float>();
    for (int64_t j = 0; j < members; ++j) {
      const size_t r = j * nt + i;
      Desc& D = out[r];
      static_cast<Layout&>(D) = L;
      D.p = pp + j * L.n * pe;
      D.g = gp + j * L.n * ge;
      D.m = mp + j * 3 * L.n * se;
      D.v = vp + j * L.n * se;
      D.acc_a = ap + j * na * se;
      D.acc_b = bp ? bp + j * nb * se : nullptr;
      D.pdt = pdt;
      D.gdt = gdt;
      D.sdt = sd;
      D.step = step + j;
      D.skips = skip + j;
      D.lr = static_cast<float>(lrs[r]);
      D.wdlr = static_cast<float>(wds[i] * lrs[r]);
      set_of[r] = j;
    }
  }
  return out;
}

}  // namespace mulo
