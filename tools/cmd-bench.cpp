// `kvrt bench`: measures prefill and decode speed per KV format, thread count
// and context depth, and optionally the memory-bandwidth roofline of decode.
#include <algorithm>
#include <functional>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "cli-common.hpp"

namespace kvrt_tools {
namespace {

void print_help() {
  std::printf(
      "usage: kvrt bench [-m MODEL] [-t T,T,...] [--depth D,D,...] [-n N] [--kv F,F,...]\n"
      "                  [-r R] [--block-tokens B] [--one-prefill] [--interleave] [--json]\n"
      "                  [--bandwidth]\n"
      "\n"
      "For each KV format, thread count and depth (in that nesting order):\n"
      "  prefill  a prompt of max(depth, --prefill) random token ids (fixed seed;\n"
      "           capped to the model's context) in one call; prefill tok/s is\n"
      "           measured on it;\n"
      "  decode   the session is rewound to `depth` tokens (depth 0: an empty\n"
      "           context), then N tokens are decoded one call each, logits\n"
      "           requested and the next id chosen greedily, as a generation loop\n"
      "           does; decode tok/s = N / elapsed time; attention ms/token is\n"
      "           the part of each step spent in attention over the cache (all\n"
      "           layers; the session's attention_ns statistic), and attention\n"
      "           GB/s the cache bytes it reads per second (the mean context of\n"
      "           the N steps x KV bytes per token / attention time).\n"
      "           p50 ms/token and p50 attention ms are the medians of the single\n"
      "           steps (all runs pooled): on a shared machine a few steps stalled\n"
      "           by other load move the means above but not these.\n"
      "Each configuration runs R times in a fresh session; the MEDIAN is reported.\n"
      "With --one-prefill, each (format, threads) pair prefills one session once,\n"
      "to the largest depth, and every decode run rewinds it to its depth: deep\n"
      "contexts (16K tokens) then cost one prefill instead of one per run;\n"
      "depths then run (and print) deepest first.\n"
      "Each (format, threads) pair gets its own runtime, with a KV budget just\n"
      "large enough for the largest depth.\n"
      "With --interleave (implies --one-prefill), the formats share one runtime\n"
      "per thread count and decode step by step in turn (f16, q8, q4, f16, ...),\n"
      "so on a shared machine every format sees the same load: compare formats\n"
      "on the p50 columns of such a run.\n"
      "\n"
      "options:\n"
      "  -m, --model PATH        GGUF model (default: $KVRT_MODEL, else\n"
      "                          ../shared/models/stories260K.gguf)\n"
      "  -t, --threads T,...     worker threads; 0 is one per core (default 0)\n"
      "      --depth D,...       tokens already in the context (default 0,512)\n"
      "  -n, --n-decode N        tokens decoded per measurement (default 32)\n"
      "      --prefill N         shortest prompt the prefill is timed on (default 512)\n"
      "      --kv F,...          KV formats: f32, f16, bf16, q8, q4 or K/V (default f16)\n"
      "  -r, --repeats R         runs per configuration; the median is kept (default 3)\n"
      "      --block-tokens B    positions per KV block, 1..1024 (default: the\n"
      "                          library's, 16); q8/q4 quantize keys per block\n"
      "      --one-prefill       one prefill per format and thread count, shared by\n"
      "                          every depth and repeat (prefill tok/s: that prefill)\n"
      "      --interleave        the formats' decode steps alternate (see above)\n"
      "      --json              one JSON object per line per configuration\n"
      "      --bandwidth         measure memory read bandwidth and add the roofline:\n"
      "                          roofline tok/s = bandwidth / (weight bytes + depth x\n"
      "                          KV bytes per token), and the fraction of it achieved\n"
      "      --bandwidth-size S  buffer read by the bandwidth test (default 1G)\n"
      "  -h, --help              this text\n");
}

struct BenchOptions {
  std::string model;
  std::vector<uint32_t> threads{0};
  std::vector<uint32_t> depths{0, 512};
  uint32_t n_decode = 32;
  uint32_t prefill_min = 512;
  std::vector<std::pair<uint32_t, uint32_t>> kv{{KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16}};
  uint32_t repeats = 3;
  uint32_t block_tokens = default_block_tokens();
  bool one_prefill = false;
  bool interleave = false;
  bool json = false;
  bool bandwidth = false;
  uint64_t bandwidth_bytes = 1ull << 30;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// ---------------------------------------------------------------------------
// Memory read bandwidth

// Several independent accumulators so the loads, not an add chain, limit the
// loop; the AVX2 version reads 128 bytes per iteration.
uint64_t sum_scalar(const uint64_t* p, size_t n) {
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    a0 += p[i]; a1 += p[i + 1]; a2 += p[i + 2]; a3 += p[i + 3];
    a4 += p[i + 4]; a5 += p[i + 5]; a6 += p[i + 6]; a7 += p[i + 7];
  }
  for (; i < n; ++i) a0 += p[i];
  return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

#if defined(__x86_64__) || defined(__i386__)
// Reads four quarters of the range side by side: a core reaches its full
// read bandwidth only with several streams in flight (one stream measured
// about 25% lower here), and the matrix kernels read several rows at once.
__attribute__((target("avx2"))) uint64_t sum_avx2(const uint64_t* p, size_t n) {
  const size_t q = n / 4 / 8 * 8;
  const uint64_t *p0 = p, *p1 = p + q, *p2 = p + 2 * q, *p3 = p + 3 * q;
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  __m256i a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (size_t i = 0; i < q; i += 8) {
    a0 = _mm256_add_epi64(a0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p0 + i)));
    a1 = _mm256_add_epi64(a1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p0 + i + 4)));
    a2 = _mm256_add_epi64(a2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p1 + i)));
    a3 = _mm256_add_epi64(a3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p1 + i + 4)));
    a4 = _mm256_add_epi64(a4, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p2 + i)));
    a5 = _mm256_add_epi64(a5, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p2 + i + 4)));
    a6 = _mm256_add_epi64(a6, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p3 + i)));
    a7 = _mm256_add_epi64(a7, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p3 + i + 4)));
  }
  __m256i s = _mm256_add_epi64(_mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)),
                               _mm256_add_epi64(_mm256_add_epi64(a4, a5), _mm256_add_epi64(a6, a7)));
  uint64_t lanes[4];
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes), s);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3] + sum_scalar(p + 4 * q, n - 4 * q);
}
#endif

