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

// Hands out blocks of one shape: n_parts parts of part_bytes each (a KV
// block's parts are its (layer, KV head) pairs, K then V: kv-layout.h).
// Thread-safe. Block ids are dense (0, 1, ...) and a block's memory never
// moves while the pool lives.
//
// A slab of B blocks keeps part p of all its blocks side by side:
// [part 0 of blocks 0..B-1][part 1 of blocks 0..B-1]..., each run padded to
// 64 bytes. The attention task of one layer and KV head then reads its
// neighbouring blocks' parts as one run instead of one part per block
// spread a whole block (or a whole layer) apart (docs/benchmarks.md,
// "The head-major pool").
class BlockPool {
 public:
  static constexpr uint32_t kNoBlock = UINT32_MAX;

  // part_bytes 0 is taken as 1; n_parts 0 as 1.
  BlockPool(size_t part_bytes, uint32_t n_parts, MemoryBudget& budget);
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

  // Part 0 of block `id`; part p is at data(id) + p * part_stride().
  uint8_t* data(uint32_t id) const;
  // Bytes a block holds and the budget counts: n_parts * part_bytes.
  size_t block_bytes() const { return part_bytes_ * n_parts_; }
  size_t part_bytes() const { return part_bytes_; }
  uint32_t n_parts() const { return n_parts_; }
  // From one part of a block to its next (a multiple of 64).
  size_t part_stride() const { return part_stride_; }
  const MemoryBudget& budget() const { return budget_; }
  size_t blocks_in_use() const;
  // Bytes of block memory the slabs held from the system provide (blocks
  // they can hold x block_bytes).
  size_t reserved_bytes() const;

 private:
  // ... implementation-defined: slabs, free list, refcounts
  struct Impl;
  std::unique_ptr<Impl> impl_;
  size_t part_bytes_;
  uint32_t n_parts_;
  size_t part_stride_ = 0;
  MemoryBudget& budget_;
};

}  // namespace kvrt
