#include "core/thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__linux__)
#include <pthread.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define OTARO_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define OTARO_CPU_RELAX() asm volatile("yield" ::: "memory")
#else
#define OTARO_CPU_RELAX() ((void)0)
#endif

namespace otaro {

namespace {
// Workers spin this long for the next job: decode runs one layer after
// another, microseconds apart. After that they sleep in timed naps that grow
// from kFirstNap to kLongestNap while idle. Callers never wake workers: on a
// busy machine a woken thread preempts its waker, which then waits for its
// next time slice (measured: milliseconds per call on an oversubscribed box).
// A job published while all workers nap runs on the caller alone.
constexpr auto kSpinTime = std::chrono::microseconds(1000);
constexpr auto kFirstNap = std::chrono::milliseconds(1);
constexpr auto kLongestNap = std::chrono::milliseconds(64);
constexpr int kMaxWorkers = 63;
[[maybe_unused]] constexpr char kWorkerName[] = "otaro-kernels";  // <= 15 characters (Linux)
}  // namespace

// Spin briefly, then yield: on an oversubscribed machine a spinning caller
// would hold the core the straggling worker needs.
static void wait_until_zero(const std::atomic<int>& counter) {
  for (int spins = 0; counter.load(std::memory_order_acquire) > 0; ++spins) {
    if (spins < 4096) {
      OTARO_CPU_RELAX();
    } else {
      std::this_thread::yield();
    }
  }
}

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

ThreadPool& ThreadPool::instance() {
  static ThreadPool pool;  // destroyed (workers joined) at exit or dlclose
  return pool;
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::ensure_workers(int count) {
  count = std::min(count, kMaxWorkers);
  try {
    while (static_cast<int>(workers_.size()) < count) {
      workers_.emplace_back([this] { worker_loop(); });
#if defined(__linux__)
      // named here, not in the thread (which may not have run yet): per-thread tools show it (top -H,
      // /proc/PID/task/*/comm), and tests count the pool's workers by it
      pthread_setname_np(workers_.back().native_handle(), kWorkerName);
#endif
    }
  } catch (...) {  // no more threads (or memory): run with the workers we have; the caller works anyway
  }
}

void ThreadPool::drain(Job& job) {
  for (;;) {
    const int t = job.next.fetch_add(1);
    if (t >= job.tasks) return;
    (*job.fn)(t);
    job.pending.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = generation_.load();
  auto nap = std::chrono::duration_cast<std::chrono::milliseconds>(kFirstNap);
  for (;;) {
    const auto spin_until = std::chrono::steady_clock::now() + kSpinTime;
    while (generation_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < spin_until) {
      for (int i = 0; i < 64; ++i) OTARO_CPU_RELAX();
    }
    Job* job = nullptr;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (generation_.load() == seen && !stop_) {
        wake_.wait_for(lock, nap, [&] { return generation_.load() != seen || stop_; });
      }
      if (stop_) return;
      if (generation_.load() == seen) {  // idle: nap longer next time
        nap = std::min(nap * 2, std::chrono::duration_cast<std::chrono::milliseconds>(kLongestNap));
        continue;
      }
      nap = kFirstNap;
      seen = generation_.load();
      job = job_;
      if (job && job->helpers < job->max_helpers) {  // pool may hold more workers than this job wants
        ++job->helpers;
        job->holders.fetch_add(1);
      } else {
        job = nullptr;
      }
    }
    if (job) {
      drain(*job);
      job->holders.fetch_sub(1, std::memory_order_acq_rel);
    }
  }
}

void ThreadPool::run(int threads, int tasks, const std::function<void(int)>& fn) {
  bool expected = false;
  if (threads <= 1 || tasks <= 1 || !busy_.compare_exchange_strong(expected, true)) {
    for (int t = 0; t < tasks; ++t) fn(t);
    return;
  }
  Job job;
  job.fn = &fn;
  job.tasks = tasks;
  job.max_helpers = threads - 1;
  job.pending.store(tasks);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ensure_workers(threads - 1);
    job_ = &job;
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }  // no notify: spinning workers see the new generation, napping ones at their next check
  drain(job);  // the caller also takes any task no worker has started yet
  wait_until_zero(job.pending);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = nullptr;  // no worker can pick this job up any more
  }
  wait_until_zero(job.holders);
  busy_.store(false);
}

}  // namespace otaro
