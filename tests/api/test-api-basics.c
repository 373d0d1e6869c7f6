/* Basic C API tests: versions, build info, status strings, the thread-local
 * error message, parameter defaults, and one model/session lifecycle. */
#include "api-test-util.h"

#include <pthread.h>

static void test_version(void** state) {
  char expected[64];
  (void)state;
  snprintf(expected, sizeof expected, "%d.%d.%d", KVRT_VERSION_MAJOR,
           KVRT_VERSION_MINOR, KVRT_VERSION_PATCH);
  assert_non_null(kvrt_version());
  assert_string_equal(kvrt_version(), expected);
  assert_int_equal(kvrt_version_number(), KVRT_VERSION_NUMBER);
  assert_int_equal(KVRT_VERSION_NUMBER, KVRT_VERSION_MAJOR * 10000 +
                                            KVRT_VERSION_MINOR * 100 +
                                            KVRT_VERSION_PATCH);
  /* The same static text on every call. */
  assert_ptr_equal(kvrt_version(), kvrt_version());
}

static void test_build_info(void** state) {
  const char* info = kvrt_build_info();
  (void)state;
  assert_non_null(info);
  assert_true(strlen(info) > 0);
}

static const kvrt_status k_all_statuses[] = {
    KVRT_OK,
    KVRT_ERR_INVALID_ARGUMENT,
    KVRT_ERR_STRUCT_SIZE,
    KVRT_ERR_OUT_OF_RANGE,
    KVRT_ERR_CONTEXT_FULL,
    KVRT_ERR_BUFFER_TOO_SMALL,
    KVRT_ERR_ABORTED,
    KVRT_ERR_NOT_FOUND,
    KVRT_ERR_OUT_OF_MEMORY,
    KVRT_ERR_IO,
    KVRT_ERR_CORRUPT,
    KVRT_ERR_UNSUPPORTED,
    KVRT_ERR_MODEL_MISMATCH,
    KVRT_ERR_VERSION,
    KVRT_ERR_NO_DEVICE,
    KVRT_ERR_DEVICE,
    KVRT_ERR_INTERNAL,
};
#define N_STATUSES (sizeof k_all_statuses / sizeof k_all_statuses[0])

static void test_status_values_are_stable(void** state) {
  (void)state;
  /* The numbers are ABI: they may never change. */
  assert_int_equal(KVRT_OK, 0);
  assert_int_equal(KVRT_ERR_INVALID_ARGUMENT, 100);
  assert_int_equal(KVRT_ERR_STRUCT_SIZE, 101);
  assert_int_equal(KVRT_ERR_OUT_OF_RANGE, 102);
  assert_int_equal(KVRT_ERR_CONTEXT_FULL, 103);
  assert_int_equal(KVRT_ERR_BUFFER_TOO_SMALL, 104);
  assert_int_equal(KVRT_ERR_ABORTED, 105);
  assert_int_equal(KVRT_ERR_NOT_FOUND, 106);
  assert_int_equal(KVRT_ERR_OUT_OF_MEMORY, 200);
  assert_int_equal(KVRT_ERR_IO, 201);
  assert_int_equal(KVRT_ERR_CORRUPT, 300);
  assert_int_equal(KVRT_ERR_UNSUPPORTED, 301);
  assert_int_equal(KVRT_ERR_MODEL_MISMATCH, 302);
  assert_int_equal(KVRT_ERR_VERSION, 303);
  assert_int_equal(KVRT_ERR_NO_DEVICE, 400);
  assert_int_equal(KVRT_ERR_DEVICE, 401);
  assert_int_equal(KVRT_ERR_INTERNAL, 900);
  assert_int_equal(KVRT_KV_FORMAT_F32, 0);
  assert_int_equal(KVRT_KV_FORMAT_F16, 1);
  assert_int_equal(KVRT_KV_FORMAT_BF16, 2);
  assert_int_equal(KVRT_KV_FORMAT_Q8, 3);
  assert_int_equal(KVRT_KV_FORMAT_Q4, 4);
  assert_int_equal(KVRT_KV_FORMAT_COUNT, 5);
}

