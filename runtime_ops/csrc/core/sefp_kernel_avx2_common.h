// Helpers of the AVX2 translation units (float and int8-activation kernels).
//
// Included only by TUs compiled with at least -mavx2 -mfma -mf16c; everything is in an
// anonymous namespace, so each TU keeps its own copy compiled with its own flags (see the
// COMDAT note in sefp_kernel_internal.h).
#pragma once

#include <immintrin.h>

#include "core/sefp_kernel_internal.h"

namespace otaro {
namespace detail {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// scales[i] = 2^(e[i] - 7) for count groups, 8 at a time from the exponent bits.
inline void group_scales(const int8_t* e, int64_t count, float* scales) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    long long e8;
    __builtin_memcpy(&e8, e + i, 8);
    const __m256i biased = _mm256_add_epi32(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(e8)), _mm256_set1_epi32(127 - 7));
    if (_mm256_movemask_epi8(_mm256_cmpgt_epi32(_mm256_set1_epi32(1), biased)) != 0) break;  // subnormal: scalar
    _mm256_storeu_ps(scales + i, _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)));
  }
  for (; i < count; ++i) scales[i] = unit_scale(e[i]);
}

constexpr int64_t kScaleChunk = 256;  // groups whose scales sit on the stack at once (per weight row)

}  // namespace
}  // namespace detail
}  // namespace otaro
