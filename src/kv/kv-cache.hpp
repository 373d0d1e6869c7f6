// One session's KV cache: its block table over a shared BlockPool.
#pragma once

#include <cstdint>
#include <vector>

#include "../../kernels/common/kv-layout.h"
#include "kv/block-pool.hpp"

namespace kvrt {

// Where one block's bytes are, piece by piece in the order of its one-piece
// form (kv-layout.h: per layer, each KV head's K part, then each one's V
// part; what snapshots store), at the offsets `lay` gives
// (kv_k_offset, kv_v_offset) from base. A block in one piece (a
// snapshot's, the stage) is one piece of all its bytes.
struct BlockRuns {
  uint8_t* base;
  kvrt_k::KvLayout lay;

  static BlockRuns whole(uint8_t* p, size_t bytes) {
    kvrt_k::KvLayout l{};
    l.n_layer = l.n_head_kv = 1;
    l.k_head_bytes = l.layer_bytes = l.block_bytes = bytes;
    kvrt_k::kv_layout_one_piece(&l);
    return {p, l};
  }
  static BlockRuns of(uint8_t* p, const kvrt_k::KvLayout& l) { return {p, l}; }
  size_t bytes() const { return lay.block_bytes; }
  // f(piece, bytes) for each non-empty piece, in one-piece order.
  template <class F>
  void for_each(F&& f) const {
    for (uint32_t l = 0; l < lay.n_layer; ++l) {
      if (lay.k_head_bytes)
        for (uint32_t h = 0; h < lay.n_head_kv; ++h)
          f(base + kvrt_k::kv_k_offset(lay, l, h), lay.k_head_bytes);
      if (lay.v_head_bytes)
        for (uint32_t h = 0; h < lay.n_head_kv; ++h)
          f(base + kvrt_k::kv_v_offset(lay, l, h), lay.v_head_bytes);
    }
  }
  // Copies the block out to / in from its one-piece form.
  void gather(uint8_t* dst) const;
  void scatter(const uint8_t* src) const;
  void clear() const;  // every byte 0
};

class KvCache {
 public:
  // The pool's blocks must have the layout's shape: a part per (layer, KV
  // head) of kv_head_part_bytes(layout); layout() has the pool's strides
  // (kv_layout_head_parts).
  KvCache(BlockPool& pool, const kvrt_k::KvLayout& layout, uint32_t n_ctx);
  ~KvCache();  // releases every block
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const kvrt_k::KvLayout& layout() const { return layout_; }
  // The layout of a block in its one-piece form (BlockRuns::gather).
  kvrt_k::KvLayout stored_layout() const {
    kvrt_k::KvLayout l = layout_;
    kvrt_k::kv_layout_one_piece(&l);
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
  // The pieces of logical block `logical` in the pool.
  BlockRuns block_runs(uint32_t logical) const { return BlockRuns::of(ptrs_[logical], layout_); }
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
