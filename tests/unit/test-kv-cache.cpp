// Tests of a session's KV block table: reserve/commit/truncate against a
// model of the expected block count, errors that leave the cache unchanged,
// block return on destruction, and copy-on-write of shared blocks.
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kv/block-pool.hpp"
#include "kv/kv-cache.hpp"
#include "util/error.hpp"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

using kvrt::BlockPool;
using kvrt::KvCache;
using kvrt::MemoryBudget;

namespace {

constexpr uint32_t kBt = 4;  // positions per block

kvrt_k::KvLayout small_layout() {
  kvrt_k::KvLayout l;
  // 2 layers, 2 KV heads, head_dim 8, f32: 1024 bytes per block.
  kvrt_k::kv_layout_init(&l, 2, 2, 8, kBt, kvrt_k::KV_F32, kvrt_k::KV_F32);
  return l;
}

// A recognizable value for position p, stored in the first 4 bytes of the
// position's slot of layer 0 / head 0's keys.
uint32_t tag(uint32_t p, uint32_t salt) { return p * 2654435761u + salt; }

uint32_t* slot(const KvCache& c, uint32_t p) {
  return reinterpret_cast<uint32_t*>(c.block_ptr(p / kBt) + (p % kBt) * c.layout().head_dim * 4);
}

// The same for the last layer's last head's values, in the block's last
// part (one pool stride past the first).
uint32_t* slot_last(const KvCache& c, uint32_t p) {
  const kvrt_k::KvLayout& l = c.layout();
  return reinterpret_cast<uint32_t*>(c.block_ptr(p / kBt) + kvrt_k::kv_v_offset(l, l.n_layer - 1, l.n_head_kv - 1) +
                                     (p % kBt) * l.head_dim * 4);
}

// Runs f, which must throw kvrt::Error with `status`; returns the message.
template <class F>
std::string expect_error(kvrt_status status, F f) {
  try {
    f();
  } catch (const kvrt::Error& e) {
    if (e.status() != status) fail_msg("status %d, expected %d: %s", e.status(), status, e.what());
    return e.what();
  }
  fail_msg("no error thrown, expected status %d", status);
  return {};
}

void check_table(const KvCache& c, const BlockPool& pool) {
  assert_int_equal(c.block_ids().size(), c.n_blocks());
  std::set<uint32_t> uniq;
  for (uint32_t i = 0; i < c.n_blocks(); ++i) {
    uint32_t id = c.block_ids()[i];
    uniq.insert(id);
    assert_ptr_equal(c.block_ptrs()[i], pool.data(id));
    assert_ptr_equal(c.block_ptr(i), pool.data(id));
    assert_true(pool.refcount(id) >= 1);
  }
  assert_int_equal(uniq.size(), c.n_blocks());
  assert_int_equal(c.bytes(), uint64_t{c.n_blocks()} * c.layout().block_bytes);
  // Kernels reach (layer l, head h) at part l * n_head_kv + h, the pool's
  // part stride apart, K then V; the one-piece form has layer, then head
  // order.
  const kvrt_k::KvLayout& l = c.layout();
  assert_int_equal(l.layer_stride, l.n_head_kv * pool.part_stride());
  assert_int_equal(kvrt_k::kv_k_offset(l, 1, 1), 3 * pool.part_stride());
  assert_int_equal(kvrt_k::kv_v_offset(l, 1, 1), 3 * pool.part_stride() + l.k_head_bytes);
  const kvrt_k::KvLayout s = c.stored_layout();
  assert_int_equal(s.layer_stride, l.layer_bytes);
  assert_int_equal(kvrt_k::kv_k_offset(s, 1, 1), l.layer_bytes + l.k_head_bytes);
  assert_int_equal(kvrt_k::kv_v_offset(s, 1, 1), l.layer_bytes + 2 * l.k_head_bytes + l.v_head_bytes);
}

void test_sequences_vs_model(void**) {
  MemoryBudget budget(1 << 20);
  BlockPool pool(256, 4, budget);  // small_layout's blocks: 2 layers x 2 heads of 256 bytes
  const uint32_t n_ctx = 101;
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    KvCache c(pool, small_layout(), n_ctx);
    uint32_t m_tokens = 0, m_blocks = 0, m_reserved = 0;  // the model
    for (int step = 0; step < 200; ++step) {
      int op = rng() % 3;
      if (op == 0) {
        uint32_t n = rng() % 12;
        if (m_tokens + n > n_ctx) {
          expect_error(KVRT_ERR_CONTEXT_FULL, [&] { c.reserve(n); });
        } else {
          c.reserve(n);
          uint32_t need = (m_tokens + n + kBt - 1) / kBt;
          if (need > m_blocks) m_blocks = need;
          m_reserved = n;
        }
      } else if (op == 1) {
        uint32_t n = m_reserved ? rng() % (m_reserved + 1) : 0;
        // The positions become filled: write them before committing.
        for (uint32_t p = m_tokens; p < m_tokens + n; ++p) *slot(c, p) = tag(p, trial);
        c.commit(n);
        m_tokens += n;
        m_reserved -= n;
      } else {
        uint32_t n = m_tokens ? rng() % (m_tokens + 1) : 0;
        c.truncate(n);
        m_tokens = n;
        m_reserved = 0;
        uint32_t keep = (n + kBt - 1) / kBt;
        if (keep < m_blocks) m_blocks = keep;
      }
      assert_int_equal(c.n_tokens(), m_tokens);
      assert_int_equal(c.n_blocks(), m_blocks);
      assert_int_equal(pool.blocks_in_use(), m_blocks);
      check_table(c, pool);
      for (uint32_t p = 0; p < m_tokens; ++p)
        if (*slot(c, p) != tag(p, trial)) fail_msg("position %u lost after step %d", p, step);
    }
  }
  assert_int_equal(pool.blocks_in_use(), 0);  // destructors returned every block
  assert_int_equal(budget.used(), 0);
}

