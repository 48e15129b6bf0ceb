// AVX-512 kernel (F/BW/VL/DQ). Decode: each group of 64 weights becomes four
// 16-lane float vectors of signed values in units of 2^(e-7) (exact), built
// from the planes precision k needs: E5M3 is one vpermps lookup per 16 weights
// and E5M4 one vpermt2ps, in tables built from the call's levels row (any rule);
// E5M5..M8 assemble q_k for the whole group in byte lanes, then per 16 weights
// convert (floor; center with bit 7-k set, k = 8: + 1/2) or gather the level (any
// other row), and negate by the sign mask. Multiply-accumulate in float32.
#include <immintrin.h>

#include "core/sefp_kernel_avx512_common.h"
#include "core/sefp_kernel_internal.h"

namespace otaro {
namespace detail {
namespace {

constexpr int kTernaryOrAnd = 0xF8;   // a | (b & c)
constexpr int kTernaryXorAnd = 0x78;  // a ^ (b & c)
constexpr int kTernaryAndOr = 0xEA;   // (a & b) | c

template <int S>
inline __m512i shift_left(__m512i v) {
  if constexpr (S >= 0)
    return _mm512_slli_epi32(v, S);
  else
    return _mm512_srli_epi32(v, -S);
}

// What decode needs besides the planes: the signed lookup tables for k <= 4 (one
// vpermps / vpermt2ps per 16 weights; floor is such a table too) and the levels
// row for the generic table decode of k >= 5 (a gather).
struct Tables {
  __m512 lo, hi;
  const float* row;
};

inline Tables load_tables(const LinearPlan& a) {
  return Tables{_mm512_load_ps(a.lut), _mm512_load_ps(a.lut + 16), a.row};
}

// E5M3 / E5M4: block b (elements 16b..16b+15) of one group as floats by one table lookup.
template <int BITS, int B>
inline __m512 lut_block(const Tables& t, __m512i c01, __m512i c23, __m512i p1v) {
  const __m512i c = (B & 1) ? c23 : c01;  // p0 bytes 0..15 hold blocks 0/2, 16..31 blocks 1/3
  const __m512i code = (B >> 1) ? _mm512_srli_epi32(c, 4) : c;
  if constexpr (BITS == 3) {
    // code (sign<<3 | q[7:5]) -> +-level: vpermps reads the low 4 bits of each lane.
    return _mm512_permutexvar_ps(code, t.lo);
  } else {
    // index = code (bits 0..3) | q[4] (bit 4; bits above are ignored by vpermt2ps)
    constexpr int kSelect = 0xE4;  // c ? a : b, bitwise
    const __m512i idx = _mm512_ternarylogic_epi32(code, shift_left<3 - 2 * B>(p1v), _mm512_set1_epi32(0x0F), kSelect);
    return _mm512_permutex2var_ps(t.lo, idx, t.hi);
  }
}

// Byte-lane decodes whose values fit int8 at half scale: q_k / 2 is at most 127 when q_k is
// even (floor up to k = 7, center up to k = 6), so the sign is one byte negation for the
// whole group and the widening sign-extends; the group scale doubles to compensate.
template <int BITS, int RULE>
constexpr bool kHalved = RULE != kTable && (BITS <= 6 || (BITS == 7 && RULE == kFloor));
// log2 of the factor the group scale takes: decode_group's values are value / 2^kDecodeLog2.
template <int BITS, int RULE>
constexpr int kDecodeLog2 = (BITS >= 5 && kHalved<BITS, RULE>) ? 1 : 0;

// Per-lane shift / rotate counts of the byte-lane decode (E5M5..M8), for q_k and for q_k / 2.
struct ByteLanes {
  __m512i p0_shift[2];   // 16-bit lanes: << 5 (low nibbles, elements 0..31), << 1 (high nibbles, 32..63)
  __m512i sign_bit;      // bytes: 0x08 (low nibble's sign), 0x80 (high nibble's)
  __m512i p1_rotate[2];  // dword rotate of 128-bit lane j (elements 16j..): field j of p1 to bits 3..4
  __m512i p2_rotate[2];  // ... field j of p2 to bits 1..2
  __m512i p3_shift;      // qword j (elements 8j..8j+7): bit j of each p3 byte to bit 0
};

inline ByteLanes byte_lanes() {
  return ByteLanes{
      {_mm512_inserti64x4(_mm512_set1_epi16(5), _mm256_set1_epi16(1), 1),
       _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(0), 1)},
      _mm512_inserti64x4(_mm512_set1_epi8(0x08), _mm256_set1_epi8(static_cast<char>(0x80)), 1),
      {_mm512_set_epi32(29, 29, 29, 29, 31, 31, 31, 31, 1, 1, 1, 1, 3, 3, 3, 3),
       _mm512_set_epi32(28, 28, 28, 28, 30, 30, 30, 30, 0, 0, 0, 0, 2, 2, 2, 2)},
      {_mm512_set_epi32(27, 27, 27, 27, 29, 29, 29, 29, 31, 31, 31, 31, 1, 1, 1, 1),
       _mm512_set_epi32(26, 26, 26, 26, 28, 28, 28, 28, 30, 30, 30, 30, 0, 0, 0, 0)},
      _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0),
  };
}

// Block b of byte-lane values (elements 16b..16b+15) as signed floats: `q` holds signed
// q_k / 2 (halved decodes) or magnitudes with the signs in `negative`.
template <int BITS, int RULE, int B>
inline __m512 byte_block(const Tables& t, __m512i q, __mmask64 negative) {
  const __m128i lane = B == 0 ? _mm512_castsi512_si128(q) : _mm512_extracti32x4_epi32(q, B);
  if constexpr (kHalved<BITS, RULE>) return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lane));
  const __m512i d = _mm512_cvtepu8_epi32(lane);
  __m512 mag;
  if constexpr (RULE == kTable) {
    mag = _mm512_i32gather_ps(_mm512_srli_epi32(d, 8 - BITS), t.row, 4);
  } else if constexpr (RULE == kCenter && BITS == 8) {
    mag = _mm512_add_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(0.5f));
  } else {
    mag = _mm512_cvtepi32_ps(d);
  }
  return _mm512_mask_sub_ps(mag, static_cast<__mmask16>(negative >> (16 * B)), _mm512_setzero_ps(), mag);
}

