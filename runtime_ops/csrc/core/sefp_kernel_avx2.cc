// AVX2 + FMA kernel. Same structure as the AVX-512 one with 8-lane vectors: a group
// of 64 weights is assembled in byte lanes (two ymm: elements 0..31 and 32..63; each
// plane broadcast, shifted per 128-bit lane, masked and merged), stored to the stack
// and widened 8 bytes at a time by sign/zero-extending loads. Decode rules: floor
// E5M3 by vpshufb to +-q[7:5]; floor/center with even q_k as signed q_k / 2 (one
// vpsignb per 32 weights); other E5M3 tables by one vpermps, E5M4 tables by two;
// any other row by a gather; the rest convert the magnitude and xor the sign.
#include <immintrin.h>

#include "core/sefp_kernel_avx2_common.h"
#include "core/sefp_kernel_internal.h"

namespace otaro {
namespace detail {
namespace {

// Magnitude tables of the call's levels row for k <= 4 (row[0..7], row[8..15]) and
// the row itself for the generic gather of k >= 5.
struct Tables {
  __m256 lo, hi;
  const float* row;
};

inline Tables load_tables(const LinearPlan& a) {
  // a.row has 256 entries, so row + 8 is readable for k = 3 too
  return Tables{_mm256_loadu_ps(a.row), _mm256_loadu_ps(a.row + 8), a.row};
}

// Byte-lane decodes whose values fit int8 at half scale (q_k even: floor up to k = 7, center up
// to k = 6): the sign is a byte negation, the widening a sign extension; the scale doubles.
template <int BITS, int RULE>
constexpr bool kHalved = RULE != kTable && (BITS <= 6 || (BITS == 7 && RULE == kFloor));

// decode_group's values are (value in units of 2^(e-7)) / kDecodeUnit: floor E5M3 decodes q_3 >> 5
// (-7..7) by a byte table, halved decodes q_k / 2; the group scale absorbs the factor.
template <int BITS, int RULE>
constexpr float kDecodeUnit = (BITS == 3 && RULE == kFloor)        ? 32.0f
                              : (BITS >= 4 && kHalved<BITS, RULE>) ? 2.0f
                                                                   : 1.0f;

inline __m256i set_lanes(int lo, int hi) { return _mm256_setr_epi32(lo, lo, lo, lo, hi, hi, hi, hi); }

// One group's bytes in element order (buffer[e] for element e), assembled 32 elements per ymm:
// signed q_k / 2 (halved), signed q_3 >> 5 (floor E5M3), or magnitudes / level indices with the
// signs in sign[e] (0x80 negative; the other decodes).
template <int BITS, int RULE>
inline void assemble(const SEFPWeightView& w, int64_t ng, int8_t* bytes, int8_t* sign) {
  const __m256i p0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.p0 + ng * kPlaneBytesPerGroup[0]));
  const __m256i lo4 = _mm256_slli_epi16(p0, 4);  // low nibbles (elements 0..31) in the high half of each byte
  if constexpr (BITS == 3 && RULE == kFloor) {
    // vpshufb maps each code (sign<<3 | q[7:5]) to the int8 +-(q[7:5])
    const __m256i table = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 0, -1, -2, -3, -4, -5, -6, -7,  //
                                           0, 1, 2, 3, 4, 5, 6, 7, 0, -1, -2, -3, -4, -5, -6, -7);
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    _mm256_store_si256(reinterpret_cast<__m256i*>(bytes), _mm256_shuffle_epi8(table, _mm256_and_si256(p0, nibble)));
    _mm256_store_si256(reinterpret_cast<__m256i*>(bytes + 32),
                       _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(p0, 4), nibble)));
    return;
  }
  constexpr int H = kHalved<BITS, RULE> ? 1 : 0;  // every field one bit lower for q_k / 2
  // table decodes index the levels by q_k >> (8-k): assemble that directly (fields (8-k) bits lower)
  constexpr int D = RULE == kTable ? 8 - BITS : H;
  constexpr int kHalf = (RULE == kCenter && BITS <= 7) ? (1 << (7 - BITS)) >> H : 0;
  const __m256i top = _mm256_set1_epi8(static_cast<char>(0xE0 >> D));
  // q[7:5]: low nibble bits 0..2 and high nibble bits 4..6 to bits 5..7 (>> D)
  __m256i q0 = _mm256_and_si256(D <= 1 ? _mm256_slli_epi16(p0, 5 - D) : _mm256_srli_epi16(lo4, D - 1), top);
  __m256i q1 = _mm256_and_si256(D <= 1 ? _mm256_slli_epi16(p0, 1 - D) : _mm256_srli_epi16(p0, D - 1), top);
  if constexpr (kHalf != 0) {
    q0 = _mm256_or_si256(q0, _mm256_set1_epi8(kHalf));
    q1 = _mm256_or_si256(q1, _mm256_set1_epi8(kHalf));
  }
  if constexpr (BITS >= 4) {
    // p1 field j (element i + 16j) at bits 2j..2j+1 to bits 3..4 (>> D); ymm lane = j parity
    const __m256i f = _mm256_broadcastsi128_si256(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.p1 + ng * kPlaneBytesPerGroup[1])));
    // fields 0, 1 (low bits): << 3 then >> 2j + D; fields 2, 3 (high bits) straight >> 2j - 3 + D, so that
    // no field of a dword's top byte is shifted out (bits crossing into a neighbour byte are masked off)
    const __m256i m1 = _mm256_set1_epi8(static_cast<char>((BITS == 4 ? 0x10 : 0x18) >> D));
    q0 = _mm256_or_si256(q0, _mm256_and_si256(_mm256_srlv_epi32(_mm256_slli_epi32(f, 3), set_lanes(D, 2 + D)), m1));
    q1 = _mm256_or_si256(q1, _mm256_and_si256(_mm256_srlv_epi32(f, set_lanes(1 + D, 3 + D)), m1));
  }
  if constexpr (BITS >= 6) {
    const __m256i f = _mm256_broadcastsi128_si256(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.p2 + ng * kPlaneBytesPerGroup[2])));
    const __m256i m2 = _mm256_set1_epi8(static_cast<char>((BITS == 6 ? 0x04 : 0x06) >> D));  // to bits 1..2
    q0 = _mm256_or_si256(q0, _mm256_and_si256(_mm256_srlv_epi32(_mm256_slli_epi32(f, 1), set_lanes(D, 2 + D)), m2));
    q1 = _mm256_or_si256(q1, _mm256_and_si256(_mm256_srlv_epi32(f, set_lanes(3 + D, 5 + D)), m2));
  }
  if constexpr (BITS == 8) {
    // p3: bit j of byte i = q[0] of element i + 8j; qword j of the broadcast holds elements 8j..8j+7
    long long b8;
    __builtin_memcpy(&b8, w.p3 + ng * kPlaneBytesPerGroup[3], 8);
    const __m256i f = _mm256_set1_epi64x(b8);
    const __m256i one = _mm256_set1_epi8(D == 0 ? 1 : 0);  // q[0] is below every table index (D >= 1)
    q0 = _mm256_or_si256(q0, _mm256_and_si256(_mm256_srlv_epi64(f, _mm256_setr_epi64x(0, 1, 2, 3)), one));
    q1 = _mm256_or_si256(q1, _mm256_and_si256(_mm256_srlv_epi64(f, _mm256_setr_epi64x(4, 5, 6, 7)), one));
  }
  // the sign bit of each element's code moved to bit 7: lo4 for elements 0..31, p0 for 32..63
  if constexpr (H) {
    const __m256i one = _mm256_set1_epi8(1);
    q0 = _mm256_sign_epi8(q0, _mm256_or_si256(lo4, one));  // negates where bit 7 is set
    q1 = _mm256_sign_epi8(q1, _mm256_or_si256(p0, one));
  } else {
    const __m256i bit7 = _mm256_set1_epi8(static_cast<char>(0x80));
    _mm256_store_si256(reinterpret_cast<__m256i*>(sign), _mm256_and_si256(lo4, bit7));
    _mm256_store_si256(reinterpret_cast<__m256i*>(sign + 32), _mm256_and_si256(p0, bit7));
  }
  _mm256_store_si256(reinterpret_cast<__m256i*>(bytes), q0);
  _mm256_store_si256(reinterpret_cast<__m256i*>(bytes + 32), q1);
}

