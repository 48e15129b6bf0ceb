// The facts of the SEFP storage format every native reader shares (docs/FORMAT.md §1, §3, §4).
//
// The ONE C++ home of the plane byte table: the kernel core, the onnxruntime op and
// the ExecuTorch kernels read it from here. Its Python twin is
// otaro_export/packing.py PLANE_BYTES_PER_GROUP; tests/otaro_export/test_packing.py
// parses this file and checks that the two agree.
#pragma once

#include <cstdint>

namespace otaro {

// Weights per group (one shared exponent each).
constexpr int64_t kGroupSize = 64;
constexpr int kNumPlanes = 4;
// Bytes plane p0..p3 holds per group of 64 weights.
constexpr int64_t kPlaneBytesPerGroup[kNumPlanes] = {32, 16, 16, 8};
// The lowest precision E5Mk that reads plane p0..p3.
constexpr int kPlaneMinBits[kNumPlanes] = {3, 4, 6, 8};
constexpr int kMinBits = 3;
constexpr int kMaxBits = 8;
// Reconstruction table (docs/FORMAT.md §3): float32 [kLevelsRows, kLevelsCols], row k - 3
// holds the magnitude of level j of E5Mk in M8 steps 2^(e-7).
constexpr int64_t kLevelsRows = kMaxBits - kMinBits + 1;
constexpr int64_t kLevelsCols = 256;

}  // namespace otaro
