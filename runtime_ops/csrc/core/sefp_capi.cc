// C ABI of the "core" library, for ctypes (parity tests and benchmarks).
#include <cstdint>

#include "core/sefp_kernel.h"

#define OTARO_CAPI extern "C" __attribute__((visibility("default")))

namespace {

bool bad_isa(int isa) { return isa < 0 || isa > static_cast<int>(otaro::Isa::kNeon); }

}  // namespace

// Returns an otaro::Status value (0 = ok). isa: an otaro::Isa value. levels: float32 [6, 256] or nullptr (floor).
OTARO_CAPI int otaro_sefp_linear(const float* x, int64_t rows, const uint8_t* p0, const uint8_t* p1, const uint8_t* p2,
                                 const uint8_t* p3, const int8_t* exponents, int64_t out_features, int64_t in_features,
                                 int64_t num_groups, const float* bias, const float* levels, int bits, float* y,
                                 int num_threads, int isa) {
  const otaro::SEFPWeightView w{p0, p1, p2, p3, exponents, out_features, in_features, num_groups, levels};
  if (bad_isa(isa)) return static_cast<int>(otaro::Status::kUnavailableIsa);
  return static_cast<int>(otaro::sefp_linear(x, rows, w, bias, bits, y, num_threads, static_cast<otaro::Isa>(isa)));
}

OTARO_CAPI const char* otaro_status_message(int status) {
  return otaro::status_message(static_cast<otaro::Status>(status));
}

OTARO_CAPI int otaro_isa_available(int isa) {
  if (bad_isa(isa)) return 0;
  return otaro::isa_available(static_cast<otaro::Isa>(isa)) ? 1 : 0;
}

OTARO_CAPI int otaro_best_isa() { return static_cast<int>(otaro::best_isa()); }

OTARO_CAPI int otaro_default_num_threads() { return otaro::default_num_threads(); }

// Single-threaded column slice (otaro::sefp_linear_range): y[r * ldy + n], n in [n_begin, n_end).
OTARO_CAPI int otaro_sefp_linear_range(const float* x, int64_t rows, const uint8_t* p0, const uint8_t* p1,
                                       const uint8_t* p2, const uint8_t* p3, const int8_t* exponents,
                                       int64_t out_features, int64_t in_features, int64_t num_groups, const float* bias,
                                       const float* levels, int bits, float* y, int64_t ldy, int64_t n_begin,
                                       int64_t n_end, int isa) {
  const otaro::SEFPWeightView w{p0, p1, p2, p3, exponents, out_features, in_features, num_groups, levels};
  if (bad_isa(isa)) return static_cast<int>(otaro::Status::kUnavailableIsa);
  return static_cast<int>(
      otaro::sefp_linear_range(x, rows, w, bias, bits, y, ldy, n_begin, n_end, static_cast<otaro::Isa>(isa)));
}

// Rows ids[0..count) of the weight at `bits` into out [count, in_features]; *bad_id gets the
// position of the first out-of-range id (status kInvalidIndex).
OTARO_CAPI int otaro_sefp_embedding(const int64_t* ids, int64_t count, const uint8_t* p0, const uint8_t* p1,
                                    const uint8_t* p2, const uint8_t* p3, const int8_t* exponents, int64_t out_features,
                                    int64_t in_features, int64_t num_groups, const float* levels, int bits, float* out,
                                    int num_threads, int isa, int64_t* bad_id) {
  const otaro::SEFPWeightView w{p0, p1, p2, p3, exponents, out_features, in_features, num_groups, levels};
  if (bad_isa(isa)) return static_cast<int>(otaro::Status::kUnavailableIsa);
  return static_cast<int>(
      otaro::sefp_embedding(ids, count, w, bits, out, num_threads, static_cast<otaro::Isa>(isa), bad_id));
}
