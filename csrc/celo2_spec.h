// GENERATED from mulo/celo2/spec.py by `python -m mulo.celo2.spec > csrc/celo2_spec.h`; do not edit.
// The one specification of Celo2's per-element rule (tests/celo2/test_cpu_backend.py checks this file).
#pragma once

namespace mulo {
namespace celo2 {

constexpr float kGradClamp = 1000.0f;
constexpr float kFeatureClip = 0.1f;
constexpr float kEpsGradSq = 1e-30f;
constexpr float kEpsSafeRsqrt = 1e-09f;
constexpr float kEpsRsqrt = 1e-08f;
constexpr float kEpsNormalize = 1e-09f;
constexpr double kRmsDecay = 0.95;
constexpr double kExpMult = 0.0;
constexpr double kRmsMult = 1.0;
constexpr double kMomentumDecays[3] = {0.9, 0.99, 0.999};
constexpr double kAdafactorDecays[3] = {0.9, 0.99, 0.999};

constexpr int kFeatures = 30;
constexpr int kHidden = 8;
constexpr int kHiddenLayers = 2;
constexpr int kOutput = 3;

// the features: index of the first value of each group (width 1 or 3), in FEATURE_GROUPS order
enum Feature : int {
  kFeatG = 0,  // 1: clamped gradient g
  kFeatClipG = 1,  // 1: clamp(g, −FEATURE_CLIP, FEATURE_CLIP)
  kFeatP = 2,  // 1: parameter value before the update
  kFeatM = 3,  // 3: momentum m_k
  kFeatV = 6,  // 1: second moment v
  kFeatMRsqrtV = 7,  // 3: m_k · rsqrt(v + EPS_RSQRT)
  kFeatRsqrtV = 10,  // 1: rsqrt(v + EPS_RSQRT)
  kFeatFacG = 11,  // 3: g · row_factor_k · col_factor_k
  kFeatGRsqrtV = 14,  // 1: g · rsqrt(v + EPS_RSQRT)
  kFeatRow = 15,  // 3: row accumulator r_k broadcast to the element
  kFeatCol = 18,  // 3: column accumulator c_k broadcast to the element
  kFeatRsqrtRow = 21,  // 3: rsqrt(r_k + EPS_RSQRT)
  kFeatRsqrtCol = 24,  // 3: rsqrt(c_k + EPS_RSQRT)
  kFeatFacM = 27,  // 3: m_k · row_factor_k · col_factor_k
};

}  // namespace celo2
}  // namespace mulo