inline __m256i load8_i8(const int8_t* p, bool sign_extend) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return sign_extend ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
}

// The 64 values of one group (units of 2^(e-7), divided by kDecodeUnit) as eight 8-lane floats:
// byte-lane assembly (assemble), then per 8 weights a widening load from the stack buffer
// (no shuffles) and a convert, a level lookup (vpermps for k <= 4, a gather above) and the sign.
template <int BITS, int RULE>
inline void decode_group(const Tables& t, const SEFPWeightView& w, int64_t ng, __m256 v[8]) {
  alignas(32) int8_t bytes[kGroup];
  alignas(32) int8_t sign[kGroup];
  assemble<BITS, RULE>(w, ng, bytes, sign);
  constexpr bool kSigned = kHalved<BITS, RULE> || (BITS == 3 && RULE == kFloor);
  for (int s = 0; s < 8; ++s) {
    const __m256i d = load8_i8(bytes + 8 * s, kSigned);
    if constexpr (kSigned) {
      v[s] = _mm256_cvtepi32_ps(d);
      continue;
    }
    __m256 mag;
    if constexpr (RULE == kTable && BITS == 3) {
      mag = _mm256_permutevar8x32_ps(t.lo, d);
    } else if constexpr (RULE == kTable && BITS == 4) {
      // 16 levels: two 8-entry vpermps, blended on bit 3 of the level index
      mag = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.lo, d), _mm256_permutevar8x32_ps(t.hi, d),
                             _mm256_castsi256_ps(_mm256_slli_epi32(d, 28)));
    } else if constexpr (RULE == kTable) {
      mag = _mm256_i32gather_ps(t.row, d, 4);
    } else if constexpr (RULE == kCenter && BITS == 8) {
      mag = _mm256_add_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(0.5f));
    } else {
      mag = _mm256_cvtepi32_ps(d);
    }
    const __m256i sg = _mm256_slli_epi32(load8_i8(sign + 8 * s, false), 24);  // 0x80 -> bit 31
    v[s] = _mm256_xor_ps(mag, _mm256_castsi256_ps(sg));
  }
}

