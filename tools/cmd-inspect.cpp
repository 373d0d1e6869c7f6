// `kvrt inspect`: prints a session snapshot's header and section sizes and
// verifies every checksum in it, without the model (or against one with -m).
#include <sys/stat.h>

#include <cinttypes>
#include <cstdio>
#include <string>
#include <vector>

#include "cli-common.hpp"

namespace kvrt_tools {
namespace {

void print_help() {
  std::printf(
      "usage: kvrt inspect FILE|STORE [-m MODEL]\n"
      "\n"
      "Reads a session snapshot (written by kvrt run --save or kvrt_session_save)\n"
      "and prints its format version, flags, model fingerprint, token count, cache\n"
      "formats and geometry, saved sampler, and the raw and stored (compressed)\n"
      "bytes of each section. Every checksum, zstd frame and value is verified; the\n"
      "model is not needed. With -m it also checks that the snapshot was made with\n"
      "that model (fingerprint and shapes) and can be loaded by it.\n"
      "\n"
      "Given a session store folder (kvrt run --store), it lists each saved name with\n"
      "its tokens, KV formats, blocks and bytes, and verifies its manifest and every\n"
      "block it names in the pack; it prints the pack's size.\n"
      "Exits 0 when everything holds; otherwise prints the status and what is wrong\n"
      "(section, field, offset) on stderr and exits 1.\n"
      "\n"
      "options:\n"
      "  -m, --model PATH    also check against this GGUF model\n"
      "  -h, --help          this text\n");
}

double ratio(uint64_t raw, uint64_t stored) { return stored ? double(raw) / double(stored) : 0.0; }

void print_section(const char* name, uint64_t raw, uint64_t stored) {
  std::printf("  %-8s %14" PRIu64 " %14" PRIu64 " %8.3f\n", name, raw, stored, ratio(raw, stored));
}

// Prints what the inspection got to; fields it did not reach are zero.
void print_info(const std::string& path, const kvrt_snapshot_info& si) {
  std::printf("snapshot %s\n", path.c_str());
  if (si.format_version == 0) return;  // the header itself did not hold
  std::printf("  format version  %u\n", si.format_version);
  std::printf("  flags           required 0x%08x%s, optional 0x%08x\n", si.required_flags,
              (si.required_flags & 1u) ? " (quantized cache: f16 tail stage section)" : "", si.optional_flags);
  std::printf("  model           fingerprint %016" PRIx64 "%016" PRIx64 "\n", si.fingerprint_hi, si.fingerprint_lo);
  std::printf("                  %u layers, %u KV heads of %u, vocabulary %u\n", si.n_layer, si.n_head_kv,
              si.head_dim, si.n_vocab);
  std::printf("  tokens          %u of n_ctx %u (prefill batch %u)\n", si.n_tokens, si.n_ctx, si.max_batch);
  std::printf("  KV cache        %s, blocks of %u tokens, %" PRIu64 " bytes a block\n",
              kv_pair_name(si.kv_format_k, si.kv_format_v).c_str(), si.block_tokens, si.block_bytes);
  std::printf("  sampler         temperature %g, top-k %d, top-p %g, seed %" PRIu64 "\n", double(si.temperature),
              si.top_k, double(si.top_p), si.seed);
  std::printf("  section             raw bytes   stored bytes    ratio\n");
  if (si.tokens_stored_bytes) print_section("tokens", si.tokens_raw_bytes, si.tokens_stored_bytes);
  if (si.kv_stored_bytes) {
    print_section("KV", si.kv_raw_bytes, si.kv_stored_bytes);
    std::printf("           (byte planes: %u)\n", si.kv_plane_width);
  }
  if (si.stage_stored_bytes) print_section("stage", si.stage_raw_bytes, si.stage_stored_bytes);
  if (si.total_bytes) {
    const uint64_t raw = si.tokens_raw_bytes + si.kv_raw_bytes + si.stage_raw_bytes;
    print_section("total", raw, si.total_bytes);
  }
}

// Lists and verifies every name of a store; returns the exit code.
int inspect_store(const std::string& dir, const kvrt_model* model) {
  StorePtr store = open_store(dir);
  size_t n = 0;
  check(kvrt_store_list(store.get(), nullptr, 0, &n), "listing " + dir);
  std::vector<char> list(n + 1);
  check(kvrt_store_list(store.get(), list.data(), list.size(), &n), "listing " + dir);
  struct stat sb;
  const std::string pack = dir + "/blocks.kvp";
  std::printf("store %s\n", dir.c_str());
  std::printf("  pack            %lld bytes\n", stat(pack.c_str(), &sb) == 0 ? static_cast<long long>(sb.st_size) : -1LL);
  std::printf("  %-24s %8s %8s %7s %12s %14s %14s  %s\n", "name", "tokens", "blocks", "KV", "manifest", "block bytes",
              "raw bytes", "check");
  int bad = 0;
  for (size_t i = 0; i < n;) {
    const std::string name(list.data() + i);
    i += name.size() + 1;
    kvrt_store_entry_info e{};
    e.struct_size = sizeof e;
    const kvrt_status st = kvrt_store_inspect(store.get(), name.c_str(), model, &e);
    if (st != KVRT_OK) {
      std::printf("  %-24s %s: %s\n", name.c_str(), kvrt_status_string(st), kvrt_last_error());
      ++bad;
      continue;
    }
    std::printf("  %-24s %8u %8u %7s %12" PRIu64 " %14" PRIu64 " %14" PRIu64 "  ok\n", name.c_str(), e.n_tokens,
                e.n_blocks, kv_pair_name(e.kv_format_k, e.kv_format_v).c_str(), e.manifest_bytes,
                e.block_stored_bytes, e.block_raw_bytes);
  }
  if (bad) {
    std::fprintf(stderr, "kvrt: %d of the store's names failed verification\n", bad);
    return kExitFailure;
  }
  std::printf("  checksums       all verified%s\n", model ? "; made with this model" : "");
  return kExitOk;
}

}  // namespace

int cmd_inspect(int argc, char** argv) {
  std::string path, model_arg;
  ArgReader a(argc, argv, 2);
  while (a.next()) {
    if (a.is("-h", "--help")) {
      print_help();
      return kExitOk;
    } else if (a.is("-m", "--model")) {
      model_arg = a.value();
    } else if (!a.current().empty() && a.current()[0] != '-' && path.empty()) {
      path = a.current();
    } else {
      a.unknown();
    }
  }
  if (path.empty()) usage_error("no snapshot file or store given (kvrt inspect FILE|STORE)");

  RuntimePtr runtime;
  ModelPtr model;
  if (!model_arg.empty()) {
    runtime = make_runtime(1, 0);
    model = load_model(runtime.get(), model_arg);
  }
  struct stat sb;
  if (stat(path.c_str(), &sb) == 0 && S_ISDIR(sb.st_mode)) return inspect_store(path, model.get());
  kvrt_snapshot_info si{};
  si.struct_size = sizeof si;
  const kvrt_status st = kvrt_snapshot_inspect(path.c_str(), model.get(), &si);
  print_info(path, si);
  check(st, "inspecting " + path);
  std::printf("  checksums       all verified%s\n", model ? "; made with this model" : "");
  return kExitOk;
}

}  // namespace kvrt_tools
