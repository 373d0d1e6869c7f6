// One session's block table: reserve/commit/truncate over the shared pool,
// with copy-on-write of shared blocks before they are written.
#include "kv/kv-cache.hpp"

#include <cstring>

#include "util/error.hpp"

namespace kvrt {

void BlockRuns::gather(uint8_t* dst) const {
  for_each([&](const uint8_t* p, size_t n) {
    std::memcpy(dst, p, n);
    dst += n;
  });
}

void BlockRuns::scatter(const uint8_t* src) const {
  for_each([&](uint8_t* p, size_t n) {
    std::memcpy(p, src, n);
    src += n;
  });
}

void BlockRuns::clear() const {
  for_each([](uint8_t* p, size_t n) { std::memset(p, 0, n); });
}

KvCache::KvCache(BlockPool& pool, const kvrt_k::KvLayout& layout, uint32_t n_ctx)
    : pool_(pool), layout_(layout), n_ctx_(n_ctx) {
  if (layout.block_tokens == 0)
    fail(KVRT_ERR_INVALID_ARGUMENT, "KV layout: block_tokens is 0");
  if (kvrt_k::kv_head_part_bytes(layout) != pool.part_bytes() ||
      kvrt_k::kv_n_head_parts(layout) != pool.n_parts())
    fail(KVRT_ERR_INVALID_ARGUMENT,
         "KV layout: %u layers x %u KV heads of %zu bytes, "
         "but the pool's blocks are %u parts of %zu bytes",
         layout.n_layer, layout.n_head_kv, kvrt_k::kv_head_part_bytes(layout), pool.n_parts(),
         pool.part_bytes());
  kvrt_k::kv_layout_head_parts(&layout_, pool.part_stride());
  // Sized once so that reserve() never reallocates the table after taking
  // blocks (no leak on bad_alloc) and block_ptrs() stays put.
  size_t max_blocks = (static_cast<size_t>(n_ctx) + layout.block_tokens - 1) / layout.block_tokens;
  ids_.reserve(max_blocks);
  ptrs_.reserve(max_blocks);
}

KvCache::~KvCache() {
  for (uint32_t id : ids_) pool_.release(id);
}

void KvCache::reserve(uint32_t n) {
  if (n == 0) return;
  const uint32_t bt = layout_.block_tokens;
  uint64_t end = static_cast<uint64_t>(n_tokens_) + n;
  if (end > n_ctx_)
    fail(KVRT_ERR_CONTEXT_FULL, "context full: %u tokens cached + %u new = %llu > n_ctx %u",
         n_tokens_, n, static_cast<unsigned long long>(end), n_ctx_);
  const size_t have = ids_.size();
  const size_t need = static_cast<size_t>((end + bt - 1) / bt);
  const size_t fresh = need > have ? need - have : 0;

  // Existing blocks that the new positions write into and that another
  // session also references (share_from) are copied first; their fresh
  // copies are part of the same all-or-nothing allocation.
  const size_t first = n_tokens_ / bt;
  const size_t last = need < have ? need : have;  // exclusive
  // The decision is made once: another session may drop its reference in
  // the meantime, and copying a block that became exclusive is harmless.
  // Only the block holding position n_tokens is shared in practice, so the
  // common paths use the stack arrays and do not allocate.
  size_t cow_small[8];
  std::vector<size_t> cow_big;
  uint32_t n_shared = 0;
  for (size_t i = first; i < last; ++i) {
    if (pool_.refcount(ids_[i]) <= 1) continue;
    if (n_shared < 8) {
      cow_small[n_shared] = i;
    } else {
      if (n_shared == 8) cow_big.assign(cow_small, cow_small + 8);
      cow_big.push_back(i);
    }
    ++n_shared;
  }
  const size_t* cow = n_shared > 8 ? cow_big.data() : cow_small;
  const uint32_t total = static_cast<uint32_t>(fresh) + n_shared;
  uint32_t got_small[8];
  std::vector<uint32_t> got_big;
  uint32_t* got = got_small;
  if (total > 8) {
    got_big.resize(total);
    got = got_big.data();
  }
  if (!pool_.alloc(total, got)) {
    const MemoryBudget& b = pool_.budget();
    fail(KVRT_ERR_OUT_OF_MEMORY,
         "KV budget of %llu bytes exhausted: %u more blocks of %zu bytes needed, %llu bytes in use",
         static_cast<unsigned long long>(b.limit()), total, pool_.block_bytes(),
         static_cast<unsigned long long>(b.used()));
  }
  // Nothing below can fail: the table's capacity was reserved up front.
  uint32_t k = 0;
  for (; k < n_shared; ++k) {
    size_t i = cow[k];
    uint32_t old = ids_[i];
    uint32_t id = got[k];
    uint8_t* dst = pool_.data(id);
    for (uint32_t p = 0; p < pool_.n_parts(); ++p)
      std::memcpy(dst + p * pool_.part_stride(), ptrs_[i] + p * pool_.part_stride(), pool_.part_bytes());
    pool_.release(old);
    ids_[i] = id;
    ptrs_[i] = dst;
  }
  for (; k < total; ++k) {
    ids_.push_back(got[k]);
    ptrs_.push_back(pool_.data(got[k]));
  }
}

void KvCache::commit(uint32_t n) {
  uint64_t end = static_cast<uint64_t>(n_tokens_) + n;
  uint64_t writable = static_cast<uint64_t>(ids_.size()) * layout_.block_tokens;
  if (end > writable || end > n_ctx_)
    fail(KVRT_ERR_OUT_OF_RANGE, "KV commit of %u positions after %u: only %llu reserved", n,
         n_tokens_, static_cast<unsigned long long>(writable < n_ctx_ ? writable : n_ctx_));
  n_tokens_ = static_cast<uint32_t>(end);
}

void KvCache::truncate(uint32_t n) {
  if (n > n_tokens_)
    fail(KVRT_ERR_OUT_OF_RANGE, "KV truncate to %u positions: only %u cached", n, n_tokens_);
  size_t keep = (static_cast<size_t>(n) + layout_.block_tokens - 1) / layout_.block_tokens;
  while (ids_.size() > keep) {
    pool_.release(ids_.back());
    ids_.pop_back();
    ptrs_.pop_back();
  }
  n_tokens_ = n;
}

void KvCache::share_from(const KvCache& other, uint32_t n_tokens) {
  if (&other.pool_ != &pool_ || other.layout_.block_bytes != layout_.block_bytes ||
      other.layout_.block_tokens != layout_.block_tokens ||
      other.layout_.k_format != layout_.k_format || other.layout_.v_format != layout_.v_format)
    fail(KVRT_ERR_INVALID_ARGUMENT, "KV share: caches differ in pool or layout");
  if (n_tokens > other.n_tokens_)
    fail(KVRT_ERR_OUT_OF_RANGE, "KV share of %u positions: the source holds %u", n_tokens,
         other.n_tokens_);
  if (n_tokens > n_ctx_)
    fail(KVRT_ERR_CONTEXT_FULL, "KV share of %u positions exceeds n_ctx %u", n_tokens, n_ctx_);
  if (&other == this) {
    truncate(n_tokens);
    return;
  }
  size_t keep = (static_cast<size_t>(n_tokens) + layout_.block_tokens - 1) / layout_.block_tokens;
  // Retain first: the new blocks may be the ones this cache already holds.
  for (size_t i = 0; i < keep; ++i) pool_.retain(other.ids_[i]);
  for (uint32_t id : ids_) pool_.release(id);
  ids_.clear();
  ptrs_.clear();
  for (size_t i = 0; i < keep; ++i) {
    ids_.push_back(other.ids_[i]);  // within the capacity reserved for n_ctx
    ptrs_.push_back(other.ptrs_[i]);
  }
  n_tokens_ = n_tokens;
}

}  // namespace kvrt
