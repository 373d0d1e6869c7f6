// Tests of the token sampler: greedy ties, determinism by seed, top-k,
// top-p, temperature, empirical frequencies against the softmax, config
// validation, NaN rejection, generator state round trip, no allocation.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "engine/sampler.hpp"
#include "util/error.hpp"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

// Counts allocations made through operator new, to check that sample()
// does not allocate.
static std::atomic<long> g_news{0};
void* operator new(size_t n) {
  g_news.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

using kvrt::Sampler;
using kvrt::SamplerConfig;

namespace {

SamplerConfig cfg(float t, uint32_t k, float p, uint64_t seed) {
  SamplerConfig c;
  c.temperature = t;
  c.top_k = k;
  c.top_p = p;
  c.seed = seed;
  return c;
}

template <class F>
std::string expect_error(kvrt_status status, F f) {
  try {
    f();
  } catch (const kvrt::Error& e) {
    if (e.status() != status) fail_msg("status %d, expected %d: %s", e.status(), status, e.what());
    return e.what();
  }
  fail_msg("no error thrown, expected status %d", status);
  return {};
}

std::vector<double> softmax(const std::vector<float>& l, double t) {
  double mx = l[0];
  for (float x : l) mx = std::max(mx, double(x));
  std::vector<double> p(l.size());
  double s = 0;
  for (size_t i = 0; i < l.size(); ++i) s += p[i] = std::exp((l[i] - mx) / t);
  for (double& x : p) x /= s;
  return p;
}

std::vector<double> frequencies(Sampler& s, const std::vector<float>& l, int draws) {
  std::vector<double> f(l.size(), 0.0);
  for (int i = 0; i < draws; ++i) f[s.sample(l.data(), l.size())] += 1.0 / draws;
  return f;
}

void test_greedy_argmax_and_ties(void**) {
  Sampler s(8);
  s.configure(cfg(0.0f, 40, 0.95f, 1));
  std::vector<float> a = {1, 3, 3, 2};
  assert_int_equal(s.sample(a.data(), a.size()), 1);  // lowest id among ties
  std::vector<float> b = {-INFINITY, -5, -INFINITY, -5.5f, -4.9f};
  assert_int_equal(s.sample(b.data(), b.size()), 4);
  std::vector<float> c = {7, 7, 7};
  assert_int_equal(s.sample(c.data(), c.size()), 0);
  std::mt19937 rng(3);
  Sampler big(1000);
  big.configure(cfg(0.0f, 0, 1.0f, 5));
  for (int t = 0; t < 50; ++t) {
    std::vector<float> l(1000);
    for (float& x : l) x = float(int(rng() % 200)) / 10.0f;  // many ties
    size_t best = 0;
    for (size_t i = 1; i < l.size(); ++i)
      if (l[i] > l[best]) best = i;
    assert_int_equal(big.sample(l.data(), l.size()), best);
  }
}

void test_seed_determinism(void**) {
  std::vector<float> l(16);
  for (size_t i = 0; i < l.size(); ++i) l[i] = 0.1f * float(i % 5);
  Sampler a(16), b(16), c(16);
  a.configure(cfg(1.0f, 0, 1.0f, 42));
  b.configure(cfg(1.0f, 0, 1.0f, 42));
  c.configure(cfg(1.0f, 0, 1.0f, 43));
  int same_ab = 0, same_ac = 0;
  for (int i = 0; i < 100; ++i) {
    int32_t x = a.sample(l.data(), l.size());
    int32_t y = b.sample(l.data(), l.size());
    int32_t z = c.sample(l.data(), l.size());
    same_ab += x == y;
    same_ac += x == z;
  }
  assert_int_equal(same_ab, 100);
  assert_true(same_ac < 100);
  // Reconfiguring with the same seed restarts the same sequence.
  Sampler d(16);
  d.configure(cfg(1.0f, 0, 1.0f, 42));
  std::vector<int32_t> first;
  for (int i = 0; i < 20; ++i) first.push_back(d.sample(l.data(), l.size()));
  d.configure(cfg(1.0f, 0, 1.0f, 42));
  for (int i = 0; i < 20; ++i) assert_int_equal(d.sample(l.data(), l.size()), first[i]);
}

void test_top_k_one_is_greedy(void**) {
  std::mt19937 rng(11);
  Sampler s(300), g(300);
  s.configure(cfg(1.5f, 1, 1.0f, 9));
  g.configure(cfg(0.0f, 0, 1.0f, 9));
  for (int t = 0; t < 100; ++t) {
    std::vector<float> l(300);
    for (float& x : l) x = float(int(rng() % 50));
    assert_int_equal(s.sample(l.data(), l.size()), g.sample(l.data(), l.size()));
  }
}

void test_frequencies_match_softmax(void**) {
  std::vector<float> l = {1.0f, 2.0f, 0.5f, -1.0f};
  Sampler s(4);
  s.configure(cfg(1.0f, 0, 1.0f, 2024));
  std::vector<double> f = frequencies(s, l, 20000);
  std::vector<double> p = softmax(l, 1.0);
  for (size_t i = 0; i < 4; ++i)
    if (std::fabs(f[i] - p[i]) > 0.02) fail_msg("token %zu: frequency %.4f, softmax %.4f", i, f[i], p[i]);
  // Temperature 2 flattens the distribution to softmax(l / 2).
  s.configure(cfg(2.0f, 0, 1.0f, 7));
  f = frequencies(s, l, 20000);
  p = softmax(l, 2.0);
  for (size_t i = 0; i < 4; ++i)
    if (std::fabs(f[i] - p[i]) > 0.02) fail_msg("T=2 token %zu: frequency %.4f, softmax %.4f", i, f[i], p[i]);
}

void test_top_k_renormalizes(void**) {
  std::vector<float> l = {1.0f, 2.0f, 0.5f, 1.5f};
  Sampler s(4);
  s.configure(cfg(1.0f, 2, 1.0f, 99));
  std::vector<double> f = frequencies(s, l, 20000);
  assert_true(f[0] == 0.0 && f[2] == 0.0);
  double p1 = 1.0 / (1.0 + std::exp(-0.5));  // e^2 / (e^2 + e^1.5)
  assert_true(std::fabs(f[1] - p1) < 0.02);
  assert_true(std::fabs(f[3] - (1.0 - p1)) < 0.02);
}

void test_top_p(void**) {
  // Probabilities 0.5, 0.3, 0.15, 0.05.
  std::vector<float> l = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  Sampler s(4);
  s.configure(cfg(1.0f, 0, 0.01f, 5));
  for (int i = 0; i < 1000; ++i) assert_int_equal(s.sample(l.data(), l.size()), 0);
  // 0.75: the smallest prefix reaching it is {0, 1}, renormalized to 5/8, 3/8.
  s.configure(cfg(1.0f, 0, 0.75f, 6));
  std::vector<double> f = frequencies(s, l, 20000);
  assert_true(f[2] == 0.0 && f[3] == 0.0);
  assert_true(std::fabs(f[0] - 0.625) < 0.02);
  assert_true(std::fabs(f[1] - 0.375) < 0.02);
  // 0.9: {0, 1, 2}.
  s.configure(cfg(1.0f, 0, 0.9f, 8));
  f = frequencies(s, l, 20000);
  assert_true(f[3] == 0.0);
  assert_true(std::fabs(f[2] - 0.15 / 0.95) < 0.02);
}

void test_temperature_sharpens(void**) {
  std::vector<float> l = {0.5f, 1.0f, 0.0f, 0.8f, 0.2f};
  double prev = 0.0;
  for (float t : {4.0f, 2.0f, 1.0f, 0.5f, 0.25f}) {
    Sampler s(5);
    s.configure(cfg(t, 0, 1.0f, 31));
    double top = frequencies(s, l, 10000)[1];
    if (!(top > prev + 0.02)) fail_msg("T=%g: top frequency %.3f not above %.3f", t, top, prev);
    prev = top;
  }
}

void test_invalid_config_kept(void**) {
  std::vector<float> l = {0.3f, 0.1f, 0.2f, 0.4f, 0.0f};
  Sampler s(5), twin(5);
  SamplerConfig good = cfg(0.7f, 3, 0.9f, 77);
  s.configure(good);
  twin.configure(good);
  s.sample(l.data(), l.size());
  twin.sample(l.data(), l.size());
  struct Bad {
    float t, p;
    const char* field;
  } bad[] = {{-0.1f, 0.5f, "temperature"}, {NAN, 0.5f, "temperature"},
             {INFINITY, 0.5f, "temperature"}, {1.0f, 0.0f, "top_p"},
             {1.0f, 1.5f, "top_p"},          {1.0f, NAN, "top_p"},
             {1.0f, -0.2f, "top_p"}};
  for (const Bad& b : bad) {
    std::string msg = expect_error(KVRT_ERR_INVALID_ARGUMENT, [&] { s.configure(cfg(b.t, 5, b.p, 1)); });
    assert_non_null(strstr(msg.c_str(), b.field));
    assert_true(s.config().temperature == good.temperature);
    assert_int_equal(s.config().top_k, good.top_k);
    assert_true(s.config().top_p == good.top_p);
    assert_int_equal(s.config().seed, good.seed);
  }
  // The generator was not reseeded either: the two still agree.
  for (int i = 0; i < 50; ++i) assert_int_equal(s.sample(l.data(), l.size()), twin.sample(l.data(), l.size()));
  // Edge values that are valid.
  s.configure(cfg(0.0f, 0, 1.0f, 0));
  s.configure(cfg(1e-30f, 0, 1e-7f, 0));
  std::vector<float> z = {0.0f, 1.0f, 0.0f};
  assert_int_equal(s.sample(z.data(), z.size()), 1);  // a tiny T behaves as greedy
}

void test_nan_and_bad_input_rejected(void**) {
  Sampler s(4);
  std::vector<float> l = {0.1f, NAN, 0.3f, 0.2f};
  for (float t : {0.0f, 1.0f}) {
    s.configure(cfg(t, 0, 1.0f, 3));
    std::string msg = expect_error(KVRT_ERR_INVALID_ARGUMENT, [&] { s.sample(l.data(), l.size()); });
    assert_non_null(strstr(msg.c_str(), "NaN"));
  }
  std::vector<float> ok = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f};
  expect_error(KVRT_ERR_INVALID_ARGUMENT, [&] { s.sample(ok.data(), 5); });  // more than n_vocab
  expect_error(KVRT_ERR_INVALID_ARGUMENT, [&] { s.sample(ok.data(), 0); });
  // Infinite logits are legal: +inf wins outright.
  std::vector<float> inf = {0.0f, INFINITY, 3.0f, -INFINITY};
  s.configure(cfg(1.0f, 0, 1.0f, 3));
  for (int i = 0; i < 100; ++i) assert_int_equal(s.sample(inf.data(), inf.size()), 1);
}

void test_rng_state_round_trip(void**) {
  std::vector<float> l(32);
  for (size_t i = 0; i < l.size(); ++i) l[i] = 0.05f * float(i);
  Sampler s(32);
  s.configure(cfg(1.0f, 0, 1.0f, 1234));
  for (int i = 0; i < 17; ++i) s.sample(l.data(), l.size());
  uint64_t saved[4];
  std::memcpy(saved, s.rng_state(), sizeof saved);
  std::vector<int32_t> seq;
  for (int i = 0; i < 100; ++i) seq.push_back(s.sample(l.data(), l.size()));
  Sampler r(32);
  r.configure(s.config());
  r.set_rng_state(saved);
  for (int i = 0; i < 100; ++i) assert_int_equal(r.sample(l.data(), l.size()), seq[i]);
  s.set_rng_state(saved);
  for (int i = 0; i < 100; ++i) assert_int_equal(s.sample(l.data(), l.size()), seq[i]);
  const uint64_t zero[4] = {0, 0, 0, 0};
  expect_error(KVRT_ERR_INVALID_ARGUMENT, [&] { s.set_rng_state(zero); });
}

void test_sample_does_not_allocate(void**) {
  const size_t n = 5000;
  std::vector<float> l(n);
  std::mt19937 rng(1);
  for (float& x : l) x = float(rng() % 1000) / 100.0f;
  Sampler s(n);
  for (uint32_t k : {0u, 40u, 1u}) {
    s.configure(cfg(0.8f, k, 0.95f, 3));
    long before = g_news.load();
    for (int i = 0; i < 20; ++i) s.sample(l.data(), n);
    assert_int_equal(g_news.load(), before);
  }
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_greedy_argmax_and_ties),
      cmocka_unit_test(test_seed_determinism),
      cmocka_unit_test(test_top_k_one_is_greedy),
      cmocka_unit_test(test_frequencies_match_softmax),
      cmocka_unit_test(test_top_k_renormalizes),
      cmocka_unit_test(test_top_p),
      cmocka_unit_test(test_temperature_sharpens),
      cmocka_unit_test(test_invalid_config_kept),
      cmocka_unit_test(test_nan_and_bad_input_rejected),
      cmocka_unit_test(test_rng_state_round_trip),
      cmocka_unit_test(test_sample_does_not_allocate),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
