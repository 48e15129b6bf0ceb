// Replay recorded calls of an exported .pte with ExecuTorch's C++ runtime (no Python, no torch).
//
//   pte_runner MODEL.pte DATA.ptd|- CALLS.bin OUT.bin [KERNEL_LIBRARY.so]
//
// Built for aarch64 against the headers and libexecutorch*.so of ExecuTorch's aarch64 wheel and
// run under qemu-aarch64 by examples/arm64/arm64_check.py. The kernel library (the project's
// otaro::sefp_linear.out, cross-built for aarch64) is dlopen'ed before the method loads so its
// static registration lands in the runtime's kernel registry.
//
// CALLS.bin (written by examples/arm64/record.py from the x86 runtime's method calls), little endian:
//   "OTRC" u32 version=1 u32 n_calls, then per call: u32 name_length, the method name, u32 n_inputs,
//   then per input: u8 dtype (0 float32, 1 int64, 2 int32, 3 bool tensors; 4 an int64 scalar),
//   u8 ndim, i64 dims[ndim], raw data (a scalar: ndim 0 and its 8 bytes).
// OUT.bin, per call: i32 status (0 = ok, else the runtime's error code), and when ok the first
// output: u8 ndim, i64 dims[ndim], float32 data.
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/extension/tensor/tensor_ptr_maker.h>

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::extension::TensorPtr;
using executorch::extension::module::Module;
using executorch::runtime::EValue;

namespace {

struct Input {
  bool scalar = false;
  ScalarType type;
  std::vector<SizesType> sizes;
  std::vector<uint8_t> data;
};

template <typename T>
bool read_pod(std::ifstream& in, T* value) {
  return static_cast<bool>(in.read(reinterpret_cast<char*>(value), sizeof(T)));
}

struct Call {
  std::string method;
  std::vector<Input> inputs;
};

bool read_calls(const char* path, std::vector<Call>* calls) {
  std::ifstream in(path, std::ios::binary);
  char magic[4];
  uint32_t version = 0, n_calls = 0;
  if (!in.read(magic, 4) || std::memcmp(magic, "OTRC", 4) != 0 || !read_pod(in, &version) || version != 1 ||
      !read_pod(in, &n_calls)) {
    return false;
  }
  for (uint32_t c = 0; c < n_calls; ++c) {
    Call call;
    uint32_t name_length = 0, n_inputs = 0;
    if (!read_pod(in, &name_length) || name_length > 4096) return false;
    call.method.resize(name_length);
    if (!in.read(call.method.data(), name_length) || !read_pod(in, &n_inputs)) return false;
    call.inputs.resize(n_inputs);
    for (Input& input : call.inputs) {
      uint8_t dtype = 0, ndim = 0;
      if (!read_pod(in, &dtype) || !read_pod(in, &ndim)) return false;
      static const ScalarType kTypes[] = {ScalarType::Float, ScalarType::Long, ScalarType::Int, ScalarType::Bool,
                                          ScalarType::Long};
      static const size_t kSizes[] = {4, 8, 4, 1, 8};
      if (dtype > 4 || (dtype == 4 && ndim != 0)) return false;
      input.scalar = dtype == 4;
      input.type = kTypes[dtype];
      size_t count = 1;
      for (uint8_t d = 0; d < ndim; ++d) {
        int64_t dim = 0;
        if (!read_pod(in, &dim) || dim < 0) return false;
        input.sizes.push_back(static_cast<SizesType>(dim));
        count *= static_cast<size_t>(dim);
      }
      input.data.resize(count * kSizes[dtype]);
      if (count > 0 && !in.read(reinterpret_cast<char*>(input.data.data()), input.data.size())) return false;
    }
    calls->push_back(std::move(call));
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5 && argc != 6) {
    std::fprintf(stderr, "usage: %s MODEL.pte DATA.ptd|- CALLS.bin OUT.bin [KERNEL_LIBRARY.so]\n", argv[0]);
    return 2;
  }
  const std::string model = argv[1], data = argv[2];
  if (argc == 6 && dlopen(argv[5], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::fprintf(stderr, "error: cannot load kernel library %s: %s\n", argv[5], dlerror());
    return 2;
  }
  std::vector<Call> calls;
  if (!read_calls(argv[3], &calls)) {
    std::fprintf(stderr, "error: %s is not a version-1 calls file\n", argv[3]);
    return 2;
  }
  std::unique_ptr<Module> module = data == "-" ? std::make_unique<Module>(model, Module::LoadMode::Mmap)
                                               : std::make_unique<Module>(model, data, Module::LoadMode::Mmap);
  for (const Call& call : calls) {  // load every method up front: a missing kernel is a load-time error
    const auto loaded = module->load_method(call.method);
    if (loaded != executorch::runtime::Error::Ok) {
      std::fprintf(stderr, "error: cannot load method %s of %s (error 0x%x): an operator or backend missing?\n",
                   call.method.c_str(), model.c_str(), static_cast<unsigned>(loaded));
      return 3;
    }
  }
  std::ofstream out(argv[4], std::ios::binary);
  for (size_t c = 0; c < calls.size(); ++c) {
    std::vector<TensorPtr> tensors;
    std::vector<EValue> values;
    for (Input& input : calls[c].inputs) {
      if (input.scalar) {
        int64_t value = 0;
        std::memcpy(&value, input.data.data(), sizeof(value));
        values.emplace_back(value);
        continue;
      }
      tensors.push_back(executorch::extension::from_blob(input.data.data(), input.sizes, input.type));
      values.emplace_back(*tensors.back());
    }
    const auto result = module->execute(calls[c].method, values);
    const int32_t status = result.ok() ? 0 : static_cast<int32_t>(result.error());
    if (status == 0 &&
        (result->empty() || !(*result)[0].isTensor() || (*result)[0].toTensor().scalar_type() != ScalarType::Float)) {
      std::fprintf(stderr, "error: call %zu: the first output is not a float32 tensor\n", c);
      return 4;
    }
    out.write(reinterpret_cast<const char*>(&status), sizeof(status));
    if (status != 0) {
      std::printf("call %zu: error 0x%x\n", c, static_cast<unsigned>(status));
      continue;
    }
    const auto& logits = (*result)[0].toTensor();
    const uint8_t ndim = static_cast<uint8_t>(logits.dim());
    out.write(reinterpret_cast<const char*>(&ndim), 1);
    for (int d = 0; d < logits.dim(); ++d) {
      const int64_t dim = logits.size(d);
      out.write(reinterpret_cast<const char*>(&dim), sizeof(dim));
    }
    out.write(reinterpret_cast<const char*>(logits.const_data_ptr<float>()), logits.nbytes());
    std::printf("call %zu: ok, %zu floats\n", c, static_cast<size_t>(logits.numel()));
  }
  return out.good() ? 0 : 5;
}
