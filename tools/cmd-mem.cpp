// `kvrt mem`: the KV cache memory math of a model for each storage format —
// bytes per token, bytes for a context, and how many tokens a budget holds.
#include <cinttypes>
#include <cstdio>
#include <string>
#include <vector>

#include "cli-common.hpp"

namespace kvrt_tools {
namespace {

void print_help() {
  std::printf(
      "usage: kvrt mem [-m MODEL] [--budget SIZE] [--ctx N] [--block-tokens N] [--kv K/V]\n"
      "\n"
      "Prints the model's weight bytes and, for each KV storage format, the KV bytes\n"
      "one token takes (all layers, K and V, scales included), the bytes of a full\n"
      "context, and the most tokens a budget holds. The block pool hands out whole\n"
      "blocks of --block-tokens positions, so the budget holds\n"
      "floor(budget / (block_tokens x bytes per token)) blocks, i.e. that many times\n"
      "block_tokens tokens (a session's last block may be partly empty).\n"
      "\n"
      "options:\n"
      "  -m, --model PATH      GGUF model (default: $KVRT_MODEL, else\n"
      "                        ../shared/models/stories260K.gguf)\n"
      "      --budget SIZE     KV budget, such as 512M or 2G (default 1G = 1073741824 bytes)\n"
      "      --ctx N           context length to cost (default: the model's)\n"
      "      --block-tokens N  positions per KV block (default 16)\n"
      "      --kv K/V          also show a mixed key/value format pair, such as q8/q4\n"
      "  -h, --help            this text\n");
}

}  // namespace

int cmd_mem(int argc, char** argv) {
  std::string model_arg;
  uint64_t budget = 1ull << 30;
  uint32_t n_ctx = 0;
  uint32_t block_tokens = default_block_tokens();
  bool extra_pair = false;
  uint32_t extra_k = 0, extra_v = 0;

  ArgReader a(argc, argv, 2);
  while (a.next()) {
    const std::string opt = a.current();
    if (a.is("-h", "--help")) {
      print_help();
      return kExitOk;
    } else if (a.is("-m", "--model")) {
      model_arg = a.value();
    } else if (a.is("--budget")) {
      budget = parse_size(opt, a.value());
    } else if (a.is("--ctx")) {
      n_ctx = parse_u32(opt, a.value());
      if (n_ctx == 0) usage_error("--ctx must be above 0");
    } else if (a.is("--block-tokens")) {
      block_tokens = parse_block_tokens(opt, a.value());
    } else if (a.is("--kv")) {
      parse_kv_pair(opt, a.value(), &extra_k, &extra_v);
      extra_pair = true;
    } else {
      a.unknown();
    }
  }

  const std::string path = resolve_model_path(model_arg);
  RuntimePtr runtime = make_runtime(1, 0, block_tokens);
  ModelPtr model = load_model(runtime.get(), path);
  const kvrt_model_info info = model_info(model.get());
  if (n_ctx == 0) n_ctx = info.n_ctx_train;

  std::printf("model: %s\n", path.c_str());
  std::printf("  %s \"%s\": %u layers, embedding %u, %u heads, %u KV heads, head dim %u, ff %u, vocab %u, context %u\n",
              info.architecture, info.name, info.n_layer, info.n_embd, info.n_head, info.n_head_kv,
              info.head_dim, info.n_ff, info.n_vocab, info.n_ctx_train);
  std::printf("  weights: %" PRIu64 " parameters, %" PRIu64 " bytes (%s)\n", info.n_params,
              info.weight_bytes, format_bytes(info.weight_bytes).c_str());
  std::printf("\nKV cache: budget %" PRIu64 " bytes (%s), blocks of %u tokens, context %u tokens\n\n",
              budget, format_bytes(budget).c_str(), block_tokens, n_ctx);
  std::printf("| kv | bytes/token | bytes for %u tokens | tokens in budget | full contexts in budget |\n", n_ctx);
  std::printf("|---|---:|---:|---:|---:|\n");

  struct Row {
    uint32_t k, v;
  };
  std::vector<Row> rows;
  for (uint32_t f = 0; f < KVRT_KV_FORMAT_COUNT; ++f) rows.push_back({f, f});
  if (extra_pair && extra_k != extra_v) rows.push_back({extra_k, extra_v});

  for (const Row& r : rows) {
    const std::string name = kv_pair_name(r.k, r.v);
    uint64_t bpt = 0;
    if (r.k == r.v) {
      bpt = info.kv_bytes_per_token[r.k];
    } else {
      kvrt_status st = kvrt_model_kv_bytes_per_token(model.get(), r.k, r.v, &bpt);
      if (st == KVRT_ERR_UNSUPPORTED) bpt = 0;
      else check(st, "computing KV bytes per token for " + name);
    }
    if (bpt == 0) {
      std::printf("| %s | unsupported | | | |\n", name.c_str());
      continue;
    }
    // A session of n_ctx tokens holds ceil(n_ctx / block_tokens) whole blocks.
    const uint64_t ctx_blocks = (n_ctx + block_tokens - 1) / block_tokens;
    const uint64_t ctx_bytes = ctx_blocks * block_tokens * bpt;
    const uint64_t block_bytes = bpt * block_tokens;
    const uint64_t budget_tokens = budget / block_bytes * block_tokens;
    std::printf("| %s | %" PRIu64 " | %" PRIu64 " (%s) | %" PRIu64 " | %" PRIu64 " |\n", name.c_str(),
                bpt, ctx_bytes, format_bytes(ctx_bytes).c_str(), budget_tokens,
                budget / block_bytes / ctx_blocks);
  }
  std::printf(
      "\ntokens in budget = floor(budget / (%u x bytes/token)) x %u: the pool allocates whole\n"
      "blocks of %u tokens. bytes for a context round it up to whole blocks likewise.\n",
      block_tokens, block_tokens, block_tokens);
  return kExitOk;
}

}  // namespace kvrt_tools
