/* State tests of the C API: refused calls leave sessions unchanged, the KV
 * budget, destroy orders, rewind, batching and thread-count agreement, seeded
 * sampling, reference greedy generation, and sessions on several threads. */
#include "api-test-util.h"

#include <pthread.h>
#include <stdatomic.h>

#define V TM_N_VOCAB

/* Greedy continuation of "Once upon a time" (BOS first) by the test model:
 * the reference output of the original model's own inference program. */
static const int32_t k_prompt_ids[] = {1, 403, 407, 261, 378};
static const int32_t k_reference_ids[64] = {
    432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337,
    410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394,
    261, 370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267, 337, 335, 312, 432,
    398, 312, 286, 267, 414, 270, 333, 415, 426, 13,  438, 310, 439, 419, 357, 336};
static const char k_reference_text[] =
    ", there was a little girl named Lily. She loved to play outside in the park. "
    "One day, she saw a big, red ball. She wanted to play with it, but it was too "
    "high.\nLily's mom said";

static float* alloc_logits(void) {
  float* p = (float*)malloc(V * sizeof(float));
  assert_non_null(p);
  return p;
}

/* The session's compute and attention timers read the same in both. */
static void assert_same_timers(const kvrt_session_stats* a, const kvrt_session_stats* b) {
  assert_true(a->compute_ns == b->compute_ns);
  assert_true(a->attention_ns == b->attention_ns);
}

static void assert_same_state(const kvrt_session* s, const kvrt_session_stats* before,
                              const int32_t* tokens_before) {
  kvrt_session_stats now = tu_session_stats(s);
  int32_t* toks;
  size_t n = 0;
  assert_int_equal(now.n_tokens, before->n_tokens);
  assert_int_equal(now.n_blocks, before->n_blocks);
  assert_true(now.kv_bytes == before->kv_bytes);
  assert_same_timers(&now, before);
  toks = (int32_t*)malloc((before->n_tokens + 1) * sizeof(int32_t));
  assert_non_null(toks);
  EXPECT_OK(kvrt_session_get_tokens(s, toks, before->n_tokens + 1, &n));
  assert_int_equal(n, before->n_tokens);
  if (n > 0) assert_memory_equal(toks, tokens_before, n * sizeof(int32_t));
  free(toks);
}

/* Budget of 2 blocks: 20 tokens fit, 13 more are refused and change
 * nothing; after a rewind to 10 the same 13 fit, and the logits equal those
 * of a fresh session given the same successful calls. */
static void test_budget_refusal_leaves_state(void** state) {
  kvrt_runtime* rt;
  kvrt_model* m;
  kvrt_session* s;
  kvrt_session_stats st;
  kvrt_runtime_stats rst;
  int32_t toks[40];
  float* a = alloc_logits();
  float* b = alloc_logits();
  (void)state;

  tu_tokens(toks, 40, 3);
  rt = tu_runtime(2 * TM_F16_BLOCK_BYTES, 16, 2);
  m = tu_model(rt);
  s = tu_session(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 0, 0);

  EXPECT_OK(kvrt_decode_step(s, toks, 20, a, V));
  st = tu_session_stats(s);
  assert_int_equal(st.n_tokens, 20);
  assert_int_equal(st.n_blocks, 2);
  assert_true(st.kv_bytes == 2 * TM_F16_BLOCK_BYTES);
  rst = tu_runtime_stats(rt);
  assert_true(rst.kv_used_bytes == 2 * TM_F16_BLOCK_BYTES);
  assert_true(rst.n_blocks_used == 2);

  /* 33 tokens need a third block. */
  EXPECT_ERR(kvrt_decode_step(s, toks + 20, 13, b, V), KVRT_ERR_OUT_OF_MEMORY);
  assert_same_state(s, &st, toks);
  rst = tu_runtime_stats(rt);
  assert_true(rst.kv_used_bytes == 2 * TM_F16_BLOCK_BYTES);
  assert_true(rst.n_blocks_used == 2);

  EXPECT_OK(kvrt_session_rewind(s, 10));
  st = tu_session_stats(s);
  assert_int_equal(st.n_tokens, 10);
  assert_int_equal(st.n_blocks, 1);
  assert_true(tu_runtime_stats(rt).kv_used_bytes == TM_F16_BLOCK_BYTES);
  EXPECT_OK(kvrt_decode_step(s, toks + 20, 13, a, V));
  assert_int_equal(tu_session_stats(s).n_tokens, 23);
  assert_int_equal(tu_session_stats(s).n_blocks, 2);

  kvrt_session_destroy(s);
  rst = tu_runtime_stats(rt);
  assert_true(rst.kv_used_bytes == 0);
  assert_true(rst.n_blocks_used == 0);

  /* The same successful calls on a fresh session. */
  s = tu_session(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 0, 0);
  EXPECT_OK(kvrt_decode_step(s, toks, 20, NULL, 0));
  EXPECT_OK(kvrt_session_rewind(s, 10));
  EXPECT_OK(kvrt_decode_step(s, toks + 20, 13, b, V));
  tu_assert_bitwise_equal(a, b, V);
  kvrt_session_destroy(s);
  assert_true(tu_runtime_stats(rt).kv_used_bytes == 0);

  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
  free(a);
  free(b);
}

