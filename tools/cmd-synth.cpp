// `kvrt synth`: writes a llama-architecture GGUF v3 model with random weights
// and a small but valid SentencePiece-style vocabulary, for tests and benchmarks.
#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "cli-common.hpp"
#include "gguf-writer.hpp"

namespace kvrt_tools {
namespace {

// ggml tensor type ids as stored in GGUF.
constexpr uint32_t kGgmlF32 = 0;
constexpr uint32_t kGgmlF16 = 1;
constexpr uint32_t kGgmlQ8_0 = 8;
constexpr uint32_t kGgmlBf16 = 30;
constexpr uint64_t kQ8Block = 32;  // values per Q8_0 block: {f16 d, int8 qs[32]}

// SentencePiece token types in tokenizer.ggml.token_type.
constexpr int32_t kTokNormal = 1, kTokUnknown = 2, kTokControl = 3, kTokByte = 6;

void print_help() {
  std::printf(
      "usage: kvrt synth -o OUT.gguf [options]\n"
      "\n"
      "Writes a llama-architecture GGUF v3 model with random weights (normal-ish,\n"
      "std 0.02; norm weights 1.0 in F32) and a synthetic SentencePiece-style\n"
      "vocabulary (<unk>, <s>, </s>, the 256 byte tokens, then filler pieces).\n"
      "The text it generates is meaningless; its shapes, sizes and speed are real.\n"
      "\n"
      "options:\n"
      "  -o, --output PATH   file to write (required)\n"
      "      --dim N         embedding width (default 1024)\n"
      "      --layers N      transformer blocks (default 12)\n"
      "      --heads N       query heads (default 16)\n"
      "      --kv-heads N    key/value heads; must divide --heads (default 4)\n"
      "      --ff N          feed-forward width (default 4096)\n"
      "      --vocab N       vocabulary size, at least 260 (default 32000)\n"
      "      --ctx N         context length in the metadata (default 32768)\n"
      "      --type T        matrix type: f32, f16, bf16, q8_0 (default f16); q8_0\n"
      "                      needs --dim and --ff to be multiples of 32\n"
      "      --seed S        random seed (default 0)\n"
      "  -h, --help          this text\n"
      "\n"
      "The shapes of the stories260K test model:\n"
      "  kvrt synth -o tiny.gguf --dim 64 --layers 5 --heads 8 --kv-heads 4 --ff 172 \\\n"
      "             --vocab 512 --ctx 2048 --type f32\n");
}

struct SynthOptions {
  std::string out;
  uint32_t dim = 1024, layers = 12, heads = 16, kv_heads = 4, ff = 4096, vocab = 32000,
           ctx = 32768;
  uint32_t type = kGgmlF16;
  std::string type_name = "f16";
  uint64_t seed = 0;
};

// wyrand: one multiply per 64 random bits, plenty for random weights.
struct Rng {
  uint64_t state;
  uint64_t next() {
    state += 0xa0761d6478bd642full;
    __uint128_t t = static_cast<__uint128_t>(state) * (state ^ 0xe7037ed1a0b428dbull);
    return static_cast<uint64_t>(t >> 64) ^ static_cast<uint64_t>(t);
  }
  // Sum of four 16-bit uniforms (Irwin-Hall), centred and scaled to unit
  // variance: close enough to a normal for random weights, and fast.
  float normalish() {
    uint64_t r = next();
    int32_t s = static_cast<int32_t>(r & 0xffff) + static_cast<int32_t>((r >> 16) & 0xffff) +
                static_cast<int32_t>((r >> 32) & 0xffff) + static_cast<int32_t>(r >> 48);
    // Each uniform on 0..65535 has variance (65536^2 - 1) / 12.
    constexpr float kInvStd = 1.0f / 37837.23f;  // 1 / sqrt(4 * (65536^2 - 1) / 12)
    return (static_cast<float>(s) - 131070.0f) * kInvStd;
  }
};

uint32_t f32_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}

// float → IEEE half, round to nearest even; overflow gives infinity.
uint16_t f32_to_f16(float f) {
  const uint32_t x = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) return sign | (a > 0x7f800000u ? 0x7e00 : 0x7c00);  // NaN, inf
  if (a >= 0x477ff000u) return sign | 0x7c00;  // >= 65520 rounds to infinity
  if (a >= 0x38800000u) {                      // a normal half (>= 2^-14)
    uint32_t h = ((a >> 23) - 112u) << 10 | ((a >> 13) & 0x3ffu);
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry may reach the exponent
    return static_cast<uint16_t>(sign | h);
  }
  // A half subnormal: units of 2^-24.
  const uint32_t e = a >> 23;
  const uint32_t shift = 126u - e;  // value = m * 2^(e - 150) = (m >> shift) * 2^-24
  if (e == 0 || shift > 24) return sign;  // below 2^-25, or exactly it: rounds to 0 (even)
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  uint32_t k = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (k & 1u))) ++k;
  return static_cast<uint16_t>(sign | k);
}

