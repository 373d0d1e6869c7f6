// `kvrt eval-kv`: teacher-forces one token stream through an f32 cache and
// through the chosen cache formats, and reports how far the next-token
// distributions drift (KL divergence, top-1 agreement, perplexity).
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli-common.hpp"

namespace kvrt_tools {

namespace {

void print_help() {
  std::printf(
      "usage: kvrt eval-kv [-m MODEL] --kv FORMATS (--text FILE | --generate N) [options]\n"
      "\n"
      "Runs the same tokens through an f32 KV cache and through each format in\n"
      "FORMATS, one token per step (teacher forcing), and compares the\n"
      "next-token distributions at every position.\n"
      "\n"
      "  -m, --model PATH    GGUF model (default: $KVRT_MODEL or the test model)\n"
      "  --kv FORMATS        comma-separated formats, each F or K/V: f32 f16 q8 q4\n"
      "                      (e.g. q8,q4,q8/q4)\n"
      "  --text FILE         evaluate over this text (tokenized with BOS first)\n"
      "  --generate N        let the f32 cache generate N tokens first and\n"
      "                      evaluate over them\n"
      "  --temp T            sampling temperature of --generate; 0 is greedy (default 1)\n"
      "  --seed S            sampling seed of --generate (default 1)\n"
      "  --ctx N             tokens per session (default: the model's context);\n"
      "                      longer streams continue in new sessions\n"
      "  -t, --threads N     worker threads (default: one per core)\n"
      "  --block-tokens B    positions per KV block, 1..1024 (default 16); q8/q4\n"
      "                      keys share one scale per channel across a block\n"
      "  --json              one JSON object per format instead of a table\n"
      "\n"
      "Reported: mean_kl and max_kl, KL(f32 || format) in nats per position;\n"
      "top1, the fraction of positions whose most likely token agrees;\n"
      "ppl_ref and ppl, perplexity of the stream's next tokens under each.\n");
}

struct Options {
  std::string model, text_file;
  std::vector<std::pair<uint32_t, uint32_t>> kv;
  uint64_t generate = 0;
  float temp = 1.0f;
  uint64_t seed = 1;
  uint32_t ctx = 0, threads = 0, block_tokens = default_block_tokens();
  bool json = false;
};

struct Totals {
  double kl_sum = 0, kl_max = 0, nll_ref = 0, nll = 0;
  uint64_t agree = 0, n = 0, n_nll = 0;
};

SessionPtr open_session(kvrt_model* m, uint32_t kf, uint32_t vf, uint32_t n_ctx) {
  kvrt_session_params sp;
  kvrt_session_default_params(&sp);
  sp.kv_format_k = kf;
  sp.kv_format_v = vf;
  sp.n_ctx = n_ctx;
  kvrt_session* s = nullptr;
  check(kvrt_session_create(m, &sp, &s), "creating a " + kv_pair_name(kf, vf) + " session");
  return SessionPtr(s);
}

void log_softmax(const std::vector<float>& lg, std::vector<double>& out) {
  double mx = lg[0];
  for (float f : lg) mx = f > mx ? f : mx;
  double sum = 0;
  for (float f : lg) sum += std::exp(f - mx);
  const double lse = mx + std::log(sum);
  out.resize(lg.size());
  for (size_t i = 0; i < lg.size(); ++i) out[i] = lg[i] - lse;
}

size_t argmax(const std::vector<double>& v) {
  size_t b = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[b]) b = i;
  return b;
}

std::vector<int32_t> generate(kvrt_model* m, const Options& o, uint32_t n_ctx, uint32_t n_vocab,
                              int32_t bos) {
  std::vector<int32_t> out;
  std::vector<float> lg(n_vocab);
  kvrt_sampler_params smp;
  kvrt_sampler_default_params(&smp);
  smp.temperature = o.temp;
  smp.top_k = 0;
  smp.top_p = 1.0f;
  smp.seed = o.seed;
  while (out.size() < o.generate) {
    SessionPtr s = open_session(m, 0, 0, n_ctx);
    check(kvrt_session_set_sampler(s.get(), &smp), "setting the sampler");
    ++smp.seed;  // each session continues with a different stream
    int32_t t = bos >= 0 ? bos : 0;
    for (uint32_t i = 0; i < n_ctx && out.size() < o.generate; ++i) {
      out.push_back(t);
      check(kvrt_decode_step(s.get(), &t, 1, lg.data(), lg.size()), "generating");
      check(kvrt_session_sample(s.get(), lg.data(), lg.size(), &t), "sampling");
    }
  }
  return out;
}

}  // namespace

