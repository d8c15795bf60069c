// Declarations of the mulo::celo2_* op implementations (registered in bindings.cpp): Celo2's fused passes
// (mulo/celo2/reference.py states the plan; mulo/celo2/cpu.py calls them). Every tensor of a call has rank ≥ 2
// and is the contiguous math view the rule reads ("slices" are its last two axes, a tensor's slices numbered
// consecutively after the previous tensor's); state is float32.
//
//   celo2_reduce(Tensor[] grads, int[] dims) -> (Tensor[] sums, Tensor finite)
//       A: per tensor the float32 sums of s = clamp(g, ±1000)² + 1e-30 over the row axis d0 then the column axis
//       d1, concatenated, and a float32 flag per tensor (1: every raw g finite). dims = (d1, d0) per tensor.
//   celo2_sumsq(Tensor[] params, Tensor[] grads, Tensor(a!)[] momentum, Tensor(b!)[] second_moment,
//               Tensor(c!)[] row, Tensor(d!)[] col, Tensor[] sums, Tensor finite, int[] dims) -> Tensor
//       B: commits the new accumulators (m, v, row, col) of every finite tensor and returns the features' sums
//       of squares per slice, (n_slices, 30) float32.
//   celo2_direction(..., Tensor[] sums, Tensor finite, int[] dims, Tensor sumsq, Tensor[] mlp,
//                   Tensor(e!)[] directions, int[] weight_index=[]) -> Tensor
//       C: the direction d of every element (written into directions[i], float32 in the tensor's shape, when the
//       list is not empty; zeros for a non-finite tensor) and Σ d² per slice, (n_slices,) float32.
//   celo2_apply(Tensor(a!)[] params, ..., Tensor sumsq, Tensor[] mlp, Tensor dsumsq, Tensor(f!)[] steps,
//               Tensor(g!)[] skips, float[] lrs, float[] wds, int[] weight_index=[]) -> ()
//       E without Newton–Schulz: d recomputed from the features, p ← p − lr·(d·rsqrt(1e-9 + mean d²) + wd·p).
//   celo2_apply_steps(Tensor(a!)[] params, Tensor[] directions, Tensor(b!)[] steps, Tensor(c!)[] skips,
//                     Tensor finite, float[] lrs, float[] wds) -> ()
//       E after Newton–Schulz: each slice's sum of squares of the given step, then the same update.
// The "..." are (params, grads, momentum, second_moment, row, col) as in celo2_sumsq. mlp = (W1, b1, W2, b2, W3, b3)
// float32, each holding K meta-weight sets back to back (W as (out, in): 8×30, 8×8, 2×8); weight_index gives the
// set of each tensor (empty: set 0) — a population of optimizers in one call.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace mulo {

std::tuple<std::vector<at::Tensor>, at::Tensor> celo2_reduce_cpu(at::TensorList grads, at::IntArrayRef dims);
at::Tensor celo2_sumsq_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                           at::TensorList second_moment, at::TensorList row, at::TensorList col, at::TensorList sums,
                           const at::Tensor& finite, at::IntArrayRef dims);
at::Tensor celo2_direction_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                               at::TensorList second_moment, at::TensorList row, at::TensorList col,
                               at::TensorList sums, const at::Tensor& finite, at::IntArrayRef dims,
                               const at::Tensor& sumsq, at::TensorList mlp, at::TensorList directions,
                               at::IntArrayRef weight_index);
void celo2_apply_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                     at::TensorList second_moment, at::TensorList row, at::TensorList col, at::TensorList sums,
                     const at::Tensor& finite, at::IntArrayRef dims, const at::Tensor& sumsq, at::TensorList mlp,
                     const at::Tensor& dsumsq, at::TensorList steps, at::TensorList skips, at::ArrayRef<double> lrs,
                     at::ArrayRef<double> wds, at::IntArrayRef weight_index);
void celo2_apply_steps_cpu(at::TensorList params, at::TensorList directions, at::TensorList steps,
                           at::TensorList skips, const at::Tensor& finite, at::ArrayRef<double> lrs,
                           at::ArrayRef<double> wds);

}  // namespace mulo
