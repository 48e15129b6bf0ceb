// Vectorizable float math shared by the runtime wrappers' small ops: e^x without libm, and the
// SwiGLU product silu(gate) * up (the ExecuTorch swiglu kernel and SEFPLinear's fused activation
// in onnxruntime, so both runtimes compute the same values).
//
// The loops are plain C++ written for the auto-vectorizer; on x86 each hot loop is also compiled
// for AVX2 and AVX-512 (target_clones: the loader picks the clone the CPU runs). Everything is in
// an anonymous namespace: each translation unit keeps its own copy, compiled with its own flags.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#define OTARO_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define OTARO_VECTOR_CLONES
#endif

namespace otaro {
namespace {

// The v16 helpers below are always inlined: no v16 crosses a call, so the psABI note on passing 64-byte
// vectors without AVX-512 enabled does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

// 16 floats as one GCC/Clang vector: SIMD registers of whatever width the clone targets (one zmm,
// two ymm, four xmm or NEON q registers). aligned(4): loads and stores of any float address.
typedef float v16 __attribute__((vector_size(64), aligned(4)));

typedef int32_t v16i __attribute__((vector_size(64)));

// e^x for x in [-87, 88] to ~2e-7 relative (below float32 rounding of a softmax or SiLU sum):
// x = n ln2 + r, |r| <= ln2 / 2, e^r by its degree-7 Taylor polynomial, 2^n by the exponent bits.
// Branch-free and libm-free, so a loop over it vectorizes (std::exp does not: it is a call per element).
// F is float (I int32_t) or v16 (I v16i): the same operations lane by lane, so the same values.
template <typename F, typename I>
__attribute__((always_inline)) inline F exp_poly(const F& in) {
  F x = in;
  const F lo = F{} - 87.0f, hi = F{} + 88.0f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer held in the low bits
  const F shifted = x * 1.44269504088896341f + kRound;
  I bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  const F n = shifted - kRound;
  const F r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;  // ln2 split in two: exact n * hi
  F p = F{} + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const I scale_bits = (bits - 0x4B400000 + 127) << 23;  // 2^n, n in [-126, 127]
  F scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return p * scale;
}

__attribute__((always_inline)) inline float exp_approx(float x) { return exp_poly<float, int32_t>(x); }
__attribute__((always_inline)) inline v16 exp16(const v16& x) { return exp_poly<v16, v16i>(x); }

// y[i] = silu(gate[i]) * up[i] = gate[i] / (1 + e^-gate[i]) * up[i].
OTARO_VECTOR_CLONES void silu_mul(const float* gate, const float* up, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = gate[i] / (1.0f + exp_approx(-gate[i])) * up[i];
}

}  // namespace
}  // namespace otaro
