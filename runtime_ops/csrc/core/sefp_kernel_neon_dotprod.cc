// Int8-activation kernel (ARMv8.2 dot product, SDOT), docs/FORMAT.md §9: y = fq(x) @ W_k^T for
// E5M3 / E5M4 with levels on the int8 grid, few activation rows (decode). Compiled with
// -march=armv8.2-a+dotprod and run only where the CPU reports it (HWCAP_ASIMDDP).
//
// Per group of 64 weights and weight row: the p0 nibbles (sign << 3 | q[7:5]) become four
// 16-byte vectors in element order; E5M4 adds q[4] (bit 3) and moves the sign to bit 4; one
// table lookup (TBL, 16 or 32 entries) maps that code to the signed half level (int8, the
// level is even and at most 254), so four SDOTs do the 64 multiplies exactly (16 products of
// at most 127 * 127 per int32 lane). The group's sums then take its scales,
// 2 * 2^(e-7) * (a / 127), in one convert + FMA.
#include <arm_neon.h>

#include "core/sefp_kernel_internal.h"

namespace otaro {
namespace detail {
namespace {

constexpr int64_t kScaleChunk = 128;  // groups whose scales sit on the stack at once (per weight row)

// Signed half levels by code: k = 3, [sign << 3 | q[7:5]] (16 entries); k = 4,
// [sign << 4 | q[4] << 3 | q[7:5]] (32 entries), from the plan's magnitudes lut_u8.
struct SignedLevels {
  int8x16x2_t table;
};

template <int BITS>
inline SignedLevels int8_context(const LinearPlan& a) {
  alignas(16) int8_t t[32];
  for (int i = 0; i < 32; ++i) {
    const int sign_bit = BITS == 3 ? 8 : 16;
    const int half = a.lut_u8[i & (BITS == 3 ? 7 : 15)] / 2;
    t[i] = static_cast<int8_t>((i & sign_bit) ? -half : half);
  }
  return SignedLevels{{vld1q_s8(t), vld1q_s8(t + 16)}};
}

// Elements 16j..16j+15 of one group as signed half levels.
template <int BITS>
inline int8x16_t lookup(const SignedLevels& s, uint8x16_t code, uint8x16_t q4_at_bit3) {
  if constexpr (BITS == 3) return vqtbl1q_s8(s.table.val[0], code);
  const uint8x16_t sign_at_bit4 = vshlq_n_u8(vandq_u8(code, vdupq_n_u8(8)), 1);
  const uint8x16_t index = vorrq_u8(vorrq_u8(vandq_u8(code, vdupq_n_u8(7)), q4_at_bit3), sign_at_bit4);
  return vqtbl2q_s8(s.table, index);
}

template <int BITS>
struct Group {
  int8x16_t w[4];  // elements 0..15, 16..31, 32..47, 48..63
};

template <int BITS>
inline Group<BITS> decode(const SignedLevels& s, const SEFPWeightView& w, int64_t ng) {
  const uint8_t* p0 = w.p0 + ng * kPlaneBytesPerGroup[0];
  const uint8x16_t b0 = vld1q_u8(p0), b1 = vld1q_u8(p0 + 16);
  const uint8x16_t low4 = vdupq_n_u8(0x0F);
  const uint8x16_t codes[4] = {vandq_u8(b0, low4), vandq_u8(b1, low4), vshrq_n_u8(b0, 4), vshrq_n_u8(b1, 4)};
  uint8x16_t q4[4] = {vdupq_n_u8(0), vdupq_n_u8(0), vdupq_n_u8(0), vdupq_n_u8(0)};
  if constexpr (BITS == 4) {
    // bit 2j+1 of p1 byte i is q[4] of element 16j + i: move it to bit 3
    const uint8x16_t p1 = vld1q_u8(w.p1 + ng * kPlaneBytesPerGroup[1]);
    const uint8x16_t bit3 = vdupq_n_u8(8);
    q4[0] = vandq_u8(vshlq_n_u8(p1, 2), bit3);
    q4[1] = vandq_u8(p1, bit3);
    q4[2] = vandq_u8(vshrq_n_u8(p1, 2), bit3);
    q4[3] = vandq_u8(vshrq_n_u8(p1, 4), bit3);
  }
  Group<BITS> g;
  for (int j = 0; j < 4; ++j) g.w[j] = lookup<BITS>(s, codes[j], q4[j]);
  return g;
}

// M activation rows x R weight rows from row n.
template <int BITS, int M, int R>
void int8_rows(const LinearPlan& a, const SignedLevels& s, int64_t n) {
  const SEFPWeightView& w = a.w;
  const int64_t G = w.num_groups, N = a.ldy;  // y row stride
  float32x4_t acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = vdupq_n_f32(0.0f);
  float scales[R][kScaleChunk];
  for (int64_t g0 = 0; g0 < G; g0 += kScaleChunk) {
    const int64_t gc = min64(kScaleChunk, G - g0);
    for (int r = 0; r < R; ++r)
      for (int64_t i = 0; i < gc; ++i) scales[r][i] = 2.0f * unit_scale(w.exponents[(n + r) * G + g0 + i]);
    for (int64_t gg = 0; gg < gc; ++gg) {
      const int64_t g = g0 + gg;
      Group<BITS> group[R];
      for (int r = 0; r < R; ++r) group[r] = decode<BITS>(s, w, (n + r) * G + g);
      for (int m = 0; m < M; ++m) {
        const int8_t* q = a.xq + m * a.ldx + g * kGroup;
        const int8x16_t q0 = vld1q_s8(q), q1 = vld1q_s8(q + 16), q2 = vld1q_s8(q + 32), q3 = vld1q_s8(q + 48);
        const float step = a.xscale[m * G + g];
        for (int r = 0; r < R; ++r) {
          int32x4_t dot = vdotq_s32(vdupq_n_s32(0), group[r].w[0], q0);
          dot = vdotq_s32(dot, group[r].w[1], q1);
          dot = vdotq_s32(dot, group[r].w[2], q2);
          dot = vdotq_s32(dot, group[r].w[3], q3);
          acc[m][r] = vfmaq_n_f32(acc[m][r], vcvtq_f32_s32(dot), scales[r][gg] * step);
        }
      }
    }
  }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) a.y[m * N + n + r] = vaddvq_f32(acc[m][r]) + (a.bias ? a.bias[n + r] : 0.0f);
}

}  // namespace

OTARO_SEFP_DEFINE_INT8_KERNEL(linear_range_neon_dotprod)

}  // namespace detail
}  // namespace otaro
