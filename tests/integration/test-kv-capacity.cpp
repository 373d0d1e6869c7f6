// Capacity: for a fixed pool budget, the tokens a session can hold are within
// 3% of budget / (KV bytes per token) for every storage format this build
// supports, and an append past that is refused with the session intact.
#include <cmath>
#include <cstdio>
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

// Fills a session 16 tokens at a time until the pool refuses; returns the
// tokens held.
size_t fill_until_refused(kvrt_model* m, uint32_t fk, uint32_t fv) {
  kvrt_session_params sp;
  kvrt_session_default_params(&sp);
  sp.kv_format_k = fk;
  sp.kv_format_v = fv;
  kvrt_session* s = nullptr;
  assert_int_equal(kvrt_session_create(m, &sp, &s), KVRT_OK);
  std::vector<int32_t> chunk(16);
  size_t n = 0;
  for (;;) {
    for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = int32_t(3 + (n + i) * 7 % 500);
    kvrt_status st = kvrt_decode_step(s, chunk.data(), chunk.size(), nullptr, 0);
    if (st == KVRT_ERR_OUT_OF_MEMORY) break;
    assert_int_equal(st, KVRT_OK);
    n += chunk.size();
  }
  // The refusal left the session as it was and usable.
  kvrt_session_stats stats{};
  stats.struct_size = sizeof stats;
  assert_int_equal(kvrt_session_get_stats(s, &stats), KVRT_OK);
  assert_int_equal(stats.n_tokens, n);
  assert_int_equal(kvrt_session_rewind(s, n - 16), KVRT_OK);
  assert_int_equal(kvrt_decode_step(s, chunk.data(), chunk.size(), nullptr, 0), KVRT_OK);
  kvrt_session_destroy(s);
  return n;
}

// A runtime whose budget should hold about 1000 tokens of this format (not a
// whole number of blocks), so the context does not limit the session first.
void check_format(uint32_t fk, uint32_t fv, int* checked) {
  kvrt_runtime_params rp;
  kvrt_runtime_default_params(&rp);
  rp.n_threads = 1;
  kvrt_runtime* probe = nullptr;
  assert_int_equal(kvrt_runtime_create(&rp, &probe), KVRT_OK);
  kvrt_model* pm = nullptr;
  assert_int_equal(kvrt_model_load(probe, kvrt_test::model_path().c_str(), nullptr, &pm), KVRT_OK);
  uint64_t bpt = 0;
  const kvrt_status st = kvrt_model_kv_bytes_per_token(pm, fk, fv, &bpt);
  kvrt_model_info info{};
  info.struct_size = sizeof info;
  assert_int_equal(kvrt_model_get_info(pm, &info), KVRT_OK);
  kvrt_model_destroy(pm);
  kvrt_runtime_destroy(probe);
  if (st == KVRT_ERR_UNSUPPORTED) return;  // not in this build
  assert_int_equal(st, KVRT_OK);

  const uint64_t budget = bpt * 1000 + bpt / 3;
  rp.kv_budget_bytes = budget;
  kvrt_runtime* rt = nullptr;
  assert_int_equal(kvrt_runtime_create(&rp, &rt), KVRT_OK);
  kvrt_model* m = nullptr;
  assert_int_equal(kvrt_model_load(rt, kvrt_test::model_path().c_str(), nullptr, &m), KVRT_OK);
  const double expected = double(budget) / double(bpt);
  assert_true(expected + 16 < info.n_ctx_train);
  const size_t n = fill_until_refused(m, fk, fv);
  const double ratio = double(n) / expected;
  std::printf("K %u / V %u: %llu bytes per token, %zu tokens fit in %llu bytes (%.4f of budget / bytes per token)\n",
              fk, fv, (unsigned long long)bpt, n, (unsigned long long)budget, ratio);
  assert_true(ratio <= 1.0 + 1e-9);  // never more than the budget
  assert_true(ratio >= 0.97);
  ++*checked;
  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
}

void test_capacity_matches_budget(void**) {
  const uint32_t pairs[][2] = {{KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F32},
                               {KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16},
                               {KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8},
                               {KVRT_KV_FORMAT_Q4, KVRT_KV_FORMAT_Q4},
                               {KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q4}};
  int checked = 0;
  for (const auto& p : pairs) check_format(p[0], p[1], &checked);
  // f32 and f16 at least are always supported.
  assert_true(checked >= 2);
}

}  // namespace

int main() {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_capacity_matches_budget)};
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
