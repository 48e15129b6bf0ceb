// Int8-activation kernel (AVX-512 VNNI + VBMI), docs/FORMAT.md §9: y = fq(x) @ W_k^T for E5M3 to
// E5M6 with levels on the int8 grid, few activation rows (decode). On VNNI CPUs without VBMI (Cascade
// Lake) the VNNI kernel (sefp_kernel_avx512_vnni.cc) runs E5M3 and E5M4; this unit is separate
// because its -mavx512vbmi must not reach code that runs there.
//
// The same paired-group loop as the VNNI kernel's E5M3 (sefp_kernel_avx512_int8.h: two groups per
// step, weights as u8 = L / 2 + 128 from the signed half level, activations as s8 with the + 128
// part taken off once per task, one vpdpbusd per 64 products). Only the weight decode differs: a
// byte index of (sign, q[7:8-k]) built from the planes in element order, then one table lookup over
// all 64 bytes.
// * E5M3: index = the p0 nibble, s << 3 | q[7:5] (16 entries, repeated in 16..63): the low nibbles
//   as loaded, the high ones after one 16-bit shift, and no masking, since vpermb ignores index
//   bits 6..7 and the repetition bits 4..5 (vpshufb, on VNNI alone, needs both nibbles masked).
//   1.08-1.14x per call cache-resident over the vpshufb decode.
// * E5M4: index = s << 4 | q[7:4] (32 entries, repeated in 32..63): the p0 nibble shifted to bits
//   1..4 and q[4] (the high bit of the p1 field) in bit 0; one vpermb. On the one-group loop
//   (VNNI) E5M4 took as long as E5M5 here, although it reads a fifth fewer bytes.
// * E5M5: index = s << 5 | q[7:3] (64 entries): the p0 nibble shifted to bits 2..5 and the p1
//   field (q[4:3]) in bits 0..1; one vpermb (_mm512_permutexvar_epi8, bits 6..7 ignored).
// * E5M6: index = s << 6 | q[7:2] (128 entries): the nibble in bits 3..6, the p1 field in bits
//   1..2, q[2] (the high bit of the p2 field) in bit 0; one vpermi2b (bit 6 picks the negative
//   half of the table, bit 7 ignored).
// Plane layouts (docs/FORMAT.md §4): p0 byte i holds elements i (low nibble) and i + 32 (high);
// p1 / p2 byte i holds elements i + 16f in bits 2f..2f+1, f = 0..3.
#include <immintrin.h>

#include "core/sefp_kernel_avx512_common.h"
#include "core/sefp_kernel_avx512_int8.h"
#include "core/sefp_kernel_internal.h"

namespace otaro {
namespace detail {
namespace {

constexpr int kSelect = 0xE4;  // ternary logic: c ? a : b, bitwise

// Signed half levels of precision BITS (entries 0..2^BITS-1 positive, the next 2^BITS negative), + 128
// as u8, as one (E5M3: four times over; E5M4: twice over; E5M5) or two (E5M6) 64-byte tables.
template <int BITS>
struct WideDecoder {
  static_assert(BITS >= 3 && BITS <= 6, "the VBMI path is E5M3's to E5M6's");
  __m512i table[2];
  __m512i field_shift[2];  // lo / hi half: where field f of p1 sits, per 128-bit lane
  __m512i q2_shift[2];     // E5M6: where q[2] of the p2 field sits

  explicit WideDecoder(const LinearPlan& a) {
    alignas(64) int8_t t[128];
    constexpr int kEntries = BITS <= 4 ? 64 : 2 << BITS;  // E5M3 / E5M4: index bits 4..5 are not cleared
    for (int i = 0; i < kEntries; ++i) {
      const int half = static_cast<int>(a.row[i & ((1 << BITS) - 1)]) / 2;  // plan: even integers in [0, 254]
      t[i] = static_cast<int8_t>(((i >> BITS) & 1 ? -half : half) ^ 0x80);  // u8 = L / 2 + 128
    }
    table[0] = _mm512_load_si512(t);
    table[1] = BITS == 6 ? _mm512_load_si512(t + 64) : _mm512_setzero_si512();
    // lane l of the lo half reads field l & 1 (bits 2(l & 1)..), of the hi half field 2 + (l & 1)
    if constexpr (BITS == 4) {  // q[4] (bit 2f + 1) to bit 0: shift right by 2f + 1
      field_shift[0] = _mm512_set_epi32(3, 3, 3, 3, 1, 1, 1, 1, 3, 3, 3, 3, 1, 1, 1, 1);
      field_shift[1] = _mm512_set_epi32(7, 7, 7, 7, 5, 5, 5, 5, 7, 7, 7, 7, 5, 5, 5, 5);
    } else if constexpr (BITS == 5) {  // field to bits 0..1: shift right by 2f
      field_shift[0] = _mm512_set_epi32(2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0);
      field_shift[1] = _mm512_set_epi32(6, 6, 6, 6, 4, 4, 4, 4, 6, 6, 6, 6, 4, 4, 4, 4);
    } else {  // field to bits 1..2: rotate left by 1 - 2f; q[2] (bit 2f + 1) to bit 0: left by 31 - 2f
      field_shift[0] = _mm512_set_epi32(31, 31, 31, 31, 1, 1, 1, 1, 31, 31, 31, 31, 1, 1, 1, 1);
      field_shift[1] = _mm512_set_epi32(27, 27, 27, 27, 29, 29, 29, 29, 27, 27, 27, 27, 29, 29, 29, 29);
      q2_shift[0] = _mm512_set_epi32(29, 29, 29, 29, 31, 31, 31, 31, 29, 29, 29, 29, 31, 31, 31, 31);
      q2_shift[1] = _mm512_set_epi32(25, 25, 25, 25, 27, 27, 27, 27, 25, 25, 25, 25, 27, 27, 27, 27);
    }
  }