void test_context_full_unchanged(void**) {
  MemoryBudget budget(1 << 20);
  BlockPool pool(256, 4, budget);  // small_layout's blocks: 2 layers x 2 heads of 256 bytes
  KvCache c(pool, small_layout(), 10);
  c.reserve(7);
  c.commit(7);
  std::vector<uint32_t> ids = c.block_ids();
  std::string msg = expect_error(KVRT_ERR_CONTEXT_FULL, [&] { c.reserve(4); });
  assert_non_null(strstr(msg.c_str(), "10"));  // names the limit
  assert_non_null(strstr(msg.c_str(), "11"));  // and the total asked for
  assert_int_equal(c.n_tokens(), 7);
  assert_true(c.block_ids() == ids);
  assert_int_equal(pool.blocks_in_use(), 2);
  expect_error(KVRT_ERR_CONTEXT_FULL, [&] { c.reserve(UINT32_MAX); });  // no wrap-around
  c.reserve(3);  // exactly to n_ctx still works
  c.commit(3);
  assert_int_equal(c.n_tokens(), 10);
  assert_int_equal(c.n_blocks(), 3);
}

void test_out_of_memory_unchanged(void**) {
  MemoryBudget budget(3 * 1024 + 1000);  // three blocks
  BlockPool pool(256, 4, budget);  // small_layout's blocks: 2 layers x 2 heads of 256 bytes
  KvCache c(pool, small_layout(), 1000);
  c.reserve(5);
  c.commit(5);
  for (uint32_t p = 0; p < 5; ++p) *slot(c, p) = tag(p, 1);
  std::vector<uint32_t> ids = c.block_ids();
  // 5 + 9 = 14 positions need 4 blocks, 2 more: only 1 is left. All or none.
  std::string msg = expect_error(KVRT_ERR_OUT_OF_MEMORY, [&] { c.reserve(9); });
  assert_non_null(strstr(msg.c_str(), "4072"));  // the budget
  assert_non_null(strstr(msg.c_str(), "2 more blocks"));
  assert_int_equal(c.n_tokens(), 5);
  assert_true(c.block_ids() == ids);
  assert_int_equal(pool.blocks_in_use(), 2);
  assert_int_equal(budget.used(), 2 * 1024);
  for (uint32_t p = 0; p < 5; ++p) assert_int_equal(*slot(c, p), tag(p, 1));
  // Still usable: 7 more positions fit in 3 blocks.
  c.reserve(7);
  c.commit(7);
  assert_int_equal(c.n_blocks(), 3);
  expect_error(KVRT_ERR_OUT_OF_MEMORY, [&] { c.reserve(1); });
  c.truncate(8);
  assert_int_equal(c.n_blocks(), 2);
  c.reserve(1);
  assert_int_equal(c.n_blocks(), 3);
}

