// One session's KV cache: its block table over a shared BlockPool.
#pragma once

#include <cstdint>
#include <vector>

#include "../../kernels/common/kv-layout.h"
#include "kv/block-pool.hpp"

namespace kvrt {

// Where one block's bytes are: n_parts runs of part_bytes, stride apart. A
// block in one piece (a snapshot's, the stage) is one run. Byte o of the
// block in its contiguous form (the order of kv-layout.h with layer_stride =
// layer_bytes: what snapshots store) is at
// base + (o / part_bytes) * stride + o % part_bytes.
struct BlockRuns {
  uint8_t* base;
  size_t part_bytes;
  size_t stride;
  uint32_t n_parts;

  static BlockRuns whole(uint8_t* p, size_t bytes) { return {p, bytes, bytes, 1}; }
  size_t bytes() const { return part_bytes * n_parts; }
  uint8_t* part(uint32_t i) const { return base + i * stride; }
  // Copies the block out to / in from its contiguous form.
  void gather(uint8_t* dst) const;
  void scatter(const uint8_t* src) const;
  void clear() const;  // every byte 0
};

class KvCache {
 public:
  // The pool's blocks must have the layout's shape (a part per layer of
  // layout.layer_bytes); layout().layer_stride is the pool's part stride.
  KvCache(BlockPool& pool, const kvrt_k::KvLayout& layout, uint32_t n_ctx);
  ~KvCache();  // releases every block
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const kvrt_k::KvLayout& layout() const { return layout_; }
  // The layout of a block in its contiguous form (BlockRuns::gather).
  kvrt_k::KvLayout stored_layout() const {
    kvrt_k::KvLayout l = layout_;
    l.layer_stride = l.layer_bytes;
    return l;
  }
  uint32_t n_tokens() const { return n_tokens_; }
  uint32_t n_ctx() const { return n_ctx_; }
  uint32_t n_blocks() const { return static_cast<uint32_t>(ids_.size()); }

  // Makes positions [n_tokens, n_tokens + n) writable: takes the missing
  // blocks from the pool (all or none) and copies a shared tail block first.
  // Throws Error: KVRT_ERR_CONTEXT_FULL past n_ctx, KVRT_ERR_OUT_OF_MEMORY
  // when the pool refuses; the cache is unchanged then.
  void reserve(uint32_t n);
  // Counts n more positions as filled (after reserve(n) and writing them).
  void commit(uint32_t n);
  // Keeps the first n positions; blocks past them go back to the pool.
  void truncate(uint32_t n);
  // Drops this cache's blocks and references the first n_tokens positions
  // of `other` (same pool and layout): a fork. Shared blocks are copied by
  // whichever cache writes into them first (reserve). Throws Error:
  // KVRT_ERR_OUT_OF_RANGE (n_tokens > other.n_tokens()), KVRT_ERR_CONTEXT_FULL
  // (> n_ctx), KVRT_ERR_INVALID_ARGUMENT (other pool/layout); unchanged then.
  void share_from(const KvCache& other, uint32_t n_tokens);

  // Base pointer of each logical block, in order (valid until the next
  // reserve or truncate).
  const uint8_t* const* block_ptrs() const { return ptrs_.data(); }
  uint8_t* block_ptr(uint32_t logical) const { return ptrs_[logical]; }
  // The runs of logical block `logical` (layer parts, layout().layer_stride
  // apart).
  BlockRuns block_runs(uint32_t logical) const {
    return {ptrs_[logical], layout_.layer_bytes, layout_.layer_stride, layout_.n_layer};
  }
  const std::vector<uint32_t>& block_ids() const { return ids_; }
  uint64_t bytes() const { return static_cast<uint64_t>(ids_.size()) * layout_.block_bytes; }

 private:
  BlockPool& pool_;
  kvrt_k::KvLayout layout_;
  uint32_t n_ctx_;
  uint32_t n_tokens_ = 0;
  std::vector<uint32_t> ids_;
  std::vector<uint8_t*> ptrs_;
};

}  // namespace kvrt
