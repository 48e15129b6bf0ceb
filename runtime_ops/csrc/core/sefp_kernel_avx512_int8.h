// The paired-group int8-activation loop (docs/FORMAT.md §9) shared by the AVX-512 VNNI
// (E5M3) and VNNI + VBMI (E5M5, E5M6) translation units; see sefp_kernel_avx512_vnni.cc.
//
// Included only by TUs compiled with at least -mavx512f/bw/vl/dq -mavx512vnni; everything is
// in an anonymous namespace, so each TU keeps its own copy compiled with its own flags (see the
// COMDAT note in sefp_kernel_internal.h).
#pragma once

#include <immintrin.h>

#include "core/sefp_kernel_avx512_common.h"
#include "core/sefp_kernel_internal.h"

namespace otaro {
namespace detail {
namespace {

// Decode streams its weights from memory (a SmolLM2 token reads ~75 MB at E5M3), and the rows
// are short (K = 576: 288 bytes of p0), so the hardware prefetcher keeps restarting. While block
// [n, n + R) is computed, pull in the block kPrefetchBlocks ahead: its R * G * bytes-per-group of
// every plane precision BITS reads, spread over the block's G group steps, plus its exponents.
constexpr int64_t kPrefetchBlocks = 4;

// Prefetches this group step's share of the `bytes` of one plane of that block.
inline void prefetch_share(const uint8_t* block, int64_t bytes, int64_t g, int64_t G) {
  const int64_t lines = (bytes + 63) / 64;
  for (int64_t line = g * lines / G; line < (g + 1) * lines / G; ++line)
    _mm_prefetch(reinterpret_cast<const char*>(block) + 64 * line, _MM_HINT_T0);
}

template <int BITS, int R>
inline void prefetch_ahead(const SEFPWeightView& w, int64_t n, int64_t g) {
  const int64_t G = w.num_groups, ahead = n + kPrefetchBlocks * R;
  if (ahead + R > w.out_features) return;
  prefetch_share(w.p0 + ahead * G * kPlaneBytesPerGroup[0], R * G * kPlaneBytesPerGroup[0], g, G);
  if constexpr (BITS >= 4)
    prefetch_share(w.p1 + ahead * G * kPlaneBytesPerGroup[1], R * G * kPlaneBytesPerGroup[1], g, G);
  if constexpr (BITS >= 6)
    prefetch_share(w.p2 + ahead * G * kPlaneBytesPerGroup[2], R * G * kPlaneBytesPerGroup[2], g, G);
  if (g == 0) _mm_prefetch(reinterpret_cast<const char*>(w.exponents + ahead * G), _MM_HINT_T0);
}

// The activations of a task's rows (<= 3) rearranged once per task for groups taken in pairs.
// Pair j of row m: q[m][j] = the signed q of [A 0..31 | B 0..31] and [A 32..63 | B 32..63] (A =
// group 2j, B = group 2j + 1, zero past the last group), and negc[m][j] = -128 x the sum of the four
// q of each int32 lane over both halves. The decoders give weights as u8 = s8 + 128 (the signed half
// level with its top bit flipped), so vpdpbusd (u8 x s8) adds 128 x those sums to the exact product;
// starting each dot from negc takes it off again, for all weight rows at once.
constexpr int64_t kMaxPairs = 32;  // K <= 4096; longer rows take another path (see the users)
struct PairedActivations {
  alignas(64) int8_t q[3][kMaxPairs][2][64];
  alignas(64) int32_t negc[3][kMaxPairs][16];

  static bool fits(const LinearPlan& a) { return (a.w.num_groups + 1) / 2 <= kMaxPairs && a.rows <= 3; }

