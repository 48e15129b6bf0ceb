// ExecuTorch kernels for otaro::sefp_linear.out and otaro::sefp_embedding.out (schemas: otaro_export/ops.py):
//   sefp_linear.out(Tensor x, Tensor p0, Tensor p1, Tensor p2, Tensor p3, Tensor exponents, Tensor bits,
//                   Tensor? bias=None, Tensor? levels=None, int act_int8_max_bits=0, *, Tensor(a!) out) -> Tensor(a!)
//   sefp_embedding.out(Tensor ids, Tensor p0, Tensor p1, Tensor p2, Tensor p3, Tensor exponents, Tensor bits,
//                      int in_features, Tensor? levels=None, *, Tensor(a!) out) -> Tensor(a!)
// The core checks every input (otaro::check_linear_args / check_embedding_args, then
// bits, levels and ids when the call runs); problems are reported through ctx.fail
// (the method's execute() then returns an error): bad bits, shapes or ids never crash
// the process. act_int8_max_bits (0, or int8 activations at bits <= it: docs/FORMAT.md §9) goes to
// the core's plan_linear as the onnxruntime kernel's attribute does. Programs emitted before the schema
// had it pass one value fewer; the boxed entry below runs them with 0 (float activations).
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>

#include <algorithm>
#include <array>
#include <optional>

#include "core/sefp_kernel.h"
#include "executorch/kernel_threads.h"

namespace otaro {
namespace et {

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

namespace {

constexpr size_t kMaxDims = executorch::runtime::kTensorDimensionLimit;

DType core_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return DType::kFloat32;
    case ScalarType::Byte: return DType::kUInt8;
    case ScalarType::Char: return DType::kInt8;
    case ScalarType::Long: return DType::kInt64;
    default: return DType::kOther;
  }
}

// One argument as the core's checks see it (dims copied to int64).
struct Arg {
  std::array<int64_t, kMaxDims> dims{};
  TensorInfo info;
};

void describe(const Tensor* t, Arg* out) {
  out->info = TensorInfo{};
  if (t == nullptr) return;
  const size_t rank = std::min(static_cast<size_t>(t->dim()), kMaxDims);
  for (size_t d = 0; d < rank; ++d) out->dims[d] = t->size(static_cast<ssize_t>(d));
  out->info.present = true;
  out->info.dtype = core_dtype(t->scalar_type());
  out->info.rank = static_cast<int64_t>(rank);
  out->info.dims = out->dims.data();
}

bool contiguous(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    if (t != nullptr && !executorch::runtime::tensor_is_contiguous(*t)) return false;
  return true;
}

const Tensor* opt(const std::optional<Tensor>& t) { return t.has_value() ? &t.value() : nullptr; }

SEFPWeightView weight(const Tensor& p0, const Tensor& p1, const Tensor& p2, const Tensor& p3, const Tensor& exponents,
                      int64_t in_features, const Tensor* levels) {
  return SEFPWeightView{p0.const_data_ptr<uint8_t>(),
                        p1.const_data_ptr<uint8_t>(),
                        p2.const_data_ptr<uint8_t>(),
                        p3.const_data_ptr<uint8_t>(),
                        exponents.const_data_ptr<int8_t>(),
                        exponents.size(0),
                        in_features,
                        exponents.size(1),
                        levels ? levels->const_data_ptr<float>() : nullptr};
}

// bits as an int for the core: values outside 3..8 map to 0, which the core rejects as kInvalidBits.
int bits_of(const Tensor& bits) {
  const int64_t v = bits.const_data_ptr<int64_t>()[0];
  return (v < kMinBits || v > kMaxBits) ? 0 : static_cast<int>(v);
}

// act_int8_max_bits as an int for the core: values outside 0..8 map to -1, which the core rejects as
// kInvalidActivationBits (as it does 1 and 2).
int act_bits_of(int64_t v) { return (v < 0 || v > kMaxBits) ? -1 : static_cast<int>(v); }

// Output rows split over the core's pool, as many threads as the session gave ExecuTorch
// (kernel_threads.h says why not ExecuTorch's own pool).
Status run_linear(const float* x, int64_t rows, const SEFPWeightView& w, const float* bias, int bits, float* y,
                  int act_int8_max_bits) {
  return sefp_linear(x, rows, w, bias, bits, y, kernel_threads(), Isa::kAuto, act_int8_max_bits);
}

}  // namespace

