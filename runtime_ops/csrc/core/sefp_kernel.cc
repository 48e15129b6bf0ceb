// Validation, planning, ISA dispatch and multi-threading of the SEFP kernel core.
#include "core/sefp_kernel.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <new>
#include <string>
#include <vector>

#include "core/sefp_kernel_internal.h"
#include "core/thread_pool.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)  // the dot-product instructions (SDOT/UDOT), Linux's arm64 hwcap bit
#endif
#endif

namespace otaro {

const char* status_message(Status status) {
  switch (status) {
    case Status::kOk: return "ok";
    case Status::kInvalidBits: return "bits must be in 3..8 (SEFP precisions E5M3..E5M8)";
    case Status::kInvalidShape:
      return "SEFP weight shape mismatch: in_features must be in (num_groups*64 - 64, num_groups*64], "
             "sizes non-negative and pointers non-null";
    case Status::kUnavailableIsa:
      return "the requested instruction set is not compiled in or not supported by this CPU";
    case Status::kOutOfMemory: return "out of memory for the zero-padded copy of x";
    case Status::kInvalidLevels:
      return "reconstruction levels must be finite and >= 0 (the row of the precision used has a bad entry)";
    case Status::kInvalidIndex: return "an id is outside [0, out_features) of the embedding table";
    case Status::kInvalidActivationBits: return "act_int8_max_bits must be 0 (off) or 3..8";
  }
  return "unknown status";
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAuto: return "auto";
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kNeon: return "neon";
  }
  return "unknown";
}

bool isa_available(Isa isa) {
  switch (isa) {
    case Isa::kAuto:
    case Isa::kScalar: return true;
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
#if defined(__aarch64__)
    case Isa::kNeon: return true;  // Advanced SIMD is mandatory on AArch64
#endif
    default: return false;
  }
}

Isa best_isa() {
  static const Isa best = [] {
    // $OTARO_ISA (scalar, avx2, avx512, neon) caps the choice, e.g. to measure the AVX2 path on an
    // AVX-512 machine; an unknown or unavailable name is ignored.
    if (const char* env = std::getenv("OTARO_ISA")) {
      for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
        if (std::strcmp(env, isa_name(isa)) == 0 && isa_available(isa)) return isa;
      }
    }
    for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kNeon}) {
      if (isa_available(isa)) return isa;
    }
    return Isa::kScalar;
  }();
  return best;
}

namespace {

#if defined(__x86_64__) || defined(_M_X64)
bool avx512_vnni_available() {
  static const bool available = isa_available(Isa::kAvx512) && __builtin_cpu_supports("avx512vnni");
  return available;
}

// VBMI's byte permutes (vpermb, vpermi2b) on top: the integer path of E5M3 to E5M6 (paired groups).
// $OTARO_NO_VBMI=1 leaves it unused, so that a VBMI machine can test and time the VNNI-only kernels.
bool avx512_vbmi_available() {
  static const bool available = avx512_vnni_available() && __builtin_cpu_supports("avx512vbmi") &&
                                !(std::getenv("OTARO_NO_VBMI") && std::strcmp(std::getenv("OTARO_NO_VBMI"), "1") == 0);
  return available;
}
#endif

#if defined(__aarch64__)
// ARMv8.2 dot product (SDOT), for the NEON int8-activation kernel.
bool neon_dotprod_available() {
#if defined(__linux__)
  static const bool available = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
  return available;
#else
  return false;
#endif
}
#endif

struct Int8Kernel {
  detail::RangeKernel run;  // nullptr: none (the float kernels run on fq(x))
  const char* name;
  int max_bits;  // the highest precision it computes (E5M3..E5M<max_bits>)
};

// The one place that picks the integer kernel of int8-activation decode calls with an
// available `isa` on this CPU.
Int8Kernel int8_kernel_for(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == Isa::kAvx512 && avx512_vbmi_available()) return {detail::linear_range_avx512_vbmi, "avx512-vnni", 6};
  if (isa == Isa::kAvx512 && avx512_vnni_available()) return {detail::linear_range_avx512_vnni, "avx512-vnni", 4};
  if (isa == Isa::kAvx512 || isa == Isa::kAvx2) return {detail::linear_range_avx2_int8, "avx2", 4};  // AVX-512 has AVX2
#endif
#if defined(__aarch64__)
  if (isa == Isa::kNeon && neon_dotprod_available()) return {detail::linear_range_neon_dotprod, "neon-sdot", 4};
#endif
  return {nullptr, "none", 0};
}

}  // namespace

