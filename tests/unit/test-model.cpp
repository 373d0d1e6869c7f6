// Tests of model loading: the real test model's hyper-parameters and weight
// views, and synthetic files that must be refused with a specific status.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gguf-writer.hpp"
#include "kernels/common/weight-types.h"
#include "model/model.hpp"
#include "util/error.hpp"

// cmocka last: its fail()/skip() macros clash with names in C++ headers.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include <cmocka.h>
}

using kvrt::GgufFile;
using kvrt::Model;
using kvrt_tools::GgufWriter;
using Bytes = std::vector<uint8_t>;

namespace {

std::string model_path() {
  const char* p = std::getenv("KVRT_MODEL");
  if (!p || !*p) p = std::getenv("KVRT_MODEL_DEFAULT");
  return p ? p : "";
}

void expect_error(const std::function<void()>& fn, kvrt_status status,
                  std::vector<std::string> needles) {
  try {
    fn();
  } catch (const kvrt::Error& e) {
    bool ok = e.status() == status;
    for (const auto& n : needles) ok = ok && std::strstr(e.what(), n.c_str()) != nullptr;
    if (!ok) {
      print_error("got status %d '%s', wanted %d\n", e.status(), e.what(), status);
      fail();
    }
    return;
  }
  print_error("no error, wanted status %d\n", status);
  fail();
}

// A synthetic Llama: 32 wide, 4 heads of 8, 2 KV heads, FFN 64, 2 layers,
// 8 tokens. Tests edit the spec before it is written.
struct Tensor {
  uint32_t type;
  std::vector<uint64_t> ne;
};
struct Spec {
  std::map<std::string, std::string> strings = {{"general.architecture", "llama"},
                                                {"general.name", "tiny"},
                                                {"tokenizer.ggml.model", "llama"}};
  std::map<std::string, uint32_t> u32s = {
      {"llama.context_length", 128}, {"llama.embedding_length", 32},
      {"llama.block_count", 2},      {"llama.feed_forward_length", 64},
      {"llama.attention.head_count", 4}, {"llama.attention.head_count_kv", 2},
      {"tokenizer.ggml.bos_token_id", 1}, {"tokenizer.ggml.eos_token_id", 2}};
  std::map<std::string, float> f32s = {{"llama.attention.layer_norm_rms_epsilon", 1e-6f}};
  std::map<std::string, Tensor> tensors;
  // Norm values written for every norm tensor (as the norm's type).
  std::vector<float> norm_values;

  Spec() {
    tensors["token_embd.weight"] = {0, {32, 8}};
    tensors["output_norm.weight"] = {0, {32}};
    tensors["output.weight"] = {0, {32, 8}};
    for (int i = 0; i < 2; ++i) {
      const std::string p = "blk." + std::to_string(i) + ".";
      tensors[p + "attn_norm.weight"] = {0, {32}};
      tensors[p + "attn_q.weight"] = {0, {32, 32}};
      tensors[p + "attn_k.weight"] = {0, {32, 16}};
      tensors[p + "attn_v.weight"] = {0, {32, 16}};
      tensors[p + "attn_output.weight"] = {0, {32, 32}};
      tensors[p + "ffn_norm.weight"] = {0, {32}};
      tensors[p + "ffn_gate.weight"] = {0, {32, 64}};
      tensors[p + "ffn_up.weight"] = {0, {32, 64}};
      tensors[p + "ffn_down.weight"] = {0, {64, 32}};
    }
    for (int i = 0; i < 32; ++i) norm_values.push_back(0.5f * static_cast<float>(i) - 3.0f);
  }

