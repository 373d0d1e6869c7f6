// The KV block pool: slabs cut into fixed-size blocks, an O(1) free list,
// reference counts, and a byte budget shared by every pool of a runtime.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace kvrt {

// Bytes of KV blocks in use across all pools of a runtime, against a limit.
class MemoryBudget {
 public:
  explicit MemoryBudget(uint64_t limit_bytes) : limit_(limit_bytes) {}
  // Reserves `bytes` if the total stays within the limit.
  bool try_reserve(uint64_t bytes);
  void release(uint64_t bytes);
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }
  uint64_t limit() const { return limit_; }

 private:
  std::atomic<uint64_t> used_{0};
  const uint64_t limit_;
};

// Hands out blocks of one byte size. Thread-safe. Block ids are dense
// (0, 1, ...) and a block's memory never moves while the pool lives.
class BlockPool {
 public:
  static constexpr uint32_t kNoBlock = UINT32_MAX;

  // `block_bytes` is rounded up to 64 for alignment of every block.
  BlockPool(size_t block_bytes, MemoryBudget& budget);
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // Takes n blocks, each with reference count 1, all or none. Returns false
  // (and takes nothing) when the budget or the system refuses.
  bool alloc(uint32_t n, uint32_t* ids);
  void retain(uint32_t id);
  // Drops one reference; the block returns to the free list at zero.
  void release(uint32_t id);
  uint32_t refcount(uint32_t id) const;

  uint8_t* data(uint32_t id) const;
  size_t block_bytes() const { return block_bytes_; }
  const MemoryBudget& budget() const { return budget_; }
  size_t blocks_in_use() const;
  // Bytes of slabs held from the system.
  size_t reserved_bytes() const;

 private:
  // ... implementation-defined: slabs, free list, refcounts
  struct Impl;
  std::unique_ptr<Impl> impl_;
  size_t block_bytes_;
  MemoryBudget& budget_;
};

}  // namespace kvrt
