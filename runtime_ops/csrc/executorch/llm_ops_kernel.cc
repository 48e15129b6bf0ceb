// ExecuTorch kernels for the fused decoder's small ops (schemas and torch references:
// otaro_export/export/executorch_ops.py):
//   otaro_llm::rms_norm.out(Tensor x, Tensor weight, float eps, *, Tensor(a!) out) -> Tensor(a!)
//   otaro_llm::rotary_heads.out(Tensor qkv, Tensor cos, Tensor sin, int head_offset, int num_heads,
//                               int head_dim, bool rotate, *, Tensor(a!) out) -> Tensor(a!)
//   otaro_llm::swiglu.out(Tensor gate_up, *, Tensor(a!) out) -> Tensor(a!)
// One call each instead of the ~25 slices, views and element-wise ops per decoder layer they replace.
// The work per call is one activation row per token: single-threaded. Bad shapes fail the call
// through ctx (the method's execute() returns an error).
// Written by the ExecuTorch exporter's owner (issue 14); it builds into the same library as the SEFP kernels.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>

#include <array>
#include <cmath>

namespace otaro {
namespace llm {

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

namespace {

constexpr size_t kMaxDims = executorch::runtime::kTensorDimensionLimit;

bool float_contiguous(const Tensor& t) {
  return t.scalar_type() == ScalarType::Float && executorch::runtime::tensor_is_contiguous(t);
}

bool resize_like(Tensor& out, const Tensor& x, int64_t last) {
  std::array<SizesType, kMaxDims> sizes{};
  for (ssize_t d = 0; d < x.dim(); ++d) sizes[d] = static_cast<SizesType>(x.size(d));
  sizes[x.dim() - 1] = static_cast<SizesType>(last);
  return executorch::runtime::resize_tensor(out, {sizes.data(), static_cast<size_t>(x.dim())}) == Error::Ok;
}

}  // namespace

Tensor& rms_norm_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& weight, double eps, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, x.dim() >= 1 && static_cast<size_t>(x.dim()) <= kMaxDims, InvalidArgument, out,
                      "otaro_llm::rms_norm: x must have rank 1..%zu", kMaxDims);
  const int64_t d = x.size(x.dim() - 1);
  ET_KERNEL_CHECK_MSG(ctx, float_contiguous(x) && float_contiguous(weight) && weight.dim() == 1 && weight.size(0) == d,
                      InvalidArgument, out,
                      "otaro_llm::rms_norm: x must be contiguous float32 [..., D] and weight float32 [D]");
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == ScalarType::Float && resize_like(out, x, d), InvalidArgument, out,
                      "otaro_llm::rms_norm: cannot resize out to x's shape");
  const int64_t rows = d > 0 ? x.numel() / d : 0;
  const float* src = x.const_data_ptr<float>();
  const float* w = weight.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = src + r * d;
    float* yr = dst + r * d;
    double sum = 0.0;
    for (int64_t i = 0; i < d; ++i) sum += static_cast<double>(xr[i]) * xr[i];
    const float scale = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(d) + eps));
    for (int64_t i = 0; i < d; ++i) yr[i] = xr[i] * scale * w[i];
  }
  return out;
}

Tensor& rotary_heads_out(KernelRuntimeContext& ctx, const Tensor& qkv, const Tensor& cos, const Tensor& sin,
                         int64_t head_offset, int64_t num_heads, int64_t head_dim, bool rotate, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, qkv.dim() == 3 && float_contiguous(qkv), InvalidArgument, out,
                      "otaro_llm::rotary_heads: qkv must be contiguous float32 [B, S, W]");
  const int64_t batch = qkv.size(0), seq = qkv.size(1), width = qkv.size(2), half = head_dim / 2;
  ET_KERNEL_CHECK_MSG(ctx,
                      head_offset >= 0 && num_heads > 0 && head_dim > 0 && head_dim % 2 == 0 &&
                          (head_offset + num_heads) * head_dim <= width,
                      InvalidArgument, out, "otaro_llm::rotary_heads: heads %lld..%lld of size %lld exceed width %lld",
                      static_cast<long long>(head_offset), static_cast<long long>(head_offset + num_heads - 1),
                      static_cast<long long>(head_dim), static_cast<long long>(width));
  if (rotate) {
    ET_KERNEL_CHECK_MSG(ctx,
                        float_contiguous(cos) && float_contiguous(sin) && cos.dim() == 2 && sin.dim() == 2 &&
                            cos.size(0) == seq && sin.size(0) == seq && cos.size(1) == half && sin.size(1) == half,
                        InvalidArgument, out, "otaro_llm::rotary_heads: cos and sin must be float32 [S, head_dim/2]");
  }
  const std::array<SizesType, 4> sizes{static_cast<SizesType>(batch), static_cast<SizesType>(seq),
                                       static_cast<SizesType>(num_heads), static_cast<SizesType>(head_dim)};
  ET_KERNEL_CHECK_MSG(ctx,
                      out.scalar_type() == ScalarType::Float &&
                          executorch::runtime::resize_tensor(out, {sizes.data(), sizes.size()}) == Error::Ok,
                      InvalidArgument, out, "otaro_llm::rotary_heads: cannot resize out to [B, S, heads, head_dim]");
  const float* src = qkv.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < seq; ++s) {
      const float* row = src + (b * seq + s) * width + head_offset * head_dim;
      float* o = dst + (b * seq + s) * num_heads * head_dim;
      if (!rotate) {
        for (int64_t i = 0; i < num_heads * head_dim; ++i) o[i] = row[i];
        continue;
      }
      const float* c = cos.const_data_ptr<float>() + s * half;
      const float* sn = sin.const_data_ptr<float>() + s * half;
      for (int64_t h = 0; h < num_heads; ++h) {
        const float* x = row + h * head_dim;
        float* y = o + h * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = x[i], x2 = x[i + half];
          y[i] = x1 * c[i] - x2 * sn[i];
          y[i + half] = x2 * c[i] + x1 * sn[i];
        }
      }
    }
  }
  return out;
}

Tensor& swiglu_out(KernelRuntimeContext& ctx, const Tensor& gate_up, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx,
                      gate_up.dim() >= 1 && static_cast<size_t>(gate_up.dim()) <= kMaxDims &&
                          float_contiguous(gate_up) && gate_up.size(gate_up.dim() - 1) % 2 == 0,
                      InvalidArgument, out, "otaro_llm::swiglu: gate_up must be contiguous float32 [..., 2F]");
  const int64_t f = gate_up.size(gate_up.dim() - 1) / 2;
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == ScalarType::Float && resize_like(out, gate_up, f), InvalidArgument, out,
                      "otaro_llm::swiglu: cannot resize out to [..., F]");
  const int64_t rows = f > 0 ? gate_up.numel() / (2 * f) : 0;
  const float* src = gate_up.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = src + r * 2 * f;
    const float* up = gate + f;
    float* y = dst + r * f;
    for (int64_t i = 0; i < f; ++i) y[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  }
  return out;
}

}  // namespace llm
}  // namespace otaro

EXECUTORCH_LIBRARY(otaro_llm, "rms_norm.out", otaro::llm::rms_norm_out);
EXECUTORCH_LIBRARY(otaro_llm, "rotary_heads.out", otaro::llm::rotary_heads_out);
EXECUTORCH_LIBRARY(otaro_llm, "swiglu.out", otaro::llm::swiglu_out);
