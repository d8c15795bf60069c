// Host-side helpers shared by the CPU and CUDA implementations of the mulo::lopt_* ops: argument checks
// and the [A, Da, B, Db, C] view of a factored tensor (ALGORITHM.md §1, ARCHITECTURE.md "backend contract").
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "lopt_spec.h"

namespace mulo {

using spec::kFeatures;  // the algorithm's constants: lopt_spec.h, generated from mulo/lopt/spec.py
using spec::kHidden;
using spec::kNumHyper;
using spec::kTimescales;

// Shape of one parameter as the kernels see it.
struct Layout {
  int64_t n = 1;
  bool factored = false;
  bool d0_is_a = false;
  int64_t A = 1, Da = 1, B = 1, Db = 1, C = 1;
  int64_t nrow = 0, ncol = 0;  // entries of the row (d0 reduced) and column (d1 reduced) accumulators
  int64_t d0_size = 1, d1_size = 1;
  int64_t nmean = 0;
  // The WHOLE tensor's d0 and d1 sizes and element count: the means over d0/d1 and the normalization divide
  // by these. Equal to the local ones unless the tensor is a shard (FSDP2/DTensor, ShardGeometry).
  int64_t whole_d0 = 1, whole_d1 = 1, whole_n = 1;
  // Σ over the whole d1 of the new row accumulator, [3][nmean], when d1 is split across ranks (else null:
  // the row accumulator's mean over d1 is taken locally).
  const float* row_acc_sum = nullptr;
};

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
inline void apply_geometry(std::vector<Layout>& layouts, at::IntArrayRef whole, at::TensorList row_acc_sums,
                           const char* op) {
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

inline void check_param_grad(const at::Tensor& p, const at::Tensor& g, const char* op, size_t i) {
  TORCH_CHECK(p.is_contiguous(), op, ": params[", i, "] must be contiguous (the Python backend passes a ",
              "contiguous copy of non-contiguous parameters)");
  TORCH_CHECK(g.is_contiguous(), op, ": grads[", i, "] must be contiguous (call .contiguous() on it)");
  TORCH_CHECK(g.sizes() == p.sizes(), op, ": grads[", i, "] has shape ", g.sizes(), " but params[", i,
              "] has shape ", p.sizes());
  TORCH_CHECK(g.device() == p.device(), op, ": grads[", i, "] is on ", g.device(), ", params[", i, "] on ",
              p.device());
  const auto pt = p.scalar_type();
  TORCH_CHECK(pt == at::kFloat || pt == at::kBFloat16 || pt == at::kHalf, op, ": params[", i, "] has dtype ", pt,
              "; the native backends run float32, bfloat16 and float16 parameters (use backend='reference')");
  TORCH_CHECK(g.scalar_type() == pt || g.scalar_type() == at::kFloat, op, ": grads[", i, "] has dtype ",
              g.scalar_type(), "; pass it in the parameter's dtype (", pt, ") or float32");
}

}  // namespace mulo
