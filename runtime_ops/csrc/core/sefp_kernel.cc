// Validation, ISA dispatch and multi-threading of the SEFP kernel core.
#include "core/sefp_kernel.h"

#include <algorithm>
#include <cstdlib>
#include <new>
#include <vector>

#include "core/sefp_kernel_internal.h"
#include "core/thread_pool.h"

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
    for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kNeon}) {
      if (isa_available(isa)) return isa;
    }
    return Isa::kScalar;
  }();
  return best;
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

// Work below this many weight-row products runs on the caller alone: waking
// threads costs more than it saves.
constexpr int64_t kMinWorkPerThread = 64 * 1024;
// Threads split output rows in multiples of this (the kernels' row blocking).
constexpr int64_t kRowAlign = 16;
constexpr int64_t kTasksPerThread = 4;

}  // namespace

Status validate(const float* x, int64_t rows, const SEFPWeightView& w, int bits, const float* y) {
  if (bits < 3 || bits > 8) return Status::kInvalidBits;
  if (rows < 0 || w.out_features < 0 || w.num_groups < 0 || w.in_features < 0) return Status::kInvalidShape;
  if (w.in_features > w.num_groups * detail::kGroup || w.in_features <= (w.num_groups - 1) * detail::kGroup)
    return Status::kInvalidShape;
  if (rows > 0 && w.out_features > 0) {
    if (!x || !y || !w.exponents || !w.p0) return Status::kInvalidShape;
    if ((bits >= 4 && !w.p1) || (bits >= 6 && !w.p2) || (bits >= 8 && !w.p3)) return Status::kInvalidShape;
  }
  return Status::kOk;
}

namespace {

// Validates, resolves the ISA and zero-pads x to whole groups (into `padded`).
Status prepare(const float* x, int64_t rows, const SEFPWeightView& w, const float* bias, int bits, float* y,
               int64_t ldy, Isa* isa, detail::LinearArgs* args, std::vector<float>* padded) {
  const Status status = validate(x, rows, w, bits, y);
  if (status != Status::kOk) return status;
  if (ldy < w.out_features) return Status::kInvalidShape;
  if (*isa == Isa::kAuto) *isa = best_isa();
  if (!isa_available(*isa)) return Status::kUnavailableIsa;
  *args = detail::LinearArgs{x, rows, w.in_features, w, bias, bits, y, ldy};
  const int64_t k_pad = w.num_groups * detail::kGroup;
  if (k_pad != w.in_features && rows > 0) {
    try {
      padded->assign(static_cast<size_t>(rows * k_pad), 0.0f);
    } catch (const std::bad_alloc&) {
      return Status::kOutOfMemory;
    }
    for (int64_t r = 0; r < rows; ++r)
      std::copy(x + r * w.in_features, x + (r + 1) * w.in_features, padded->begin() + r * k_pad);
    args->x = padded->data();
  }
  args->ldx = k_pad;
  return Status::kOk;
}

// K == 0: y = bias.
void bias_only(const detail::LinearArgs& a, int64_t n_begin, int64_t n_end) {
  for (int64_t r = 0; r < a.rows; ++r)
    for (int64_t n = n_begin; n < n_end; ++n) a.y[r * a.ldy + n] = a.bias ? a.bias[n] : 0.0f;
}

}  // namespace

Status sefp_linear_range(const float* x, int64_t rows, const SEFPWeightView& w, const float* bias, int bits, float* y,
                         int64_t ldy, int64_t n_begin, int64_t n_end, Isa isa) {
  if (n_begin < 0 || n_end > w.out_features || n_begin > n_end) return Status::kInvalidShape;
  detail::LinearArgs args{};
  std::vector<float> padded;
  const Status status = prepare(x, rows, w, bias, bits, y, ldy, &isa, &args, &padded);
  if (status != Status::kOk || rows == 0 || n_begin == n_end) return status;
  if (w.num_groups == 0) {
    bias_only(args, n_begin, n_end);
  } else {
    kernel_for(isa)(args, n_begin, n_end);
  }
  return Status::kOk;
}

Status sefp_linear(const float* x, int64_t rows, const SEFPWeightView& w, const float* bias, int bits, float* y,
                   int num_threads, Isa isa) {
  detail::LinearArgs args{};
  std::vector<float> padded;
  const Status status = prepare(x, rows, w, bias, bits, y, w.out_features, &isa, &args, &padded);
  if (status != Status::kOk || rows == 0 || w.out_features == 0) return status;
  if (w.num_groups == 0) {
    bias_only(args, 0, w.out_features);
    return Status::kOk;
  }

  const detail::RangeKernel kernel = kernel_for(isa);
  if (num_threads <= 0) num_threads = default_num_threads();
  const int64_t work = rows * w.out_features * args.ldx;
  const int64_t blocks = (w.out_features + kRowAlign - 1) / kRowAlign;
  const int64_t threads = std::min<int64_t>({num_threads, blocks, std::max<int64_t>(1, work / kMinWorkPerThread)});
  if (threads <= 1) {
    kernel(args, 0, w.out_features);
    return Status::kOk;
  }
  // A few tasks per thread: a thread that runs late (a busy machine) leaves its
  // share to the others instead of stalling the call.
  const int64_t tasks = std::min<int64_t>(blocks, threads * kTasksPerThread);
  const int64_t per_task = (blocks + tasks - 1) / tasks * kRowAlign;
  ThreadPool::instance().run(static_cast<int>(threads), static_cast<int>(tasks), [&](int t) {
    const int64_t begin = t * per_task;
    const int64_t end = std::min(w.out_features, begin + per_task);
    if (begin < end) kernel(args, begin, end);
  });
  return Status::kOk;
}

}  // namespace otaro
