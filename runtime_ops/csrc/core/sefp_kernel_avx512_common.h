// Helpers of the AVX-512 translation units (float and int8-activation kernels).
//
// Included only by TUs compiled with at least -mavx512f -mavx512bw -mavx512vl -mavx512dq;
// everything is in an anonymous namespace, so each TU keeps its own copy compiled with its
// own flags (see the COMDAT note in sefp_kernel_internal.h).
#pragma once

#include <immintrin.h>

#include "core/sefp_kernel_internal.h"

namespace otaro {
namespace detail {
namespace {

constexpr int64_t kScaleChunk = 128;  // groups whose scales sit on the stack at once (per weight row)

// [a, b, c, d] horizontal sums.
inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
  const __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
  const __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
  const __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
  const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a8, b8), _mm256_hadd_ps(c8, d8));
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// The horizontal sum of one vector in reduce4's order, so that a row gives the same bits
// whichever of the two computed it.
inline float hsum(__m512 v) {
  const __m256 v8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(v8, v8), _mm256_hadd_ps(v8, v8));
  return _mm_cvtss_f32(_mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

// The end of an M x R row block from row n: y[m][n + r] = the horizontal sum of acc[m][r], plus
// bias[n + r]; four rows at a time in reduce4's order (hsum's for the others).
template <int M, int R>
inline void store_row_block(const LinearPlan& a, int64_t n, const __m512 (&acc)[M][R]) {
  const int64_t N = a.ldy;  // y row stride
  for (int m = 0; m < M; ++m) {
    if constexpr (R == 4) {
      __m128 sums = reduce4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
      if (a.bias) sums = _mm_add_ps(sums, _mm_loadu_ps(a.bias + n));
      _mm_storeu_ps(a.y + m * N + n, sums);
    } else {
      for (int r = 0; r < R; ++r) a.y[m * N + n + r] = hsum(acc[m][r]) + (a.bias ? a.bias[n + r] : 0.0f);
    }
  }
}

// 2^(e[i] - 7 + L) for the first count (<= 16) groups, in one register (lanes past count zero), from
// the exponent bits; an exponent outside float32's normal range takes the exact libm path.
template <int L>
inline __m512 group_scales16(const int8_t* e, int64_t count, __mmask16 keep) {
  const __m512i biased =
      _mm512_add_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(keep, e)), _mm512_set1_epi32(127 - 7 + L));
  if (_mm512_mask_cmpgt_epi32_mask(keep, _mm512_set1_epi32(1), biased) != 0 ||
      _mm512_mask_cmpgt_epi32_mask(keep, biased, _mm512_set1_epi32(254)) != 0) {
    alignas(64) float s[16] = {};
    for (int64_t j = 0; j < count; ++j) s[j] = unit_scale(e[j]) * static_cast<float>(1 << L);
    return _mm512_load_ps(s);
  }
  return _mm512_maskz_mov_ps(keep, _mm512_castsi512_ps(_mm512_slli_epi32(biased, 23)));
}

// scales[i] = 2^(e[i] - 7 + L) for count groups, 16 at a time (masked tail).
template <int L>
inline void group_scales(const int8_t* e, int64_t count, float* scales) {
  for (int64_t i = 0; i < count; i += 16) {
    const int64_t c = min64(16, count - i);
    const __mmask16 keep = c >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << c) - 1);
    _mm512_mask_storeu_ps(scales + i, keep, group_scales16<L>(e + i, c, keep));
  }
}

}  // namespace
}  // namespace detail
}  // namespace otaro