  Bytes bytes() const {
    GgufWriter w;
    for (const auto& [k, v] : strings) w.add_string(k, v);
    for (const auto& [k, v] : u32s) w.add_u32(k, v);
    for (const auto& [k, v] : f32s) w.add_f32(k, v);
    w.add_array_string("tokenizer.ggml.tokens",
                       {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "b", "\xE2\x96\x81" "a", "ab"});
    w.add_array_f32("tokenizer.ggml.scores", {0, 0, 0, -1, -2, -3, -0.5f, -0.25f});
    w.add_array_i32("tokenizer.ggml.token_type", {2, 3, 3, 1, 1, 1, 1, 1});
    for (const auto& [name, t] : tensors) {
      uint64_t rows = 1;
      for (size_t d = 1; d < t.ne.size(); ++d) rows *= t.ne[d];
      const size_t row_bytes = kvrt_k::weight_row_bytes(t.type, t.ne[0]);
      Bytes b(row_bytes ? row_bytes * rows : 64, 0);
      const bool float_type = t.type == 0 || t.type == 1 || t.type == 30;
      if (name.find("norm") != std::string::npos && t.ne[0] == norm_values.size() &&
          float_type) {
        for (size_t i = 0; i < norm_values.size(); ++i) {
          const float v = norm_values[i];
          if (t.type == 0) {
            std::memcpy(b.data() + 4 * i, &v, 4);
          } else {
            // The test values are exact in both 16-bit formats.
            uint16_t h;
            if (t.type == 30) {
              uint32_t bits;
              std::memcpy(&bits, &v, 4);
              h = static_cast<uint16_t>(bits >> 16);
            } else {
              h = half_bits(v);
            }
            std::memcpy(b.data() + 2 * i, &h, 2);
          }
        }
      } else {
        for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i * 7 + name.size());
      }
      w.add_tensor(name, t.type, t.ne, b);
    }
    return w.to_bytes();
  }

  // f16 bits of a value that has an exact f16 form (integers and halves here).
  static uint16_t half_bits(float v) {
    if (v == 0) return 0;
    uint16_t sign = v < 0 ? 0x8000 : 0;
    float a = std::fabs(v);
    int e;
    float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
    uint16_t exp = static_cast<uint16_t>(e - 1 + 15);
    uint16_t man = static_cast<uint16_t>((m * 2 - 1) * 1024);
    return static_cast<uint16_t>(sign | exp << 10 | man);
  }
};

struct Loaded {
  Bytes buf;
  std::unique_ptr<Model> model;
};

Loaded load(const Spec& s) {
  Loaded l;
  l.buf = s.bytes();
  l.model = Model::from_gguf(GgufFile::parse(l.buf.data(), l.buf.size(), "tiny.gguf"));
  return l;
}

void expect_load_error(const Spec& s, kvrt_status status, std::vector<std::string> needles) {
  expect_error([&] { load(s); }, status, std::move(needles));
}

void test_real_model(void**) {
  const std::string path = model_path();
  assert_false(path.empty());
  auto m = Model::load(path);
  const kvrt::HParams& h = m->hparams();
  assert_string_equal(h.architecture.c_str(), "llama");
  assert_int_equal(h.n_vocab, 512);
  assert_int_equal(h.n_ctx_train, 2048);
  assert_int_equal(h.n_embd, 64);
  assert_int_equal(h.n_layer, 5);
  assert_int_equal(h.n_head, 8);
  assert_int_equal(h.n_head_kv, 4);
  assert_int_equal(h.head_dim, 8);
  assert_int_equal(h.n_ff, 172);
  assert_int_equal(h.rope_dim, 8);
  assert_true(h.rope_freq_base == 10000.0f);
  assert_true(h.rope_freq_scale == 1.0f);
  assert_true(std::fabs(h.norm_eps - 1e-5f) < 1e-12f);
  assert_int_equal(m->layers.size(), 5);
  assert_int_equal(m->tok_embd.rows, 512);
  assert_int_equal(m->tok_embd.cols, 64);
  assert_int_equal(m->tok_embd.row_bytes, 256);
  assert_int_equal(m->output.rows, 512);
  assert_true(m->output.data != m->tok_embd.data);  // the file has its own output.weight
  assert_int_equal(m->layers[4].w_down.rows, 64);
  assert_int_equal(m->layers[4].w_down.cols, 172);
  assert_int_equal(m->layers[0].wk.rows, 32);
  assert_int_equal(m->layers[0].wq.rows, 64);
  assert_int_equal(m->layers[2].w_gate.rows, 172);
  // Views point at the file's tensors.
  assert_ptr_equal(m->layers[3].wv.data, m->file().tensor("blk.3.attn_v.weight")->data);
  assert_ptr_equal(m->layers[1].ffn_norm, m->file().tensor("blk.1.ffn_norm.weight")->data);
  assert_ptr_equal(m->output_norm, m->file().tensor("output_norm.weight")->data);
  // Parameters: two 64x512 matrices, the final norm, and per layer
  // q 64x64, k and v 64x32, o 64x64, three 64x172 FFN matrices and two norms.
  const uint64_t per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 64 * 172 * 3 + 64 * 2;
  const uint64_t n = 64 * 512 * 2 + 64 + 5 * per_layer;
  assert_int_equal(m->n_params, n);
  assert_int_equal(m->weight_bytes, n * 4);
  assert_int_equal(m->tokenizer().n_vocab(), 512);
  assert_int_equal(m->tokenizer().bos(), 1);
  assert_int_equal(m->tokenizer().eos(), 2);
}

