// The only binding file: defines the mulo::lopt_* ops once (schemas mark what they mutate), registers the
// CPU kernels and, when built with CUDA, the CUDA kernels; the fake (meta) implementations for
// torch.compile are registered from Python (mulo/backends/native.py). Also a few plain functions that
// describe the build.
#include <torch/extension.h>
#include <torch/library.h>

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
}

TORCH_LIBRARY_IMPL(mulo, CPU, m) {
  m.impl("lopt_reduce", &mulo::lopt_reduce_cpu);
  m.impl("lopt_sumsq", &mulo::lopt_sumsq_cpu);
  m.impl("lopt_apply", &mulo::lopt_apply_cpu);
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
