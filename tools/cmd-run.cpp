// `kvrt run`: tokenizes a prompt (or loads a saved session), prefills it,
// then samples and streams the generated text to stdout, optionally saving
// the session at the end; timings and KV use go to stderr.
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "cli-common.hpp"

namespace kvrt_tools {
namespace {

void print_help() {
  std::printf(
      "usage: kvrt run [-m MODEL] [-p PROMPT] [-n N] [options]\n"
      "\n"
      "Generates N tokens after PROMPT and streams them to stdout (only the\n"
      "generated text; the prompt is not echoed). Stops early at end-of-sequence.\n"
      "Timings and KV cache use are printed on stderr at the end.\n"
      "\n"
      "options:\n"
      "  -m, --model PATH    GGUF model (default: $KVRT_MODEL, else\n"
      "                      ../shared/models/stories260K.gguf)\n"
      "  -p, --prompt TEXT   prompt; a beginning-of-sequence token is put first (default \"\")\n"
      "  -n, --n-predict N   tokens to generate (default 64)\n"
      "      --temp T        temperature; 0 is greedy (default 0.8)\n"
      "      --top-k K       keep the K most likely tokens; 0 keeps all (default 40)\n"
      "      --top-p P       keep the smallest set reaching probability P, in (0,1] (default 0.95)\n"
      "      --seed S        sampler seed (default 0, so runs repeat exactly)\n"
      "      --kv FORMAT     KV cache format: f32, f16, bf16, q8, q4, or K/V such as\n"
      "                      q8/q4 (default f16; formats this build lacks are refused)\n"
      "  -t, --threads N     worker threads; 0 is one per core (default 0)\n"
      "      --ctx N         most tokens the session holds (default: the model's context)\n"
      "      --budget SIZE   KV cache budget, such as 512M or 2G (default 1G)\n"
      "      --save FILE     after generating, save the session (all generated tokens\n"
      "                      fed back) and its sampler state to FILE\n"
      "      --load FILE     continue the session saved in FILE instead of starting from a\n"
      "                      prompt (-p, --kv and --ctx are refused): prints only the N new\n"
      "                      tokens. The saved sampler continues where it stopped unless\n"
      "                      --temp, --top-k, --top-p or --seed is given; then the sampler is\n"
      "                      set anew from those, the saved values filling the others, and\n"
      "                      restarts from its seed\n"
      "      --store DIR     after generating, save the session into the session store DIR\n"
      "                      (a folder, created if missing) under --name; saving again\n"
      "                      under a name writes only the KV blocks new since the last save\n"
      "      --load-store DIR  continue the session saved in store DIR under --name, as --load\n"
      "                      does for a file (with --store DIR too, the longer session is saved\n"
      "                      back)\n"
      "      --name NAME     the session's name in the store: A-Z a-z 0-9 . _ -, not starting\n"
      "                      with '.'\n"
      "  -h, --help          this text\n");
}

struct RunOptions {
  std::string model;
  std::string prompt;
  uint32_t n_predict = 64;
  kvrt_sampler_params sampler{};
  uint32_t format_k = KVRT_KV_FORMAT_F16;
  uint32_t format_v = KVRT_KV_FORMAT_F16;
  uint32_t n_threads = 0;
  uint32_t n_ctx = 0;
  uint64_t budget_bytes = 0;
  std::string save_path, load_path;
  std::string store_dir, load_store_dir, name;
  bool sampler_given = false, temp_given = false, top_k_given = false, top_p_given = false,
       seed_given = false;
  bool prompt_given = false, kv_given = false, ctx_given = false;
};

std::string token_piece(const kvrt_model* model, int32_t token) {
  std::string piece(64, '\0');
  size_t len = 0;
  kvrt_status st = kvrt_token_to_piece(model, token, piece.data(), piece.size(), &len);
  if (st == KVRT_ERR_BUFFER_TOO_SMALL) {
    piece.resize(len);
    st = kvrt_token_to_piece(model, token, piece.data(), piece.size(), &len);
  }
  check(st, "converting token " + std::to_string(token) + " to text");
  piece.resize(len);
  return piece;
}

}  // namespace

int cmd_run(int argc, char** argv) {
  RunOptions o;
  kvrt_sampler_default_params(&o.sampler);
  o.sampler.seed = 0;

  ArgReader a(argc, argv, 2);
  while (a.next()) {
    const std::string opt = a.current();
    if (a.is("-h", "--help")) {
      print_help();
      return kExitOk;
    } else if (a.is("-m", "--model")) {
      o.model = a.value();
    } else if (a.is("-p", "--prompt")) {
      o.prompt = a.value();
      o.prompt_given = true;
    } else if (a.is("-n", "--n-predict")) {
      o.n_predict = parse_u32(opt, a.value());
    } else if (a.is("--temp")) {
      o.sampler.temperature = parse_float(opt, a.value());
      if (o.sampler.temperature < 0) usage_error("--temp must be >= 0");
      o.temp_given = true;
    } else if (a.is("--top-k")) {
      o.sampler.top_k = parse_u32(opt, a.value());
      o.top_k_given = true;
    } else if (a.is("--top-p")) {
      o.sampler.top_p = parse_float(opt, a.value());
      if (!(o.sampler.top_p > 0 && o.sampler.top_p <= 1)) usage_error("--top-p must be in (0, 1]");
      o.top_p_given = true;
    } else if (a.is("--seed")) {
      o.sampler.seed = parse_u64(opt, a.value());
      o.seed_given = true;
    } else if (a.is("--kv")) {
      parse_kv_pair(opt, a.value(), &o.format_k, &o.format_v);
      o.kv_given = true;
    } else if (a.is("-t", "--threads")) {
      o.n_threads = parse_u32(opt, a.value());
    } else if (a.is("--ctx")) {
      o.n_ctx = parse_u32(opt, a.value());
      o.ctx_given = true;
    } else if (a.is("--save")) {
      o.save_path = a.value();
    } else if (a.is("--load")) {
      o.load_path = a.value();
    } else if (a.is("--store")) {
      o.store_dir = a.value();
    } else if (a.is("--load-store")) {
      o.load_store_dir = a.value();
    } else if (a.is("--name")) {
      o.name = a.value();
    } else if (a.is("--budget")) {
      o.budget_bytes = parse_size(opt, a.value());
      if (o.budget_bytes == 0) usage_error("--budget must be above 0");
    } else {
      a.unknown();
    }
  }

  const std::string path = resolve_model_path(o.model);
  RuntimePtr runtime = make_runtime(o.n_threads, o.budget_bytes);
  ModelPtr model = load_model(runtime.get(), path);
  const kvrt_model_info info = model_info(model.get());

  o.sampler_given = o.temp_given || o.top_k_given || o.top_p_given || o.seed_given;
  const bool use_store = !o.store_dir.empty() || !o.load_store_dir.empty();
  if (use_store && o.name.empty()) usage_error("--store and --load-store need --name");
  if (!use_store && !o.name.empty()) usage_error("--name needs --store or --load-store");
  if (!o.load_path.empty() && !o.load_store_dir.empty()) usage_error("--load and --load-store exclude each other");
  if (!o.load_path.empty() || !o.load_store_dir.empty()) {
    if (o.prompt_given) usage_error("-p/--prompt cannot be used with --load: the saved session is continued");
    if (o.kv_given || o.ctx_given)
      usage_error("--kv and --ctx cannot be used with --load: the saved formats and context are kept");
  }
  // One handle per store folder: a store is locked while it is open.
  StorePtr save_store, load_store;
  if (!o.load_store_dir.empty()) load_store = open_store(o.load_store_dir);
  if (!o.store_dir.empty())
    save_store = o.store_dir == o.load_store_dir ? StorePtr() : open_store(o.store_dir);
  kvrt_store* save_to = save_store ? save_store.get() : (o.store_dir.empty() ? nullptr : load_store.get());
  const std::string loaded_from =
      o.load_store_dir.empty() ? o.load_path : o.load_store_dir + " (session " + o.name + ")";

  std::vector<float> logits(info.n_vocab);
  SessionPtr session;
  std::vector<int32_t> prompt;
  double prefill_s = 0;
  if (loaded_from.empty()) {
    // Count, then tokenize the prompt with BOS first.
    size_t n_prompt = 0;
    check(kvrt_tokenize(model.get(), o.prompt.data(), o.prompt.size(), KVRT_TOKENIZE_ADD_BOS,
                        nullptr, 0, &n_prompt),
          "counting the prompt's tokens");
    prompt.resize(n_prompt);
    check(kvrt_tokenize(model.get(), o.prompt.data(), o.prompt.size(), KVRT_TOKENIZE_ADD_BOS,
                        prompt.data(), prompt.size(), &n_prompt),
          "tokenizing the prompt");
    prompt.resize(n_prompt);
    if (prompt.empty()) throw CliError(kExitFailure, "the prompt produced no tokens");

    kvrt_session_params sp;
    kvrt_session_default_params(&sp);
    sp.kv_format_k = o.format_k;
    sp.kv_format_v = o.format_v;
    sp.n_ctx = o.n_ctx;
    kvrt_session* raw = nullptr;
    check(kvrt_session_create(model.get(), &sp, &raw),
          "creating a session with KV format " + kv_pair_name(o.format_k, o.format_v));
    session.reset(raw);
    check(kvrt_session_set_sampler(session.get(), &o.sampler), "setting the sampler");
    const double t_prefill0 = now_seconds();
    check(kvrt_decode_step(session.get(), prompt.data(), prompt.size(), logits.data(), logits.size()),
          "prefilling " + std::to_string(prompt.size()) + " prompt tokens");
    prefill_s = now_seconds() - t_prefill0;
  } else {
    kvrt_session* raw = nullptr;
    const double t0 = now_seconds();
    if (load_store)
      check(kvrt_store_load(load_store.get(), model.get(), o.name.c_str(), nullptr, &raw),
            "loading the session " + loaded_from);
    else
      check(kvrt_session_load(model.get(), o.load_path.c_str(), nullptr, &raw), "loading the session " + o.load_path);
    session.reset(raw);
    const double load_s = now_seconds() - t0;
    if (o.sampler_given) {
      // Options not given keep the saved values; the generator restarts from the seed.
      float temperature, top_p;
      int32_t top_k;
      uint64_t seed;
      if (load_store) {
        kvrt_store_entry_info ei{};
        ei.struct_size = sizeof ei;
        check(kvrt_store_inspect(load_store.get(), o.name.c_str(), nullptr, &ei), "reading the sampler of " + loaded_from);
        temperature = ei.temperature, top_k = ei.top_k, top_p = ei.top_p, seed = ei.seed;
      } else {
        kvrt_snapshot_info si{};
        si.struct_size = sizeof si;
        check(kvrt_snapshot_inspect(o.load_path.c_str(), nullptr, &si), "reading the sampler of " + o.load_path);
        temperature = si.temperature, top_k = si.top_k, top_p = si.top_p, seed = si.seed;
      }
      if (!o.temp_given) o.sampler.temperature = temperature;
      if (!o.top_k_given) o.sampler.top_k = static_cast<uint32_t>(top_k);
      if (!o.top_p_given) o.sampler.top_p = top_p;
      if (!o.seed_given) o.sampler.seed = seed;
      check(kvrt_session_set_sampler(session.get(), &o.sampler), "setting the sampler");
    }
    // The snapshot holds no logits: step back one token and decode it again
    // (the same single-token step the saved run made, so the same logits).
    size_t n_saved = 0;
    check(kvrt_session_get_tokens(session.get(), nullptr, 0, &n_saved), "counting the saved tokens");
    if (n_saved == 0) throw CliError(kExitFailure, loaded_from + ": the saved session holds no tokens");
    prompt.resize(n_saved);
    check(kvrt_session_get_tokens(session.get(), prompt.data(), prompt.size(), &n_saved));
    const int32_t last = prompt.back();
    check(kvrt_session_rewind(session.get(), n_saved - 1), "stepping back one token");
    check(kvrt_decode_step(session.get(), &last, 1, logits.data(), logits.size()), "decoding the last saved token");
    std::fprintf(stderr, "kvrt: loaded %zu tokens from %s in %.2f ms\n", n_saved, loaded_from.c_str(), load_s * 1e3);
  }

  kvrt_session_stats stats{};
  stats.struct_size = sizeof stats;
  check(kvrt_session_get_stats(session.get(), &stats));
  const uint32_t n_ctx = stats.n_ctx;

  uint32_t n_generated = 0;
  uint32_t n_steps = 0;
  double decode_s = 0;
  const char* stop_reason = "token limit";
  size_t n_in_cache = prompt.size();
  while (n_generated < o.n_predict) {
    int32_t token = 0;
    check(kvrt_session_sample(session.get(), logits.data(), logits.size(), &token), "sampling");
    if (token == info.eos_token) {
      stop_reason = "end of sequence";
      break;
    }
    const std::string piece = token_piece(model.get(), token);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    ++n_generated;
    // The last token need not be fed back, unless the session is saved.
    if (n_generated == o.n_predict && o.save_path.empty() && !save_to) break;
    if (n_in_cache >= n_ctx) {
      stop_reason = "context full";
      break;
    }
    const double t0 = now_seconds();
    check(kvrt_decode_step(session.get(), &token, 1, logits.data(), logits.size()),
          "decoding token " + std::to_string(n_in_cache));
    decode_s += now_seconds() - t0;
    ++n_steps;
    ++n_in_cache;
    if (n_generated == o.n_predict) break;
  }
  if (isatty(STDOUT_FILENO)) std::fputc('\n', stdout);
  std::fflush(stdout);

  check(kvrt_session_get_stats(session.get(), &stats));
  if (loaded_from.empty())
    std::fprintf(stderr, "\nkvrt: prompt %zu tokens, prefill %.1f tokens/s (%.2f ms)\n",
                 prompt.size(), prefill_s > 0 ? prompt.size() / prefill_s : 0.0, prefill_s * 1e3);
  else
    std::fprintf(stderr, "\nkvrt: resumed after %zu saved tokens\n", prompt.size());
  std::fprintf(stderr, "kvrt: generated %u tokens (stopped: %s), decode %.1f tokens/s (%.3f ms/token over %u steps)\n",
               n_generated, stop_reason, decode_s > 0 ? n_steps / decode_s : 0.0,
               n_steps > 0 ? decode_s * 1e3 / n_steps : 0.0, n_steps);
  std::fprintf(stderr, "kvrt: KV cache %s: %u tokens in %u blocks of %u, %llu bytes (%s; %llu bytes/token)\n",
               kv_pair_name(stats.kv_format_k, stats.kv_format_v).c_str(), stats.n_tokens,
               stats.n_blocks, stats.block_tokens, static_cast<unsigned long long>(stats.kv_bytes),
               format_bytes(stats.kv_bytes).c_str(),
               static_cast<unsigned long long>(stats.kv_bytes_per_token));
  if (!o.save_path.empty()) {
    const double t0 = now_seconds();
    check(kvrt_session_save(session.get(), o.save_path.c_str(), nullptr), "saving the session to " + o.save_path);
    const double save_s = now_seconds() - t0;
    kvrt_snapshot_info si{};
    si.struct_size = sizeof si;
    check(kvrt_snapshot_inspect(o.save_path.c_str(), nullptr, &si), "checking " + o.save_path);
    std::fprintf(stderr, "kvrt: saved %u tokens to %s: %llu bytes (%s) in %.2f ms\n", si.n_tokens,
                 o.save_path.c_str(), static_cast<unsigned long long>(si.total_bytes),
                 format_bytes(si.total_bytes).c_str(), save_s * 1e3);
  }
  if (save_to) {
    kvrt_store_save_stats ss{};
    ss.struct_size = sizeof ss;
    const double t0 = now_seconds();
    check(kvrt_store_save(save_to, session.get(), o.name.c_str(), nullptr, &ss),
          "saving the session to store " + o.store_dir + " as " + o.name);
    const double save_s = now_seconds() - t0;
    std::fprintf(stderr,
                 "kvrt: saved %u tokens to store %s as %s: %u blocks (%u written, %u already stored), "
                 "%llu bytes written (%s) in %.2f ms\n",
                 stats.n_tokens, o.store_dir.c_str(), o.name.c_str(), ss.blocks_total, ss.blocks_written,
                 ss.blocks_reused, static_cast<unsigned long long>(ss.pack_bytes_written + ss.manifest_bytes),
                 format_bytes(ss.pack_bytes_written + ss.manifest_bytes).c_str(), save_s * 1e3);
  }
  return kExitOk;
}

}  // namespace kvrt_tools