uint64_t sum_words(const uint64_t* p, size_t n) {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2) return sum_avx2(p, n);
#endif
  return sum_scalar(p, n);
}

// Runs fn(thread_index, begin, end) over [0, n) split across `threads` threads.
template <typename Fn>
void parallel_ranges(size_t n, unsigned threads, Fn fn) {
  std::vector<std::thread> pool;
  const size_t chunk = (n + threads - 1) / threads;
  for (unsigned t = 0; t < threads; ++t) {
    const size_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
    pool.emplace_back([=] { fn(t, b, e); });
  }
  for (auto& th : pool) th.join();
}

class BandwidthMeter {
 public:
  explicit BandwidthMeter(uint64_t bytes) : n_words_(bytes / 8), buf_(new uint64_t[bytes / 8]) {
    // Written (not just allocated) so every page is backed by real memory.
    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    parallel_ranges(n_words_, hw, [this](unsigned, size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) buf_[i] = i * 0x9e3779b97f4a7c15ull;
    });
  }
  // Median of 5 full passes, in bytes per second.
  double measure(unsigned threads) {
    std::vector<double> rates;
    std::vector<uint64_t> sums(threads);
    for (int pass = 0; pass < 5; ++pass) {
      const double t0 = now_seconds();
      parallel_ranges(n_words_, threads, [&](unsigned t, size_t b, size_t e) {
        sums[t] = sum_words(buf_.get() + b, e - b);
      });
      const double dt = now_seconds() - t0;
      uint64_t total = 0;
      for (uint64_t s : sums) total += s;
      sink_ ^= total;  // keeps the sums observable
      rates.push_back(static_cast<double>(n_words_ * 8) / dt);
    }
    return median(rates);
  }
  uint64_t sink() const { return sink_; }

 private:
  size_t n_words_;
  std::unique_ptr<uint64_t[]> buf_;
  uint64_t sink_ = 0;
};

