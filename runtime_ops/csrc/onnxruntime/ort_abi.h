// The small subset of onnxruntime's C ABI that the SEFP custom-op library uses.
//
// Where onnxruntime's official C API header is found at build time (Debian 13+
// `libonnxruntime-dev`, or `$OTARO_ORT_INCLUDE_DIR`: see runtime_ops/build.py),
// the build defines OTARO_ORT_OFFICIAL_HEADERS and this file includes that header
// instead; the static_asserts at the end then check the slot numbers below
// against it. Otherwise (no PyPI wheel ships the header) this file declares, in
// our own words, exactly what a CPU custom op needs. It is an ABI contract:
//
// * OrtApi is a table of function pointers whose order never changes once an
//   API version has shipped (new entries are only appended). Entries we do not
//   call are opaque placeholders; the static_asserts below pin every entry we
//   do call to its index in the real table (indices taken from the upstream
//   `ort_api_1_to_N` table and its "Size of version N API" asserts).
// * OrtCustomOp grows with the API version; onnxruntime reads only the fields
//   that exist for `OrtCustomOp::version`, so the struct below stops at the
//   last field of kOtaroOrtApiVersion.
//
// Target: API version 17 (onnxruntime >= 1.17), the first with
// KernelContext_ParallelFor (run chunks on the session's intra-op threads).
// Version 16 added CreateKernelV2/KernelComputeV2, which return an OrtStatus
// instead of throwing, so kernel errors reach Python as clean exceptions.
#pragma once

#include <cstddef>
#include <cstdint>

constexpr uint32_t kOtaroOrtApiVersion = 17;

