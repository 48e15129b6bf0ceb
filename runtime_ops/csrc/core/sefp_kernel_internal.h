// Internals shared by the per-ISA translation units of the SEFP kernel core.
// Not part of the public API (sefp_kernel.h).
#pragma once

#include <math.h>
#include <cstdint>

#include "core/sefp_kernel.h"

namespace otaro {
namespace detail {

constexpr int kGroup = static_cast<int>(kGroupSize);

// Decode rules as template arguments of the ISA kernels.
constexpr int kFloor = static_cast<int>(Decode::kFloor);
constexpr int kCenter = static_cast<int>(Decode::kCenter);
constexpr int kTable = static_cast<int>(Decode::kTable);

// One embedding call: rows ids[i] of W_k into out[i * in_features ..].
struct EmbeddingPlan {
  const int64_t* ids;
  SEFPWeightView w;
  float* out;
  const LinearPlan* decode;  // bits, decode rule and tables (x, y, rows unused)
};

// Computes y[r, n] for every r < rows and n in [n_begin, n_end) of a LinearPlan.
// x rows have stride ldx = num_groups * 64 floats and are zero-padded past
// in_features, so kernels never special-case a partial last group (the
// padded weights then contribute 0 * finite = 0, as in the reference, which
// drops them).
using RangeKernel = void (*)(const LinearPlan& plan, int64_t n_begin, int64_t n_end);
// Decodes rows ids[begin..end) into out.
using EmbeddingKernel = void (*)(const EmbeddingPlan& plan, int64_t begin, int64_t end);

void linear_range_scalar(const LinearPlan& plan, int64_t n_begin, int64_t n_end);
void embedding_range_scalar(const EmbeddingPlan& plan, int64_t begin, int64_t end);
#if defined(__x86_64__) || defined(_M_X64)
void linear_range_avx2(const LinearPlan& plan, int64_t n_begin, int64_t n_end);
void embedding_range_avx2(const EmbeddingPlan& plan, int64_t begin, int64_t end);
void linear_range_avx512(const LinearPlan& plan, int64_t n_begin, int64_t n_end);
// The int8-activation integer kernels (AVX-512 VNNI: E5M3/E5M4; AVX-512 VNNI + VBMI: E5M3..E5M6;
// AVX2: E5M3/E5M4), for plans with int8_kernel set.
void linear_range_avx512_vnni(const LinearPlan& plan, int64_t n_begin, int64_t n_end);
void linear_range_avx512_vbmi(const LinearPlan& plan, int64_t n_begin, int64_t n_end);
void linear_range_avx2_int8(const LinearPlan& plan, int64_t n_begin, int64_t n_end);
void embedding_range_avx512(const EmbeddingPlan& plan, int64_t begin, int64_t end);
#endif
#if defined(__aarch64__)
void linear_range_neon(const LinearPlan& plan, int64_t n_begin, int64_t n_end);
void embedding_range_neon(const EmbeddingPlan& plan, int64_t begin, int64_t end);
// The int8-activation integer kernel (ARMv8.2 SDOT), for plans with int8_kernel set.
void linear_range_neon_dotprod(const LinearPlan& plan, int64_t n_begin, int64_t n_end);
#endif

// Helpers here are `static inline` on purpose: the ISA translation units are
// compiled with -mavx2 / -mavx512f, and a shared (COMDAT) inline function could
// let the linker keep an AVX-512 copy for the scalar path. The SIMD files use
// no STL templates for the same reason (and never construct a LinearPlan).

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Runs block(n) over the R-row blocks of [n_begin, n_end), then tail(n) over the rows left. For short
// weight rows (at most kTwoStreamGroups groups: a 4-row block of K = 576 is 18 cache lines of p0) the
// blocks of the range's two halves alternate, so that memory sees two sequential streams instead of
// one. Cold weights, 1-2 threads, SmolLM2's K = 576 shapes (q/k/v, gate/up, lm_head): the integer
// kernels (AVX-512 VBMI / VNNI, AVX2) 1.04-1.16x, the AVX-512 float kernel (E5M7/E5M8) 0.98-1.02x;
// K = 1536 (down_proj, 48 lines per block) 0.95-0.99x, hence the bound. Each row's sums are
// unchanged, so are the results. Used by the int8 kernels (x86 and NEON sdot; NEON's effect is not
// measured: qemu only tests it) and the AVX-512 float kernel; the AVX2 and NEON float kernels keep
// one stream.
constexpr int64_t kTwoStreamGroups = 16;
template <int R, typename Block, typename Tail>
static inline void for_row_blocks(int64_t num_groups, int64_t n_begin, int64_t n_end, const Block& block,
                                  const Tail& tail) {
  const int64_t blocks = (n_end - n_begin) / R, half = num_groups <= kTwoStreamGroups ? blocks / 2 : 0;
  for (int64_t i = 0; i < half; ++i) {
    block(n_begin + i * R);
    block(n_begin + (half + i) * R);
  }
  int64_t n = n_begin + 2 * half * R;
  for (; n + R <= n_end; n += R) block(n);
  for (; n < n_end; ++n) tail(n);
}

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
// (floor value = q_k * unit_scale(e)), reading only the planes precision `bits` needs.
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

// Defines, in one ISA translation unit, `void LINEAR_FN(const LinearPlan&, int64_t, int64_t)`
// dispatching the runtime (bits, decode, rows) to that unit's matvec<BITS, RULE, ROWS>
// (rows 1..3) and gemm<BITS, RULE> templates, and `void EMBED_FN(const EmbeddingPlan&,
// int64_t, int64_t)` dispatching (bits, decode) to embed<BITS, RULE>. k <= 4 has no
// center rule (a center row is a table there); the generic table for k >= 5 is slow
// anyway and runs its 2-3 row calls through the GEMM path (less code). A macro rather
// than a shared template on purpose: each expansion is compiled with its own TU's -m
// flags and its helpers live in that TU's anonymous namespace (see the COMDAT note above).
#define OTARO_SEFP_DEFINE_KERNELS(LINEAR_FN, EMBED_FN)                                       \
  namespace {                                                                                \
  template <int BITS, int RULE>                                                              \
  void linear_rule(const LinearPlan& a, int64_t n_begin, int64_t n_end) {                    \
    if constexpr (BITS >= 5 && RULE == kTable) {                                             \
      if (a.rows == 1) return matvec<BITS, RULE, 1>(a, n_begin, n_end);                      \
      return gemm<BITS, RULE>(a, n_begin, n_end);                                            \
    } else {                                                                                 \
      switch (a.rows) {                                                                      \
        case 1: return matvec<BITS, RULE, 1>(a, n_begin, n_end);                             \
        case 2: return matvec<BITS, RULE, 2>(a, n_begin, n_end);                             \
        case 3: return matvec<BITS, RULE, 3>(a, n_begin, n_end);                             \
        default: return gemm<BITS, RULE>(a, n_begin, n_end);                                 \
      }                                                                                      \
    }                                                                                        \
  }                                                                                          \
  template <int BITS>                                                                        \
  void linear_bits(const LinearPlan& a, int64_t n_begin, int64_t n_end) {                    \
    if (a.decode == Decode::kTable) return linear_rule<BITS, kTable>(a, n_begin, n_end);     \
    if constexpr (BITS >= 5) {                                                               \
      if (a.decode == Decode::kCenter) return linear_rule<BITS, kCenter>(a, n_begin, n_end); \
    }                                                                                        \
    return linear_rule<BITS, kFloor>(a, n_begin, n_end);                                     \
  }                                                                                          \
  template <int BITS>                                                                        \
  void embed_bits(const EmbeddingPlan& e, int64_t begin, int64_t end) {                      \
    if (e.decode->decode == Decode::kTable) return embed<BITS, kTable>(e, begin, end);       \
    if constexpr (BITS >= 5) {                                                               \
      if (e.decode->decode == Decode::kCenter) return embed<BITS, kCenter>(e, begin, end);   \
    }                                                                                        \
    return embed<BITS, kFloor>(e, begin, end);                                               \
  }                                                                                          \
  }                                                                                          \
  void LINEAR_FN(const LinearPlan& a, int64_t n_begin, int64_t n_end) {                      \
    switch (a.bits) {                                                                        \
      case 3: return linear_bits<3>(a, n_begin, n_end);                                      \
      case 4: return linear_bits<4>(a, n_begin, n_end);                                      \
      case 5: return linear_bits<5>(a, n_begin, n_end);                                      \
      case 6: return linear_bits<6>(a, n_begin, n_end);                                      \
      case 7: return linear_bits<7>(a, n_begin, n_end);                                      \
      default: return linear_bits<8>(a, n_begin, n_end);                                     \
    }                                                                                        \
  }                                                                                          \
  void EMBED_FN(const EmbeddingPlan& e, int64_t begin, int64_t end) {                        \
    switch (e.decode->bits) {                                                                \
      case 3: return embed_bits<3>(e, begin, end);                                           \
      case 4: return embed_bits<4>(e, begin, end);                                           \
      case 5: return embed_bits<5>(e, begin, end);                                           \
      case 6: return embed_bits<6>(e, begin, end);                                           \
      case 7: return embed_bits<7>(e, begin, end);                                           \
      default: return embed_bits<8>(e, begin, end);                                          \
    }                                                                                        \
  }

// Defines, in one ISA translation unit, the int8-activation entry `void FN(const LinearPlan&,
// int64_t, int64_t)`: bits 3 / 4 and activation rows 1..3 dispatched to that unit's
// int8_rows<BITS, M, R>(plan, context, n) (R = 4 weight rows at a time for one activation row,
// 2 for more, 1 for the tail), with `context` = int8_context<BITS>(plan) made once per range.
// A macro for the same reason as OTARO_SEFP_DEFINE_KERNELS.
#define OTARO_SEFP_DEFINE_INT8_KERNEL(FN)                                                             \
  namespace {                                                                                         \
  template <int BITS, int M>                                                                          \
  void int8_matvec(const LinearPlan& a, int64_t n_begin, int64_t n_end) {                             \
    const auto context = int8_context<BITS>(a);                                                       \
    constexpr int kRows = M == 1 ? 4 : 2;                                                             \
    for_row_blocks<kRows>(                                                                            \
        a.w.num_groups, n_begin, n_end, [&](int64_t n) { int8_rows<BITS, M, kRows>(a, context, n); }, \
        [&](int64_t n) { int8_rows<BITS, M, 1>(a, context, n); });                                    \
  }                                                                                                   \
  template <int BITS>                                                                                 \
  void int8_bits(const LinearPlan& a, int64_t n_begin, int64_t n_end) {                               \
    switch (a.rows) {                                                                                 \
      case 1: return int8_matvec<BITS, 1>(a, n_begin, n_end);                                         \
      case 2: return int8_matvec<BITS, 2>(a, n_begin, n_end);                                         \
      default: return int8_matvec<BITS, 3>(a, n_begin, n_end); /* plan: rows <= 3 */                  \
    }                                                                                                 \
  }                                                                                                   \
  }                                                                                                   \
  void FN(const LinearPlan& a, int64_t n_begin, int64_t n_end) {                                      \
    if (a.bits == 3) return int8_bits<3>(a, n_begin, n_end);                                          \
    return int8_bits<4>(a, n_begin, n_end); /* plan: bits <= 4 */                                     \
  }

}  // namespace detail
}  // namespace otaro
