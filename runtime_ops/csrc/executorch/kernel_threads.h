// Threads of the project's ExecuTorch kernels (sefp_linear_kernel.cc, llm_ops_kernel.cc): they split
// their work over the core's own pool (core/thread_pool.h), sized as the session sized ExecuTorch's
// pool (Python: _unsafe_reset_threadpool; without ExecuTorch's pool, e.g. the aarch64 library, the
// core's default: $OTARO_NUM_THREADS or the cores, at most 4).
//
// Why not ExecuTorch's pool: in a fused program nothing else runs on it, and our kernels are called
// microseconds apart, one after another through a decode step. The core's workers spin between those
// calls; ExecuTorch's second thread was measured idle for 16-23% of an E5M3 decode of the default
// model, and the same program decoded 1.03-1.17x faster on the core's pool (paired, one process).
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/sefp_kernel.h"
#include "core/thread_pool.h"

#ifdef ET_USE_THREADPOOL
#include <executorch/runtime/kernel/thread_parallel_interface.h>
#endif

namespace otaro {
namespace et {

// Threads a kernel call may use.
inline int kernel_threads() {
#ifdef ET_USE_THREADPOOL
  const int64_t n = executorch::extension::get_thread_count();
  if (n > 0) return static_cast<int>(std::min<int64_t>(n, 64));
#endif
  return default_num_threads();
}

// Runs fn(begin, end) over [0, total) in slices of `grain` on kernel_threads() threads of the core's pool.
template <typename Fn>
void parallel_rows(int64_t total, int64_t grain, const Fn& fn) {
  parallel_slices(total, grain, kernel_threads(), fn);
}

}  // namespace et
}  // namespace otaro
