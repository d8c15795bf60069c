// The bookkeeping of pass C's tensor-core MLP (lopt_cuda.cu: apply_kernel), host and device, torch-free: which
// matrix element the kernel puts into which lane and register of mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32,
// where it stages features in shared memory, the order of layer 1's inputs, and the 3xTF32 split.
//
// The kernel calls these functions and nothing else for its fragment indexing, so a CPU test can check them:
// tests/backends/test_cuda_fragments.py compiles tests/backends/cuda_fragment_tables.cpp (which includes this
// header with a host compiler), and emulates the warp-level MMA from the PTX ISA's own statement of the fragment
// layouts (restated in the test, not taken from here): the staged 39→32→32→2 MLP equals the float64 MLP to 3xTF32
// accuracy, the shared-memory staging is free of bank conflicts.
//
// The MLP per warp: 32 elements = two m-tiles of 16 (M = elements), N = 8 output units per n-tile, K = 8 input
// units per k-step. Layer 1: 32 inputs (4 k-steps) → 32 (4 n-tiles); layer 2: 32 → 32; layer 3: 32 → 2 (one
// n-tile, outputs 2..7 zero). Every product is 3xTF32: x·w ≈ hi(x)·hi(w) + hi(x)·lo(w) + lo(x)·hi(w) with
// hi = x truncated to TF32 (its 13 low mantissa bits cleared, exact in TF32) and lo = x − hi (exact in fp32; the
// tensor core reads its 19 high bits): |error| ≤ ~2^-21 |x·w| per product, the fp32 path's order of rounding.
#pragma once

#include <stdint.h>

#include "lopt_desc.h"
#include "lopt_spec.h"