/* A refused decode (context full, or a bad id in the middle of a batch) leaves
 * the session as it was: the next valid call matches a fresh session. */
static void test_refused_decode_leaves_state(void** state) {
  kvrt_runtime* rt;
  kvrt_model* m;
  kvrt_session* s;
  kvrt_session* ref;
  kvrt_session_stats st;
  int32_t toks[40];
  int32_t batch[4];
  float* a = alloc_logits();
  float* b = alloc_logits();
  (void)state;

  tu_tokens(toks, 40, 4);
  rt = tu_runtime(0, 0, 2);
  m = tu_model(rt);

  /* Context full. */
  s = tu_session(m, KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F32, 32, 0);
  EXPECT_OK(kvrt_decode_step(s, toks, 20, NULL, 0));
  st = tu_session_stats(s);
  EXPECT_ERR(kvrt_decode_step(s, toks + 20, 13, a, V), KVRT_ERR_CONTEXT_FULL);
  assert_same_state(s, &st, toks);
  EXPECT_OK(kvrt_decode_step(s, toks + 20, 12, a, V));
  ref = tu_session(m, KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F32, 32, 0);
  EXPECT_OK(kvrt_decode_step(ref, toks, 20, NULL, 0));
  EXPECT_OK(kvrt_decode_step(ref, toks + 20, 12, b, V));
  tu_assert_bitwise_equal(a, b, V);
  kvrt_session_destroy(s);
  kvrt_session_destroy(ref);

  /* An id out of range in the middle of a batch. */
  s = tu_session(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 0, 0);
  EXPECT_OK(kvrt_decode_step(s, toks, 10, NULL, 0));
  st = tu_session_stats(s);
  batch[0] = toks[10];
  batch[1] = toks[11];
  batch[2] = V;
  batch[3] = toks[12];
  EXPECT_ERR(kvrt_decode_step(s, batch, 4, a, V), KVRT_ERR_OUT_OF_RANGE);
  assert_same_state(s, &st, toks);
  batch[2] = -1;
  EXPECT_ERR(kvrt_decode_step(s, batch, 4, a, V), KVRT_ERR_OUT_OF_RANGE);
  assert_same_state(s, &st, toks);
  /* Also a too-small logits buffer. */
  EXPECT_ERR(kvrt_decode_step(s, toks + 10, 3, a, V - 1), KVRT_ERR_BUFFER_TOO_SMALL);
  assert_same_state(s, &st, toks);
  EXPECT_OK(kvrt_decode_step(s, toks + 10, 3, a, V));
  ref = tu_session(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 0, 0);
  EXPECT_OK(kvrt_decode_step(ref, toks, 10, NULL, 0));
  EXPECT_OK(kvrt_decode_step(ref, toks + 10, 3, b, V));
  tu_assert_bitwise_equal(a, b, V);
  kvrt_session_destroy(s);
  kvrt_session_destroy(ref);

  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
  free(a);
  free(b);
}

/* Objects may be destroyed in any order; a session keeps its model and
 * runtime alive and stays usable. LeakSanitizer checks that all is freed. */
