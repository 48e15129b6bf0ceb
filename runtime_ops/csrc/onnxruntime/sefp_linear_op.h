// The onnxruntime custom op `ai.otaro::SEFPLinear` (DESIGN.md section 4).
//
// Inputs:  X float32 [..., K], P0 P1 P2 P3 uint8 planes, E int8 [N, G],
//          bits int64 0-dim (3..8), optional B float32 [N].
// Output:  Y float32 [..., N] = X @ W_bits^T (+ B), same as torch.ops.otaro.sefp_linear.
#pragma once

#include "onnxruntime/ort_abi.h"

namespace otaro_ort {

constexpr const char* kDomain = "ai.otaro";
constexpr const char* kOpName = "SEFPLinear";

// The op description handed to onnxruntime; a static object that lives as long as the library.
// Hidden: the library exports only its C entry points (register.cc).
__attribute__((visibility("hidden"))) const OrtCustomOp* sefp_linear_custom_op();

}  // namespace otaro_ort
