// The walk of the float-format attention kernels (f32, f16, bf16 caches)
// over one KV head's blocks: chunks of up to ATTN_CHUNK_TOKENS positions
// gathered from consecutive blocks, and the prefetches ahead of them.
//
// Included by each ISA's kernel file, which is compiled with its own
// instruction-set flags: everything here has internal linkage so that no
// file links another file's copy built for a wider ISA.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "cpu-kernels-impl.h"

namespace kvrt_k {
namespace detail {
namespace {

// Positions per softmax update. A chunk gathers runs of consecutive blocks,
// so that with 16-token blocks the row maxima, sums, the exponential of the
// running maximum's change and the accumulator's rescaling are paid once
// per 64 positions instead of once per block.
constexpr uint32_t ATTN_CHUNK_TOKENS = 64;
// Runs per chunk at most: blocks of fewer than 4 tokens give shorter chunks.
constexpr uint32_t ATTN_CHUNK_RUNS = ATTN_CHUNK_TOKENS / 4;
// Bytes of K and V rows prefetched past the chunk being computed (at least
// 8 positions). The pool keeps a head's rows of neighbouring blocks back to
// back, runs the hardware prefetchers stream into L2; the software
// prefetches into L1 need only stay ahead of that, and further ahead they
// push the chunk's own lines out of L1 (64 f16 positions of head_dim 64 are
// 16 KB of K and V). 8 KB, 32 such positions, took f16 attention about 10%
// less time from memory than 128 positions (docs/benchmarks.md, "Prefetch
// distance of the float walk").
constexpr size_t ATTN_WALK_PREFETCH_BYTES = 8192;

// Cache lines to prefetch, which a kernel hands out a few at a time between
// its passes (issue).
struct LineQueue {
  struct Range {
    uintptr_t x, end;  // next line to issue; end of the range
  };
  // One range per block the queued positions touch, up to twice a chunk's
  // runs: with blocks of a few tokens the walk queues as many as fit, more
  // than a chunk covers, and so catches up over the next chunks.
  static constexpr uint32_t kMaxRanges = 2 * ATTN_CHUNK_RUNS;
  Range r[kMaxRanges];
  uint32_t n, i;  // ranges queued; the first not done
  uint32_t lines, issued;

  void add(const void* p, size_t bytes) {
    const uintptr_t x = (uintptr_t)p & ~(uintptr_t)63, end = (uintptr_t)p + bytes;
    r[n++] = Range{x, end};
    lines += (uint32_t)((end - x + 63) / 64);
  }
  // Lines per call for `calls` calls to issue the rest.
  uint32_t share(uint32_t calls) const {
    return calls ? (lines - issued + calls - 1) / calls : lines - issued;
  }
  // Prefetches the next k lines into L1.
  void issue(uint32_t k) {
    while (k && i < n) {
      uintptr_t x = r[i].x;
      const uintptr_t end = r[i].end;
      uint32_t m = (uint32_t)((end - x + 63) / 64);
      if (m > k) m = k;
      prefetch_lines((const void*)x, (size_t)m * 64);
      x += (size_t)m * 64;
      r[i].x = x;
      k -= m;
      issued += m;
      if (x >= end) ++i;
    }
  }
  void issue_rest() { issue(lines - issued); }
  void clear() { n = i = lines = issued = 0; }
};

// The K and V lines of the positions a chunk is to prefetch. A kernel
// spreads them over its passes, the K lines over its key passes (each pass
// then issues about the lines of the rows `ahead` positions past the keys
// it scores) and the V lines over its value passes. Where `ahead` is
// shorter than the chunk, the V queue also holds rows of the chunk's own
// second half, which its first value pass reads before their share is
// issued (docs/benchmarks.md says what was and was not measured). Issued
// at once, a chunk's 128-256 lines are more than
// the core keeps in flight; from memory the kernel then took about the sum
// of its arithmetic and of a plain read, as if the two took turns, and 16-20%
// longer than with the lines spread (docs/benchmarks.md, "Prefetches spread
// over the chunk").
struct PrefetchQueue {
  LineQueue k, v;
  void issue_rest() {
    k.issue_rest();
    v.issue_rest();
  }
};

// One block's part of a chunk: n positions whose K and V rows start at kp
// and vp; their scores go to columns [off, off + n) of the chunk.
struct AttnRun {
  const uint8_t* kp;
  const uint8_t* vp;
  uint32_t off, n;
};

struct AttnWalk {
  const uint8_t* const* blocks;
  size_t koff, voff;  // the head's K and V parts in a block
  size_t krow, vrow;  // bytes per position
  uint32_t bt, t_max;
  uint32_t pf;  // first position not yet prefetched

