// Int8-activation kernel (AVX-512 VNNI), docs/FORMAT.md §9: y = fq(x) @ W_k^T for E5M3 / E5M4
// with levels on the int8 grid, few activation rows (decode).
//
// Per group of 64 weights and weight row: the p0 nibbles (sign << 3 | q[7:5]) become 64 bytes
// in element order (low nibbles are elements 0..31, high nibbles 32..63); E5M4 puts q[4] in
// place of the sign bit; one vpshufb maps that index to the level magnitude |L| (u8). The
// weight's sign moves onto the activations (one masked byte negation of q), so one vpdpbusd
// (u8 x s8, 4 products per int32 lane, |sum| < 2^17) does the 64 multiplies, exactly. Each
// group's 16 int32 partial sums then take the group's two scales, 2^(e-7) * (a / 127), in one
// convert + FMA. Compared with the float kernel this reads the same bytes and decodes a group
// in about five byte-wide instructions instead of four table lookups of 16 floats each.
//
// E5M3 goes further (the precision that should be fastest; with the one-group loop it took as long
// per call as E5M4, bound by the 512-bit ports, not by its fewer bytes): one 64-byte load holds the
// nibbles of two groups, so the unpacking is shared by two groups; the table holds the signed half
// levels (levels are even, so L / 2 fits an s8) plus 128, a u8, and the activations enter as s8:
// their sums times 128, taken once per task, start each dot, so no sign is moved per weight row.
// Lanes 0-7 then hold one group's partial sums and lanes 8-15 the other's, and one convert + FMA
// with the two groups' scales (x2 for the halving) covers both. Measured (1 thread, SmolLM2
// shapes): 1.3-1.5x the one-group loop with cache-resident weights, 1.1-1.2x cold; the + 128 form
// another 1.07-1.12x warm, 1.03-1.05x cold, over moving the activations' signs onto the weights
// (two masked byte negations per weight row and pair). That loop (paired_rows,
// sefp_kernel_avx512_int8.h) runs E5M3 to E5M6 in the VBMI kernel where the CPU has VBMI
// (sefp_kernel_avx512_vbmi.cc).
#include <immintrin.h>

#include "core/sefp_kernel_avx512_common.h"
#include "core/sefp_kernel_avx512_int8.h"
#include "core/sefp_kernel_internal.h"

namespace otaro {
namespace detail {
namespace {

constexpr int kSelect = 0xE4;  // ternary logic: c ? a : b, bitwise

struct Int8Decode {
  __m512i lut;        // lut_u8 in every 128-bit lane
  __m512i low4;       // 0x0F bytes
  __m512i sign;       // 0x08 bytes
  __m512i p1_rotate;  // dword rotate of 128-bit lane j (elements 16j..): bit 2j+1 of p1 (q[4]) to bit 3
};

template <int BITS>
inline Int8Decode int8_group_context(const LinearPlan& a) {
  return Int8Decode{
      _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(a.lut_u8))),
      _mm512_set1_epi8(0x0F),
      _mm512_set1_epi8(0x08),
      _mm512_set_epi32(28, 28, 28, 28, 30, 30, 30, 30, 0, 0, 0, 0, 2, 2, 2, 2),
  };
}

// E5M3 with groups taken in pairs (see the top; the loop is paired_rows): the signed half-level
// table and the task's activations in pairs.
struct PairedE5M3 {
  Int8Decode base;  // the one-group path, for rows longer than kMaxPairs pairs
  bool paired;
  __m512i signed_half_lut;  // [i] = +-L[i & 7] / 2 + 128 as u8, negative L for i >= 8 (the sign bit), every lane
  PairedActivations x;

