// C ABI of the "core" library, for ctypes (parity tests and benchmarks).
#include <chrono>
#include <cstdint>

#include "core/sefp_kernel.h"

#define OTARO_CAPI extern "C" __attribute__((visibility("default")))

namespace {

bool bad_isa(int isa) { return isa < 0 || isa > static_cast<int>(otaro::Isa::kNeon); }

}  // namespace

// Returns an otaro::Status value (0 = ok). isa: an otaro::Isa value. levels: float32 [6, 256] or nullptr (floor).
// act_int8_max_bits: 0, or int8 activations at bits <= it (docs/FORMAT.md §9).
OTARO_CAPI int otaro_sefp_linear(const float* x, int64_t rows, const uint8_t* p0, const uint8_t* p1, const uint8_t* p2,
                                 const uint8_t* p3, const int8_t* exponents, int64_t out_features, int64_t in_features,
                                 int64_t num_groups, const float* bias, const float* levels, int bits, float* y,
                                 int num_threads, int isa, int act_int8_max_bits) {
  const otaro::SEFPWeightView w{p0, p1, p2, p3, exponents, out_features, in_features, num_groups, levels};
  if (bad_isa(isa)) return static_cast<int>(otaro::Status::kUnavailableIsa);
  return static_cast<int>(
      otaro::sefp_linear(x, rows, w, bias, bits, y, num_threads, static_cast<otaro::Isa>(isa), act_int8_max_bits));
}

// The integer kernel int8-activation decode calls run with `isa` here ("avx512-vnni", "avx2", "neon-sdot", "none").
OTARO_CAPI const char* otaro_int8_kernel_name(int isa) {
  return bad_isa(isa) ? "none" : otaro::int8_kernel_name(static_cast<otaro::Isa>(isa));
}

// The highest precision that kernel computes (0: none).
OTARO_CAPI int otaro_int8_kernel_max_bits(int isa) {
  return bad_isa(isa) ? 0 : otaro::int8_kernel_max_bits(static_cast<otaro::Isa>(isa));
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
                                       int64_t n_end, int isa, int act_int8_max_bits) {
  const otaro::SEFPWeightView w{p0, p1, p2, p3, exponents, out_features, in_features, num_groups, levels};
  if (bad_isa(isa)) return static_cast<int>(otaro::Status::kUnavailableIsa);
  return static_cast<int>(otaro::sefp_linear_range(x, rows, w, bias, bits, y, ldy, n_begin, n_end,
                                                   static_cast<otaro::Isa>(isa), act_int8_max_bits));
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

// Benchmark helper: runs sefp_linear over `count` distinct weights (views[i], all [N, K] with the same
// shape, e.g. copies larger than the last-level cache together, so every call streams its weight from
// DRAM), `repeats` times in a row; seconds[r * count + i] receives each call's wall time. Returns 0, or
// a negative Status value. Timing in C++ keeps the Python call overhead out of per-call figures of a
// few microseconds, and per-call times let a loaded machine's preempted calls be told apart.
OTARO_CAPI int otaro_time_linear_stream(const float* x, int64_t rows, const otaro::SEFPWeightView* views, int64_t count,
                                        int bits, float* y, int num_threads, int isa, int64_t repeats, double* seconds,
                                        int act_int8_max_bits) {
  if (bad_isa(isa)) return -static_cast<int>(otaro::Status::kUnavailableIsa);
  for (int64_t r = 0; r < repeats; ++r) {
    for (int64_t i = 0; i < count; ++i) {
      const auto start = std::chrono::steady_clock::now();
      const otaro::Status s = otaro::sefp_linear(x, rows, views[i], nullptr, bits, y, num_threads,
                                                 static_cast<otaro::Isa>(isa), act_int8_max_bits);
      seconds[r * count + i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (s != otaro::Status::kOk) return -static_cast<int>(s);
    }
  }
  return 0;
}

// Benchmark helper: the plain read bandwidth roofline. Reads `bytes` of `data` sequentially as 64-bit
// words in chunks of `chunk` bytes (multiples of 64); seconds[i] receives chunk i's wall time (so that
// preempted chunks on a loaded machine can be told apart). Returns the sum of the words (so that the
// reads cannot be optimised away).
OTARO_CAPI uint64_t otaro_time_read(const void* data, int64_t bytes, int64_t chunk, double* seconds) {
  const uint64_t* words = static_cast<const uint64_t*>(data);
  uint64_t total = 0;
  for (int64_t c = 0; c + chunk <= bytes; c += chunk) {
    const auto start = std::chrono::steady_clock::now();
    uint64_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const uint64_t* w = words + c / 8;
    for (int64_t i = 0; i < chunk / 8; i += 8)
      for (int j = 0; j < 8; ++j) acc[j] += w[i + j];
    for (int j = 0; j < 8; ++j) total += acc[j];
    seconds[c / chunk] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  return total;
}