  // Runs from position t, up to ATTN_CHUNK_TOKENS positions before t_max;
  // returns the positions they cover.
  uint32_t chunk(uint32_t t, AttnRun* runs, uint32_t* n_runs) const {
    uint32_t n = 0, k = 0;
    while (t + n < t_max && n < ATTN_CHUNK_TOKENS && k < ATTN_CHUNK_RUNS) {
      const uint32_t p = t + n, slot = p % bt;
      uint32_t m = bt - slot;
      if (m > t_max - p) m = t_max - p;
      if (m > ATTN_CHUNK_TOKENS - n) m = ATTN_CHUNK_TOKENS - n;
      const uint8_t* blk = blocks[p / bt];
      runs[k++] = AttnRun{blk + koff + slot * krow, blk + voff + slot * vrow, n, m};
      n += m;
    }
    *n_runs = k;
    return n;
  }

  // Queues the cache lines of the K and V rows of positions up to end, as
  // many as q holds.
  void queue_to(uint32_t end, PrefetchQueue* q) {
    if (end > t_max) end = t_max;
    q->k.clear();
    q->v.clear();
    while (pf < end && q->k.n < LineQueue::kMaxRanges) {
      const uint32_t slot = pf % bt;
      uint32_t n = bt - slot;
      if (n > end - pf) n = end - pf;
      const uint8_t* blk = blocks[pf / bt];
      q->k.add(blk + koff + slot * krow, n * krow);
      q->v.add(blk + voff + slot * vrow, n * vrow);
      pf += n;
    }
  }
};

// Walks kv_head's part of layer a.layer over the positions rows see, whose
// K and V rows take krow and vrow bytes: f(runs, n_runs, t, n, pq) for each
// chunk of n positions from t. The first chunk's rows are prefetched before
// it; pq holds the lines of the rows from there to ATTN_WALK_PREFETCH_BYTES
// past the chunk, for f to issue while it computes (what it leaves is
// issued after it).
template <class F>
inline void attn_for_each_chunk(const AttnArgs& a, uint32_t kv_head, const AttnRows& rows,
                                size_t krow, size_t vrow, F&& f) {
  const KvLayout& L = *a.layout;
  uint32_t t_max = 0;
  for (uint32_t r = 0; r < rows.n; ++r) t_max = rows.t_end[r] > t_max ? rows.t_end[r] : t_max;
  AttnWalk w{a.blocks, kv_k_offset(L, a.layer, kv_head), kv_v_offset(L, a.layer, kv_head),
             krow, vrow, L.block_tokens, t_max, rows.t0};
  const size_t ahead_rows = ATTN_WALK_PREFETCH_BYTES / (krow + vrow);
  const uint32_t ahead = ahead_rows > 8 ? (uint32_t)ahead_rows : 8;
  AttnRun runs[ATTN_CHUNK_RUNS];
  uint32_t n_runs;
  PrefetchQueue pq;
  for (uint32_t t = rows.t0; t < t_max;) {
    const uint32_t n = w.chunk(t, runs, &n_runs);
    if (t == rows.t0) {  // the first chunk's own rows, at once
      w.queue_to(t + n, &pq);
      pq.issue_rest();
    }
    w.queue_to(t + n + ahead, &pq);
    f(runs, n_runs, t, n, pq);
    pq.issue_rest();
    t += n;
  }
}

}  // namespace
}  // namespace detail
}  // namespace kvrt_k