int cmd_eval_kv(int argc, char** argv) {
  Options o;
  ArgReader a(argc, argv, 2);
  while (a.next()) {
    if (a.is("-h", "--help")) {
      print_help();
      return kExitOk;
    } else if (a.is("-m", "--model")) {
      o.model = a.value();
    } else if (a.is("--kv")) {
      const std::string v = a.value();
      for (const std::string& f : split_list(v)) {
        uint32_t k = 0, vv = 0;
        parse_kv_pair("--kv", f, &k, &vv);
        o.kv.push_back({k, vv});
      }
    } else if (a.is("--text")) {
      o.text_file = a.value();
    } else if (a.is("--generate")) {
      o.generate = parse_u64("--generate", a.value());
    } else if (a.is("--temp")) {
      o.temp = parse_float("--temp", a.value());
    } else if (a.is("--seed")) {
      o.seed = parse_u64("--seed", a.value());
    } else if (a.is("--ctx")) {
      o.ctx = parse_u32("--ctx", a.value());
    } else if (a.is("-t", "--threads")) {
      o.threads = parse_u32("--threads", a.value());
    } else if (a.is("--block-tokens")) {
      o.block_tokens = parse_block_tokens("--block-tokens", a.value());
    } else if (a.is("--json")) {
      o.json = true;
    } else {
      a.unknown();
    }
  }
  if (o.kv.empty()) usage_error("--kv is required (for example --kv q8 or --kv q8,q4,q8/q4)");
  if (o.text_file.empty() == (o.generate == 0))
    usage_error("give exactly one of --text FILE and --generate N");
  if (o.ctx == 1) usage_error("--ctx must be at least 2");

  const std::string path = resolve_model_path(o.model);
  RuntimePtr runtime = make_runtime(o.threads, 0, o.block_tokens);
  ModelPtr model = load_model(runtime.get(), path);
  const kvrt_model_info info = model_info(model.get());
  const uint32_t n_ctx = o.ctx ? o.ctx : info.n_ctx_train;
  if (n_ctx > info.n_ctx_train)
    usage_error("--ctx " + std::to_string(n_ctx) + " exceeds the model's context " +
                std::to_string(info.n_ctx_train));

  std::vector<int32_t> stream;
  if (!o.text_file.empty()) {
    std::ifstream f(o.text_file, std::ios::binary);
    if (!f) throw CliError(kExitFailure, "cannot read " + o.text_file);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string text = ss.str();
    size_t n = 0;
    check(kvrt_tokenize(model.get(), text.data(), text.size(), KVRT_TOKENIZE_ADD_BOS, nullptr, 0, &n),
          "tokenizing " + o.text_file);
    stream.resize(n);
    check(kvrt_tokenize(model.get(), text.data(), text.size(), KVRT_TOKENIZE_ADD_BOS, stream.data(),
                        n, &n),
          "tokenizing " + o.text_file);
    stream.resize(n);
  } else {
    stream = generate(model.get(), o, n_ctx, info.n_vocab, info.bos_token);
  }
  if (stream.size() < 2) throw CliError(kExitFailure, "the stream has fewer than 2 tokens");

  // Window by window: one f32 session and one per format, fed the same tokens.
  std::vector<Totals> tot(o.kv.size());
  std::vector<float> lg(info.n_vocab);
  std::vector<double> lref, lq;
  const double t0 = now_seconds();
  for (size_t w = 0; w < stream.size(); w += n_ctx) {
    const size_t end = std::min(stream.size(), w + n_ctx);
    SessionPtr ref = open_session(model.get(), 0, 0, n_ctx);
    std::vector<SessionPtr> qs;
    for (const auto& f : o.kv) qs.push_back(open_session(model.get(), f.first, f.second, n_ctx));
    for (size_t i = w; i < end; ++i) {
      check(kvrt_decode_step(ref.get(), &stream[i], 1, lg.data(), lg.size()), "decoding (f32)");
      log_softmax(lg, lref);
      const size_t top_ref = argmax(lref);
      const bool has_next = i + 1 < end;
      for (size_t j = 0; j < qs.size(); ++j) {
        check(kvrt_decode_step(qs[j].get(), &stream[i], 1, lg.data(), lg.size()), "decoding");
        log_softmax(lg, lq);
        double kl = 0;
        for (size_t c = 0; c < lq.size(); ++c) kl += std::exp(lref[c]) * (lref[c] - lq[c]);
        kl = kl > 0 ? kl : 0;  // rounding can give -1e-17 for identical rows
        Totals& t = tot[j];
        t.kl_sum += kl;
        t.kl_max = kl > t.kl_max ? kl : t.kl_max;
        t.agree += argmax(lq) == top_ref;
        ++t.n;
        if (has_next) {
          t.nll_ref -= lref[stream[i + 1]];
          t.nll -= lq[stream[i + 1]];
          ++t.n_nll;
        }
      }
    }
  }
  const double secs = now_seconds() - t0;

  if (!o.json) {
    std::printf("model %s, %zu tokens in sessions of %u, blocks of %u, %.1f s\n", path.c_str(),
                stream.size(), n_ctx, o.block_tokens, secs);
    std::printf("%-8s %8s %11s %11s %8s %9s %9s\n", "kv", "tokens", "mean_kl", "max_kl", "top1",
                "ppl_ref", "ppl");
  }
  for (size_t j = 0; j < o.kv.size(); ++j) {
    const Totals& t = tot[j];
    const double mean = t.kl_sum / t.n, top1 = (double)t.agree / t.n;
    const double ppl_ref = std::exp(t.nll_ref / (t.n_nll ? t.n_nll : 1));
    const double ppl = std::exp(t.nll / (t.n_nll ? t.n_nll : 1));
    const std::string name = kv_pair_name(o.kv[j].first, o.kv[j].second);
    if (o.json)
      std::printf("{\"kv\":\"%s\",\"block_tokens\":%u,\"tokens\":%" PRIu64 ",\"mean_kl\":%.6g,"
                  "\"max_kl\":%.6g,\"top1\":%.6f,\"ppl_ref\":%.6f,\"ppl\":%.6f}\n",
                  name.c_str(), o.block_tokens, t.n, mean, t.kl_max, top1, ppl_ref, ppl);
    else
      std::printf("%-8s %8" PRIu64 " %11.3e %11.3e %7.2f%% %9.4f %9.4f\n", name.c_str(), t.n, mean,
                  t.kl_max, 100.0 * top1, ppl_ref, ppl);
  }
  return kExitOk;
}

}  // namespace kvrt_tools
