/* The argument matrix of the C API: NULL handles and out-pointers, struct
 * sizes, reserved fields, ranges, buffer sizes, formats, sampler settings and
 * bad files, each checked for its documented status and an error message. */
#include "api-test-util.h"

#include <unistd.h>

/* Shared by the tests: one runtime, model and session. */
typedef struct fixture {
  kvrt_runtime* rt;
  kvrt_model* m;
  kvrt_session* s;
} fixture;

static int setup(void** state) {
  fixture* f = (fixture*)calloc(1, sizeof *f);
  const char* path;
  if (f == NULL) return -1;
  *state = f;
  path = tu_model_path();
  if (kvrt_runtime_create(NULL, &f->rt) != KVRT_OK) return -1;
  if (kvrt_model_load(f->rt, path, NULL, &f->m) != KVRT_OK) {
    fprintf(stderr, "cannot load %s: %s\n", path, kvrt_last_error());
    return -1;
  }
  if (kvrt_session_create(f->m, NULL, &f->s) != KVRT_OK) return -1;
  return 0;
}

static int teardown(void** state) {
  fixture* f = (fixture*)*state;
  if (f != NULL) {
    kvrt_session_destroy(f->s);
    kvrt_model_destroy(f->m);
    kvrt_runtime_destroy(f->rt);
    free(f);
  }
  return 0;
}

/* Pointer values that out-parameters must be reset from on error. */
#define SENTINEL_RT ((kvrt_runtime*)(uintptr_t)0x10)
#define SENTINEL_M ((kvrt_model*)(uintptr_t)0x10)
#define SENTINEL_S ((kvrt_session*)(uintptr_t)0x10)

/* A caller compiled against a newer header: a larger struct whose extra
 * bytes are zero. */
typedef struct {
  kvrt_runtime_params p;
  uint8_t extra[40];
} runtime_params_v2;
typedef struct {
  kvrt_model_params p;
  uint8_t extra[40];
} model_params_v2;
typedef struct {
  kvrt_session_params p;
  uint8_t extra[40];
} session_params_v2;
typedef struct {
  kvrt_sampler_params p;
  uint8_t extra[40];
} sampler_params_v2;
typedef struct {
  kvrt_runtime_stats p;
  uint8_t extra[40];
} runtime_stats_v2;
typedef struct {
  kvrt_session_stats p;
  uint8_t extra[40];
} session_stats_v2;
typedef struct {
  kvrt_model_info p;
  uint8_t extra[40];
} model_info_v2;

static const uint32_t k_bad_sizes[] = {0, 3};

/* ------------------------------------------------------------------------- */

