// Helpers shared by the custom ops of the onnxruntime library (hidden; header-only).
#pragma once

#include <cstdarg>
#include <cstdio>
#include <memory>
#include <vector>

#include "core/sefp_kernel.h"
#include "onnxruntime/ort_abi.h"
#include "onnxruntime/sefp_ops.h"

namespace otaro_ort {

#define OTARO_RETURN_IF_ERROR(expr) \
  do {                              \
    OrtStatus* status_ = (expr);    \
    if (status_ != nullptr) {       \
      return status_;               \
    }                               \
  } while (0)

// An INVALID_ARGUMENT status "ai.otaro::<op>: <message>".
inline OrtStatus* op_error(const OrtApi* api, const char* op, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
inline OrtStatus* op_error(const OrtApi* api, const char* op, const char* fmt, ...) {
  char msg[768];
  const int prefix = std::snprintf(msg, sizeof(msg), "%s::%s: ", kDomain, op);
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(msg + prefix, sizeof(msg) - prefix, fmt, args);
  va_end(args);
  return api->CreateStatus(ORT_INVALID_ARGUMENT, msg);
}

inline otaro::DType core_dtype(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return otaro::DType::kFloat32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return otaro::DType::kUInt8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return otaro::DType::kInt8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return otaro::DType::kInt64;
    default: return otaro::DType::kOther;
  }
}

// One input as the core's shape checks see it; dims owns the shape that info points to.
struct InputDesc {
  std::vector<int64_t> dims;
  otaro::TensorInfo info;
};

// Fills *out for `value` (nullptr: an omitted optional input, info.present = false).
inline OrtStatus* describe(const OrtApi* api, const OrtValue* value, InputDesc* out) {
  out->info = otaro::TensorInfo{};
  if (value == nullptr) return nullptr;
  OrtTensorTypeAndShapeInfo* info = nullptr;
  OTARO_RETURN_IF_ERROR(api->GetTensorTypeAndShape(value, &info));
  // decltype: the official header's release functions are not noexcept, ort_abi.h's are
  std::unique_ptr<OrtTensorTypeAndShapeInfo, decltype(OrtApi::ReleaseTensorTypeAndShapeInfo)> guard(
      info, api->ReleaseTensorTypeAndShapeInfo);
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  OTARO_RETURN_IF_ERROR(api->GetTensorElementType(info, &type));
  size_t rank = 0;
  OTARO_RETURN_IF_ERROR(api->GetDimensionsCount(info, &rank));
  out->dims.assign(rank, 0);
  if (rank) OTARO_RETURN_IF_ERROR(api->GetDimensions(info, out->dims.data(), rank));
  out->info.present = true;
  out->info.dtype = core_dtype(type);
  out->info.rank = static_cast<int64_t>(rank);
  out->info.dims = out->dims.data();
  return nullptr;
}

template <typename T>
OrtStatus* data_of(const OrtApi* api, const OrtValue* value, const T** out) {
  *out = nullptr;
  if (value == nullptr) return nullptr;
  void* data = nullptr;
  // ORT has no const accessor; inputs are only read.
  OTARO_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(value), &data));
  *out = static_cast<const T*>(data);
  return nullptr;
}

// Reads the inputs of a kernel call into `inputs` (count in [required, max]); nullptr marks an omitted optional.
inline OrtStatus* get_inputs(const OrtApi* api, OrtKernelContext* context, const char* op, size_t required, size_t max,
                             const char* const* names, const OrtValue** inputs) {
  size_t count = 0;
  OTARO_RETURN_IF_ERROR(api->KernelContext_GetInputCount(context, &count));
  if (count < required || count > max) {
    return op_error(api, op, "expects %zu to %zu inputs, got %zu", required, max, count);
  }
  for (size_t i = 0; i < max; ++i) inputs[i] = nullptr;
  for (size_t i = 0; i < count; ++i) {
    OTARO_RETURN_IF_ERROR(api->KernelContext_GetInput(context, i, &inputs[i]));
    if (inputs[i] == nullptr && i < required) return op_error(api, op, "input %s is missing", names[i]);
  }
  return nullptr;
}

}  // namespace otaro_ort
