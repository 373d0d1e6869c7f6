// Llama model loading: hyper-parameters from GGUF metadata, validated weight
// views into the mapped file, and the tokenizer.
#include "model/model.hpp"

#include <cinttypes>
#include <cmath>
#include <cstring>

#include "kernels/common/weight-types.h"
#include "util/error.hpp"

namespace kvrt {
namespace {

// Generous limits: far above any Llama-family model, low enough that sizes
// derived from them cannot overflow.
constexpr uint64_t kMaxEmbd = 1u << 16;
constexpr uint64_t kMaxLayers = 1024;
constexpr uint64_t kMaxHeads = 1024;
constexpr uint64_t kMaxFf = 1u << 20;
constexpr uint64_t kMaxCtx = 1u << 26;

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t man = h & 0x3ff;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(man), -24);  // zero and subnormals
  } else if (exp == 31) {
    v = man ? NAN : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(man | 0x400), static_cast<int>(exp) - 25);
  }
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits |= sign;
  std::memcpy(&v, &bits, 4);
  return v;
}

float bf16_to_f32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

const char* weight_type_name(uint32_t t) {
  switch (t) {
    case kvrt_k::W_F32: return "F32";
    case kvrt_k::W_F16: return "F16";
    case kvrt_k::W_BF16: return "BF16";
    case kvrt_k::W_Q8_0: return "Q8_0";
    default: return "unknown";
  }
}

// Required alignment of a tensor's data for the kernels that read it in place.
size_t data_alignment(uint32_t type) { return type == kvrt_k::W_F32 ? 4 : 2; }

std::string shape_str(const GgufTensor& t) {
  std::string s = "[";
  for (uint32_t d = 0; d < t.n_dims; ++d)
    s += strprintf(d ? ", %" PRIu64 : "%" PRIu64, t.ne[d]);
  return s + "]";
}

uint32_t checked_u32(const GgufFile& f, const char* key, uint64_t v, uint64_t max) {
  if (v == 0 || v > max)
    fail(KVRT_ERR_CORRUPT, "%s: %s = %" PRIu64 " (must be 1 to %" PRIu64 ")",
         f.source().c_str(), key, v, max);
  return static_cast<uint32_t>(v);
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& path) {
  return from_gguf(GgufFile::open(path));
}

