// The only binding file: defines the mulo::lopt_* ops once (schemas mark what they mutate), registers the
// CPU kernels and, when built with CUDA, the CUDA kernels; the fake (meta) implementations for
// torch.compile are registered from Python (mulo/backends/native.py). Also a few plain functions that
// describe the build.
#include <torch/extension.h>
#include <torch/library.h>

#include "celo2_ops.h"
#include "ops.h"

TORCH_LIBRARY(mulo, m) {
  m.def("lopt_reduce(Tensor[] grads, int[] dims) -> (Tensor[], Tensor)");
  m.def(
      "lopt_sumsq(Tensor[] params, Tensor[] grads, Tensor[] momentum, Tensor[] second_moment, Tensor[] acc_a, "
      "Tensor[] acc_b, Tensor[] sums, Tensor finite, int[] dims, float[] hyper, int[] whole=[], "
      "Tensor[]? row_acc_sums=None) -> Tensor");
  m.def(
      "lopt_apply(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum, Tensor(c!)[] second_moment, "
      "Tensor(d!)[] acc_a, Tensor(e!)[] acc_b, Tensor(f!)[] steps, Tensor(g!)[] skips, Tensor[] sums, "
      "Tensor sumsq, Tensor finite, Tensor[] mlp, float[] lrs, float[] wds, int[] dims, float[] hyper, "
      "int[] weight_index=[], int[] whole=[], Tensor[]? row_acc_sums=None) -> ()");
  m.def(
      "lopt_population_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum, Tensor(c!)[] second_moment, "
      "Tensor(d!)[] acc_a, Tensor(e!)[] acc_b, Tensor(f!)[] steps, Tensor(g!)[] skips, Tensor[] mlp, float[] lrs, "
      "float[] wds, int[] dims, float[] hyper) -> ()");
  // Celo2's passes (celo2_ops.h)
  m.def("celo2_reduce(Tensor[] grads, int[] dims) -> (Tensor[], Tensor)");
  m.def(
      "celo2_sumsq(Tensor[] params, Tensor[] grads, Tensor(a!)[] momentum, Tensor(b!)[] second_moment, "
      "Tensor(c!)[] row, Tensor(d!)[] col, Tensor[] sums, Tensor finite, int[] dims) -> Tensor");
  m.def(
      "celo2_direction(Tensor[] params, Tensor[] grads, Tensor[] momentum, Tensor[] second_moment, Tensor[] row, "
      "Tensor[] col, Tensor[] sums, Tensor finite, int[] dims, Tensor sumsq, Tensor[] mlp, Tensor(a!)[] directions, "
      "int[] weight_index=[]) -> Tensor");
  m.def(
      "celo2_apply(Tensor(a!)[] params, Tensor[] grads, Tensor[] momentum, Tensor[] second_moment, Tensor[] row, "
      "Tensor[] col, Tensor[] sums, Tensor finite, int[] dims, Tensor sumsq, Tensor[] mlp, Tensor dsumsq, "
      "Tensor(b!)[] steps, Tensor(c!)[] skips, float[] lrs, float[] wds, int[] weight_index=[]) -> ()");
  m.def(
      "celo2_apply_steps(Tensor(a!)[] params, Tensor[] directions, Tensor(b!)[] steps, Tensor(c!)[] skips, "
      "Tensor finite, float[] lrs, float[] wds) -> ()");
}

TORCH_LIBRARY_IMPL(mulo, CPU, m) {
  m.impl("lopt_reduce", &mulo::lopt_reduce_cpu);
  m.impl("lopt_sumsq", &mulo::lopt_sumsq_cpu);
  m.impl("lopt_apply", &mulo::lopt_apply_cpu);
  m.impl("lopt_population_step", &mulo::lopt_population_step_cpu);
  m.impl("celo2_reduce", &mulo::celo2_reduce_cpu);
  m.impl("celo2_sumsq", &mulo::celo2_sumsq_cpu);
  m.impl("celo2_direction", &mulo::celo2_direction_cpu);
  m.impl("celo2_apply", &mulo::celo2_apply_cpu);
  m.impl("celo2_apply_steps", &mulo::celo2_apply_steps_cpu);
}

#ifdef MULO_WITH_CUDA
namespace mulo {
std::string cuda_archs();
}
TORCH_LIBRARY_IMPL(mulo, CUDA, m) {
  m.impl("lopt_reduce", &mulo::lopt_reduce_cuda);
  m.impl("lopt_sumsq", &mulo::lopt_sumsq_cuda);
  m.impl("lopt_apply", &mulo::lopt_apply_cuda);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mulo native kernels (the ops are torch.ops.mulo.*)";
  m.def("cpu_isa", &mulo::cpu_isa, "CPU instruction set the kernels run with: avx512, avx2 or base");
  m.def("set_cpu_isa", &mulo::set_cpu_isa, "Force a CPU instruction set; returns the previous one");
  m.def("has_cuda", []() {
#ifdef MULO_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.def("cuda_archs", []() -> std::string {
#ifdef MULO_WITH_CUDA
    return mulo::cuda_archs();
#else
    return "";
#endif
  }, "Comma-separated SM architectures the CUDA kernels were compiled for (empty without CUDA)");
}
