// Fuzz target of the snapshot reader: every input loaded into the real test
// model through the buffer loader, and inspected with and without the model,
// must end in a status, never a crash, leak or block left in use.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include <vector>

#include "kvrt/kvrt.h"
#include "snapshot/snapshot-format.hpp"

namespace {

struct Fixture {
  kvrt_runtime* rt = nullptr;
  kvrt_model* model = nullptr;
  Fixture() {
    const char* path = std::getenv("KVRT_MODEL");
    if (!path || !*path) path = std::getenv("KVRT_MODEL_DEFAULT");
    if (!path || !*path) return;
    kvrt_runtime_params rp;
    kvrt_runtime_default_params(&rp);
    rp.n_threads = 1;
    rp.kv_budget_bytes = 64ull << 20;
    if (kvrt_runtime_create(&rp, &rt) != KVRT_OK) return;
    if (kvrt_model_load(rt, path, nullptr, &model) != KVRT_OK) {
      std::fprintf(stderr, "fuzz-snapshot: cannot load %s: %s\n", path, kvrt_last_error());
      model = nullptr;
    }
  }
  ~Fixture() {
    kvrt_model_destroy(model);
    kvrt_runtime_destroy(rt);
  }
};

uint64_t blocks_used(kvrt_runtime* rt) {
  kvrt_runtime_stats st{};
  st.struct_size = sizeof st;
  kvrt_runtime_get_stats(rt, &st);
  return st.n_blocks_used;
}

// Rewrites the header checksum and the sections' stored-bytes checksums to
// match the (mutated) input, so that the fuzzer also reaches the checks
// behind them: header fields, zstd frames, section sizes and flags.
void reseal(std::vector<uint8_t>& b) {
  using namespace kvrt::snap;
  if (b.size() < kPreambleBytes) return;
  const uint32_t hb = get_u32(b.data() + 20);
  if (hb < 8 || hb > kMaxHeaderBytes || b.size() < kPreambleBytes + hb) return;
  put_u64(b.data() + kPreambleBytes + hb - 8, hash64(b.data(), kPreambleBytes + hb - 8, 0));
  size_t off = kPreambleBytes + hb;
  for (int sec = 0; sec < 3; ++sec) {  // tokens, KV, and the stage when present
    if (b.size() - off < kDescriptorBytes) return;
    Hasher h(get_u32(b.data() + off));
    h.update(b.data() + off, kDescriptorBytes);
    off += kDescriptorBytes;
    for (;;) {
      if (b.size() - off < 4) return;
      const uint32_t len = get_u32(b.data() + off);
      h.update(b.data() + off, 4);
      off += 4;
      if (len == 0) break;
      if (b.size() - off < len) return;
      h.update(b.data() + off, len);
      off += len;
    }
    if (b.size() - off < 16) return;
    put_u64(b.data() + off + 8, h.finish64());
    off += 16;
  }
}

void load_once(Fixture& fx, const uint8_t* data, size_t size) {
  kvrt_session* s = nullptr;
  const kvrt_status st = kvrt_session_load_buffer(fx.model, data, size, nullptr, &s);
  if (st == KVRT_OK) {
    if (!s) std::abort();
    // A loaded session must be usable.
    int32_t tok = 1;
    float logits[512];
    kvrt_decode_step(s, &tok, 1, logits, 512);
    kvrt_session_destroy(s);
  } else {
    if (s) std::abort();
    if (st != KVRT_ERR_CORRUPT && st != KVRT_ERR_VERSION && st != KVRT_ERR_MODEL_MISMATCH &&
        st != KVRT_ERR_UNSUPPORTED && st != KVRT_ERR_OUT_OF_MEMORY)
      std::abort();  // no other status describes bad snapshot bytes
  }
  if (blocks_used(fx.rt) != 0) std::abort();
  // Inspection runs the same checks; with the model it must agree with the load.
  kvrt_snapshot_info info{};
  info.struct_size = sizeof info;
  const kvrt_status si = kvrt_snapshot_inspect_buffer(data, size, fx.model, &info);
  if ((si == KVRT_OK) != (st == KVRT_OK) && st != KVRT_ERR_OUT_OF_MEMORY) std::abort();
  if (si == KVRT_OK && info.total_bytes != size) std::abort();
  const kvrt_status sn = kvrt_snapshot_inspect_buffer(data, size, nullptr, &info);
  if (sn == KVRT_OK && si != KVRT_OK && si != KVRT_ERR_MODEL_MISMATCH && si != KVRT_ERR_UNSUPPORTED &&
      si != KVRT_ERR_CORRUPT)
    std::abort();
  if (st == KVRT_OK && sn != KVRT_OK) std::abort();  // what loads, inspects
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture fx;
  if (!fx.model) return 0;  // no model: nothing to test against
  load_once(fx, data, size);
  std::vector<uint8_t> sealed(data, data + size);
  reseal(sealed);
  load_once(fx, sealed.data(), sealed.size());
  return 0;
}