static void test_status_strings(void** state) {
  size_t i, j;
  const char* unknown;
  (void)state;
  for (i = 0; i < N_STATUSES; ++i) {
    const char* s = kvrt_status_string(k_all_statuses[i]);
    assert_non_null(s);
    assert_true(strlen(s) > 0);
    /* Each status has its own text. */
    for (j = 0; j < i; ++j)
      if (strcmp(s, kvrt_status_string(k_all_statuses[j])) == 0)
        fail_msg("statuses %d and %d share the text '%s'", (int)k_all_statuses[i],
                 (int)k_all_statuses[j], s);
  }
  /* Unknown values still give text, and not the text of a real status. */
  {
    const int unknown_values[] = {1, 99, 107, 199, 299, 999, 12345, -1};
    for (i = 0; i < sizeof unknown_values / sizeof unknown_values[0]; ++i) {
      unknown = kvrt_status_string((kvrt_status)unknown_values[i]);
      assert_non_null(unknown);
      assert_true(strlen(unknown) > 0);
      for (j = 0; j < N_STATUSES; ++j)
        if (strcmp(unknown, kvrt_status_string(k_all_statuses[j])) == 0)
          fail_msg("unknown status %d reads as status %d ('%s')", unknown_values[i],
                   (int)k_all_statuses[j], unknown);
    }
  }
}

static void* read_last_error(void* arg) {
  const char* e = kvrt_last_error();
  char* out = (char*)arg;
  if (e == NULL) {
    strcpy(out, "<NULL>");
  } else {
    strncpy(out, e, 255);
    out[255] = '\0';
  }
  return NULL;
}