// ---------------------------------------------------------------------------

std::string json_escape(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

SessionPtr new_session(kvrt_model* model, uint32_t format_k, uint32_t format_v, uint32_t n_ctx) {
  kvrt_session_params sp;
  kvrt_session_default_params(&sp);
  sp.kv_format_k = format_k;
  sp.kv_format_v = format_v;
  sp.n_ctx = n_ctx;
  kvrt_session* raw = nullptr;
  check(kvrt_session_create(model, &sp, &raw),
        "creating a session with KV format " + kv_pair_name(format_k, format_v));
  SessionPtr session(raw);
  kvrt_sampler_params greedy;
  kvrt_sampler_default_params(&greedy);
  greedy.temperature = 0;
  check(kvrt_session_set_sampler(session.get(), &greedy), "setting the sampler");
  return session;
}

// Prefills `prompt` in one call; returns tokens/s.
double prefill(kvrt_session* session, const std::vector<int32_t>& prompt, std::vector<float>& logits) {
  const double t0 = now_seconds();
  check(kvrt_decode_step(session, prompt.data(), prompt.size(), logits.data(), logits.size()),
        "prefilling " + std::to_string(prompt.size()) + " tokens");
  return prompt.size() / (now_seconds() - t0);
}

uint64_t attention_ns(const kvrt_session* session) {
  kvrt_session_stats st{};
  st.struct_size = sizeof st;
  check(kvrt_session_get_stats(session, &st), "reading session stats");
  return st.attention_ns;
}

struct DecodeRun {
  double tok_s;            // tokens per second of the whole loop
  double attn_ms_per_tok;  // of which attention over the cache, per token
  std::vector<double> step_ms, step_attn_ms;  // each step's own times
};

// One greedy decode run of a session from `depth`, a step at a time, so that
// several sessions' runs can be interleaved step by step.
class DecodeRunner {
 public:
  DecodeRunner(kvrt_session* session, uint32_t depth, int32_t first_token, std::vector<float>& logits)
      : session_(session), depth_(depth), token_(first_token), logits_(logits) {
    check(kvrt_session_rewind(session, depth), "rewinding to depth " + std::to_string(depth));
    a_prev_ = attention_ns(session);
  }
  void step() {
    const double t0 = now_seconds();
    check(kvrt_decode_step(session_, &token_, 1, logits_.data(), logits_.size()),
          "decoding at position " + std::to_string(depth_ + run_.step_ms.size()));
    check(kvrt_session_sample(session_, logits_.data(), logits_.size(), &token_), "sampling");
    const double t = now_seconds();
    const uint64_t a = attention_ns(session_);
    run_.step_ms.push_back((t - t0) * 1e3);
    run_.step_attn_ms.push_back(static_cast<double>(a - a_prev_) / 1e6);
    a_prev_ = a;
  }
  DecodeRun finish() {
    double ms = 0, attn = 0;
    for (double x : run_.step_ms) ms += x;
    for (double x : run_.step_attn_ms) attn += x;
    const double n = static_cast<double>(run_.step_ms.size());
    run_.tok_s = n / (ms * 1e-3);
    run_.attn_ms_per_tok = attn / n;
    return run_;
  }

 private:
  kvrt_session* session_;
  uint32_t depth_;
  int32_t token_;
  std::vector<float>& logits_;
  uint64_t a_prev_ = 0;
  DecodeRun run_;
};

// Rewinds to `depth` and decodes n tokens greedily, one call each.
DecodeRun decode_from(kvrt_session* session, uint32_t depth, uint32_t n_decode, int32_t first_token,
                      std::vector<float>& logits) {
  DecodeRunner r(session, depth, first_token, logits);
  for (uint32_t i = 0; i < n_decode; ++i) r.step();
  return r.finish();
}

// The runs of one (format, threads, depth) row.
struct RowRuns {
  std::vector<double> pre, dec, attn, steps, step_attn;
  void add(double prefill_tok_s, const DecodeRun& d) {
    pre.push_back(prefill_tok_s);
    dec.push_back(d.tok_s);
    attn.push_back(d.attn_ms_per_tok);
    steps.insert(steps.end(), d.step_ms.begin(), d.step_ms.end());
    step_attn.insert(step_attn.end(), d.step_attn_ms.begin(), d.step_attn_ms.end());
  }
};

}  // namespace

