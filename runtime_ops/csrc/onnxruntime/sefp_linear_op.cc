// Kernel of `ai.otaro::SEFPLinear`: validates the inputs through the ORT C ABI,
// then runs the shared C++ core (otaro::sefp_linear_range) on the session's
// intra-op threads, one task per block of output features.
#include "onnxruntime/sefp_linear_op.h"

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "core/sefp_kernel.h"

namespace otaro_ort {
namespace {

// Input order mirrors torch.ops.otaro.sefp_linear: X, P0, P1, P2, P3, E, bits[, B].
enum Input : size_t { kX = 0, kP0, kP1, kP2, kP3, kE, kBits, kBias, kNumInputs };
constexpr size_t kNumRequired = kBias;
constexpr const char* kInputNames[kNumInputs] = {"X", "P0", "P1", "P2", "P3", "E", "bits", "B"};
constexpr ONNXTensorElementDataType kInputTypes[kNumInputs] = {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
};
constexpr int64_t kGroupSize = 64;
// Bytes per group of 64 weights in P0..P3 (otaro_export/packing.py).
constexpr int64_t kPlaneBytesPerGroup[4] = {32, 16, 16, 8};
constexpr int kMinBits = 3, kMaxBits = 8;

#define OTARO_RETURN_IF_ERROR(expr) \
  do {                              \
    OrtStatus* status_ = (expr);    \
    if (status_ != nullptr) {       \
      return status_;               \
    }                               \
  } while (0)

OrtStatus* error(const OrtApi* api, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
OrtStatus* error(const OrtApi* api, const char* fmt, ...) {
  char msg[512];
  int prefix = std::snprintf(msg, sizeof(msg), "%s::%s: ", kDomain, kOpName);
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(msg + prefix, sizeof(msg) - prefix, fmt, args);
  va_end(args);
  return api->CreateStatus(ORT_INVALID_ARGUMENT, msg);
}

const char* type_name(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    default: return "another type";
  }
}

// "[2, 3, 100]" for error messages.
std::string shape_str(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(dims[i]);
  }
  return s + "]";
}

struct TensorDesc {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> dims;
};

OrtStatus* describe(const OrtApi* api, const OrtValue* value, TensorDesc* out) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  OTARO_RETURN_IF_ERROR(api->GetTensorTypeAndShape(value, &info));
  // decltype: the official header's release functions are not noexcept, ort_abi.h's are
  std::unique_ptr<OrtTensorTypeAndShapeInfo, decltype(OrtApi::ReleaseTensorTypeAndShapeInfo)> guard(
      info, api->ReleaseTensorTypeAndShapeInfo);
  OTARO_RETURN_IF_ERROR(api->GetTensorElementType(info, &out->type));
  size_t rank = 0;
  OTARO_RETURN_IF_ERROR(api->GetDimensionsCount(info, &rank));
  out->dims.assign(rank, 0);
  return rank ? api->GetDimensions(info, out->dims.data(), rank) : nullptr;
}

template <typename T>
OrtStatus* data_of(const OrtApi* api, const OrtValue* value, const T** out) {
  void* data = nullptr;
  // ORT has no const accessor; inputs are only read.
  OTARO_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(value), &data));
  *out = static_cast<const T*>(data);
  return nullptr;
}

// Everything the core needs, checked.
struct Problem {
  const float* x = nullptr;
  int64_t rows = 0;
  otaro::SEFPWeightView weight{};
  const float* bias = nullptr;
  int bits = 0;
  std::vector<int64_t> out_dims;
};