// The 64 signed values of one group (units of 2^(e-7), divided by 2^kDecodeLog2) as four
// 16-lane float vectors. E5M3/M4: table lookups. E5M5..M8: q_k (or q_k / 2) is assembled
// for all 64 elements at once in byte lanes (element e = byte e: each plane broadcast to
// the lanes its elements occupy, then one shift or rotate and one ternary-logic merge per
// plane), the signs become a 64-bit mask, then per 16 weights: widen, convert (or gather
// the level), and negate by mask unless the bytes were negated already.
template <int BITS, int RULE>
inline void decode_group(const Tables& t, const ByteLanes& bl, const SEFPWeightView& w, int64_t ng, __m512 v[4]) {
  const uint8_t* p0 = w.p0 + ng * kPlaneBytesPerGroup[0];
  if constexpr (BITS <= 4) {
    const __m512i c01 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p0)));
    const __m512i c23 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p0 + 16)));
    __m512i p1v = _mm512_setzero_si512();
    if constexpr (BITS == 4)
      p1v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.p1 + ng * kPlaneBytesPerGroup[1])));
    v[0] = lut_block<BITS, 0>(t, c01, c23, p1v);
    v[1] = lut_block<BITS, 1>(t, c01, c23, p1v);
    v[2] = lut_block<BITS, 2>(t, c01, c23, p1v);
    v[3] = lut_block<BITS, 3>(t, c01, c23, p1v);
  } else {
    constexpr int H = kHalved<BITS, RULE> ? 1 : 0;  // every field lands one bit lower for q_k / 2
    // center (k <= 7) sets bit 7-k, free in q_k: q_k + 2^(7-k) at no cost (k = 8: + 1/2 after converting)
    constexpr int kHalf = (RULE == kCenter && BITS <= 7) ? (1 << (7 - BITS)) >> H : 0;
    const __m512i z0 = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p0)));
    __m512i q = _mm512_ternarylogic_epi32(_mm512_sllv_epi16(z0, bl.p0_shift[H]),
                                          _mm512_set1_epi8(static_cast<char>(0xE0 >> H)), _mm512_set1_epi8(kHalf),
                                          kTernaryAndOr);  // q[7:5]
    const __mmask64 negative = _mm512_test_epi8_mask(z0, bl.sign_bit);
    const __m512i z1 =
        _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.p1 + ng * kPlaneBytesPerGroup[1])));
    q = _mm512_ternarylogic_epi32(q, _mm512_rolv_epi32(z1, bl.p1_rotate[H]), _mm512_set1_epi8(0x18 >> H),
                                  kTernaryOrAnd);  // q[4:3]
    if constexpr (BITS >= 6) {
      const __m512i z2 =
          _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.p2 + ng * kPlaneBytesPerGroup[2])));
      q = _mm512_ternarylogic_epi32(q, _mm512_rolv_epi32(z2, bl.p2_rotate[H]),
                                    _mm512_set1_epi8((BITS == 6 ? 0x04 : 0x06) >> H),
                                    kTernaryOrAnd);  // q[2:1] (k = 6 keeps only q[2])
    }
    if constexpr (BITS == 8) {
      long long b8;
      __builtin_memcpy(&b8, w.p3 + ng * kPlaneBytesPerGroup[3], 8);
      q = _mm512_ternarylogic_epi32(q, _mm512_srlv_epi64(_mm512_set1_epi64(b8), bl.p3_shift), _mm512_set1_epi8(1),
                                    kTernaryOrAnd);  // q[0]
    }
    if constexpr (H) q = _mm512_mask_sub_epi8(q, negative, _mm512_setzero_si512(), q);  // signed q_k / 2
    v[0] = byte_block<BITS, RULE, 0>(t, q, negative);
    v[1] = byte_block<BITS, RULE, 1>(t, q, negative);
    v[2] = byte_block<BITS, RULE, 2>(t, q, negative);
    v[3] = byte_block<BITS, RULE, 3>(t, q, negative);
  }
}

