// The engine against the scalar reference forward pass: logits of every step
// within 1e-4 (relative to the largest logit) for f32 and f16 caches, 1 and 2
// threads, prefill in one call and token by token, several block sizes; and
// the known greedy continuation of the test model.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "integration/reference-forward.hpp"
#include "integration/known-answers.hpp"
#include "kvrt/kvrt.h"
#include "model/model.hpp"

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

struct Fixture {
  std::unique_ptr<kvrt::Model> model;
};
Fixture* g_fx = nullptr;

int setup(void**) {
  std::string path = model_path();
  try {
    g_fx = new Fixture{kvrt::Model::load(path)};
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cannot load the test model '%s' (set KVRT_MODEL): %s\n", path.c_str(), e.what());
    return -1;
  }
  return 0;
}

int teardown(void**) {
  delete g_fx;
  return 0;
}

double rel_diff(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num = std::max(num, std::fabs(double(a[i]) - ref[i]));
    den = std::max(den, std::fabs(double(ref[i])));
  }
  return num / den;
}

int argmax(const std::vector<float>& v) {
  int best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[best]) best = int(i);
  return best;
}

struct Config {
  uint32_t format;
  uint32_t threads;
  uint32_t block_tokens;
  bool one_call;
};

// Feeds `tokens` (as prompt) then `n_gen` greedy tokens; returns the logits
// after the prompt and after each generated token, and the generated ids.
void run_engine(const Config& c, const std::vector<int32_t>& prompt, int n_gen,
                std::vector<std::vector<float>>* logits, std::vector<int32_t>* gen) {
  kvrt_runtime_params rp;
  kvrt_runtime_default_params(&rp);
  rp.n_threads = c.threads;
  rp.block_tokens = c.block_tokens;
  kvrt_runtime* rt = nullptr;
  assert_int_equal(kvrt_runtime_create(&rp, &rt), KVRT_OK);
  kvrt_model* m = nullptr;
  assert_int_equal(kvrt_model_load(rt, model_path().c_str(), nullptr, &m), KVRT_OK);
  kvrt_session_params sp;
  kvrt_session_default_params(&sp);
  sp.kv_format_k = sp.kv_format_v = c.format;
  sp.max_batch = 7;  // forces prompts longer than 7 through several batches
  kvrt_session* s = nullptr;
  assert_int_equal(kvrt_session_create(m, &sp, &s), KVRT_OK);
  std::vector<float> lg(512);
  if (c.one_call) {
    assert_int_equal(kvrt_decode_step(s, prompt.data(), prompt.size(), lg.data(), lg.size()), KVRT_OK);
  } else {
    for (int32_t t : prompt)
      assert_int_equal(kvrt_decode_step(s, &t, 1, lg.data(), lg.size()), KVRT_OK);
  }
  logits->push_back(lg);
  for (int i = 0; i < n_gen; ++i) {
    int32_t t = argmax(lg);
    gen->push_back(t);
    assert_int_equal(kvrt_decode_step(s, &t, 1, lg.data(), lg.size()), KVRT_OK);
    logits->push_back(lg);
  }
  kvrt_session_destroy(s);
  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
}

void check_against_reference(const std::vector<int32_t>& prompt, int n_gen) {
  const Config configs[] = {
      {KVRT_KV_FORMAT_F32, 1, 16, true},  {KVRT_KV_FORMAT_F32, 2, 16, false},
      {KVRT_KV_FORMAT_F16, 1, 16, false}, {KVRT_KV_FORMAT_F16, 2, 16, true},
      {KVRT_KV_FORMAT_F32, 2, 5, true},   {KVRT_KV_FORMAT_F16, 1, 1, true},
  };
  for (const Config& c : configs) {
    std::vector<std::vector<float>> logits;
    std::vector<int32_t> gen;
    run_engine(c, prompt, n_gen, &logits, &gen);
    kvrt_test::ReferenceModel ref(*g_fx->model, c.format == KVRT_KV_FORMAT_F16);
    std::vector<float> rl;
    for (int32_t t : prompt) rl = ref.step(t);
    double worst = rel_diff(logits[0], rl);
    for (int i = 0; i < n_gen; ++i) {
      rl = ref.step(gen[i]);
      worst = std::max(worst, rel_diff(logits[i + 1], rl));
    }
    std::printf("format %u threads %u block %u %s: worst relative logit difference %.3g\n", c.format,
                c.threads, c.block_tokens, c.one_call ? "one call" : "token by token", worst);
    assert_true(worst <= 1e-4);
  }
}

void test_known_prompt_matches_reference(void**) {
  check_against_reference(std::vector<int32_t>(std::begin(kPrompt), std::end(kPrompt)), 24);
}

void test_random_prompt_matches_reference(void**) {
  std::mt19937 rng(1234);
  std::vector<int32_t> prompt{1};
  for (int i = 0; i < 60; ++i) prompt.push_back(int32_t(3 + rng() % 509));
  check_against_reference(prompt, 8);
}

void test_greedy_continuation(void**) {
  for (uint32_t format : {KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F16}) {
    for (bool one_call : {true, false}) {
      std::vector<std::vector<float>> logits;
      std::vector<int32_t> gen;
      run_engine({format, 2, 16, one_call}, std::vector<int32_t>(std::begin(kPrompt), std::end(kPrompt)),
                 64, &logits, &gen);
      for (int i = 0; i < 64; ++i) {
        if (gen[i] != kGreedy[i])
          fail_msg("format %u %s: token %d is %d, expected %d", format, one_call ? "one call" : "token by token",
                   i, gen[i], kGreedy[i]);
      }
    }
  }
}

}  // namespace

int main() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_greedy_continuation),
      cmocka_unit_test(test_known_prompt_matches_reference),
      cmocka_unit_test(test_random_prompt_matches_reference),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
