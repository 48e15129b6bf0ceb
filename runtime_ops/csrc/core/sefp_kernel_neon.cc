// ARM64 NEON kernel. Decode runs on 16 weights per instruction in 8-bit lanes
// (q_k fits a byte), then widens to int32 and converts to float32 for FMA.
// Rules: floor and center (bit 7-k set; k = 8: 2 q + 1 at half scale) in the
// integer lanes; tables for k <= 4 by four byte-plane vqtbl lookups per 16
// weights; any other row for k >= 5 by one scalar lookup per weight.
// Block b = elements 16b..16b+15 of a group (see otaro_export/packing.py):
//   p0 bytes 16(b&1).., nibble b>>1;  p1/p2 bytes 0..15, field b;  p3 byte l&7, bit 2b+(l>>3).
#include <arm_neon.h>

#include "core/sefp_kernel_internal.h"

namespace otaro {
namespace detail {
namespace {

template <int S>
inline uint8x16_t shift_left(uint8x16_t v) {
  if constexpr (S > 0)
    return vshlq_n_u8(v, S);
  else if constexpr (S < 0)
    return vshrq_n_u8(v, -S);
  else
    return v;
}

// Byte planes of the magnitude table for k <= 4 (bytes[b][j] = byte b of level j) and
// the levels row for the generic lookup of k >= 5.
struct Tables {
  uint8x16_t bytes[4];
  const float* row;
};

inline Tables load_tables(const LinearPlan& a) {
  return Tables{
      {vld1q_u8(a.lut_bytes[0]), vld1q_u8(a.lut_bytes[1]), vld1q_u8(a.lut_bytes[2]), vld1q_u8(a.lut_bytes[3])}, a.row};
}

// decode_block's values are (value in units of 2^(e-7)) / kDecodeUnit: center E5M8 decodes
// 2 q_8 + 1 (integers), and the scale absorbs the 1/2.
template <int BITS, int RULE>
constexpr float kDecodeUnit = (BITS == 8 && RULE == kCenter) ? 0.5f : 1.0f;

// Integer magnitudes (u16) with the sign applied: (q ^ m) - m per int16 lane.
inline void signed_to_float(uint16x8_t q_lo, uint16x8_t q_hi, int8x16_t neg, float32x4_t out[4]) {
  const int16x8_t m_lo = vmovl_s8(vget_low_s8(neg)), m_hi = vmovl_s8(vget_high_s8(neg));
  const int16x8_t s_lo = vsubq_s16(veorq_s16(vreinterpretq_s16_u16(q_lo), m_lo), m_lo);
  const int16x8_t s_hi = vsubq_s16(veorq_s16(vreinterpretq_s16_u16(q_hi), m_hi), m_hi);
  out[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(s_lo)));
  out[1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(s_lo)));
  out[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(s_hi)));
  out[3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(s_hi)));
}