Tensor& sefp_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& p0, const Tensor& p1,
                        const Tensor& p2, const Tensor& p3, const Tensor& exponents, const Tensor& bits,
                        const std::optional<Tensor>& bias, const std::optional<Tensor>& levels,
                        int64_t act_int8_max_bits, Tensor& out) {
  Arg a[9];
  const Tensor* args[9] = {&x, &p0, &p1, &p2, &p3, &exponents, &bits, opt(bias), opt(levels)};
  for (int i = 0; i < 9; ++i) describe(args[i], &a[i]);
  const LinearArgsInfo info{a[0].info, {a[1].info, a[2].info, a[3].info, a[4].info}, a[5].info, a[6].info, a[7].info,
                            a[8].info};
  char msg[512];
  ET_KERNEL_CHECK_MSG(ctx, check_linear_args(info, msg, sizeof msg) == Status::kOk, InvalidArgument, out,
                      "otaro::sefp_linear: %s", msg);
  ET_KERNEL_CHECK_MSG(ctx, contiguous({&x, &p0, &p1, &p2, &p3, &exponents, opt(bias), opt(levels)}), InvalidArgument,
                      out, "otaro::sefp_linear: inputs must be contiguous");
  ET_KERNEL_CHECK_MSG(ctx, x.dim() <= static_cast<ssize_t>(kMaxDims), InvalidArgument, out,
                      "otaro::sefp_linear: x has too many dims");

  // out: x's leading dims + [N]
  const int64_t n = exponents.size(0);
  std::array<SizesType, kMaxDims> out_sizes{};
  int64_t rows = 1;  // leading dims of x (not numel / K: K may be 0)
  for (ssize_t d = 0; d + 1 < x.dim(); ++d) {
    out_sizes[d] = static_cast<SizesType>(x.size(d));
    rows *= x.size(d);
  }
  out_sizes[x.dim() - 1] = static_cast<SizesType>(n);
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == ScalarType::Float, InvalidArgument, out,
                      "otaro::sefp_linear: out must be float32");
  ET_KERNEL_CHECK_MSG(
      ctx, executorch::runtime::resize_tensor(out, {out_sizes.data(), static_cast<size_t>(x.dim())}) == Error::Ok,
      InvalidArgument, out, "otaro::sefp_linear: cannot resize out to [..., %lld]", static_cast<long long>(n));

  const SEFPWeightView w = weight(p0, p1, p2, p3, exponents, x.size(x.dim() - 1), opt(levels));
  const Status status = run_linear(x.const_data_ptr<float>(), rows, w, bias ? bias->const_data_ptr<float>() : nullptr,
                                   bits_of(bits), out.mutable_data_ptr<float>(), act_bits_of(act_int8_max_bits));
  ET_KERNEL_CHECK_MSG(ctx, status != Status::kInvalidActivationBits, InvalidArgument, out,
                      "otaro::sefp_linear: %s, got %lld", status_message(status),
                      static_cast<long long>(act_int8_max_bits));
  ET_KERNEL_CHECK_MSG(ctx, status == Status::kOk, InvalidArgument, out, "otaro::sefp_linear: %s, got bits=%lld",
                      status_message(status), static_cast<long long>(bits.const_data_ptr<int64_t>()[0]));
  return out;
}