// float → bfloat16, round to nearest even.
uint16_t f32_to_bf16(float f) {
  const uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40);  // quiet NaN
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

template <typename T>
void put(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

// Fills elements [begin, end) of a tensor of `type` with random values of
// standard deviation `std_dev`; `begin` is a multiple of kQ8Block.
void fill_random(uint8_t* out, uint32_t type, uint64_t begin, uint64_t end, float std_dev, Rng& rng) {
  switch (type) {
    case kGgmlF32:
      for (uint64_t i = begin; i < end; ++i) put(out + i * 4, rng.normalish() * std_dev);
      break;
    case kGgmlF16:
      for (uint64_t i = begin; i < end; ++i) put(out + i * 2, f32_to_f16(rng.normalish() * std_dev));
      break;
    case kGgmlBf16:
      for (uint64_t i = begin; i < end; ++i) put(out + i * 2, f32_to_bf16(rng.normalish() * std_dev));
      break;
    case kGgmlQ8_0: {
      // The caller checked that rows are whole blocks: {f16 d, int8 qs[32]}.
      const uint64_t block_bytes = 2 + kQ8Block;
      float v[kQ8Block];
      for (uint64_t b = begin / kQ8Block; b < end / kQ8Block; ++b) {
        float amax = 0;
        for (uint64_t i = 0; i < kQ8Block; ++i) {
          v[i] = rng.normalish() * std_dev;
          amax = std::fmax(amax, std::fabs(v[i]));
        }
        const float d = amax / 127.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        uint8_t* p = out + b * block_bytes;
        put(p, f32_to_f16(d));
        for (uint64_t i = 0; i < kQ8Block; ++i)
          p[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(std::lround(v[i] * id)));
      }
      break;
    }
  }
}

uint64_t tensor_bytes(uint32_t type, uint64_t n) {
  switch (type) {
    case kGgmlF32: return n * 4;
    case kGgmlF16:
    case kGgmlBf16: return n * 2;
    default: return n / kQ8Block * (2 + kQ8Block);
  }
}

// A tensor of n random values. The values come in fixed chunks, each with its
// own generator seeded from (seed, chunk), so the file does not depend on how
// many threads filled it.
std::vector<uint8_t> random_tensor(uint32_t type, uint64_t n, float std_dev, uint64_t seed) {
  constexpr uint64_t kChunk = 1u << 20;  // values; a multiple of kQ8Block
  std::vector<uint8_t> bytes(tensor_bytes(type, n));
  const uint64_t n_chunks = (n + kChunk - 1) / kChunk;
  std::atomic<uint64_t> next{0};
  auto work = [&] {
    for (uint64_t c; (c = next.fetch_add(1)) < n_chunks;) {
      Rng rng{seed ^ (c + 1) * 0xd1b54a32d192ed03ull};
      fill_random(bytes.data(), type, c * kChunk, std::min(n, (c + 1) * kChunk), std_dev, rng);
    }
  };
  const unsigned n_threads =
      static_cast<unsigned>(std::min<uint64_t>(n_chunks, std::max(1u, std::thread::hardware_concurrency())));
  std::vector<std::thread> helpers;
  for (unsigned t = 1; t < n_threads; ++t) helpers.emplace_back(work);
  work();
  for (auto& h : helpers) h.join();
  return bytes;
}

std::vector<uint8_t> ones_f32(uint64_t n) {
  std::vector<uint8_t> bytes(n * 4);
  for (uint64_t i = 0; i < n; ++i) put(&bytes[i * 4], 1.0f);
  return bytes;
}

// The synthetic vocabulary: control tokens, the 256 byte tokens, then
// "▁" and every lowercase word in length-then-lexicographic order, each as a
// word start ("▁ab") and a continuation ("ab"). Every piece's prefixes come
// earlier, so a merge-based tokenizer can build each of them.
void add_vocabulary(GgufWriter& w, uint32_t n_vocab) {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  tokens.reserve(n_vocab);
  auto add = [&](std::string s, float score, int32_t type) {
    tokens.push_back(std::move(s));
    scores.push_back(score);
    types.push_back(type);
  };
  add("<unk>", 0, kTokUnknown);
  add("<s>", 0, kTokControl);
  add("</s>", 0, kTokControl);
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    add(buf, 0, kTokByte);
  }
  const std::string marker = "\xe2\x96\x81";  // U+2581, the word-start marker
  float score = -1;
  if (tokens.size() < n_vocab) add(marker, score--, kTokNormal);
  std::string word(1, 'a');
  while (tokens.size() < n_vocab) {
    add(marker + word, score--, kTokNormal);
    if (tokens.size() < n_vocab) add(word, score--, kTokNormal);
    // Next word: count in base 26 with 'a'..'z', growing the length on overflow.
    size_t i = word.size();
    while (i > 0 && word[i - 1] == 'z') word[--i] = 'a';
    if (i == 0) word.insert(word.begin(), 'a');
    else ++word[i - 1];
  }
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_array_string("tokenizer.ggml.tokens", tokens);
  w.add_array_f32("tokenizer.ggml.scores", scores);
  w.add_array_i32("tokenizer.ggml.token_type", types);
  w.add_u32("tokenizer.ggml.bos_token_id", 1);
  w.add_u32("tokenizer.ggml.eos_token_id", 2);
  w.add_u32("tokenizer.ggml.unknown_token_id", 0);
  w.add_bool("tokenizer.ggml.add_bos_token", true);
}

}  // namespace