static void test_runtime_create_args(void** state) {
  kvrt_runtime_params rp;
  runtime_params_v2 big;
  kvrt_runtime* rt;
  size_t i;
  (void)state;

  EXPECT_ERR(kvrt_runtime_create(NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  kvrt_runtime_default_params(&rp);
  EXPECT_ERR(kvrt_runtime_create(&rp, NULL), KVRT_ERR_INVALID_ARGUMENT);

  for (i = 0; i < 3; ++i) {
    kvrt_runtime_default_params(&rp);
    rp.struct_size = i < 2 ? k_bad_sizes[i] : (uint32_t)sizeof rp - 1;
    rt = SENTINEL_RT;
    EXPECT_ERR(kvrt_runtime_create(&rp, &rt), KVRT_ERR_STRUCT_SIZE);
    assert_null(rt);
  }

  kvrt_runtime_default_params(&rp);
  rp.reserved0 = 1;
  rt = SENTINEL_RT;
  EXPECT_ERR(kvrt_runtime_create(&rp, &rt), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(rt);

  kvrt_runtime_default_params(&rp);
  rp.block_tokens = 0;
  rt = SENTINEL_RT;
  EXPECT_ERR(kvrt_runtime_create(&rp, &rt), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(rt);
  rp.block_tokens = 1025;
  EXPECT_ERR(kvrt_runtime_create(&rp, &rt), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(rt);
  /* The limits themselves are valid. */
  rp.block_tokens = 1;
  EXPECT_OK(kvrt_runtime_create(&rp, &rt));
  assert_non_null(rt);
  kvrt_runtime_destroy(rt);
  rp.block_tokens = 1024;
  EXPECT_OK(kvrt_runtime_create(&rp, &rt));
  assert_non_null(rt);
  kvrt_runtime_destroy(rt);

  /* Larger struct from a newer header, extra bytes zero: accepted. */
  memset(&big, 0, sizeof big);
  kvrt_runtime_default_params(&big.p);
  big.p.struct_size = sizeof big;
  big.p.block_tokens = 32;
  rt = NULL;
  EXPECT_OK(kvrt_runtime_create(&big.p, &rt));
  assert_non_null(rt);
  kvrt_runtime_destroy(rt);

  /* NULL params means the defaults. */
  rt = NULL;
  EXPECT_OK(kvrt_runtime_create(NULL, &rt));
  assert_non_null(rt);
  kvrt_runtime_destroy(rt);
}

static void test_runtime_get_stats_args(void** state) {
  fixture* f = (fixture*)*state;
  kvrt_runtime_stats st;
  runtime_stats_v2 big;
  size_t i;

  st.struct_size = sizeof st;
  EXPECT_ERR(kvrt_runtime_get_stats(NULL, &st), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_runtime_get_stats(f->rt, NULL), KVRT_ERR_INVALID_ARGUMENT);
  for (i = 0; i < 3; ++i) {
    memset(&st, 0, sizeof st);
    st.struct_size = i < 2 ? k_bad_sizes[i] : (uint32_t)sizeof st - 1;
    EXPECT_ERR(kvrt_runtime_get_stats(f->rt, &st), KVRT_ERR_STRUCT_SIZE);
  }
  memset(&big, 0, sizeof big);
  big.p.struct_size = sizeof big;
  EXPECT_OK(kvrt_runtime_get_stats(f->rt, &big.p));
  assert_true(big.p.kv_budget_bytes == (uint64_t)1 << 30);
  assert_true(big.p.n_threads >= 1);
}

static char* write_temp_file(const void* data, size_t size) {
  const char* dir = getenv("TMPDIR");
  char* path = (char*)malloc(4096);
  int fd;
  assert_non_null(path);
  snprintf(path, 4096, "%s/kvrt-api-test-XXXXXX", dir && dir[0] ? dir : "/tmp");
  fd = mkstemp(path);
  assert_true(fd >= 0);
  if (size > 0) assert_int_equal(write(fd, data, size), (ssize_t)size);
  close(fd);
  return path;
}

static void test_model_load_args(void** state) {
  fixture* f = (fixture*)*state;
  kvrt_model_params mp;
  model_params_v2 big;
  kvrt_model* m;
  const char* path = tu_model_path();
  size_t i;

  m = SENTINEL_M;
  EXPECT_ERR(kvrt_model_load(NULL, path, NULL, &m), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(m);
  m = SENTINEL_M;
  EXPECT_ERR(kvrt_model_load(f->rt, NULL, NULL, &m), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(m);
  EXPECT_ERR(kvrt_model_load(f->rt, path, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);

  for (i = 0; i < 3; ++i) {
    kvrt_model_default_params(&mp);
    mp.struct_size = i < 2 ? k_bad_sizes[i] : (uint32_t)sizeof mp - 1;
    m = SENTINEL_M;
    EXPECT_ERR(kvrt_model_load(f->rt, path, &mp, &m), KVRT_ERR_STRUCT_SIZE);
    assert_null(m);
  }
  kvrt_model_default_params(&mp);
  mp.reserved0 = 7;
  m = SENTINEL_M;
  EXPECT_ERR(kvrt_model_load(f->rt, path, &mp, &m), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(m);

  memset(&big, 0, sizeof big);
  kvrt_model_default_params(&big.p);
  big.p.struct_size = sizeof big;
  m = NULL;
  EXPECT_OK(kvrt_model_load(f->rt, path, &big.p, &m));
  assert_non_null(m);
  kvrt_model_destroy(m);
}

static void test_model_load_bad_files(void** state) {
  fixture* f = (fixture*)*state;
  kvrt_model* m;
  char* tmp;
  char garbage[4096];
  size_t i;

  /* Missing file. */
  m = SENTINEL_M;
  EXPECT_ERR(kvrt_model_load(f->rt, "/nonexistent-dir-kvrt/missing.gguf", NULL, &m),
             KVRT_ERR_IO);
  assert_null(m);
  assert_non_null(strstr(kvrt_last_error(), "missing.gguf"));

  /* Not a GGUF file. */
  for (i = 0; i < sizeof garbage; ++i) garbage[i] = (char)(i * 131 + 7);
  tmp = write_temp_file(garbage, sizeof garbage);
  m = SENTINEL_M;
  EXPECT_ERR(kvrt_model_load(f->rt, tmp, NULL, &m), KVRT_ERR_CORRUPT);
  assert_null(m);
  unlink(tmp);
  free(tmp);

  /* A GGUF header with nothing after it, then the real file cut short. */
  tmp = write_temp_file("GGUF\3\0\0\0", 8);
  m = SENTINEL_M;
  EXPECT_ERR(kvrt_model_load(f->rt, tmp, NULL, &m), KVRT_ERR_CORRUPT);
  assert_null(m);
  unlink(tmp);
  free(tmp);
  {
    FILE* in = fopen(tu_model_path(), "rb");
    char* head = (char*)malloc(100000);
    size_t got;
    assert_non_null(in);
    assert_non_null(head);
    got = fread(head, 1, 100000, in);
    fclose(in);
    assert_int_equal(got, 100000);
    tmp = write_temp_file(head, got);
    m = SENTINEL_M;
    EXPECT_ERR(kvrt_model_load(f->rt, tmp, NULL, &m), KVRT_ERR_CORRUPT);
    assert_null(m);
    unlink(tmp);
    free(tmp);
    free(head);
  }
}

static void test_model_info_args(void** state) {
  fixture* f = (fixture*)*state;
  kvrt_model_info info;
  model_info_v2 big;
  uint64_t bytes = 0;
  size_t i;
  uint32_t fmt;

  info.struct_size = sizeof info;
  EXPECT_ERR(kvrt_model_get_info(NULL, &info), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_model_get_info(f->m, NULL), KVRT_ERR_INVALID_ARGUMENT);
  for (i = 0; i < 3; ++i) {
    memset(&info, 0, sizeof info);
    info.struct_size = i < 2 ? k_bad_sizes[i] : (uint32_t)sizeof info - 1;
    EXPECT_ERR(kvrt_model_get_info(f->m, &info), KVRT_ERR_STRUCT_SIZE);
  }
  memset(&big, 0, sizeof big);
  big.p.struct_size = sizeof big;
  EXPECT_OK(kvrt_model_get_info(f->m, &big.p));
  assert_int_equal(big.p.n_vocab, TM_N_VOCAB);

  EXPECT_ERR(kvrt_model_kv_bytes_per_token(NULL, 0, 0, &bytes), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_model_kv_bytes_per_token(f->m, 0, 0, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_model_kv_bytes_per_token(f->m, 99, 0, &bytes), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_model_kv_bytes_per_token(f->m, 0, 99, &bytes), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_model_kv_bytes_per_token(f->m, KVRT_KV_FORMAT_COUNT, 0, &bytes),
             KVRT_ERR_INVALID_ARGUMENT);
  /* A format is supported exactly when model_info reports its size. */
  info.struct_size = sizeof info;
  EXPECT_OK(kvrt_model_get_info(f->m, &info));
  for (fmt = 0; fmt < KVRT_KV_FORMAT_COUNT; ++fmt) {
    if (info.kv_bytes_per_token[fmt] == 0) {
      EXPECT_ERR(kvrt_model_kv_bytes_per_token(f->m, fmt, fmt, &bytes), KVRT_ERR_UNSUPPORTED);
    } else {
      EXPECT_OK(kvrt_model_kv_bytes_per_token(f->m, fmt, fmt, &bytes));
      assert_true(bytes == info.kv_bytes_per_token[fmt]);
    }
  }
}

/* Case-insensitive search, for format names in messages. */
static int contains_ci(const char* hay, const char* needle) {
  size_t n = strlen(needle), i, j;
  for (i = 0; hay[i] != '\0'; ++i) {
    for (j = 0; j < n; ++j) {
      char a = hay[i + j], b = needle[j];
      if (a >= 'A' && a <= 'Z') a = (char)(a - 'A' + 'a');
      if (b >= 'A' && b <= 'Z') b = (char)(b - 'A' + 'a');
      if (a != b) break;
    }
    if (j == n) return 1;
  }
  return 0;
}

static void test_session_create_args(void** state) {
  fixture* f = (fixture*)*state;
  kvrt_session_params sp;
  session_params_v2 big;
  kvrt_session* s;
  size_t i;
  static const char* const names[] = {"f32", "f16", "bf16", "q8", "q4"};
  uint32_t fmt;
  kvrt_model_info info;
  int n_unsupported = 0;

  s = SENTINEL_S;
  EXPECT_ERR(kvrt_session_create(NULL, NULL, &s), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(s);
  EXPECT_ERR(kvrt_session_create(f->m, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);

  for (i = 0; i < 3; ++i) {
    kvrt_session_default_params(&sp);
    sp.struct_size = i < 2 ? k_bad_sizes[i] : (uint32_t)sizeof sp - 1;
    s = SENTINEL_S;
    EXPECT_ERR(kvrt_session_create(f->m, &sp, &s), KVRT_ERR_STRUCT_SIZE);
    assert_null(s);
  }

  /* Unknown formats. */
  kvrt_session_default_params(&sp);
  sp.kv_format_k = 99;
  s = SENTINEL_S;
  EXPECT_ERR(kvrt_session_create(f->m, &sp, &s), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(s);
  kvrt_session_default_params(&sp);
  sp.kv_format_v = 99;
  EXPECT_ERR(kvrt_session_create(f->m, &sp, &s), KVRT_ERR_INVALID_ARGUMENT);
  kvrt_session_default_params(&sp);
  sp.kv_format_k = KVRT_KV_FORMAT_COUNT;
  EXPECT_ERR(kvrt_session_create(f->m, &sp, &s), KVRT_ERR_INVALID_ARGUMENT);

  /* Known formats this build does not support (model_info reports 0 bytes
   * for them): refused, and named in the message. F32 and F16 are always
   * supported. */
  info.struct_size = sizeof info;
  EXPECT_OK(kvrt_model_get_info(f->m, &info));
  assert_true(info.kv_bytes_per_token[KVRT_KV_FORMAT_F32] != 0);
  assert_true(info.kv_bytes_per_token[KVRT_KV_FORMAT_F16] != 0);
  for (fmt = 0; fmt < KVRT_KV_FORMAT_COUNT; ++fmt) {
    if (info.kv_bytes_per_token[fmt] != 0) {
      int32_t tok = 403;
      kvrt_session_default_params(&sp);
      sp.kv_format_k = fmt;
      sp.kv_format_v = fmt;
      s = NULL;
      EXPECT_OK(kvrt_session_create(f->m, &sp, &s));
      EXPECT_OK(kvrt_decode_step(s, &tok, 1, NULL, 0));
      assert_true(tu_session_stats(s).kv_bytes_per_token == info.kv_bytes_per_token[fmt]);
      kvrt_session_destroy(s);
      continue;
    }
    ++n_unsupported;
    kvrt_session_default_params(&sp);
    sp.kv_format_k = fmt;
    sp.kv_format_v = fmt;
    s = SENTINEL_S;
    EXPECT_ERR(kvrt_session_create(f->m, &sp, &s), KVRT_ERR_UNSUPPORTED);
    assert_null(s);
    if (!contains_ci(kvrt_last_error(), names[fmt]))
      fail_msg("message for format %u does not name '%s': '%s'", fmt, names[fmt],
               kvrt_last_error());
    kvrt_session_default_params(&sp);
    sp.kv_format_v = fmt;
    EXPECT_ERR(kvrt_session_create(f->m, &sp, &s), KVRT_ERR_UNSUPPORTED);
    if (!contains_ci(kvrt_last_error(), names[fmt]))
      fail_msg("message for format %u does not name '%s': '%s'", fmt, names[fmt],
               kvrt_last_error());
  }

  print_message("%d known KV formats unsupported by this build\n", n_unsupported);

  /* A context longer than the model's. */
  kvrt_session_default_params(&sp);
  sp.n_ctx = TM_N_CTX_TRAIN + 1;
  s = SENTINEL_S;
  EXPECT_ERR(kvrt_session_create(f->m, &sp, &s), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(s);
  sp.n_ctx = TM_N_CTX_TRAIN;
  EXPECT_OK(kvrt_session_create(f->m, &sp, &s));
  kvrt_session_destroy(s);

  /* Keys and values may mix f32 and f16. */
  for (i = 0; i < 4; ++i) {
    kvrt_session_default_params(&sp);
    sp.kv_format_k = (uint32_t)(i & 1);
    sp.kv_format_v = (uint32_t)(i >> 1);
    s = NULL;
    EXPECT_OK(kvrt_session_create(f->m, &sp, &s));
    assert_non_null(s);
    kvrt_session_destroy(s);
  }

  memset(&big, 0, sizeof big);
  kvrt_session_default_params(&big.p);
  big.p.struct_size = sizeof big;
  s = NULL;
  EXPECT_OK(kvrt_session_create(f->m, &big.p, &s));
  assert_non_null(s);
  kvrt_session_destroy(s);
}

static void test_tokenize_args(void** state) {
  fixture* f = (fixture*)*state;
  static const char text[] = "Once upon a time";
  int32_t toks[8];
  size_t n = 0;
  size_t i;

  EXPECT_ERR(kvrt_tokenize(NULL, text, strlen(text), 0, toks, 8, &n), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_tokenize(f->m, NULL, 5, 0, toks, 8, &n), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_tokenize(f->m, text, strlen(text), 0, toks, 8, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_tokenize(f->m, text, strlen(text), 0, NULL, 8, &n), KVRT_ERR_INVALID_ARGUMENT);
  /* Unknown flags. */
  EXPECT_ERR(kvrt_tokenize(f->m, text, strlen(text), 2u, toks, 8, &n), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_tokenize(f->m, text, strlen(text), 0x80000000u, toks, 8, &n),
             KVRT_ERR_INVALID_ARGUMENT);

  /* Too small: nothing written, the count needed returned. */
  for (i = 0; i < 8; ++i) toks[i] = -7;
  n = 0;
  EXPECT_ERR(kvrt_tokenize(f->m, text, strlen(text), KVRT_TOKENIZE_ADD_BOS, toks, 2, &n),
             KVRT_ERR_BUFFER_TOO_SMALL);
  assert_int_equal(n, 5);
  for (i = 0; i < 8; ++i) assert_int_equal(toks[i], -7);
  EXPECT_ERR(kvrt_tokenize(f->m, text, strlen(text), KVRT_TOKENIZE_ADD_BOS, toks, 4, &n),
             KVRT_ERR_BUFFER_TOO_SMALL);
  assert_int_equal(n, 5);
  EXPECT_OK(kvrt_tokenize(f->m, text, strlen(text), KVRT_TOKENIZE_ADD_BOS, toks, 5, &n));
  assert_int_equal(n, 5);
}

static void test_detokenize_args(void** state) {
  fixture* f = (fixture*)*state;
  static const int32_t ids[] = {1, 403, 407, 261, 378};
  int32_t bad[3] = {403, 0, 407};
  char text[64];
  size_t len = 0;

  EXPECT_ERR(kvrt_detokenize(NULL, ids, 5, text, sizeof text, &len), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_detokenize(f->m, NULL, 5, text, sizeof text, &len), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_detokenize(f->m, ids, 5, text, sizeof text, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_detokenize(f->m, ids, 5, NULL, 10, &len), KVRT_ERR_INVALID_ARGUMENT);

  bad[1] = -1;
  EXPECT_ERR(kvrt_detokenize(f->m, bad, 3, text, sizeof text, &len), KVRT_ERR_OUT_OF_RANGE);
  bad[1] = TM_N_VOCAB;
  EXPECT_ERR(kvrt_detokenize(f->m, bad, 3, text, sizeof text, &len), KVRT_ERR_OUT_OF_RANGE);
  bad[1] = INT32_MIN;
  EXPECT_ERR(kvrt_detokenize(f->m, bad, 3, text, sizeof text, &len), KVRT_ERR_OUT_OF_RANGE);

  /* Too small: the length needed comes back. */
  len = 0;
  EXPECT_ERR(kvrt_detokenize(f->m, ids, 5, text, 4, &len), KVRT_ERR_BUFFER_TOO_SMALL);
  assert_int_equal(len, strlen("Once upon a time"));
  /* Room for the text without its NUL is enough. */
  memset(text, 'x', sizeof text);
  EXPECT_OK(kvrt_detokenize(f->m, ids, 5, text, 16, &len));
  assert_int_equal(len, 16);
  assert_memory_equal(text, "Once upon a time", 16);
  /* Nothing to do. */
  EXPECT_OK(kvrt_detokenize(f->m, NULL, 0, text, sizeof text, &len));
  assert_int_equal(len, 0);
}

static void test_token_to_piece_args(void** state) {
  fixture* f = (fixture*)*state;
  char text[32];
  size_t len = 0;

  EXPECT_ERR(kvrt_token_to_piece(NULL, 403, text, sizeof text, &len), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_token_to_piece(f->m, 403, text, sizeof text, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_token_to_piece(f->m, 403, NULL, 5, &len), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_token_to_piece(f->m, -1, text, sizeof text, &len), KVRT_ERR_OUT_OF_RANGE);
  EXPECT_ERR(kvrt_token_to_piece(f->m, TM_N_VOCAB, text, sizeof text, &len),
             KVRT_ERR_OUT_OF_RANGE);
  EXPECT_ERR(kvrt_token_to_piece(f->m, INT32_MAX, text, sizeof text, &len),
             KVRT_ERR_OUT_OF_RANGE);

  /* 403 is "Once" at a word start: " Once", 5 bytes. */
  EXPECT_OK(kvrt_token_to_piece(f->m, 403, NULL, 0, &len));
  assert_int_equal(len, 5);
  len = 0;
  EXPECT_ERR(kvrt_token_to_piece(f->m, 403, text, 4, &len), KVRT_ERR_BUFFER_TOO_SMALL);
  assert_int_equal(len, 5);
  EXPECT_OK(kvrt_token_to_piece(f->m, 403, text, 5, &len));
  assert_int_equal(len, 5);
  assert_memory_equal(text, " Once", 5);
  /* A byte token gives its byte: <0x0A> is id 13. */
  EXPECT_OK(kvrt_token_to_piece(f->m, 13, text, sizeof text, &len));
  assert_int_equal(len, 1);
  assert_int_equal(text[0], '\n');
  /* Control tokens give nothing. */
  EXPECT_OK(kvrt_token_to_piece(f->m, 1, text, sizeof text, &len));
  assert_int_equal(len, 0);
}

static void test_decode_step_args(void** state) {
  fixture* f = (fixture*)*state;
  kvrt_session* s = tu_session(f->m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 32, 0);
  float* logits = (float*)malloc((TM_N_VOCAB + 1) * sizeof(float));
  int32_t toks[40];
  int32_t bad[3] = {403, 0, 407};
  kvrt_session_stats st;

  assert_non_null(logits);
  tu_tokens(toks, 40, 1);

  EXPECT_ERR(kvrt_decode_step(NULL, toks, 1, logits, TM_N_VOCAB), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_decode_step(s, NULL, 1, logits, TM_N_VOCAB), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_decode_step(s, toks, 0, logits, TM_N_VOCAB), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_decode_step(s, toks, 1, logits, TM_N_VOCAB - 1), KVRT_ERR_BUFFER_TOO_SMALL);
  EXPECT_ERR(kvrt_decode_step(s, toks, 1, logits, 0), KVRT_ERR_BUFFER_TOO_SMALL);

  bad[1] = -1;
  EXPECT_ERR(kvrt_decode_step(s, bad, 3, logits, TM_N_VOCAB), KVRT_ERR_OUT_OF_RANGE);
  bad[1] = TM_N_VOCAB;
  EXPECT_ERR(kvrt_decode_step(s, bad, 3, logits, TM_N_VOCAB), KVRT_ERR_OUT_OF_RANGE);
  EXPECT_ERR(kvrt_decode_step(s, &bad[1], 1, logits, TM_N_VOCAB), KVRT_ERR_OUT_OF_RANGE);

  /* 33 tokens into a 32-token context. */
  EXPECT_ERR(kvrt_decode_step(s, toks, 33, logits, TM_N_VOCAB), KVRT_ERR_CONTEXT_FULL);
  st = tu_session_stats(s);
  assert_int_equal(st.n_tokens, 0);
  assert_int_equal(st.n_ctx, 32);

  /* Nothing above changed the session: 32 tokens fit exactly, one more not. */
  EXPECT_OK(kvrt_decode_step(s, toks, 31, NULL, 0));
  EXPECT_ERR(kvrt_decode_step(s, toks, 2, logits, TM_N_VOCAB), KVRT_ERR_CONTEXT_FULL);
  /* A larger buffer is fine. */
  EXPECT_OK(kvrt_decode_step(s, toks, 1, logits, TM_N_VOCAB + 1));
  tu_assert_finite(logits, TM_N_VOCAB);
  EXPECT_ERR(kvrt_decode_step(s, toks, 1, logits, TM_N_VOCAB), KVRT_ERR_CONTEXT_FULL);
  st = tu_session_stats(s);
  assert_int_equal(st.n_tokens, 32);

  kvrt_session_destroy(s);
  free(logits);
}

static void test_decode_budget_too_small(void** state) {
  kvrt_runtime* rt;
  kvrt_model* m;
  kvrt_session* s;
  int32_t tok = 403;
  kvrt_session_stats st;
  (void)state;

  /* 1024 bytes cannot hold one 16-token f16 block of this model. */
  rt = tu_runtime(1024, 16, 1);
  m = tu_model(rt);
  s = tu_session(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 0, 0);
  EXPECT_ERR(kvrt_decode_step(s, &tok, 1, NULL, 0), KVRT_ERR_OUT_OF_MEMORY);
  st = tu_session_stats(s);
  assert_int_equal(st.n_tokens, 0);
  assert_int_equal(st.n_blocks, 0);
  assert_true(tu_runtime_stats(rt).kv_used_bytes == 0);
  kvrt_session_destroy(s);
  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
}

static void test_sampler_args(void** state) {
  fixture* f = (fixture*)*state;
  kvrt_sampler_params sp;
  sampler_params_v2 big;
  float logits[TM_N_VOCAB];
  int32_t tok = -5;
  size_t i;

  kvrt_sampler_default_params(&sp);
  EXPECT_ERR(kvrt_session_set_sampler(NULL, &sp), KVRT_ERR_INVALID_ARGUMENT);
  for (i = 0; i < 3; ++i) {
    kvrt_sampler_default_params(&sp);
    sp.struct_size = i < 2 ? k_bad_sizes[i] : (uint32_t)sizeof sp - 1;
    EXPECT_ERR(kvrt_session_set_sampler(f->s, &sp), KVRT_ERR_STRUCT_SIZE);
  }
  kvrt_sampler_default_params(&sp);
  sp.temperature = -1.0f;
  EXPECT_ERR(kvrt_session_set_sampler(f->s, &sp), KVRT_ERR_INVALID_ARGUMENT);
  sp.temperature = NAN;
  EXPECT_ERR(kvrt_session_set_sampler(f->s, &sp), KVRT_ERR_INVALID_ARGUMENT);
  sp.temperature = INFINITY;
  EXPECT_ERR(kvrt_session_set_sampler(f->s, &sp), KVRT_ERR_INVALID_ARGUMENT);
  kvrt_sampler_default_params(&sp);
  sp.top_p = 0.0f;
  EXPECT_ERR(kvrt_session_set_sampler(f->s, &sp), KVRT_ERR_INVALID_ARGUMENT);
  sp.top_p = 1.5f;
  EXPECT_ERR(kvrt_session_set_sampler(f->s, &sp), KVRT_ERR_INVALID_ARGUMENT);
  sp.top_p = -0.5f;
  EXPECT_ERR(kvrt_session_set_sampler(f->s, &sp), KVRT_ERR_INVALID_ARGUMENT);
  sp.top_p = NAN;
  EXPECT_ERR(kvrt_session_set_sampler(f->s, &sp), KVRT_ERR_INVALID_ARGUMENT);
  /* The limits are valid. */
  sp.top_p = 1.0f;
  sp.temperature = 0.0f;
  EXPECT_OK(kvrt_session_set_sampler(f->s, &sp));
  EXPECT_OK(kvrt_session_set_sampler(f->s, NULL));
  memset(&big, 0, sizeof big);
  kvrt_sampler_default_params(&big.p);
  big.p.struct_size = sizeof big;
  EXPECT_OK(kvrt_session_set_sampler(f->s, &big.p));

  for (i = 0; i < TM_N_VOCAB; ++i) logits[i] = (float)(i % 17);
  EXPECT_ERR(kvrt_session_sample(NULL, logits, TM_N_VOCAB, &tok), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_sample(f->s, NULL, TM_N_VOCAB, &tok), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_sample(f->s, logits, TM_N_VOCAB, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_sample(f->s, logits, TM_N_VOCAB - 1, &tok), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_sample(f->s, logits, TM_N_VOCAB + 1, &tok), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_sample(f->s, logits, 0, &tok), KVRT_ERR_INVALID_ARGUMENT);
  logits[100] = NAN;
  EXPECT_ERR(kvrt_session_sample(f->s, logits, TM_N_VOCAB, &tok), KVRT_ERR_INVALID_ARGUMENT);
  logits[100] = 0.0f;
  EXPECT_OK(kvrt_session_sample(f->s, logits, TM_N_VOCAB, &tok));
  assert_true(tok >= 0 && tok < TM_N_VOCAB);
}

static void test_rewind_tokens_stats_abort_args(void** state) {
  fixture* f = (fixture*)*state;
  kvrt_session* s = tu_session(f->m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 0, 0);
  int32_t toks[8];
  int32_t out[8];
  size_t n = 0;
  size_t i;
  kvrt_session_stats st;
  session_stats_v2 big;

  tu_tokens(toks, 8, 2);
  EXPECT_OK(kvrt_decode_step(s, toks, 5, NULL, 0));

  EXPECT_ERR(kvrt_session_rewind(NULL, 0), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_rewind(s, 6), KVRT_ERR_OUT_OF_RANGE);
  EXPECT_ERR(kvrt_session_rewind(s, (size_t)-1), KVRT_ERR_OUT_OF_RANGE);
  assert_int_equal(tu_session_stats(s).n_tokens, 5);
  EXPECT_OK(kvrt_session_rewind(s, 5));
  assert_int_equal(tu_session_stats(s).n_tokens, 5);

  EXPECT_ERR(kvrt_session_get_tokens(NULL, out, 8, &n), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_get_tokens(s, out, 8, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_get_tokens(s, NULL, 8, &n), KVRT_ERR_INVALID_ARGUMENT);
  for (i = 0; i < 8; ++i) out[i] = -3;
  n = 0;
  EXPECT_ERR(kvrt_session_get_tokens(s, out, 4, &n), KVRT_ERR_BUFFER_TOO_SMALL);
  assert_int_equal(n, 5);
  EXPECT_OK(kvrt_session_get_tokens(s, out, 5, &n));
  assert_int_equal(n, 5);
  assert_memory_equal(out, toks, 5 * sizeof(int32_t));

  st.struct_size = sizeof st;
  EXPECT_ERR(kvrt_session_get_stats(NULL, &st), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_get_stats(s, NULL), KVRT_ERR_INVALID_ARGUMENT);
  for (i = 0; i < 3; ++i) {
    memset(&st, 0, sizeof st);
    /* Below the first published layout (which ended before `suspended`). */
    st.struct_size = i < 2 ? k_bad_sizes[i] : (uint32_t)offsetof(kvrt_session_stats, suspended) - 1;
    EXPECT_ERR(kvrt_session_get_stats(s, &st), KVRT_ERR_STRUCT_SIZE);
  }
  /* A caller built against an earlier layout (the first, ending before
     `suspended`; the second, before `compute_ns`) gets its fields, and
     nothing is written past its struct_size. */
  for (i = 0; i < 2; ++i) {
    const size_t size = i == 0 ? offsetof(kvrt_session_stats, suspended)
                               : offsetof(kvrt_session_stats, compute_ns);
    const unsigned char* tail = (const unsigned char*)&st + size;
    size_t j;
    memset(&st, 0xab, sizeof st);
    st.struct_size = (uint32_t)size;
    EXPECT_OK(kvrt_session_get_stats(s, &st));
    assert_int_equal(st.n_tokens, 5);
    assert_int_equal(st.struct_size, size);
    for (j = 0; j < sizeof st - size; ++j) assert_int_equal(tail[j], 0xab);
  }
  memset(&big, 0, sizeof big);
  big.p.struct_size = sizeof big;
  EXPECT_OK(kvrt_session_get_stats(s, &big.p));
  assert_int_equal(big.p.n_tokens, 5);

  EXPECT_ERR(kvrt_session_request_abort(NULL), KVRT_ERR_INVALID_ARGUMENT);
  /* A request made before a decode is cleared when the decode starts. */
  EXPECT_OK(kvrt_session_request_abort(s));
  EXPECT_OK(kvrt_decode_step(s, &toks[5], 1, NULL, 0));
  assert_int_equal(tu_session_stats(s).n_tokens, 6);

  kvrt_session_destroy(s);
}

/* Stream callbacks that fail, or report the end at once; each counts its calls. */
static int failing_write(void* user, const void* data, size_t size) {
  (void)data;
  (void)size;
  ++*(int*)user;
  return 1;
}

static int64_t failing_read(void* user, void* data, size_t size) {
  (void)data;
  (void)size;
  ++*(int*)user;
  return -1;
}

static int64_t empty_read(void* user, void* data, size_t size) {
  (void)data;
  (void)size;
  ++*(int*)user;
  return 0;
}

static void test_snapshot_args(void** state) {
  fixture* f = (fixture*)*state;
  kvrt_snapshot_params sp;
  kvrt_session* out;
  char garbage[512];
  size_t size = 0, i;
  int calls = 0;
  int32_t toks[4];
  char* tmp;

  tu_tokens(toks, 4, 9);
  EXPECT_OK(kvrt_decode_step(f->s, toks, 4, NULL, 0));

  kvrt_snapshot_default_params(NULL);
  memset(&sp, 0xA5, sizeof sp);
  kvrt_snapshot_default_params(&sp);
  assert_int_equal(sp.struct_size, sizeof sp);
  assert_int_equal(sp.compression_level, 3);
  assert_int_equal(sp.reserved0, 0);
  assert_int_equal(sp.reserved1, 0);

  /* Save to a file. */
  EXPECT_ERR(kvrt_session_save(NULL, "x.kvs", NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_save(f->s, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  for (i = 0; i < 3; ++i) {
    kvrt_snapshot_default_params(&sp);
    sp.struct_size = i < 2 ? k_bad_sizes[i] : (uint32_t)sizeof sp - 1;
    EXPECT_ERR(kvrt_session_save(f->s, "/nonexistent-dir-kvrt/x.kvs", &sp), KVRT_ERR_STRUCT_SIZE);
  }
  kvrt_snapshot_default_params(&sp);
  sp.reserved0 = 1;
  EXPECT_ERR(kvrt_session_save(f->s, "/nonexistent-dir-kvrt/x.kvs", &sp), KVRT_ERR_INVALID_ARGUMENT);
  kvrt_snapshot_default_params(&sp);
  sp.reserved1 = 1;
  EXPECT_ERR(kvrt_session_save(f->s, "/nonexistent-dir-kvrt/x.kvs", &sp), KVRT_ERR_INVALID_ARGUMENT);
  /* A level outside zstd's range, into a writable folder: refused, and no
   * file appears. */
  tmp = write_temp_file(NULL, 0);
  unlink(tmp);
  kvrt_snapshot_default_params(&sp);
  sp.compression_level = 23;
  EXPECT_ERR(kvrt_session_save(f->s, tmp, &sp), KVRT_ERR_INVALID_ARGUMENT);
  assert_false(tu_file_exists(tmp));
  sp.compression_level = -1000000;
  EXPECT_ERR(kvrt_session_save(f->s, tmp, &sp), KVRT_ERR_INVALID_ARGUMENT);
  assert_false(tu_file_exists(tmp));
  /* The same save with a valid level works. */
  sp.compression_level = 1;
  EXPECT_OK(kvrt_session_save(f->s, tmp, &sp));
  assert_true(tu_file_exists(tmp));
  unlink(tmp);
  free(tmp);
  EXPECT_ERR(kvrt_session_save(f->s, "/nonexistent-dir-kvrt/x.kvs", NULL), KVRT_ERR_IO);
  assert_non_null(strstr(kvrt_last_error(), "nonexistent-dir-kvrt"));

  /* Load from a file. */
  out = SENTINEL_S;
  EXPECT_ERR(kvrt_session_load(NULL, "x.kvs", NULL, &out), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(out);
  out = SENTINEL_S;
  EXPECT_ERR(kvrt_session_load(f->m, NULL, NULL, &out), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(out);
  EXPECT_ERR(kvrt_session_load(f->m, "x.kvs", NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  out = SENTINEL_S;
  EXPECT_ERR(kvrt_session_load(f->m, "/nonexistent-dir-kvrt/x.kvs", NULL, &out), KVRT_ERR_IO);
  assert_null(out);
  for (i = 0; i < sizeof garbage; ++i) garbage[i] = (char)(i * 37 + 11);
  tmp = write_temp_file(garbage, sizeof garbage);
  out = SENTINEL_S;
  EXPECT_ERR(kvrt_session_load(f->m, tmp, NULL, &out), KVRT_ERR_CORRUPT);
  assert_null(out);
  unlink(tmp);
  free(tmp);

  /* Buffers. */
  EXPECT_ERR(kvrt_session_save_buffer(NULL, NULL, 0, &size, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_save_buffer(f->s, NULL, 0, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_save_buffer(f->s, NULL, 16, &size, NULL), KVRT_ERR_INVALID_ARGUMENT);
  kvrt_snapshot_default_params(&sp);
  sp.struct_size = 3;
  EXPECT_ERR(kvrt_session_save_buffer(f->s, NULL, 0, &size, &sp), KVRT_ERR_STRUCT_SIZE);
  size = 0;
  EXPECT_OK(kvrt_session_save_buffer(f->s, NULL, 0, &size, NULL));
  assert_true(size > 0);
  {
    size_t needed = size, got = 0;
    char* buf = (char*)malloc(needed);
    assert_non_null(buf);
    EXPECT_ERR(kvrt_session_save_buffer(f->s, buf, needed - 1, &got, NULL),
               KVRT_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(got, needed);
    EXPECT_OK(kvrt_session_save_buffer(f->s, buf, needed, &got, NULL));
    assert_int_equal(got, needed);

    out = SENTINEL_S;
    EXPECT_ERR(kvrt_session_load_buffer(NULL, buf, got, NULL, &out), KVRT_ERR_INVALID_ARGUMENT);
    assert_null(out);
    EXPECT_ERR(kvrt_session_load_buffer(f->m, NULL, got, NULL, &out), KVRT_ERR_INVALID_ARGUMENT);
    EXPECT_ERR(kvrt_session_load_buffer(f->m, buf, got, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
    out = SENTINEL_S;
    EXPECT_ERR(kvrt_session_load_buffer(f->m, garbage, sizeof garbage, NULL, &out),
               KVRT_ERR_CORRUPT);
    assert_null(out);
    /* Cut short. */
    out = SENTINEL_S;
    EXPECT_ERR(kvrt_session_load_buffer(f->m, buf, got / 2, NULL, &out), KVRT_ERR_CORRUPT);
    assert_null(out);
    kvrt_snapshot_default_params(&sp);
    sp.reserved0 = 5;
    out = SENTINEL_S;
    EXPECT_ERR(kvrt_session_load_buffer(f->m, buf, got, &sp, &out), KVRT_ERR_INVALID_ARGUMENT);
    assert_null(out);
    /* And whole: it loads, with the same tokens. */
    out = NULL;
    EXPECT_OK(kvrt_session_load_buffer(f->m, buf, got, NULL, &out));
    assert_non_null(out);
    assert_int_equal(tu_session_stats(out).n_tokens, tu_session_stats(f->s).n_tokens);
    kvrt_session_destroy(out);
    free(buf);
  }

  /* Streams. */
  EXPECT_ERR(kvrt_session_save_stream(NULL, failing_write, &calls, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_save_stream(f->s, NULL, &calls, NULL), KVRT_ERR_INVALID_ARGUMENT);
  calls = 0;
  EXPECT_ERR(kvrt_session_save_stream(f->s, failing_write, &calls, NULL), KVRT_ERR_IO);
  assert_int_equal(calls, 1); /* no further call after a failure */
  out = SENTINEL_S;
  EXPECT_ERR(kvrt_session_load_stream(NULL, failing_read, &calls, NULL, &out),
             KVRT_ERR_INVALID_ARGUMENT);
  assert_null(out);
  EXPECT_ERR(kvrt_session_load_stream(f->m, NULL, &calls, NULL, &out), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_load_stream(f->m, failing_read, &calls, NULL, NULL),
             KVRT_ERR_INVALID_ARGUMENT);
  out = SENTINEL_S;
  EXPECT_ERR(kvrt_session_load_stream(f->m, failing_read, &calls, NULL, &out), KVRT_ERR_IO);
  assert_null(out);
  out = SENTINEL_S;
  EXPECT_ERR(kvrt_session_load_stream(f->m, empty_read, &calls, NULL, &out), KVRT_ERR_CORRUPT);
  assert_null(out);

  /* Inspection. */
  {
    kvrt_snapshot_info info;
    size_t needed = 0;
    char* buf;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    EXPECT_ERR(kvrt_snapshot_inspect(NULL, NULL, &info), KVRT_ERR_INVALID_ARGUMENT);
    EXPECT_ERR(kvrt_snapshot_inspect("x.kvs", NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
    EXPECT_ERR(kvrt_snapshot_inspect("/nonexistent-dir-kvrt/x.kvs", NULL, &info), KVRT_ERR_IO);
    EXPECT_ERR(kvrt_snapshot_inspect_buffer(NULL, 16, NULL, &info), KVRT_ERR_INVALID_ARGUMENT);
    EXPECT_ERR(kvrt_snapshot_inspect_buffer(garbage, sizeof garbage, NULL, NULL),
               KVRT_ERR_INVALID_ARGUMENT);
    EXPECT_ERR(kvrt_snapshot_inspect_buffer(garbage, sizeof garbage, NULL, &info),
               KVRT_ERR_CORRUPT);
    for (i = 0; i < 3; ++i) {
      memset(&info, 0, sizeof info);
      info.struct_size = i < 2 ? k_bad_sizes[i] : (uint32_t)sizeof info - 1;
      EXPECT_ERR(kvrt_snapshot_inspect_buffer(garbage, sizeof garbage, NULL, &info),
                 KVRT_ERR_STRUCT_SIZE);
    }
    EXPECT_OK(kvrt_session_save_buffer(f->s, NULL, 0, &needed, NULL));
    buf = (char*)malloc(needed);
    assert_non_null(buf);
    EXPECT_OK(kvrt_session_save_buffer(f->s, buf, needed, &size, NULL));
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    EXPECT_OK(kvrt_snapshot_inspect_buffer(buf, size, f->m, &info));
    assert_int_equal(info.n_tokens, tu_session_stats(f->s).n_tokens);
    assert_int_equal(info.n_vocab, TM_N_VOCAB);
    assert_true(info.total_bytes == size);
    free(buf);
  }

  EXPECT_OK(kvrt_session_rewind(f->s, 0));
}

static void test_last_error_kept_by_success(void** state) {
  fixture* f = (fixture*)*state;
  char copy[512];
  kvrt_model_info info;

  EXPECT_ERR(kvrt_session_rewind(f->s, 1000), KVRT_ERR_OUT_OF_RANGE);
  strncpy(copy, kvrt_last_error(), sizeof copy - 1);
  copy[sizeof copy - 1] = '\0';
  /* The message says what was wrong: the count asked for. */
  assert_non_null(strstr(copy, "1000"));
  info.struct_size = sizeof info;
  EXPECT_OK(kvrt_model_get_info(f->m, &info));
  assert_string_equal(kvrt_last_error(), copy);
}

/* ---- Suspend and resume ------------------------------------------------ */

static kvrt_session_stats expect_state(const kvrt_session* s, uint32_t suspended, uint32_t n_tokens) {
  kvrt_session_stats st = tu_session_stats(s);
  assert_int_equal(st.suspended, suspended);
  assert_int_equal(st.n_tokens, n_tokens);
  assert_int_equal(st.n_blocks, suspended ? 0 : (n_tokens + 15) / 16);
  return st;
}

static void test_suspend_args(void** state) {
  fixture* f = (fixture*)*state;
  kvrt_suspend_params sp;
  struct {
    kvrt_suspend_params p;
    uint8_t extra[40];
  } big;
  size_t i, n = 0;
  int32_t toks[6], out[6], tok = 0;
  float logits[TM_N_VOCAB];
  char* file; /* a file, not a folder */

  tu_tokens(toks, 6, 5);
  EXPECT_OK(kvrt_decode_step(f->s, toks, 5, logits, TM_N_VOCAB));

  kvrt_suspend_default_params(NULL);
  memset(&sp, 0xA5, sizeof sp);
  kvrt_suspend_default_params(&sp);
  assert_int_equal(sp.struct_size, sizeof sp);
  assert_int_equal(sp.compression_level, 1);
  assert_int_equal(sp.reserved0, 0);
  assert_int_equal(sp.reserved1, 0);
  assert_null(sp.spill_dir);

  EXPECT_ERR(kvrt_session_suspend(NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_suspend(NULL, &sp), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_resume(NULL), KVRT_ERR_INVALID_ARGUMENT);
  for (i = 0; i < 3; ++i) {
    kvrt_suspend_default_params(&sp);
    sp.struct_size = i < 2 ? k_bad_sizes[i] : (uint32_t)sizeof sp - 1;
    EXPECT_ERR(kvrt_session_suspend(f->s, &sp), KVRT_ERR_STRUCT_SIZE);
  }
  kvrt_suspend_default_params(&sp);
  sp.reserved0 = 1;
  EXPECT_ERR(kvrt_session_suspend(f->s, &sp), KVRT_ERR_INVALID_ARGUMENT);
  kvrt_suspend_default_params(&sp);
  sp.reserved1 = 1;
  EXPECT_ERR(kvrt_session_suspend(f->s, &sp), KVRT_ERR_INVALID_ARGUMENT);
  kvrt_suspend_default_params(&sp);
  sp.compression_level = 23;
  EXPECT_ERR(kvrt_session_suspend(f->s, &sp), KVRT_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kvrt_last_error(), "23"));
  sp.compression_level = -1000000;
  EXPECT_ERR(kvrt_session_suspend(f->s, &sp), KVRT_ERR_INVALID_ARGUMENT);
  kvrt_suspend_default_params(&sp);
  sp.spill_dir = "";
  EXPECT_ERR(kvrt_session_suspend(f->s, &sp), KVRT_ERR_INVALID_ARGUMENT);
  sp.spill_dir = "/nonexistent-dir-kvrt";
  EXPECT_ERR(kvrt_session_suspend(f->s, &sp), KVRT_ERR_IO);
  assert_non_null(strstr(kvrt_last_error(), "/nonexistent-dir-kvrt"));
  file = write_temp_file("x", 1);
  sp.spill_dir = file;
  EXPECT_ERR(kvrt_session_suspend(f->s, &sp), KVRT_ERR_IO);
  unlink(file);
  free(file);
  expect_state(f->s, 0, 5);

  /* A caller with a newer header (larger struct, zero tail) is served. */
  memset(&big, 0, sizeof big);
  kvrt_suspend_default_params(&big.p);
  big.p.struct_size = sizeof big;
  EXPECT_OK(kvrt_session_suspend(f->s, &big.p));
  expect_state(f->s, 1, 5);
  /* Bad params are refused while suspended too, and change nothing. */
  kvrt_suspend_default_params(&sp);
  sp.reserved0 = 7;
  EXPECT_ERR(kvrt_session_suspend(f->s, &sp), KVRT_ERR_INVALID_ARGUMENT);

  /* Calls refused for their own arguments leave the session suspended. */
  EXPECT_ERR(kvrt_decode_step(f->s, NULL, 1, NULL, 0), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_decode_step(f->s, toks, 0, NULL, 0), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_decode_step(f->s, toks, 1, logits, TM_N_VOCAB - 1), KVRT_ERR_BUFFER_TOO_SMALL);
  tok = TM_N_VOCAB;
  EXPECT_ERR(kvrt_decode_step(f->s, &tok, 1, NULL, 0), KVRT_ERR_OUT_OF_RANGE);
  EXPECT_ERR(kvrt_session_sample(f->s, logits, TM_N_VOCAB - 1, &tok), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_sample(f->s, NULL, TM_N_VOCAB, &tok), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_rewind(f->s, 6), KVRT_ERR_OUT_OF_RANGE);
  {
    kvrt_sampler_params smp;
    kvrt_sampler_default_params(&smp);
    smp.struct_size = 3;
    EXPECT_ERR(kvrt_session_set_sampler(f->s, &smp), KVRT_ERR_STRUCT_SIZE);
    kvrt_sampler_default_params(&smp);
    smp.top_p = 0.0f;
    EXPECT_ERR(kvrt_session_set_sampler(f->s, &smp), KVRT_ERR_INVALID_ARGUMENT);
  }
  EXPECT_ERR(kvrt_session_get_tokens(f->s, out, 4, &n), KVRT_ERR_BUFFER_TOO_SMALL);
  assert_int_equal(n, 5);
  EXPECT_ERR(kvrt_session_save_buffer(f->s, NULL, 4, &n, NULL), KVRT_ERR_INVALID_ARGUMENT);
  {
    kvrt_snapshot_params p;
    kvrt_snapshot_default_params(&p);
    p.compression_level = 23;
    EXPECT_ERR(kvrt_session_save_buffer(f->s, NULL, 0, &n, &p), KVRT_ERR_INVALID_ARGUMENT);
  }
  {
    kvrt_session_stats st;
    st.struct_size = 3;
    EXPECT_ERR(kvrt_session_get_stats(f->s, &st), KVRT_ERR_STRUCT_SIZE);
  }
  EXPECT_OK(kvrt_session_request_abort(f->s));
  EXPECT_OK(kvrt_session_get_tokens(f->s, out, 6, &n));
  assert_int_equal(n, 5);
  assert_memory_equal(out, toks, 5 * sizeof(int32_t));
  expect_state(f->s, 1, 5);

  EXPECT_OK(kvrt_session_resume(f->s));
  expect_state(f->s, 0, 5);
  EXPECT_OK(kvrt_session_resume(f->s));
  expect_state(f->s, 0, 5);
  EXPECT_OK(kvrt_session_rewind(f->s, 0));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_runtime_create_args),
      cmocka_unit_test(test_runtime_get_stats_args),
      cmocka_unit_test(test_model_load_args),
      cmocka_unit_test(test_model_load_bad_files),
      cmocka_unit_test(test_model_info_args),
      cmocka_unit_test(test_session_create_args),
      cmocka_unit_test(test_tokenize_args),
      cmocka_unit_test(test_detokenize_args),
      cmocka_unit_test(test_token_to_piece_args),
      cmocka_unit_test(test_decode_step_args),
      cmocka_unit_test(test_decode_budget_too_small),
      cmocka_unit_test(test_sampler_args),
      cmocka_unit_test(test_rewind_tokens_stats_abort_args),
      cmocka_unit_test(test_snapshot_args),
      cmocka_unit_test(test_last_error_kept_by_success),
      cmocka_unit_test(test_suspend_args),
  };
  return cmocka_run_group_tests_name("api-args", tests, setup, teardown);
}
