// A persistent thread pool for the short parallel regions of a decode step:
// workers spin briefly between regions, then sleep.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace kvrt {

class ThreadPool {
 public:
  // n_threads counts the calling thread; 0 means one per core.
  explicit ThreadPool(unsigned n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  unsigned size() const { return n_threads_; }

  // Runs f(task, thread) for every task in [0, n_tasks) and returns when all
  // are done. `thread` is in [0, size()) and unique among concurrent calls of
  // f, so it can index per-thread scratch. Regions from different callers are
  // serialized. f must not throw.
  template <class F>
  void run(unsigned n_tasks, F&& f) {
    run_impl(n_tasks, [](void* ctx, unsigned task, unsigned thread) {
      (*static_cast<std::remove_reference_t<F>*>(ctx))(task, thread);
    }, &f);
  }

 private:
  using TaskFn = void (*)(void*, unsigned, unsigned);
  void run_impl(unsigned n_tasks, TaskFn fn, void* ctx);
  void worker(unsigned index);
  void work(unsigned thread);

  unsigned n_threads_;
  std::vector<std::thread> threads_;
  std::mutex region_mutex_;  // one region at a time
  // The current region. Tasks are claimed by compare-and-swap on `claim_`
  // (task count in the high half, next task in the low half), so a claim
  // succeeds only while the region it belongs to is open, and the caller
  // waits for claimed tasks only (`pending_`), never for a worker that the
  // OS has not scheduled yet.
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  alignas(64) std::atomic<uint64_t> claim_{0};
  alignas(64) std::atomic<unsigned> pending_{0};
  alignas(64) std::atomic<uint32_t> generation_{0};  // bumped to wake workers
  std::atomic<bool> stop_{false};
};

}  // namespace kvrt
