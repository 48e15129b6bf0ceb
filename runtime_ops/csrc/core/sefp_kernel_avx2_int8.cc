// Int8-activation kernel (AVX2), docs/FORMAT.md §9: y = fq(x) @ W_k^T for E5M3 / E5M4 with
// levels on the int8 grid, few activation rows (decode).
//
// Per group of 64 weights and weight row: the p0 nibbles (sign << 3 | q[7:5]) of elements
// 0..31 and 32..63 are two vectors of 32 bytes; E5M4 puts q[4] in place of the sign bit; one
// vpshufb each maps that index to half the level magnitude (<= 127, so a pair of products
// fits int16). The weight's sign moves onto the activations (vpsignb by a +-1 byte), so
// vpmaddubsw (u8 x s8, pairs summed, |pair| <= 2 * 127 * 127 < 2^15: no saturation) and
// vpmaddwd do the 64 multiplies exactly; each group's eight int32 sums then take the group's
// scales, 2 * 2^(e-7) * (a / 127), in one convert + FMA.
#include <immintrin.h>

#include "core/sefp_kernel_avx2_common.h"
#include "core/sefp_kernel_internal.h"

namespace otaro {
namespace detail {
namespace {

struct HalfLevels {
  __m256i lut;      // lut_u8 / 2 in both 128-bit lanes
  __m256i low4;     // 0x0F bytes
  __m256i sign;     // 0x08 bytes
  __m256i one;      // 0x01 bytes
  __m256i ones16;   // 1 in every int16 lane
  __m256i q4_up;    // dword shifts left: bit 2j+1 of p1 (q[4] of elements 16j..) to bit 3, j = 0, 1 by lane
  __m256i q4_down;  // dword shifts right: the same for j = 2, 3
};

template <int BITS>
inline HalfLevels int8_context(const LinearPlan& a) {
  const __m128i lut = _mm_srli_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(a.lut_u8)), 1);
  return HalfLevels{
      _mm256_broadcastsi128_si256(_mm_and_si128(lut, _mm_set1_epi8(0x7F))),  // epi16 shift: clear the borrowed bit
      _mm256_set1_epi8(0x0F),
      _mm256_set1_epi8(0x08),
      _mm256_set1_epi8(0x01),
      _mm256_set1_epi16(1),
      _mm256_setr_epi32(2, 2, 2, 2, 0, 0, 0, 0),
      _mm256_setr_epi32(2, 2, 2, 2, 4, 4, 4, 4),
  };
}

// Half magnitudes (u8) of 32 elements, and +-1 bytes of their signs, from their codes.
template <int BITS>
inline __m256i magnitudes(const HalfLevels& h, __m256i code, __m256i q4_at_bit3, __m256i* sign) {
  // +1 or -1 (0x81 reads as negative to vpsignb): the sign bit moved to bit 7, or 1
  *sign = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(code, h.sign), 4), h.one);
  __m256i index = code;  // k = 3: the sign bit is ignored by the table (entries 8..15 repeat 0..7)
  if constexpr (BITS == 4)
    index = _mm256_or_si256(_mm256_andnot_si256(h.sign, code), _mm256_and_si256(q4_at_bit3, h.sign));
  return _mm256_shuffle_epi8(h.lut, index);
}

// One decoded group: half magnitudes and +-1 sign bytes of elements 0..31 and 32..63.
template <int BITS>
struct Group {
  __m256i mag[2], sign[2];
};

template <int BITS>
inline Group<BITS> decode(const HalfLevels& h, const SEFPWeightView& w, int64_t ng) {
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.p0 + ng * kPlaneBytesPerGroup[0]));
  const __m256i lo = _mm256_and_si256(b, h.low4);                        // elements 0..31
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), h.low4);  // elements 32..63
  __m256i q4_lo = _mm256_setzero_si256(), q4_hi = _mm256_setzero_si256();
  if constexpr (BITS == 4) {
    const __m256i p1 = _mm256_broadcastsi128_si256(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.p1 + ng * kPlaneBytesPerGroup[1])));
    q4_lo = _mm256_sllv_epi32(p1, h.q4_up);    // fields 0, 1: bits 1, 3 -> bit 3
    q4_hi = _mm256_srlv_epi32(p1, h.q4_down);  // fields 2, 3: bits 5, 7 -> bit 3
  }
  Group<BITS> g;
  g.mag[0] = magnitudes<BITS>(h, lo, q4_lo, &g.sign[0]);
  g.mag[1] = magnitudes<BITS>(h, hi, q4_hi, &g.sign[1]);
  return g;
}

// The group's dot product with activations q0 (elements 0..31), q1 (32..63), as 8 int32 partial sums.
template <int BITS>
inline __m256i dot(const HalfLevels& h, const Group<BITS>& g, __m256i q0, __m256i q1) {
  const __m256i p0 = _mm256_maddubs_epi16(g.mag[0], _mm256_sign_epi8(q0, g.sign[0]));
  const __m256i p1 = _mm256_maddubs_epi16(g.mag[1], _mm256_sign_epi8(q1, g.sign[1]));
  return _mm256_add_epi32(_mm256_madd_epi16(p0, h.ones16), _mm256_madd_epi16(p1, h.ones16));
}

// M activation rows x R weight rows from row n.
template <int BITS, int M, int R>
void int8_rows(const LinearPlan& a, const HalfLevels& h, int64_t n) {
  const SEFPWeightView& w = a.w;
  const int64_t G = w.num_groups, N = a.ldy;  // y row stride
  __m256 acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm256_setzero_ps();
  alignas(32) float scales[R][kScaleChunk];
  for (int64_t g0 = 0; g0 < G; g0 += kScaleChunk) {
    const int64_t gc = min64(kScaleChunk, G - g0);
    for (int r = 0; r < R; ++r) group_scales(w.exponents + (n + r) * G + g0, gc, scales[r]);
    for (int64_t gg = 0; gg < gc; ++gg) {
      const int64_t g = g0 + gg;
      Group<BITS> group[R];
      for (int r = 0; r < R; ++r) group[r] = decode<BITS>(h, w, (n + r) * G + g);
      for (int m = 0; m < M; ++m) {
        const int8_t* q = a.xq + m * a.ldx + g * kGroup;
        const __m256i q0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
        const __m256i q1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32));
        const float step = a.xscale[m * G + g];
        for (int r = 0; r < R; ++r) {
          const __m256 sums = _mm256_cvtepi32_ps(dot<BITS>(h, group[r], q0, q1));
          // 2 x: the table holds half levels
          acc[m][r] = _mm256_fmadd_ps(sums, _mm256_set1_ps(2.0f * scales[r][gg] * step), acc[m][r]);
        }
      }
    }
  }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) a.y[m * N + n + r] = hsum(acc[m][r]) + (a.bias ? a.bias[n + r] : 0.0f);
}

}  // namespace

OTARO_SEFP_DEFINE_INT8_KERNEL(linear_range_avx2_int8)

}  // namespace detail
}  // namespace otaro