void test_misuse_errors(void**) {
  MemoryBudget budget(1 << 20);
  BlockPool pool(256, 4, budget);  // small_layout's blocks: 2 layers x 2 heads of 256 bytes
  KvCache c(pool, small_layout(), 64);
  c.reserve(3);
  expect_error(KVRT_ERR_OUT_OF_RANGE, [&] { c.commit(5); });  // only one block reserved
  assert_int_equal(c.n_tokens(), 0);
  c.commit(3);
  expect_error(KVRT_ERR_OUT_OF_RANGE, [&] { c.truncate(4); });
  assert_int_equal(c.n_tokens(), 3);
  // Reserved-but-uncommitted blocks are dropped by truncating to n_tokens.
  c.reserve(20);
  assert_int_equal(c.n_blocks(), 6);
  c.truncate(3);
  assert_int_equal(c.n_blocks(), 1);
  assert_int_equal(pool.blocks_in_use(), 1);
  c.truncate(0);
  assert_int_equal(c.n_blocks(), 0);
  assert_int_equal(pool.blocks_in_use(), 0);
  // A layout of another shape than the pool's blocks is refused: more
  // layers, or the same bytes in parts of another size.
  kvrt_k::KvLayout big, regrouped;
  kvrt_k::kv_layout_init(&big, 4, 2, 8, kBt, kvrt_k::KV_F32, kvrt_k::KV_F32);
  kvrt_k::kv_layout_init(&regrouped, 1, 2, 16, kBt, kvrt_k::KV_F32, kvrt_k::KV_F32);
  assert_int_equal(regrouped.block_bytes, small_layout().block_bytes);
  std::string msg = expect_error(KVRT_ERR_INVALID_ARGUMENT, [&] { KvCache bad(pool, big, 64); });
  assert_non_null(strstr(msg.c_str(), "4 layers x 2 KV heads of 256 bytes"));
  expect_error(KVRT_ERR_INVALID_ARGUMENT, [&] { KvCache bad(pool, regrouped, 64); });
}