OrtStatus* check_and_bind(const OrtApi* api, const OrtValue* const* inputs, Problem* p) {
  TensorDesc t[kNumInputs];
  for (size_t i = 0; i < kNumInputs; ++i) {
    if (inputs[i] == nullptr) continue;
    OTARO_RETURN_IF_ERROR(describe(api, inputs[i], &t[i]));
    if (t[i].type != kInputTypes[i]) {
      return error(api, "input %s must be %s, got %s", kInputNames[i], type_name(kInputTypes[i]), type_name(t[i].type));
    }
  }

  const TensorDesc& e = t[kE];
  if (e.dims.size() != 2) {
    return error(api, "E (exponents) must be int8 [N, G], got shape %s", shape_str(e.dims).c_str());
  }
  const int64_t n = e.dims[0], g = e.dims[1];
  for (int plane = 0; plane < 4; ++plane) {
    const TensorDesc& tp = t[kP0 + plane];
    const std::vector<int64_t> want = {n, g * kPlaneBytesPerGroup[plane]};
    if (tp.dims != want) {
      return error(api, "plane P%d must be uint8 %s for E of shape [%lld, %lld], got %s", plane,
                   shape_str(want).c_str(), static_cast<long long>(n), static_cast<long long>(g),
                   shape_str(tp.dims).c_str());
    }
  }

  const TensorDesc& x = t[kX];
  if (x.dims.empty()) {
    return error(api, "X must have rank >= 1 ([..., K]), got a scalar");
  }
  const int64_t k = x.dims.back();
  if (g < 1 || !(g * kGroupSize - kGroupSize < k && k <= g * kGroupSize)) {
    return error(api, "X has %lld input features but the weight has %lld groups of %lld (accepts %lld..%lld)",
                 static_cast<long long>(k), static_cast<long long>(g), static_cast<long long>(kGroupSize),
                 static_cast<long long>(g * kGroupSize - kGroupSize + 1), static_cast<long long>(g * kGroupSize));
  }

  if (!t[kBits].dims.empty()) {
    return error(api, "bits must be a 0-dim int64 tensor, got shape %s", shape_str(t[kBits].dims).c_str());
  }
  const int64_t* bits = nullptr;
  OTARO_RETURN_IF_ERROR(data_of(api, inputs[kBits], &bits));
  if (*bits < kMinBits || *bits > kMaxBits) {
    return error(api, "bits must be one of 3..8 (E5M3..E5M8), got %lld", static_cast<long long>(*bits));
  }

  if (inputs[kBias] != nullptr && t[kBias].dims != std::vector<int64_t>{n}) {
    return error(api, "bias B must be float32 [%lld], got %s", static_cast<long long>(n),
                 shape_str(t[kBias].dims).c_str());
  }

  p->rows = 1;
  for (size_t i = 0; i + 1 < x.dims.size(); ++i) p->rows *= x.dims[i];
  p->out_dims.assign(x.dims.begin(), x.dims.end() - 1);
  p->out_dims.push_back(n);
  p->bits = static_cast<int>(*bits);
  p->weight.out_features = n;
  p->weight.in_features = k;
  p->weight.num_groups = g;
  if (p->rows == 0 || n == 0) return nullptr;  // empty output: nothing to read
  OTARO_RETURN_IF_ERROR(data_of(api, inputs[kX], &p->x));
  OTARO_RETURN_IF_ERROR(data_of(api, inputs[kP0], &p->weight.p0));
  OTARO_RETURN_IF_ERROR(data_of(api, inputs[kP1], &p->weight.p1));
  OTARO_RETURN_IF_ERROR(data_of(api, inputs[kP2], &p->weight.p2));
  OTARO_RETURN_IF_ERROR(data_of(api, inputs[kP3], &p->weight.p3));
  OTARO_RETURN_IF_ERROR(data_of(api, inputs[kE], &p->weight.exponents));
  if (inputs[kBias] != nullptr) OTARO_RETURN_IF_ERROR(data_of(api, inputs[kBias], &p->bias));
  return nullptr;
}

// Output features per task: enough work per task to amortize dispatch, at most
// kMaxTasks tasks (load balance on up to a few dozen threads), a multiple of
// 16 so that SIMD row blocks of the core stay whole.
int64_t features_per_task(int64_t rows, int64_t n, int64_t k) {
  constexpr int64_t kAlign = 16, kMaxTasks = 64, kMinMacsPerTask = int64_t{1} << 16;
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  int64_t chunk = std::max(ceil_div(n, kMaxTasks), ceil_div(kMinMacsPerTask, std::max<int64_t>(1, rows * k)));
  chunk = ceil_div(chunk, kAlign) * kAlign;
  return std::min(chunk, n);
}

// One ParallelFor job: task i computes output features [i*chunk, (i+1)*chunk) of every row.
struct Job {
  const Problem* p;
  float* y;  // [rows, N]
  int64_t chunk;
  std::atomic<int> failure{0};  // first non-ok otaro::Status, or -1 for an exception
};

void run_task(void* data, size_t index) {
  Job& job = *static_cast<Job*>(data);
  const Problem& p = *job.p;
  const int64_t n = p.weight.out_features;
  const int64_t begin = static_cast<int64_t>(index) * job.chunk;
  const int64_t end = std::min(n, begin + job.chunk);
  otaro::Status status;
  try {  // the core never throws; a C++ exception must not escape into ORT's threads regardless
    // Single-threaded slice: the parallelism is ORT's, the core adds none of its own.
    status = otaro::sefp_linear_range(p.x, p.rows, p.weight, p.bias, p.bits, job.y, n, begin, end);
  } catch (...) {
    int none = 0;
    job.failure.compare_exchange_strong(none, -1);
    return;
  }
  if (status != otaro::Status::kOk) {
    int none = 0;
    job.failure.compare_exchange_strong(none, static_cast<int>(status));
  }
}