int cmd_bench(int argc, char** argv) {
  BenchOptions o;
  ArgReader a(argc, argv, 2);
  auto u32_list = [](const std::string& opt, const std::string& text) {
    std::vector<uint32_t> v;
    for (const std::string& s : split_list(text)) v.push_back(parse_u32(opt, s));
    return v;
  };
  while (a.next()) {
    const std::string opt = a.current();
    if (a.is("-h", "--help")) {
      print_help();
      return kExitOk;
    } else if (a.is("-m", "--model")) {
      o.model = a.value();
    } else if (a.is("-t", "--threads")) {
      o.threads = u32_list(opt, a.value());
    } else if (a.is("--depth")) {
      o.depths = u32_list(opt, a.value());
    } else if (a.is("-n", "--n-decode")) {
      o.n_decode = parse_u32(opt, a.value());
      if (o.n_decode == 0) usage_error("-n must be above 0");
    } else if (a.is("--prefill")) {
      o.prefill_min = parse_u32(opt, a.value());
      if (o.prefill_min == 0) usage_error("--prefill must be above 0");
    } else if (a.is("--kv")) {
      o.kv.clear();
      for (const std::string& s : split_list(a.value())) {
        uint32_t k = 0, v = 0;
        parse_kv_pair(opt, s, &k, &v);
        o.kv.emplace_back(k, v);
      }
    } else if (a.is("-r", "--repeats")) {
      o.repeats = parse_u32(opt, a.value());
      if (o.repeats == 0) usage_error("-r must be above 0");
    } else if (a.is("--block-tokens")) {
      o.block_tokens = parse_block_tokens(opt, a.value());
    } else if (a.is("--one-prefill")) {
      o.one_prefill = true;
    } else if (a.is("--interleave")) {
      o.interleave = o.one_prefill = true;
    } else if (a.is("--json")) {
      o.json = true;
    } else if (a.is("--bandwidth")) {
      o.bandwidth = true;
    } else if (a.is("--bandwidth-size")) {
      o.bandwidth_bytes = parse_size(opt, a.value());
      if (o.bandwidth_bytes < (1u << 20)) usage_error("--bandwidth-size must be at least 1M");
    } else {
      a.unknown();
    }
  }

  const std::string path = resolve_model_path(o.model);

  // A first load tells the shapes, which size the budgets and the prompt.
  // KV bytes per token of each format pair; 0 with the library's message when
  // the pair is refused, so the other pairs still run.
  kvrt_model_info info;
  std::vector<uint64_t> kv_bpt(o.kv.size(), 0);
  std::vector<std::string> kv_error(o.kv.size());
  {
    RuntimePtr probe_rt = make_runtime(1, 0, o.block_tokens);
    ModelPtr probe = load_model(probe_rt.get(), path);
    info = model_info(probe.get());
    for (size_t i = 0; i < o.kv.size(); ++i) {
      kvrt_status st = kvrt_model_kv_bytes_per_token(probe.get(), o.kv[i].first, o.kv[i].second, &kv_bpt[i]);
      if (st != KVRT_OK) {
        kv_bpt[i] = 0;
        kv_error[i] = std::string(kvrt_status_string(st)) + ": " + kvrt_last_error();
      }
    }
  }
  const uint32_t max_depth = *std::max_element(o.depths.begin(), o.depths.end());
  if (static_cast<uint64_t>(max_depth) + o.n_decode > info.n_ctx_train)
    throw CliError(kExitFailure, "depth " + std::to_string(max_depth) + " + " +
                                     std::to_string(o.n_decode) + " decoded tokens exceeds the model's context of " +
                                     std::to_string(info.n_ctx_train) + " tokens");

  // Fixed-seed random prompt, avoiding the control tokens.
  const uint32_t prompt_max = std::min(std::max(max_depth, o.prefill_min), info.n_ctx_train);
  std::vector<int32_t> prompt_all(prompt_max);
  uint64_t s = 0x243f6a8885a308d3ull;
  auto next_id = [&]() {
    while (true) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      const int32_t id = static_cast<int32_t>((s >> 33) % info.n_vocab);
      if (id != info.bos_token && id != info.eos_token) return id;
    }
  };
  for (int32_t& t : prompt_all) t = next_id();
  const int32_t first_token = next_id();

  // Bandwidth, measured before any runtime exists so nothing else competes.
  std::map<unsigned, double> bandwidth;  // threads → bytes/s
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  if (o.bandwidth) {
    BandwidthMeter meter(o.bandwidth_bytes);
    std::vector<unsigned> counts{1, hw};
    for (uint32_t t : o.threads) counts.push_back(t == 0 ? hw : t);
    for (unsigned t : counts)
      if (!bandwidth.count(t)) bandwidth[t] = meter.measure(t);
    std::string line = "memory read bandwidth (" + format_bytes(o.bandwidth_bytes) + " buffer, median of 5):";
    for (auto& [t, bw] : bandwidth) {
      char buf[96];
      std::snprintf(buf, sizeof buf, " %u thread%s %.2f GB/s;", t, t == 1 ? "" : "s", bw / 1e9);
      line += buf;
    }
    line.pop_back();
    if (o.json) std::fprintf(stderr, "%s\n", line.c_str());
    else std::printf("%s\n\n", line.c_str());
  }

  if (!o.json) {
    std::printf("model: %s (%s, %" PRIu64 " weight bytes)\n", path.c_str(), info.name, info.weight_bytes);
    if (o.one_prefill)
      std::printf("decode of %u tokens, %u run%s per row (median); one prefill of %u tokens per format and thread count%s\n\n",
                  o.n_decode, o.repeats, o.repeats == 1 ? "" : "s", prompt_max,
                  o.interleave ? "; formats' steps interleaved" : "");
    else
      std::printf("decode of %u tokens, %u run%s per row (median); prefill on max(depth, %u) tokens\n\n",
                  o.n_decode, o.repeats, o.repeats == 1 ? "" : "s", o.prefill_min);
    std::printf("| kv | threads | depth | prefill tok/s | decode tok/s | ms/token | attention ms/token | attention GB/s "
                "| p50 ms/token | p50 attention ms |%s\n",
                o.bandwidth ? " roofline tok/s | roofline frac |" : "");
    std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|%s\n", o.bandwidth ? "---:|---:|" : "");
    std::fflush(stdout);
  }

  // One row of the table (or one JSON line) from a row's runs.
  auto print_row = [&](const std::string& kv_name, uint64_t bpt, unsigned used_threads, uint32_t depth,
                       uint32_t prefill_tokens, const RowRuns& rr) {
    const double prefill_tok_s = median(rr.pre), decode_tok_s = median(rr.dec), attn_ms = median(rr.attn);
    const double p50_ms = median(rr.steps), p50_attn_ms = median(rr.step_attn);
    // Cache bytes one step's attention reads, at the mean context of the steps.
    const double step_kv_bytes = (depth + (o.n_decode - 1) / 2.0 + 1) * static_cast<double>(bpt);
    const double attn_bytes_s = attn_ms > 0 ? step_kv_bytes / (attn_ms * 1e-3) : 0.0;
    double bw = 0, roof = 0, frac = 0;
    if (o.bandwidth) {
      auto it = bandwidth.find(used_threads);
      bw = it != bandwidth.end() ? it->second : bandwidth[hw];
      roof = bw / (static_cast<double>(info.decode_weight_bytes) + static_cast<double>(depth) * bpt);
      frac = decode_tok_s / roof;
    }
    if (o.json) {
      std::printf("{\"model\":\"%s\",\"weight_bytes\":%" PRIu64 ",\"decode_weight_bytes\":%" PRIu64 ",\"kv_bytes_per_token\":%" PRIu64
                  ",\"kv\":\"%s\",\"threads\":%u,\"depth\":%u,\"n_decode\":%u,\"prefill_tokens\":%u,"
                  "\"repeats\":%u,\"interleaved\":%s,\"prefill_tok_s\":%.3f,\"decode_tok_s\":%.3f,\"ms_per_token\":%.4f,"
                  "\"attention_ms_per_token\":%.4f,\"attention_bytes_s\":%.0f,"
                  "\"p50_ms_per_token\":%.4f,\"p50_attention_ms\":%.4f",
                  json_escape(path).c_str(), info.weight_bytes, info.decode_weight_bytes, bpt, kv_name.c_str(),
                  used_threads, depth, o.n_decode, prefill_tokens, o.repeats, o.interleave ? "true" : "false",
                  prefill_tok_s, decode_tok_s, 1e3 / decode_tok_s, attn_ms, attn_bytes_s, p50_ms, p50_attn_ms);
      if (o.bandwidth)
        std::printf(",\"bandwidth_bytes_s\":%.0f,\"roofline_tok_s\":%.3f,\"roofline_frac\":%.4f", bw, roof, frac);
      std::printf("}\n");
    } else {
      std::printf("| %s | %u | %u | %.1f | %.1f | %.3f | %.3f | %.2f | %.3f | %.3f |", kv_name.c_str(), used_threads,
                  depth, prefill_tok_s, decode_tok_s, 1e3 / decode_tok_s, attn_ms, attn_bytes_s / 1e9, p50_ms,
                  p50_attn_ms);
      if (o.bandwidth) std::printf(" %.1f | %.3f |", roof, frac);
      std::printf("\n");
    }
    std::fflush(stdout);
  };
  const uint64_t bt = o.block_tokens;
  const uint64_t max_tokens = std::max<uint64_t>(prompt_max, max_depth + o.n_decode);
  // KV budget for one session of format pair i: the largest session in whole
  // blocks, plus a margin for blocks the pool may hand out around the edges.
  auto session_budget = [&](size_t i) { return ((max_tokens + bt - 1) / bt + 2) * bt * kv_bpt[i]; };
  const uint32_t shared_ctx = std::min<uint32_t>(static_cast<uint32_t>(max_tokens), info.n_ctx_train);
  std::vector<uint32_t> deepest_first = o.depths;
  std::sort(deepest_first.begin(), deepest_first.end(), std::greater<uint32_t>());

  int failures = 0;
  if (o.interleave) {
    // Formats the library refuses are reported and left out; the rest share
    // one runtime per thread count.
    std::vector<size_t> live;
    uint64_t budget = 16ull << 20;
    for (size_t i = 0; i < o.kv.size(); ++i) {
      if (kv_bpt[i] == 0) {
        ++failures;
        std::fprintf(stderr, "kvrt: kv %s: %s\n", kv_pair_name(o.kv[i].first, o.kv[i].second).c_str(),
                     kv_error[i].c_str());
        continue;
      }
      live.push_back(i);
      budget += session_budget(i);
    }
    for (uint32_t threads : o.threads) {
      if (live.empty()) break;
      RuntimePtr runtime = make_runtime(threads, budget, o.block_tokens);
      ModelPtr model = load_model(runtime.get(), path);
      kvrt_runtime_stats rs{};
      rs.struct_size = sizeof rs;
      check(kvrt_runtime_get_stats(runtime.get(), &rs));
      std::vector<float> logits(info.n_vocab);
      std::vector<SessionPtr> sessions;
      std::vector<double> prefill_tok_s;
      for (size_t i : live) {
        sessions.push_back(new_session(model.get(), o.kv[i].first, o.kv[i].second, shared_ctx));
        prefill_tok_s.push_back(prefill(sessions.back().get(), prompt_all, logits));
      }
      for (uint32_t depth : deepest_first) {
        std::vector<RowRuns> rows(live.size());
        for (uint32_t r = 0; r < o.repeats; ++r) {
          std::vector<DecodeRunner> runners;
          for (size_t j = 0; j < live.size(); ++j) runners.emplace_back(sessions[j].get(), depth, first_token, logits);
          for (uint32_t step = 0; step < o.n_decode; ++step)
            for (DecodeRunner& d : runners) d.step();
          for (size_t j = 0; j < live.size(); ++j) rows[j].add(prefill_tok_s[j], runners[j].finish());
        }
        for (size_t j = 0; j < live.size(); ++j)
          print_row(kv_pair_name(o.kv[live[j]].first, o.kv[live[j]].second), kv_bpt[live[j]], rs.n_threads, depth,
                    prompt_max, rows[j]);
      }
    }
  }
  for (size_t ki = 0; ki < o.kv.size() && !o.interleave; ++ki) {
    const auto [fk, fv] = o.kv[ki];
    const uint64_t bpt = kv_bpt[ki];
    for (uint32_t threads : o.threads) {
      const std::string kv_name = kv_pair_name(fk, fv);
      try {
        if (bpt == 0) throw CliError(kExitFailure, kv_error[ki]);
        RuntimePtr runtime = make_runtime(threads, session_budget(ki) + (16ull << 20), o.block_tokens);
        ModelPtr model = load_model(runtime.get(), path);
        kvrt_runtime_stats rs{};
        rs.struct_size = sizeof rs;
        check(kvrt_runtime_get_stats(runtime.get(), &rs));

        std::vector<float> logits(info.n_vocab);
        // --one-prefill: one session holds the whole prompt; each run rewinds it.
        SessionPtr shared;
        double shared_prefill_tok_s = 0;
        if (o.one_prefill) {
          shared = new_session(model.get(), fk, fv, shared_ctx);
          shared_prefill_tok_s = prefill(shared.get(), prompt_all, logits);
        }
        // A shared session can only be rewound, and a decode run leaves its
        // own tokens after `depth`: deepest first, every run's context is
        // then the prompt's first `depth` tokens.
        for (uint32_t depth : shared ? deepest_first : o.depths) {
          const uint32_t n_prompt = std::min(std::max(depth, o.prefill_min), info.n_ctx_train);
          const std::vector<int32_t> prompt(prompt_all.begin(), prompt_all.begin() + n_prompt);
          const uint32_t n_ctx = std::max<uint32_t>(n_prompt, depth + o.n_decode);
          RowRuns rr;
          for (uint32_t r = 0; r < o.repeats; ++r) {
            SessionPtr own;
            double pre = shared_prefill_tok_s;
            if (!shared) {
              own = new_session(model.get(), fk, fv, n_ctx);
              pre = prefill(own.get(), prompt, logits);
            }
            rr.add(pre, decode_from(shared ? shared.get() : own.get(), depth, o.n_decode, first_token, logits));
          }
          print_row(kv_name, bpt, rs.n_threads, depth, shared ? prompt_max : n_prompt, rr);
        }
      } catch (const CliError& e) {
        if (e.exit_code != kExitFailure) throw;
        ++failures;
        std::fprintf(stderr, "kvrt: kv %s, threads %u: %s\n", kv_name.c_str(), threads, e.what());
      }
    }
  }
  if (!o.json && o.bandwidth)
    std::printf("\nroofline tok/s = read bandwidth / (weight bytes read per step + depth x KV bytes per token):\n"
                "the decode speed if every step only streamed the weights and the cache once.\n");
  return failures == 0 ? kExitOk : kExitFailure;
}

}  // namespace kvrt_tools
