// Snapshot internals: the hash, byte planes, the fingerprint, loads of
// snapshots written without shuffling, and save/load figures (printed, not
// asserted) for f32 and f16 caches with and without byte-plane shuffling.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "engine/runtime.hpp"
#include "engine/session.hpp"
#include "snapshot/snapshot-format.hpp"
#include "snapshot/snapshot-io.hpp"
#include "util/error.hpp"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

using namespace kvrt;

namespace {

const char* model_path() {
  const char* p = std::getenv("KVRT_MODEL");
  if (p && *p) return p;
  p = std::getenv("KVRT_MODEL_DEFAULT");
  if (p && *p) return p;
  fail_msg("test model not found: set KVRT_MODEL");
  return nullptr;
}

class VecSink final : public snap::Sink {
 public:
  void write(const void* d, size_t n) override {
    const uint8_t* p = static_cast<const uint8_t*>(d);
    bytes.insert(bytes.end(), p, p + n);
  }
  std::vector<uint8_t> bytes;
};

std::vector<uint8_t> pseudo_random(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  uint32_t x = seed;
  for (auto& b : v) {
    x = x * 1664525u + 1013904223u;
    b = static_cast<uint8_t>(x >> 24);
  }
  return v;
}

void test_hash_streaming(void**) {
  const std::vector<uint8_t> d = pseudo_random(1000, 1);
  // Any split of the input gives the one-shot hash.
  for (size_t n : {0, 1, 7, 31, 32, 33, 64, 100, 999, 1000}) {
    const uint64_t whole = snap::hash64(d.data(), n, 5);
    for (size_t piece : {1, 3, 8, 17, 32, 45}) {
      snap::Hasher h(5);
      for (size_t i = 0; i < n; i += piece) h.update(d.data() + i, std::min(piece, n - i));
      assert_true(h.finish64() == whole);
    }
  }
  // Seed, length and every byte matter (zero padding must not collide).
  assert_true(snap::hash64(d.data(), 10, 0) != snap::hash64(d.data(), 10, 1));
  const uint8_t z[33] = {};
  for (size_t n = 0; n < 33; ++n) assert_true(snap::hash64(z, n, 0) != snap::hash64(z, n + 1, 0));
  std::vector<uint8_t> e = d;
  for (size_t i = 0; i < e.size(); i += 37) {
    e[i] ^= 0x10;
    assert_true(snap::hash64(e.data(), e.size(), 0) != snap::hash64(d.data(), d.size(), 0));
    e[i] ^= 0x10;
  }
  // 128-bit output: both halves change.
  snap::Hasher a(0), b(0);
  a.update(d.data(), 100);
  b.update(d.data(), 99);
  uint64_t alo, ahi, blo, bhi;
  a.finish128(&alo, &ahi);
  b.finish128(&blo, &bhi);
  assert_true(alo != blo && ahi != bhi && alo != ahi);
}

void test_planes(void**) {
  for (size_t width : {2, 4}) {
    const std::vector<uint8_t> d = pseudo_random(64 * width, 3);
    std::vector<uint8_t> s(d.size()), back(d.size());
    snap::shuffle_planes(d.data(), s.data(), d.size(), width);
    // Plane j holds byte j of every element, in order.
    for (size_t i = 0; i < d.size() / width; ++i)
      for (size_t j = 0; j < width; ++j) assert_int_equal(s[j * (d.size() / width) + i], d[i * width + j]);
    snap::unshuffle_planes(s.data(), back.data(), d.size(), width);
    assert_memory_equal(back.data(), d.data(), d.size());
  }
}

struct Env {
  std::shared_ptr<LoadedModel> lm;
  Env() {
    RuntimeConfig rc;
    rc.n_threads = 2;
    lm = std::make_shared<LoadedModel>();
    lm->runtime = std::make_shared<Runtime>(rc);
    lm->model = Model::load(model_path());
  }
};

std::unique_ptr<Session> filled_session(const Env& env, uint32_t fmt, uint32_t n_ctx, uint32_t n) {
  SessionConfig c;
  c.k_format = c.v_format = fmt;
  c.n_ctx = n_ctx;
  c.max_batch = 256;
  auto s = std::make_unique<Session>(env.lm, c);
  std::vector<int32_t> t(n);
  uint32_t x = 17;
  for (auto& v : t) {
    x = x * 1664525u + 1013904223u;
    v = static_cast<int32_t>(3 + (x >> 8) % 509);
  }
  s->decode(t.data(), n, nullptr);
  return s;
}

void test_fingerprint(void**) {
  Env a, b;
  const ModelFingerprint fa = a.lm->model->fingerprint(), fb = b.lm->model->fingerprint();
  assert_true(fa.lo == fb.lo && fa.hi == fb.hi);
  assert_true(fa.lo != 0 || fa.hi != 0);
  // Cached: the same value again.
  const ModelFingerprint again = a.lm->model->fingerprint();
  assert_true(again.lo == fa.lo && again.hi == fa.hi);
  // First use from several threads at once: one computation, one answer.
  Env c;
  ModelFingerprint got[4];
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i) ts.emplace_back([&, i] { got[i] = c.lm->model->fingerprint(); });
  for (auto& t : ts) t.join();
  for (const auto& g : got) assert_true(g.lo == fa.lo && g.hi == fa.hi);
}

