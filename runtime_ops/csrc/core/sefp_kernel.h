// SEFP kernel core: y = x @ W_k^T (+ bias), and embedding rows of W_k, straight from packed planes.
//
// One core shared by the onnxruntime and ExecuTorch wrappers. The packed layout
// (planes p0..p3 + int8 exponents) is docs/FORMAT.md §4, defined by
// otaro_export/packing.py; precision k reads only the planes it needs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/sefp_format.h"

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
  // Reconstruction table float32 [6, 256] (docs/FORMAT.md §3): value of a weight =
  // (-1)^s * levels[k-3][q_k >> (8-k)] * 2^(e-7). nullptr = the paper's floor rule
  // (levels[k-3][j] = j * 2^(8-k)). Only row k-3's first 2^k entries are read.
  const float* levels;
};

enum class Status : int {
  kOk = 0,
  kInvalidBits = 1,            // bits outside 3..8
  kInvalidShape = 2,           // in_features inconsistent with num_groups, or null pointers
  kUnavailableIsa = 3,         // an explicit Isa that is not compiled in / not supported by this CPU
  kOutOfMemory = 4,            // the scratch copy of x (in_features not a multiple of 64) could not be allocated
  kInvalidLevels = 5,          // a reconstruction level of the precision used is negative, NaN or Inf
  kInvalidIndex = 6,           // an embedding id outside [0, out_features)
  kInvalidActivationBits = 7,  // act_int8_max_bits other than 0 (off) or 3..8
};

const char* status_message(Status status);

// Which implementation runs. kAuto picks the best the CPU supports at run time.
enum class Isa : int { kAuto = 0, kScalar = 1, kAvx2 = 2, kAvx512 = 3, kNeon = 4 };

// True if `isa` is compiled in and supported by this CPU.
bool isa_available(Isa isa);
// The ISA kAuto resolves to on this machine: the best one available, or $OTARO_ISA
// (scalar, avx2, avx512, neon) when set to an available one (read once).
Isa best_isa();
const char* isa_name(Isa isa);

// Threads used when a call gets num_threads <= 0: $OTARO_NUM_THREADS if
// set (> 0), else min(hardware threads, 4), read once.
int default_num_threads();

// ---- shape and dtype checks shared by every wrapper (onnxruntime, ExecuTorch) ----

enum class DType : int { kOther = 0, kFloat32, kUInt8, kInt8, kInt64 };

// What a wrapper knows about one tensor argument before reading its data.
struct TensorInfo {
  bool present = false;  // false: an omitted optional input
  DType dtype = DType::kOther;
  int64_t rank = 0;
  const int64_t* dims = nullptr;  // rank entries
};

// The tensor arguments of sefp_linear (X, P0..P3, E, bits[, B[, L]]).
struct LinearArgsInfo {
  TensorInfo x, planes[kNumPlanes], exponents, bits, bias, levels;
};

// The tensor arguments of sefp_embedding (ids, P0..P3, E, bits[, L]) and its in_features attribute.
struct EmbeddingArgsInfo {
  TensorInfo ids, planes[kNumPlanes], exponents, bits, levels;
  int64_t in_features = 0;
};

// Dtypes, ranks and shapes of every argument, and the input features against
// the groups; kOk, or kInvalidShape with a one-line reason (naming the input by
// its ONNX name: X, P0..P3, E, bits, B, L, ids) in msg. Values (bits, levels,
// ids) are checked when the call runs.
Status check_linear_args(const LinearArgsInfo& info, char* msg, size_t msg_len);
Status check_embedding_args(const EmbeddingArgsInfo& info, char* msg, size_t msg_len);

// ---- sefp_linear ----

// How a call turns (sign, q_k) into a value; resolved once per call from the levels row.
enum class Decode : int {
  kFloor = 0,   // q_k (no table, or a table row equal to floor)
  kCenter = 1,  // q_k + 2^(7-k) (row equal to center; only resolved for k >= 5)
  kTable = 2,   // levels[k-3][q_k >> (8-k)]: a LUT for k <= 4, a generic lookup above
};

// Callers that split a call over threads cut its output features at multiples of this
// (the kernels' row blocking), so no SIMD row block is cut in two.
constexpr int64_t kRowBlock = 16;

