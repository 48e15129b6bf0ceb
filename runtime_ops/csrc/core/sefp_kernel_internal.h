// Internals shared by the per-ISA translation units of the SEFP kernel core.
// Not part of the public API (sefp_kernel.h).
#pragma once

#include <math.h>
#include <cstdint>

#include "core/sefp_kernel.h"

namespace otaro {
namespace detail {

constexpr int kGroup = 64;
constexpr int kP0Bytes = 32;  // per group, see otaro_export/packing.py
constexpr int kP1Bytes = 16;
constexpr int kP2Bytes = 16;
constexpr int kP3Bytes = 8;

// One validated call, split into output-row ranges by the dispatcher.
// x rows have stride ldx = num_groups * 64 floats and are zero-padded past
// in_features, so kernels never special-case a partial last group (the
// padded weights then contribute 0 * finite = 0, as in the reference, which
// drops them).
struct LinearArgs {
  const float* x;
  int64_t rows;
  int64_t ldx;
  SEFPWeightView w;
  const float* bias;
  int bits;
  float* y;     // y[r * ldy + n]
  int64_t ldy;  // >= out_features
};

// Computes y[r, n] for every r < rows and n in [n_begin, n_end).
using RangeKernel = void (*)(const LinearArgs& args, int64_t n_begin, int64_t n_end);

void linear_range_scalar(const LinearArgs& args, int64_t n_begin, int64_t n_end);
#if defined(__x86_64__) || defined(_M_X64)
void linear_range_avx2(const LinearArgs& args, int64_t n_begin, int64_t n_end);
void linear_range_avx512(const LinearArgs& args, int64_t n_begin, int64_t n_end);
#endif
#if defined(__aarch64__)
void linear_range_neon(const LinearArgs& args, int64_t n_begin, int64_t n_end);
#endif

// Helpers here are `static inline` on purpose: the ISA translation units are
// compiled with -mavx2 / -mavx512f, and a shared (COMDAT) inline function could
// let the linker keep an AVX-512 copy for the scalar path. The SIMD files use
// no STL templates for the same reason.

// Magnitude mask of precision `bits` on the 8-bit stored magnitude.
static inline uint32_t magnitude_mask(int bits) { return (0xFFu << (8 - bits)) & 0xFFu; }

// 2^(e - 7): the value of one magnitude unit in a group with exponent e.
// Exact; the bit construction covers the format's range (e in -15..16), the
// libm call anything a corrupt file could hold.
static inline float unit_scale(int8_t e) {
  const int biased = static_cast<int>(e) - 7 + 127;
  if (biased >= 1 && biased <= 254) {
    const uint32_t bits = static_cast<uint32_t>(biased) << 23;
    float f;
    __builtin_memcpy(&f, &bits, sizeof f);
    return f;
  }
  return ::ldexpf(1.0f, static_cast<int>(e) - 7);
}

// Scalar decode of element i (0..63) of one group: the signed magnitude q_k
// (value = q_k * unit_scale(e)), reading only the planes precision `bits` needs.
static inline int decode_element(const uint8_t* p0, const uint8_t* p1, const uint8_t* p2, const uint8_t* p3, int i,
                                 int bits) {
  const int code = (p0[i & 31] >> (4 * (i >> 5))) & 0xF;
  int q = (code & 7) << 5;
  if (bits >= 4) q |= ((p1[i & 15] >> (2 * (i >> 4))) & 3) << 3;
  if (bits >= 6) q |= ((p2[i & 15] >> (2 * (i >> 4))) & 3) << 1;
  if (bits >= 8) q |= (p3[i & 7] >> (i >> 3)) & 1;
  q &= static_cast<int>(magnitude_mask(bits));
  return (code & 8) ? -q : q;
}

// Defines `void RANGE_FN(const LinearArgs&, int64_t, int64_t)` dispatching the
// runtime (bits, rows) to this translation unit's matvec<BITS, ROWS> (rows 1..3)
// and gemm<BITS> templates. A macro rather than a shared template on purpose:
// each expansion is compiled with its own TU's -m flags and its helper lives in
// that TU's anonymous namespace (see the COMDAT note above).
#define OTARO_SEFP_DEFINE_RANGE_KERNEL(RANGE_FN)                          \
  namespace {                                                             \
  template <int BITS>                                                     \
  void linear_bits(const LinearArgs& a, int64_t n_begin, int64_t n_end) { \
    switch (a.rows) {                                                     \
      case 1: return matvec<BITS, 1>(a, n_begin, n_end);                  \
      case 2: return matvec<BITS, 2>(a, n_begin, n_end);                  \
      case 3: return matvec<BITS, 3>(a, n_begin, n_end);                  \
      default: return gemm<BITS>(a, n_begin, n_end);                      \
    }                                                                     \
  }                                                                       \
  }                                                                       \
  void RANGE_FN(const LinearArgs& a, int64_t n_begin, int64_t n_end) {    \
    switch (a.bits) {                                                     \
      case 3: return linear_bits<3>(a, n_begin, n_end);                   \
      case 4: return linear_bits<4>(a, n_begin, n_end);                   \
      case 5: return linear_bits<5>(a, n_begin, n_end);                   \
      case 6: return linear_bits<6>(a, n_begin, n_end);                   \
      case 7: return linear_bits<7>(a, n_begin, n_end);                   \
      default: return linear_bits<8>(a, n_begin, n_end);                  \
    }                                                                     \
  }

}  // namespace detail
}  // namespace otaro
