// GENERATED from mulo/lopt/spec.py by `python -m mulo.lopt.spec > csrc/lopt_spec.h`; do not edit.
// The one specification of the per-element μLO algorithm (tests/lopt/test_spec.py checks this file).
#pragma once

#if defined(__CUDACC__)
#define MULO_HD __host__ __device__
#else
#define MULO_HD
#endif

namespace mulo {
namespace spec {

constexpr float kEpsGradSq = 1e-30f;
constexpr float kEpsSafeRsqrt = 1e-09f;
constexpr float kEpsRms = 1e-06f;
constexpr float kEpsAccFeature = 1e-08f;
constexpr float kEpsNormalize = 1e-05f;

// feature channels: index of the first channel of each group (width 1 or 3)
constexpr int kChG = 0;  // 1: gradient
constexpr int kChP = 1;  // 1: parameter value before the update
constexpr int kChM = 2;  // 3: momentum m_k
constexpr int kChV = 5;  // 1: second moment v
constexpr int kChMRsqrtV = 6;  // 3: m_k · rsqrt(v + EPS_RMS)
constexpr int kChRsqrtV = 9;  // 1: rsqrt(v + EPS_RMS)
constexpr int kChFacG = 10;  // 3: g times the Adafactor factors of decay k
constexpr int kChRow = 13;  // 3: row accumulator r_k (full accumulator u_k for rank < 2)
constexpr int kChCol = 16;  // 3: column accumulator c_k (u_k for rank < 2)
constexpr int kChRsqrtRow = 19;  // 3: rsqrt(row_k + EPS_ACC_FEATURE)
constexpr int kChRsqrtCol = 22;  // 3: rsqrt(col_k + EPS_ACC_FEATURE)
constexpr int kChFacM = 25;  // 3: m_k times the Adafactor factors of decay k

constexpr int kFeatures = 28;
constexpr int kTimescales = 11;
constexpr int kInput = 39;
constexpr int kHidden = 32;
constexpr int kOutput = 2;
constexpr int kOutputNominal = 3;  // with the nominal term's magnitude head

// τ_q of the time features tanh(t/τ_q − 1); constexpr, so host and device code (nvcc
// --expt-relaxed-constexpr) both call it
MULO_HD constexpr float timescale(int q) {
  if (q == 0) return 1.0f;
  if (q == 1) return 3.0f;
  if (q == 2) return 10.0f;
  if (q == 3) return 30.0f;
  if (q == 4) return 100.0f;
  if (q == 5) return 300.0f;
  if (q == 6) return 1000.0f;
  if (q == 7) return 3000.0f;
  if (q == 8) return 10000.0f;
  if (q == 9) return 30000.0f;
  if (q == 10) return 100000.0f;
  return 0.0f;
}

// the hyper-parameter vector: beta_m0, beta_m1, beta_m2, beta_v, beta_f0, beta_f1, beta_f2, exp_mult, step_mult, time_clamp, nominal
constexpr int kNumHyper = 11;
constexpr int kHyperBetaM0 = 0;
constexpr int kHyperBetaM1 = 1;
constexpr int kHyperBetaM2 = 2;
constexpr int kHyperBetaV = 3;
constexpr int kHyperBetaF0 = 4;
constexpr int kHyperBetaF1 = 5;
constexpr int kHyperBetaF2 = 6;
constexpr int kHyperExpMult = 7;
constexpr int kHyperStepMult = 8;
constexpr int kHyperTimeClamp = 9;
constexpr int kHyperNominal = 10;

}  // namespace spec
}  // namespace mulo
