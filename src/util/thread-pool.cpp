// Thread pool implementation: a generation counter announces each region;
// tasks are claimed with an atomic counter; workers check in when done.
#include "util/thread-pool.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KVRT_PAUSE() _mm_pause()
#else
#define KVRT_PAUSE() ((void)0)
#endif

namespace kvrt {

// Spin iterations before a worker sleeps: long enough to bridge the gaps
// between the parallel regions of one decode step (microseconds), short
// enough not to burn a core while the application is idle.
static constexpr int kSpinIterations = 1 << 15;

ThreadPool::ThreadPool(unsigned n_threads) {
  if (n_threads == 0) n_threads = std::max(1u, std::thread::hardware_concurrency());
  n_threads_ = n_threads;
  threads_.reserve(n_threads - 1);
  for (unsigned i = 1; i < n_threads; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::work(unsigned thread) {
  uint64_t c = claim_.load(std::memory_order_acquire);
  for (;;) {
    const uint32_t n = static_cast<uint32_t>(c >> 32), next = static_cast<uint32_t>(c);
    if (next >= n) return;
    if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel,
                                      std::memory_order_acquire))
      continue;
    // The claim keeps the region open (pending_ > 0), so fn_ and ctx_ hold.
    fn_(ctx_, next, thread);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
    c = claim_.load(std::memory_order_acquire);
  }
}

void ThreadPool::worker(unsigned index) {
  uint32_t seen = 0;
  for (;;) {
    uint32_t g = generation_.load(std::memory_order_acquire);
    for (int i = 0; g == seen && i < kSpinIterations; ++i) {
      KVRT_PAUSE();
      g = generation_.load(std::memory_order_acquire);
    }
    if (g == seen) {
      generation_.wait(seen, std::memory_order_acquire);
      continue;
    }
    seen = g;
    if (stop_.load(std::memory_order_acquire)) return;
    work(index);
  }
}

void ThreadPool::run_impl(unsigned n_tasks, TaskFn fn, void* ctx) {
  if (n_tasks == 0) return;
  if (n_threads_ == 1 || n_tasks == 1) {
    for (unsigned t = 0; t < n_tasks; ++t) fn(ctx, t, 0);
    return;
  }
  std::lock_guard<std::mutex> lock(region_mutex_);
  fn_ = fn;
  ctx_ = ctx;
  pending_.store(n_tasks, std::memory_order_relaxed);
  claim_.store(static_cast<uint64_t>(n_tasks) << 32, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  work(0);
  // Only tasks a worker has claimed remain; wait for them, yielding if the
  // worker has been preempted.
  for (int i = 0; pending_.load(std::memory_order_acquire) != 0; ++i) {
    if (i < kSpinIterations) KVRT_PAUSE();
    else std::this_thread::yield();
  }
}

}  // namespace kvrt