// One validated sefp_linear call: bits, shapes and levels checked, ISA and
// decode resolved, x zero-padded to whole groups. Built once by plan_linear,
// then run in output-feature slices (from any number of threads).
struct LinearPlan {
  const float* x = nullptr;  // [rows, ldx], zero-padded past in_features
  int64_t rows = 0;
  int64_t ldx = 0;  // num_groups * 64
  SEFPWeightView w{};
  const float* bias = nullptr;
  int bits = 0;
  float* y = nullptr;  // y[r * ldy + n]
  int64_t ldy = 0;     // >= out_features
  Isa isa = Isa::kAuto;
  Decode decode = Decode::kFloor;
  const float* row = nullptr;  // levels row k-3 (2^k magnitudes); for floor, a built-in floor row
  // Signed lookup tables for k <= 4, filled for every decode: lut[code] for k = 3 (code = sign << 3 |
  // q[7:5]); lut[code | q[4] << 4] for k = 4. lut_bytes[b][j] = byte b of the magnitude of level j.
  alignas(64) float lut[32];
  alignas(16) uint8_t lut_bytes[4][16];
  std::vector<float> padded;  // the zero-padded copy of x (in_features % 64 != 0), or fq(x)
  // Int8 activations (docs/FORMAT.md §9): x above is fq(x). A non-null int8_kernel (an integer
  // kernel) runs instead of the float one, from xq (q, [rows, ldx]) and xscale (a / 127, [rows,
  // num_groups]) and, for k <= 4, the level magnitudes lut_u8 (k = 3: [code & 7], k = 4: [(code & 7) |
  // q[4] << 3]; k = 5, 6 read row).
  void (*int8_kernel)(const LinearPlan& plan, int64_t n_begin, int64_t n_end) = nullptr;
  const int8_t* xq = nullptr;
  const float* xscale = nullptr;
  alignas(16) uint8_t lut_u8[16];
  std::vector<int8_t> xq_buf;
  std::vector<float> xscale_buf;

  LinearPlan() = default;
  LinearPlan(const LinearPlan&) = delete;  // x may point into padded
  LinearPlan& operator=(const LinearPlan&) = delete;
};

// The checks sefp_linear makes before computing anything (kOk if it would run).
Status validate(const float* x, int64_t rows, const SEFPWeightView& w, int bits, const float* y);

// Validates and prepares one call into *plan (y[r * ldy + n], ldy >= out_features).
// act_int8_max_bits: 0, or a call at bits <= act_int8_max_bits computes fq(x) @ W_k^T (int8
// activations, docs/FORMAT.md §9; an integer kernel where the CPU and the levels allow).
Status plan_linear(const float* x, int64_t rows, const SEFPWeightView& w, const float* bias, int bits, float* y,
                   int64_t ldy, Isa isa, LinearPlan* plan, int act_int8_max_bits = 0);
// The integer kernel that int8-activation decode calls run with `isa` on this CPU: "avx512-vnni",
// "avx2", "neon-sdot", or "none" (the float kernels on fq(x)).
const char* int8_kernel_name(Isa isa);
// The highest precision E5Mk that kernel computes with `isa` on this CPU: 6 for "avx512-vnni" where
// the CPU has AVX-512 VBMI, 4 for the other kernels, 0 for "none". Calls at higher precisions (and
// with levels off the int8 grid, or more than 3 rows) run the float kernels on fq(x).
int int8_kernel_max_bits(Isa isa);
// Computes y[r, n] for every r < rows and n in [n_begin, n_end) of a planned call,
// single-threaded (0 <= n_begin <= n_end <= out_features; not checked).
void run_linear_range(const LinearPlan& plan, int64_t n_begin, int64_t n_end);
// Threads a planned call would use (num_threads <= 0: default_num_threads()).
int64_t linear_threads(const LinearPlan& plan, int num_threads);

// y[r, n] = sum_k x[r, k] * W_bits[n, k] + (bias ? bias[n] : 0) for r < rows.
// x: [rows, in_features] float32 row-major; y: [rows, out_features].
// num_threads <= 0 means default_num_threads(). Output rows are split across
// a persistent pool; a call made while the pool is busy (another thread's
// call, or a nested one) runs on its caller alone instead of oversubscribing.
// Accumulates in float32; the dequantized weights are exact, so results differ
// from "dequantize then matmul" only by summation order.
// Never throws; any Status other than kOk means y was not written.
Status sefp_linear(const float* x, int64_t rows, const SEFPWeightView& w, const float* bias, int bits, float* y,
                   int num_threads = 0, Isa isa = Isa::kAuto, int act_int8_max_bits = 0);

// Single-threaded slice for callers that bring their own threads (e.g. an
// inference engine's intra-op pool): computes y[r * ldy + n] for r < rows and
// n in [n_begin, n_end) only; other columns of y are left untouched.
// (Validates and plans on every call: wrappers that split one call into many
// slices use plan_linear + run_linear_range instead.)
Status sefp_linear_range(const float* x, int64_t rows, const SEFPWeightView& w, const float* bias, int bits, float* y,
                         int64_t ldy, int64_t n_begin, int64_t n_end, Isa isa = Isa::kAuto, int act_int8_max_bits = 0);

// ---- sefp_embedding ----

// out[i, :] = row ids[i] of W_bits (in_features floats, exact) for i < count.
// Ids outside [0, out_features) give kInvalidIndex (*bad_id, if given, receives
// the position of the first one) and nothing is written. Rows are split across
// the pool like sefp_linear. Never throws.
Status sefp_embedding(const int64_t* ids, int64_t count, const SEFPWeightView& w, int bits, float* out,
                      int num_threads = 0, Isa isa = Isa::kAuto, int64_t* bad_id = nullptr);

}  // namespace otaro
