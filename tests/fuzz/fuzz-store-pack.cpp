// Fuzz target of the store's pack scanner and block reader: every input, as
// the block pack of a store whose manifests name the fixture's blocks, must
// open or end in a status; each name must load or end in a status with no
// block left in use; and a new session must still save into it.
#include "store-fixture.hpp"

namespace {

using namespace kvrt::snap;

// Rewrites the pack header's store id and checksum and every record's two
// checksums to match the (mutated) input, so that the fuzzer reaches the
// checks behind them: sizes, frames, keys.
void reseal(std::vector<uint8_t>& b, const uint8_t* store_id) {
  if (b.size() < kPackHeaderBytes) return;
  std::memcpy(b.data() + 16, store_id, 16);
  put_u64(b.data() + 40, hash64(b.data(), 40, 0));
  size_t off = kPackHeaderBytes;
  while (b.size() - off >= kRecordHeaderBytes) {
    uint8_t* h = b.data() + off;
    put_u64(h + 40, hash64(h, 40, kRecordSeed));
    const uint64_t frame = get_u64(h + 32);
    if (b.size() - off < kRecordHeaderBytes + kRecordTrailerBytes ||
        frame > b.size() - off - kRecordHeaderBytes - kRecordTrailerBytes)
      return;
    put_u64(h + kRecordHeaderBytes + frame, hash64(h + kRecordHeaderBytes, frame, kRecordSeed ^ get_u64(h + 8)));
    off += kRecordHeaderBytes + frame + kRecordTrailerBytes;
  }
}

void run_once(store_fuzz::Fixture& fx, const uint8_t* data, size_t size) {
  if (!store_fuzz::write_all(fx.dir + "/blocks.kvp", data, size)) std::abort();
  kvrt_store* st = nullptr;
  const kvrt_status rc = kvrt_store_open(fx.dir.c_str(), nullptr, &st);
  if (rc != KVRT_OK) {
    if (st || !(rc == KVRT_ERR_CORRUPT || rc == KVRT_ERR_VERSION)) std::abort();
    return;
  }
  store_fuzz::load_and_inspect(fx, st, "f16");
  store_fuzz::load_and_inspect(fx, st, "q8");
  // Whatever the pack holds, a session with blocks of its own saves into
  // it, and loads back unless a record claims one of its blocks' keys.
  kvrt_session_params sp;
  kvrt_session_default_params(&sp);
  sp.n_ctx = 64;
  kvrt_session* s = nullptr;
  if (kvrt_session_create(fx.model, &sp, &s) != KVRT_OK) std::abort();
  int32_t toks[33];
  for (int i = 0; i < 33; ++i) toks[i] = 7 + 3 * i;
  if (kvrt_decode_step(s, toks, 33, nullptr, 0) != KVRT_OK) std::abort();
  if (kvrt_store_save(st, s, "new", nullptr, nullptr) != KVRT_OK) std::abort();
  kvrt_session_destroy(s);
  s = nullptr;
  const kvrt_status rl = kvrt_store_load(st, fx.model, "new", nullptr, &s);
  if (rl != KVRT_OK && rl != KVRT_ERR_CORRUPT) std::abort();
  kvrt_session_destroy(s);
  if (kvrt_store_remove(st, "new") != KVRT_OK) std::abort();
  kvrt_store_close(st);
  if (fx.blocks_used() != 0) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static store_fuzz::Fixture fx;
  if (!fx.ok) return 0;  // no model: nothing to test against
  run_once(fx, data, size);
  std::vector<uint8_t> sealed(data, data + size);
  reseal(sealed, fx.store_id);
  run_once(fx, sealed.data(), sealed.size());
  return 0;
}
