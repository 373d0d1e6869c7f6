/* Helpers shared by the C API tests: the model path, status checks with the
 * error message, opening the test model, and logit comparisons. */
#ifndef KVRT_API_TEST_UTIL_H
#define KVRT_API_TEST_UTIL_H

/* POSIX for mkstemp, unlink and pthreads under -std=c11. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvrt/kvrt.h"

/* Shapes of the test model (stories260K), read from its GGUF metadata. */
#define TM_N_VOCAB 512
#define TM_N_CTX_TRAIN 2048
#define TM_N_EMBD 64
#define TM_N_LAYER 5
#define TM_N_HEAD 8
#define TM_N_HEAD_KV 4
#define TM_HEAD_DIM 8
#define TM_N_FF 172
/* layers x (K and V) x kv heads x head_dim x bytes per element */
#define TM_KV_BYTES_PER_TOKEN_F32 (5u * 2u * 4u * 8u * 4u)
#define TM_KV_BYTES_PER_TOKEN_F16 (5u * 2u * 4u * 8u * 2u)
/* One 16-token block with f16 keys and values. */
#define TM_F16_BLOCK_BYTES (16u * TM_KV_BYTES_PER_TOKEN_F16)

static inline int tu_file_exists(const char* path) {
  FILE* f;
  if (path == NULL || path[0] == '\0') return 0;
  f = fopen(path, "rb");
  if (f == NULL) return 0;
  fclose(f);
  return 1;
}

/* The model file: $KVRT_MODEL, else $KVRT_MODEL_DEFAULT (set by CTest). A
 * missing model is a failure, never a skip: the tests would prove nothing. */
static inline const char* tu_model_path(void) {
  const char* p = getenv("KVRT_MODEL");
  if (p != NULL && p[0] != '\0') {
    /* A model asked for by name is used or reported, never replaced. */
    if (!tu_file_exists(p)) fail_msg("KVRT_MODEL='%s' cannot be opened", p);
    return p;
  }
  p = getenv("KVRT_MODEL_DEFAULT");
  if (tu_file_exists(p)) return p;
  fail_msg("test model not found: set KVRT_MODEL to stories260K.gguf "
           "(KVRT_MODEL='%s', KVRT_MODEL_DEFAULT='%s')",
           getenv("KVRT_MODEL") ? getenv("KVRT_MODEL") : "(unset)",
           getenv("KVRT_MODEL_DEFAULT") ? getenv("KVRT_MODEL_DEFAULT") : "(unset)");
  return NULL;
}