template <int BITS, int RULE, int B>
inline void decode_block(const Tables& t, uint8x16_t b0, uint8x16_t b1, uint8x16_t p1v, uint8x16_t p2v, uint8x16_t p3v,
                         float32x4_t out[4]) {
  const uint8x16_t raw = (B & 1) ? b1 : b0;
  const uint8x16_t code = (B >> 1) ? vshrq_n_u8(raw, 4) : vandq_u8(raw, vdupq_n_u8(0xF));
  uint8x16_t q = vshlq_n_u8(code, 5);  // (code & 7) << 5: the sign bit shifts out
  if constexpr (BITS >= 4) q = vorrq_u8(q, vandq_u8(shift_left<3 - 2 * B>(p1v), vdupq_n_u8(BITS == 4 ? 0x10 : 0x18)));
  if constexpr (BITS >= 6) q = vorrq_u8(q, vandq_u8(shift_left<1 - 2 * B>(p2v), vdupq_n_u8(BITS == 6 ? 0x04 : 0x06)));
  if constexpr (BITS == 8) {
    const int8x16_t counts = vcombine_s8(vdup_n_s8(-2 * B), vdup_n_s8(-2 * B - 1));
    q = vorrq_u8(q, vandq_u8(vshlq_u8(p3v, counts), vdupq_n_u8(1)));
  }
  const uint8x16_t neg = vtstq_u8(code, vdupq_n_u8(8));  // 0xFF where negative
  if constexpr (RULE == kTable && BITS <= 4) {
    // 16-entry byte-plane lookups, the sign into byte 3's top bit, then bytes -> float32 lanes
    const uint8x16_t j = vshrq_n_u8(q, 8 - BITS);
    const uint8x16_t y0 = vqtbl1q_u8(t.bytes[0], j), y1 = vqtbl1q_u8(t.bytes[1], j);
    const uint8x16_t y2 = vqtbl1q_u8(t.bytes[2], j);
    const uint8x16_t y3 = veorq_u8(vqtbl1q_u8(t.bytes[3], j), vandq_u8(neg, vdupq_n_u8(0x80)));
    const uint16x8_t lo01 = vreinterpretq_u16_u8(vzip1q_u8(y0, y1)), hi01 = vreinterpretq_u16_u8(vzip2q_u8(y0, y1));
    const uint16x8_t lo23 = vreinterpretq_u16_u8(vzip1q_u8(y2, y3)), hi23 = vreinterpretq_u16_u8(vzip2q_u8(y2, y3));
    out[0] = vreinterpretq_f32_u16(vzip1q_u16(lo01, lo23));
    out[1] = vreinterpretq_f32_u16(vzip2q_u16(lo01, lo23));
    out[2] = vreinterpretq_f32_u16(vzip1q_u16(hi01, hi23));
    out[3] = vreinterpretq_f32_u16(vzip2q_u16(hi01, hi23));
  } else if constexpr (RULE == kTable) {
    // generic row (k >= 5): one lookup per lane
    alignas(16) uint8_t j[16], sign[16];
    alignas(16) float v[16];
    vst1q_u8(j, vshrq_n_u8(q, 8 - BITS));
    vst1q_u8(sign, neg);
    for (int l = 0; l < 16; ++l) v[l] = sign[l] ? -t.row[j[l]] : t.row[j[l]];
    for (int l = 0; l < 4; ++l) out[l] = vld1q_f32(v + 4 * l);
  } else if constexpr (RULE == kCenter && BITS == 8) {
    // 2 q_8 + 1 in 16-bit lanes (kDecodeUnit halves the scale)
    const uint16x8_t one = vdupq_n_u16(1);
    signed_to_float(vorrq_u16(vshll_n_u8(vget_low_u8(q), 1), one), vorrq_u16(vshll_n_u8(vget_high_u8(q), 1), one),
                    vreinterpretq_s8_u8(neg), out);
  } else {
    if constexpr (RULE == kCenter) q = vorrq_u8(q, vdupq_n_u8(1 << (7 - BITS)));  // q_k + 2^(7-k): bit 7-k is free
    signed_to_float(vmovl_u8(vget_low_u8(q)), vmovl_u8(vget_high_u8(q)), vreinterpretq_s8_u8(neg), out);
  }
}

// The 64 values of one group as 16 float32x4 vectors.
template <int BITS, int RULE>
inline void decode_group(const Tables& t, const SEFPWeightView& w, int64_t ng, float32x4_t v[16]) {
  const uint8_t* p0 = w.p0 + ng * kPlaneBytesPerGroup[0];
  const uint8x16_t b0 = vld1q_u8(p0), b1 = vld1q_u8(p0 + 16);
  uint8x16_t p1v = vdupq_n_u8(0), p2v = vdupq_n_u8(0), p3v = vdupq_n_u8(0);
  if constexpr (BITS >= 4) p1v = vld1q_u8(w.p1 + ng * kPlaneBytesPerGroup[1]);
  if constexpr (BITS >= 6) p2v = vld1q_u8(w.p2 + ng * kPlaneBytesPerGroup[2]);
  if constexpr (BITS == 8) {
    const uint8x8_t d = vld1_u8(w.p3 + ng * kPlaneBytesPerGroup[3]);
    p3v = vcombine_u8(d, d);
  }
  decode_block<BITS, RULE, 0>(t, b0, b1, p1v, p2v, p3v, v);
  decode_block<BITS, RULE, 1>(t, b0, b1, p1v, p2v, p3v, v + 4);
  decode_block<BITS, RULE, 2>(t, b0, b1, p1v, p2v, p3v, v + 8);
  decode_block<BITS, RULE, 3>(t, b0, b1, p1v, p2v, p3v, v + 12);
}

inline float32x4_t group_dot(const float* x, const float32x4_t v[16]) {
  float32x4_t s[4];
  for (int j = 0; j < 4; ++j) s[j] = vmulq_f32(vld1q_f32(x + 4 * j), v[j]);
  for (int b = 4; b < 16; b += 4)
    for (int j = 0; j < 4; ++j) s[j] = vfmaq_f32(s[j], vld1q_f32(x + 4 * (b + j)), v[b + j]);
  return vaddq_f32(vaddq_f32(s[0], s[1]), vaddq_f32(s[2], s[3]));
}