// KV bytes of every logical block, positions past n_tokens excluded.
bool same_kv(const Session& a, const Session& b) {
  const KvCache &ka = a.kv(), &kb = b.kv();
  if (ka.n_tokens() != kb.n_tokens() || ka.n_blocks() != kb.n_blocks()) return false;
  const auto& lay = ka.layout();
  for (uint32_t i = 0; i < ka.n_blocks(); ++i) {
    const uint32_t used = std::min(lay.block_tokens, ka.n_tokens() - i * lay.block_tokens);
    const size_t ek = kvrt_k::kv_elem_bytes(lay.k_format), ev = kvrt_k::kv_elem_bytes(lay.v_format);
    for (uint32_t l = 0; l < lay.n_layer; ++l)
      for (uint32_t h = 0; h < lay.n_head_kv; ++h) {
        if (std::memcmp(ka.block_ptrs()[i] + kvrt_k::kv_k_offset(lay, l, h),
                        kb.block_ptrs()[i] + kvrt_k::kv_k_offset(lay, l, h), used * lay.head_dim * ek))
          return false;
        if (std::memcmp(ka.block_ptrs()[i] + kvrt_k::kv_v_offset(lay, l, h),
                        kb.block_ptrs()[i] + kvrt_k::kv_v_offset(lay, l, h), used * lay.head_dim * ev))
          return false;
      }
  }
  return true;
}

void test_unshuffled_and_figures(void**) {
  Env env;
  const uint32_t n_tokens = 1000;  // not a multiple of the block size
  for (uint32_t fmt : {uint32_t(kvrt_k::KV_F32), uint32_t(kvrt_k::KV_F16)}) {
    auto s = filled_session(env, fmt, 2048, n_tokens);
    const double kv_mb = double(s->kv().bytes()) / 1e6;
    for (bool shuffle : {false, true}) {
      snap::WriteOptions o;
      o.shuffle = shuffle;
      VecSink sink;
      sink.bytes.reserve(s->kv().bytes() + 4096);
      const int reps = 5;
      auto t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; ++r) {
        sink.bytes.clear();
        snap::write_snapshot(*s, sink, o);
      }
      auto t1 = std::chrono::steady_clock::now();
      std::unique_ptr<Session> back;
      for (int r = 0; r < reps; ++r) {
        snap::MemorySource src(sink.bytes.data(), sink.bytes.size());
        back = snap::read_snapshot(env.lm, src, "test");
        assert_int_equal(src.remaining(), 0);
      }
      auto t2 = std::chrono::steady_clock::now();
      assert_true(same_kv(*s, *back));
      assert_true(back->tokens() == s->tokens());
      const double save_s = std::chrono::duration<double>(t1 - t0).count() / reps;
      const double load_s = std::chrono::duration<double>(t2 - t1).count() / reps;
      std::printf("snapshot %s, %u tokens, %s: KV %.3f MB -> %zu bytes, ratio %.3f; save %.1f MB/s, load %.1f MB/s\n",
                  fmt == kvrt_k::KV_F32 ? "f32" : "f16", n_tokens, shuffle ? "byte planes" : "no shuffle", kv_mb,
                  sink.bytes.size(), double(s->kv().bytes()) / double(sink.bytes.size()), kv_mb / save_s,
                  kv_mb / load_s);
    }
  }
}

// The reader refuses a header that promises more than the model allows
// before it allocates anything (a claim of 2^32-1 tokens).
void test_huge_claims(void**) {
  Env env;
  auto s = filled_session(env, kvrt_k::KV_F16, 64, 20);
  VecSink sink;
  snap::write_snapshot(*s, sink, snap::WriteOptions{});
  for (size_t field : {snap::kHdrNTokens, snap::kHdrNCtx}) {
    std::vector<uint8_t> b = sink.bytes;
    uint8_t* h = b.data() + snap::kPreambleBytes;
    snap::put_u32(h + field, 0xffffffffu);
    // Re-seal the header so that the check under test is the size check.
    snap::put_u64(h + snap::kHdrChecksum, snap::hash64(b.data(), snap::kPreambleBytes + snap::kHdrChecksum, 0));
    snap::MemorySource src(b.data(), b.size());
    try {
      snap::read_snapshot(env.lm, src, "test");
      fail_msg("a claim of 2^32-1 in field %zu was accepted", field);
    } catch (const Error& e) {
      assert_int_equal(e.status(), KVRT_ERR_CORRUPT);
      assert_true(std::strstr(e.what(), field == snap::kHdrNTokens ? "n_tokens" : "n_ctx") != nullptr);
    }
    // Nothing read beyond the header.
    assert_int_equal(src.remaining(), b.size() - snap::kPreambleBytes - snap::kHeaderBytesV1);
  }
}

}  // namespace

int main() {
  const CMUnitTest tests[] = {
      cmocka_unit_test(test_hash_streaming),
      cmocka_unit_test(test_planes),
      cmocka_unit_test(test_fingerprint),
      cmocka_unit_test(test_unshuffled_and_figures),
      cmocka_unit_test(test_huge_claims),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
