// Entry points of the onnxruntime custom-op library:
//
// * RegisterCustomOps: what SessionOptions.register_custom_ops_library() calls.
// * otaro_ort_abi_selfcheck: exercises the OrtApi entries declared in ort_abi.h
//   against a real runtime, so a layout mistake shows up as a clear test failure.
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <utility>
#include <vector>

#include "onnxruntime/ort_abi.h"
#include "onnxruntime/sefp_ops.h"

#define OTARO_ORT_EXPORT extern "C" __attribute__((visibility("default")))

namespace otaro_ort {
namespace {

// One domain per onnxruntime instance (keyed by its API table), created on first
// registration and shared by every SessionOptions after it. ORT requires the domain
// to outlive all sessions that use it, and sessions may live until process exit,
// so it is deliberately never released (a few bytes, once per process).
OrtStatus* shared_domain(const OrtApi* api, OrtCustomOpDomain** out) {
  static std::mutex mutex;
  static std::vector<std::pair<const OrtApi*, OrtCustomOpDomain*>> domains;
  std::lock_guard<std::mutex> lock(mutex);
  for (const auto& entry : domains) {
    if (entry.first == api) {
      *out = entry.second;
      return nullptr;
    }
  }
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* status = api->CreateCustomOpDomain(kDomain, &domain)) return status;
  for (const OrtCustomOp* op : {sefp_linear_custom_op(), sefp_embedding_custom_op()}) {
    if (OrtStatus* status = api->CustomOpDomain_Add(domain, op)) {
      api->ReleaseCustomOpDomain(domain);
      return status;
    }
  }
  domains.emplace_back(api, domain);
  *out = domain;
  return nullptr;
}

OrtStatus* version_error(const OrtApiBase* base) {
  // CreateStatus is entry 0 of every API version, so version 1 can always report the problem.
  const OrtApi* v1 = base->GetApi(1);
  if (v1 == nullptr) return nullptr;  // not an onnxruntime API table at all: nothing can be reported
  const char* version = base->GetVersionString ? base->GetVersionString() : "unknown";
  char msg[400];
  std::snprintf(msg, sizeof(msg),
                "the otaro SEFP custom-op library needs onnxruntime >= 1.17 (C API version %u), but this "
                "onnxruntime is %s and does not provide it; upgrade with `pip install -U \"onnxruntime>=1.20\"`",
                kOtaroOrtApiVersion, version);
  return v1->CreateStatus(ORT_FAIL, msg);
}

bool fail(char* msg, size_t msg_len, const char* what) {
  if (msg && msg_len) std::snprintf(msg, msg_len, "%s", what);
  return false;
}

bool check_status_entries(const OrtApi* api, char* msg, size_t len) {
  OrtStatus* status = api->CreateStatus(ORT_INVALID_ARGUMENT, "otaro-probe");
  if (status == nullptr) return fail(msg, len, "CreateStatus returned nullptr");
  const bool ok = api->GetErrorCode(status) == ORT_INVALID_ARGUMENT &&
                  std::strcmp(api->GetErrorMessage(status), "otaro-probe") == 0;
  api->ReleaseStatus(status);
  return ok || fail(msg, len, "GetErrorCode/GetErrorMessage disagree with CreateStatus");
}

bool check_shape_entries(const OrtApi* api, char* msg, size_t len) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  if (api->CreateTensorTypeAndShapeInfo(&info)) return fail(msg, len, "CreateTensorTypeAndShapeInfo failed");
  const int64_t dims[2] = {3, 5};
  int64_t got[2] = {0, 0};
  size_t rank = 0, count = 0;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  const bool ok = !api->SetTensorElementType(info, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8) &&
                  !api->SetDimensions(info, dims, 2) && !api->GetTensorElementType(info, &type) &&
                  !api->GetDimensionsCount(info, &rank) && rank == 2 && !api->GetDimensions(info, got, 2) &&
                  !api->GetTensorShapeElementCount(info, &count);
  api->ReleaseTensorTypeAndShapeInfo(info);
  if (!ok || type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 || got[0] != 3 || got[1] != 5 || count != 15) {
    return fail(msg, len, "tensor type/shape entries (57..64, 99) returned unexpected values");
  }
  return true;
}

bool check_value_entries(const OrtApi* api, char* msg, size_t len) {
  OrtAllocator* allocator = nullptr;
  if (api->GetAllocatorWithDefaultOptions(&allocator)) return fail(msg, len, "GetAllocatorWithDefaultOptions failed");
  const int64_t dims[2] = {2, 4};
  OrtValue* value = nullptr;
  if (api->CreateTensorAsOrtValue(allocator, dims, 2, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &value)) {
    return fail(msg, len, "CreateTensorAsOrtValue failed");
  }
  void* data = nullptr;
  OrtTensorTypeAndShapeInfo* info = nullptr;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  size_t count = 0;
  bool ok = !api->GetTensorMutableData(value, &data) && data != nullptr && !api->GetTensorTypeAndShape(value, &info);
  if (ok) {
    static_cast<float*>(data)[7] = 1.0f;  // the buffer really holds 2 x 4 floats
    ok = !api->GetTensorElementType(info, &type) && !api->GetTensorShapeElementCount(info, &count);
    api->ReleaseTensorTypeAndShapeInfo(info);
  }
  api->ReleaseValue(value);
  if (!ok || type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || count != 8) {
    return fail(msg, len, "OrtValue entries (48, 51, 65, 96) returned unexpected values");
  }
  return true;
}

bool check_domain_entries(const OrtApi* api, char* msg, size_t len) {
  OrtCustomOpDomain* domain = nullptr;
  if (api->CreateCustomOpDomain("ai.otaro.selfcheck", &domain)) return fail(msg, len, "CreateCustomOpDomain failed");
  OrtStatus* status = api->CustomOpDomain_Add(domain, sefp_linear_custom_op());
  api->ReleaseCustomOpDomain(domain);
  if (status) {
    api->ReleaseStatus(status);
    return fail(msg, len, "CustomOpDomain_Add failed");
  }
  return true;
}

}  // namespace
}  // namespace otaro_ort

OTARO_ORT_EXPORT OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  if (base == nullptr) return nullptr;  // onnxruntime always passes its API base
  const OrtApi* api = base->GetApi(kOtaroOrtApiVersion);
  if (api == nullptr) return otaro_ort::version_error(base);
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* status = otaro_ort::shared_domain(api, &domain)) return status;
  return api->AddCustomOpDomain(options, domain);
}

// Returns 1 when every OrtApi entry this library declares behaves as expected on
// the runtime behind `base` (the kernel-context entries are exercised by running
// the op); otherwise 0 with the reason in `msg`.
OTARO_ORT_EXPORT int otaro_ort_abi_selfcheck(const OrtApiBase* base, char* msg, size_t msg_len) {
  using namespace otaro_ort;
  if (base == nullptr) return fail(msg, msg_len, "no OrtApiBase");
  const OrtApi* api = base->GetApi(kOtaroOrtApiVersion);
  if (api == nullptr) return fail(msg, msg_len, "GetApi(17) returned nullptr: onnxruntime is older than 1.17");
  return check_status_entries(api, msg, msg_len) && check_shape_entries(api, msg, msg_len) &&
         check_value_entries(api, msg, msg_len) && check_domain_entries(api, msg, msg_len);
}