  explicit PairedE5M3(const LinearPlan& a) : base(int8_group_context<3>(a)), paired(PairedActivations::fits(a)) {
    alignas(16) int8_t lut[16];
    for (int i = 0; i < 16; ++i) {
      const int half = a.lut_u8[i & 7] / 2;                         // levels are even (plan: the int8 grid)
      lut[i] = static_cast<int8_t>((i < 8 ? half : -half) ^ 0x80);  // u8 = L / 2 + 128 (paired_rows)
    }
    signed_half_lut = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(lut)));
    if (paired) x.fill(a);
  }

  // The nibbles (sign << 3 | q[7:5]) of both groups: low nibbles are elements 0..31, high 32..63.
  void decode(const SEFPWeightView& w, int64_t ng, bool both, __m512i* lo, __m512i* hi) const {
    const __m512i b = load_p0_pair(w, ng, both);
    *lo = _mm512_shuffle_epi8(signed_half_lut, _mm512_and_si512(b, base.low4));
    *hi = _mm512_shuffle_epi8(signed_half_lut, _mm512_and_si512(_mm512_srli_epi16(b, 4), base.low4));
  }
};

// Magnitudes (u8) and sign mask of the 64 weights of group ng.
template <int BITS>
inline __m512i decode_magnitudes(const Int8Decode& d, const SEFPWeightView& w, int64_t ng, __mmask64* negative) {
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.p0 + ng * kPlaneBytesPerGroup[0]));
  const __m256i low4 = _mm512_castsi512_si256(d.low4);
  const __m512i code = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(b, low4)),
                                          _mm256_and_si256(_mm256_srli_epi16(b, 4), low4), 1);
  *negative = _mm512_test_epi8_mask(code, d.sign);
  __m512i index = code;  // k = 3: the sign bit is ignored by the table (entries 8..15 repeat 0..7)
  if constexpr (BITS == 4) {
    const __m512i p1 =
        _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.p1 + ng * kPlaneBytesPerGroup[1])));
    index = _mm512_ternarylogic_epi32(_mm512_rolv_epi32(p1, d.p1_rotate), code, d.sign, kSelect);
  }
  return _mm512_shuffle_epi8(d.lut, index);
}

// M activation rows x R weight rows from row n: every group decoded once per weight row.
template <int BITS, int M, int R>
void int8_rows(const LinearPlan& a, const Int8Decode& d, int64_t n) {
  const SEFPWeightView& w = a.w;
  const int64_t G = w.num_groups;
  __m512 acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  alignas(64) float scales[R][kScaleChunk];
  for (int64_t g0 = 0; g0 < G; g0 += kScaleChunk) {
    const int64_t gc = min64(kScaleChunk, G - g0);
    for (int r = 0; r < R; ++r) group_scales<0>(w.exponents + (n + r) * G + g0, gc, scales[r]);
    for (int64_t gg = 0; gg < gc; ++gg) {
      const int64_t g = g0 + gg;
      prefetch_ahead<BITS, R>(w, n, g);
      __m512i mag[R];
      __mmask64 negative[R];
      for (int r = 0; r < R; ++r) mag[r] = decode_magnitudes<BITS>(d, w, (n + r) * G + g, &negative[r]);
      for (int m = 0; m < M; ++m) {
        const __m512i q = _mm512_loadu_si512(a.xq + m * a.ldx + g * kGroup);
        const float step = a.xscale[m * G + g];
        for (int r = 0; r < R; ++r) {
          const __m512i signed_q = _mm512_mask_sub_epi8(q, negative[r], _mm512_setzero_si512(), q);
          const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), mag[r], signed_q);
          acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(scales[r][gg] * step), acc[m][r]);
        }
      }
    }
  }
  store_row_block<M, R>(a, n, acc);
}

// E5M3, M activation rows x R weight rows from row n, two groups per step.
template <int BITS, int M, int R>
void int8_rows(const LinearPlan& a, const PairedE5M3& d, int64_t n) {
  static_assert(BITS == 3, "the paired path is E5M3's");
  if (!d.paired) return int8_rows<3, M, R>(a, d.base, n);
  paired_rows<3, M, R>(a, d.x, d, n);
}

// The per-task context (OTARO_SEFP_DEFINE_INT8_KERNEL makes one per range): E5M3 takes the paired path.
template <int BITS>
inline auto int8_context(const LinearPlan& a) {
  if constexpr (BITS == 3) {
    return PairedE5M3(a);
  } else {
    return int8_group_context<BITS>(a);
  }
}

}  // namespace

OTARO_SEFP_DEFINE_INT8_KERNEL(linear_range_avx512_vnni)

}  // namespace detail
}  // namespace otaro
