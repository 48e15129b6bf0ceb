// Portable scalar kernel: the reference every SIMD path is tested against.
// Straight from the format: decode one group of 64 signed magnitudes, dot it
// with x, scale by 2^(e-7), accumulate in float32.
#include "core/sefp_kernel_internal.h"

namespace otaro {
namespace detail {

void linear_range_scalar(const LinearArgs& a, int64_t n_begin, int64_t n_end) {
  const SEFPWeightView& w = a.w;
  const int64_t G = w.num_groups, N = a.ldy;  // y row stride
  int q[kGroup];
  for (int64_t n = n_begin; n < n_end; ++n) {
    for (int64_t r = 0; r < a.rows; ++r) a.y[r * N + n] = 0.0f;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t ng = n * G + g;
      const uint8_t* p1 = w.p1 ? w.p1 + ng * kP1Bytes : nullptr;
      const uint8_t* p2 = w.p2 ? w.p2 + ng * kP2Bytes : nullptr;
      const uint8_t* p3 = w.p3 ? w.p3 + ng * kP3Bytes : nullptr;
      for (int i = 0; i < kGroup; ++i) q[i] = decode_element(w.p0 + ng * kP0Bytes, p1, p2, p3, i, a.bits);
      const float scale = unit_scale(w.exponents[ng]);
      for (int64_t r = 0; r < a.rows; ++r) {
        const float* xg = a.x + r * a.ldx + g * kGroup;
        float sum = 0.0f;
        for (int i = 0; i < kGroup; ++i) sum += xg[i] * static_cast<float>(q[i]);
        a.y[r * N + n] += sum * scale;
      }
    }
    if (a.bias)
      for (int64_t r = 0; r < a.rows; ++r) a.y[r * N + n] += a.bias[n];
  }
}

}  // namespace detail
}  // namespace otaro