void test_synthetic_ok(void**) {
  Spec s;
  Loaded l = load(s);
  const kvrt::HParams& h = l.model->hparams();
  assert_string_equal(h.name.c_str(), "tiny");
  assert_int_equal(h.n_vocab, 8);
  assert_int_equal(h.n_head_kv, 2);
  assert_int_equal(h.head_dim, 8);
  assert_int_equal(h.rope_dim, 8);  // defaults to the head dimension
  assert_true(h.rope_freq_base == 10000.0f);
  assert_true(h.norm_eps == 1e-6f);
  assert_int_equal(l.model->layers[1].wk.rows, 16);
  assert_int_equal(l.model->layers[1].wk.cols, 32);
  for (int i = 0; i < 32; ++i) assert_true(l.model->output_norm[i] == s.norm_values[i]);
}

void test_defaults_and_scaling(void**) {
  Spec s;
  s.u32s.erase("llama.attention.head_count_kv");
  s.f32s.erase("llama.attention.layer_norm_rms_epsilon");
  s.tensors["blk.0.attn_k.weight"].ne = {32, 32};
  s.tensors["blk.0.attn_v.weight"].ne = {32, 32};
  s.tensors["blk.1.attn_k.weight"].ne = {32, 32};
  s.tensors["blk.1.attn_v.weight"].ne = {32, 32};
  s.f32s["llama.rope.freq_base"] = 500000.0f;
  s.u32s["llama.rope.dimension_count"] = 4;
  s.strings["llama.rope.scaling.type"] = "linear";
  s.f32s["llama.rope.scaling.factor"] = 4.0f;
  Loaded l = load(s);
  const kvrt::HParams& h = l.model->hparams();
  assert_int_equal(h.n_head_kv, 4);  // defaults to the head count
  assert_true(std::fabs(h.norm_eps - 1e-5f) < 1e-12f);
  assert_true(h.rope_freq_base == 500000.0f);
  assert_int_equal(h.rope_dim, 4);
  assert_true(h.rope_freq_scale == 0.25f);

  Spec y;
  y.strings["llama.rope.scaling.type"] = "yarn";
  expect_load_error(y, KVRT_ERR_UNSUPPORTED, {"rope scaling type 'yarn'"});
}

void test_tied_output_and_16bit_norms(void**) {
  Spec s;
  s.tensors.erase("output.weight");
  s.tensors["output_norm.weight"].type = 1;   // F16
  s.tensors["blk.0.attn_norm.weight"].type = 30;  // BF16
  s.tensors["blk.1.attn_q.weight"].type = 8;  // Q8_0: 32 columns = one block per row
  s.tensors["blk.1.ffn_down.weight"].type = 1;
  s.tensors["blk.0.ffn_up.weight"].type = 30;
  Loaded l = load(s);
  const Model& m = *l.model;
  assert_ptr_equal(m.output.data, m.tok_embd.data);
  assert_int_equal(m.output.rows, 8);
  for (int i = 0; i < 32; ++i) {
    assert_true(m.output_norm[i] == s.norm_values[i]);
    assert_true(m.layers[0].attn_norm[i] == s.norm_values[i]);
  }
  assert_int_equal(m.layers[1].wq.type, 8);
  assert_int_equal(m.layers[1].wq.row_bytes, 34);
  assert_int_equal(m.layers[1].w_down.row_bytes, 128);
  assert_int_equal(m.layers[0].w_up.type, 30);
  assert_int_equal(m.layers[0].w_up.row_bytes, 64);
}