// Few activation rows (decode): every group is decoded once and dotted with
// each activation row. One weight row at a time: with 16 ymm registers, two
// rows' decoded groups spill (measured slower for every precision).
template <int BITS, int RULE, int M>
void matvec(const LinearPlan& a, int64_t n_begin, int64_t n_end) {
  const Tables t = load_tables(a);
  const SEFPWeightView& w = a.w;
  const int64_t G = w.num_groups, N = a.ldy;  // y row stride
  alignas(32) float scales[kScaleChunk];
  for (int64_t n = n_begin; n < n_end; ++n) {
    __m256 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t g0 = 0; g0 < G; g0 += kScaleChunk) {
      const int64_t gc = min64(kScaleChunk, G - g0);
      group_scales(w.exponents + n * G + g0, gc, scales);
      for (int64_t gg = 0; gg < gc; ++gg) {
        const int64_t g = g0 + gg;
        __m256 v[8];
        decode_group<BITS, RULE>(t, w, n * G + g, v);
        const __m256 scale = _mm256_set1_ps(scales[gg] * kDecodeUnit<BITS, RULE>);
        for (int m = 0; m < M; ++m) {
          const float* x = a.x + m * a.ldx + g * kGroup;
          __m256 s0 = _mm256_mul_ps(_mm256_loadu_ps(x), v[0]);
          __m256 s1 = _mm256_mul_ps(_mm256_loadu_ps(x + 8), v[1]);
          for (int b = 2; b < 8; b += 2) {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8 * b), v[b], s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8 * b + 8), v[b + 1], s1);
          }
          acc[m] = _mm256_fmadd_ps(_mm256_add_ps(s0, s1), scale, acc[m]);
        }
      }
    }
    for (int m = 0; m < M; ++m) a.y[m * N + n] = hsum(acc[m]) + (a.bias ? a.bias[n] : 0.0f);
  }
}

inline __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// MR x NR dot products over kc (MR <= 3, NR <= 4; 3 x 4 measured faster than
// 2 x 4 although 12 accumulators leave few of the 16 ymm registers for loads).
template <int MR, int NR>
void micro(const float* x, int64_t ldx, const float* wb, int64_t kc, float* y, int64_t ldy) {
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; k += 8) {
    __m256 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = _mm256_load_ps(wb + j * kc + k);
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * ldx + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
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
constexpr const MicroFn* kMicro[3] = {kMicroRow<1>, kMicroRow<2>, kMicroRow<3>};

template <int BITS, int RULE>
void gemm(const LinearPlan& a, int64_t n_begin, int64_t n_end) {
  const Tables t = load_tables(a);
  constexpr int kNB = 16;
  constexpr int kKG = 8;
  alignas(32) float wbuf[kNB * kKG * kGroup];
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
          __m256 v[8];
          decode_group<BITS, RULE>(t, w, ng, v);
          const __m256 scale = _mm256_set1_ps(unit_scale(w.exponents[ng]) * kDecodeUnit<BITS, RULE>);
          float* dst = wbuf + j * kc + gg * kGroup;
          for (int b = 0; b < 8; ++b) _mm256_store_ps(dst + 8 * b, _mm256_mul_ps(v[b], scale));
        }
      }
      for (int64_t m0 = 0; m0 < a.rows; m0 += 3) {
        const int64_t mr = min64(3, a.rows - m0);
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
  const SEFPWeightView& w = e.w;
  const int64_t G = w.num_groups, K = w.in_features;
  alignas(32) float tail[kGroup];
  for (int64_t i = begin; i < end; ++i) {
    float* dst = e.out + i * K;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t ng = e.ids[i] * G + g;
      __m256 v[8];
      decode_group<BITS, RULE>(t, w, ng, v);
      const __m256 scale = _mm256_set1_ps(unit_scale(w.exponents[ng]) * kDecodeUnit<BITS, RULE>);
      const int64_t count = min64(kGroup, K - g * kGroup);
      float* out = count == kGroup ? dst + g * kGroup : tail;
      for (int b = 0; b < 8; ++b) _mm256_storeu_ps(out + 8 * b, _mm256_mul_ps(v[b], scale));
      if (count != kGroup) __builtin_memcpy(dst + g * kGroup, tail, static_cast<size_t>(count) * sizeof(float));
    }
  }
}

}  // namespace

OTARO_SEFP_DEFINE_KERNELS(linear_range_avx2, embedding_range_avx2)

}  // namespace detail
}  // namespace otaro