/* Asserts that a call returned the expected error and set a message. */
#define EXPECT_ERR(call, status)                                              \
  do {                                                                        \
    kvrt_status tu_s_ = (call);                                               \
    if (tu_s_ != (status))                                                    \
      fail_msg("%s returned %d (%s), expected %d (%s); last error: '%s'",     \
               #call, (int)tu_s_, kvrt_status_string(tu_s_), (int)(status),   \
               kvrt_status_string(status), kvrt_last_error());                \
    assert_non_null(kvrt_last_error());                                       \
    if (kvrt_last_error()[0] == '\0')                                         \
      fail_msg("%s returned %d without an error message", #call, (int)tu_s_); \
  } while (0)

/* Asserts that a call succeeded, printing the error message if not. */
#define EXPECT_OK(call)                                                       \
  do {                                                                        \
    kvrt_status tu_s_ = (call);                                               \
    if (tu_s_ != KVRT_OK)                                                     \
      fail_msg("%s returned %d (%s): '%s'", #call, (int)tu_s_,                \
               kvrt_status_string(tu_s_), kvrt_last_error());                 \
  } while (0)

/* A runtime with the given budget, block size and thread count. */
static inline kvrt_runtime* tu_runtime(uint64_t budget_bytes, uint32_t block_tokens,
                                uint32_t n_threads) {
  kvrt_runtime_params rp;
  kvrt_runtime* rt = NULL;
  kvrt_runtime_default_params(&rp);
  if (budget_bytes) rp.kv_budget_bytes = budget_bytes;
  if (block_tokens) rp.block_tokens = block_tokens;
  rp.n_threads = n_threads;
  EXPECT_OK(kvrt_runtime_create(&rp, &rt));
  assert_non_null(rt);
  return rt;
}

static inline kvrt_model* tu_model(kvrt_runtime* rt) {
  kvrt_model* m = NULL;
  EXPECT_OK(kvrt_model_load(rt, tu_model_path(), NULL, &m));
  assert_non_null(m);
  return m;
}

static inline kvrt_session* tu_session(kvrt_model* m, uint32_t fmt_k, uint32_t fmt_v,
                                uint32_t n_ctx, uint32_t max_batch) {
  kvrt_session_params sp;
  kvrt_session* s = NULL;
  kvrt_session_default_params(&sp);
  sp.kv_format_k = fmt_k;
  sp.kv_format_v = fmt_v;
  sp.n_ctx = n_ctx;
  if (max_batch) sp.max_batch = max_batch;
  EXPECT_OK(kvrt_session_create(m, &sp, &s));
  assert_non_null(s);
  return s;
}

static inline kvrt_session_stats tu_session_stats(const kvrt_session* s) {
  kvrt_session_stats st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  EXPECT_OK(kvrt_session_get_stats(s, &st));
  return st;
}

static inline kvrt_runtime_stats tu_runtime_stats(const kvrt_runtime* rt) {
  kvrt_runtime_stats st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  EXPECT_OK(kvrt_runtime_get_stats(rt, &st));
  return st;
}

/* A deterministic pseudo-random token sequence that avoids the control
 * tokens 0..2, so that tests can feed many distinct tokens. */
static inline void tu_tokens(int32_t* out, size_t n, uint32_t seed) {
  uint32_t x = seed * 2654435761u + 12345u;
  size_t i;
  for (i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    out[i] = (int32_t)(3u + (x >> 8) % (TM_N_VOCAB - 3u));
  }
}

static inline void tu_assert_finite(const float* v, size_t n) {
  size_t i;
  for (i = 0; i < n; ++i)
    if (!isfinite(v[i])) fail_msg("value %zu is not finite: %g", i, (double)v[i]);
}

static inline void tu_assert_bitwise_equal(const float* a, const float* b, size_t n) {
  size_t i;
  for (i = 0; i < n; ++i)
    if (memcmp(&a[i], &b[i], sizeof(float)) != 0)
      fail_msg("logit %zu differs: %.9g vs %.9g", i, (double)a[i], (double)b[i]);
}

/* |a - b| <= rel * max(1, |b|) for every element. */
static inline void tu_assert_close(const float* a, const float* b, size_t n, double rel) {
  size_t i;
  for (i = 0; i < n; ++i) {
    double scale = fabs((double)b[i]) > 1.0 ? fabs((double)b[i]) : 1.0;
    if (fabs((double)a[i] - (double)b[i]) > rel * scale)
      fail_msg("logit %zu: %.9g vs %.9g (tolerance %g relative)", i, (double)a[i],
               (double)b[i], rel);
  }
}

static inline int32_t tu_argmax(const float* v, size_t n) {
  size_t i, best = 0;
  for (i = 1; i < n; ++i)
    if (v[i] > v[best]) best = i;
  return (int32_t)best;
}

/* ---- byte buffers, files, snapshots, continuations (snapshot tests) ---- */

typedef struct tu_bytes {
  uint8_t* p;
  size_t n, cap;
} tu_bytes;

static inline void tu_bytes_append(tu_bytes* b, const void* d, size_t n) {
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + n) cap *= 2;
    b->p = (uint8_t*)realloc(b->p, cap);
    assert_non_null(b->p);
    b->cap = cap;
  }
  memcpy(b->p + b->n, d, n);
  b->n += n;
}

/* The whole file; fails the test when it cannot be read. */
static inline tu_bytes tu_read_file(const char* path) {
  tu_bytes b = {0};
  uint8_t tmp[65536];
  size_t k;
  FILE* f = fopen(path, "rb");
  if (!f) fail_msg("cannot open %s", path);
  while ((k = fread(tmp, 1, sizeof tmp, f)) > 0) tu_bytes_append(&b, tmp, k);
  fclose(f);
  if (!b.p) b.p = (uint8_t*)calloc(1, 1); /* an empty file is a valid, empty buffer */
  return b;
}

static inline void tu_write_file(const char* path, const void* d, size_t n) {
  FILE* f = fopen(path, "wb");
  if (!f) fail_msg("cannot create %s", path);
  if (n) assert_int_equal(fwrite(d, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}

/* A snapshot of s in a new buffer, through the size query. */
static inline tu_bytes tu_save_buffer(kvrt_session* s, const kvrt_snapshot_params* p) {
  tu_bytes b = {0};
  size_t need = 0, got = 0;
  assert_int_equal(kvrt_session_save_buffer(s, NULL, 0, &need, p), KVRT_OK);
  assert_true(need > 0);
  b.p = (uint8_t*)malloc(need);
  assert_non_null(b.p);
  b.cap = need;
  assert_int_equal(kvrt_session_save_buffer(s, b.p, need, &got, p), KVRT_OK);
  assert_int_equal(got, need);
  b.n = got;
  return b;
}

/* Continues s for n steps from the logits `last` (test-model vocabulary):
 * greedy, or through the session's sampler; records every step's token and
 * logits (n rows of TM_N_VOCAB). */
static inline void tu_run_steps(kvrt_session* s, const float* last, int n, int sample, float* logits,
                                int32_t* toks) {
  int i;
  const float* prev = last;
  for (i = 0; i < n; ++i) {
    int32_t t;
    if (sample)
      assert_int_equal(kvrt_session_sample(s, prev, TM_N_VOCAB, &t), KVRT_OK);
    else
      t = tu_argmax(prev, TM_N_VOCAB);
    toks[i] = t;
    assert_int_equal(kvrt_decode_step(s, &t, 1, logits + (size_t)i * TM_N_VOCAB, TM_N_VOCAB), KVRT_OK);
    prev = logits + (size_t)i * TM_N_VOCAB;
  }
}

#endif /* KVRT_API_TEST_UTIL_H */