template <int BITS, int RULE, int M>
void matvec(const LinearPlan& a, int64_t n_begin, int64_t n_end) {
  const Tables t = load_tables(a);
  const SEFPWeightView& w = a.w;
  const int64_t G = w.num_groups, N = a.ldy;  // y row stride
  for (int64_t n = n_begin; n < n_end; ++n) {
    float32x4_t acc[M][2];
    for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t ng = n * G + g;
      float32x4_t v[16];
      decode_group<BITS, RULE>(t, w, ng, v);
      const float scale = unit_scale(w.exponents[ng]) * kDecodeUnit<BITS, RULE>;
      for (int m = 0; m < M; ++m)
        acc[m][g & 1] = vfmaq_n_f32(acc[m][g & 1], group_dot(a.x + m * a.ldx + g * kGroup, v), scale);
    }
    for (int m = 0; m < M; ++m)
      a.y[m * N + n] = vaddvq_f32(vaddq_f32(acc[m][0], acc[m][1])) + (a.bias ? a.bias[n] : 0.0f);
  }
}

template <int MR, int NR>
void micro(const float* x, int64_t ldx, const float* wb, int64_t kc, float* y, int64_t ldy) {
  float32x4_t acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = vdupq_n_f32(0.0f);
  for (int64_t k = 0; k < kc; k += 4) {
    float32x4_t xv[MR], wv[NR];
    for (int i = 0; i < MR; ++i) xv[i] = vld1q_f32(x + i * ldx + k);
    for (int j = 0; j < NR; ++j) wv[j] = vld1q_f32(wb + j * kc + k);
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = vfmaq_f32(acc[i][j], xv[i], wv[j]);
  }
  for (int i = 0; i < MR; ++i) {
    if constexpr (NR == 4) {
      const float32x4_t sums = vpaddq_f32(vpaddq_f32(acc[i][0], acc[i][1]), vpaddq_f32(acc[i][2], acc[i][3]));
      vst1q_f32(y + i * ldy, vaddq_f32(vld1q_f32(y + i * ldy), sums));
    } else {
      for (int j = 0; j < NR; ++j) y[i * ldy + j] += vaddvq_f32(acc[i][j]);
    }
  }
}

using MicroFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t);
template <int MR>
constexpr MicroFn kMicroRow[4] = {micro<MR, 1>, micro<MR, 2>, micro<MR, 3>, micro<MR, 4>};
constexpr const MicroFn* kMicro[4] = {kMicroRow<1>, kMicroRow<2>, kMicroRow<3>, kMicroRow<4>};

template <int BITS, int RULE>
void gemm(const LinearPlan& a, int64_t n_begin, int64_t n_end) {
  const Tables t = load_tables(a);
  constexpr int kNB = 16;
  constexpr int kKG = 4;  // 16 x 256 floats = 16 KiB: fits small phone L1s
  alignas(16) float wbuf[kNB * kKG * kGroup];
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
          float32x4_t v[16];
          decode_group<BITS, RULE>(t, w, ng, v);
          const float scale = unit_scale(w.exponents[ng]) * kDecodeUnit<BITS, RULE>;
          float* dst = wbuf + j * kc + gg * kGroup;
          for (int b = 0; b < 16; ++b) vst1q_f32(dst + 4 * b, vmulq_n_f32(v[b], scale));
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
  const SEFPWeightView& w = e.w;
  const int64_t G = w.num_groups, K = w.in_features;
  alignas(16) float tail[kGroup];
  for (int64_t i = begin; i < end; ++i) {
    float* dst = e.out + i * K;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t ng = e.ids[i] * G + g;
      float32x4_t v[16];
      decode_group<BITS, RULE>(t, w, ng, v);
      const float scale = unit_scale(w.exponents[ng]) * kDecodeUnit<BITS, RULE>;
      const int64_t count = min64(kGroup, K - g * kGroup);
      float* out = count == kGroup ? dst + g * kGroup : tail;
      for (int b = 0; b < 16; ++b) vst1q_f32(out + 4 * b, vmulq_n_f32(v[b], scale));
      if (count != kGroup) __builtin_memcpy(dst + g * kGroup, tail, static_cast<size_t>(count) * sizeof(float));
    }
  }
}

}  // namespace

OTARO_SEFP_DEFINE_KERNELS(linear_range_neon, embedding_range_neon)

}  // namespace detail
}  // namespace otaro