struct Kernel {
  const OrtApi* api;
};

OrtStatus* compute(const OrtApi* api, OrtKernelContext* context) {
  size_t num_inputs = 0;
  OTARO_RETURN_IF_ERROR(api->KernelContext_GetInputCount(context, &num_inputs));
  if (num_inputs < kNumRequired || num_inputs > kNumInputs) {
    return error(api, "expects 7 or 8 inputs (X, P0, P1, P2, P3, E, bits[, B]), got %zu", num_inputs);
  }
  const OrtValue* inputs[kNumInputs] = {};
  for (size_t i = 0; i < num_inputs; ++i) {
    OTARO_RETURN_IF_ERROR(api->KernelContext_GetInput(context, i, &inputs[i]));  // nullptr: omitted optional
    if (inputs[i] == nullptr && i < kNumRequired) return error(api, "input %s is missing", kInputNames[i]);
  }

  Problem p;
  OTARO_RETURN_IF_ERROR(check_and_bind(api, inputs, &p));
  OrtValue* output = nullptr;
  OTARO_RETURN_IF_ERROR(api->KernelContext_GetOutput(context, 0, p.out_dims.data(), p.out_dims.size(), &output));
  if (p.rows == 0 || p.weight.out_features == 0) return nullptr;
  void* y = nullptr;
  OTARO_RETURN_IF_ERROR(api->GetTensorMutableData(output, &y));

  const int64_t n = p.weight.out_features;
  Job job;
  job.p = &p;
  job.y = static_cast<float*>(y);
  job.chunk = features_per_task(p.rows, n, p.weight.in_features);
  const int64_t tasks = (n + job.chunk - 1) / job.chunk;
  OTARO_RETURN_IF_ERROR(api->KernelContext_ParallelFor(context, run_task, static_cast<size_t>(tasks), 0, &job));

  const int failure = job.failure.load();
  if (failure == -1) return api->CreateStatus(ORT_FAIL, "ai.otaro::SEFPLinear: the kernel core threw an exception");
  if (failure != 0) {
    return error(api, "kernel core rejected the inputs: %s",
                 otaro::status_message(static_cast<otaro::Status>(failure)));
  }
  return nullptr;
}

// ---- OrtCustomOp callbacks ----

OrtStatus* create_kernel(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo*, void** kernel) {
  *kernel = new (std::nothrow) Kernel{api};
  return *kernel ? nullptr : api->CreateStatus(ORT_FAIL, "ai.otaro::SEFPLinear: out of memory");
}

OrtStatus* kernel_compute(void* kernel, OrtKernelContext* context) {
  const OrtApi* api = static_cast<Kernel*>(kernel)->api;
  try {  // no C++ exception may cross into onnxruntime
    return compute(api, context);
  } catch (const std::exception& exc) {
    return error(api, "internal error: %s", exc.what());
  } catch (...) {
    return error(api, "internal error");
  }
}

void destroy_kernel(void* kernel) { delete static_cast<Kernel*>(kernel); }

const char* get_name(const OrtCustomOp*) { return kOpName; }
const char* get_execution_provider(const OrtCustomOp*) { return nullptr; }  // CPU
size_t input_count(const OrtCustomOp*) { return kNumInputs; }
ONNXTensorElementDataType input_type(const OrtCustomOp*, size_t index) {
  return index < kNumInputs ? kInputTypes[index] : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}
OrtCustomOpInputOutputCharacteristic input_characteristic(const OrtCustomOp*, size_t index) {
  return index == kBias ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}
OrtMemType input_memory_type(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
size_t output_count(const OrtCustomOp*) { return 1; }
ONNXTensorElementDataType output_type(const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
OrtCustomOpInputOutputCharacteristic output_characteristic(const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; }

OrtCustomOp make_op() {
  OrtCustomOp op{};  // unset callbacks stay nullptr: ORT skips them for this version
  op.version = kOtaroOrtApiVersion;
  op.GetName = get_name;
  op.GetExecutionProviderType = get_execution_provider;
  op.GetInputType = input_type;
  op.GetInputTypeCount = input_count;
  op.GetOutputType = output_type;
  op.GetOutputTypeCount = output_count;
  op.KernelDestroy = destroy_kernel;
  op.GetInputCharacteristic = input_characteristic;
  op.GetOutputCharacteristic = output_characteristic;
  op.GetInputMemoryType = input_memory_type;
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = kernel_compute;
  return op;
}

}  // namespace

const OrtCustomOp* sefp_linear_custom_op() {
  static const OrtCustomOp op = make_op();
  return &op;
}

}  // namespace otaro_ort