std::unique_ptr<Model> Model::from_gguf(std::unique_ptr<GgufFile> file) {
  if (!file) fail(KVRT_ERR_INVALID_ARGUMENT, "no GGUF file given");
  std::unique_ptr<Model> m(new Model());
  m->file_ = std::move(file);
  const GgufFile& f = *m->file_;
  const char* src = f.source().c_str();
  HParams& hp = m->hp_;

  if (!f.find("general.architecture"))
    fail(KVRT_ERR_CORRUPT, "%s: missing key 'general.architecture'", src);
  hp.architecture = f.get_string("general.architecture", "");
  if (hp.architecture != "llama")
    fail(KVRT_ERR_UNSUPPORTED, "%s: architecture '%s' is not supported (only 'llama')", src,
         hp.architecture.c_str());
  hp.name = f.get_string("general.name", "");

  auto req = [&](const char* key, uint64_t max) {
    return checked_u32(f, key, f.require_uint(key), max);
  };
  hp.n_ctx_train = req("llama.context_length", kMaxCtx);
  hp.n_embd = req("llama.embedding_length", kMaxEmbd);
  hp.n_layer = req("llama.block_count", kMaxLayers);
  hp.n_ff = req("llama.feed_forward_length", kMaxFf);
  hp.n_head = req("llama.attention.head_count", kMaxHeads);
  hp.n_head_kv = checked_u32(f, "llama.attention.head_count_kv",
                             f.get_uint("llama.attention.head_count_kv", hp.n_head), kMaxHeads);
  if (hp.n_embd % hp.n_head != 0)
    fail(KVRT_ERR_CORRUPT, "%s: embedding length %u is not a multiple of the head count %u", src,
         hp.n_embd, hp.n_head);
  if (hp.n_head % hp.n_head_kv != 0)
    fail(KVRT_ERR_CORRUPT, "%s: head count %u is not a multiple of the KV head count %u", src,
         hp.n_head, hp.n_head_kv);
  hp.head_dim = hp.n_embd / hp.n_head;
  if (hp.head_dim % 2 != 0)
    fail(KVRT_ERR_CORRUPT, "%s: head dimension %u is odd (RoPE rotates pairs)", src,
         hp.head_dim);
  hp.rope_dim = checked_u32(f, "llama.rope.dimension_count",
                            f.get_uint("llama.rope.dimension_count", hp.head_dim), kMaxEmbd);
  if (hp.rope_dim % 2 != 0 || hp.rope_dim > hp.head_dim)
    fail(KVRT_ERR_CORRUPT, "%s: rope dimension count %u must be even and at most the head "
         "dimension %u", src, hp.rope_dim, hp.head_dim);

  const double base = f.get_float("llama.rope.freq_base", 10000.0);
  if (!(base > 0 && base < 1e12))
    fail(KVRT_ERR_CORRUPT, "%s: llama.rope.freq_base %g is not a positive finite number", src,
         base);
  hp.rope_freq_base = static_cast<float>(base);
  const std::string scaling = f.get_string("llama.rope.scaling.type", "none");
  if (scaling == "linear") {
    const double factor = f.get_float("llama.rope.scaling.factor", 1.0);
    if (!(factor >= 1e-6 && factor <= 1e6))
      fail(KVRT_ERR_CORRUPT, "%s: llama.rope.scaling.factor %g is out of range", src, factor);
    hp.rope_freq_scale = static_cast<float>(1.0 / factor);
  } else if (scaling != "none") {
    fail(KVRT_ERR_UNSUPPORTED, "%s: rope scaling type '%s' is not supported (only linear)", src,
         scaling.c_str());
  }
  const double eps = f.get_float("llama.attention.layer_norm_rms_epsilon", 1e-5);
  if (!(eps > 0 && eps < 1))
    fail(KVRT_ERR_CORRUPT, "%s: llama.attention.layer_norm_rms_epsilon %g is out of range", src,
         eps);
  hp.norm_eps = static_cast<float>(eps);

  m->tok_ = Tokenizer::from_gguf(f);
  hp.n_vocab = static_cast<uint32_t>(m->tok_.n_vocab());

  // A tensor found by name with the expected [ne0, ne1] shape.
  auto find = [&](const std::string& name, uint64_t ne0, uint64_t ne1) -> const GgufTensor& {
    const GgufTensor* t = f.tensor(name);
    if (!t) fail(KVRT_ERR_CORRUPT, "%s: missing tensor '%s'", src, name.c_str());
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1) {
      const std::string want = ne1 == 1 ? strprintf("[%" PRIu64 "]", ne0)
                                        : strprintf("[%" PRIu64 ", %" PRIu64 "]", ne0, ne1);
      fail(KVRT_ERR_CORRUPT, "%s: tensor '%s' has shape %s, expected %s", src, name.c_str(),
           shape_str(*t).c_str(), want.c_str());
    }
    if (reinterpret_cast<uintptr_t>(t->data) % data_alignment(t->type) != 0)
      fail(KVRT_ERR_UNSUPPORTED, "%s: tensor '%s' data is not aligned to %zu bytes "
           "(general.alignment %" PRIu64 ")", src, name.c_str(), data_alignment(t->type),
           f.alignment());
    m->n_params += t->ne[0] * t->ne[1];
    m->weight_bytes += t->nbytes;
    return *t;
  };
  auto matrix = [&](const std::string& name, uint32_t cols, uint32_t rows) {
    const GgufTensor& t = find(name, cols, rows);
    const size_t row_bytes = kvrt_k::weight_row_bytes(t.type, cols);
    if (row_bytes == 0)  // the reader refuses these already; kept for other producers
      fail(KVRT_ERR_UNSUPPORTED, "%s: tensor '%s' type %u with %u columns is not supported", src,
           name.c_str(), t.type, cols);
    WeightMatrix w;
    w.type = t.type;
    w.rows = rows;
    w.cols = cols;
    w.row_bytes = row_bytes;
    w.data = t.data;
    return w;
  };
  auto norm = [&](const std::string& name) -> const float* {
    const GgufTensor& t = find(name, hp.n_embd, 1);
    if (t.type == kvrt_k::W_F32) return reinterpret_cast<const float*>(t.data);
    if (t.type != kvrt_k::W_F16 && t.type != kvrt_k::W_BF16)
      fail(KVRT_ERR_UNSUPPORTED, "%s: norm tensor '%s' has type %s (F32, F16 or BF16 expected)",
           src, name.c_str(), weight_type_name(t.type));
    std::vector<float> v(hp.n_embd);
    for (uint32_t i = 0; i < hp.n_embd; ++i) {
      uint16_t h;
      std::memcpy(&h, t.data + 2 * i, 2);
      v[i] = t.type == kvrt_k::W_F16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
    m->owned_norms_.push_back(std::move(v));
    return m->owned_norms_.back().data();  // inner buffers do not move with the outer vector
  };

  const uint32_t kv_dim = hp.n_head_kv * hp.head_dim;
  m->tok_embd = matrix("token_embd.weight", hp.n_embd, hp.n_vocab);
  m->output_norm = norm("output_norm.weight");
  m->output = f.tensor("output.weight") ? matrix("output.weight", hp.n_embd, hp.n_vocab)
                                        : m->tok_embd;
  m->layers.resize(hp.n_layer);
  for (uint32_t i = 0; i < hp.n_layer; ++i) {
    LayerWeights& L = m->layers[i];
    const std::string p = "blk." + std::to_string(i) + ".";
    L.attn_norm = norm(p + "attn_norm.weight");
    L.wq = matrix(p + "attn_q.weight", hp.n_embd, hp.n_embd);
    L.wk = matrix(p + "attn_k.weight", hp.n_embd, kv_dim);
    L.wv = matrix(p + "attn_v.weight", hp.n_embd, kv_dim);
    L.wo = matrix(p + "attn_output.weight", hp.n_embd, hp.n_embd);
    L.ffn_norm = norm(p + "ffn_norm.weight");
    L.w_gate = matrix(p + "ffn_gate.weight", hp.n_embd, hp.n_ff);
    L.w_up = matrix(p + "ffn_up.weight", hp.n_embd, hp.n_ff);
    L.w_down = matrix(p + "ffn_down.weight", hp.n_ff, hp.n_embd);
  }
  // A decode step reads one embedding row, unless the output layer is the
  // embedding table itself (then the whole table is read anyway).
  m->decode_weight_bytes = m->weight_bytes;
  if (m->output.data != m->tok_embd.data)
    m->decode_weight_bytes -= static_cast<uint64_t>(m->tok_embd.rows - 1) * m->tok_embd.row_bytes;
  return m;
}

}  // namespace kvrt
