// One session's KV cache: its block table over a shared BlockPool.
#pragma once

#include <cstdint>
#include <vector>

#include "../../kernels/common/kv-layout.h"
#include "kv/block-pool.hpp"

namespace kvrt {

class KvCache {
 public:
  // `layout.block_bytes` must not exceed pool.block_bytes().
  KvCache(BlockPool& pool, const kvrt_k::KvLayout& layout, uint32_t n_ctx);
  ~KvCache();  // releases every block
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const kvrt_k::KvLayout& layout() const { return layout_; }
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
