// CPU backend: splits kernel work across the thread pool.
#include <algorithm>
#include <cmath>

#include "backend/backend.hpp"
#include "util/thread-pool.hpp"

namespace kvrt {

// Rows per task are a multiple of this, so tasks write whole cache lines.
static constexpr size_t kRowQuantum = 16;
// Row pieces per thread in one matrix product (see matmul_multi).
static constexpr size_t kPiecesPerThread = 8;
// Contexts shorter than this are not split by position.
static constexpr uint32_t kMinSplitPositions = 512;
static constexpr unsigned kMaxPieces = CpuBackend::kMaxThreads + CpuBackend::kMaxMats;

unsigned CpuBackend::n_threads() const { return pool_.size(); }

namespace {
struct Piece {
  size_t mat;
  size_t r0, r1;
};
}  // namespace

void CpuBackend::matmul(const MatRef& w, const float* x, size_t n_x, float* y, size_t ldy,
                        BackendScratch& s) const {
  matmul_multi(&w, &y, &ldy, 1, x, n_x, s);
}

void CpuBackend::matmul_multi(const MatRef* w, float* const* y, const size_t* ldy,
                              size_t n_mats, const float* x, size_t n_x,
                              BackendScratch& s) const {
  // Cut the rows of all matrices into about kPiecesPerThread pieces per
  // thread (a piece never spans two matrices), claimed dynamically: a thread
  // that runs slow or is preempted by another process then delays the
  // region by one small piece, not by half of the matrix.
  size_t total = 0;
  for (size_t i = 0; i < n_mats; ++i) total += w[i].rows;
  const unsigned nt = pool_.size();
  const size_t target = nt <= 1 ? 1 : std::min<size_t>(size_t{nt} * kPiecesPerThread, kMaxThreads);
  size_t per = (total + target - 1) / target;
  per = std::max(kRowQuantum, (per + kRowQuantum - 1) / kRowQuantum * kRowQuantum);
  Piece pieces[kMaxPieces];
  unsigned n_pieces = 0;
  for (size_t m = 0; m < n_mats; ++m) {
    // pieces <= target + matrices <= kMaxThreads + kMaxMats
    for (size_t r = 0; r < w[m].rows; r += per)
      pieces[n_pieces++] = {m, r, std::min<size_t>(w[m].rows, r + per)};
  }
  pool_.run(n_pieces, [&](unsigned task, unsigned thread) {
    const Piece& p = pieces[task];
    const MatRef& m = w[p.mat];
    kvrt_k::matmul(m.type, m.data, m.cols, p.r0, p.r1, x, m.cols, n_x, y[p.mat],
                   ldy[p.mat], s.rows + thread * s.row_floats);
  });
}

size_t CpuBackend::attention_partials_needed(unsigned n_threads, uint32_t n_head,
                                             uint32_t n_ctx) {
  (void)n_ctx;
  // At most 2 * n_threads position ranges per KV head, each with a partial
  // per query head; part_acc needs kMaxSplit more rows than this.
  return static_cast<size_t>(2 * n_threads) * n_head;
}

namespace {

// Splits attention like CpuBackend::attention: by KV head, and for a single
// query over a long context also by ranges of whole blocks merged with online
// softmax. Full and Partial compute one head / one range.
template <class Full, class Partial>
void split_attention(ThreadPool& pool, const kvrt_k::AttnArgs& a, BackendScratch& s, Full full,
                     Partial partial) {
  const uint32_t n_kv = a.layout->n_head_kv;
  const uint32_t group = a.n_head / n_kv;
  const unsigned nt = pool.size();
  const uint32_t n_ctx = static_cast<uint32_t>(a.pos0) + 1;
  // A single query over a long context with fewer KV heads than 2 x threads:
  // split each head's positions so every thread streams part of the cache.
  uint32_t n_split = 1;
  if (a.n_q == 1 && n_ctx >= kMinSplitPositions && n_kv < 2 * nt) {
    n_split = (2 * nt + n_kv - 1) / n_kv;
    n_split = std::min<uint32_t>(n_split, n_ctx / (kMinSplitPositions / 2));
    n_split = std::min<uint32_t>(n_split, CpuBackend::kMaxSplit);
    if (static_cast<size_t>(n_split) * n_kv * group > s.part_capacity) n_split = 1;
  }
  if (n_split <= 1) {
    pool.run(n_kv, [&](unsigned task, unsigned) { full(task); });
    return;
  }
  const uint32_t bt = a.layout->block_tokens;
  // Ranges are whole blocks so each task streams whole blocks.
  const uint32_t n_blocks = (n_ctx + bt - 1) / bt;
  const uint32_t blocks_per = (n_blocks + n_split - 1) / n_split;
  const size_t hd = a.layout->head_dim;
  pool.run(n_kv * n_split, [&](unsigned task, unsigned) {
    uint32_t h = task / n_split, c = task % n_split;
    uint32_t t0 = std::min(n_ctx, c * blocks_per * bt);
    uint32_t t1 = std::min(n_ctx, (c + 1) * blocks_per * bt);
    size_t slot = (static_cast<size_t>(h) * n_split + c) * group;
    partial(h, t0, t1, s.parts + slot, s.part_acc + slot * hd);
  });
  // Merge: for each query head, gather its n_split partials.
  kvrt_k::AttnPartial parts[CpuBackend::kMaxSplit];
  for (uint32_t h = 0; h < n_kv; ++h) {
    for (uint32_t g = 0; g < group; ++g) {
      // The merge gathers one head's partials into the spare area at the end.
      float* acc = s.part_acc + s.part_capacity * hd;
      for (uint32_t c = 0; c < n_split; ++c) {
        size_t slot = (static_cast<size_t>(h) * n_split + c) * group + g;
        parts[c] = s.parts[slot];
        std::copy_n(s.part_acc + slot * hd, hd, acc + c * hd);
      }
      kvrt_k::attention_merge(parts, acc, n_split, hd, a.out + (h * group + g) * hd);
    }
  }
}

}  // namespace

void CpuBackend::attention(const kvrt_k::AttnArgs& a, BackendScratch& s) const {
  split_attention(
      pool_, a, s, [&](uint32_t h) { kvrt_k::attention(a, h); },
      [&](uint32_t h, uint32_t t0, uint32_t t1, kvrt_k::AttnPartial* p, float* acc) {
        kvrt_k::attention_partial(a, h, 0, t0, t1, p, acc);
      });
}

void CpuBackend::attention_quant(const kvrt_k::QAttnArgs& qa, BackendScratch& s) const {
  split_attention(
      pool_, qa.base, s, [&](uint32_t h) { kvrt_k::attention_quant(qa, h); },
      [&](uint32_t h, uint32_t t0, uint32_t t1, kvrt_k::AttnPartial* p, float* acc) {
        kvrt_k::attention_quant_partial(qa, h, 0, t0, t1, p, acc);
      });
}

}  // namespace kvrt
