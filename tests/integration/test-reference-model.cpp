// Checks the scalar reference forward pass itself: greedy decoding of the
// test model matches ids produced by an independent implementation, reset
// reproduces the same logits, and its f16 rounding follows IEEE binary16.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "integration/known-answers.hpp"
#include "integration/reference-forward.hpp"
#include "model/model.hpp"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

namespace {

using kvrt_test::kGreedy;
using kvrt_test::kPrompt;

std::unique_ptr<kvrt::Model> g_model;

int setup(void**) {
  const std::string path = kvrt_test::model_path();
  try {
    g_model = kvrt::Model::load(path);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cannot load the test model '%s' (set KVRT_MODEL): %s\n", path.c_str(),
                 e.what());
    return -1;
  }
  return 0;
}

int teardown(void**) {
  g_model.reset();
  return 0;
}

int32_t argmax(const std::vector<float>& v) {
  size_t best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[best]) best = i;
  return int32_t(best);
}

std::vector<int32_t> greedy(kvrt_test::ReferenceModel& ref, int n, std::vector<std::vector<float>>* logits) {
  std::vector<float> l;
  for (int32_t t : kPrompt) l = ref.step(t);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    if (logits) logits->push_back(l);
    int32_t t = argmax(l);
    out.push_back(t);
    l = ref.step(t);
  }
  return out;
}

void test_greedy_matches_independent_ids(void**) {
  kvrt_test::ReferenceModel ref(*g_model);
  std::vector<int32_t> got = greedy(ref, 64, nullptr);
  for (int i = 0; i < 64; ++i)
    if (got[i] != kGreedy[i]) fail_msg("greedy id %d: reference %d, expected %d", i, got[i], kGreedy[i]);
  assert_int_equal(ref.n_pos(), 5 + 64);
}

void test_reset_reproduces(void**) {
  kvrt_test::ReferenceModel ref(*g_model);
  std::vector<std::vector<float>> a, b;
  greedy(ref, 8, &a);
  ref.reset();
  assert_int_equal(ref.n_pos(), 0);
  greedy(ref, 8, &b);
  assert_true(a == b);
  assert_int_equal(a[0].size(), g_model->hparams().n_vocab);
}

// An f16 cache changes the logits a little, not the greedy choice here.
void test_f16_cache_close(void**) {
  kvrt_test::ReferenceModel r32(*g_model), r16(*g_model, true);
  std::vector<std::vector<float>> a, b;
  std::vector<int32_t> ga = greedy(r32, 16, &a);
  std::vector<int32_t> gb = greedy(r16, 16, &b);
  double worst = 0, maxabs = 0;
  for (size_t s = 0; s < a.size(); ++s)
    for (size_t i = 0; i < a[s].size(); ++i) {
      worst = std::fmax(worst, std::fabs(double(a[s][i]) - b[s][i]));
      maxabs = std::fmax(maxabs, std::fabs(double(a[s][i])));
    }
  std::printf("f16 cache: largest logit difference %.3g (largest logit %.3g)\n", worst, maxabs);
  assert_true(worst > 0.0);             // the rounding is applied
  assert_true(worst < 1e-2 * maxabs);   // and small
  assert_true(ga == gb);
}

void test_half_conversions(void**) {
  using kvrt_test::ref_half_to_double;
  using kvrt_test::ref_round_to_half;
  assert_true(ref_half_to_double(0x3c00) == 1.0);
  assert_true(ref_half_to_double(0xc000) == -2.0);
  assert_true(ref_half_to_double(0x7bff) == 65504.0);
  assert_true(ref_half_to_double(0x0001) == std::ldexp(1.0, -24));
  assert_true(ref_half_to_double(0x0400) == std::ldexp(1.0, -14));
  assert_true(std::isinf(ref_half_to_double(0x7c00)));
  assert_true(ref_round_to_half(1.0) == 1.0);
  assert_true(ref_round_to_half(1.0 + std::ldexp(1.0, -11)) == 1.0);  // tie to even
  assert_true(ref_round_to_half(1.0 + 3 * std::ldexp(1.0, -11)) == 1.0 + std::ldexp(1.0, -9));
  assert_true(ref_round_to_half(-0.1) == -ref_half_to_double(0x2e66));
  assert_true(ref_round_to_half(65504.0 + 15.0) == 65504.0);
  assert_true(std::isinf(ref_round_to_half(65520.0)));
  assert_true(ref_round_to_half(std::ldexp(1.0, -25)) == 0.0);
  assert_true(ref_round_to_half(3 * std::ldexp(1.0, -25)) == std::ldexp(1.0, -23));
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_half_conversions),
      cmocka_unit_test(test_greedy_matches_independent_ids),
      cmocka_unit_test(test_reset_reproduces),
      cmocka_unit_test(test_f16_cache_close),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
