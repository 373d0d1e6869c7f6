// Shared by the store fuzz targets: the test model, and a store folder
// holding two small sessions saved the same way every time ("f16": 40 f16
// tokens, "q8": 37 q8 tokens), so that the corpus's block offsets and
// records match the fixture's. Setting KVRT_STORE_FUZZ_DUMP to a folder
// copies the fixture's pack and manifests there (how the seed corpus was
// made).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

#include "kvrt/kvrt.h"
#include "snapshot/store.hpp"

namespace store_fuzz {

inline std::vector<uint8_t> read_all(const std::string& path) {
  std::vector<uint8_t> b;
  if (std::FILE* f = std::fopen(path.c_str(), "rb")) {
    uint8_t tmp[65536];
    size_t k;
    while ((k = std::fread(tmp, 1, sizeof tmp, f)) > 0) b.insert(b.end(), tmp, tmp + k);
    std::fclose(f);
  }
  return b;
}

inline bool write_all(const std::string& path, const uint8_t* d, size_t n) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return false;
  const bool ok = (n == 0 || std::fwrite(d, 1, n, f) == n);
  return std::fclose(f) == 0 && ok;
}

struct Fixture {
  kvrt_runtime* rt = nullptr;
  kvrt_model* model = nullptr;
  std::string dir;
  uint8_t store_id[16] = {};
  bool ok = false;

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
      std::fprintf(stderr, "store fuzz: cannot load %s: %s\n", path, kvrt_last_error());
      model = nullptr;
      return;
    }
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/kvrt-store-fuzz-XXXXXX";
    std::vector<char> t(templ.begin(), templ.end());
    t.push_back('\0');
    if (!mkdtemp(t.data())) return;
    dir = t.data();
    kvrt_store* st = nullptr;
    if (kvrt_store_open(dir.c_str(), nullptr, &st) != KVRT_OK) return;
    const bool saved = save(st, KVRT_KV_FORMAT_F16, 40, "f16") && save(st, KVRT_KV_FORMAT_Q8, 37, "q8");
    kvrt_store_close(st);
    if (!saved) return;
    const std::vector<uint8_t> pack = read_all(dir + "/blocks.kvp");
    if (pack.size() < kvrt::snap::kPackHeaderBytes) return;
    std::memcpy(store_id, pack.data() + 16, 16);
    if (const char* dump = std::getenv("KVRT_STORE_FUZZ_DUMP"))
      for (const char* f : {"blocks.kvp", "f16.kvm", "q8.kvm"})
        std::filesystem::copy_file(dir + "/" + f, std::string(dump) + "/" + f,
                                   std::filesystem::copy_options::overwrite_existing);
    ok = true;
  }

  bool save(kvrt_store* st, uint32_t fmt, size_t n, const char* name) {
    kvrt_session_params sp;
    kvrt_session_default_params(&sp);
    sp.kv_format_k = sp.kv_format_v = fmt;
    sp.n_ctx = 64;
    kvrt_session* s = nullptr;
    if (kvrt_session_create(model, &sp, &s) != KVRT_OK) return false;
    std::vector<int32_t> toks(n);
    uint32_t x = 12345;
    for (auto& v : toks) {
      x = x * 1664525u + 1013904223u;
      v = static_cast<int32_t>(3 + (x >> 8) % 500);
    }
    kvrt_snapshot_params p;
    kvrt_snapshot_default_params(&p);
    p.compression_level = 1;
    const bool good = kvrt_decode_step(s, toks.data(), n, nullptr, 0) == KVRT_OK &&
                      kvrt_store_save(st, s, name, &p, nullptr) == KVRT_OK;
    kvrt_session_destroy(s);
    return good;
  }

  ~Fixture() {
    kvrt_model_destroy(model);
    kvrt_runtime_destroy(rt);
    if (!dir.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  }

  uint64_t blocks_used() const {
    kvrt_runtime_stats st{};
    st.struct_size = sizeof st;
    kvrt_runtime_get_stats(rt, &st);
    return st.n_blocks_used;
  }
};

// Statuses that describe bad store bytes; anything else is a bug.
inline bool expected_failure(kvrt_status st) {
  return st == KVRT_ERR_CORRUPT || st == KVRT_ERR_VERSION || st == KVRT_ERR_MODEL_MISMATCH ||
         st == KVRT_ERR_UNSUPPORTED || st == KVRT_ERR_OUT_OF_MEMORY;
}

// Loads `name` (must end in a status; a loaded session must decode) and
// inspects it with and without the model; the three must agree.
inline void load_and_inspect(Fixture& fx, kvrt_store* st, const char* name) {
  kvrt_session* s = nullptr;
  const kvrt_status rc = kvrt_store_load(st, fx.model, name, nullptr, &s);
  if (rc == KVRT_OK) {
    if (!s) std::abort();
    int32_t tok = 1;
    std::vector<float> logits(512);
    kvrt_decode_step(s, &tok, 1, logits.data(), logits.size());
    kvrt_session_destroy(s);
  } else {
    if (s || !expected_failure(rc)) std::abort();
  }
  if (fx.blocks_used() != 0) std::abort();
  kvrt_store_entry_info info{};
  info.struct_size = sizeof info;
  const kvrt_status ri = kvrt_store_inspect(st, name, fx.model, &info);
  if ((ri == KVRT_OK) != (rc == KVRT_OK) && rc != KVRT_ERR_OUT_OF_MEMORY) std::abort();
  const kvrt_status rn = kvrt_store_inspect(st, name, nullptr, &info);
  if (rc == KVRT_OK && rn != KVRT_OK) std::abort();  // what loads, inspects
  if (rn != KVRT_OK && !expected_failure(rn)) std::abort();
}

}  // namespace store_fuzz
