// Prints, as JSON, every index the CUDA apply kernel takes from csrc/lopt_cuda_mma.cuh (compiled here with the
// host compiler: the header is host + device), and the header's 3xTF32 split of a few thousand floats.
// tests/backends/test_cuda_fragments.py builds and runs it, and checks the tables against the PTX ISA's fragment
// layouts by emulating the warp-level MMA.
#include <stdint.h>
#include <stdio.h>

#include "lopt_cuda_mma.cuh"

namespace f = mulo::frag;

static void table3(const char* name, int n0, int (*fn)(int, int, int)) {
  printf("\"%s\": [", name);
  for (int i = 0; i < n0; ++i) {
    printf("%s[", i ? "," : "");
    for (int lane = 0; lane < f::kLanes; ++lane) {
      printf("%s[", lane ? "," : "");
      for (int r = 0; r < 4; ++r) printf("%s%d", r ? "," : "", fn(i, lane, r));
      printf("]");
    }
    printf("]");
  }
  printf("],\n");
}

static int a_elem(int mt, int lane, int r) { return f::a_elem(mt, lane, r); }
static int a_unit(int ks, int lane, int r) { return f::a_unit(ks, lane, r); }
static int b_unit(int ks, int lane, int r) { return r < 2 ? f::b_unit(ks, lane, r) : -1; }
static int b_out(int nt, int lane, int) { return f::b_out(nt, lane); }
static int c_elem(int mt, int lane, int r) { return f::c_elem(mt, lane, r); }
static int c_out(int nt, int lane, int r) { return f::c_out(nt, lane, r); }
static int slot4(int ks, int lane, int nt) { return f::b_slot(ks, nt, lane, f::kHiddenTiles); }
static int slot1(int ks, int lane, int) { return f::b_slot(ks, 0, lane, 1); }

int main() {
  printf("{\n");
  printf("\"lanes\": %d, \"tile_m\": %d, \"tile_n\": %d, \"tile_k\": %d, \"units\": %d, \"m_tiles\": %d, ", f::kLanes,
         f::kTileM, f::kTileN, f::kTileK, f::kUnits, f::kMTiles);
  printf("\"hidden_tiles\": %d, \"stage_words\": %d, \"unit_entry_a\": %d, \"unit_entry_b\": %d,\n", f::kHiddenTiles,
         f::kStageWords, f::kUnitEntryA, f::kUnitEntryB);
  printf("\"ch_row\": %d, \"ch_col\": %d, \"ch_rsqrt_row\": %d, \"ch_rsqrt_col\": %d, \"ch_fac_m\": %d, ",
         mulo::spec::kChRow, mulo::spec::kChCol, mulo::spec::kChRsqrtRow, mulo::spec::kChRsqrtCol, mulo::spec::kChFacM);
  printf("\"features\": %d, \"acc_value\": %d, \"acc_rsqrt\": %d, \"hidden\": %d, \"outputs\": %d,\n",
         mulo::spec::kFeatures, mulo::math::kAccValue, mulo::math::kAccRsqrt, mulo::spec::kHidden, mulo::spec::kOutput);
  table3("a_elem", f::kMTiles, a_elem);
  table3("a_unit", f::kUnits / f::kTileK, a_unit);
  table3("b_unit", f::kUnits / f::kTileK, b_unit);
  table3("b_out", f::kHiddenTiles, b_out);
  table3("c_elem", f::kMTiles, c_elem);
  table3("c_out", f::kHiddenTiles, c_out);
  table3("b_slot4", f::kHiddenTiles, slot4);  // [ks][lane][nt]
  table3("b_slot1", f::kHiddenTiles, slot1);  // [ks][lane][0] (layer 3: one n-tile)
  printf("\"a_from_c\": [%d, %d, %d, %d],\n", f::a_from_c(0), f::a_from_c(1), f::a_from_c(2), f::a_from_c(3));
  printf("\"stage_word\": [");
  for (int row = 0; row < f::kLanes; ++row) {
    printf("%s[", row ? "," : "");
    for (int u = 0; u < f::kStageWords; ++u) printf("%s%d", u ? "," : "", f::stage_word(row, u));
    printf("]");
  }
  printf("],\n");
  for (int d0a = 0; d0a < 2; ++d0a) {
    printf("\"unit_of_channel_%d\": [", d0a);
    for (int c = 0; c < mulo::spec::kFeatures; ++c) printf("%s%d", c ? "," : "", f::unit_of_channel(c, d0a != 0));
    printf("],\n\"channel_of_unit_%d\": [", d0a);
    for (int u = 0; u < f::kUnits; ++u) printf("%s%d", u ? "," : "", f::channel_of_unit(u, d0a != 0));
    printf("],\n");
  }
  printf("\"entry_value_of_unit\": [");
  for (int u = 0; u < f::kUnits; ++u) printf("%s%d", u ? "," : "", u < f::kUnitEntryA ? -1 : f::entry_value_of_unit(u));
  printf("],\n");
  // the split of pseudo-random floats over many binades: x, hi, lo as bit patterns
  printf("\"split\": [");
  uint32_t state = 12345u;
  for (int i = 0; i < 4096; ++i) {
    state = state * 1664525u + 1013904223u;
    const uint32_t exp = 90u + (state >> 27) * 2u;  // 2^-37 .. 2^25
    state = state * 1664525u + 1013904223u;
    const uint32_t bits = (state & 0x807fffffu) | (exp << 23);
    uint32_t hi, lo;
    f::split_tf32(f::bits_float(bits), hi, lo);
    printf("%s[%u,%u,%u]", i ? "," : "", bits, hi, lo);
  }
  printf("]\n}\n");
  return 0;
}