// Few activation rows (decode): R weight rows at a time share the x loads and the final
// horizontal reduction; every group is decoded once and dotted with each activation row.
template <int BITS, int RULE, int M, int R>
void matvec_rows(const LinearPlan& a, const Tables& t, const ByteLanes& bl, int64_t n) {
  const SEFPWeightView& w = a.w;
  const int64_t G = w.num_groups;
  __m512 acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  alignas(64) float scales[R][kScaleChunk];
  for (int64_t g0 = 0; g0 < G; g0 += kScaleChunk) {
    const int64_t gc = min64(kScaleChunk, G - g0);
    for (int r = 0; r < R; ++r) group_scales<kDecodeLog2<BITS, RULE>>(w.exponents + (n + r) * G + g0, gc, scales[r]);
    for (int64_t gg = 0; gg < gc; ++gg) {
      const int64_t g = g0 + gg;
      __m512 v[R][4];
      for (int r = 0; r < R; ++r) decode_group<BITS, RULE>(t, bl, w, (n + r) * G + g, v[r]);
      for (int m = 0; m < M; ++m) {
        const float* x = a.x + m * a.ldx + g * kGroup;
        const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
        const __m512 x2 = _mm512_loadu_ps(x + 32), x3 = _mm512_loadu_ps(x + 48);
        for (int r = 0; r < R; ++r) {
          __m512 s0 = _mm512_mul_ps(x0, v[r][0]);
          __m512 s1 = _mm512_mul_ps(x1, v[r][1]);
          s0 = _mm512_fmadd_ps(x2, v[r][2], s0);
          s1 = _mm512_fmadd_ps(x3, v[r][3], s1);
          acc[m][r] = _mm512_fmadd_ps(_mm512_add_ps(s0, s1), _mm512_set1_ps(scales[r][gg]), acc[m][r]);
        }
      }
    }
  }
  store_row_block<M, R>(a, n, acc);
}

// One activation row: four weight rows at a time (short rows such as K = 576 spend a
// good part of their time in the per-row reduction otherwise); more rows: two.
template <int BITS, int RULE, int M>
void matvec(const LinearPlan& a, int64_t n_begin, int64_t n_end) {
  const Tables t = load_tables(a);
  const ByteLanes bl = byte_lanes();
  constexpr int kRows = M == 1 ? 4 : 2;
  for_row_blocks<kRows>(
      a.w.num_groups, n_begin, n_end, [&](int64_t n) { matvec_rows<BITS, RULE, M, kRows>(a, t, bl, n); },
      [&](int64_t n) { matvec_rows<BITS, RULE, M, 1>(a, t, bl, n); });
}

// y[i, j] += dot(x row i, wbuf row j) over kc, for MR x NR outputs.
template <int MR, int NR>
void micro(const float* x, int64_t ldx, const float* wb, int64_t kc, float* y, int64_t ldy) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; k += 16) {
    __m512 xv[MR], wv[NR];
    for (int i = 0; i < MR; ++i) xv[i] = _mm512_loadu_ps(x + i * ldx + k);
    for (int j = 0; j < NR; ++j) wv[j] = _mm512_load_ps(wb + j * kc + k);
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xv[i], wv[j], acc[i][j]);
  }
  for (int i = 0; i < MR; ++i) {
    if constexpr (NR == 4) {
      float* yi = y + i * ldy;
      _mm_storeu_ps(yi, _mm_add_ps(_mm_loadu_ps(yi), reduce4(acc[i][0], acc[i][1], acc[i][2], acc[i][3])));
    } else {
      for (int j = 0; j < NR; ++j) y[i * ldy + j] += hsum(acc[i][j]);
    }
  }
}

using MicroFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t);
template <int MR>
constexpr MicroFn kMicroRow[4] = {micro<MR, 1>, micro<MR, 2>, micro<MR, 3>, micro<MR, 4>};
constexpr const MicroFn* kMicro[4] = {kMicroRow<1>, kMicroRow<2>, kMicroRow<3>, kMicroRow<4>};

// Many activation rows (prefill): decode a block of weight rows x groups to
// exact float32 (q_k * 2^(e-7)) in an L1-sized buffer, then a register-blocked
// dot-product GEMM over all activation rows reuses it.
template <int BITS, int RULE>
void gemm(const LinearPlan& a, int64_t n_begin, int64_t n_end) {
  const Tables t = load_tables(a);
  const ByteLanes bl = byte_lanes();
  constexpr int kNB = 16;                      // weight rows per block
  constexpr int kKG = 8;                       // groups per k chunk (512 weights)
  alignas(64) float wbuf[kNB * kKG * kGroup];  // 32 KiB
  const SEFPWeightView& w = a.w;
  const int64_t G = w.num_groups, N = a.ldy;  // y row stride
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kNB) {
    const int64_t nb = min64(kNB, n_end - n0);
    for (int64_t r = 0; r < a.rows; ++r)
      for (int64_t j = 0; j < nb; ++j) a.y[r * N + n0 + j] = a.bias ? a.bias[n0 + j] : 0.0f;
    for (int64_t g0 = 0; g0 < G; g0 += kKG) {
      const int64_t gc = min64(kKG, G - g0), kc = gc * kGroup;
      for (int64_t j = 0; j < nb; ++j) {
        for (int64_t gg = 0; gg < gc; ++gg) {
          const int64_t ng = (n0 + j) * G + g0 + gg;
          __m512 v[4];
          decode_group<BITS, RULE>(t, bl, w, ng, v);
          const __m512 scale =
              _mm512_set1_ps(unit_scale(w.exponents[ng]) * static_cast<float>(1 << kDecodeLog2<BITS, RULE>));
          float* dst = wbuf + j * kc + gg * kGroup;
          for (int b = 0; b < 4; ++b) _mm512_store_ps(dst + 16 * b, _mm512_mul_ps(v[b], scale));
        }
      }
      for (int64_t m0 = 0; m0 < a.rows; m0 += 4) {
        const int64_t mr = min64(4, a.rows - m0);
        for (int64_t j0 = 0; j0 < nb; j0 += 4) {
          const int64_t nr = min64(4, nb - j0);
          kMicro[mr - 1][nr - 1](a.x + m0 * a.ldx + g0 * kGroup, a.ldx, wbuf + j0 * kc, kc, a.y + m0 * N + n0 + j0, N);
        }
      }
    }
  }
}

// Embedding rows: each group decoded once and stored scaled (exact values).
template <int BITS, int RULE>
void embed(const EmbeddingPlan& e, int64_t begin, int64_t end) {
  const Tables t = load_tables(*e.decode);
  const ByteLanes bl = byte_lanes();
  const SEFPWeightView& w = e.w;
  const int64_t G = w.num_groups, K = w.in_features;
  for (int64_t i = begin; i < end; ++i) {
    float* dst = e.out + i * K;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t ng = e.ids[i] * G + g;
      __m512 v[4];
      decode_group<BITS, RULE>(t, bl, w, ng, v);
      const __m512 scale =
          _mm512_set1_ps(unit_scale(w.exponents[ng]) * static_cast<float>(1 << kDecodeLog2<BITS, RULE>));
      const int64_t count = min64(kGroup, K - g * kGroup);
      for (int b = 0; b < 4; ++b) {
        const int64_t left = count - 16 * b;
        if (left <= 0) break;
        const __mmask16 keep = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
        _mm512_mask_storeu_ps(dst + g * kGroup + 16 * b, keep, _mm512_mul_ps(v[b], scale));
      }
    }
  }
}

}  // namespace

OTARO_SEFP_DEFINE_KERNELS(linear_range_avx512, embedding_range_avx512)

}  // namespace detail
}  // namespace otaro
