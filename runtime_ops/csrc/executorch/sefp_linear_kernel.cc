// ExecuTorch kernel for otaro::sefp_linear.out (schema: otaro_export/ops.py):
//   sefp_linear.out(Tensor x, Tensor p0, Tensor p1, Tensor p2, Tensor p3, Tensor exponents,
//                   Tensor bits, Tensor? bias=None, *, Tensor(a!) out) -> Tensor(a!)
// Validates every input and reports problems through ctx.fail (the method's
// execute() then returns an error): bad bits or shapes never crash the process.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>

#include <array>
#include <optional>

#include "core/sefp_kernel.h"

namespace otaro {
namespace et {

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

namespace {

constexpr int64_t kGroup = 64;

bool is_2d(const Tensor& t, ScalarType dtype, int64_t rows, int64_t cols) {
  return t.scalar_type() == dtype && t.dim() == 2 && t.size(0) == rows && t.size(1) == cols &&
         executorch::runtime::tensor_is_contiguous(t);
}

}  // namespace

Tensor& sefp_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& p0, const Tensor& p1,
                        const Tensor& p2, const Tensor& p3, const Tensor& exponents, const Tensor& bits,
                        const std::optional<Tensor>& bias, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, bits.scalar_type() == ScalarType::Long && bits.numel() == 1, InvalidArgument, out,
                      "otaro::sefp_linear: bits must be a 0-dim int64 tensor");
  const int64_t k_bits = bits.const_data_ptr<int64_t>()[0];
  ET_KERNEL_CHECK_MSG(ctx, k_bits >= 3 && k_bits <= 8, InvalidArgument, out,
                      "otaro::sefp_linear: bits must be in 3..8 (E5M3..E5M8), got %lld",
                      static_cast<long long>(k_bits));

  ET_KERNEL_CHECK_MSG(ctx, exponents.scalar_type() == ScalarType::Char && exponents.dim() == 2, InvalidArgument, out,
                      "otaro::sefp_linear: exponents must be int8 [N, G]");
  const int64_t n = exponents.size(0), g = exponents.size(1);
  ET_KERNEL_CHECK_MSG(ctx,
                      is_2d(p0, ScalarType::Byte, n, g * 32) && is_2d(p1, ScalarType::Byte, n, g * 16) &&
                          is_2d(p2, ScalarType::Byte, n, g * 16) && is_2d(p3, ScalarType::Byte, n, g * 8) &&
                          executorch::runtime::tensor_is_contiguous(exponents),
                      InvalidArgument, out,
                      "otaro::sefp_linear: planes must be contiguous uint8 [N, G*32], [N, G*16], [N, G*16], "
                      "[N, G*8] for exponents [%lld, %lld]",
                      static_cast<long long>(n), static_cast<long long>(g));

  ET_KERNEL_CHECK_MSG(
      ctx, x.scalar_type() == ScalarType::Float && x.dim() >= 1 && executorch::runtime::tensor_is_contiguous(x),
      InvalidArgument, out, "otaro::sefp_linear: x must be a contiguous float32 tensor [..., K]");
  const int64_t k = x.size(x.dim() - 1);
  ET_KERNEL_CHECK_MSG(ctx, k > (g - 1) * kGroup && k <= g * kGroup, InvalidArgument, out,
                      "otaro::sefp_linear: x has %lld input features, the weight has %lld groups of 64",
                      static_cast<long long>(k), static_cast<long long>(g));

  const float* bias_data = nullptr;
  if (bias.has_value()) {
    const Tensor& b = bias.value();
    ET_KERNEL_CHECK_MSG(ctx, b.scalar_type() == ScalarType::Float && b.dim() == 1 && b.size(0) == n, InvalidArgument,
                        out, "otaro::sefp_linear: bias must be float32 [%lld]", static_cast<long long>(n));
    bias_data = b.const_data_ptr<float>();
  }

  // out: x's leading dims + [N]
  std::array<SizesType, executorch::runtime::kTensorDimensionLimit> out_sizes{};
  ET_KERNEL_CHECK(ctx, static_cast<size_t>(x.dim()) <= out_sizes.size(), InvalidArgument, out);
  for (ssize_t d = 0; d + 1 < x.dim(); ++d) out_sizes[d] = static_cast<SizesType>(x.size(d));
  out_sizes[x.dim() - 1] = static_cast<SizesType>(n);
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == ScalarType::Float, InvalidArgument, out,
                      "otaro::sefp_linear: out must be float32");
  ET_KERNEL_CHECK_MSG(
      ctx, executorch::runtime::resize_tensor(out, {out_sizes.data(), static_cast<size_t>(x.dim())}) == Error::Ok,
      InvalidArgument, out, "otaro::sefp_linear: cannot resize out to [..., %lld]", static_cast<long long>(n));

  const SEFPWeightView w{p0.const_data_ptr<uint8_t>(),
                         p1.const_data_ptr<uint8_t>(),
                         p2.const_data_ptr<uint8_t>(),
                         p3.const_data_ptr<uint8_t>(),
                         exponents.const_data_ptr<int8_t>(),
                         n,
                         k,
                         g};
  int64_t rows = 1;  // leading dims of x (not numel / K: K may be 0)
  for (ssize_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  const Status status = sefp_linear(x.const_data_ptr<float>(), rows, w, bias_data, static_cast<int>(k_bits),
                                    out.mutable_data_ptr<float>());
  ET_KERNEL_CHECK_MSG(ctx, status == Status::kOk, InvalidArgument, out, "otaro::sefp_linear: %s",
                      status_message(status));
  return out;
}

}  // namespace et
}  // namespace otaro

EXECUTORCH_LIBRARY(otaro, "sefp_linear.out", otaro::et::sefp_linear_out);
