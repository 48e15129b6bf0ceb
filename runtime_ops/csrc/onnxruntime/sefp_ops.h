// The onnxruntime custom ops of the SEFP library (docs/FORMAT.md §5):
//
// ai.otaro::SEFPLinear(X, P0, P1, P2, P3, E, bits[, B[, L]]) -> Y
//   X float32 [..., K]; P0..P3 uint8 planes, E int8 [N, G]; bits int64 0-dim (3..8);
//   B float32 [N] (may be the empty name when L is given); L float32 [6, 256] levels.
//   Y float32 [..., N] = X @ W_bits^T (+ B), same as torch.ops.otaro.sefp_linear.
// ai.otaro::SEFPEmbedding(ids, P0, P1, P2, P3, E, bits[, L]) -> Y, attribute in_features (int)
//   ids int64, any shape, each in [0, N). Y float32 [*ids.shape, in_features]: rows of W_bits.
#pragma once

#include "onnxruntime/ort_abi.h"

namespace otaro_ort {

constexpr const char* kDomain = "ai.otaro";

// The op descriptions handed to onnxruntime; static objects that live as long as the library.
// Hidden: the library exports only its C entry points (register.cc).
__attribute__((visibility("hidden"))) const OrtCustomOp* sefp_linear_custom_op();
__attribute__((visibility("hidden"))) const OrtCustomOp* sefp_embedding_custom_op();

}  // namespace otaro_ort
