// Benchmark (not a test): snapshot save and load throughput, compression
// ratio, and resuming a long session from a snapshot against recomputing
// its prompt, for f16, q8 and q4 caches; then suspend and resume of the
// same sessions (held bytes, pool bytes freed, times in host memory and in
// a spill file, by compression level); then, for f16 and q8, session
// stores: a full save into an empty store against a snapshot file, an
// incremental save after 16 more tokens, and loading a name saved many
// times against loading one file. Public API only.
// Built with the tests: build/tests/unit/bench-snapshot.
// Run:   bench-snapshot MODEL [TOKENS [REPEATS [THREADS [DIR]]]]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "kvrt/kvrt.h"

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void check(kvrt_status st, const char* what) {
  if (st == KVRT_OK) return;
  std::fprintf(stderr, "bench-snapshot: %s: %s: %s\n", what, kvrt_status_string(st), kvrt_last_error());
  std::exit(1);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Full save into an empty store (each repeat in a fresh folder); then the
// name saved again after each 16 more tokens (timed); then the name, saved
// 1 + repeats times, loaded, against a snapshot file of the same session.
std::string bench_store(kvrt_model* model, kvrt_session* s, const char* name, double raw, double snap_bytes,
                        double file_save_s, const std::vector<int32_t>& toks, int repeats,
                        const std::string& dir, const std::string& path) {
  (void)snap_bytes;
  std::vector<double> full_t, inc_t, chain_t, file_t;
  std::vector<double> inc_bytes;
  uint64_t full_bytes = 0;
  uint32_t inc_blocks = 0;
  kvrt_store* st = nullptr;
  for (int r = 0; r < repeats; ++r) {
    kvrt_store_close(st);
    st = nullptr;
    std::filesystem::remove_all(dir);
    check(kvrt_store_open(dir.c_str(), nullptr, &st), "store open");
    kvrt_store_save_stats ss{};
    ss.struct_size = sizeof ss;
    const double a = now_s();
    check(kvrt_store_save(st, s, "bench", nullptr, &ss), "store save");
    full_t.push_back(now_s() - a);
    full_bytes = ss.pack_bytes_written + ss.manifest_bytes;
  }
  for (int r = 0; r < repeats; ++r) {
    // 16 more tokens (from the same pseudo-random sequence), then save.
    check(kvrt_decode_step(s, toks.data() + 16 * r, 16, nullptr, 0), "16 more tokens");
    kvrt_store_save_stats ss{};
    ss.struct_size = sizeof ss;
    const double a = now_s();
    check(kvrt_store_save(st, s, "bench", nullptr, &ss), "incremental save");
    inc_t.push_back(now_s() - a);
    inc_bytes.push_back(double(ss.pack_bytes_written + ss.manifest_bytes));
    inc_blocks = ss.blocks_written;
  }
  check(kvrt_session_save(s, path.c_str(), nullptr), "file save");
  for (int r = 0; r < repeats; ++r) {
    kvrt_session* l = nullptr;
    double a = now_s();
    check(kvrt_store_load(st, model, "bench", nullptr, &l), "chain load");
    chain_t.push_back(now_s() - a);
    kvrt_session_destroy(l);
    a = now_s();
    check(kvrt_session_load(model, path.c_str(), nullptr, &l), "file load");
    file_t.push_back(now_s() - a);
    kvrt_session_destroy(l);
  }
  kvrt_store_close(st);
  char row[512];
  std::snprintf(row, sizeof row, "| %s | %.1f | %.1f | %.2f | %.0f | %.1f | %.0f | %u | %.1f | %.1f |\n", name,
                file_save_s * 1e3, median(full_t) * 1e3, double(full_bytes) / 1e6, raw / 1e6 / median(full_t),
                median(inc_t) * 1e3, median(inc_bytes), inc_blocks, median(file_t) * 1e3, median(chain_t) * 1e3);
  return row;
}

uint64_t pool_used(const kvrt_runtime* rt) {
  kvrt_runtime_stats rs{};
  rs.struct_size = sizeof rs;
  check(kvrt_runtime_get_stats(rt, &rs), "runtime stats");
  return rs.kv_used_bytes;
}

// Suspends and resumes `s` in host memory and in a spill file in `dir`, at
// zstd levels -1 (faster), 1 (the suspend default) and 3 (the save
// default); one table row each.
void bench_suspend(const kvrt_runtime* rt, kvrt_session* s, const char* name, int repeats,
                   const std::string& dir, std::vector<std::string>& rows) {
  for (int spill = 0; spill <= 1; ++spill)
    for (int level : {-1, 1, 3}) {
      kvrt_suspend_params p;
      kvrt_suspend_default_params(&p);
      p.compression_level = level;
      p.spill_dir = spill ? dir.c_str() : nullptr;
      std::vector<double> sus_t, res_t;
      uint64_t held = 0, freed = 0;
      for (int r = 0; r < repeats; ++r) {
        const uint64_t before = pool_used(rt);
        double a = now_s();
        check(kvrt_session_suspend(s, &p), "suspend");
        sus_t.push_back(now_s() - a);
        freed = before - pool_used(rt);
        kvrt_session_stats st{};
        st.struct_size = sizeof st;
        check(kvrt_session_get_stats(s, &st), "session stats");
        held = st.suspended_bytes;
        a = now_s();
        check(kvrt_session_resume(s), "resume");
        res_t.push_back(now_s() - a);
      }
      char row[256];
      std::snprintf(row, sizeof row, "| %s | %s | %d | %.3f | %.2f | %.1f | %.1f |\n", name,
                    spill ? "file" : "memory", level, double(held) / 1e6, double(freed) / 1e6,
                    median(sus_t) * 1e3, median(res_t) * 1e3);
      rows.push_back(row);
    }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench-snapshot MODEL [TOKENS [REPEATS [THREADS [DIR]]]]\n");
    return 2;
  }
  const uint32_t n_tokens = argc > 2 ? uint32_t(std::atoi(argv[2])) : 4096;
  const int repeats = argc > 3 ? std::atoi(argv[3]) : 5;
  const uint32_t threads = argc > 4 ? uint32_t(std::atoi(argv[4])) : 2;
  const std::string dir = argc > 5 ? argv[5] : (std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp");
  kvrt_runtime_params rp;
  kvrt_runtime_default_params(&rp);
  rp.n_threads = threads;
  rp.kv_budget_bytes = 2ull << 30;
  kvrt_runtime* rt = nullptr;
  check(kvrt_runtime_create(&rp, &rt), "runtime");
  kvrt_model* model = nullptr;
  check(kvrt_model_load(rt, argv[1], nullptr, &model), "model");
  kvrt_model_info mi{};
  mi.struct_size = sizeof mi;
  check(kvrt_model_get_info(model, &mi), "model info");
  std::vector<int32_t> toks(n_tokens);
  uint32_t x = 12345;
  for (auto& t : toks) {
    x = x * 1664525u + 1013904223u;
    t = int32_t((x >> 8) % mi.n_vocab);
  }
  std::vector<float> logits(mi.n_vocab);
  const std::string path = dir + "/bench-snapshot.kvs";
  const std::string store_dir = dir + "/bench-snapshot-store";
  std::vector<std::string> store_rows;
  std::vector<std::string> suspend_rows;
  std::printf("%u tokens, %d repeats (medians), %u threads, zstd level 3\n", n_tokens, repeats, threads);
  std::printf("| cache | raw KV MB | snapshot MB | ratio | save MB/s | load MB/s | file save ms | file load ms | prefill ms | prefill / load |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  const uint32_t formats[][2] = {{KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16},
                                 {KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8},
                                 {KVRT_KV_FORMAT_Q4, KVRT_KV_FORMAT_Q4}};
  const char* names[] = {"f16", "q8", "q4"};
  for (int f = 0; f < 3; ++f) {
    kvrt_session_params sp;
    kvrt_session_default_params(&sp);
    sp.kv_format_k = formats[f][0];
    sp.kv_format_v = formats[f][1];
    sp.n_ctx = n_tokens + 16 * uint32_t(repeats + 1);  // room for the incremental saves
    sp.max_batch = 64;
    kvrt_session* s = nullptr;
    check(kvrt_session_create(model, &sp, &s), "session");
    const double t0 = now_s();
    check(kvrt_decode_step(s, toks.data(), toks.size(), logits.data(), logits.size()), "prefill");
    const double prefill_s = now_s() - t0;

    size_t need = 0;
    check(kvrt_session_save_buffer(s, nullptr, 0, &need, nullptr), "size query");
    std::vector<uint8_t> buf(need);
    std::vector<double> save_t, load_t, fsave_t, fload_t;
    for (int r = 0; r < repeats; ++r) {
      size_t got = 0;
      double a = now_s();
      check(kvrt_session_save_buffer(s, buf.data(), buf.size(), &got, nullptr), "save");
      save_t.push_back(now_s() - a);
      kvrt_session* l = nullptr;
      a = now_s();
      check(kvrt_session_load_buffer(model, buf.data(), got, nullptr, &l), "load");
      load_t.push_back(now_s() - a);
      kvrt_session_destroy(l);
      a = now_s();
      check(kvrt_session_save(s, path.c_str(), nullptr), "file save");
      fsave_t.push_back(now_s() - a);
      a = now_s();
      check(kvrt_session_load(model, path.c_str(), nullptr, &l), "file load");
      fload_t.push_back(now_s() - a);
      kvrt_session_destroy(l);
    }
    kvrt_snapshot_info si{};
    si.struct_size = sizeof si;
    check(kvrt_snapshot_inspect_buffer(buf.data(), buf.size(), nullptr, &si), "inspect");
    const double raw = double(si.kv_raw_bytes + si.stage_raw_bytes + si.tokens_raw_bytes);
    std::printf("| %s | %.2f | %.2f | %.3f | %.0f | %.0f | %.1f | %.1f | %.0f | %.0f |\n", names[f], raw / 1e6,
                double(si.total_bytes) / 1e6, raw / double(si.total_bytes), raw / 1e6 / median(save_t),
                raw / 1e6 / median(load_t), median(fsave_t) * 1e3, median(fload_t) * 1e3, prefill_s * 1e3,
                prefill_s / median(fload_t));
    std::fflush(stdout);
    bench_suspend(rt, s, names[f], repeats, dir, suspend_rows);
    if (f < 2) store_rows.push_back(bench_store(model, s, names[f], raw, double(si.total_bytes), median(fsave_t),
                                                toks, repeats, store_dir, path));
    kvrt_session_destroy(s);
  }
  std::printf("\nsuspend / resume, %u tokens, medians of %d\n", n_tokens, repeats);
  std::printf("| cache | where | level | held MB | pool MB freed | suspend ms | resume ms |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");
  for (const std::string& row : suspend_rows) std::printf("%s", row.c_str());
  std::printf("\nSession store (%u tokens, then saves after 16 more tokens each, medians of %d)\n", n_tokens, repeats);
  std::printf("| cache | file save ms | store full save ms | store full MB | store save MB/s | incremental save ms "
              "| incremental bytes | blocks written | file load ms | chain load ms |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (const std::string& r : store_rows) std::printf("%s", r.c_str());
  std::remove(path.c_str());
  std::filesystem::remove_all(store_dir);
  kvrt_model_destroy(model);
  kvrt_runtime_destroy(rt);
  return 0;
}