// A block's one-piece form (snapshots: per layer, every head's K, then
// every head's V) against its parts in the pool (one per (layer, head): K,
// then V): gather and scatter map each byte to where the one-piece offsets
// and the pool's offsets put it, for K and V of different sizes, and leave
// the blocks around untouched.
void test_block_runs(void**) {
  MemoryBudget budget(1 << 20);
  kvrt_k::KvLayout lay;
  kvrt_k::kv_layout_init(&lay, 5, 3, 8, kBt, kvrt_k::KV_F16, kvrt_k::KV_F32);  // K 64, V 128 bytes
  BlockPool pool(kvrt_k::kv_head_part_bytes(lay), kvrt_k::kv_n_head_parts(lay), budget);
  KvCache c(pool, lay, 64);
  c.reserve(3 * kBt);
  c.commit(3 * kBt);
  const kvrt_k::KvLayout& pl = c.layout();
  const kvrt_k::KvLayout sl = c.stored_layout();
  assert_true(pool.part_stride() > kvrt_k::kv_head_part_bytes(lay));  // several blocks per slab
  const size_t bb = lay.block_bytes, kb = lay.k_head_bytes, vb = lay.v_head_bytes;
  // For each one-piece byte o: its address in block b.
  std::vector<size_t> where(bb, SIZE_MAX);
  for (uint32_t l = 0; l < lay.n_layer; ++l)
    for (uint32_t h = 0; h < lay.n_head_kv; ++h) {
      for (size_t j = 0; j < kb; ++j) where[kvrt_k::kv_k_offset(sl, l, h) + j] = kvrt_k::kv_k_offset(pl, l, h) + j;
      for (size_t j = 0; j < vb; ++j) where[kvrt_k::kv_v_offset(sl, l, h) + j] = kvrt_k::kv_v_offset(pl, l, h) + j;
    }
  std::set<size_t> distinct(where.begin(), where.end());
  assert_int_equal(distinct.size(), bb);  // every byte placed once
  assert_true(*distinct.rbegin() < lay.n_layer * pl.layer_stride);
  auto pattern = [](uint32_t b, size_t o) { return static_cast<uint8_t>(b * 101 + o * 13 + o / 251); };
  for (uint32_t b = 0; b < 3; ++b)
    for (size_t o = 0; o < bb; ++o) c.block_ptr(b)[where[o]] = pattern(b, o);
  std::vector<uint8_t> whole(bb);
  const kvrt::BlockRuns runs = c.block_runs(1);
  assert_int_equal(runs.bytes(), bb);
  runs.gather(whole.data());
  for (size_t o = 0; o < bb; ++o)
    if (whole[o] != pattern(1, o)) fail_msg("gathered byte %zu", o);
  for (size_t o = 0; o < bb; ++o) whole[o] = static_cast<uint8_t>(o * 7 + 3);
  runs.scatter(whole.data());
  for (uint32_t b = 0; b < 3; ++b)
    for (size_t o = 0; o < bb; ++o) {
      const uint8_t want = b == 1 ? static_cast<uint8_t>(o * 7 + 3) : pattern(b, o);
      if (c.block_ptr(b)[where[o]] != want) fail_msg("block %u byte %zu after scatter", b, o);
    }
  // What the layout is for: one head's parts of neighbouring blocks of a
  // slab are back to back, so one attention task reads a single run.
  const ptrdiff_t step = c.block_ptr(1) - c.block_ptr(0);
  assert_int_equal(step < 0 ? -step : step, kvrt_k::kv_head_part_bytes(lay));
  for (uint32_t b = 0; b + 1 < 3; ++b)
    assert_ptr_equal(c.block_ptr(b + 1) + kvrt_k::kv_v_offset(pl, 4, 2),
                     c.block_ptr(b) + kvrt_k::kv_v_offset(pl, 4, 2) + step);
  // Head 1 of layer 2: K right before V in its part, parts a stride apart.
  assert_int_equal(kvrt_k::kv_k_offset(pl, 2, 1), (2 * 3 + 1) * pool.part_stride());
  assert_int_equal(kvrt_k::kv_v_offset(pl, 2, 1), (2 * 3 + 1) * pool.part_stride() + kb);
  assert_int_equal(kvrt_k::kv_v_offset(sl, 2, 1), 2 * lay.layer_bytes + 3 * kb + vb);
  // One piece: all bytes in one.
  std::vector<uint8_t> buf(bb, 5), out(bb);
  kvrt::BlockRuns::whole(buf.data(), bb).gather(out.data());
  assert_memory_equal(buf.data(), out.data(), bb);
  assert_int_equal(kvrt::BlockRuns::whole(buf.data(), bb).bytes(), bb);
}

