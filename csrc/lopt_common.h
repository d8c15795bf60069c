// Host-side helpers shared by the CPU and CUDA implementations of the mulo::lopt_* ops: argument checks
// and the [A, Da, B, Db, C] view of a factored tensor (ALGORITHM.md §1, ARCHITECTURE.md "backend contract").
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace mulo {

constexpr int kNumHyper = 9;  // β_m ×3, β_v, β_f ×3, exp_mult, step_mult
constexpr int kFeatures = 28;
constexpr int kHidden = 32;
constexpr int kTimescales = 11;
constexpr double kTimescaleValues[kTimescales] = {1.0,    3.0,    10.0,    30.0,    100.0,   300.0,
                                                   1000.0, 3000.0, 10000.0, 30000.0, 100000.0};

// Shape of one parameter as the kernels see it.
struct Layout {
  int64_t n = 1;
  bool factored = false;
  bool d0_is_a = false;
  int64_t A = 1, Da = 1, B = 1, Db = 1, C = 1;
  int64_t nrow = 0, ncol = 0;  // entries of the row (d0 reduced) and column (d1 reduced) accumulators
  int64_t d0_size = 1, d1_size = 1;
};

// `d1`, `d0`: physical factored axes (mulo.lopt.shapes.physical_factored_dims) or -1, -1 for rank < 2.
inline Layout make_layout(at::IntArrayRef sizes, int64_t d1, int64_t d0, const char* op, size_t i) {
  Layout L;
  L.n = 1;
  for (auto s : sizes) L.n *= s;
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
  L.d0_size = sizes[d0];
  L.d1_size = sizes[d1];
  L.nrow = L.n / (L.d0_size ? L.d0_size : 1);
  L.ncol = L.n / (L.d1_size ? L.d1_size : 1);
  return L;
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
