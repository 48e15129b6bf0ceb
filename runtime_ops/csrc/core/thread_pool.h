// A small persistent thread pool for the SEFP kernels (one per library).
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace otaro {

int hardware_threads();

class ThreadPool {
 public:
  static ThreadPool& instance();

  // Runs fn(0), ..., fn(tasks - 1) on `threads` threads (the caller is one of
  // them; tasks are handed out dynamically) and returns when all are done. If
  // the pool is already busy (a concurrent or nested call), everything runs on
  // the caller: never more threads than asked for.
  void run(int threads, int tasks, const std::function<void(int)>& fn);

  ~ThreadPool();

 private:
  ThreadPool() = default;
  // One run() call; lives on the caller's stack until no worker holds it.
  struct Job {
    const std::function<void(int)>* fn;
    int tasks;
    std::atomic<int> next{0};
    std::atomic<int> pending{0};
    std::atomic<int> holders{0};  // workers that may still touch this Job
    int max_helpers = 0;          // workers allowed to join (guarded by mutex_)
    int helpers = 0;              // workers that joined (guarded by mutex_)
  };

  void ensure_workers(int count);
  void worker_loop();
  static void drain(Job& job);

  std::mutex mutex_;
  std::condition_variable wake_;  // only for shutdown; workers nap with a timeout
  std::vector<std::thread> workers_;
  std::atomic<bool> busy_{false};
  std::atomic<uint64_t> generation_{0};
  Job* job_ = nullptr;  // guarded by mutex_
  bool stop_ = false;
};

// Runs fn(begin, end) over [0, total) in slices of `slice` items (the last one may be shorter) on up to
// `threads` threads of the pool; with one thread, or one slice, fn(0, total) runs on the caller. The
// callers choose the slice: a few per thread (the SEFP kernels, sefp_kernel.cc) or a grain of work
// (the ExecuTorch attention kernel, executorch/kernel_threads.h).
template <typename Fn>
void parallel_slices(int64_t total, int64_t slice, int64_t threads, const Fn& fn) {
  if (total <= 0) return;
  constexpr int64_t kMaxTasks = int64_t{1} << 20;  // the pool counts tasks in an int: wider slices beyond
  slice = std::max<int64_t>({1, slice, (total + kMaxTasks - 1) / kMaxTasks});
  const int64_t tasks = (total + slice - 1) / slice;
  if (threads <= 1 || tasks == 1) {
    fn(int64_t{0}, total);
    return;
  }
  ThreadPool::instance().run(static_cast<int>(std::min(threads, tasks)), static_cast<int>(tasks), [&](int t) {
    const int64_t begin = t * slice;
    fn(begin, std::min(total, begin + slice));
  });
}

}  // namespace otaro