const char* int8_kernel_name(Isa isa) {
  if (isa == Isa::kAuto) isa = best_isa();
  return isa_available(isa) ? int8_kernel_for(isa).name : "none";
}

int int8_kernel_max_bits(Isa isa) {
  if (isa == Isa::kAuto) isa = best_isa();
  return isa_available(isa) ? int8_kernel_for(isa).max_bits : 0;
}

int default_num_threads() {
  static const int n = [] {
    if (const char* env = std::getenv("OTARO_NUM_THREADS")) {
      const int v = std::atoi(env);
      if (v > 0) return v;
    }
    return std::max(1, std::min(hardware_threads(), 4));
  }();
  return n;
}

// ---- argument checks shared by the wrappers ----

namespace {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kUInt8: return "uint8";
    case DType::kInt8: return "int8";
    case DType::kInt64: return "int64";
    default: return "another type";
  }
}

std::string shape_str(const TensorInfo& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.rank; ++i) s += (i ? ", " : "") + std::to_string(t.dims[i]);
  return s + "]";
}

bool has_shape(const TensorInfo& t, std::initializer_list<int64_t> want) {
  if (t.rank != static_cast<int64_t>(want.size())) return false;
  int64_t i = 0;
  for (int64_t d : want)
    if (t.dims[i++] != d) return false;
  return true;
}

Status fail(char* msg, size_t len, const std::string& what) {
  if (msg && len) std::snprintf(msg, len, "%s", what.c_str());
  return Status::kInvalidShape;
}

Status check_dtype(const TensorInfo& t, const char* name, DType want, char* msg, size_t len) {
  if (t.dtype == want) return Status::kOk;
  return fail(msg, len, std::string("input ") + name + " must be " + dtype_name(want) + ", got " + dtype_name(t.dtype));
}

// P0..P3 and E of one [N, K] weight; sets n and g.
Status check_weight(const TensorInfo (&planes)[kNumPlanes], const TensorInfo& e, int64_t* n, int64_t* g, char* msg,
                    size_t len) {
  if (Status s = check_dtype(e, "E", DType::kInt8, msg, len); s != Status::kOk) return s;
  if (e.rank != 2) return fail(msg, len, "E (exponents) must be int8 [N, G], got shape " + shape_str(e));
  *n = e.dims[0];
  *g = e.dims[1];
  for (int p = 0; p < kNumPlanes; ++p) {
    const std::string name = "P" + std::to_string(p);
    if (Status s = check_dtype(planes[p], name.c_str(), DType::kUInt8, msg, len); s != Status::kOk) return s;
    const int64_t cols = *g * kPlaneBytesPerGroup[p];
    if (!has_shape(planes[p], {*n, cols})) {
      return fail(msg, len,
                  "plane " + name + " must be uint8 [" + std::to_string(*n) + ", " + std::to_string(cols) +
                      "] for E of shape [" + std::to_string(*n) + ", " + std::to_string(*g) + "], got " +
                      shape_str(planes[p]));
    }
  }
  return Status::kOk;
}

Status check_bits_and_levels(const TensorInfo& bits, const TensorInfo& levels, char* msg, size_t len) {
  if (bits.dtype != DType::kInt64 || bits.rank != 0) {
    return fail(
        msg, len,
        std::string("bits must be a 0-dim int64 tensor, got ") + dtype_name(bits.dtype) + " " + shape_str(bits));
  }
  if (levels.present && (levels.dtype != DType::kFloat32 || !has_shape(levels, {kLevelsRows, kLevelsCols}))) {
    return fail(msg, len,
                std::string("L (reconstruction levels) must be float32 [6, 256], got ") + dtype_name(levels.dtype) +
                    " " + shape_str(levels));
  }
  return Status::kOk;
}

}  // namespace