#if defined(OTARO_ORT_OFFICIAL_HEADERS)
#include <onnxruntime_c_api.h>
#else
extern "C" {

// Opaque runtime objects (only ever handled through pointers).
struct OrtStatus;
struct OrtValue;
struct OrtTensorTypeAndShapeInfo;
struct OrtSessionOptions;
struct OrtCustomOpDomain;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtShapeInferContext;
struct OrtAllocator;

enum OrtErrorCode {
  ORT_OK = 0,
  ORT_FAIL = 1,
  ORT_INVALID_ARGUMENT = 2,
  ORT_NO_SUCHFILE = 3,
  ORT_NO_MODEL = 4,
  ORT_ENGINE_ERROR = 5,
  ORT_RUNTIME_EXCEPTION = 6,
  ORT_INVALID_PROTOBUF = 7,
  ORT_MODEL_LOADED = 8,
  ORT_NOT_IMPLEMENTED = 9,
  ORT_INVALID_GRAPH = 10,
  ORT_EP_FAIL = 11,
};

// Same numbering as onnx TensorProto.DataType.
enum ONNXTensorElementDataType {
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED = 0,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 = 2,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 = 3,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16 = 4,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16 = 5,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 = 6,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 = 7,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING = 8,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL = 9,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 = 10,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE = 11,
};

enum OrtMemType {
  OrtMemTypeCPUInput = -2,
  OrtMemTypeCPUOutput = -1,
  OrtMemTypeDefault = 0,
};

enum OrtCustomOpInputOutputCharacteristic {
  INPUT_OUTPUT_REQUIRED = 0,
  INPUT_OUTPUT_OPTIONAL = 1,
  INPUT_OUTPUT_VARIADIC = 2,
};

struct OrtApi;

// Never versioned: two entries, forever.
struct OrtApiBase {
  // nullptr when this runtime does not provide `version` (it is older than that).
  const OrtApi* (*GetApi)(uint32_t version) noexcept;
  const char* (*GetVersionString)() noexcept;
};

// Placeholder for table entries we never call: only their slot matters.
typedef void (*OrtUnusedEntry)();

struct OrtApi {
  OrtStatus* (*CreateStatus)(OrtErrorCode code, const char* msg) noexcept;  // 0
  OrtErrorCode (*GetErrorCode)(const OrtStatus* status) noexcept;           // 1
  const char* (*GetErrorMessage)(const OrtStatus* status) noexcept;         // 2
  OrtUnusedEntry unused_3_to_25[23];                                        // env, session, session-option setters
  OrtStatus* (*CreateCustomOpDomain)(const char* domain, OrtCustomOpDomain** out) noexcept;            // 26
  OrtStatus* (*CustomOpDomain_Add)(OrtCustomOpDomain* domain, const struct OrtCustomOp* op) noexcept;  // 27
  OrtStatus* (*AddCustomOpDomain)(OrtSessionOptions* options, OrtCustomOpDomain* domain) noexcept;     // 28
  OrtUnusedEntry unused_29_to_47[19];  // library loading, session queries, run options
  OrtStatus* (*CreateTensorAsOrtValue)(OrtAllocator* allocator, const int64_t* shape, size_t shape_len,
                                       ONNXTensorElementDataType type, OrtValue** out) noexcept;  // 48
  OrtUnusedEntry unused_49_to_50[2];
  OrtStatus* (*GetTensorMutableData)(OrtValue* value, void** out) noexcept;  // 51
  OrtUnusedEntry unused_52_to_56[5];                                         // string tensors, type-info casts
  OrtStatus* (*CreateTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo** out) noexcept;                          // 57
  OrtStatus* (*SetTensorElementType)(OrtTensorTypeAndShapeInfo* info, ONNXTensorElementDataType type) noexcept;  // 58
  OrtStatus* (*SetDimensions)(OrtTensorTypeAndShapeInfo* info, const int64_t* dims, size_t count) noexcept;      // 59
  OrtStatus* (*GetTensorElementType)(const OrtTensorTypeAndShapeInfo* info,
                                     ONNXTensorElementDataType* out) noexcept;                               // 60
  OrtStatus* (*GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out) noexcept;             // 61
  OrtStatus* (*GetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t count) noexcept;  // 62
  OrtUnusedEntry unused_63[1];  // GetSymbolicDimensions
  OrtStatus* (*GetTensorShapeElementCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out) noexcept;  // 64
  OrtStatus* (*GetTensorTypeAndShape)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out) noexcept;   // 65
  OrtUnusedEntry unused_66_to_77[12];                                         // type info, memory info, allocator calls
  OrtStatus* (*GetAllocatorWithDefaultOptions)(OrtAllocator** out) noexcept;  // 78
  OrtUnusedEntry unused_79_to_85[7];  // map/sequence/opaque values, KernelInfoGetAttribute_float
  OrtStatus* (*KernelInfoGetAttribute_int64)(const OrtKernelInfo* info, const char* name,
                                             int64_t* out) noexcept;  // 86
  OrtUnusedEntry unused_87[1];                                        // KernelInfoGetAttribute_string
  OrtStatus* (*KernelContext_GetInputCount)(const OrtKernelContext* context, size_t* out) noexcept;  // 88
  OrtUnusedEntry unused_89[1];  // KernelContext_GetOutputCount
  OrtStatus* (*KernelContext_GetInput)(const OrtKernelContext* context, size_t index,
                                       const OrtValue** out) noexcept;  // 90
  OrtStatus* (*KernelContext_GetOutput)(OrtKernelContext* context, size_t index, const int64_t* dims, size_t dim_count,
                                        OrtValue** out) noexcept;  // 91
  OrtUnusedEntry unused_92[1];                                     // ReleaseEnv
  void (*ReleaseStatus)(OrtStatus* status) noexcept;               // 93
  OrtUnusedEntry unused_94_to_95[2];
  void (*ReleaseValue)(OrtValue* value) noexcept;  // 96
  OrtUnusedEntry unused_97_to_98[2];
  void (*ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* info) noexcept;  // 99
  OrtUnusedEntry unused_100[1];                                                     // ReleaseSessionOptions
  void (*ReleaseCustomOpDomain)(OrtCustomOpDomain* domain) noexcept;                // 101 (last entry of API version 1)
  OrtUnusedEntry unused_102_to_248[147];  // API versions 2..15 up to KernelInfoGetConstantInput_tensor
  OrtStatus* (*KernelInfoGetConstantInput_tensor)(const OrtKernelInfo* info, size_t index, int* is_constant,
                                                  const OrtValue** out) noexcept;  // 249 (API 15)
  OrtUnusedEntry unused_250_to_273[24];                                            // up to KernelContext_ParallelFor
  OrtStatus* (*KernelContext_ParallelFor)(const OrtKernelContext* context, void (*fn)(void* user_data, size_t index),
                                          size_t total, size_t num_batch, void* user_data) noexcept;  // 274 (API 17)
  // Later entries are not declared: we only ever index into the table, never copy it.
};

