// AVX2 + FMA kernel. Same structure as the AVX-512 one with 8-lane vectors:
// a group of 64 weights is eight sub-blocks s (elements 8s..8s+7). Decode rules:
// floor E5M3 by vpshufb, other E5M3 tables by one vpermps, E5M4 tables by two;
// k >= 5 floor/center by shift/mask, any other row by a gather.
// Plane addressing of element i = 8s + l (see otaro_export/packing.py):
//   p0 byte 8(s&3)+l, nibble s>>2;  p1/p2 byte 8(s&1)+l, field s>>1;  p3 byte l, bit s.
#include <immintrin.h>

#include "core/sefp_kernel_internal.h"

namespace otaro {
namespace detail {
namespace {

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

template <int S>
inline __m256i shift_left(__m256i v) {
  if constexpr (S >= 0)
    return _mm256_slli_epi32(v, S);
  else
    return _mm256_srli_epi32(v, -S);
}

inline __m256i load8_u8(const uint8_t* p) {
  long long b8;
  __builtin_memcpy(&b8, p, 8);
  return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(b8));
}

struct GroupBytes {
  __m256i c[4];   // p0 bytes 8j..8j+7 widened
  __m256i f1[2];  // p1 bytes 8j..8j+7
  __m256i f2[2];  // p2
  __m256i f3;     // p3 bytes 0..7
};

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

template <int BITS, int RULE, int S>
inline __m256 decode_sub(const Tables& t, const GroupBytes& gb) {
  const __m256i c = gb.c[S & 3];
  const __m256i sign =
      _mm256_and_si256(shift_left<(S >> 2) ? 24 : 28>(c), _mm256_set1_epi32(static_cast<int>(0x80000000u)));
  __m256 mag;
  if constexpr (BITS == 3) {
    // level of q[7:5] by an 8-entry vpermps (it reads the low 3 bits of each lane)
    mag = _mm256_permutevar8x32_ps(t.lo, (S >> 2) ? _mm256_srli_epi32(c, 4) : c);
  } else {
    constexpr int kHalf = (RULE == kCenter && BITS <= 7) ? 1 << (7 - BITS) : 0;  // center: bit 7-k, free in q_k
    __m256i q = _mm256_and_si256(shift_left<(S >> 2) ? 1 : 5>(c), _mm256_set1_epi32(0xE0));
    if constexpr (kHalf != 0) q = _mm256_or_si256(q, _mm256_set1_epi32(kHalf));
    constexpr int m1 = BITS == 4 ? 0x10 : 0x18;
    q = _mm256_or_si256(q, _mm256_and_si256(shift_left<3 - 2 * (S >> 1)>(gb.f1[S & 1]), _mm256_set1_epi32(m1)));
    if constexpr (BITS >= 6) {
      constexpr int m2 = BITS == 6 ? 0x04 : 0x06;
      q = _mm256_or_si256(q, _mm256_and_si256(shift_left<1 - 2 * (S >> 1)>(gb.f2[S & 1]), _mm256_set1_epi32(m2)));
    }
    if constexpr (BITS == 8) q = _mm256_or_si256(q, _mm256_and_si256(shift_left<-S>(gb.f3), _mm256_set1_epi32(1)));
    if constexpr (RULE == kTable && BITS == 4) {
      // 16 levels: two 8-entry vpermps, blended on bit 3 of the level index
      const __m256i j = _mm256_srli_epi32(q, 4);
      mag = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.lo, j), _mm256_permutevar8x32_ps(t.hi, j),
                             _mm256_castsi256_ps(_mm256_slli_epi32(j, 28)));
    } else if constexpr (RULE == kTable) {
      mag = _mm256_i32gather_ps(t.row, _mm256_srli_epi32(q, 8 - BITS), 4);
    } else if constexpr (RULE == kCenter && BITS == 8) {
      mag = _mm256_add_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(0.5f));
    } else {
      mag = _mm256_cvtepi32_ps(q);
    }
  }
  return _mm256_xor_ps(mag, _mm256_castsi256_ps(sign));
}

// decode_group's values are (value in units of 2^(e-7)) / kDecodeUnit: floor E5M3 decodes
// q_3 >> 5 (-7..7) with one byte-table lookup per 32 weights; the scale absorbs the 32.
template <int BITS, int RULE>
constexpr float kDecodeUnit = (BITS == 3 && RULE == kFloor) ? 32.0f : 1.0f;

// Floor E5M3: vpshufb maps each code (sign<<3 | q[7:5]) to the int8 +-(q[7:5]);
// p0's low nibbles are elements 0..31 and its high nibbles 32..63, in order.
inline void decode_group_m3(const uint8_t* p0, __m256 v[8]) {
  const __m256i table = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 0, -1, -2, -3, -4, -5, -6, -7,  //
                                         0, 1, 2, 3, 4, 5, 6, 7, 0, -1, -2, -3, -4, -5, -6, -7);
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p0));
  const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(bytes, nibble));
  const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble));
  const __m128i quarter[4] = {_mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1), _mm256_castsi256_si128(hi),
                              _mm256_extracti128_si256(hi, 1)};
  for (int q = 0; q < 4; ++q) {  // 16 elements each, widened 8 at a time
    v[2 * q] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(quarter[q]));
    v[2 * q + 1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(quarter[q], quarter[q])));
  }
}

template <int BITS, int RULE>
inline void decode_group(const Tables& t, const SEFPWeightView& w, int64_t ng, __m256 v[8]) {
  if constexpr (BITS == 3 && RULE == kFloor) {
    decode_group_m3(w.p0 + ng * kPlaneBytesPerGroup[0], v);
    return;
  }
  GroupBytes gb;
  const uint8_t* p0 = w.p0 + ng * kPlaneBytesPerGroup[0];
  for (int j = 0; j < 4; ++j) gb.c[j] = load8_u8(p0 + 8 * j);
  if constexpr (BITS >= 4) {
    gb.f1[0] = load8_u8(w.p1 + ng * kPlaneBytesPerGroup[1]);
    gb.f1[1] = load8_u8(w.p1 + ng * kPlaneBytesPerGroup[1] + 8);
  }
  if constexpr (BITS >= 6) {
    gb.f2[0] = load8_u8(w.p2 + ng * kPlaneBytesPerGroup[2]);
    gb.f2[1] = load8_u8(w.p2 + ng * kPlaneBytesPerGroup[2] + 8);
  }
  if constexpr (BITS == 8) gb.f3 = load8_u8(w.p3 + ng * kPlaneBytesPerGroup[3]);
  v[0] = decode_sub<BITS, RULE, 0>(t, gb);
  v[1] = decode_sub<BITS, RULE, 1>(t, gb);
  v[2] = decode_sub<BITS, RULE, 2>(t, gb);
  v[3] = decode_sub<BITS, RULE, 3>(t, gb);
  v[4] = decode_sub<BITS, RULE, 4>(t, gb);
  v[5] = decode_sub<BITS, RULE, 5>(t, gb);
  v[6] = decode_sub<BITS, RULE, 6>(t, gb);
  v[7] = decode_sub<BITS, RULE, 7>(t, gb);
}

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

constexpr int64_t kScaleChunk = 256;

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
