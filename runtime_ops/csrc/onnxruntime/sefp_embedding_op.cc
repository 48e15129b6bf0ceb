// Kernel of `ai.otaro::SEFPEmbedding`: rows `ids` of a SEFP weight at precision `bits`.
// The core checks the inputs (otaro::check_embedding_args) and the id range, then
// decodes one row per id (exact values), on the calling thread: a decode step
// gathers a few rows, far less work than one matmul.
#include <exception>
#include <new>
#include <vector>

#include "core/sefp_kernel.h"
#include "onnxruntime/ort_util.h"
#include "onnxruntime/sefp_ops.h"

namespace otaro_ort {
namespace {

constexpr const char* kOpName = "SEFPEmbedding";

enum Input : size_t { kIds = 0, kP0, kP1, kP2, kP3, kE, kBits, kLevels, kNumInputs };
constexpr size_t kNumRequired = kLevels;
constexpr const char* kInputNames[kNumInputs] = {"ids", "P0", "P1", "P2", "P3", "E", "bits", "L"};
constexpr ONNXTensorElementDataType kInputTypes[kNumInputs] = {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
};

struct Kernel {
  const OrtApi* api;
  int64_t in_features;
  ConstantInputs<kNumInputs> constants;
};

OrtStatus* compute(const Kernel& kernel, OrtKernelContext* context) {
  const OrtApi* api = kernel.api;
  const OrtValue* inputs[kNumInputs];
  OTARO_RETURN_IF_ERROR(get_inputs(api, context, kOpName, kNumRequired, kNumInputs, kInputNames, inputs));
  InputDesc scratch[kNumInputs];
  const InputDesc* d[kNumInputs];
  OTARO_RETURN_IF_ERROR(kernel.constants.get_all(api, inputs, scratch, d));
  const otaro::EmbeddingArgsInfo info{d[kIds]->info,    {d[kP0]->info, d[kP1]->info, d[kP2]->info, d[kP3]->info},
                                      d[kE]->info,      d[kBits]->info,
                                      d[kLevels]->info, kernel.in_features};
  char msg[512];
  if (otaro::check_embedding_args(info, msg, sizeof msg) != otaro::Status::kOk) {
    return op_error(api, kOpName, "%s", msg);
  }

  const int64_t n = d[kE]->dim(0), g = d[kE]->dim(1), k = kernel.in_features;
  std::vector<int64_t> out_dims(d[kIds]->dims(), d[kIds]->dims() + d[kIds]->info.rank);
  int64_t count = 1;
  for (int64_t dim : out_dims) count *= dim;
  out_dims.push_back(k);
  const int64_t bits = *static_cast<const int64_t*>(d[kBits]->data);
  const int64_t* ids = static_cast<const int64_t*>(d[kIds]->data);
  const otaro::SEFPWeightView w{static_cast<const uint8_t*>(d[kP0]->data),
                                static_cast<const uint8_t*>(d[kP1]->data),
                                static_cast<const uint8_t*>(d[kP2]->data),
                                static_cast<const uint8_t*>(d[kP3]->data),
                                static_cast<const int8_t*>(d[kE]->data),
                                n,
                                k,
                                g,
                                static_cast<const float*>(d[kLevels]->data)};

  OrtValue* output = nullptr;
  OTARO_RETURN_IF_ERROR(api->KernelContext_GetOutput(context, 0, out_dims.data(), out_dims.size(), &output));
  void* y = nullptr;
  if (count > 0 && k > 0) OTARO_RETURN_IF_ERROR(api->GetTensorMutableData(output, &y));

  const int bits_value = (bits < otaro::kMinBits || bits > otaro::kMaxBits) ? 0 : static_cast<int>(bits);
  int64_t bad = -1;
  const otaro::Status status = otaro::sefp_embedding(count > 0 ? ids : nullptr, count, w, bits_value,
                                                     static_cast<float*>(y), 1, otaro::Isa::kAuto, &bad);
  switch (status) {
    case otaro::Status::kOk: return nullptr;
    case otaro::Status::kInvalidBits:
      return op_error(api, kOpName, "bits must be in 3..8 (E5M3..E5M8), got %lld", static_cast<long long>(bits));
    case otaro::Status::kInvalidIndex:
      return op_error(api, kOpName, "ids[%lld] = %lld is outside [0, %lld) (the table has %lld rows)",
                      static_cast<long long>(bad), static_cast<long long>(ids[bad]), static_cast<long long>(n),
                      static_cast<long long>(n));
    default: return op_error(api, kOpName, "%s", otaro::status_message(status));
  }
}

// ---- OrtCustomOp callbacks ----

OrtStatus* create_kernel(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info, void** kernel) {
  int64_t in_features = 0;
  if (OrtStatus* status = api->KernelInfoGetAttribute_int64(info, "in_features", &in_features)) {
    api->ReleaseStatus(status);
    return api->CreateStatus(ORT_INVALID_ARGUMENT,
                             "ai.otaro::SEFPEmbedding: the int attribute in_features (row length K) is required");
  }
  if (in_features < 0) {
    return api->CreateStatus(ORT_INVALID_ARGUMENT, "ai.otaro::SEFPEmbedding: attribute in_features must be >= 0");
  }
  Kernel* k = new (std::nothrow) Kernel{api, in_features, {}};
  if (k == nullptr) return api->CreateStatus(ORT_FAIL, "ai.otaro::SEFPEmbedding: out of memory");
  if (OrtStatus* status = k->constants.load(api, info)) {
    delete k;
    return status;
  }
  *kernel = k;
  return nullptr;
}

OrtStatus* kernel_compute(void* kernel, OrtKernelContext* context) {
  const Kernel& k = *static_cast<Kernel*>(kernel);
  try {  // no C++ exception may cross into onnxruntime
    return compute(k, context);
  } catch (const std::exception& exc) {
    return op_error(k.api, kOpName, "internal error: %s", exc.what());
  } catch (...) {
    return op_error(k.api, kOpName, "internal error");
  }
}

void destroy_kernel(void* kernel) { delete static_cast<Kernel*>(kernel); }

}  // namespace

const OrtCustomOp* sefp_embedding_custom_op() {
  static const CustomOp op =
      make_custom_op({kOpName, kNumInputs, kNumRequired, kInputTypes, destroy_kernel, create_kernel, kernel_compute});
  return &op;
}

}  // namespace otaro_ort
