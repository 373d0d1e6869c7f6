// Fuzz target of the store's manifest reader: every input, as the manifest
// of a name in a real store (whose pack holds the fixture's blocks), must
// load or end in a status, never a crash, leak or block left in use; the
// inspection must agree with the load.
#include "store-fixture.hpp"

namespace {

using namespace kvrt::snap;

// Rewrites the header checksum, the store id, the store record's checksum
// and the trailer to match the (mutated) input, so that the fuzzer also
// reaches the checks behind them: fields, the block table, the frames and
// the blocks in the pack.
void reseal(std::vector<uint8_t>& b, const uint8_t* store_id) {
  if (b.size() < kPreambleBytes) return;
  const uint32_t hb = get_u32(b.data() + 20);
  if (hb < 8 || hb > kMaxHeaderBytes || b.size() < kPreambleBytes + hb) return;
  put_u64(b.data() + kPreambleBytes + hb - 8, hash64(b.data(), kPreambleBytes + hb - 8, 0));
  const size_t rec = kPreambleBytes + hb;
  if (b.size() < rec + kStoreRecordBytes + 8) return;
  std::memcpy(b.data() + rec, store_id, 16);
  put_u64(b.data() + rec + 56, hash64(b.data() + rec, 56, kManifestSeed));
  put_u64(b.data() + b.size() - 8, hash64(b.data() + rec, b.size() - 8 - rec, kManifestSeed));
}

kvrt_store* g_store = nullptr;

void run_once(store_fuzz::Fixture& fx, const uint8_t* data, size_t size) {
  if (!store_fuzz::write_all(fx.dir + "/fuzz.kvm", data, size)) std::abort();
  store_fuzz::load_and_inspect(fx, g_store, "fuzz");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static store_fuzz::Fixture fx;
  if (!fx.ok) return 0;  // no model: nothing to test against
  if (!g_store && kvrt_store_open(fx.dir.c_str(), nullptr, &g_store) != KVRT_OK) std::abort();
  run_once(fx, data, size);
  std::vector<uint8_t> sealed(data, data + size);
  reseal(sealed, fx.store_id);
  run_once(fx, sealed.data(), sealed.size());
  return 0;
}
