// Quantized KV caches on the test model, through the public API: greedy
// decoding with q8 matches the known f32 continuation, the KL divergence of
// q8 (and q4, mixed) next-token distributions from an f32 cache over a few
// thousand teacher-forced tokens stays under budget, rewinding into a
// quantized block keeps working, bytes per token count the scales, and
// unknown or unsupported formats are refused with the right status.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "integration/known-answers.hpp"
#include "kvrt/kvrt.h"

extern "C" {
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
}

namespace {

using kvrt_test::kGreedy;
using kvrt_test::kPrompt;

using kvrt_test::model_path;

struct Env {
  kvrt_runtime* rt = nullptr;
  kvrt_model* m = nullptr;
  uint32_t n_vocab = 0, n_ctx = 0;
};
Env g;

int setup(void**) {
  kvrt_runtime_params rp;
  kvrt_runtime_default_params(&rp);
  rp.n_threads = 2;
  if (kvrt_runtime_create(&rp, &g.rt) != KVRT_OK) return -1;
  if (kvrt_model_load(g.rt, model_path().c_str(), nullptr, &g.m) != KVRT_OK) {
    std::fprintf(stderr, "cannot load the test model '%s' (set KVRT_MODEL): %s\n",
                 model_path().c_str(), kvrt_last_error());
    return -1;
  }
  kvrt_model_info info;
  info.struct_size = sizeof info;
  if (kvrt_model_get_info(g.m, &info) != KVRT_OK) return -1;
  g.n_vocab = info.n_vocab;
  g.n_ctx = info.n_ctx_train;
  return 0;
}

int teardown(void**) {
  kvrt_model_destroy(g.m);
  kvrt_runtime_destroy(g.rt);
  return 0;
}

kvrt_session* open(uint32_t kf, uint32_t vf) {
  kvrt_session_params sp;
  kvrt_session_default_params(&sp);
  sp.kv_format_k = kf;
  sp.kv_format_v = vf;
  kvrt_session* s = nullptr;
  kvrt_status st = kvrt_session_create(g.m, &sp, &s);
  if (st != KVRT_OK) std::fprintf(stderr, "session %u/%u: %s\n", kf, vf, kvrt_last_error());
  assert_int_equal(st, KVRT_OK);
  return s;
}

int32_t argmax(const std::vector<float>& v) {
  size_t b = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[b]) b = i;
  return (int32_t)b;
}

void test_greedy_q8(void**) {
  // Token by token and with the prompt in one call; both must give the f32
  // continuation for 64 tokens (it crosses four q8 blocks of 16).
  for (int mode = 0; mode < 2; ++mode) {
    kvrt_session* s = open(KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8);
    std::vector<float> lg(g.n_vocab);
    if (mode == 0) {
      for (int32_t t : kPrompt) assert_int_equal(kvrt_decode_step(s, &t, 1, lg.data(), lg.size()), KVRT_OK);
    } else {
      assert_int_equal(kvrt_decode_step(s, kPrompt, 5, lg.data(), lg.size()), KVRT_OK);
    }
    for (int i = 0; i < 64; ++i) {
      int32_t t = argmax(lg);
      if (t != kGreedy[i]) std::fprintf(stderr, "mode %d step %d: got %d want %d\n", mode, i, t, kGreedy[i]);
      assert_int_equal(t, kGreedy[i]);
      assert_int_equal(kvrt_decode_step(s, &t, 1, lg.data(), lg.size()), KVRT_OK);
    }
    kvrt_session_destroy(s);
  }
}

// log-softmax in double.
void log_probs(const std::vector<float>& lg, std::vector<double>& out) {
  double mx = lg[0];
  for (float f : lg) mx = std::max(mx, (double)f);
  double sum = 0;
  for (float f : lg) sum += std::exp(f - mx);
  double lse = mx + std::log(sum);
  out.resize(lg.size());
  for (size_t i = 0; i < lg.size(); ++i) out[i] = lg[i] - lse;
}

// A sampled token stream from the f32 cache (seeded, temperature 1), in
// sessions of at most n_ctx tokens that each start with BOS.
std::vector<int32_t> sample_stream(size_t n) {
  std::vector<int32_t> out;
  std::vector<float> lg(g.n_vocab);
  kvrt_sampler_params smp;
  kvrt_sampler_default_params(&smp);
  smp.temperature = 1.0f;
  smp.top_k = 0;
  smp.top_p = 1.0f;
  smp.seed = 1234;
  while (out.size() < n) {
    kvrt_session* s = open(KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F32);
    assert_int_equal(kvrt_session_set_sampler(s, &smp), KVRT_OK);
    ++smp.seed;
    int32_t t = 1;
    for (uint32_t i = 0; i < g.n_ctx && out.size() < n; ++i) {
      out.push_back(t);
      assert_int_equal(kvrt_decode_step(s, &t, 1, lg.data(), lg.size()), KVRT_OK);
      assert_int_equal(kvrt_session_sample(s, lg.data(), lg.size(), &t), KVRT_OK);
    }
    kvrt_session_destroy(s);
  }
  return out;
}

