// Portable scalar kernel: the reference every SIMD path is tested against.
// Straight from the format: decode one group of 64 signed values in units of
// 2^(e-7) (q_k for floor, the levels row otherwise), dot it with x, scale by
// 2^(e-7), accumulate in float32.
#include "core/sefp_kernel_internal.h"

namespace otaro {
namespace detail {

namespace {

// Group ng's 64 values in units of 2^(e-7).
void decode_group(const SEFPWeightView& w, int64_t ng, int bits, Decode decode, const float* row, float v[kGroup]) {
  const uint8_t* p1 = w.p1 ? w.p1 + ng * kPlaneBytesPerGroup[1] : nullptr;
  const uint8_t* p2 = w.p2 ? w.p2 + ng * kPlaneBytesPerGroup[2] : nullptr;
  const uint8_t* p3 = w.p3 ? w.p3 + ng * kPlaneBytesPerGroup[3] : nullptr;
  for (int i = 0; i < kGroup; ++i) {
    const int q = decode_element(w.p0 + ng * kPlaneBytesPerGroup[0], p1, p2, p3, i, bits);
    if (decode == Decode::kFloor) {
      v[i] = static_cast<float>(q);
    } else {
      // sign from the stored sign bit, so a q_k = 0 keeps its sign (center's -1/2 step)
      const bool negative = (w.p0[ng * kPlaneBytesPerGroup[0] + (i & 31)] >> (4 * (i >> 5))) & 8;
      const float level = row[(q < 0 ? -q : q) >> (8 - bits)];
      v[i] = negative ? -level : level;
    }
  }
}

}  // namespace

void linear_range_scalar(const LinearPlan& a, int64_t n_begin, int64_t n_end) {
  const SEFPWeightView& w = a.w;
  const int64_t G = w.num_groups, N = a.ldy;  // y row stride
  float v[kGroup];
  for (int64_t n = n_begin; n < n_end; ++n) {
    for (int64_t r = 0; r < a.rows; ++r) a.y[r * N + n] = 0.0f;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t ng = n * G + g;
      decode_group(w, ng, a.bits, a.decode, a.row, v);
      const float scale = unit_scale(w.exponents[ng]);
      for (int64_t r = 0; r < a.rows; ++r) {
        const float* xg = a.x + r * a.ldx + g * kGroup;
        float sum = 0.0f;
        for (int i = 0; i < kGroup; ++i) sum += xg[i] * v[i];
        a.y[r * N + n] += sum * scale;
      }
    }
    if (a.bias)
      for (int64_t r = 0; r < a.rows; ++r) a.y[r * N + n] += a.bias[n];
  }
}

void embedding_range_scalar(const EmbeddingPlan& e, int64_t begin, int64_t end) {
  const SEFPWeightView& w = e.w;
  const int64_t G = w.num_groups, K = w.in_features;
  float v[kGroup];
  for (int64_t i = begin; i < end; ++i) {
    float* dst = e.out + i * K;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t ng = e.ids[i] * G + g;
      decode_group(w, ng, e.decode->bits, e.decode->decode, e.decode->row, v);
      const float scale = unit_scale(w.exponents[ng]);
      const int64_t count = K - g * kGroup < kGroup ? K - g * kGroup : kGroup;
      for (int64_t j = 0; j < count; ++j) dst[g * kGroup + j] = v[j] * scale;
    }
  }
}

}  // namespace detail
}  // namespace otaro
