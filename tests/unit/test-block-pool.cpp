// Tests of the KV block pool: budget accounting, capacity, all-or-nothing
// allocation, reference counts, memory layout and concurrent use.
#include <atomic>
#include <cstring>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "kv/block-pool.hpp"

// cmocka last: its fail()/skip() macros clash with names in C++ headers.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include <cmocka.h>
}

using kvrt::BlockPool;
using kvrt::MemoryBudget;

namespace {

// Allocates blocks one at a time until the pool refuses; returns their ids.
std::vector<uint32_t> drain(BlockPool& pool) {
  std::vector<uint32_t> ids;
  uint32_t id;
  while (pool.alloc(1, &id)) ids.push_back(id);
  return ids;
}

void test_budget_reserve(void**) {
  MemoryBudget b(100);
  assert_true(b.try_reserve(60));
  assert_false(b.try_reserve(41));
  assert_true(b.try_reserve(40));
  assert_int_equal(b.used(), 100);
  assert_false(b.try_reserve(1));
  b.release(100);
  assert_int_equal(b.used(), 0);
  // A huge request must not wrap around the limit check.
  assert_false(b.try_reserve(UINT64_MAX));
}

void test_alloc_release_refcount(void**) {
  MemoryBudget budget(1 << 20);
  BlockPool pool(500, 2, budget);
  assert_int_equal(pool.block_bytes(), 1000);  // what the budget counts: no padding
  assert_int_equal(pool.part_bytes(), 500);
  assert_int_equal(pool.n_parts(), 2);
  uint32_t ids[3];
  assert_true(pool.alloc(3, ids));
  assert_int_equal(pool.blocks_in_use(), 3);
  assert_int_equal(budget.used(), 3 * 1000);
  assert_true(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
  for (uint32_t id : ids) assert_int_equal(pool.refcount(id), 1);

  pool.retain(ids[1]);
  assert_int_equal(pool.refcount(ids[1]), 2);
  pool.release(ids[1]);
  assert_int_equal(pool.refcount(ids[1]), 1);
  assert_int_equal(pool.blocks_in_use(), 3);  // still referenced once
  pool.release(ids[1]);
  assert_int_equal(pool.refcount(ids[1]), 0);
  assert_int_equal(pool.blocks_in_use(), 2);
  assert_int_equal(budget.used(), 2 * 1000);
  pool.release(ids[0]);
  pool.release(ids[2]);
  assert_int_equal(pool.blocks_in_use(), 0);
  assert_int_equal(budget.used(), 0);
  assert_true(pool.alloc(0, nullptr));  // nothing asked, nothing taken
  assert_int_equal(pool.blocks_in_use(), 0);
}

// For budget B and block size S exactly floor(B/S) blocks fit, across slab
// boundaries, and the pool never holds more memory than the budget.
void test_capacity_exact(void**) {
  struct Case {
    uint64_t budget;
    size_t part;
    uint32_t n_parts;
  } cases[] = {
      {10 * 1024 + 5, 1024, 1},          // small: one partial slab
      {(8u << 20) + 4095, 4096, 1},      // several 2 MiB slabs
      {(5u << 20) + 100, 3000, 1},       // block not a multiple of 64, slab not a multiple of block
      {(7u << 20), (3u << 20) + 1, 1},   // blocks larger than a slab target
      {64, 64, 1},                       // exactly one block
      {(6u << 20) + 999, 1056, 5},       // parts: a short last slab
      {(3u << 20) + 1, 333, 12},         // odd parts
      {(7u << 20), (1u << 20) + 3, 3},   // parts larger than a slab target
  };
  for (const Case& c : cases) {
    MemoryBudget budget(c.budget);
    BlockPool pool(c.part, c.n_parts, budget);
    size_t s = pool.block_bytes();
    assert_int_equal(s, c.part * c.n_parts);
    assert_int_equal(pool.part_stride() % 64, 0);
    std::vector<uint32_t> ids = drain(pool);
    assert_int_equal(ids.size(), c.budget / s);
    assert_int_equal(pool.blocks_in_use(), c.budget / s);
    assert_true(pool.reserved_bytes() <= c.budget);
    assert_int_equal(pool.reserved_bytes(), ids.size() * s);
    std::set<uint32_t> uniq(ids.begin(), ids.end());
    assert_int_equal(uniq.size(), ids.size());
    for (uint32_t id : ids) pool.release(id);
    assert_int_equal(budget.used(), 0);
  }
}

void test_all_or_nothing(void**) {
  MemoryBudget budget(10 * 256);
  BlockPool pool(256, 1, budget);
  uint32_t ids[16];
  assert_true(pool.alloc(7, ids));
  uint32_t more[4] = {BlockPool::kNoBlock, BlockPool::kNoBlock, BlockPool::kNoBlock,
                      BlockPool::kNoBlock};
  assert_false(pool.alloc(4, more));
  assert_int_equal(pool.blocks_in_use(), 7);
  assert_int_equal(budget.used(), 7 * 256);
  assert_true(pool.alloc(3, ids + 7));
  assert_int_equal(pool.blocks_in_use(), 10);
  assert_false(pool.alloc(1, more));
  for (int i = 0; i < 10; ++i) pool.release(ids[i]);
  assert_int_equal(pool.blocks_in_use(), 0);
  assert_int_equal(budget.used(), 0);
  assert_true(pool.alloc(10, ids));
  for (int i = 0; i < 10; ++i) pool.release(ids[i]);
}

void test_shared_budget_two_pools(void**) {
  MemoryBudget budget(10000);
  BlockPool a(512, 2, budget);  // 1024-byte blocks
  BlockPool b(64, 4, budget);   // 256-byte blocks
  uint32_t ida[16], idb[64];
  assert_true(a.alloc(5, ida));  // 5120 used
  assert_int_equal(budget.used(), 5120);
  // 4880 left: 19 blocks of 256 fit, 20 do not.
  assert_false(b.alloc(20, idb));
  assert_int_equal(budget.used(), 5120);
  assert_true(b.alloc(19, idb));
  assert_int_equal(budget.used(), 5120 + 19 * 256);
  uint32_t x;
  assert_false(a.alloc(1, &x));  // 16 bytes left
  assert_false(b.alloc(1, &x));
  b.release(idb[0]);
  b.release(idb[1]);
  b.release(idb[2]);
  b.release(idb[3]);  // 1040 free now
  assert_true(a.alloc(1, &x));
  assert_int_equal(budget.used(), 6 * 1024 + 15 * 256);
  a.release(x);
  for (int i = 0; i < 5; ++i) a.release(ida[i]);
  for (int i = 4; i < 19; ++i) b.release(idb[i]);
  assert_int_equal(budget.used(), 0);
}

void test_reuse_freed(void**) {
  MemoryBudget budget(1 << 20);
  BlockPool pool(4096, 1, budget);
  uint32_t ids[32];
  assert_true(pool.alloc(32, ids));
  size_t reserved = pool.reserved_bytes();
  std::set<uint32_t> first(ids, ids + 32);
  for (int round = 0; round < 50; ++round) {
    for (int i = 0; i < 32; ++i) pool.release(ids[i]);
    assert_true(pool.alloc(32, ids));
    assert_true(std::set<uint32_t>(ids, ids + 32) == first);  // the same blocks come back
    assert_int_equal(pool.reserved_bytes(), reserved);        // no new slab
  }
  for (int i = 0; i < 32; ++i) pool.release(ids[i]);
}

// Every block's parts are part-sized, part_stride apart and disjoint from
// all other blocks' parts: a pattern written to every part of every block
// survives writes to all the others. With parts a multiple of 64 bytes,
// every part is 64-aligned.
void check_parts(BlockPool& pool, const std::vector<uint32_t>& ids, std::vector<uint8_t*>& ptrs) {
  const size_t pb = pool.part_bytes(), st = pool.part_stride();
  assert_int_equal(st % 64, 0);
  assert_true(st >= pb);
  auto val = [](uint32_t id, uint32_t part, size_t j) { return static_cast<uint8_t>(id * 31 + part * 13 + j * 7 + 1); };
  for (uint32_t id : ids) {
    uint8_t* p = pool.data(id);
    assert_non_null(p);
    if (pb % 64 == 0) assert_int_equal(reinterpret_cast<uintptr_t>(p) % 64, 0);
    for (uint32_t k = 0; k < pool.n_parts(); ++k)
      for (size_t j = 0; j < pb; ++j) p[k * st + j] = val(id, k, j);
    ptrs.push_back(p);
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    assert_ptr_equal(pool.data(ids[i]), ptrs[i]);  // stable
    for (uint32_t k = 0; k < pool.n_parts(); ++k)
      for (size_t j = 0; j < pb; ++j)
        if (ptrs[i][k * st + j] != val(ids[i], k, j)) fail_msg("block %u part %u clobbered at %zu", ids[i], k, j);
  }
  // Parts of neighbouring ids in a slab are back to back: one layer's parts
  // of consecutive blocks form one run.
  std::set<uint32_t> have(ids.begin(), ids.end());
  size_t adjacent = 0;
  for (size_t i = 0; i < ids.size(); ++i)
    if (have.count(ids[i] + 1) && pool.data(ids[i] + 1) == ptrs[i] + pb) ++adjacent;
  assert_true(adjacent >= ids.size() / 2);
}

void test_pointers_layout(void**) {
  {
    MemoryBudget budget((5u << 20) + 7);
    BlockPool pool(333, 7, budget);  // odd parts, a short last slab
    std::vector<uint32_t> ids = drain(pool);
    std::vector<uint8_t*> ptrs;
    assert_true(ids.size() > 2000);
    check_parts(pool, ids, ptrs);
    for (uint32_t id : ids) pool.release(id);
  }
  MemoryBudget budget((9u << 20) + 7);
  BlockPool pool(25024, 4, budget);  // several blocks per slab, several slabs
  std::vector<uint32_t> ids = drain(pool);
  assert_true(ids.size() > 40);
  std::vector<uint8_t*> ptrs;
  check_parts(pool, ids, ptrs);
  // Releasing and reallocating keeps the other blocks' memory where it was.
  pool.release(ids[3]);
  uint32_t again;
  assert_true(pool.alloc(1, &again));
  assert_int_equal(again, ids[3]);
  assert_ptr_equal(pool.data(again), ptrs[3]);
  for (uint32_t id : ids) pool.release(id);
  assert_int_equal(budget.used(), 0);
}

void test_budget_below_one_block(void**) {
  MemoryBudget budget(4000);
  BlockPool pool(4096, 1, budget);
  uint32_t id = BlockPool::kNoBlock;
  assert_false(pool.alloc(1, &id));
  assert_int_equal(id, BlockPool::kNoBlock);
  assert_int_equal(pool.reserved_bytes(), 0);
  assert_int_equal(budget.used(), 0);
  assert_null(pool.data(0));
}

// Releasing a free block or an id out of range is a caller bug: debug
// builds assert, release builds must ignore it without damaging the pool.
void test_bad_release_ignored(void**) {
#ifdef NDEBUG
  MemoryBudget budget(8 * 128);
  BlockPool pool(128, 1, budget);
  uint32_t ids[8];
  assert_true(pool.alloc(2, ids));
  pool.release(ids[1]);
  pool.release(ids[1]);      // already free
  pool.release(1000000);     // out of range
  pool.release(BlockPool::kNoBlock);
  pool.retain(ids[1]);       // free: must not resurrect it
  assert_int_equal(pool.refcount(ids[1]), 0);
  assert_int_equal(pool.blocks_in_use(), 1);
  assert_int_equal(budget.used(), 128);
  // The free list still hands out each block once.
  assert_true(pool.alloc(7, ids + 1));
  std::set<uint32_t> uniq(ids, ids + 8);
  assert_int_equal(uniq.size(), 8);
  uint32_t x;
  assert_false(pool.alloc(1, &x));
  for (uint32_t id : ids) pool.release(id);
  assert_int_equal(budget.used(), 0);
#else
  skip();  // the asserts fire by design in debug builds
#endif
}

// Threads allocate, share, write and release blocks concurrently; each
// thread's blocks must keep its data, and the counts must return to zero.
void test_concurrent(void**) {
  constexpr int kThreads = 4;
  constexpr int kIters = 100000;
  constexpr uint32_t kBlocks = 24;  // fewer than 4 threads may hold: exhaustion happens
  MemoryBudget budget(kBlocks * 512);
  BlockPool pool(128, 4, budget);
  std::atomic<int> errors{0};
  std::atomic<int> refusals{0};
  auto worker = [&](int t) {
    std::mt19937 rng(1234 + t);
    std::vector<uint32_t> held;
    for (int it = 0; it < kIters; ++it) {
      uint32_t n = 1 + rng() % 6;
      uint32_t ids[6];
      if (pool.alloc(n, ids)) {
        for (uint32_t i = 0; i < n; ++i) {
          uint32_t* p = reinterpret_cast<uint32_t*>(pool.data(ids[i]));
          uint32_t* last = reinterpret_cast<uint32_t*>(pool.data(ids[i]) + 3 * pool.part_stride());
          p[0] = ids[i];
          p[1] = static_cast<uint32_t>(t);
          last[31] = ids[i] ^ static_cast<uint32_t>(it);
          last[30] = static_cast<uint32_t>(it);
          if (rng() % 4 == 0) {  // a second reference, dropped later
            pool.retain(ids[i]);
            held.push_back(ids[i]);
          }
          held.push_back(ids[i]);
        }
      } else {
        refusals.fetch_add(1, std::memory_order_relaxed);
      }
      while (held.size() > 12 || (!held.empty() && rng() % 3 == 0)) {
        size_t k = rng() % held.size();
        uint32_t id = held[k];
        const uint32_t* p = reinterpret_cast<const uint32_t*>(pool.data(id));
        const uint32_t* last = reinterpret_cast<const uint32_t*>(pool.data(id) + 3 * pool.part_stride());
        if (p[0] != id || p[1] != static_cast<uint32_t>(t) || (last[31] ^ last[30]) != id) errors.fetch_add(1);
        held[k] = held.back();
        held.pop_back();
        pool.release(id);
      }
      if (pool.blocks_in_use() > kBlocks) errors.fetch_add(1);
    }
    for (uint32_t id : held) pool.release(id);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& th : threads) th.join();
  assert_int_equal(errors.load(), 0);
  assert_int_equal(pool.blocks_in_use(), 0);
  assert_int_equal(budget.used(), 0);
  assert_true(pool.reserved_bytes() <= kBlocks * 512);  // 4 parts of 128
  assert_true(refusals.load() > 0);  // the budget really was contended
  // Every block is free and distinct again.
  std::vector<uint32_t> all = drain(pool);
  assert_int_equal(all.size(), kBlocks);
  assert_int_equal(std::set<uint32_t>(all.begin(), all.end()).size(), kBlocks);
  for (uint32_t id : all) pool.release(id);
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_budget_reserve),
      cmocka_unit_test(test_alloc_release_refcount),
      cmocka_unit_test(test_capacity_exact),
      cmocka_unit_test(test_all_or_nothing),
      cmocka_unit_test(test_shared_budget_two_pools),
      cmocka_unit_test(test_reuse_freed),
      cmocka_unit_test(test_pointers_layout),
      cmocka_unit_test(test_budget_below_one_block),
      cmocka_unit_test(test_bad_release_ignored),
      cmocka_unit_test(test_concurrent),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