Status check_linear_args(const LinearArgsInfo& info, char* msg, size_t len) {
  int64_t n = 0, g = 0;
  if (Status s = check_weight(info.planes, info.exponents, &n, &g, msg, len); s != Status::kOk) return s;
  if (Status s = check_dtype(info.x, "X", DType::kFloat32, msg, len); s != Status::kOk) return s;
  if (info.x.rank < 1) return fail(msg, len, "X must have rank >= 1 ([..., K]), got a scalar");
  const int64_t k = info.x.dims[info.x.rank - 1];
  if (g < 1 || !(g * kGroupSize - kGroupSize < k && k <= g * kGroupSize)) {
    return fail(msg, len,
                "X has " + std::to_string(k) + " input features but the weight has " + std::to_string(g) +
                    " groups of 64 (accepts " + std::to_string(g * kGroupSize - kGroupSize + 1) + ".." +
                    std::to_string(g * kGroupSize) + ")");
  }
  if (info.bias.present) {
    if (info.bias.dtype != DType::kFloat32 || !has_shape(info.bias, {n})) {
      return fail(msg, len,
                  "bias B must be float32 [" + std::to_string(n) + "], got " + dtype_name(info.bias.dtype) + " " +
                      shape_str(info.bias));
    }
  }
  return check_bits_and_levels(info.bits, info.levels, msg, len);
}

Status check_embedding_args(const EmbeddingArgsInfo& info, char* msg, size_t len) {
  int64_t n = 0, g = 0;
  if (Status s = check_weight(info.planes, info.exponents, &n, &g, msg, len); s != Status::kOk) return s;
  if (Status s = check_dtype(info.ids, "ids", DType::kInt64, msg, len); s != Status::kOk) return s;
  const int64_t k = info.in_features;
  if (!(g * kGroupSize - kGroupSize < k && k <= g * kGroupSize)) {
    return fail(msg, len,
                "in_features is " + std::to_string(k) + " but the table has " + std::to_string(g) +
                    " groups of 64 (accepts " + std::to_string(g * kGroupSize - kGroupSize + 1) + ".." +
                    std::to_string(g * kGroupSize) + ")");
  }
  return check_bits_and_levels(info.bits, info.levels, msg, len);
}

// ---- planning ----

namespace {

detail::RangeKernel kernel_for(Isa isa) {
  switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::kAvx2: return detail::linear_range_avx2;
    case Isa::kAvx512: return detail::linear_range_avx512;
#endif
#if defined(__aarch64__)
    case Isa::kNeon: return detail::linear_range_neon;
#endif
    default: return detail::linear_range_scalar;
  }
}

detail::EmbeddingKernel embedding_kernel_for(Isa isa) {
  switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::kAvx2: return detail::embedding_range_avx2;
    case Isa::kAvx512: return detail::embedding_range_avx512;
#endif
#if defined(__aarch64__)
    case Isa::kNeon: return detail::embedding_range_neon;
#endif
    default: return detail::embedding_range_scalar;
  }
}

// Work below this many weight-row products runs on the caller alone: waking
// threads costs more than it saves.
constexpr int64_t kMinWorkPerThread = 64 * 1024;
constexpr int64_t kTasksPerThread = 4;

// The floor rule's rows, for kernels that read a row in every decode mode.
struct FloorRows {
  float v[kLevelsRows][kLevelsCols];
  FloorRows() : v{} {
    for (int k = kMinBits; k <= kMaxBits; ++k)
      for (int j = 0; j < (1 << k); ++j) v[k - kMinBits][j] = static_cast<float>(j << (8 - k));
  }
};
const FloorRows& floor_rows() {
  static const FloorRows rows;
  return rows;
}

bool row_equals(const float* row, int bits, float offset) {
  const float step = static_cast<float>(1 << (8 - bits));
  for (int j = 0; j < (1 << bits); ++j)
    if (row[j] != (static_cast<float>(j) + offset) * step) return false;
  return true;
}