namespace mulo {
namespace frag {

constexpr int kLanes = 32;
constexpr int kTileM = 16;   // elements per m-tile
constexpr int kTileN = 8;    // output units per n-tile
constexpr int kTileK = 8;    // input units per k-step
constexpr int kUnits = 32;   // layer-1 inputs in kernel order (28 channels + 4 zero pads), 4 k-steps
constexpr int kMTiles = 2;   // m-tiles per warp: one element per lane
constexpr int kHiddenTiles = 4;  // n-tiles of layers 1-2, k-steps of layers 2-3
static_assert(kHiddenTiles * kTileN == spec::kHidden && kUnits == 4 * kTileK, "the MLP's shapes");
constexpr uint32_t kTf32HiMask = 0xffffe000u;  // sign, exponent and the 10 mantissa bits TF32 keeps

MULO_HD constexpr int group(int lane) { return lane >> 2; }  // the ISA's groupID
MULO_HD constexpr int quad(int lane) { return lane & 3; }    // the ISA's threadID_in_group

// ---- what the kernel puts where ---------------------------------------------------------------------------------
// A (elements × input units) of m-tile mt, k-step ks: register r of `lane` holds element a_elem, unit a_unit.
// A lane takes units 2q and 2q + 1 of a k-step (one 8-byte shared-memory load, or the two accumulator columns the
// same lane holds after the previous layer): the K order inside a k-step is a permutation, which the packed
// weights (b_unit) follow.
MULO_HD constexpr int a_elem(int mt, int lane, int r) { return kTileM * mt + group(lane) + 8 * (r & 1); }
MULO_HD constexpr int a_unit(int ks, int lane, int r) { return kTileK * ks + 2 * quad(lane) + (r >> 1); }
// B (input units × output units) of k-step ks, n-tile nt: register r of `lane` holds W[b_out][b_unit].
MULO_HD constexpr int b_unit(int ks, int lane, int r) { return kTileK * ks + 2 * quad(lane) + r; }
MULO_HD constexpr int b_out(int nt, int lane) { return kTileN * nt + group(lane); }
// C/D of m-tile mt, n-tile nt: register r of `lane` holds element c_elem, output unit c_out.
MULO_HD constexpr int c_elem(int mt, int lane, int r) { return kTileM * mt + group(lane) + 8 * (r >> 1); }
MULO_HD constexpr int c_out(int nt, int lane, int r) { return kTileN * nt + 2 * quad(lane) + (r & 1); }
// The next layer's A register r of k-step ks is this layer's accumulator register a_from_c(r) of n-tile ks.
MULO_HD constexpr int a_from_c(int r) { return r == 1 ? 2 : (r == 2 ? 1 : r); }

// Packed weights in shared memory: one float4 {hi b0, hi b1, lo b0, lo b1} per (k-step, n-tile, lane).
MULO_HD constexpr int b_slot(int ks, int nt, int lane, int n_tiles) { return (ks * n_tiles + nt) * kLanes + lane; }
constexpr int kPackedSlots = kHiddenTiles * kHiddenTiles * kLanes;  // layer 1 (4 k-steps) or 2
constexpr int kPackedSlots3 = kHiddenTiles * kLanes;                // layer 3 (4 k-steps, one n-tile)
constexpr int kW1Words = kHiddenTiles * kTileN * kUnits;           // layer 1 folded, unit order (before its bias)

// ---- feature staging: per warp 32 rows (elements) × 16 words (one half of layer 1's 32 inputs) ------------------
// The writer stores 16-byte chunks (one row per lane), the readers load the 8-byte pairs (units 2q, 2q + 1) of rows
// g and g + 8: the 16-byte chunk index is XOR-swizzled by the row so that both are free of bank conflicts.
constexpr int kStageWords = 16;
MULO_HD constexpr int stage_swizzle(int row) { return (((row >> 1) & 1) << 1) | ((row >> 2) & 1); }
MULO_HD constexpr int stage_word(int row, int unit) {
  return row * kStageWords + (((unit >> 2) ^ stage_swizzle(row)) << 2) + (unit & 3);
}

// ---- layer 1's inputs in kernel order -----------------------------------------------------------------------------
// Units 0-15: the 16 channels that vary per element of a factored tensor (0-12, 25-27). Units 16-21: value_k and
// rsqrt_k of the accumulator entry indexed WITHOUT axis a (in the 2-d tiles of lopt_cuda.cu: one per column,
// constant over a tile's rows), 24-29: those of the entry WITHOUT axis b (one per row); 22, 23, 30, 31: zero.
// The row entry (d0 reduced) is the one without a when d0 is axis a (Layout::d0_is_a). Rank < 2: any fixed
// assignment (d0_is_a false), both entries then being the element's full accumulator.
constexpr int kUnitEntryA = 16, kUnitEntryB = 24;
MULO_HD constexpr int unit_of_channel(int c, bool d0_is_a) {
  return c < spec::kChRow                  ? c
         : c >= spec::kChFacM              ? c - (spec::kChFacM - spec::kChRow)
         : c < spec::kChCol                ? (d0_is_a ? kUnitEntryA : kUnitEntryB) + (c - spec::kChRow)
         : c < spec::kChRsqrtRow           ? (d0_is_a ? kUnitEntryB : kUnitEntryA) + (c - spec::kChCol)
         : c < spec::kChRsqrtCol           ? (d0_is_a ? kUnitEntryA : kUnitEntryB) + 3 + (c - spec::kChRsqrtRow)
                                           : (d0_is_a ? kUnitEntryB : kUnitEntryA) + 3 + (c - spec::kChRsqrtCol);
}
// The channel of a unit, -1 for the zero pads (the inverse of unit_of_channel).
MULO_HD constexpr int channel_of_unit(int u, bool d0_is_a) {
  return u < spec::kChRow                        ? u
         : u < kUnitEntryA                       ? u + (spec::kChFacM - spec::kChRow)
         : (u & 7) >= 6                          ? -1
         : (((u < kUnitEntryB) == d0_is_a)       // the row entry's units
                ? ((u & 7) < 3 ? spec::kChRow + (u & 7) : spec::kChRsqrtRow + (u & 7) - 3)
                : ((u & 7) < 3 ? spec::kChCol + (u & 7) : spec::kChRsqrtCol + (u & 7) - 3));
}
// Units 16-31: the value (math::kAcc*) of the accumulator entry they read, -1 for the pads.
MULO_HD constexpr int entry_value_of_unit(int u) {
  return (u & 7) < 3 ? math::kAccValue + (u & 7) : ((u & 7) < 6 ? math::kAccRsqrt + (u & 7) - 3 : -1);
}

// ---- 3xTF32 --------------------------------------------------------------------------------------------------------
template <class To, class From>
MULO_HD inline To bit_cast(From x) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  union {
    From from;
    To to;
  } u = {x};
  return u.to;
}
MULO_HD inline float bits_float(uint32_t u) { return bit_cast<float>(u); }
MULO_HD inline uint32_t float_bits(float f) { return bit_cast<uint32_t>(f); }
// hi: x truncated to TF32 (exact in TF32); lo = x − hi (exact in fp32).
MULO_HD inline void split_tf32(float x, uint32_t& hi, uint32_t& lo) {
  hi = float_bits(x) & kTf32HiMask;
  lo = float_bits(x - bits_float(hi));
}

}  // namespace frag
}  // namespace mulo
