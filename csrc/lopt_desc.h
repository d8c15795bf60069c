// The plain types both devices' kernels read (torch-free, host and device): storage dtypes, the
// [A, Da, B, Db, C] view of a factored tensor with its accumulator indexing, the pointers and scalars of one
// parameter tensor of a call, and the hyper vector and accumulator-entry layout of the shared per-element
// math (lopt_math.h). lopt_common.h builds the table from the op's arguments (one builder for
// the CPU and CUDA ops); each device derives its own record from TensorDesc to add its scratch pointers.
#pragma once

#include <cstdint>

#include "lopt_spec.h"

namespace mulo {

// Storage dtypes of parameters, gradients and state (math is float32 whatever the storage).
enum DType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// Coordinates of one element in the [A, Da, B, Db, C] view: x·Da·B·Db·C + i·B·Db·C + y·Db·C + j·C + z.
struct Coords {
  int64_t x, i, y, j, z;
};

// Shape of one parameter as the kernels see it (docs/ALGORITHM.md §1). A factored tensor (rank ≥ 2) is viewed as
// [A, Da, B, Db, C] with Da, Db its two factored axes (a < b); the row accumulator reduces the largest axis
// d0, the column accumulator d1. Element-wise tensors are contiguous in the parameter's memory order.
struct Layout {
  int64_t n = 1;
  bool factored = false;
  bool d0_is_a = false;  // the largest axis d0 is the lower of the two factored axes
  int64_t A = 1, Da = 1, B = 1, Db = 1, C = 1;
  int64_t nrow = 0, ncol = 0;  // entries of the row (d0 reduced) and column (d1 reduced) accumulators
  int64_t d0_size = 1, d1_size = 1;
  int64_t nmean = 0;  // entries of the row accumulator's mean over d1
  // The WHOLE tensor's d0 and d1 sizes and element count: the means over d0/d1 and the normalization divide
  // by these. Equal to the local ones unless the tensor is a shard (FSDP2/DTensor, ShardGeometry).
  int64_t whole_d0 = 1, whole_d1 = 1, whole_n = 1;
  // Σ over the whole d1 of the new row accumulator, [3][nmean], when d1 is split across ranks (else null:
  // the row accumulator's mean over d1 is taken locally).
  const float* row_acc_sum = nullptr;

  MULO_HD Coords coords(int64_t e) const {
    Coords c;
    c.z = e % C;
    e /= C;
    c.j = e % Db;
    e /= Db;
    c.y = e % B;
    e /= B;
    c.i = e % Da;
    c.x = e / Da;
    return c;
  }
  // accumulator entries of an element: the entry index without axis a, and without axis b
  MULO_HD int64_t without_a(const Coords& c) const { return ((c.x * B + c.y) * Db + c.j) * C + c.z; }
  MULO_HD int64_t without_b(const Coords& c) const { return ((c.x * Da + c.i) * B + c.y) * C + c.z; }
  // the row (d0 reduced) and column (d1 reduced) accumulator entries of an element
  MULO_HD void entries(const Coords& c, int64_t& row, int64_t& col) const {
    const int64_t wa = without_a(c), wb = without_b(c);
    row = d0_is_a ? wa : wb;
    col = d0_is_a ? wb : wa;
  }
  // Entry of the row accumulator's mean over d1 that row entry `e` belongs to (the row entry without d1).
  MULO_HD int64_t mean_index(int64_t e) const {
    const int64_t z = e % C;
    if (d0_is_a) return (e / (C * Db)) * C + z;  // row entry ((x·B + y)·Db + w)·C + z
    const int64_t y = (e / C) % B, x = e / (C * B * Da);  // ((x·Da + w)·B + y)·C + z
    return (x * B + y) * C + z;
  }
};

// One parameter tensor of a call (passes B and C; pass A uses the geometry and g, sums).
struct TensorDesc : Layout {
  void* p = nullptr;        // parameter, dtype pdt
  const void* g = nullptr;  // gradient, dtype gdt (the parameter's or float32)
  void* m = nullptr;        // momentum (3, n), dtype sdt
  void* v = nullptr;        // second moment (n), dtype sdt
  void* acc_a = nullptr;    // rank < 2: the full accumulator (3, n); rank ≥ 2: the row accumulator (3, nrow)
  void* acc_b = nullptr;    // rank ≥ 2: the column accumulator (3, ncol)
  float* sums = nullptr;    // pass A: nrow row sums of s, then ncol column sums
  float* step = nullptr;    // pass C: the step counter t (float32 scalar)
  float* skips = nullptr;   // pass C: the non-finite skip counter
  int pdt = kF32, gdt = kF32, sdt = kF32;
  float lr = 0.f;    // lr_p
  float wdlr = 0.f;  // weight_decay · lr_p
};

namespace math {

// The hyper-parameter vector (spec::kHyper*, mulo.lopt.spec.HYPER_ORDER) as the kernels take it: every
// decay β with its complement 1 − β (lopt_common.h: make_hyper rounds both as the reference does).
struct Hyper {
  float bm[3], om[3];  // momentum decays β_m,k and 1 − β_m,k
  float bv, ov;        // second-moment decay β_v and 1 − β_v
  float bf[3], of[3];  // Adafactor decays β_f,k and 1 − β_f,k
  float exp_mult, step_mult;
  float time_clamp;  // the time features read min(t, time_clamp); +inf: no clamp
  float nominal;     // α of the nominal term (third output head); 0: none, μLO's update
};

// The values of one Adafactor accumulator entry that the element-wise passes read (both devices' scratch
// holds them per row/column entry): acc_k, rsqrt(acc_k + EPS_ACC_FEATURE), factor_k for k = 0..2.
enum AccValues : int { kAccValue = 0, kAccRsqrt = 3, kAccFactor = 6, kAccValues = 9 };

}  // namespace math
}  // namespace mulo