Tensor& sefp_embedding_out(KernelRuntimeContext& ctx, const Tensor& ids, const Tensor& p0, const Tensor& p1,
                           const Tensor& p2, const Tensor& p3, const Tensor& exponents, const Tensor& bits,
                           int64_t in_features, const std::optional<Tensor>& levels, Tensor& out) {
  Arg a[8];
  const Tensor* args[8] = {&ids, &p0, &p1, &p2, &p3, &exponents, &bits, opt(levels)};
  for (int i = 0; i < 8; ++i) describe(args[i], &a[i]);
  const EmbeddingArgsInfo info{
      a[0].info, {a[1].info, a[2].info, a[3].info, a[4].info}, a[5].info, a[6].info, a[7].info, in_features};
  char msg[512];
  ET_KERNEL_CHECK_MSG(ctx, check_embedding_args(info, msg, sizeof msg) == Status::kOk, InvalidArgument, out,
                      "otaro::sefp_embedding: %s", msg);
  ET_KERNEL_CHECK_MSG(ctx, contiguous({&ids, &p0, &p1, &p2, &p3, &exponents, opt(levels)}), InvalidArgument, out,
                      "otaro::sefp_embedding: inputs must be contiguous");
  ET_KERNEL_CHECK_MSG(ctx, ids.dim() < static_cast<ssize_t>(kMaxDims), InvalidArgument, out,
                      "otaro::sefp_embedding: ids has too many dims");

  // out: ids' dims + [in_features]
  std::array<SizesType, kMaxDims> out_sizes{};
  for (ssize_t d = 0; d < ids.dim(); ++d) out_sizes[d] = static_cast<SizesType>(ids.size(d));
  out_sizes[ids.dim()] = static_cast<SizesType>(in_features);
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == ScalarType::Float, InvalidArgument, out,
                      "otaro::sefp_embedding: out must be float32");
  ET_KERNEL_CHECK_MSG(
      ctx, executorch::runtime::resize_tensor(out, {out_sizes.data(), static_cast<size_t>(ids.dim() + 1)}) == Error::Ok,
      InvalidArgument, out, "otaro::sefp_embedding: cannot resize out to [..., %lld]",
      static_cast<long long>(in_features));

  const SEFPWeightView w = weight(p0, p1, p2, p3, exponents, in_features, opt(levels));
  int64_t bad = -1;
  const Status status = sefp_embedding(ids.const_data_ptr<int64_t>(), ids.numel(), w, bits_of(bits),
                                       out.mutable_data_ptr<float>(), 1, Isa::kAuto, &bad);
  ET_KERNEL_CHECK_MSG(ctx, status != Status::kInvalidIndex, InvalidArgument, out,
                      "otaro::sefp_embedding: ids[%lld] = %lld is outside [0, %lld)", static_cast<long long>(bad),
                      static_cast<long long>(bad >= 0 ? ids.const_data_ptr<int64_t>()[bad] : 0),
                      static_cast<long long>(exponents.size(0)));
  ET_KERNEL_CHECK_MSG(ctx, status == Status::kOk, InvalidArgument, out, "otaro::sefp_embedding: %s, got bits=%lld",
                      status_message(status), static_cast<long long>(bits.const_data_ptr<int64_t>()[0]));
  return out;
}

namespace {

// sefp_linear.out's values: x, p0..p3, exponents, bits, bias, levels[, act_int8_max_bits], out, and the
// returned out. The unboxing wrapper reads a fixed count, so this entry takes both the current programs (12
// values) and those emitted before act_int8_max_bits existed (11 values: float activations, as exported).
constexpr size_t kLinearValues = 12;

void sefp_linear_out_boxed(KernelRuntimeContext& ctx, executorch::runtime::Span<executorch::runtime::EValue*> stack) {
  const size_t count = stack.size();
  if (count != kLinearValues && count != kLinearValues - 1) {
    ET_LOG(Error, "otaro::sefp_linear.out: expected %zu or %zu values, got %zu", kLinearValues - 1, kLinearValues,
           count);
    ctx.fail(Error::InvalidArgument);
    return;
  }
  const int64_t act_int8_max_bits = count == kLinearValues ? stack[9]->toInt() : 0;
  sefp_linear_out(ctx, stack[0]->toTensor(), stack[1]->toTensor(), stack[2]->toTensor(), stack[3]->toTensor(),
                  stack[4]->toTensor(), stack[5]->toTensor(), stack[6]->toTensor(), stack[7]->toOptional<Tensor>(),
                  stack[8]->toOptional<Tensor>(), act_int8_max_bits, stack[count - 2]->toTensor());
}

}  // namespace

}  // namespace et
}  // namespace otaro

static auto otaro_sefp_linear_out_registered = executorch::runtime::register_kernel(
    executorch::runtime::Kernel("otaro::sefp_linear.out", otaro::et::sefp_linear_out_boxed));
EXECUTORCH_LIBRARY(otaro, "sefp_embedding.out", otaro::et::sefp_embedding_out);