struct Quality {
  double mean_kl, max_kl, top1;
};

// Teacher-forces `stream` (cut into n_ctx windows) through f32 and kf/vf
// caches and compares next-token distributions.
Quality compare(const std::vector<int32_t>& stream, uint32_t kf, uint32_t vf) {
  std::vector<float> a(g.n_vocab), b(g.n_vocab);
  std::vector<double> la, lb;
  double sum = 0, mx = 0;
  size_t agree = 0, n = 0;
  for (size_t w = 0; w < stream.size(); w += g.n_ctx) {
    kvrt_session* ref = open(KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F32);
    kvrt_session* q = open(kf, vf);
    for (size_t i = w; i < std::min(stream.size(), w + g.n_ctx); ++i) {
      assert_int_equal(kvrt_decode_step(ref, &stream[i], 1, a.data(), a.size()), KVRT_OK);
      assert_int_equal(kvrt_decode_step(q, &stream[i], 1, b.data(), b.size()), KVRT_OK);
      log_probs(a, la);
      log_probs(b, lb);
      double kl = 0;
      for (size_t j = 0; j < la.size(); ++j) kl += std::exp(la[j]) * (la[j] - lb[j]);
      sum += kl;
      mx = std::max(mx, kl);
      agree += argmax(a) == argmax(b);
      ++n;
    }
    kvrt_session_destroy(ref);
    kvrt_session_destroy(q);
  }
  return {sum / n, mx, (double)agree / n};
}

void test_kl_budget(void**) {
  const std::vector<int32_t> stream = sample_stream(3000);
  struct Case {
    uint32_t k, v;
    double max_mean_kl, min_top1;
  } cases[] = {{KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8, 1e-3, 0.98},
               {KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q4, 2e-2, 0.93},
               {KVRT_KV_FORMAT_Q4, KVRT_KV_FORMAT_Q4, 2e-2, 0.93}};
  for (const Case& c : cases) {
    Quality r = compare(stream, c.k, c.v);
    std::fprintf(stderr, "k %u v %u: mean KL %.3g max KL %.3g top-1 %.4f over %zu tokens\n", c.k,
                 c.v, r.mean_kl, r.max_kl, r.top1, stream.size());
    assert_true(r.mean_kl <= c.max_mean_kl);
    assert_true(r.top1 >= c.min_top1);
    assert_true(r.mean_kl > 0.0);  // a quantized cache that changes nothing is not quantizing
  }
}

void test_rewind_into_quantized_block(void**) {
  // 40 tokens fill blocks 0 and 1 (quantized) and half of block 2; rewinding
  // to 20 resumes inside block 1 from its dequantized values. Re-decoding
  // tokens 20..39 must track the f32 cache as closely as the first pass did.
  std::vector<int32_t> toks(kPrompt, kPrompt + 5);
  toks.insert(toks.end(), kGreedy, kGreedy + 35);
  kvrt_session* ref = open(KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F32);
  kvrt_session* q = open(KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8);
  std::vector<float> a(g.n_vocab), b(g.n_vocab);
  std::vector<std::vector<float>> ref_lg;
  for (int32_t t : toks) {
    assert_int_equal(kvrt_decode_step(ref, &t, 1, a.data(), a.size()), KVRT_OK);
    ref_lg.push_back(a);
  }
  assert_int_equal(kvrt_decode_step(q, toks.data(), toks.size(), nullptr, 0), KVRT_OK);
  assert_int_equal(kvrt_session_rewind(q, 20), KVRT_OK);
  std::vector<double> la, lb;
  for (size_t i = 20; i < toks.size(); ++i) {
    assert_int_equal(kvrt_decode_step(q, &toks[i], 1, b.data(), b.size()), KVRT_OK);
    log_probs(ref_lg[i], la);
    log_probs(b, lb);
    double kl = 0;
    for (size_t j = 0; j < la.size(); ++j) kl += std::exp(la[j]) * (la[j] - lb[j]);
    if (kl > 5e-3) std::fprintf(stderr, "after rewind, position %zu: KL %.3g\n", i, kl);
    assert_true(kl <= 5e-3);
    assert_int_equal(argmax(b), argmax(ref_lg[i]));
  }
  kvrt_session_destroy(ref);
  kvrt_session_destroy(q);
}

