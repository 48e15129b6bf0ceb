// SEFP linear kernel core: y = x @ W_k^T (+ bias), straight from packed planes.
//
// One core shared by the onnxruntime and ExecuTorch wrappers. The packed layout
// (planes p0..p3 + int8 exponents) is documented in runtime_ops/README.md and
// defined by otaro_export/packing.py; precision k reads only the planes it needs.
#pragma once

#include <cstdint>

namespace otaro {

// A [out_features, in_features] weight in packed SEFP planes (row-major; the
// bytes of one group of 64 weights are contiguous in every plane).
struct SEFPWeightView {
  const uint8_t* p0;        // [N, G*32]  sign | q[7:5] nibbles
  const uint8_t* p1;        // [N, G*16]  q[4:3]   (read for k >= 4)
  const uint8_t* p2;        // [N, G*16]  q[2:1]   (read for k >= 6)
  const uint8_t* p3;        // [N, G*8]   q[0]     (read for k == 8)
  const int8_t* exponents;  // [N, G]     unbiased shared exponents
  int64_t out_features;     // N
  int64_t in_features;      // K (<= G*64, > G*64 - 64)
  int64_t num_groups;       // G
};

enum class Status : int {
  kOk = 0,
  kInvalidBits = 1,     // bits outside 3..8
  kInvalidShape = 2,    // in_features inconsistent with num_groups, or null pointers
  kUnavailableIsa = 3,  // an explicit Isa that is not compiled in / not supported by this CPU
  kOutOfMemory = 4,     // the scratch copy of x (in_features not a multiple of 64) could not be allocated
};

const char* status_message(Status status);

// Which implementation runs. kAuto picks the best the CPU supports at run time.
enum class Isa : int { kAuto = 0, kScalar = 1, kAvx2 = 2, kAvx512 = 3, kNeon = 4 };

// True if `isa` is compiled in and supported by this CPU.
bool isa_available(Isa isa);
// The ISA kAuto resolves to on this machine.
Isa best_isa();
const char* isa_name(Isa isa);

// Threads used when sefp_linear gets num_threads <= 0: $OTARO_NUM_THREADS if
// set (> 0), else min(hardware threads, 4).
int default_num_threads();

// The checks sefp_linear makes before computing anything (kOk if it would run).
Status validate(const float* x, int64_t rows, const SEFPWeightView& w, int bits, const float* y);

// y[r, n] = sum_k x[r, k] * W_bits[n, k] + (bias ? bias[n] : 0) for r < rows.
// x: [rows, in_features] float32 row-major; y: [rows, out_features].
// num_threads <= 0 means default_num_threads(). Output rows are split across
// a persistent pool; a call made while the pool is busy (another thread's
// call, or a nested one) runs on its caller alone instead of oversubscribing.
// Accumulates in float32; the dequantized weights are exact, so results differ
// from "dequantize then matmul" only by summation order.
// Never throws; any Status other than kOk means y was not written.
Status sefp_linear(const float* x, int64_t rows, const SEFPWeightView& w, const float* bias, int bits, float* y,
                   int num_threads = 0, Isa isa = Isa::kAuto);

// Single-threaded slice for callers that bring their own threads (e.g. an
// inference engine's intra-op pool): computes y[r * ldy + n] for r < rows and
// n in [n_begin, n_end) only; other columns of y are left untouched.
Status sefp_linear_range(const float* x, int64_t rows, const SEFPWeightView& w, const float* bias, int bits, float* y,
                         int64_t ldy, int64_t n_begin, int64_t n_end, Isa isa = Isa::kAuto);

}  // namespace otaro