// The custom-op description onnxruntime reads, fields of API versions 1..17.
struct OrtCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);  // unused when V2 is set
  const char* (*GetName)(const OrtCustomOp* op);
  const char* (*GetExecutionProviderType)(const OrtCustomOp* op);  // nullptr: CPU
  ONNXTensorElementDataType (*GetInputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const OrtCustomOp* op);
  ONNXTensorElementDataType (*GetOutputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const OrtCustomOp* op);
  void (*KernelCompute)(void* kernel, OrtKernelContext* context);  // unused when V2 is set
  void (*KernelDestroy)(void* kernel);
  // version >= 8
  OrtCustomOpInputOutputCharacteristic (*GetInputCharacteristic)(const OrtCustomOp* op, size_t index);
  OrtCustomOpInputOutputCharacteristic (*GetOutputCharacteristic)(const OrtCustomOp* op, size_t index);
  // version >= 13
  OrtMemType (*GetInputMemoryType)(const OrtCustomOp* op, size_t index);
  // version >= 14 (read only for variadic inputs/outputs)
  int (*GetVariadicInputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicInputHomogeneity)(const OrtCustomOp* op);
  int (*GetVariadicOutputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicOutputHomogeneity)(const OrtCustomOp* op);
  // version >= 16
  OrtStatus* (*CreateKernelV2)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info, void** kernel);
  OrtStatus* (*KernelComputeV2)(void* kernel, OrtKernelContext* context);
  // version >= 17
  OrtStatus* (*InferOutputShapeFn)(const OrtCustomOp* op, OrtShapeInferContext* context);
  int (*GetStartVersion)(const OrtCustomOp* op);
  int (*GetEndVersion)(const OrtCustomOp* op);
};

}  // extern "C"
#endif  // OTARO_ORT_OFFICIAL_HEADERS

#define OTARO_ORT_SLOT(field) (offsetof(OrtApi, field) / sizeof(void*))
static_assert(sizeof(OrtApiBase) == 2 * sizeof(void*), "OrtApiBase has exactly two entries");
static_assert(OTARO_ORT_SLOT(CreateStatus) == 0 && OTARO_ORT_SLOT(GetErrorMessage) == 2, "OrtApi layout");
static_assert(OTARO_ORT_SLOT(CreateCustomOpDomain) == 26 && OTARO_ORT_SLOT(AddCustomOpDomain) == 28, "OrtApi layout");
static_assert(OTARO_ORT_SLOT(CreateTensorAsOrtValue) == 48 && OTARO_ORT_SLOT(GetTensorMutableData) == 51,
              "OrtApi layout");
static_assert(OTARO_ORT_SLOT(CreateTensorTypeAndShapeInfo) == 57 && OTARO_ORT_SLOT(GetDimensions) == 62,
              "OrtApi layout");
static_assert(OTARO_ORT_SLOT(GetTensorShapeElementCount) == 64 && OTARO_ORT_SLOT(GetTensorTypeAndShape) == 65,
              "OrtApi layout");
static_assert(OTARO_ORT_SLOT(GetAllocatorWithDefaultOptions) == 78, "OrtApi layout");
static_assert(OTARO_ORT_SLOT(KernelInfoGetAttribute_int64) == 86, "OrtApi layout");
static_assert(OTARO_ORT_SLOT(KernelContext_GetInputCount) == 88 && OTARO_ORT_SLOT(KernelContext_GetOutput) == 91,
              "OrtApi layout");
static_assert(OTARO_ORT_SLOT(ReleaseStatus) == 93 && OTARO_ORT_SLOT(ReleaseValue) == 96, "OrtApi layout");
static_assert(OTARO_ORT_SLOT(ReleaseTensorTypeAndShapeInfo) == 99, "OrtApi layout");
static_assert(OTARO_ORT_SLOT(ReleaseCustomOpDomain) == 101, "OrtApi: version 1 ends at slot 101");
static_assert(OTARO_ORT_SLOT(KernelInfoGetConstantInput_tensor) == 249, "OrtApi layout (API 15)");
static_assert(OTARO_ORT_SLOT(KernelContext_ParallelFor) == 274, "OrtApi: ParallelFor is slot 274 (API 17)");
static_assert(offsetof(OrtCustomOp, KernelComputeV2) == offsetof(OrtCustomOp, CreateKernel) + 17 * sizeof(void*),
              "OrtCustomOp layout");
#undef OTARO_ORT_SLOT
