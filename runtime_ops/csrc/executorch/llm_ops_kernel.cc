// ExecuTorch kernels for the fused decoder's small ops (schemas and torch references:
// otaro_export/export/executorch_ops.py):
//   otaro_llm::rms_norm.out(Tensor x, Tensor weight, float eps, *, Tensor(a!) out) -> Tensor(a!)
//   otaro_llm::rotary_heads.out(Tensor qkv, Tensor cos, Tensor sin, int head_offset, int num_heads,
//                               int head_dim, bool rotate, *, Tensor(a!) out) -> Tensor(a!)
//   otaro_llm::swiglu.out(Tensor gate_up, *, Tensor(a!) out) -> Tensor(a!)
//   otaro_llm::kv_attention.out(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache,
//                               SymInt start_pos, int num_heads, int num_kv_heads, int head_dim, float scale, *,
//                               Tensor(c!) out) -> Tensor(c!)
// One call each instead of the ~25 slices, views and element-wise ops per decoder layer they replace.
// The work per call is one activation row per token: single-threaded, except attention over a long
// prompt, which splits its (token, head) rows over the core's thread pool (kernel_threads.h). Bad shapes fail the call
// through ctx (the method's execute() returns an error).
// The loops are plain C++ written for the auto-vectorizer; on x86 each hot loop is also compiled
// for AVX2 and AVX-512 (target_clones: the loader picks the clone the CPU runs).
// Written by the ExecuTorch exporter's owner (issue 14); it builds into the same library as the SEFP kernels.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "core/vector_math.h"
#include "executorch/kernel_threads.h"

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

__attribute__((always_inline)) inline v16 load16(const float* p) { return *reinterpret_cast<const v16*>(p); }

