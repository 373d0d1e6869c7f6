// Tests of the thread pool: every task of a region runs exactly once, thread
// indices are in range and never shared by two running tasks, for pools of
// 1..4 threads, many short regions, regions after the workers fell asleep,
// and several application threads starting regions at the same time.
#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "util/thread-pool.hpp"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

using kvrt::ThreadPool;

namespace {

// Checks one region's invariants while it runs.
struct Region {
  explicit Region(unsigned n_tasks, unsigned n_threads)
      : runs(n_tasks), busy(n_threads) {}
  std::vector<std::atomic<int>> runs;    // times each task ran
  std::vector<std::atomic<int>> busy;    // tasks running under each thread index
  std::atomic<int> bad_thread{0};        // index out of range
  std::atomic<int> shared_thread{0};     // index used by two tasks at once

  void task(unsigned t, unsigned thread, unsigned spin) {
    if (thread >= busy.size()) {
      bad_thread.fetch_add(1);
      return;
    }
    if (busy[thread].fetch_add(1) != 0) shared_thread.fetch_add(1);
    // A little work so tasks overlap across threads.
    volatile unsigned sink = 0;
    for (unsigned i = 0; i < spin; ++i) sink = sink + i;
    busy[thread].fetch_sub(1);
    runs[t].fetch_add(1);
  }

  void check() const {
    assert_int_equal(bad_thread.load(), 0);
    assert_int_equal(shared_thread.load(), 0);
    for (size_t t = 0; t < runs.size(); ++t) {
      if (runs[t].load() != 1) {
        print_error("task %zu of %zu ran %d times\n", t, runs.size(), runs[t].load());
        fail();
      }
    }
  }
};

void run_region(ThreadPool& pool, unsigned n_tasks, unsigned spin) {
  Region r(n_tasks, pool.size());
  pool.run(n_tasks, [&](unsigned t, unsigned thread) { r.task(t, thread, spin); });
  r.check();
}

void test_sizes_and_counts(void** state) {
  (void)state;
  for (unsigned nt = 1; nt <= 4; ++nt) {
    ThreadPool pool(nt);
    assert_int_equal(pool.size(), nt);
    for (unsigned n : {0u, 1u, 2u, 3u, 4u, 5u, 7u, 16u, 63u, 257u, 1000u})
      for (unsigned spin : {0u, 200u, 5000u}) run_region(pool, n, spin);
  }
}

void test_zero_means_one_per_core(void** state) {
  (void)state;
  ThreadPool pool(0);
  assert_true(pool.size() >= 1);
  run_region(pool, 100, 100);
}

void test_many_short_regions(void** state) {
  (void)state;
  for (unsigned nt = 2; nt <= 4; ++nt) {
    ThreadPool pool(nt);
    std::atomic<uint64_t> sum{0};
    uint64_t want = 0;
    for (unsigned i = 0; i < 20000; ++i) {
      const unsigned n = 1 + i % 6;
      pool.run(n, [&](unsigned t, unsigned) { sum.fetch_add(uint64_t{i} * 8 + t); });
      for (unsigned t = 0; t < n; ++t) want += uint64_t{i} * 8 + t;
    }
    assert_true(sum.load() == want);
  }
}

void test_regions_after_sleep(void** state) {
  (void)state;
  ThreadPool pool(3);
  for (int i = 0; i < 3; ++i) {
    // Long enough for the workers to stop spinning and block.
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    run_region(pool, 50, 1000);
  }
}

void test_concurrent_callers(void** state) {
  (void)state;
  for (unsigned nt = 1; nt <= 4; ++nt) {
    ThreadPool pool(nt);
    for (unsigned callers = 2; callers <= 4; ++callers) {
      std::atomic<int> failures{0};
      std::vector<std::thread> apps;
      for (unsigned c = 0; c < callers; ++c) {
        apps.emplace_back([&pool, &failures, c] {
          for (unsigned i = 0; i < 300; ++i) {
            const unsigned n = 1 + (i * 7 + c) % 40;
            Region r(n, pool.size());
            pool.run(n, [&](unsigned t, unsigned thread) { r.task(t, thread, 50); });
            // Checked here, not with cmocka asserts, which are not thread-safe.
            bool ok = r.bad_thread.load() == 0 && r.shared_thread.load() == 0;
            for (auto& v : r.runs) ok = ok && v.load() == 1;
            if (!ok) failures.fetch_add(1);
          }
        });
      }
      for (auto& t : apps) t.join();
      assert_int_equal(failures.load(), 0);
    }
  }
}

void test_destroy_idle_and_busy(void** state) {
  (void)state;
  // Destroying a pool whose workers never ran, or just finished, must join
  // them without hanging.
  for (unsigned nt = 1; nt <= 4; ++nt) {
    { ThreadPool idle(nt); }
    auto pool = std::make_unique<ThreadPool>(nt);
    run_region(*pool, 10, 100);
    pool.reset();
  }
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sizes_and_counts),   cmocka_unit_test(test_zero_means_one_per_core),
      cmocka_unit_test(test_many_short_regions), cmocka_unit_test(test_regions_after_sleep),
      cmocka_unit_test(test_concurrent_callers), cmocka_unit_test(test_destroy_idle_and_busy),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