  // Fills the pairs of a plan that fits().
  void fill(const LinearPlan& a) {
    const int64_t G = a.w.num_groups, pairs = (G + 1) / 2;
    const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));  // 128 as u8
    for (int64_t m = 0; m < a.rows; ++m)
      for (int64_t j = 0; j < pairs; ++j) {
        const int8_t* src = a.xq + m * a.ldx + 2 * j * kGroup;
        const __m512i qa = _mm512_loadu_si512(src);
        const __m512i qb = 2 * j + 1 < G ? _mm512_loadu_si512(src + kGroup) : _mm512_setzero_si512();
        const __m512i halves[2] = {
            _mm512_inserti64x4(qa, _mm512_castsi512_si256(qb), 1),  // elements 0..31
            _mm512_inserti64x4(_mm512_shuffle_i64x2(qa, qa, 0xEE), _mm512_extracti64x4_epi64(qb, 1), 1)};  // 32..63
        __m512i sums = _mm512_setzero_si512();
        for (int h = 0; h < 2; ++h) {
          _mm512_store_si512(q[m][j][h], halves[h]);
          sums = _mm512_dpbusd_epi32(sums, offset, halves[h]);  // 128 x (q0 + q1 + q2 + q3) per lane
        }
        _mm512_store_si512(negc[m][j], _mm512_sub_epi32(_mm512_setzero_si512(), sums));
      }
  }
};

// The p0 bytes of groups ng and ng + 1 (one 64-byte load; the second half zero when `both` is
// false: the odd last group of a row).
inline __m512i load_p0_pair(const SEFPWeightView& w, int64_t ng, bool both) {
  const uint8_t* p = w.p0 + ng * kPlaneBytesPerGroup[0];
  return both ? _mm512_loadu_si512(p) : _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// 16 bytes per group of plane p1 or p2 for groups ng and ng + 1, as 128-bit lanes [A, A, B, B]:
// lane l of a half vector holds elements 16l.. of [A 0..31 | B 0..31] (or of 32..63), so it reads
// field (l & 1) (or 2 + (l & 1)), bits 2f..2f+1, of the same byte positions.
static_assert(kPlaneBytesPerGroup[1] == 16 && kPlaneBytesPerGroup[2] == 16, "p1 / p2: 2 bits per weight");
inline __m512i load_field_plane_pair(const uint8_t* plane, int64_t ng, bool both) {
  const uint8_t* p = plane + ng * kPlaneBytesPerGroup[1];
  const __m256i v = both ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                         : _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m512i wide = _mm512_castsi256_si512(v);
  return _mm512_shuffle_i64x2(wide, wide, 0x50);  // lanes [0, 0, 1, 1]
}

// M activation rows x R weight rows from row n, two groups per step. `d.decode(w, ng, both, lo,
// hi)` gives the weights of groups ng and ng + 1 as u8 = L / 2 + 128 with L the signed level (levels
// are even, so L / 2 fits an s8; + 128 flips its top bit), in the element order of the activation
// pairs (lo: [A 0..31 | B 0..31], hi: [A 32..63 | B 32..63]); `x` holds the activations
// (PairedActivations). vpdpbusd multiplies those u8 weights by the s8 activations, starting from
// negc (the + 128 part, PairedActivations), so no sign is moved per weight row. Exact: per int32
// lane 2 x 4 products of at most 255 * 127 plus negc, |sum| < 2^19, so the conversion to float32 is
// exact too, and the sum equals the signed one. Lanes 0-7 then hold group A's partial sums and
// lanes 8-15 group B's, and one convert + FMA with the two groups' scales, 2^(e-7) * (a / 127)
// x2 for the halving, covers both.
template <int BITS, int M, int R, typename Decoder>
void paired_rows(const LinearPlan& a, const PairedActivations& x, const Decoder& d, int64_t n) {
  const SEFPWeightView& w = a.w;
  const int64_t G = w.num_groups;
  // lanes 0-7 take the first group's scale, lanes 8-15 the second's (+ gg: the pair's place in the chunk)
  const __m512i spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  __m512 acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  // The scales of 16 groups at a time stay in registers (a pair never straddles two chunks).
  for (int64_t g0 = 0; g0 < G; g0 += 16) {
    const int64_t gc = min64(16, G - g0);
    const __mmask16 keep = gc >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << gc) - 1);
    __m512 both[M][R];  // weight scale x activation scale of the chunk's 16 groups (zero past gc)
    __m512 xs[M];
    for (int m = 0; m < M; ++m) xs[m] = _mm512_maskz_loadu_ps(keep, a.xscale + m * G + g0);
    for (int r = 0; r < R; ++r) {
      const __m512 ws = group_scales16<1>(w.exponents + (n + r) * G + g0, gc, keep);  // x2: half levels
      for (int m = 0; m < M; ++m) both[m][r] = _mm512_maskz_mul_ps(keep, xs[m], ws);
    }
    for (int64_t gg = 0; gg < gc; gg += 2) {
      const int64_t g = g0 + gg, j = g / 2;
      prefetch_ahead<BITS, R>(w, n, g);
      if (gg + 1 < gc) prefetch_ahead<BITS, R>(w, n, g + 1);
      const __m512i pick = _mm512_add_epi32(spread, _mm512_set1_epi32(static_cast<int>(gg)));
      __m512i wlo[R], whi[R];
      for (int r = 0; r < R; ++r) d.decode(w, (n + r) * G + g, g + 1 < G, &wlo[r], &whi[r]);
      for (int m = 0; m < M; ++m) {
        const __m512i xlo = _mm512_load_si512(x.q[m][j][0]), xhi = _mm512_load_si512(x.q[m][j][1]);
        const __m512i negc = _mm512_load_si512(x.negc[m][j]);
        for (int r = 0; r < R; ++r) {
          const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(negc, wlo[r], xlo), whi[r], xhi);
          acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(pick, both[m][r]), acc[m][r]);
        }
      }
    }
  }
  store_row_block<M, R>(a, n, acc);
}

}  // namespace
}  // namespace detail
}  // namespace otaro