// Resolves the decode rule of precision `bits` and fills the plan's tables.
Status resolve_levels(const float* levels, int bits, LinearPlan* plan) {
  const float* row = levels ? levels + (bits - kMinBits) * kLevelsCols : floor_rows().v[bits - kMinBits];
  for (int j = 0; j < (1 << bits); ++j)
    if (!std::isfinite(row[j]) || row[j] < 0.0f) return Status::kInvalidLevels;
  plan->row = row;
  if (levels == nullptr || row_equals(row, bits, 0.0f)) {
    plan->decode = Decode::kFloor;
  } else if (bits >= 5 && row_equals(row, bits, 0.5f)) {
    plan->decode = Decode::kCenter;
  } else {
    plan->decode = Decode::kTable;
  }
  std::memset(plan->lut, 0, sizeof plan->lut);
  std::memset(plan->lut_bytes, 0, sizeof plan->lut_bytes);
  if (bits <= 4) {
    for (int i = 0; i < (bits == 3 ? 16 : 32); ++i) {
      const int code = i & 15;  // sign << 3 | q[7:5]
      const int j = bits == 3 ? (code & 7) : ((code & 7) << 1) | (i >> 4);
      plan->lut[i] = (code & 8) ? -row[j] : row[j];
    }
    for (int j = 0; j < (1 << bits); ++j) {
      uint32_t u;
      std::memcpy(&u, &row[j], sizeof u);
      for (int b = 0; b < 4; ++b) plan->lut_bytes[b][j] = static_cast<uint8_t>(u >> (8 * b));
    }
  }
  return Status::kOk;
}

// The integer kernel that computes this call, or nullptr: the ISA has one (int8_kernel_for) that
// covers precision k (E5M3/E5M4 everywhere, E5M5/E5M6 with AVX-512 VBMI), few rows (decode;
// prefill-sized calls run the float GEMM on fq(x)), and the levels of precision k are on the int8
// grid (even integers in [0, 254], docs/FORMAT.md §9: their signed halves are the kernels' s8
// weights). Otherwise the float kernels run on fq(x): the same result up to summation order.
detail::RangeKernel int8_kernel_of(const LinearPlan& plan) {
  const Int8Kernel kernel = int8_kernel_for(plan.isa);
  if (kernel.run == nullptr || plan.bits > kernel.max_bits || plan.rows > 3) return nullptr;
  for (int j = 0; j < (1 << plan.bits); ++j) {
    const float v = plan.row[j];
    if (!(v >= 0.0f && v <= 254.0f) || v != 2.0f * std::nearbyint(0.5f * v)) return nullptr;
  }
  return kernel.run;
}

// Replaces the zero-padded copy of x in plan->padded by fq(x) (docs/FORMAT.md §9), block by
// block of 64, and keeps q and the block scales for the integer kernel when it applies.
Status quantize_activations(LinearPlan* plan) {
  const int64_t groups = plan->w.num_groups, blocks = plan->rows * groups;
  const detail::RangeKernel kernel = int8_kernel_of(*plan);
  bool integer = kernel != nullptr;
  if (integer) {
    try {
      plan->xq_buf.assign(static_cast<size_t>(plan->rows * plan->ldx), 0);
      plan->xscale_buf.assign(static_cast<size_t>(blocks), 0.0f);
    } catch (const std::bad_alloc&) {
      return Status::kOutOfMemory;
    }
  }
  constexpr float kQmax = 127.0f;
  for (int64_t b = 0; b < blocks; ++b) {
    float* v = plan->padded.data() + b * kGroupSize;
    float amax = 0.0f;
    bool finite = true;
    for (int64_t i = 0; i < kGroupSize; ++i) {
      const float a = std::fabs(v[i]);
      if (a <= FLT_MAX)
        amax = std::max(amax, a);
      else
        finite = false;  // Inf or NaN
    }
    if (!finite) integer = false;  // the block is kept as is, which the integer kernel cannot carry
    if (!finite || amax == 0.0f) continue;
    const float inv = kQmax / amax, step = amax / kQmax;
    int8_t* q = integer ? plan->xq_buf.data() + b * kGroupSize : nullptr;
    for (int64_t i = 0; i < kGroupSize; ++i) {
      const float r = std::min(kQmax, std::max(-kQmax, std::nearbyint(v[i] * inv)));
      if (q) q[i] = static_cast<int8_t>(r);
      v[i] = r * step;
    }
    if (integer) plan->xscale_buf[b] = step;
  }
  plan->int8_kernel = integer ? kernel : nullptr;
  if (integer) {
    plan->xq = plan->xq_buf.data();
    plan->xscale = plan->xscale_buf.data();
    for (int i = 0; i < 16 && plan->bits <= 4; ++i) {  // E5M5 / E5M6 build their tables from row
      const int j = plan->bits == 3 ? (i & 7) : (((i & 7) << 1) | (i >> 3));
      plan->lut_u8[i] = static_cast<uint8_t>(plan->row[j]);
    }
  }
  return Status::kOk;
}

}  // namespace

