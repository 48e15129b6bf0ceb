// Kernel of `ai.otaro::SEFPLinear`: the core checks the inputs (otaro::check_linear_args)
// and plans the call once (bits, levels, padding), then the planned call runs in
// blocks of output features on the session's intra-op threads.
//
// Attribute `swiglu` = 1 (docs/FORMAT.md §5): Y = silu(Z[..., :N/2]) * Z[..., N/2:] with
// Z = X @ W_k^T (+ B), for a packed [gate | up] projection. Each task computes the same feature
// range of both halves into a scratch Z and combines it while it is in cache, so a decoder layer's
// MLP runs as two nodes instead of six (Split, Sigmoid, Mul, Mul gone: E5M3 decode of the default
// model 1.03x, paired).
#include <algorithm>
#include <exception>
#include <new>
#include <vector>

#include "core/sefp_kernel.h"
#include "core/vector_math.h"
#include "onnxruntime/ort_util.h"
#include "onnxruntime/sefp_ops.h"

namespace otaro_ort {
namespace {

constexpr const char* kOpName = "SEFPLinear";

// Input order mirrors torch.ops.otaro.sefp_linear: X, P0, P1, P2, P3, E, bits[, B[, L]].
enum Input : size_t { kX = 0, kP0, kP1, kP2, kP3, kE, kBits, kBias, kLevels, kNumInputs };
constexpr size_t kNumRequired = kBias;
constexpr const char* kInputNames[kNumInputs] = {"X", "P0", "P1", "P2", "P3", "E", "bits", "B", "L"};
constexpr ONNXTensorElementDataType kInputTypes[kNumInputs] = {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
};

// The split of a call's output features into tasks. Tasks are whole 16-row blocks (the
// core's SIMD row blocking), spread evenly: task i runs blocks [i*B/T, (i+1)*B/T). T is a
// power of two, so 1, 2 and 4 intra-op threads get equal shares (a fixed task size left
// decode's o_proj at 464 + 112 rows on 2 threads), and each task keeps at least 128K
// multiply-adds so the thread-pool hand-off stays small next to the work.
struct Split {
  int64_t blocks;  // 16-row blocks of the output features
  int64_t tasks;
};

Split split_features(int64_t rows, int64_t n, int64_t k) {
  constexpr int64_t kMaxTasks = 16, kMinMacsPerTask = int64_t{1} << 17;
  const int64_t blocks = (n + otaro::kRowBlock - 1) / otaro::kRowBlock;
  const int64_t macs = rows * n * std::max<int64_t>(1, k);
  int64_t tasks = 1;
  while (tasks * 2 <= std::min(kMaxTasks, blocks) && macs / (tasks * 2) >= kMinMacsPerTask) tasks *= 2;
  return {blocks, tasks};
}

// One ParallelFor job. With swiglu, `features` is N/2: task ranges cover the gate half, and each
// task also computes the same range of the up half, then writes silu(gate) * up to `out`.
struct Job {
  const otaro::LinearPlan* plan;
  Split split;
  int64_t features;
  float* out;  // swiglu only: Y [rows, N/2]; the plan writes Z [rows, N]
};

// Features [begin, end) of one task (single-threaded; never throws).
void run_features(const Job& job, int64_t begin, int64_t end) {
  const otaro::LinearPlan& plan = *job.plan;
  otaro::run_linear_range(plan, begin, end);
  if (job.out == nullptr) return;
  const int64_t half = job.features;
  otaro::run_linear_range(plan, half + begin, half + end);
  for (int64_t r = 0; r < plan.rows; ++r) {
    const float* z = plan.y + r * plan.ldy;
    otaro::silu_mul(z + begin, z + half + begin, job.out + r * half + begin, end - begin);
  }
}

void run_task(void* data, size_t index) {
  const Job& job = *static_cast<const Job*>(data);
  const int64_t i = static_cast<int64_t>(index), b = job.split.blocks, t = job.split.tasks;
  run_features(job, i * b / t * otaro::kRowBlock, std::min(job.features, (i + 1) * b / t * otaro::kRowBlock));
}

struct Kernel {
  const OrtApi* api;
  ConstantInputs<kNumInputs> constants;
  int act_int8_max_bits;  // attribute: 0, or int8 activations at bits <= it (docs/FORMAT.md §9)
  bool swiglu;            // attribute: Y = silu(gate) * up of Z = [gate | up] (docs/FORMAT.md §5)
};

OrtStatus* compute(const Kernel& kernel, OrtKernelContext* context) {
  const OrtApi* api = kernel.api;
  const OrtValue* inputs[kNumInputs];
  OTARO_RETURN_IF_ERROR(get_inputs(api, context, kOpName, kNumRequired, kNumInputs, kInputNames, inputs));
  InputDesc scratch[kNumInputs];
  const InputDesc* d[kNumInputs];
  OTARO_RETURN_IF_ERROR(kernel.constants.get_all(api, inputs, scratch, d));
  const otaro::LinearArgsInfo info{d[kX]->info,    {d[kP0]->info, d[kP1]->info, d[kP2]->info, d[kP3]->info},
                                   d[kE]->info,    d[kBits]->info,
                                   d[kBias]->info, d[kLevels]->info};
  char msg[512];
  if (otaro::check_linear_args(info, msg, sizeof msg) != otaro::Status::kOk) return op_error(api, kOpName, "%s", msg);

  const int64_t n = d[kE]->dim(0), g = d[kE]->dim(1), k = d[kX]->last();
  const int64_t x_rank = d[kX]->info.rank;
  int64_t out_dims[16];
  std::vector<int64_t> out_large;
  int64_t* out = out_dims;
  if (x_rank > 16) {
    out_large.resize(static_cast<size_t>(x_rank));
    out = out_large.data();
  }
  int64_t rows = 1;  // leading dims of X (not numel / K: K may be 0)
  for (int64_t i = 0; i + 1 < x_rank; ++i) {
    out[i] = d[kX]->dim(i);
    rows *= out[i];
  }
  if (kernel.swiglu && n % 2 != 0) {
    return op_error(api, kOpName, "swiglu=1 needs an even number of output features [gate | up], got N = %lld",
                    static_cast<long long>(n));
  }
  out[x_rank - 1] = kernel.swiglu ? n / 2 : n;
  const int64_t bits = *static_cast<const int64_t*>(d[kBits]->data);

  otaro::SEFPWeightView w{static_cast<const uint8_t*>(d[kP0]->data),
                          static_cast<const uint8_t*>(d[kP1]->data),
                          static_cast<const uint8_t*>(d[kP2]->data),
                          static_cast<const uint8_t*>(d[kP3]->data),
                          static_cast<const int8_t*>(d[kE]->data),
                          n,
                          k,
                          g,
                          static_cast<const float*>(d[kLevels]->data)};
  OrtValue* output = nullptr;
  OTARO_RETURN_IF_ERROR(api->KernelContext_GetOutput(context, 0, out, static_cast<size_t>(x_rank), &output));
  void* y = nullptr;
  if (rows > 0 && n > 0) OTARO_RETURN_IF_ERROR(api->GetTensorMutableData(output, &y));
  float* swiglu_out = nullptr;
  // Z of a swiglu call: per thread, reused across calls (a decode step's is 12 KiB; onnxruntime may run
  // one session's steps on different threads, or several sessions at once, so never shared).
  thread_local std::vector<float> z;
  if (kernel.swiglu && rows > 0 && n > 0) {
    swiglu_out = static_cast<float*>(y);
    z.resize(static_cast<size_t>(rows * n));
    y = z.data();
  }

  // Values (bits, levels) are checked here, before anything is computed.
  otaro::LinearPlan plan;
  const int bits_value = (bits < otaro::kMinBits || bits > otaro::kMaxBits) ? 0 : static_cast<int>(bits);
  const otaro::Status status = otaro::plan_linear(
      rows > 0 ? static_cast<const float*>(d[kX]->data) : nullptr, rows, w, static_cast<const float*>(d[kBias]->data),
      bits_value, static_cast<float*>(y), n, otaro::Isa::kAuto, &plan, kernel.act_int8_max_bits);
  if (status == otaro::Status::kInvalidBits) {
    return op_error(api, kOpName, "bits must be in 3..8 (E5M3..E5M8), got %lld", static_cast<long long>(bits));
  }
  if (status != otaro::Status::kOk) return op_error(api, kOpName, "%s", otaro::status_message(status));
  if (rows == 0 || n == 0) return nullptr;

  const int64_t features = swiglu_out ? n / 2 : n;
  // with swiglu a task computes its features in both halves: twice the work per feature
  const Split split = swiglu_out ? split_features(rows, features, 2 * k) : split_features(rows, n, k);
  Job job{&plan, split, features, swiglu_out};
  const int64_t tasks = job.split.tasks;
  if (tasks == 1) {  // nothing to split: skip the thread-pool round trip
    run_features(job, 0, features);
    return nullptr;
  }
  return api->KernelContext_ParallelFor(context, run_task, static_cast<size_t>(tasks), 0, &job);
}

// ---- OrtCustomOp callbacks ----

OrtStatus* create_kernel(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info, void** kernel) {
  int64_t act_int8_max_bits = 0;  // an absent attribute means float activations
  if (OrtStatus* status = api->KernelInfoGetAttribute_int64(info, "act_int8_max_bits", &act_int8_max_bits)) {
    api->ReleaseStatus(status);
    act_int8_max_bits = 0;
  }
  if (act_int8_max_bits != 0 && (act_int8_max_bits < otaro::kMinBits || act_int8_max_bits > otaro::kMaxBits)) {
    return api->CreateStatus(ORT_INVALID_ARGUMENT,
                             "ai.otaro::SEFPLinear: attribute act_int8_max_bits must be 0 (off) or 3..8");
  }
  int64_t swiglu = 0;  // absent: a plain linear
  if (OrtStatus* status = api->KernelInfoGetAttribute_int64(info, "swiglu", &swiglu)) {
    api->ReleaseStatus(status);
    swiglu = 0;
  }
  if (swiglu != 0 && swiglu != 1) {
    return api->CreateStatus(ORT_INVALID_ARGUMENT, "ai.otaro::SEFPLinear: attribute swiglu must be 0 or 1");
  }
  Kernel* k = new (std::nothrow) Kernel{api, {}, static_cast<int>(act_int8_max_bits), swiglu == 1};
  if (k == nullptr) return api->CreateStatus(ORT_FAIL, "ai.otaro::SEFPLinear: out of memory");
  if (OrtStatus* status = k->constants.load(api, info)) {
    delete k;
    return status;
  }
  *kernel = k;
  return nullptr;
}

OrtStatus* kernel_compute(void* kernel, OrtKernelContext* context) {
  const Kernel& k = *static_cast<Kernel*>(kernel);
  const OrtApi* api = k.api;
  try {  // no C++ exception may cross into onnxruntime
    return compute(k, context);
  } catch (const std::exception& exc) {
    return op_error(api, kOpName, "internal error: %s", exc.what());
  } catch (...) {
    return op_error(api, kOpName, "internal error");
  }
}

void destroy_kernel(void* kernel) { delete static_cast<Kernel*>(kernel); }

}  // namespace

const OrtCustomOp* sefp_linear_custom_op() {
  static const CustomOp op =
      make_custom_op({kOpName, kNumInputs, kNumRequired, kInputTypes, destroy_kernel, create_kernel, kernel_compute});
  return &op;
}

}  // namespace otaro_ort