void test_bytes_per_token(void**) {
  // Test model: 5 layers, 4 KV heads, head_dim 8, blocks of 16 tokens.
  // q8 head part: K 16*8 codes + 8 f16 scales = 144, V 16*8 + 16 f16 = 160;
  // q4: K 16*4 + 8*(2+2) = 96, V 16*4 + 16*(2+2) = 128.
  const uint64_t q8 = 5ull * 4 * (144 + 160) / 16, q4 = 5ull * 4 * (96 + 128) / 16;
  const uint64_t q8q4 = 5ull * 4 * (144 + 128) / 16;
  uint64_t b = 0;
  assert_int_equal(kvrt_model_kv_bytes_per_token(g.m, KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8, &b), KVRT_OK);
  assert_int_equal(b, q8);
  assert_int_equal(kvrt_model_kv_bytes_per_token(g.m, KVRT_KV_FORMAT_Q4, KVRT_KV_FORMAT_Q4, &b), KVRT_OK);
  assert_int_equal(b, q4);
  assert_int_equal(kvrt_model_kv_bytes_per_token(g.m, KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q4, &b), KVRT_OK);
  assert_int_equal(b, q8q4);
  kvrt_model_info info;
  info.struct_size = sizeof info;
  assert_int_equal(kvrt_model_get_info(g.m, &info), KVRT_OK);
  assert_int_equal(info.kv_bytes_per_token[KVRT_KV_FORMAT_Q8], q8);
  assert_int_equal(info.kv_bytes_per_token[KVRT_KV_FORMAT_Q4], q4);
  assert_int_equal(info.kv_bytes_per_token[KVRT_KV_FORMAT_F16], 5 * 4 * 8 * 2 * 2);
  kvrt_session* s = open(KVRT_KV_FORMAT_Q4, KVRT_KV_FORMAT_Q4);
  int32_t t = 1;
  assert_int_equal(kvrt_decode_step(s, &t, 1, nullptr, 0), KVRT_OK);
  kvrt_session_stats st;
  st.struct_size = sizeof st;
  assert_int_equal(kvrt_session_get_stats(s, &st), KVRT_OK);
  assert_int_equal(st.kv_bytes_per_token, q4);
  assert_int_equal(st.kv_bytes, q4 * 16);  // one block
  kvrt_session_destroy(s);
}

void test_refusals(void**) {
  kvrt_session_params sp;
  kvrt_session_default_params(&sp);
  kvrt_session* s = nullptr;
  sp.kv_format_k = KVRT_KV_FORMAT_COUNT;
  sp.kv_format_v = KVRT_KV_FORMAT_Q8;
  assert_int_equal(kvrt_session_create(g.m, &sp, &s), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(s);
  sp.kv_format_k = KVRT_KV_FORMAT_Q8;
  sp.kv_format_v = 99;
  assert_int_equal(kvrt_session_create(g.m, &sp, &s), KVRT_ERR_INVALID_ARGUMENT);
  // Unquantized keys with quantized values: refused, naming both.
  sp.kv_format_k = KVRT_KV_FORMAT_F16;
  sp.kv_format_v = KVRT_KV_FORMAT_Q8;
  assert_int_equal(kvrt_session_create(g.m, &sp, &s), KVRT_ERR_UNSUPPORTED);
  assert_null(s);
  const char* msg = kvrt_last_error();
  assert_non_null(std::strstr(msg, "f16 keys"));
  assert_non_null(std::strstr(msg, "q8 values"));
  sp.kv_format_k = KVRT_KV_FORMAT_Q4;
  sp.kv_format_v = KVRT_KV_FORMAT_F32;
  assert_int_equal(kvrt_session_create(g.m, &sp, &s), KVRT_ERR_UNSUPPORTED);
  assert_non_null(std::strstr(kvrt_last_error(), "q4 keys"));
  uint64_t b = 0;
  assert_int_equal(kvrt_model_kv_bytes_per_token(g.m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_Q4, &b),
                   KVRT_ERR_UNSUPPORTED);
  assert_int_equal(kvrt_model_kv_bytes_per_token(g.m, 9, KVRT_KV_FORMAT_Q4, &b),
                   KVRT_ERR_INVALID_ARGUMENT);
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_greedy_q8),          cmocka_unit_test(test_bytes_per_token),
      cmocka_unit_test(test_refusals),           cmocka_unit_test(test_rewind_into_quantized_block),
      cmocka_unit_test(test_kl_budget),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