static void test_destroy_orders(void** state) {
  static const int orders[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2},
                                   {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
  int32_t toks[8];
  float* a = alloc_logits();
  float* b = alloc_logits();
  int o, i;
  (void)state;
  tu_tokens(toks, 8, 5);

  for (o = 0; o < 6; ++o) {
    kvrt_runtime* rt = tu_runtime(0, 0, 1);
    kvrt_model* m = tu_model(rt);
    kvrt_session* s = tu_session(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 0, 0);
    EXPECT_OK(kvrt_decode_step(s, toks, 4, a, V));
    for (i = 0; i < 3; ++i) {
      switch (orders[o][i]) {
        case 0: kvrt_runtime_destroy(rt); rt = NULL; break;
        case 1: kvrt_model_destroy(m); m = NULL; break;
        default: kvrt_session_destroy(s); s = NULL; break;
      }
      /* What remains still works. */
      if (s != NULL) {
        EXPECT_OK(kvrt_decode_step(s, toks + 4 + i, 1, b, V));
        tu_assert_finite(b, V);
      }
      if (m != NULL) {
        size_t n = 0;
        EXPECT_OK(kvrt_tokenize(m, "Once", 4, 0, NULL, 0, &n));
        assert_int_equal(n, 1);
      }
      if (rt != NULL) (void)tu_runtime_stats(rt);
    }
  }
  free(a);
  free(b);
}

/* Decoding after a rewind repeats the first decode bit for bit, across a
 * block boundary. */
static void test_rewind_redecode_bitwise(void** state) {
  kvrt_runtime* rt;
  kvrt_model* m;
  kvrt_session* s;
  int32_t toks[40];
  float* first;
  float* again = alloc_logits();
  int fmt, i;
  (void)state;

  tu_tokens(toks, 40, 6);
  first = (float*)malloc(16 * V * sizeof(float));
  assert_non_null(first);
  rt = tu_runtime(0, 16, 2);
  m = tu_model(rt);
  for (fmt = KVRT_KV_FORMAT_F32; fmt <= KVRT_KV_FORMAT_F16; ++fmt) {
    s = tu_session(m, (uint32_t)fmt, (uint32_t)fmt, 0, 0);
    EXPECT_OK(kvrt_decode_step(s, toks, 20, NULL, 0));
    for (i = 0; i < 16; ++i) EXPECT_OK(kvrt_decode_step(s, toks + 20 + i, 1, first + i * V, V));
    assert_int_equal(tu_session_stats(s).n_blocks, 3);

    /* Back to 20 tokens: the third block returns to the pool. */
    EXPECT_OK(kvrt_session_rewind(s, 20));
    assert_int_equal(tu_session_stats(s).n_tokens, 20);
    assert_int_equal(tu_session_stats(s).n_blocks, 2);
    for (i = 0; i < 16; ++i) {
      EXPECT_OK(kvrt_decode_step(s, toks + 20 + i, 1, again, V));
      tu_assert_bitwise_equal(again, first + i * V, V);
    }

    /* Back to nothing, and the whole sequence again. */
    EXPECT_OK(kvrt_session_rewind(s, 0));
    assert_int_equal(tu_session_stats(s).n_blocks, 0);
    assert_true(tu_session_stats(s).kv_bytes == 0);
    EXPECT_OK(kvrt_decode_step(s, toks, 20, NULL, 0));
    for (i = 0; i < 16; ++i) {
      EXPECT_OK(kvrt_decode_step(s, toks + 20 + i, 1, again, V));
      tu_assert_bitwise_equal(again, first + i * V, V);
    }
    kvrt_session_destroy(s);
  }
  assert_true(tu_runtime_stats(rt).kv_used_bytes == 0);
  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
  free(first);
  free(again);
}

/* Prefill in one call, in batches of 8, and token by token agree. */
static void test_prefill_matches_steps(void** state) {
  kvrt_runtime* rt;
  kvrt_model* m;
  kvrt_session* s;
  int32_t toks[37];
  float* whole = alloc_logits();
  float* batched = alloc_logits();
  float* steps = alloc_logits();
  float* other = alloc_logits();
  int i;
  (void)state;

  tu_tokens(toks, 37, 7);
  toks[0] = 1;
  rt = tu_runtime(0, 0, 2);
  m = tu_model(rt);

  s = tu_session(m, KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F32, 0, 64);
  EXPECT_OK(kvrt_decode_step(s, toks, 37, whole, V));
  kvrt_session_destroy(s);

  s = tu_session(m, KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F32, 0, 8);
  EXPECT_OK(kvrt_decode_step(s, toks, 37, batched, V));
  kvrt_session_destroy(s);

  s = tu_session(m, KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F32, 0, 0);
  for (i = 0; i < 37; ++i) EXPECT_OK(kvrt_decode_step(s, toks + i, 1, steps, V));
  kvrt_session_destroy(s);

  tu_assert_finite(whole, V);
  tu_assert_close(whole, steps, V, 1e-4);
  tu_assert_close(batched, steps, V, 1e-4);

  /* A different last token gives different logits (the comparison above is
   * not vacuous). */
  s = tu_session(m, KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F32, 0, 0);
  toks[36] = toks[36] == 403 ? 404 : 403;
  EXPECT_OK(kvrt_decode_step(s, toks, 37, other, V));
  kvrt_session_destroy(s);
  assert_true(memcmp(other, whole, V * sizeof(float)) != 0);

  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
  free(whole);
  free(batched);
  free(steps);
  free(other);
}

static void logits_with_threads(uint32_t n_threads, const int32_t* toks, size_t n, float* out) {
  kvrt_runtime* rt = tu_runtime(0, 0, n_threads);
  kvrt_model* m = tu_model(rt);
  kvrt_session* s = tu_session(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 0, 0);
  assert_int_equal(tu_runtime_stats(rt).n_threads, n_threads);
  EXPECT_OK(kvrt_decode_step(s, toks, n - 1, NULL, 0));
  EXPECT_OK(kvrt_decode_step(s, toks + n - 1, 1, out, V));
  kvrt_session_destroy(s);
  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
}

static void test_threads_agree(void** state) {
  int32_t toks[50];
  float* one = alloc_logits();
  float* two = alloc_logits();
  (void)state;
  tu_tokens(toks, 50, 8);
  logits_with_threads(1, toks, 50, one);
  logits_with_threads(2, toks, 50, two);
  tu_assert_close(two, one, V, 1e-4);
  free(one);
  free(two);
}

/* Generation with the session's sampler: decode, sample, feed back. */
static void generate(kvrt_session* s, const int32_t* prompt, size_t n_prompt, size_t n_gen,
                     int32_t* out) {
  float* logits = alloc_logits();
  size_t i;
  EXPECT_OK(kvrt_decode_step(s, prompt, n_prompt, logits, V));
  for (i = 0; i < n_gen; ++i) {
    EXPECT_OK(kvrt_session_sample(s, logits, V, &out[i]));
    assert_true(out[i] >= 0 && out[i] < V);
    EXPECT_OK(kvrt_decode_step(s, &out[i], 1, logits, V));
  }
  free(logits);
}

static void test_sampler_seeded(void** state) {
  kvrt_runtime* rt;
  kvrt_model* m;
  kvrt_session* s;
  kvrt_sampler_params sp;
  int32_t a[32], b[32], c[32];
  float flat[V];
  int counts[V];
  int32_t tok;
  int i;
  (void)state;

  rt = tu_runtime(0, 0, 2);
  m = tu_model(rt);
  kvrt_sampler_default_params(&sp);
  sp.temperature = 1.0f;
  sp.top_k = 0;
  sp.top_p = 1.0f;

  sp.seed = 1234;
  s = tu_session(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 0, 0);
  EXPECT_OK(kvrt_session_set_sampler(s, &sp));
  generate(s, k_prompt_ids, 5, 32, a);
  kvrt_session_destroy(s);

  s = tu_session(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 0, 0);
  EXPECT_OK(kvrt_session_set_sampler(s, &sp));
  generate(s, k_prompt_ids, 5, 32, b);
  assert_memory_equal(a, b, sizeof a);

  /* Reseeding through set_sampler on a used session starts over. */
  EXPECT_OK(kvrt_session_rewind(s, 0));
  EXPECT_OK(kvrt_session_set_sampler(s, &sp));
  generate(s, k_prompt_ids, 5, 32, b);
  assert_memory_equal(a, b, sizeof a);

  /* Another seed: with 32 draws at temperature 1 the runs differ. */
  EXPECT_OK(kvrt_session_rewind(s, 0));
  sp.seed = 98765;
  EXPECT_OK(kvrt_session_set_sampler(s, &sp));
  generate(s, k_prompt_ids, 5, 32, c);
  assert_true(memcmp(a, c, sizeof a) != 0);

  /* Two equally likely tokens and the rest negligible: both come up about
   * half the time, and nothing else does. */
  for (i = 0; i < V; ++i) flat[i] = -100.0f;
  flat[7] = 0.0f;
  flat[300] = 0.0f;
  memset(counts, 0, sizeof counts);
  sp.seed = 42;
  EXPECT_OK(kvrt_session_set_sampler(s, &sp));
  for (i = 0; i < 2000; ++i) {
    EXPECT_OK(kvrt_session_sample(s, flat, V, &tok));
    assert_true(tok >= 0 && tok < V);
    counts[tok]++;
  }
  assert_int_equal(counts[7] + counts[300], 2000);
  assert_in_range(counts[7], 850, 1150);

  /* Greedy: the highest logit, the lowest id on ties; and top_k = 1 at
   * temperature 1 is greedy too. */
  sp.temperature = 0.0f;
  EXPECT_OK(kvrt_session_set_sampler(s, &sp));
  for (i = 0; i < 10; ++i) {
    EXPECT_OK(kvrt_session_sample(s, flat, V, &tok));
    assert_int_equal(tok, 7);
  }
  flat[300] = 0.5f;
  sp.temperature = 1.0f;
  sp.top_k = 1;
  EXPECT_OK(kvrt_session_set_sampler(s, &sp));
  for (i = 0; i < 10; ++i) {
    EXPECT_OK(kvrt_session_sample(s, flat, V, &tok));
    assert_int_equal(tok, 300);
  }
  /* A refused setting keeps the previous sampler (top_k = 1 here). */
  sp.top_p = 2.0f;
  EXPECT_ERR(kvrt_session_set_sampler(s, &sp), KVRT_ERR_INVALID_ARGUMENT);
  flat[7] = 0.4f;
  for (i = 0; i < 10; ++i) {
    EXPECT_OK(kvrt_session_sample(s, flat, V, &tok));
    assert_int_equal(tok, 300);
  }
  /* The logits are not modified. */
  assert_true(flat[300] == 0.5f && flat[7] == 0.4f && flat[0] == -100.0f);

  kvrt_session_destroy(s);
  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
}

static void greedy_reference(uint32_t fmt) {
  kvrt_runtime* rt;
  kvrt_model* m;
  kvrt_session* s;
  kvrt_sampler_params sp;
  int32_t prompt[8];
  int32_t out[64];
  size_t n = 0, len = 0, i;
  char text[1024];
  char streamed[1024];
  size_t streamed_len = 0;

  rt = tu_runtime(0, 0, 2);
  m = tu_model(rt);
  EXPECT_OK(kvrt_tokenize(m, "Once upon a time", 16, KVRT_TOKENIZE_ADD_BOS, prompt, 8, &n));
  assert_int_equal(n, 5);
  assert_memory_equal(prompt, k_prompt_ids, sizeof k_prompt_ids);

  s = tu_session(m, fmt, fmt, 0, 0);
  kvrt_sampler_default_params(&sp);
  sp.temperature = 0.0f;
  EXPECT_OK(kvrt_session_set_sampler(s, &sp));
  generate(s, prompt, n, 64, out);
  for (i = 0; i < 64; ++i)
    if (out[i] != k_reference_ids[i])
      fail_msg("format %u: token %zu is %d, expected %d", fmt, i, out[i], k_reference_ids[i]);

  EXPECT_OK(kvrt_detokenize(m, out, 64, text, sizeof text, &len));
  assert_int_equal(len, strlen(k_reference_text));
  assert_string_equal(text, k_reference_text);

  /* Streaming the pieces gives the same text. */
  for (i = 0; i < 64; ++i) {
    size_t piece = 0;
    EXPECT_OK(kvrt_token_to_piece(m, out[i], streamed + streamed_len,
                                  sizeof streamed - 1 - streamed_len, &piece));
    streamed_len += piece;
  }
  streamed[streamed_len] = '\0';
  assert_string_equal(streamed, k_reference_text);

  kvrt_session_destroy(s);
  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
}

static void test_greedy_reference_f32(void** state) {
  (void)state;
  greedy_reference(KVRT_KV_FORMAT_F32);
}

static void test_greedy_reference_f16(void** state) {
  (void)state;
  greedy_reference(KVRT_KV_FORMAT_F16);
}

/* Two sessions of one model decoding at once on two threads. */
typedef struct worker {
  kvrt_model* m;
  uint32_t seed;
  int32_t toks[48];
  float logits[V];
  kvrt_status status;
} worker;

static void run_worker(worker* w) {
  kvrt_session* s = NULL;
  size_t i;
  w->status = kvrt_session_create(w->m, NULL, &s);
  if (w->status != KVRT_OK) return;
  w->status = kvrt_decode_step(s, w->toks, 16, NULL, 0);
  for (i = 16; i < 48 && w->status == KVRT_OK; ++i)
    w->status = kvrt_decode_step(s, &w->toks[i], 1, w->logits, V);
  kvrt_session_destroy(s);
}

static void* worker_main(void* arg) {
  run_worker((worker*)arg);
  return NULL;
}

static void test_concurrent_sessions(void** state) {
  kvrt_runtime* rt;
  kvrt_model* m;
  worker* seq;
  worker* par;
  pthread_t th[2];
  int i, round;
  (void)state;

  seq = (worker*)calloc(2, sizeof *seq);
  par = (worker*)calloc(2, sizeof *par);
  assert_non_null(seq);
  assert_non_null(par);
  rt = tu_runtime(0, 0, 2);
  m = tu_model(rt);
  for (i = 0; i < 2; ++i) {
    seq[i].m = m;
    tu_tokens(seq[i].toks, 48, 20u + (uint32_t)i);
    run_worker(&seq[i]);
    assert_int_equal(seq[i].status, KVRT_OK);
  }
  assert_true(memcmp(seq[0].logits, seq[1].logits, sizeof seq[0].logits) != 0);
  for (round = 0; round < 3; ++round) {
    for (i = 0; i < 2; ++i) {
      memset(&par[i], 0, sizeof par[i]);
      par[i].m = m;
      memcpy(par[i].toks, seq[i].toks, sizeof par[i].toks);
      assert_int_equal(pthread_create(&th[i], NULL, worker_main, &par[i]), 0);
    }
    for (i = 0; i < 2; ++i) assert_int_equal(pthread_join(th[i], NULL), 0);
    for (i = 0; i < 2; ++i) {
      if (par[i].status != KVRT_OK)
        fail_msg("thread %d: status %d", i, (int)par[i].status);
      tu_assert_bitwise_equal(par[i].logits, seq[i].logits, V);
    }
  }
  assert_true(tu_runtime_stats(rt).kv_used_bytes == 0);
  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
  free(seq);
  free(par);
}

/* request_abort from another thread while decodes run: accepted, and a
 * decode either completes or stops with the session unchanged. */
typedef struct aborter {
  kvrt_session* s;
  atomic_int stop;
  int calls;
  kvrt_status worst;
} aborter;

static void* aborter_main(void* arg) {
  aborter* a = (aborter*)arg;
  while (!atomic_load(&a->stop)) {
    kvrt_status st = kvrt_session_request_abort(a->s);
    if (st != KVRT_OK) a->worst = st;
    a->calls++;
  }
  return NULL;
}

static void test_abort_from_other_thread(void** state) {
  kvrt_runtime* rt;
  kvrt_model* m;
  kvrt_session* s;
  kvrt_session* ref;
  aborter ab;
  pthread_t th;
  int32_t toks[300];
  float* a = alloc_logits();
  float* b = alloc_logits();
  int round, n_aborted = 0, n_ok = 0;
  (void)state;

  tu_tokens(toks, 300, 30);
  rt = tu_runtime(0, 0, 2);
  m = tu_model(rt);
  s = tu_session(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 0, 0);
  EXPECT_OK(kvrt_decode_step(s, toks, 10, NULL, 0));

  memset(&ab, 0, sizeof ab);
  atomic_init(&ab.stop, 0);
  ab.s = s;
  ab.worst = KVRT_OK;
  assert_int_equal(pthread_create(&th, NULL, aborter_main, &ab), 0);
  for (round = 0; round < 20; ++round) {
    const kvrt_session_stats before = tu_session_stats(s);
    kvrt_status st = kvrt_decode_step(s, toks + 10, 256, a, V);
    if (st == KVRT_OK) {
      ++n_ok;
      assert_int_equal(tu_session_stats(s).n_tokens, 266);
      EXPECT_OK(kvrt_session_rewind(s, 10));
    } else {
      /* An aborted call adds nothing to the timers either. */
      kvrt_session_stats after = tu_session_stats(s);
      assert_same_timers(&after, &before);
      if (st != KVRT_ERR_ABORTED)
        fail_msg("decode under abort requests: %d (%s): %s", (int)st, kvrt_status_string(st),
                 kvrt_last_error());
      ++n_aborted;
      assert_int_equal(tu_session_stats(s).n_tokens, 10);
    }
  }
  atomic_store(&ab.stop, 1);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_int_equal(ab.worst, KVRT_OK);
  assert_true(ab.calls > 0);
  print_message("abort test: %d aborted, %d completed, %d requests\n", n_aborted, n_ok, ab.calls);

  /* Whatever happened, the session is intact. */
  assert_int_equal(tu_session_stats(s).n_tokens, 10);
  EXPECT_OK(kvrt_decode_step(s, toks + 10, 5, a, V));
  ref = tu_session(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 0, 0);
  EXPECT_OK(kvrt_decode_step(ref, toks, 10, NULL, 0));
  EXPECT_OK(kvrt_decode_step(ref, toks + 10, 5, b, V));
  tu_assert_bitwise_equal(a, b, V);

  kvrt_session_destroy(ref);
  kvrt_session_destroy(s);
  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
  free(a);
  free(b);
}

/* compute_ns / attention_ns: zero on a new session, grown by every
 * successful decode (attention a part of it), untouched by rewind and
 * sampling, and carried across suspend and resume. */
static void test_timers(void** state) {
  kvrt_runtime* rt;
  kvrt_model* m;
  kvrt_session* s;
  kvrt_session_stats st0, st1, st2;
  int32_t toks[64];
  int32_t next;
  float* a = alloc_logits();
  (void)state;

  tu_tokens(toks, 64, 7);
  rt = tu_runtime(0, 0, 2);
  m = tu_model(rt);
  s = tu_session(m, KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8, 0, 0);
  st0 = tu_session_stats(s);
  assert_true(st0.compute_ns == 0 && st0.attention_ns == 0);

  EXPECT_OK(kvrt_decode_step(s, toks, 40, a, V));
  st1 = tu_session_stats(s);
  assert_true(st1.attention_ns > 0);
  assert_true(st1.compute_ns > st1.attention_ns);

  EXPECT_OK(kvrt_decode_step(s, toks + 40, 1, a, V));
  st2 = tu_session_stats(s);
  assert_true(st2.attention_ns > st1.attention_ns);
  assert_true(st2.compute_ns > st1.compute_ns);
  assert_true(st2.compute_ns - st1.compute_ns > st2.attention_ns - st1.attention_ns);

  EXPECT_OK(kvrt_session_rewind(s, 20));
  EXPECT_OK(kvrt_session_sample(s, a, V, &next));
  st1 = tu_session_stats(s);
  assert_same_timers(&st1, &st2);

  EXPECT_OK(kvrt_session_suspend(s, NULL));
  st1 = tu_session_stats(s);
  assert_int_equal(st1.suspended, 1);
  assert_same_timers(&st1, &st2);
  EXPECT_OK(kvrt_session_resume(s));
  st1 = tu_session_stats(s);
  assert_same_timers(&st1, &st2);
  EXPECT_OK(kvrt_decode_step(s, toks + 20, 1, a, V));
  st1 = tu_session_stats(s);
  assert_true(st1.attention_ns > st2.attention_ns && st1.compute_ns > st2.compute_ns);

  kvrt_session_destroy(s);
  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
  free(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_budget_refusal_leaves_state),
      cmocka_unit_test(test_refused_decode_leaves_state),
      cmocka_unit_test(test_destroy_orders),
      cmocka_unit_test(test_rewind_redecode_bitwise),
      cmocka_unit_test(test_prefill_matches_steps),
      cmocka_unit_test(test_threads_agree),
      cmocka_unit_test(test_sampler_seeded),
      cmocka_unit_test(test_greedy_reference_f32),
      cmocka_unit_test(test_greedy_reference_f16),
      cmocka_unit_test(test_concurrent_sessions),
      cmocka_unit_test(test_abort_from_other_thread),
      cmocka_unit_test(test_timers),
  };
  return cmocka_run_group_tests_name("api-state", tests, NULL, NULL);
}