Status validate(const float* x, int64_t rows, const SEFPWeightView& w, int bits, const float* y) {
  if (bits < kMinBits || bits > kMaxBits) return Status::kInvalidBits;
  if (rows < 0 || w.out_features < 0 || w.num_groups < 0 || w.in_features < 0) return Status::kInvalidShape;
  if (w.in_features > w.num_groups * kGroupSize || w.in_features <= (w.num_groups - 1) * kGroupSize)
    return Status::kInvalidShape;
  if (rows > 0 && w.out_features > 0) {
    if (!x || !y || !w.exponents || !w.p0) return Status::kInvalidShape;
    if ((bits >= 4 && !w.p1) || (bits >= 6 && !w.p2) || (bits >= 8 && !w.p3)) return Status::kInvalidShape;
  }
  return Status::kOk;
}

Status plan_linear(const float* x, int64_t rows, const SEFPWeightView& w, const float* bias, int bits, float* y,
                   int64_t ldy, Isa isa, LinearPlan* plan, int act_int8_max_bits) {
  if (Status status = validate(x, rows, w, bits, y); status != Status::kOk) return status;
  if (act_int8_max_bits != 0 && (act_int8_max_bits < kMinBits || act_int8_max_bits > kMaxBits))
    return Status::kInvalidActivationBits;
  if (ldy < w.out_features) return Status::kInvalidShape;
  if (isa == Isa::kAuto) isa = best_isa();
  if (!isa_available(isa)) return Status::kUnavailableIsa;
  if (Status status = resolve_levels(w.levels, bits, plan); status != Status::kOk) return status;
  plan->x = x;
  plan->rows = rows;
  plan->w = w;
  plan->bias = bias;
  plan->bits = bits;
  plan->y = y;
  plan->ldy = ldy;
  plan->isa = isa;
  const int64_t k_pad = w.num_groups * kGroupSize;
  plan->ldx = k_pad;
  const bool int8_act = act_int8_max_bits != 0 && bits <= act_int8_max_bits;
  if ((k_pad != w.in_features || int8_act) && rows > 0) {
    try {
      plan->padded.assign(static_cast<size_t>(rows * k_pad), 0.0f);
    } catch (const std::bad_alloc&) {
      return Status::kOutOfMemory;
    }
    for (int64_t r = 0; r < rows; ++r)
      std::copy(x + r * w.in_features, x + (r + 1) * w.in_features, plan->padded.begin() + r * k_pad);
    plan->x = plan->padded.data();
    if (int8_act) return quantize_activations(plan);
  }
  return Status::kOk;
}

void run_linear_range(const LinearPlan& plan, int64_t n_begin, int64_t n_end) {
  if (plan.rows == 0 || n_begin >= n_end) return;
  if (plan.w.num_groups == 0) {  // K == 0: y = bias
    for (int64_t r = 0; r < plan.rows; ++r)
      for (int64_t n = n_begin; n < n_end; ++n) plan.y[r * plan.ldy + n] = plan.bias ? plan.bias[n] : 0.0f;
    return;
  }
  if (plan.int8_kernel) return plan.int8_kernel(plan, n_begin, n_end);
  kernel_for(plan.isa)(plan, n_begin, n_end);
}

