// Declarations of the mulo::lopt_* op implementations (registered in bindings.cpp). Schemas:
//
//   lopt_reduce(Tensor[] grads, int[] dims) -> (Tensor[] sums, Tensor finite)
//       pass A: per tensor the float32 sums of s = g² + 1e-30 over the row axis d0 then over the column axis
//       d1, concatenated (empty for rank < 2), and a float32 flag per tensor (1: every g² finite).
//   lopt_sumsq(Tensor[] params, Tensor[] grads, Tensor[] momentum, Tensor[] second_moment, Tensor[] acc_a,
//              Tensor[] acc_b, Tensor[] sums, Tensor finite, int[] dims, float[] hyper, int[] whole=[],
//              Tensor[]? row_acc_sums=None) -> Tensor
//       pass B: (n_tensors, 28) float32 sums over all (local) elements of each feature channel squared.
//   lopt_apply(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum, Tensor(c!)[] second_moment,
//              Tensor(d!)[] acc_a, Tensor(e!)[] acc_b, Tensor(f!)[] steps, Tensor(g!)[] skips, Tensor[] sums,
//              Tensor sumsq, Tensor finite, Tensor[] mlp, float[] lrs, float[] wds, int[] dims,
//              float[] hyper, int[] weight_index=[], int[] whole=[], Tensor[]? row_acc_sums=None) -> ()
//       pass C: the update, in place. weight_index (CPU only; empty = all 0): per tensor, which of the K
//       meta-weight sets stacked in mlp it uses (each mlp tensor holds K sets back to back: a population
//       of optimizers, one set per member, in one call).
//   lopt_population_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum, Tensor(c!)[] second_moment,
//              Tensor(d!)[] acc_a, Tensor(e!)[] acc_b, Tensor(f!)[] steps, Tensor(g!)[] skips, Tensor[] mlp,
//              float[] lrs, float[] wds, int[] dims, float[] hyper) -> ()
//       passes A, B and C of a population of M optimizers in one call (CPU only): every tensor argument is a
//       stack (M, ...) of the members' tensors (params[i][j] is member j's tensor i; steps/skips[i] are (M,)),
//       mlp holds M meta-weight sets (member j uses set j), lrs one entry per member and tensor (member-major:
//       lrs[j·n_tensors + i]), wds one per tensor, dims (d1, d0) of the MEMBER shape. The same result as the
//       three ops on every member's slices with weight_index = member (mulo/backends/native.py), without a
//       tensor per member.
// acc_a is `row` (rank ≥ 2) or `full` (rank < 2); acc_b is `col` or an empty tensor. dims holds (d1, d0)
// per tensor as physical axes, (-1, -1) for rank < 2. hyper = (β_m ×3, β_v, β_f ×3, exp_mult, step_mult,
// time_clamp).
// mlp = (W1, b1, W2, b2, W3, b3) float32 on the params' device. Sums A and B are plain sums, so a sharded
// caller can all-reduce them between the passes; it then passes each shard's whole-tensor geometry:
// whole = (d0 size, d1 size, numel) per tensor (empty: every tensor is whole; the means over d0/d1 and the
// normalization divide by these), and row_acc_sums[i] = the all-reduced Σ over d1 of the new row accumulator
// (3·nmean float32) where d1 is split, an empty tensor elsewhere (mulo/backends/native.py, ShardGeometry).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

namespace mulo {

std::tuple<std::vector<at::Tensor>, at::Tensor> lopt_reduce_cpu(at::TensorList grads, at::IntArrayRef dims);
at::Tensor lopt_sumsq_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                          at::TensorList second_moment, at::TensorList acc_a, at::TensorList acc_b,
                          at::TensorList sums, const at::Tensor& finite, at::IntArrayRef dims,
                          at::ArrayRef<double> hyper, at::IntArrayRef whole, std::optional<at::TensorList> row_acc_sums);
void lopt_apply_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                    at::TensorList second_moment, at::TensorList acc_a, at::TensorList acc_b, at::TensorList steps,
                    at::TensorList skips, at::TensorList sums, const at::Tensor& sumsq, const at::Tensor& finite,
                    at::TensorList mlp, at::ArrayRef<double> lrs, at::ArrayRef<double> wds, at::IntArrayRef dims,
                    at::ArrayRef<double> hyper, at::IntArrayRef weight_index, at::IntArrayRef whole,
                    std::optional<at::TensorList> row_acc_sums);
void lopt_population_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                              at::TensorList second_moment, at::TensorList acc_a, at::TensorList acc_b,
                              at::TensorList steps, at::TensorList skips, at::TensorList mlp, at::ArrayRef<double> lrs,
                              at::ArrayRef<double> wds, at::IntArrayRef dims, at::ArrayRef<double> hyper);

// The CPU instruction set the kernels run with ("avx512", "avx2" or "base"); set_cpu_isa forces one
// (tests use it to cover every path the machine can run) and returns the previous choice.
std::string cpu_isa();
std::string set_cpu_isa(const std::string& isa);

#ifdef MULO_WITH_CUDA
std::tuple<std::vector<at::Tensor>, at::Tensor> lopt_reduce_cuda(at::TensorList grads, at::IntArrayRef dims);
at::Tensor lopt_sumsq_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                           at::TensorList second_moment, at::TensorList acc_a, at::TensorList acc_b,
                           at::TensorList sums, const at::Tensor& finite, at::IntArrayRef dims,
                           at::ArrayRef<double> hyper, at::IntArrayRef whole, std::optional<at::TensorList> row_acc_sums);
void lopt_apply_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                     at::TensorList second_moment, at::TensorList acc_a, at::TensorList acc_b, at::TensorList steps,
                     at::TensorList skips, at::TensorList sums, const at::Tensor& sumsq, const at::Tensor& finite,
                     at::TensorList mlp, at::ArrayRef<double> lrs, at::ArrayRef<double> wds, at::IntArrayRef dims,
                     at::ArrayRef<double> hyper, at::IntArrayRef weight_index, at::IntArrayRef whole,
                    std::optional<at::TensorList> row_acc_sums);
#endif

}  // namespace mulo