void test_copy_on_write(void**) {
  MemoryBudget budget(1 << 20);
  BlockPool pool(256, 4, budget);  // small_layout's blocks: 2 layers x 2 heads of 256 bytes
  KvCache a(pool, small_layout(), 64);
  a.reserve(6);
  for (uint32_t p = 0; p < 6; ++p) {
    *slot(a, p) = tag(p, 9);
    *slot_last(a, p) = tag(p, 10);
  }
  a.commit(6);
  {
    KvCache b(pool, small_layout(), 64);
    b.share_from(a, 6);
    assert_true(b.block_ids() == a.block_ids());
    assert_int_equal(b.n_tokens(), 6);
    assert_int_equal(pool.refcount(a.block_ids()[1]), 2);
    assert_int_equal(pool.blocks_in_use(), 2);

    // b writes position 6, inside the shared tail: it gets its own copy.
    uint32_t a_tail = a.block_ids()[1];
    uint32_t a_slot6 = *slot(a, 6);
    b.reserve(1);
    assert_int_equal(b.block_ids()[0], a.block_ids()[0]);  // full block still shared
    assert_true(b.block_ids()[1] != a_tail);
    assert_int_equal(pool.refcount(a_tail), 1);
    assert_int_equal(pool.refcount(a.block_ids()[0]), 2);
    assert_int_equal(pool.blocks_in_use(), 3);
    check_table(b, pool);
    for (uint32_t p = 0; p < 6; ++p) {  // copied, every layer
      assert_int_equal(*slot(b, p), tag(p, 9));
      assert_int_equal(*slot_last(b, p), tag(p, 10));
    }
    *slot(b, 6) = 0xdeadbeef;
    b.commit(1);
    assert_int_equal(*slot(a, 6), a_slot6);  // a's block untouched

    // a's tail is exclusive again: writing it needs no copy.
    a.reserve(2);
    assert_int_equal(a.block_ids()[1], a_tail);
    assert_int_equal(pool.blocks_in_use(), 3);
    *slot(a, 6) = 1;
    *slot(a, 7) = 2;
    a.commit(2);
    assert_int_equal(*slot(b, 6), 0xdeadbeef);

    // Sharing at a block boundary: new positions go to a fresh block and
    // the shared full block is not copied.
    KvCache d(pool, small_layout(), 64);
    d.share_from(a, 4);
    assert_int_equal(d.n_blocks(), 1);
    d.reserve(3);
    assert_int_equal(d.block_ids()[0], a.block_ids()[0]);
    assert_int_equal(pool.refcount(a.block_ids()[0]), 3);
  }
  // The forks' destructors dropped only their own references.
  assert_int_equal(pool.blocks_in_use(), 2);
  assert_int_equal(pool.refcount(a.block_ids()[0]), 1);
  for (uint32_t p = 0; p < 6; ++p) assert_int_equal(*slot(a, p), tag(p, 9));
}

void test_copy_on_write_out_of_memory(void**) {
  MemoryBudget budget(2 * 1024);
  BlockPool pool(256, 4, budget);  // small_layout's blocks: 2 layers x 2 heads of 256 bytes
  KvCache a(pool, small_layout(), 64);
  a.reserve(6);
  a.commit(6);
  KvCache b(pool, small_layout(), 64);
  b.share_from(a, 6);
  // The copy of the shared tail needs a block the budget does not have.
  expect_error(KVRT_ERR_OUT_OF_MEMORY, [&] { b.reserve(1); });
  assert_true(b.block_ids() == a.block_ids());
  assert_int_equal(pool.refcount(a.block_ids()[1]), 2);
  assert_int_equal(b.n_tokens(), 6);
  // Dropping the other reference makes the tail exclusive: no copy needed.
  a.truncate(4);
  b.reserve(2);
  b.commit(2);
  assert_int_equal(b.n_tokens(), 8);
  assert_int_equal(pool.blocks_in_use(), 2);
}

void test_destructor_returns_blocks(void**) {
  MemoryBudget budget(1 << 20);
  BlockPool pool(256, 4, budget);  // small_layout's blocks: 2 layers x 2 heads of 256 bytes
  {
    KvCache c(pool, small_layout(), 1000);
    c.reserve(100);
    c.commit(50);  // 25 blocks, half of them reserved only
    assert_int_equal(pool.blocks_in_use(), 25);
  }
  assert_int_equal(pool.blocks_in_use(), 0);
  assert_int_equal(budget.used(), 0);
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sequences_vs_model),
      cmocka_unit_test(test_context_full_unchanged),
      cmocka_unit_test(test_out_of_memory_unchanged),
      cmocka_unit_test(test_misuse_errors),
      cmocka_unit_test(test_block_runs),
      cmocka_unit_test(test_copy_on_write),
      cmocka_unit_test(test_copy_on_write_out_of_memory),
      cmocka_unit_test(test_destructor_returns_blocks),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