int64_t linear_threads(const LinearPlan& plan, int num_threads) {
  if (num_threads <= 0) num_threads = default_num_threads();
  const int64_t work = plan.rows * plan.w.out_features * std::max<int64_t>(plan.ldx, 1);
  const int64_t blocks = (plan.w.out_features + kRowBlock - 1) / kRowBlock;
  return std::max<int64_t>(1, std::min<int64_t>({num_threads, blocks, work / kMinWorkPerThread}));
}

Status sefp_linear_range(const float* x, int64_t rows, const SEFPWeightView& w, const float* bias, int bits, float* y,
                         int64_t ldy, int64_t n_begin, int64_t n_end, Isa isa, int act_int8_max_bits) {
  if (n_begin < 0 || n_end > w.out_features || n_begin > n_end) return Status::kInvalidShape;
  LinearPlan plan;
  const Status status = plan_linear(x, rows, w, bias, bits, y, ldy, isa, &plan, act_int8_max_bits);
  if (status != Status::kOk) return status;
  run_linear_range(plan, n_begin, n_end);
  return Status::kOk;
}

// Runs fn(begin, end) over [0, total) in blocks of `align`, on up to `threads` pool threads.
template <typename Fn>
static void parallel_blocks(int64_t total, int64_t align, int64_t threads, const Fn& fn) {
  // A few tasks per thread: a thread that runs late (a busy machine) leaves its
  // share to the others instead of stalling the call.
  const int64_t blocks = (total + align - 1) / align;
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(blocks, threads * kTasksPerThread));
  parallel_slices(total, (blocks + tasks - 1) / tasks * align, threads, fn);
}

Status sefp_linear(const float* x, int64_t rows, const SEFPWeightView& w, const float* bias, int bits, float* y,
                   int num_threads, Isa isa, int act_int8_max_bits) {
  LinearPlan plan;
  const Status status = plan_linear(x, rows, w, bias, bits, y, w.out_features, isa, &plan, act_int8_max_bits);
  if (status != Status::kOk || rows == 0 || w.out_features == 0) return status;
  parallel_blocks(w.out_features, kRowBlock, linear_threads(plan, num_threads),
                  [&](int64_t begin, int64_t end) { run_linear_range(plan, begin, end); });
  return Status::kOk;
}

Status sefp_embedding(const int64_t* ids, int64_t count, const SEFPWeightView& w, int bits, float* out, int num_threads,
                      Isa isa, int64_t* bad_id) {
  if (count < 0) return Status::kInvalidShape;
  // A zero-row linear plan checks bits, the weight's shape and the levels, and resolves the ISA and decode.
  LinearPlan plan;
  const Status status = plan_linear(nullptr, 0, w, nullptr, bits, nullptr, w.out_features, isa, &plan);
  if (status != Status::kOk) return status;
  if (count > 0 && (!ids || !out || !w.exponents || !w.p0)) return Status::kInvalidShape;
  if ((bits >= 4 && !w.p1) || (bits >= 6 && !w.p2) || (bits >= 8 && !w.p3)) return Status::kInvalidShape;
  for (int64_t i = 0; i < count; ++i) {
    if (ids[i] < 0 || ids[i] >= w.out_features) {
      if (bad_id) *bad_id = i;
      return Status::kInvalidIndex;
    }
  }
  if (count == 0 || w.in_features == 0) return Status::kOk;
  const detail::EmbeddingPlan e{ids, w, out, &plan};
  const detail::EmbeddingKernel kernel = embedding_kernel_for(plan.isa);
  if (num_threads <= 0) num_threads = default_num_threads();
  const int64_t threads =
      std::max<int64_t>(1, std::min<int64_t>({num_threads, count, count * w.in_features / kMinWorkPerThread}));
  parallel_blocks(count, 1, threads, [&](int64_t begin, int64_t end) { kernel(e, begin, end); });
  return Status::kOk;
}

}  // namespace otaro