// Fold two vectors of 2m-lane partial sums (one group of lanes per position) into one vector of
// m-lane sums: the lanes [a0 | a1 | ...] of a and b become [a0+a0' | ... | b0+b0' | ...]. Four folds
// turn the 16 per-position accumulators of a block into the block's 16 dot products, in order.
__attribute__((always_inline)) inline v16 fold8(const v16& a, const v16& b) {
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
         __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
}
__attribute__((always_inline)) inline v16 fold4(const v16& a, const v16& b) {
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
         __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
}
__attribute__((always_inline)) inline v16 fold2(const v16& a, const v16& b) {
  return __builtin_shufflevector(a, b, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
         __builtin_shufflevector(a, b, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
}
__attribute__((always_inline)) inline v16 fold1(const v16& a, const v16& b) {
  return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

// scores[j] = scale * q . k_j for j < count, k_j = k + j * stride; head_dim a multiple of 16.
__attribute__((always_inline)) inline void dot_rows16(const float* q, const float* k, int64_t stride, int64_t count,
                                                      int64_t head_dim, float scale, float* scores) {
  for (int64_t j0 = 0; j0 < count; j0 += 16) {
    const int64_t n = std::min<int64_t>(16, count - j0);
    const float* rows[16];  // a short last block repeats its last row; those lanes are not stored
    for (int p = 0; p < 16; ++p) rows[p] = k + (j0 + std::min<int64_t>(p, n - 1)) * stride;
    v16 acc[16];
    for (int p = 0; p < 16; ++p) acc[p] = v16{};
    for (int64_t d = 0; d < head_dim; d += 16) {  // 16 independent FMA chains, q loaded once per chunk
      const v16 qv = load16(q + d);
      for (int p = 0; p < 16; ++p) acc[p] += qv * load16(rows[p] + d);
    }
    v16 f8[8], f4[4], f2[2];
    for (int i = 0; i < 8; ++i) f8[i] = fold8(acc[2 * i], acc[2 * i + 1]);
    for (int i = 0; i < 4; ++i) f4[i] = fold4(f8[2 * i], f8[2 * i + 1]);
    for (int i = 0; i < 2; ++i) f2[i] = fold2(f4[2 * i], f4[2 * i + 1]);
    const v16 dots = fold1(f2[0], f2[1]) * scale;
    for (int64_t p = 0; p < n; ++p) scores[j0 + p] = dots[p];
  }
}

// Any head_dim: one position at a time.
__attribute__((always_inline)) inline void dot_rows(const float* q, const float* k, int64_t stride, int64_t count,
                                                    int64_t head_dim, float scale, float* scores) {
  for (int64_t j = 0; j < count; ++j) {
    const float* kr = k + j * stride;
    float dot = 0.0f;
    for (int64_t d = 0; d < head_dim; ++d) dot += q[d] * kr[d];
    scores[j] = dot * scale;
  }
}

// head_dim limit of the vector path (its accumulators for one output row live in registers / L1)
constexpr int64_t kMaxWideHeadDim = 256;

// o = inv * sum_j weights[j] * v_j over C chunks of 16: even and odd rows in two FMA chains per chunk.
template <int C>
__attribute__((always_inline)) inline void weighted_rows(const float* weights, int64_t count, const float* v,
                                                         int64_t stride, float inv, float* o) {
  v16 acc[C], acc2[C];
  for (int c = 0; c < C; ++c) acc[c] = acc2[c] = v16{};
  int64_t j = 0;
  for (; j + 2 <= count; j += 2) {
    const float* v0 = v + j * stride;
    const float* v1 = v0 + stride;
    for (int c = 0; c < C; ++c) {
      acc[c] += weights[j] * load16(v0 + 16 * c);
      acc2[c] += weights[j + 1] * load16(v1 + 16 * c);
    }
  }
  if (j < count)
    for (int c = 0; c < C; ++c) acc[c] += weights[j] * load16(v + j * stride + 16 * c);
  for (int c = 0; c < C; ++c) *reinterpret_cast<v16*>(o + 16 * c) = (acc[c] + acc2[c]) * inv;
}

// Softmax-weighted sum of the value rows for one query row, vector path: scores [count] (raw,
// scaled), padded with room to a multiple of 16; head_dim a multiple of 16, <= kMaxWideHeadDim.
__attribute__((always_inline)) inline void softmax_values16(float* scores, int64_t count, const float* v,
                                                            int64_t stride, int64_t head_dim, float* o) {
  const int64_t padded = (count + 15) / 16 * 16;
  for (int64_t j = count; j < padded; ++j) scores[j] = -std::numeric_limits<float>::infinity();
  v16 top16 = load16(scores);
  for (int64_t j = 16; j < padded; j += 16) {
    const v16 s = load16(scores + j);
    top16 = s > top16 ? s : top16;
  }
  float top = top16[0];
  for (int l = 1; l < 16; ++l) top = std::max(top, top16[l]);
  v16 total16{};
  const v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  for (int64_t j = 0; j < padded; j += 16) {
    v16 e = exp16(load16(scores + j) - top);
    e = (lane + static_cast<int32_t>(j) < static_cast<int32_t>(count)) ? e : v16{};  // padding weighs 0
    *reinterpret_cast<v16*>(scores + j) = e;
    total16 += e;
  }
  float total = 0.0f;
  for (int l = 0; l < 16; ++l) total += total16[l];
  const float inv = 1.0f / total;
  switch (head_dim / 16) {  // a compile-time chunk count keeps the accumulators in registers
    case 1: return weighted_rows<1>(scores, count, v, stride, inv, o);
    case 2: return weighted_rows<2>(scores, count, v, stride, inv, o);
    case 4: return weighted_rows<4>(scores, count, v, stride, inv, o);
    case 6: return weighted_rows<6>(scores, count, v, stride, inv, o);
    case 8: return weighted_rows<8>(scores, count, v, stride, inv, o);
    default: break;
  }
  const int64_t chunks = head_dim / 16;
  for (int64_t c = 0; c < chunks; ++c) {
    v16 acc{};
    for (int64_t j = 0; j < count; ++j) acc += scores[j] * load16(v + j * stride + 16 * c);
    *reinterpret_cast<v16*>(o + 16 * c) = acc * inv;
  }
}

// Attention of the query rows row_begin .. row_end - 1 (row = token t * H + head h) of q [S, H, D] over
// the cache rows 0 .. start + t: head h reads kv head h / (H / KV) (HF Llama's grouping). scores: a
// buffer of >= start + S + 16 floats.
OTARO_VECTOR_CLONES void attend_rows(const float* q, const float* k_cache, const float* v_cache, float* out,
                                     int64_t row_begin, int64_t row_end, int64_t heads, int64_t kv_heads,
                                     int64_t head_dim, int64_t start, float scale, float* scores) {
  const int64_t group = heads / kv_heads, stride = kv_heads * head_dim;  // cache row: [KV, D]
  const bool wide = head_dim % 16 == 0 && head_dim <= kMaxWideHeadDim;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t t = row / heads, h = row % heads, visible = start + t + 1;
    const float* qr = q + row * head_dim;
    const float* k = k_cache + (h / group) * head_dim;
    const float* v = v_cache + (h / group) * head_dim;
    float* o = out + row * head_dim;
    if (wide) {
      dot_rows16(qr, k, stride, visible, head_dim, scale, scores);
      softmax_values16(scores, visible, v, stride, head_dim, o);
      continue;
    }
    dot_rows(qr, k, stride, visible, head_dim, scale, scores);
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < visible; ++j) top = std::max(top, scores[j]);
    float total = 0.0f;
    for (int64_t j = 0; j < visible; ++j) {
      scores[j] = exp_approx(scores[j] - top);
      total += scores[j];
    }
    const float inv = 1.0f / total;
    for (int64_t d = 0; d < head_dim; ++d) o[d] = 0.0f;
    for (int64_t j = 0; j < visible; ++j)
      for (int64_t d = 0; d < head_dim; ++d) o[d] += scores[j] * v[j * stride + d];
    for (int64_t d = 0; d < head_dim; ++d) o[d] *= inv;
  }
}

// Non-interleaved rotary embedding of `count` heads of 2 * half floats each, from `x` to `y`.
void rotate_heads(const float* x, const float* c, const float* sn, int64_t count, int64_t half, float* y) {
  for (int64_t h = 0; h < count; ++h, x += 2 * half, y += 2 * half) {
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = x[i], x2 = x[i + half];
      y[i] = x1 * c[i] - x2 * sn[i];
      y[i + half] = x2 * c[i] + x1 * sn[i];
    }
  }
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
      rotate_heads(row, c, sn, num_heads, half, o);
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
  for (int64_t r = 0; r < rows; ++r) silu_mul(src + r * 2 * f, src + r * 2 * f + f, dst + r * f, f);
  return out;
}