int cmd_synth(int argc, char** argv) {
  SynthOptions o;
  ArgReader a(argc, argv, 2);
  auto positive = [](const std::string& opt, const std::string& text) {
    uint32_t v = parse_u32(opt, text);
    if (v == 0) usage_error(opt + " must be above 0");
    return v;
  };
  while (a.next()) {
    const std::string opt = a.current();
    if (a.is("-h", "--help")) {
      print_help();
      return kExitOk;
    } else if (a.is("-o", "--output")) {
      o.out = a.value();
    } else if (a.is("--dim")) {
      o.dim = positive(opt, a.value());
    } else if (a.is("--layers")) {
      o.layers = positive(opt, a.value());
    } else if (a.is("--heads")) {
      o.heads = positive(opt, a.value());
    } else if (a.is("--kv-heads")) {
      o.kv_heads = positive(opt, a.value());
    } else if (a.is("--ff")) {
      o.ff = positive(opt, a.value());
    } else if (a.is("--vocab")) {
      o.vocab = positive(opt, a.value());
    } else if (a.is("--ctx")) {
      o.ctx = positive(opt, a.value());
    } else if (a.is("--seed")) {
      o.seed = parse_u64(opt, a.value());
    } else if (a.is("--type")) {
      o.type_name = a.value();
      if (o.type_name == "f32") o.type = kGgmlF32;
      else if (o.type_name == "f16") o.type = kGgmlF16;
      else if (o.type_name == "bf16") o.type = kGgmlBf16;
      else if (o.type_name == "q8_0") o.type = kGgmlQ8_0;
      else usage_error("bad value '" + o.type_name + "' for --type: expected f32, f16, bf16 or q8_0");
    } else {
      a.unknown();
    }
  }
  if (o.out.empty()) usage_error("missing -o OUT.gguf");
  if (o.dim % o.heads != 0)
    usage_error("--dim " + std::to_string(o.dim) + " is not a multiple of --heads " + std::to_string(o.heads));
  if (o.heads % o.kv_heads != 0)
    usage_error("--heads " + std::to_string(o.heads) + " is not a multiple of --kv-heads " +
                std::to_string(o.kv_heads));
  const uint32_t head_dim = o.dim / o.heads;
  if (head_dim % 2 != 0)
    usage_error("head dimension --dim/--heads = " + std::to_string(head_dim) + " must be even (RoPE)");
  if (o.vocab < 260) usage_error("--vocab must be at least 260 (3 control + 256 byte tokens + 1)");
  if (o.type == kGgmlQ8_0 && (o.dim % kQ8Block != 0 || o.ff % kQ8Block != 0))
    usage_error("--type q8_0 needs --dim and --ff to be multiples of 32 (got " + std::to_string(o.dim) +
                " and " + std::to_string(o.ff) + ")");

  const double t0 = now_seconds();
  const uint64_t kv_dim = static_cast<uint64_t>(head_dim) * o.kv_heads;
  const uint64_t dim = o.dim, ff = o.ff, vocab = o.vocab;
  const float kStd = 0.02f;

  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_string("general.name", "kvrt-synth");
  w.add_u32("llama.context_length", o.ctx);
  w.add_u32("llama.embedding_length", o.dim);
  w.add_u32("llama.block_count", o.layers);
  w.add_u32("llama.feed_forward_length", o.ff);
  w.add_u32("llama.attention.head_count", o.heads);
  w.add_u32("llama.attention.head_count_kv", o.kv_heads);
  w.add_u32("llama.rope.dimension_count", head_dim);
  w.add_f32("llama.rope.freq_base", 10000.0f);
  w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.add_u32("llama.vocab_size", o.vocab);
  add_vocabulary(w, o.vocab);

  uint64_t n_params = 0;
  uint64_t tensor_index = 0;
  // Each tensor has its own seed, so its values do not depend on the tensors
  // written before it.
  auto matrix = [&](const std::string& name, uint64_t ne0, uint64_t ne1) {
    const uint64_t seed = o.seed * 0x9e3779b97f4a7c15ull + (++tensor_index) * 0xbf58476d1ce4e5b9ull;
    w.add_tensor(name, o.type, {ne0, ne1}, random_tensor(o.type, ne0 * ne1, kStd, seed));
    n_params += ne0 * ne1;
  };
  auto norm = [&](const std::string& name, uint64_t n) {
    ++tensor_index;
    w.add_tensor(name, kGgmlF32, {n}, ones_f32(n));
    n_params += n;
  };
  matrix("token_embd.weight", dim, vocab);
  norm("output_norm.weight", dim);
  matrix("output.weight", dim, vocab);
  for (uint32_t l = 0; l < o.layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    norm(p + "attn_norm.weight", dim);
    matrix(p + "attn_q.weight", dim, dim);
    matrix(p + "attn_k.weight", dim, kv_dim);
    matrix(p + "attn_v.weight", dim, kv_dim);
    matrix(p + "attn_output.weight", dim, dim);
    norm(p + "ffn_norm.weight", dim);
    matrix(p + "ffn_gate.weight", dim, ff);
    matrix(p + "ffn_down.weight", ff, dim);
    matrix(p + "ffn_up.weight", dim, ff);
  }
  const double t1 = now_seconds();

  std::string err;
  if (!w.write(o.out, &err)) throw CliError(kExitFailure, "cannot write " + o.out + ": " + err);
  const double t2 = now_seconds();
  std::fprintf(stderr,
               "kvrt synth: wrote %s: llama, dim %u, %u layers, %u heads (%u KV), ff %u, vocab %u, "
               "ctx %u, %s, %" PRIu64 " parameters (generated in %.2f s, written in %.2f s)\n",
               o.out.c_str(), o.dim, o.layers, o.heads, o.kv_heads, o.ff, o.vocab, o.ctx,
               o.type_name.c_str(), n_params, t1 - t0, t2 - t1);
  return kExitOk;
}

}  // namespace kvrt_tools
