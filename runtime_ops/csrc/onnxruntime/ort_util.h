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

// One input as the core's shape checks see it, with its data pointer; info.dims points into
// small (or large, past rank 8: no heap allocation in the common case).
struct InputDesc {
  int64_t small[8];
  std::vector<int64_t> large;
  otaro::TensorInfo info;
  const void* data = nullptr;

  const int64_t* dims() const { return info.dims; }
  int64_t dim(int64_t i) const { return info.dims[i]; }
  int64_t last() const { return info.dims[info.rank - 1]; }
};

// Fills *out for `value` (nullptr: an omitted optional input, info.present = false).
inline OrtStatus* describe(const OrtApi* api, const OrtValue* value, InputDesc* out) {
  out->info = otaro::TensorInfo{};
  out->data = nullptr;
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
  int64_t* dims = out->small;
  if (rank > 8) {
    out->large.assign(rank, 0);
    dims = out->large.data();
  }
  if (rank) OTARO_RETURN_IF_ERROR(api->GetDimensions(info, dims, rank));
  void* data = nullptr;
  // ORT has no const accessor; inputs are only read.
  OTARO_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(value), &data));
  out->data = data;
  out->info.present = true;
  out->info.dtype = core_dtype(type);
  out->info.rank = static_cast<int64_t>(rank);
  out->info.dims = dims;
  return nullptr;
}

// The inputs of a node that are constant initializers, described once when the kernel is
// created: a decode step then describes only the activations, ids and bits (the planes never
// change during a session, and describing each of them again costs time on every call).
template <size_t N>
struct ConstantInputs {
  bool constant[N] = {};
  InputDesc desc[N];

  OrtStatus* load(const OrtApi* api, const OrtKernelInfo* info) {
    for (size_t i = 0; i < N; ++i) {
      int is_constant = 0;
      const OrtValue* value = nullptr;
      if (OrtStatus* status = api->KernelInfoGetConstantInput_tensor(info, i, &is_constant, &value)) {
        api->ReleaseStatus(status);  // e.g. an index past the node's inputs: not a constant
        continue;
      }
      if (is_constant && value != nullptr) {
        OTARO_RETURN_IF_ERROR(describe(api, value, &desc[i]));
        constant[i] = true;
      }
    }
    return nullptr;
  }

  // *out = the description of input i: the cached one, or `value` described into `scratch` (nullptr, an
  // omitted optional input, is described as absent even if the node lists it as a constant).
  OrtStatus* get(const OrtApi* api, size_t i, const OrtValue* value, InputDesc* scratch, const InputDesc** out) const {
    if (constant[i] && value != nullptr) {
      *out = &desc[i];
      return nullptr;
    }
    OTARO_RETURN_IF_ERROR(describe(api, value, scratch));
    *out = scratch;
    return nullptr;
  }

  // d[i] = the description of every input of one call (get_inputs' array), scratch holding the non-constant ones.
  OrtStatus* get_all(const OrtApi* api, const OrtValue* const (&inputs)[N], InputDesc (&scratch)[N],
                     const InputDesc* (&d)[N]) const {
    for (size_t i = 0; i < N; ++i) OTARO_RETURN_IF_ERROR(get(api, i, inputs[i], &scratch[i], &d[i]));
    return nullptr;
  }
};

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

// What distinguishes one custom op of the library from another; the rest of its OrtCustomOp (CPU, one
// float output, inputs from num_required on optional, V2 kernel callbacks) is the same for all.
struct OpSpec {
  const char* name;
  size_t num_inputs;
  size_t num_required;
  const ONNXTensorElementDataType* input_types;
  void (*destroy_kernel)(void*);
  decltype(OrtCustomOp::CreateKernelV2) create_kernel;
  decltype(OrtCustomOp::KernelComputeV2) compute;
};

// The OrtCustomOp ORT registers, with its spec beside it: ORT passes the registered pointer back to
// every callback, so the callbacks read the spec from it.
struct CustomOp : OrtCustomOp {
  OpSpec spec;
};

inline const OpSpec& spec_of(const OrtCustomOp* op) { return static_cast<const CustomOp*>(op)->spec; }

inline CustomOp make_custom_op(const OpSpec& spec) {
  CustomOp op{};  // unset callbacks stay nullptr: ORT skips them for this version
  op.spec = spec;
  op.version = kOtaroOrtApiVersion;
  op.GetName = [](const OrtCustomOp* self) -> const char* { return spec_of(self).name; };
  op.GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return nullptr; };  // CPU
  op.GetInputTypeCount = [](const OrtCustomOp* self) -> size_t { return spec_of(self).num_inputs; };
  op.GetInputType = [](const OrtCustomOp* self, size_t index) -> ONNXTensorElementDataType {
    const OpSpec& s = spec_of(self);
    return index < s.num_inputs ? s.input_types[index] : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  };
  op.GetInputCharacteristic = [](const OrtCustomOp* self, size_t index) -> OrtCustomOpInputOutputCharacteristic {
    return index >= spec_of(self).num_required ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  };
  op.GetInputMemoryType = [](const OrtCustomOp*, size_t) -> OrtMemType { return OrtMemTypeDefault; };
  op.GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
  op.GetOutputType = [](const OrtCustomOp*, size_t) -> ONNXTensorElementDataType {
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  };
  op.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) -> OrtCustomOpInputOutputCharacteristic {
    return INPUT_OUTPUT_REQUIRED;
  };
  op.KernelDestroy = spec.destroy_kernel;
  op.CreateKernelV2 = spec.create_kernel;
  op.KernelComputeV2 = spec.compute;
  return op;
}

}  // namespace otaro_ort