static void test_last_error_fresh_thread(void** state) {
  char seen[256];
  pthread_t th;
  kvrt_runtime* rt = (kvrt_runtime*)0x1;
  (void)state;
  assert_non_null(kvrt_last_error());

  /* An error on this thread... */
  EXPECT_ERR(kvrt_runtime_create(NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  (void)rt;
  assert_true(strlen(kvrt_last_error()) > 0);

  /* ...is not seen by a new thread, which starts with "". */
  memset(seen, 'x', sizeof seen);
  assert_int_equal(pthread_create(&th, NULL, read_last_error, seen), 0);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_string_equal(seen, "");

  /* And this thread's message survives the other thread. */
  assert_true(strlen(kvrt_last_error()) > 0);
}

static void test_default_params(void** state) {
  kvrt_runtime_params rp;
  kvrt_model_params mp;
  kvrt_session_params sp;
  kvrt_sampler_params smp;
  (void)state;

  /* Garbage first, so that every field must be written. */
  memset(&rp, 0xA5, sizeof rp);
  memset(&mp, 0xA5, sizeof mp);
  memset(&sp, 0xA5, sizeof sp);
  memset(&smp, 0xA5, sizeof smp);

  kvrt_runtime_default_params(&rp);
  assert_int_equal(rp.struct_size, sizeof(kvrt_runtime_params));
  assert_int_equal(rp.n_threads, 0);
  assert_true(rp.kv_budget_bytes == (uint64_t)1 << 30);
  assert_int_equal(rp.block_tokens, 16);
  assert_int_equal(rp.reserved0, 0);

  kvrt_model_default_params(&mp);
  assert_int_equal(mp.struct_size, sizeof(kvrt_model_params));
  assert_int_equal(mp.reserved0, 0);

  kvrt_session_default_params(&sp);
  assert_int_equal(sp.struct_size, sizeof(kvrt_session_params));
  assert_int_equal(sp.kv_format_k, KVRT_KV_FORMAT_F16);
  assert_int_equal(sp.kv_format_v, KVRT_KV_FORMAT_F16);
  assert_int_equal(sp.n_ctx, 0);
  /* max_batch: 0 means 64, so either is a documented default. */
  assert_true(sp.max_batch == 0 || sp.max_batch == 64);

  kvrt_sampler_default_params(&smp);
  assert_int_equal(smp.struct_size, sizeof(kvrt_sampler_params));
  assert_true(smp.temperature == 0.8f);
  assert_int_equal(smp.top_k, 40);
  assert_true(smp.top_p == 0.95f);
  assert_true(smp.seed == 0);

  /* NULL is tolerated. */
  kvrt_runtime_default_params(NULL);
  kvrt_model_default_params(NULL);
  kvrt_session_default_params(NULL);
  kvrt_sampler_default_params(NULL);
}

static void test_destroy_null(void** state) {
  (void)state;
  kvrt_runtime_destroy(NULL);
  kvrt_model_destroy(NULL);
  kvrt_session_destroy(NULL);
}

static void test_model_info(void** state) {
  kvrt_runtime* rt = NULL;
  kvrt_model* m;
  kvrt_model_info info;
  uint64_t bytes = 0;
  (void)state;
  EXPECT_OK(kvrt_runtime_create(NULL, &rt));
  assert_non_null(rt);
  m = tu_model(rt);

  memset(&info, 0xA5, sizeof info);
  info.struct_size = sizeof info;
  EXPECT_OK(kvrt_model_get_info(m, &info));
  assert_int_equal(info.struct_size, sizeof info);
  assert_int_equal(info.n_vocab, TM_N_VOCAB);
  assert_int_equal(info.n_ctx_train, TM_N_CTX_TRAIN);
  assert_int_equal(info.n_embd, TM_N_EMBD);
  assert_int_equal(info.n_layer, TM_N_LAYER);
  assert_int_equal(info.n_head, TM_N_HEAD);
  assert_int_equal(info.n_head_kv, TM_N_HEAD_KV);
  assert_int_equal(info.head_dim, TM_HEAD_DIM);
  assert_int_equal(info.n_ff, TM_N_FF);
  assert_int_equal(info.bos_token, 1);
  assert_int_equal(info.eos_token, 2);
  assert_int_equal(info.reserved0, 0);
  /* 512x64 embeddings and output, 5 x (q 64x64, k 64x32, v 64x32, o 64x64,
   * 3 FFN 64x172, 2 norms of 64), final norm 64; all F32. */
  assert_true(info.n_params == 292800u);
  assert_true(info.weight_bytes == 292800u * 4u);
  assert_true(info.kv_bytes_per_token[KVRT_KV_FORMAT_F32] == TM_KV_BYTES_PER_TOKEN_F32);
  assert_true(info.kv_bytes_per_token[KVRT_KV_FORMAT_F16] == TM_KV_BYTES_PER_TOKEN_F16);
  /* Other formats: 0 when this build does not support them; otherwise
   * bf16 takes what f16 does and the quantized ones less, scales included. */
  assert_true(info.kv_bytes_per_token[KVRT_KV_FORMAT_BF16] == 0 ||
              info.kv_bytes_per_token[KVRT_KV_FORMAT_BF16] == TM_KV_BYTES_PER_TOKEN_F16);
  assert_true(info.kv_bytes_per_token[KVRT_KV_FORMAT_Q8] < TM_KV_BYTES_PER_TOKEN_F16);
  assert_true(info.kv_bytes_per_token[KVRT_KV_FORMAT_Q4] <
                  info.kv_bytes_per_token[KVRT_KV_FORMAT_Q8] ||
              info.kv_bytes_per_token[KVRT_KV_FORMAT_Q4] == 0);
  assert_string_equal(info.architecture, "llama");
  assert_non_null(memchr(info.name, '\0', sizeof info.name));
  assert_string_equal(info.name, "llama");

  EXPECT_OK(kvrt_model_kv_bytes_per_token(m, KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F32, &bytes));
  assert_true(bytes == TM_KV_BYTES_PER_TOKEN_F32);
  EXPECT_OK(kvrt_model_kv_bytes_per_token(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, &bytes));
  assert_true(bytes == TM_KV_BYTES_PER_TOKEN_F16);
  /* Keys in f32, values in f16: half of each. */
  EXPECT_OK(kvrt_model_kv_bytes_per_token(m, KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F16, &bytes));
  assert_true(bytes == TM_KV_BYTES_PER_TOKEN_F32 / 2 + TM_KV_BYTES_PER_TOKEN_F16 / 2);

  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
}

static void test_runtime_stats(void** state) {
  kvrt_runtime* rt;
  kvrt_runtime_stats st;
  (void)state;
  rt = tu_runtime(123456, 16, 2);
  st = tu_runtime_stats(rt);
  assert_int_equal(st.struct_size, sizeof st);
  assert_int_equal(st.n_threads, 2);
  assert_true(st.kv_budget_bytes == 123456u);
  assert_true(st.kv_used_bytes == 0);
  assert_true(st.n_blocks_used == 0);
  kvrt_runtime_destroy(rt);

  /* 0 threads means one per core: at least one. */
  rt = tu_runtime(0, 0, 0);
  st = tu_runtime_stats(rt);
  assert_true(st.n_threads >= 1);
  assert_true(st.kv_budget_bytes == (uint64_t)1 << 30);
  kvrt_runtime_destroy(rt);
}

static void test_tokenize_and_session_lifecycle(void** state) {
  static const char prompt[] = "Once upon a time";
  static const int32_t expected[] = {1, 403, 407, 261, 378};
  int32_t toks[16];
  float* logits;
  size_t n = 0, i;
  kvrt_runtime* rt;
  kvrt_model* m;
  kvrt_session* s;
  kvrt_session_stats st;
  kvrt_runtime_stats rst;
  (void)state;

  rt = tu_runtime(0, 0, 2);
  m = tu_model(rt);

  /* Counting only. */
  EXPECT_OK(kvrt_tokenize(m, prompt, strlen(prompt), KVRT_TOKENIZE_ADD_BOS, NULL, 0, &n));
  assert_int_equal(n, 5);
  EXPECT_OK(kvrt_tokenize(m, prompt, strlen(prompt), KVRT_TOKENIZE_ADD_BOS, toks, 16, &n));
  assert_int_equal(n, 5);
  for (i = 0; i < 5; ++i) assert_int_equal(toks[i], expected[i]);
  /* Without BOS the same ids follow. */
  EXPECT_OK(kvrt_tokenize(m, prompt, strlen(prompt), 0, toks, 16, &n));
  assert_int_equal(n, 4);
  for (i = 0; i < 4; ++i) assert_int_equal(toks[i], expected[i + 1]);
  /* The text need not be NUL-terminated: only text_len bytes count. */
  EXPECT_OK(kvrt_tokenize(m, "Once upon a timeXYZ", strlen(prompt), KVRT_TOKENIZE_ADD_BOS,
                          toks, 16, &n));
  assert_int_equal(n, 5);
  for (i = 0; i < 5; ++i) assert_int_equal(toks[i], expected[i]);
  /* Empty text. */
  EXPECT_OK(kvrt_tokenize(m, NULL, 0, 0, toks, 16, &n));
  assert_int_equal(n, 0);
  EXPECT_OK(kvrt_tokenize(m, NULL, 0, KVRT_TOKENIZE_ADD_BOS, toks, 16, &n));
  assert_int_equal(n, 1);
  assert_int_equal(toks[0], 1);

  s = tu_session(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 0, 0);
  st = tu_session_stats(s);
  assert_int_equal(st.n_tokens, 0);
  assert_int_equal(st.n_ctx, TM_N_CTX_TRAIN); /* 0 means the model's */
  assert_int_equal(st.n_blocks, 0);
  assert_int_equal(st.block_tokens, 16);
  assert_int_equal(st.kv_format_k, KVRT_KV_FORMAT_F16);
  assert_int_equal(st.kv_format_v, KVRT_KV_FORMAT_F16);
  assert_true(st.kv_bytes == 0);
  assert_true(st.kv_bytes_per_token == TM_KV_BYTES_PER_TOKEN_F16);

  logits = (float*)malloc(TM_N_VOCAB * sizeof(float));
  assert_non_null(logits);
  EXPECT_OK(kvrt_decode_step(s, expected, 5, logits, TM_N_VOCAB));
  tu_assert_finite(logits, TM_N_VOCAB);
  /* The model continues "Once upon a time" with ",". */
  {
    char piece[32];
    size_t len = 0;
    EXPECT_OK(kvrt_token_to_piece(m, tu_argmax(logits, TM_N_VOCAB), piece, sizeof piece, &len));
    assert_int_equal(len, 1);
    assert_memory_equal(piece, ",", 1);
  }

  st = tu_session_stats(s);
  assert_int_equal(st.n_tokens, 5);
  assert_int_equal(st.n_blocks, 1);
  assert_true(st.kv_bytes == TM_F16_BLOCK_BYTES);
  rst = tu_runtime_stats(rt);
  assert_true(rst.kv_used_bytes == TM_F16_BLOCK_BYTES);
  assert_true(rst.n_blocks_used == 1);
  assert_true(rst.kv_reserved_bytes >= rst.kv_used_bytes);

  EXPECT_OK(kvrt_session_get_tokens(s, NULL, 0, &n));
  assert_int_equal(n, 5);
  memset(toks, 0, sizeof toks);
  EXPECT_OK(kvrt_session_get_tokens(s, toks, 16, &n));
  assert_int_equal(n, 5);
  for (i = 0; i < 5; ++i) assert_int_equal(toks[i], expected[i]);

  /* Detokenizing the prompt: BOS gives no text, and no space starts it. */
  {
    char text[64];
    size_t len = 0;
    EXPECT_OK(kvrt_detokenize(m, expected, 5, NULL, 0, &len));
    assert_int_equal(len, strlen(prompt));
    memset(text, 'x', sizeof text);
    EXPECT_OK(kvrt_detokenize(m, expected, 5, text, sizeof text, &len));
    assert_int_equal(len, strlen(prompt));
    assert_string_equal(text, prompt);
  }

  kvrt_session_destroy(s);
  rst = tu_runtime_stats(rt);
  assert_true(rst.kv_used_bytes == 0);
  assert_true(rst.n_blocks_used == 0);
  free(logits);
  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_version),
      cmocka_unit_test(test_build_info),
      cmocka_unit_test(test_status_values_are_stable),
      cmocka_unit_test(test_status_strings),
      cmocka_unit_test(test_last_error_fresh_thread),
      cmocka_unit_test(test_default_params),
      cmocka_unit_test(test_destroy_null),
      cmocka_unit_test(test_model_info),
      cmocka_unit_test(test_runtime_stats),
      cmocka_unit_test(test_tokenize_and_session_lifecycle),
  };
  return cmocka_run_group_tests_name("api-basics", tests, NULL, NULL);
}