Tensor& kv_attention_out(KernelRuntimeContext& ctx, const Tensor& qkv, const Tensor& cos, const Tensor& sin,
                         Tensor& k_cache, Tensor& v_cache, int64_t start_pos, int64_t num_heads, int64_t num_kv_heads,
                         int64_t head_dim, double scale, Tensor& out) {
  const int64_t heads = num_heads, kv_heads = num_kv_heads, half = head_dim / 2;
  ET_KERNEL_CHECK_MSG(ctx,
                      heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && head_dim > 0 && head_dim % 2 == 0 &&
                          qkv.dim() == 3 && qkv.size(0) == 1 && float_contiguous(qkv) &&
                          qkv.size(2) == (heads + 2 * kv_heads) * head_dim,
                      InvalidArgument, out,
                      "otaro_llm::kv_attention: qkv must be contiguous float32 [1, S, (H + 2 KV) * D] with H a "
                      "multiple of KV and D even");
  const int64_t seq = qkv.size(1);
  ET_KERNEL_CHECK_MSG(ctx,
                      float_contiguous(cos) && float_contiguous(sin) && cos.dim() == 2 && sin.dim() == 2 &&
                          cos.size(0) == seq && sin.size(0) == seq && cos.size(1) == half && sin.size(1) == half,
                      InvalidArgument, out, "otaro_llm::kv_attention: cos and sin must be float32 [S, head_dim/2]");
  ET_KERNEL_CHECK_MSG(ctx,
                      k_cache.dim() == 4 && v_cache.dim() == 4 && float_contiguous(k_cache) &&
                          float_contiguous(v_cache) && k_cache.size(0) == 1 && v_cache.size(0) == 1 &&
                          v_cache.size(1) == k_cache.size(1) && k_cache.size(2) == kv_heads &&
                          v_cache.size(2) == kv_heads && k_cache.size(3) == head_dim && v_cache.size(3) == head_dim,
                      InvalidArgument, out,
                      "otaro_llm::kv_attention: the caches must be contiguous float32 [1, max_seq_len, KV, D]");
  const int64_t max_len = k_cache.size(1);
  ET_KERNEL_CHECK_MSG(ctx, start_pos >= 0 && start_pos + seq <= max_len, InvalidArgument, out,
                      "otaro_llm::kv_attention: positions %lld..%lld exceed the cache of %lld",
                      static_cast<long long>(start_pos), static_cast<long long>(start_pos + seq - 1),
                      static_cast<long long>(max_len));
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == ScalarType::Float && resize_like(out, qkv, heads * head_dim),
                      InvalidArgument, out, "otaro_llm::kv_attention: cannot resize out to [1, S, H * D]");
  if (seq == 0) return out;

  // Rotated q heads to a scratch [S, H, D]; rotated k and plain v heads straight into their cache rows.
  thread_local std::vector<float> q_rotated;
  q_rotated.resize(static_cast<size_t>(seq * heads * head_dim));
  const int64_t width = qkv.size(2), stride = kv_heads * head_dim;
  const float* src = qkv.const_data_ptr<float>();
  float* kc = k_cache.mutable_data_ptr<float>();
  float* vc = v_cache.mutable_data_ptr<float>();
  for (int64_t t = 0; t < seq; ++t) {
    const float* row = src + t * width;
    const float* c = cos.const_data_ptr<float>() + t * half;
    const float* sn = sin.const_data_ptr<float>() + t * half;
    rotate_heads(row, c, sn, heads, half, q_rotated.data() + t * heads * head_dim);
    rotate_heads(row + heads * head_dim, c, sn, kv_heads, half, kc + (start_pos + t) * stride);
    std::memcpy(vc + (start_pos + t) * stride, row + (heads + kv_heads) * head_dim,
                static_cast<size_t>(stride) * sizeof(float));
  }

  const int64_t rows = seq * heads;
  const float* qp = q_rotated.data();
  float* op = out.mutable_data_ptr<float>();
  const float s = static_cast<float>(scale);
  const auto run = [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;
    scores.resize(static_cast<size_t>(start_pos + seq + 16));  // + the vector path's padding
    attend_rows(qp, kc, vc, op, begin, end, heads, kv_heads, head_dim, start_pos, s, scores.data());
  };
  // A decode step (one token: H rows over the cache) is a few microseconds of work: no hand-off.
  constexpr int64_t kMinMacsPerTask = int64_t{1} << 18;
  const int64_t macs = rows * (start_pos + (seq + 1) / 2) * head_dim * 2;
  if (macs < 2 * kMinMacsPerTask) {
    run(0, rows);
  } else {
    const int64_t grain = std::max<int64_t>(1, rows * kMinMacsPerTask / macs);
    et::parallel_rows(rows, grain, run);
  }
  return out;
}

}  // namespace llm
}  // namespace otaro

EXECUTORCH_LIBRARY(otaro_llm, "rms_norm.out", otaro::llm::rms_norm_out);
EXECUTORCH_LIBRARY(otaro_llm, "rotary_heads.out", otaro::llm::rotary_heads_out);
EXECUTORCH_LIBRARY(otaro_llm, "swiglu.out", otaro::llm::swiglu_out);
EXECUTORCH_LIBRARY(otaro_llm, "kv_attention.out", otaro::llm::kv_attention_out);