  void decode(const SEFPWeightView& w, int64_t ng, bool both, __m512i* lo, __m512i* hi) const {
    const __m512i b = load_p0_pair(w, ng, both);
    if constexpr (BITS == 3) {
      // the nibbles as they are: bits 4..5 of an index carry the other nibble, which the table
      // (repeated every 16 entries) ignores, and vpermb ignores bits 6..7; no masking
      *lo = _mm512_permutexvar_epi8(b, table[0]);
      *hi = _mm512_permutexvar_epi8(_mm512_srli_epi16(b, 4), table[0]);
      return;
    }
    const __m512i p1 = load_field_plane_pair(w.p1, ng, both);
    if constexpr (BITS == 4) {
      // nibble bits 0..3 (lo) / 4..7 (hi) to 1..4; bits 5..7 carry other bits, which the repeated
      // table (bit 5) and vpermb (bits 6..7) ignore
      const __m512i one = _mm512_set1_epi8(0x01);
      const __m512i ilo =
          _mm512_ternarylogic_epi32(_mm512_srlv_epi32(p1, field_shift[0]), _mm512_slli_epi16(b, 1), one, kSelect);
      const __m512i ihi =
          _mm512_ternarylogic_epi32(_mm512_srlv_epi32(p1, field_shift[1]), _mm512_srli_epi16(b, 3), one, kSelect);
      *lo = _mm512_permutexvar_epi8(ilo, table[0]);
      *hi = _mm512_permutexvar_epi8(ihi, table[0]);
    } else if constexpr (BITS == 5) {
      // nibble bits 0..3 (lo) / 4..7 (hi) to 2..5; 16-bit shifts carry nothing into bits 2..5
      const __m512i three = _mm512_set1_epi8(0x03);
      const __m512i ilo =
          _mm512_ternarylogic_epi32(_mm512_srlv_epi32(p1, field_shift[0]), _mm512_slli_epi16(b, 2), three, kSelect);
      const __m512i ihi =
          _mm512_ternarylogic_epi32(_mm512_srlv_epi32(p1, field_shift[1]), _mm512_srli_epi16(b, 2), three, kSelect);
      *lo = _mm512_permutexvar_epi8(ilo, table[0]);
      *hi = _mm512_permutexvar_epi8(ihi, table[0]);
    } else {
      const __m512i p2 = load_field_plane_pair(w.p2, ng, both);
      const __m512i six = _mm512_set1_epi8(0x06), seven = _mm512_set1_epi8(0x07);
      const __m512i flo = _mm512_ternarylogic_epi32(_mm512_rolv_epi32(p1, field_shift[0]),
                                                    _mm512_rolv_epi32(p2, q2_shift[0]), six, kSelect);
      const __m512i fhi = _mm512_ternarylogic_epi32(_mm512_rolv_epi32(p1, field_shift[1]),
                                                    _mm512_rolv_epi32(p2, q2_shift[1]), six, kSelect);
      // nibble to bits 3..6
      const __m512i ilo = _mm512_ternarylogic_epi32(flo, _mm512_slli_epi16(b, 3), seven, kSelect);
      const __m512i ihi = _mm512_ternarylogic_epi32(fhi, _mm512_srli_epi16(b, 1), seven, kSelect);
      *lo = _mm512_permutex2var_epi8(table[0], ilo, table[1]);
      *hi = _mm512_permutex2var_epi8(table[0], ihi, table[1]);
    }
  }
};

template <int BITS>
struct WideContext {
  WideDecoder<BITS> decoder;
  PairedActivations x;
  explicit WideContext(const LinearPlan& a) : decoder(a) { x.fill(a); }
};

template <int BITS, int M>
void wide_matvec(const LinearPlan& a, int64_t n_begin, int64_t n_end) {
  const WideContext<BITS> c(a);
  constexpr int kRows = M == 1 ? 4 : 2;
  for_row_blocks<kRows>(
      a.w.num_groups, n_begin, n_end, [&](int64_t n) { paired_rows<BITS, M, kRows>(a, c.x, c.decoder, n); },
      [&](int64_t n) { paired_rows<BITS, M, 1>(a, c.x, c.decoder, n); });
}

template <int BITS>
void wide_bits(const LinearPlan& a, int64_t n_begin, int64_t n_end) {
  switch (a.rows) {
    case 1: return wide_matvec<BITS, 1>(a, n_begin, n_end);
    case 2: return wide_matvec<BITS, 2>(a, n_begin, n_end);
    default: return wide_matvec<BITS, 3>(a, n_begin, n_end);  // plan: rows <= 3
  }
}

}  // namespace

void linear_range_avx512_vbmi(const LinearPlan& a, int64_t n_begin, int64_t n_end) {
  const bool paired = PairedActivations::fits(a);
  // E5M3 / E5M4 rows longer than the paired activations hold: the VNNI kernel (one-group loop)
  if (a.bits <= 4 && !paired) return linear_range_avx512_vnni(a, n_begin, n_end);
  // E5M5 / E5M6 rows that long: the float kernel on fq(x) (a.x)
  if (!paired) return linear_range_avx512(a, n_begin, n_end);
  if (a.bits == 3) return wide_bits<3>(a, n_begin, n_end);
  if (a.bits == 4) return wide_bits<4>(a, n_begin, n_end);
  if (a.bits == 5) return wide_bits<5>(a, n_begin, n_end);
  return wide_bits<6>(a, n_begin, n_end);  // plan: bits <= 6
}

}  // namespace detail
}  // namespace otaro
