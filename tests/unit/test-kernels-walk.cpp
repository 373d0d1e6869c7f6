// Tests of the float attention walk (kernels/cpu/attention-walk.h): the
// chunks it hands a kernel tile the positions and point at the right rows,
// and its prefetches cover every K and V line of those rows, ahead of the
// chunk that reads them or queued for the kernel to issue during it, with
// nothing outside them, however the kernel spreads what it is given (or
// issues none of it).
#include <stdint.h>

#include <algorithm>
#include <set>
#include <vector>

// Every line the walk prefetches, in order: the kernels' headers take this
// hook instead of the prefetch instruction, so it comes before them.
static std::vector<uintptr_t> g_lines;
#define KVRT_PREFETCH_LINE(p) g_lines.push_back((uintptr_t)(p))

#include "kernels/cpu/attention-walk.h"
#include "test-kernels-util.h"

using namespace kvrt_k;
using detail::AttnRun;
using detail::PrefetchQueue;

namespace {

struct Shape {
  uint32_t head_dim, block_tokens, k_format, v_format;
};

// The cache lines of [p, p + bytes).
void add_lines(std::set<uintptr_t>* s, const uint8_t* p, size_t bytes) {
  for (uintptr_t x = (uintptr_t)p & ~(uintptr_t)63; x < (uintptr_t)p + bytes; x += 64) s->insert(x);
}

// How a kernel hands out the queue: 0 issues nothing (the walk issues the
// rest after the chunk), 1 spreads it in shares as the AVX2 kernel does, 2
// issues it all at once, 3 issues random amounts.
void drain(PrefetchQueue& pq, int how, kt::Rng& rng) {
  if (how == 1) {
    const uint32_t per = pq.k.share(5);
    for (int i = 0; i < 5; ++i) pq.k.issue(per);
    const uint32_t vper = pq.v.share(3);
    for (int i = 0; i < 2; ++i) pq.v.issue(vper);  // one share left over
  } else if (how == 2) {
    pq.issue_rest();
  } else if (how == 3) {
    for (int i = 0; i < 4; ++i) {
      pq.k.issue(rng.below(9));
      pq.v.issue(rng.below(9));
    }
  }
}

void check_walk(const Shape& sh, uint32_t t0, const std::vector<uint32_t>& t_end, int how,
                kt::Rng& rng) {
  KvLayout L;
  assert_true(kv_layout_init(&L, 2, 3, sh.head_dim, sh.block_tokens, sh.k_format, sh.v_format));
  kv_layout_head_parts(&L, kv_head_part_bytes(L));
  const uint32_t t_max = *std::max_element(t_end.begin(), t_end.end());
  const uint32_t bt = sh.block_tokens, n_blocks = (t_max + bt - 1) / bt;
  const size_t block_bytes = (size_t)kv_n_head_parts(L) * kv_head_part_bytes(L);
  // Blocks in a shuffled order, as a block table gives them.
  std::vector<uint8_t> pool((size_t)n_blocks * block_bytes + 64);
  std::vector<const uint8_t*> blocks(n_blocks);
  std::vector<uint32_t> perm(n_blocks);
  for (uint32_t i = 0; i < n_blocks; ++i) perm[i] = i;
  for (uint32_t i = n_blocks; i > 1; --i) std::swap(perm[i - 1], perm[rng.below(i)]);
  for (uint32_t i = 0; i < n_blocks; ++i) blocks[i] = pool.data() + (size_t)perm[i] * block_bytes;

  AttnArgs a{};
  a.layout = &L;
  a.blocks = blocks.data();
  a.layer = 1;
  detail::AttnRows rows{};
  rows.n = (uint32_t)t_end.size();
  rows.t0 = t0;
  for (uint32_t r = 0; r < rows.n; ++r) rows.t_end[r] = t_end[r];
  const uint32_t kv_head = 2;
  const size_t krow = sh.head_dim * kv_elem_bytes(sh.k_format);
  const size_t vrow = sh.head_dim * kv_elem_bytes(sh.v_format);
  auto k_row = [&](uint32_t p) {
    return blocks[p / bt] + kv_k_offset(L, a.layer, kv_head) + (size_t)(p % bt) * krow;
  };
  auto v_row = [&](uint32_t p) {
    return blocks[p / bt] + kv_v_offset(L, a.layer, kv_head) + (size_t)(p % bt) * vrow;
  };

  g_lines.clear();
  uint32_t next = t0, chunks = 0;
  detail::attn_for_each_chunk(
      a, kv_head, rows, krow, vrow,
      [&](const AttnRun* runs, uint32_t n_runs, uint32_t t, uint32_t n, PrefetchQueue& pq) {
        // Chunks tile [t0, t_max) in order; runs tile the chunk, each inside
        // one block, at that block's rows of this layer and head.
        assert_int_equal(t, next);
        assert_true(n >= 1 && n <= detail::ATTN_CHUNK_TOKENS);
        uint32_t off = 0;
        for (uint32_t i = 0; i < n_runs; ++i) {
          assert_int_equal(runs[i].off, off);
          const uint32_t p = t + off;
          assert_true(runs[i].n >= 1 && (p % bt) + runs[i].n <= bt);
          assert_ptr_equal(runs[i].kp, k_row(p));
          assert_ptr_equal(runs[i].vp, v_row(p));
          off += runs[i].n;
        }
        assert_int_equal(off, n);
        // The chunk's first 8 positions (the least distance the walk keeps)
        // were prefetched before it; the rest of its lines were too, or
        // wait in the queue for the kernel to issue between its passes.
        std::set<uintptr_t> seen(g_lines.begin(), g_lines.end()), queued;
        for (const detail::LineQueue* q : {&pq.k, &pq.v})
          for (uint32_t i = q->i; i < q->n; ++i)
            for (uintptr_t x = q->r[i].x; x < q->r[i].end; x += 64) queued.insert(x);
        for (uint32_t p = t; p < t + n; ++p) {
          std::set<uintptr_t> need;
          add_lines(&need, k_row(p), krow);
          add_lines(&need, v_row(p), vrow);
          for (uintptr_t x : need) {
            if (p < t + 8) assert_true(seen.count(x) == 1);
            else assert_true(seen.count(x) + queued.count(x) >= 1);
          }
        }
        drain(pq, how, rng);
        next = t + n;
        ++chunks;
      });
  assert_int_equal(next, t0 < t_max ? t_max : t0);

  // Every line of the rows in [t0, t_max) and nothing else; a line is
  // issued again only where two ranges share it (rows not on line edges).
  std::set<uintptr_t> want;
  for (uint32_t p = t0; p < t_max; ++p) {
    add_lines(&want, k_row(p), krow);
    add_lines(&want, v_row(p), vrow);
  }
  const std::set<uintptr_t> got(g_lines.begin(), g_lines.end());
  assert_true(got == want);
  const size_t ranges = 2 * ((size_t)n_blocks + chunks + 1);
  assert_true(g_lines.size() <= want.size() + ranges);
}

const Shape kShapes[] = {
    {64, 16, KV_F16, KV_F16},  // the benchmark model's: 128-byte rows
    {8, 16, KV_F32, KV_F32},   // the test model's: 32-byte rows, not on line edges
    {8, 1, KV_F16, KV_F32},    // one-token blocks: more runs than a queue holds
    {24, 3, KV_F32, KV_BF16},  // odd rows and blocks
    {128, 64, KV_F32, KV_F16}, // blocks longer than a chunk
    {256, 5, KV_F32, KV_F32},  // 1 KB rows: the distance is the 8-row minimum
};

void test_walk_shapes(void**) {
  kt::Rng rng(7);
  for (const Shape& sh : kShapes)
    for (int how = 0; how < 4; ++how)
      for (uint32_t len : {1u, 7u, 64u, 65u, 200u, 1000u}) {
        check_walk(sh, 0, {len}, how, rng);
        // Several rows, the walk running to the longest; a start past 0,
        // as a split's second part has.
        check_walk(sh, 0, {len, len / 2 + 1, len + 9}, how, rng);
        if (len > 10) check_walk(sh, len / 3, {len}, how, rng);
      }
}

// A walk over no positions calls nothing and prefetches nothing.
void test_walk_empty(void**) {
  kt::Rng rng(3);
  check_walk(kShapes[0], 40, {40}, 1, rng);
  assert_true(g_lines.empty());
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_walk_shapes),
      cmocka_unit_test(test_walk_empty),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