void test_refusals(void**) {
  Spec arch;
  arch.strings["general.architecture"] = "gpt2";
  expect_load_error(arch, KVRT_ERR_UNSUPPORTED, {"architecture 'gpt2'"});
  Spec noarch;
  noarch.strings.erase("general.architecture");
  expect_load_error(noarch, KVRT_ERR_CORRUPT, {"general.architecture"});

  Spec q4;
  q4.tensors["blk.0.attn_q.weight"].type = 2;
  expect_load_error(q4, KVRT_ERR_UNSUPPORTED, {"blk.0.attn_q.weight", "Q4_0"});

  Spec missing;
  missing.tensors.erase("blk.1.ffn_up.weight");
  expect_load_error(missing, KVRT_ERR_CORRUPT, {"missing tensor 'blk.1.ffn_up.weight'"});
  Spec no_embd;
  no_embd.tensors.erase("token_embd.weight");
  expect_load_error(no_embd, KVRT_ERR_CORRUPT, {"missing tensor 'token_embd.weight'"});

  Spec shape;
  shape.tensors["blk.0.attn_k.weight"].ne = {32, 32};
  expect_load_error(shape, KVRT_ERR_CORRUPT,
                    {"'blk.0.attn_k.weight' has shape [32, 32], expected [32, 16]"});
  Spec transposed;
  transposed.tensors["blk.1.ffn_down.weight"].ne = {32, 64};
  expect_load_error(transposed, KVRT_ERR_CORRUPT,
                    {"'blk.1.ffn_down.weight' has shape [32, 64], expected [64, 32]"});
  Spec vocab;  // embedding rows must equal the vocabulary size
  vocab.tensors["token_embd.weight"].ne = {32, 9};
  expect_load_error(vocab, KVRT_ERR_CORRUPT, {"token_embd.weight", "expected [32, 8]"});
  Spec norm3d;
  norm3d.tensors["output_norm.weight"].ne = {32, 1, 2};
  expect_load_error(norm3d, KVRT_ERR_CORRUPT, {"[32, 1, 2], expected [32]"});
  Spec qnorm;
  qnorm.tensors["blk.0.ffn_norm.weight"].type = 8;
  expect_load_error(qnorm, KVRT_ERR_UNSUPPORTED, {"blk.0.ffn_norm.weight", "Q8_0"});

  Spec tok;
  tok.strings["tokenizer.ggml.model"] = "gpt2";
  expect_load_error(tok, KVRT_ERR_UNSUPPORTED, {"tokenizer model 'gpt2'"});
}

void test_bad_hparams(void**) {
  struct Case {
    const char* key;
    uint32_t value;
    const char* needle;
  } cases[] = {
      {"llama.embedding_length", 0, "llama.embedding_length = 0"},
      {"llama.embedding_length", 30, "not a multiple of the head count"},
      {"llama.attention.head_count_kv", 3, "not a multiple of the KV head count"},
      {"llama.attention.head_count_kv", 0, "head_count_kv = 0"},
      {"llama.block_count", 100000, "llama.block_count = 100000"},
      {"llama.context_length", 0, "context_length = 0"},
      {"llama.feed_forward_length", 0, "feed_forward_length = 0"},
      {"llama.rope.dimension_count", 16, "rope dimension count 16"},
      {"llama.rope.dimension_count", 3, "rope dimension count 3"},
  };
  for (const Case& c : cases) {
    Spec s;
    s.u32s[c.key] = c.value;
    expect_load_error(s, KVRT_ERR_CORRUPT, {c.needle});
  }
  Spec odd;  // 4 heads of 9: head_dim odd
  odd.u32s["llama.embedding_length"] = 36;
  expect_load_error(odd, KVRT_ERR_CORRUPT, {"head dimension 9 is odd"});
  Spec miss;
  miss.u32s.erase("llama.block_count");
  expect_load_error(miss, KVRT_ERR_CORRUPT, {"missing key 'llama.block_count'"});
  Spec eps;
  eps.f32s["llama.attention.layer_norm_rms_epsilon"] = -1.0f;
  expect_load_error(eps, KVRT_ERR_CORRUPT, {"layer_norm_rms_epsilon"});
  Spec base;
  base.f32s["llama.rope.freq_base"] = NAN;
  expect_load_error(base, KVRT_ERR_CORRUPT, {"freq_base"});
  Spec typed;
  typed.strings["llama.block_count"] = "2";
  typed.u32s.erase("llama.block_count");
  expect_load_error(typed, KVRT_ERR_CORRUPT, {"llama.block_count", "string"});
}

void test_io(void**) {
  expect_error([] { Model::load("/nonexistent-dir/model.gguf"); }, KVRT_ERR_IO,
               {"/nonexistent-dir/model.gguf", "No such file"});
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_real_model),
      cmocka_unit_test(test_synthetic_ok),
      cmocka_unit_test(test_defaults_and_scaling),
      cmocka_unit_test(test_tied_output_and_16bit_norms),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_bad_hparams),
      cmocka_unit_test(test_io),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
