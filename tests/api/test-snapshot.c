/* Session snapshots through kvrt.h: exact round trips to files, buffers and
 * callbacks; every kind of bad input refused with its own status and nothing
 * left allocated; atomic file replacement when a save dies half way. */
#include "api-test-util.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define N_STEPS 64
#define PROMPT 37

static kvrt_runtime* g_rt;
static kvrt_model* g_model;
static char g_dir[512];

/* ---- small helpers ------------------------------------------------------ */

typedef tu_bytes bytes;

static void path_in_dir(char* out, size_t cap, const char* name) {
  snprintf(out, cap, "%s/%s", g_dir, name);
}

static int count_temp_files(const char* prefix, off_t* size);

static uint64_t blocks_used(void) { return tu_runtime_stats(g_rt).n_blocks_used; }

/* Feeds tokens in one call or one at a time; logits of the last one. */
static void feed(kvrt_session* s, const int32_t* t, size_t n, int one_call, float* logits) {
  size_t i;
  if (one_call) {
    EXPECT_OK(kvrt_decode_step(s, t, n, logits, TM_N_VOCAB));
    return;
  }
  for (i = 0; i < n; ++i) EXPECT_OK(kvrt_decode_step(s, &t[i], 1, logits, TM_N_VOCAB));
}

/* Write callback collecting into a `bytes`, failing after `fail_after`
 * calls when that is not negative. */
typedef struct writer {
  bytes out;
  int calls;
  int fail_after;
} writer;

static int write_cb(void* user, const void* d, size_t n) {
  writer* w = (writer*)user;
  if (n == 0) return 99; /* the contract says never 0 bytes */
  if (w->fail_after >= 0 && w->calls >= w->fail_after) return -1;
  ++w->calls;
  tu_bytes_append(&w->out, d, n);
  return 0;
}

/* Read callback over memory: short reads of 1..max_piece bytes; fails with
 * -1 when it reaches fail_at. */
typedef struct reader {
  const uint8_t* p;
  size_t n, pos;
  size_t max_piece;
  size_t fail_at;
  uint32_t x;
} reader;

static int64_t read_cb(void* user, void* d, size_t n) {
  reader* r = (reader*)user;
  size_t k;
  if (n == 0) return -5; /* the contract says never 0 bytes */
  if (r->pos >= r->fail_at) return -1;
  r->x = r->x * 1664525u + 1013904223u;
  k = 1 + (r->x >> 8) % r->max_piece;
  if (k > n) k = n;
  if (k > r->n - r->pos) k = r->n - r->pos;
  if (k > r->fail_at - r->pos) k = r->fail_at - r->pos;
  if (k == 0) return 0;
  memcpy(d, r->p + r->pos, k);
  r->pos += k;
  return (int64_t)k;
}

static reader make_reader(const bytes* b, size_t max_piece) {
  reader r;
  r.p = b->p;
  r.n = b->n;
  r.pos = 0;
  r.max_piece = max_piece;
  r.fail_at = (size_t)-1;
  r.x = 7;
  return r;
}

enum method { BY_PATH, BY_BUFFER, BY_STREAM };

/* Saves with one method and loads with the same one; returns the bytes. */
static kvrt_session* save_and_load(kvrt_session* s, enum method m, bytes* saved) {
  kvrt_session* out = NULL;
  if (m == BY_PATH) {
    char path[600];
    path_in_dir(path, sizeof path, "roundtrip.kvs");
    EXPECT_OK(kvrt_session_save(s, path, NULL));
    EXPECT_OK(kvrt_session_load(g_model, path, NULL, &out));
    *saved = tu_read_file(path);
    unlink(path);
  } else if (m == BY_BUFFER) {
    *saved = tu_save_buffer(s, NULL);
    EXPECT_OK(kvrt_session_load_buffer(g_model, saved->p, saved->n, NULL, &out));
  } else {
    writer w = {{0}, 0, -1};
    reader r;
    EXPECT_OK(kvrt_session_save_stream(s, write_cb, &w, NULL));
    r = make_reader(&w.out, 1000);
    EXPECT_OK(kvrt_session_load_stream(g_model, read_cb, &r, NULL, &out));
    assert_int_equal(r.pos, w.out.n); /* read exactly the snapshot */
    *saved = w.out;
  }
  assert_non_null(out);
  return out;
}

/* ---- fixtures ----------------------------------------------------------- */

static int group_setup(void** state) {
  const char* tmp = getenv("TMPDIR");
  (void)state;
  snprintf(g_dir, sizeof g_dir, "%s/kvrt-snap-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) return -1;
  g_rt = tu_runtime(0, 16, 2);
  g_model = tu_model(g_rt);
  return 0;
}

static int group_teardown(void** state) {
  DIR* d;
  struct dirent* e;
  char p[1024];
  (void)state;
  kvrt_model_destroy(g_model);
  kvrt_runtime_destroy(g_rt);
  d = opendir(g_dir);
  if (d) {
    while ((e = readdir(d)) != NULL) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
      if (unlink(p) != 0) rmdir(p);
    }
    closedir(d);
  }
  rmdir(g_dir);
  return 0;
}

/* ---- round trips -------------------------------------------------------- */

/* Saves after `n_prompt` tokens fed in one call or one by one, by every
 * method; each loaded session continues for N_STEPS greedy tokens with
 * every step's logits bitwise equal to a session that was never saved. */
static void check_roundtrip_n(uint32_t fk, uint32_t fv, size_t n_prompt, int one_call) {
  int32_t prompt[64];
  float last[TM_N_VOCAB], last_a[TM_N_VOCAB];
  float* ref_l = malloc(sizeof(float) * N_STEPS * TM_N_VOCAB);
  float* got_l = malloc(sizeof(float) * N_STEPS * TM_N_VOCAB);
  int32_t ref_t[N_STEPS], got_t[N_STEPS];
  bytes first = {0};
  int m;
  kvrt_session *r, *a;
  assert_true(n_prompt <= 64);
  tu_tokens(prompt, n_prompt, 11 + fk + 7 * fv + (uint32_t)n_prompt);

  /* The reference: never saved. */
  r = tu_session(g_model, fk, fv, 128, 0);
  feed(r, prompt, n_prompt, one_call, last);
  tu_run_steps(r, last, N_STEPS, 0, ref_l, ref_t);
  kvrt_session_destroy(r);

  a = tu_session(g_model, fk, fv, 128, 0);
  feed(a, prompt, n_prompt, one_call, last_a);
  tu_assert_bitwise_equal(last_a, last, TM_N_VOCAB);
  for (m = BY_PATH; m <= BY_STREAM; ++m) {
    bytes saved = {0};
    kvrt_session* b = save_and_load(a, (enum method)m, &saved);
    kvrt_session_stats sa = tu_session_stats(a), sb = tu_session_stats(b);
    int32_t ta[64], tb[64];
    size_t na = 0, nb = 0;
    assert_int_equal(sb.n_tokens, n_prompt);
    assert_int_equal(sb.n_ctx, sa.n_ctx);
    assert_int_equal(sb.kv_format_k, fk);
    assert_int_equal(sb.kv_format_v, fv);
    assert_int_equal(sb.n_blocks, sa.n_blocks);
    EXPECT_OK(kvrt_session_get_tokens(a, ta, 64, &na));
    EXPECT_OK(kvrt_session_get_tokens(b, tb, 64, &nb));
    assert_int_equal(nb, n_prompt);
    assert_memory_equal(ta, tb, n_prompt * sizeof(int32_t));
    /* Every method writes the same bytes. */
    if (m == BY_PATH) {
      first = saved;
    } else {
      assert_int_equal(saved.n, first.n);
      assert_memory_equal(saved.p, first.p, first.n);
      free(saved.p);
    }
    tu_run_steps(b, last, N_STEPS, 0, got_l, got_t);
    assert_memory_equal(got_t, ref_t, sizeof ref_t);
    assert_memory_equal(got_l, ref_l, sizeof(float) * N_STEPS * TM_N_VOCAB);
    kvrt_session_destroy(b);
  }
  /* Saving did not disturb the saved session either. */
  tu_run_steps(a, last, N_STEPS, 0, got_l, got_t);
  assert_memory_equal(got_t, ref_t, sizeof ref_t);
  assert_memory_equal(got_l, ref_l, sizeof(float) * N_STEPS * TM_N_VOCAB);
  kvrt_session_destroy(a);
  free(first.p);
  free(ref_l);
  free(got_l);
}

static void check_roundtrip(uint32_t fmt, int one_call) { check_roundtrip_n(fmt, fmt, PROMPT, one_call); }

/* Quantized caches: the tail block lives in the f16 stage, so both a count
 * that ends inside a block (37 = 2 x 16 + 5) and one that ends exactly on a
 * block boundary (48) are checked. */
static void check_roundtrip_quant(uint32_t fk, uint32_t fv) {
  int one_call;
  for (one_call = 0; one_call <= 1; ++one_call) {
    check_roundtrip_n(fk, fv, 37, one_call);
    check_roundtrip_n(fk, fv, 48, one_call);
  }
}
static void test_roundtrip_q8(void** state) { (void)state; check_roundtrip_quant(KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8); }
static void test_roundtrip_q4(void** state) { (void)state; check_roundtrip_quant(KVRT_KV_FORMAT_Q4, KVRT_KV_FORMAT_Q4); }
static void test_roundtrip_q8_q4(void** state) { (void)state; check_roundtrip_quant(KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q4); }

static void test_roundtrip_f32_prefill(void** state) { (void)state; check_roundtrip(KVRT_KV_FORMAT_F32, 1); }
static void test_roundtrip_f32_stepwise(void** state) { (void)state; check_roundtrip(KVRT_KV_FORMAT_F32, 0); }
static void test_roundtrip_f16_prefill(void** state) { (void)state; check_roundtrip(KVRT_KV_FORMAT_F16, 1); }
static void test_roundtrip_f16_stepwise(void** state) { (void)state; check_roundtrip(KVRT_KV_FORMAT_F16, 0); }

/* A sampler at temperature 0.9, saved after it has drawn 10 tokens: the
 * loaded session draws the same tokens as the never-saved one. */
static void check_roundtrip_sampled(uint32_t fk, uint32_t fv) {
  int32_t prompt[PROMPT];
  float last[TM_N_VOCAB];
  float* ref_l = malloc(sizeof(float) * (N_STEPS + 10) * TM_N_VOCAB);
  float* got_l = malloc(sizeof(float) * N_STEPS * TM_N_VOCAB);
  int32_t ref_t[N_STEPS + 10], got_t[N_STEPS];
  kvrt_sampler_params sp;
  kvrt_session *r, *a, *b;
  bytes saved;
  int i, greedy_same = 1, reseeded_same = 1;
  tu_tokens(prompt, PROMPT, 5);
  kvrt_sampler_default_params(&sp);
  sp.temperature = 0.9f;
  sp.seed = 1234;

  r = tu_session(g_model, fk, fv, 256, 0);
  EXPECT_OK(kvrt_session_set_sampler(r, &sp));
  feed(r, prompt, PROMPT, 1, last);
  tu_run_steps(r, last, N_STEPS + 10, 1, ref_l, ref_t);
  kvrt_session_destroy(r);

  a = tu_session(g_model, fk, fv, 256, 0);
  EXPECT_OK(kvrt_session_set_sampler(a, &sp));
  feed(a, prompt, PROMPT, 1, last);
  tu_run_steps(a, last, 10, 1, got_l, got_t);
  assert_memory_equal(got_t, ref_t, 10 * sizeof(int32_t));
  saved = tu_save_buffer(a, NULL);
  kvrt_session_destroy(a);

  EXPECT_OK(kvrt_session_load_buffer(g_model, saved.p, saved.n, NULL, &b));
  tu_run_steps(b, ref_l + 9 * TM_N_VOCAB, N_STEPS, 1, got_l, got_t);
  assert_memory_equal(got_t, ref_t + 10, sizeof got_t);
  assert_memory_equal(got_l, ref_l + (size_t)10 * TM_N_VOCAB, sizeof(float) * N_STEPS * TM_N_VOCAB);
  kvrt_session_destroy(b);

  /* Controls: the draw really is random, and the generator's state (not
   * just its seed) is what the snapshot restores. */
  for (i = 0; i < N_STEPS; ++i)
    if (ref_t[10 + i] != tu_argmax(ref_l + (size_t)(9 + i) * TM_N_VOCAB, TM_N_VOCAB)) greedy_same = 0;
  assert_false(greedy_same);
  EXPECT_OK(kvrt_session_load_buffer(g_model, saved.p, saved.n, NULL, &b));
  EXPECT_OK(kvrt_session_set_sampler(b, &sp)); /* reseeds */
  tu_run_steps(b, ref_l + 9 * TM_N_VOCAB, N_STEPS, 1, got_l, got_t);
  for (i = 0; i < N_STEPS; ++i)
    if (got_t[i] != ref_t[10 + i]) reseeded_same = 0;
  assert_false(reseeded_same);
  kvrt_session_destroy(b);
  free(saved.p);
  free(ref_l);
  free(got_l);
}

static void test_roundtrip_sampled(void** state) {
  (void)state;
  check_roundtrip_sampled(KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16);
  check_roundtrip_sampled(KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8);
  check_roundtrip_sampled(KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q4);
}

/* An empty session, and a session after a rewind (stale bytes in its tail
 * block), round trip; equal sessions give equal bytes. */
static void test_roundtrip_empty_and_rewound(void** state) {
  int32_t t[40];
  float l1[TM_N_VOCAB], l2[TM_N_VOCAB];
  kvrt_session *e, *b, *x, *y;
  bytes s1, s2;
  (void)state;
  tu_tokens(t, 40, 3);
  e = tu_session(g_model, KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F32, 64, 0);
  s1 = tu_save_buffer(e, NULL);
  EXPECT_OK(kvrt_session_load_buffer(g_model, s1.p, s1.n, NULL, &b));
  assert_int_equal(tu_session_stats(b).n_tokens, 0);
  assert_int_equal(tu_session_stats(b).n_blocks, 0);
  feed(e, t, 20, 1, l1);
  feed(b, t, 20, 1, l2);
  tu_assert_bitwise_equal(l2, l1, TM_N_VOCAB);
  kvrt_session_destroy(b);
  kvrt_session_destroy(e);
  free(s1.p);

  /* x: 40 tokens rewound to 20; y: the same 20 tokens only. */
  x = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
  y = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
  feed(x, t, 40, 1, l1);
  EXPECT_OK(kvrt_session_rewind(x, 20));
  feed(y, t, 20, 1, l1);
  s1 = tu_save_buffer(x, NULL);
  s2 = tu_save_buffer(y, NULL);
  assert_int_equal(s1.n, s2.n);
  assert_memory_equal(s1.p, s2.p, s1.n);
  kvrt_session_destroy(x);
  kvrt_session_destroy(y);
  free(s1.p);
  free(s2.p);
}

/* Two handles on the same file agree on the fingerprint; a stream holding
 * two snapshots back to back loads both (no read past an end record). */
static void test_second_handle_and_concatenated_stream(void** state) {
  kvrt_model* m2 = tu_model(g_rt);
  int32_t t[20];
  float l[TM_N_VOCAB];
  kvrt_session *s, *b1 = NULL, *b2 = NULL;
  bytes one, two = {0};
  reader r;
  (void)state;
  tu_tokens(t, 20, 9);
  s = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
  feed(s, t, 20, 1, l);
  one = tu_save_buffer(s, NULL);
  EXPECT_OK(kvrt_session_load_buffer(m2, one.p, one.n, NULL, &b1));
  kvrt_session_destroy(b1);
  tu_bytes_append(&two, one.p, one.n);
  tu_bytes_append(&two, one.p, one.n);
  r = make_reader(&two, 3000);
  EXPECT_OK(kvrt_session_load_stream(m2, read_cb, &r, NULL, &b1));
  assert_int_equal(r.pos, one.n);
  EXPECT_OK(kvrt_session_load_stream(m2, read_cb, &r, NULL, &b2));
  assert_int_equal(r.pos, two.n);
  kvrt_session_destroy(b1);
  kvrt_session_destroy(b2);
  /* The buffer loader wants exactly one snapshot. */
  EXPECT_ERR(kvrt_session_load_buffer(m2, two.p, two.n, NULL, &b1), KVRT_ERR_CORRUPT);
  assert_null(b1);
  kvrt_session_destroy(s);
  kvrt_model_destroy(m2);
  free(one.p);
  free(two.p);
}

/* ---- bad input ---------------------------------------------------------- */

/* A small valid snapshot of 20 f16 tokens (two sections with data). */
static bytes small_snapshot(uint32_t fmt, size_t n_tokens) {
  int32_t t[64];
  float l[TM_N_VOCAB];
  kvrt_session* s = tu_session(g_model, fmt, fmt, 64, 0);
  bytes b;
  tu_tokens(t, n_tokens, 21);
  feed(s, t, n_tokens, 1, l);
  b = tu_save_buffer(s, NULL);
  kvrt_session_destroy(s);
  return b;
}

static uint32_t rd32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Walks the layout of docs/snapshot-format.md and collects the offset of
 * every structural boundary; checks that the walk ends exactly at the end. */
static size_t boundaries(const bytes* b, size_t* out, size_t cap) {
  size_t n = 0, off, sec;
  uint32_t hlen;
#define ADD(x) do { assert_true(n < cap); out[n++] = (x); } while (0)
  ADD(0);
  ADD(8);
  ADD(24);
  hlen = rd32(b->p + 20);
  assert_int_equal(hlen, 144);
  off = 24 + hlen;
  for (sec = 0; sec < 2; ++sec) {
    ADD(off);                 /* descriptor */
    assert_int_equal(rd32(b->p + off), sec + 1);
    off += 16;
    for (;;) {
      uint32_t len;
      ADD(off);               /* chunk length */
      len = rd32(b->p + off);
      off += 4;
      if (len == 0) break;
      ADD(off);               /* chunk data */
      off += len;
    }
    ADD(off);                 /* raw-data checksum */
    ADD(off + 8);             /* stored-bytes checksum */
    off += 16;
  }
  ADD(off);                   /* end record */
  assert_int_equal(rd32(b->p + off), 0);
  off += 16;
  assert_int_equal(off, b->n);
  ADD(b->n - 1);
#undef ADD
  return n;
}

/* Loads `d` through the buffer and the stream loaders: both must return
 * `want`, set no session and leave no block in use. */
static void expect_load_fails(const uint8_t* d, size_t n, kvrt_status want, const char* what) {
  kvrt_session* s = (kvrt_session*)&s;
  uint64_t before = blocks_used();
  kvrt_status st = kvrt_session_load_buffer(g_model, d, n, NULL, &s);
  bytes b;
  reader r;
  if (st != want)
    fail_msg("%s: buffer load returned %d (%s), expected %d; '%s'", what, (int)st, kvrt_status_string(st),
             (int)want, kvrt_last_error());
  assert_null(s);
  assert_true(kvrt_last_error()[0] != '\0');
  b.p = (uint8_t*)d;
  b.n = n;
  r = make_reader(&b, 777);
  s = (kvrt_session*)&s;
  st = kvrt_session_load_stream(g_model, read_cb, &r, NULL, &s);
  if (st != want)
    fail_msg("%s: stream load returned %d (%s), expected %d; '%s'", what, (int)st, kvrt_status_string(st),
             (int)want, kvrt_last_error());
  assert_null(s);
  assert_int_equal(blocks_used(), before);
}

static void test_empty_and_truncated(void** state) {
  bytes b = small_snapshot(KVRT_KV_FORMAT_F16, 20);
  size_t cuts[256], n, i;
  uint32_t x = 99;
  char path[600];
  kvrt_session* s = NULL;
  (void)state;
  expect_load_fails(NULL, 0, KVRT_ERR_CORRUPT, "empty buffer");
  path_in_dir(path, sizeof path, "empty.kvs");
  tu_write_file(path, "", 0);
  EXPECT_ERR(kvrt_session_load(g_model, path, NULL, &s), KVRT_ERR_CORRUPT);
  assert_null(s);

  n = boundaries(&b, cuts, 256);
  assert_true(n >= 14);
  for (i = 0; i < n; ++i) {
    char what[64];
    snprintf(what, sizeof what, "cut at boundary %zu", cuts[i]);
    expect_load_fails(b.p, cuts[i], KVRT_ERR_CORRUPT, what);
  }
  for (i = 0; i < 50; ++i) {
    char what[64];
    size_t cut;
    x = x * 1664525u + 1013904223u;
    cut = (x >> 4) % b.n;
    snprintf(what, sizeof what, "cut at %zu", cut);
    expect_load_fails(b.p, cut, KVRT_ERR_CORRUPT, what);
  }
  /* A truncated file, too. */
  tu_write_file(path, b.p, b.n - 5);
  EXPECT_ERR(kvrt_session_load(g_model, path, NULL, &s), KVRT_ERR_CORRUPT);
  free(b.p);
}

/* Every single-bit flip anywhere is refused: CORRUPT, except in the version
 * and required-flags words, where it may also read as a newer version. */
static void test_flipped_bits(void** state) {
  uint32_t fmt;
  (void)state;
  for (fmt = KVRT_KV_FORMAT_F32; fmt <= KVRT_KV_FORMAT_F16; ++fmt) {
    bytes b = small_snapshot(fmt, fmt == KVRT_KV_FORMAT_F32 ? 5 : 20);
    size_t i;
    uint64_t before = blocks_used();
    for (i = 0; i < b.n; ++i) {
      kvrt_session* s = NULL;
      kvrt_status st;
      uint8_t bit = (uint8_t)(1u << (i % 8));
      b.p[i] ^= bit;
      st = kvrt_session_load_buffer(g_model, b.p, b.n, NULL, &s);
      b.p[i] ^= bit;
      if (i >= 8 && i < 16) {
        if (st != KVRT_ERR_CORRUPT && st != KVRT_ERR_VERSION)
          fail_msg("flip at %zu (version/flags): status %d '%s'", i, (int)st, kvrt_last_error());
      } else if (st != KVRT_ERR_CORRUPT) {
        fail_msg("flip of bit %u at byte %zu of %zu: status %d (%s) '%s'", (unsigned)(i % 8), i, b.n,
                 (int)st, kvrt_status_string(st), kvrt_last_error());
      }
      assert_null(s);
    }
    assert_int_equal(blocks_used(), before);
    free(b.p);
  }
}

static void put32(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

static void test_magic_and_version(void** state) {
  bytes b = small_snapshot(KVRT_KV_FORMAT_F16, 20);
  (void)state;
  b.p[0] = 'X';
  expect_load_fails(b.p, b.n, KVRT_ERR_CORRUPT, "wrong magic");
  b.p[0] = 'K';
  assert_int_equal(rd32(b.p + 8), 1);
  put32(b.p + 8, 2);
  expect_load_fails(b.p, b.n, KVRT_ERR_VERSION, "version 2");
  assert_non_null(strstr(kvrt_last_error(), "2"));
  put32(b.p + 8, 0xffffffffu);
  expect_load_fails(b.p, b.n, KVRT_ERR_VERSION, "version 2^32-1");
  put32(b.p + 8, 1);
  put32(b.p + 12, 0x80u);
  expect_load_fails(b.p, b.n, KVRT_ERR_VERSION, "unknown required flag");
  put32(b.p + 12, 0);
  /* Restored: loads again. */
  {
    kvrt_session* s = NULL;
    EXPECT_OK(kvrt_session_load_buffer(g_model, b.p, b.n, NULL, &s));
    kvrt_session_destroy(s);
  }
  free(b.p);
}

/* A model of the same shapes with one weight byte changed. */
static void test_other_model(void** state) {
  bytes gg = tu_read_file(tu_model_path());
  char path[600];
  kvrt_model* other = NULL;
  kvrt_session* s = NULL;
  bytes snap = small_snapshot(KVRT_KV_FORMAT_F16, 20), snap2;
  kvrt_model_info i1, i2;
  (void)state;
  gg.p[gg.n * 3 / 4] ^= 0x01; /* deep in the tensor data: a float's low mantissa bit */
  path_in_dir(path, sizeof path, "other.gguf");
  tu_write_file(path, gg.p, gg.n);
  EXPECT_OK(kvrt_model_load(g_rt, path, NULL, &other));
  memset(&i1, 0, sizeof i1);
  memset(&i2, 0, sizeof i2);
  i1.struct_size = i2.struct_size = sizeof i1;
  EXPECT_OK(kvrt_model_get_info(g_model, &i1));
  EXPECT_OK(kvrt_model_get_info(other, &i2));
  assert_int_equal(i1.n_params, i2.n_params);
  assert_int_equal(i1.n_layer, i2.n_layer);
  EXPECT_ERR(kvrt_session_load_buffer(other, snap.p, snap.n, NULL, &s), KVRT_ERR_MODEL_MISMATCH);
  assert_null(s);
  /* And the other way round; each model takes its own snapshots. */
  s = tu_session(other, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
  snap2 = tu_save_buffer(s, NULL);
  kvrt_session_destroy(s);
  s = NULL;
  EXPECT_ERR(kvrt_session_load_buffer(g_model, snap2.p, snap2.n, NULL, &s), KVRT_ERR_MODEL_MISMATCH);
  EXPECT_OK(kvrt_session_load_buffer(other, snap2.p, snap2.n, NULL, &s));
  kvrt_session_destroy(s);
  kvrt_model_destroy(other);
  unlink(path);
  free(gg.p);
  free(snap.p);
  free(snap2.p);
}

/* Another block size: refused naming both; a budget too small: OUT_OF_MEMORY
 * with nothing left allocated. */
static void test_block_size_and_budget(void** state) {
  bytes b = small_snapshot(KVRT_KV_FORMAT_F32, 40); /* 3 blocks of 16 */
  kvrt_runtime* rt32 = tu_runtime(0, 32, 1);
  kvrt_runtime* tiny = tu_runtime(2 * 16 * TM_KV_BYTES_PER_TOKEN_F32, 16, 1);
  kvrt_model *m32 = tu_model(rt32), *mt = tu_model(tiny);
  kvrt_session* s = NULL;
  (void)state;
  EXPECT_ERR(kvrt_session_load_buffer(m32, b.p, b.n, NULL, &s), KVRT_ERR_UNSUPPORTED);
  assert_non_null(strstr(kvrt_last_error(), "16"));
  assert_non_null(strstr(kvrt_last_error(), "32"));
  assert_null(s);
  EXPECT_ERR(kvrt_session_load_buffer(mt, b.p, b.n, NULL, &s), KVRT_ERR_OUT_OF_MEMORY);
  assert_null(s);
  assert_int_equal(tu_runtime_stats(tiny).n_blocks_used, 0);
  assert_int_equal(tu_runtime_stats(tiny).kv_used_bytes, 0);
  kvrt_model_destroy(m32);
  kvrt_model_destroy(mt);
  kvrt_runtime_destroy(rt32);
  kvrt_runtime_destroy(tiny);
  free(b.p);
}

static void test_callbacks_fail(void** state) {
  bytes b = small_snapshot(KVRT_KV_FORMAT_F16, 40);
  kvrt_session* s = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
  int32_t t[40];
  float l[TM_N_VOCAB];
  int calls = 0, k;
  writer w = {{0}, 0, -1};
  (void)state;
  tu_tokens(t, 40, 21);
  feed(s, t, 40, 1, l);
  EXPECT_OK(kvrt_session_save_stream(s, write_cb, &w, NULL));
  calls = w.calls;
  assert_true(calls >= 4);
  assert_int_equal(w.out.n, b.n);
  free(w.out.p);
  /* Failing at the first, a middle and the last call. */
  for (k = 0; k < 3; ++k) {
    writer f = {{0}, 0, k == 0 ? 0 : k == 1 ? calls / 2 : calls - 1};
    kvrt_session* back = NULL;
    reader r;
    EXPECT_ERR(kvrt_session_save_stream(s, write_cb, &f, NULL), KVRT_ERR_IO);
    assert_int_equal(f.calls, f.fail_after);
    /* What was written is incomplete and is refused. */
    r = make_reader(&f.out, 500);
    EXPECT_ERR(kvrt_session_load_stream(g_model, read_cb, &r, NULL, &back), KVRT_ERR_CORRUPT);
    assert_null(back);
    free(f.out.p);
  }
  /* The session is intact: it still saves the same bytes. */
  {
    bytes again = tu_save_buffer(s, NULL);
    assert_int_equal(again.n, b.n);
    assert_memory_equal(again.p, b.p, b.n);
    free(again.p);
  }
  /* Read failures at the start, in the header, in the data. */
  {
    size_t at[3] = {0, 30, b.n / 2};
    for (k = 0; k < 3; ++k) {
      reader r = make_reader(&b, 100);
      kvrt_session* back = NULL;
      uint64_t before = blocks_used();
      r.fail_at = at[k];
      EXPECT_ERR(kvrt_session_load_stream(g_model, read_cb, &r, NULL, &back), KVRT_ERR_IO);
      assert_null(back);
      assert_int_equal(blocks_used(), before);
    }
  }
  kvrt_session_destroy(s);
  free(b.p);
}

/* A read callback that claims more bytes than asked. */
static int64_t overclaim_cb(void* user, void* d, size_t n) {
  (void)user;
  memset(d, 0, n);
  return (int64_t)n + 1;
}

static void test_buffer_too_small(void** state) {
  bytes b = small_snapshot(KVRT_KV_FORMAT_F16, 20);
  kvrt_session* s = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
  int32_t t[20];
  float l[TM_N_VOCAB];
  size_t size = 0;
  uint8_t* small;
  (void)state;
  tu_tokens(t, 20, 21);
  feed(s, t, 20, 1, l);
  EXPECT_OK(kvrt_session_save_buffer(s, NULL, 0, &size, NULL));
  assert_int_equal(size, b.n);
  small = malloc(b.n);
  size = 0;
  EXPECT_ERR(kvrt_session_save_buffer(s, small, b.n - 1, &size, NULL), KVRT_ERR_BUFFER_TOO_SMALL);
  assert_int_equal(size, b.n);
  size = 0;
  EXPECT_ERR(kvrt_session_save_buffer(s, small, 10, &size, NULL), KVRT_ERR_BUFFER_TOO_SMALL);
  assert_int_equal(size, b.n);
  EXPECT_OK(kvrt_session_save_buffer(s, small, b.n, &size, NULL));
  assert_memory_equal(small, b.p, b.n);
  /* A higher level gives another exact size that also holds. */
  {
    kvrt_snapshot_params p;
    size_t s19 = 0, w19 = 0;
    uint8_t* big;
    kvrt_snapshot_default_params(&p);
    p.compression_level = 19;
    EXPECT_OK(kvrt_session_save_buffer(s, NULL, 0, &s19, &p));
    big = malloc(s19);
    EXPECT_OK(kvrt_session_save_buffer(s, big, s19, &w19, &p));
    assert_int_equal(w19, s19);
    free(big);
  }
  kvrt_session_destroy(s);
  free(small);
  free(b.p);
}

static void test_null_and_params(void** state) {
  bytes b = small_snapshot(KVRT_KV_FORMAT_F16, 20);
  kvrt_session* s = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
  kvrt_session* out = (kvrt_session*)&out;
  kvrt_snapshot_params p;
  writer w = {{0}, 0, -1};
  reader r = make_reader(&b, 100);
  size_t size = 0;
  uint8_t buf[16];
  char path[600];
  (void)state;
  path_in_dir(path, sizeof path, "null.kvs");
  kvrt_snapshot_default_params(NULL);
  kvrt_snapshot_default_params(&p);
  assert_int_equal(p.struct_size, sizeof p);
  assert_int_equal(p.compression_level, 3);
  assert_int_equal(p.reserved0, 0);
  assert_int_equal(p.reserved1, 0);

  EXPECT_ERR(kvrt_session_save(NULL, path, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_save(s, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_load(NULL, path, NULL, &out), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(out);
  EXPECT_ERR(kvrt_session_load(g_model, NULL, NULL, &out), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_load(g_model, path, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_save_buffer(NULL, NULL, 0, &size, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_save_buffer(s, NULL, 0, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_save_buffer(s, NULL, 16, &size, NULL), KVRT_ERR_INVALID_ARGUMENT);
  out = (kvrt_session*)&out;
  EXPECT_ERR(kvrt_session_load_buffer(NULL, b.p, b.n, NULL, &out), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(out);
  EXPECT_ERR(kvrt_session_load_buffer(g_model, NULL, 10, NULL, &out), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_load_buffer(g_model, b.p, b.n, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_save_stream(NULL, write_cb, &w, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_save_stream(s, NULL, &w, NULL), KVRT_ERR_INVALID_ARGUMENT);
  out = (kvrt_session*)&out;
  EXPECT_ERR(kvrt_session_load_stream(NULL, read_cb, &r, NULL, &out), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(out);
  EXPECT_ERR(kvrt_session_load_stream(g_model, NULL, &r, NULL, &out), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_load_stream(g_model, read_cb, &r, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  assert_int_equal(w.calls, 0);
  assert_int_equal(r.pos, 0);

  /* Parameter structs. */
  p.struct_size = 4;
  EXPECT_ERR(kvrt_session_save_buffer(s, buf, sizeof buf, &size, &p), KVRT_ERR_STRUCT_SIZE);
  EXPECT_ERR(kvrt_session_load_buffer(g_model, b.p, b.n, &p, &out), KVRT_ERR_STRUCT_SIZE);
  kvrt_snapshot_default_params(&p);
  p.reserved1 = 1;
  EXPECT_ERR(kvrt_session_save_stream(s, write_cb, &w, &p), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_session_load_buffer(g_model, b.p, b.n, &p, &out), KVRT_ERR_INVALID_ARGUMENT);
  kvrt_snapshot_default_params(&p);
  p.compression_level = 1000;
  EXPECT_ERR(kvrt_session_save_buffer(s, NULL, 0, &size, &p), KVRT_ERR_INVALID_ARGUMENT);
  assert_int_equal(w.calls, 0);
  /* A read callback that returns more than asked. */
  EXPECT_ERR(kvrt_session_load_stream(g_model, overclaim_cb, NULL, NULL, &out), KVRT_ERR_IO);
  /* Missing file, folder that does not exist. */
  EXPECT_ERR(kvrt_session_load(g_model, path, NULL, &out), KVRT_ERR_IO);
  {
    char bad[700];
    snprintf(bad, sizeof bad, "%s/no-such-folder/x.kvs", g_dir);
    EXPECT_ERR(kvrt_session_save(s, bad, NULL), KVRT_ERR_IO);
  }
  kvrt_session_destroy(s);
  free(b.p);
}

/* A quantized session's snapshot: only full blocks in the KV section, the
 * f16 tail in a stage section; every flipped bit is refused, and inspect
 * reports the sections without the model. */
static void test_quantized_sections_and_flips(void** state) {
  kvrt_snapshot_info info;
  uint64_t per_block = 0, stage_bytes;
  size_t i;
  uint32_t fk;
  (void)state;
  for (fk = KVRT_KV_FORMAT_Q8; fk <= KVRT_KV_FORMAT_Q4; ++fk) {
    bytes b = small_snapshot(fk, 20); /* one full block, 4 tokens staged */
    uint64_t before = blocks_used();
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    EXPECT_OK(kvrt_snapshot_inspect_buffer(b.p, b.n, NULL, &info));
    assert_int_equal(info.required_flags, 1);
    assert_int_equal(info.kv_format_k, fk);
    assert_int_equal(info.n_tokens, 20);
    EXPECT_OK(kvrt_model_kv_bytes_per_token(g_model, fk, fk, &per_block));
    assert_int_equal(info.block_bytes, 16 * per_block); /* 380 and 280 bytes a token (docs/quantization.md) */
    assert_int_equal(per_block, fk == KVRT_KV_FORMAT_Q8 ? 380 : 280);
    assert_int_equal(info.kv_raw_bytes, info.block_bytes); /* the one full block */
    stage_bytes = (uint64_t)TM_N_LAYER * TM_N_HEAD_KV * 16 * TM_HEAD_DIM * 4;
    assert_int_equal(info.stage_raw_bytes, stage_bytes);
    assert_int_equal(info.total_bytes, b.n);
    assert_int_equal(info.total_bytes, 24 + 144 + info.tokens_stored_bytes + info.kv_stored_bytes +
                                           info.stage_stored_bytes + 16);
    for (i = 0; i < b.n; ++i) {
      kvrt_session* s = NULL;
      kvrt_status st;
      uint8_t bit = (uint8_t)(1u << (i % 8));
      b.p[i] ^= bit;
      st = kvrt_session_load_buffer(g_model, b.p, b.n, NULL, &s);
      if (st == KVRT_OK || (st != KVRT_ERR_CORRUPT && !(i >= 8 && i < 16 && st == KVRT_ERR_VERSION)))
        fail_msg("flip of bit %u at byte %zu of %zu: status %d (%s) '%s'", (unsigned)(i % 8), i, b.n, (int)st,
                 kvrt_status_string(st), kvrt_last_error());
      assert_null(s);
      st = kvrt_snapshot_inspect_buffer(b.p, b.n, NULL, &info);
      if (st == KVRT_OK) fail_msg("inspect accepted a flip at byte %zu", i);
      b.p[i] ^= bit;
    }
    assert_int_equal(blocks_used(), before);
    /* Cut just before the end record: the stage section was the last read. */
    expect_load_fails(b.p, b.n - 16, KVRT_ERR_CORRUPT, "no end record after the stage");
    free(b.p);
  }
}

/* kvrt_snapshot_inspect(): header fields and sizes of a good file, with and
 * without the model; a damaged section still reports the header; the
 * argument checks. */
static void test_inspect(void** state) {
  kvrt_session* s = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
  kvrt_sampler_params sp;
  kvrt_snapshot_info info, small;
  int32_t t[40];
  float l[TM_N_VOCAB];
  char path[600];
  bytes b;
  (void)state;
  kvrt_sampler_default_params(&sp);
  sp.temperature = 0.5f;
  sp.top_k = 7;
  sp.top_p = 0.75f;
  sp.seed = 99;
  EXPECT_OK(kvrt_session_set_sampler(s, &sp));
  tu_tokens(t, 40, 8);
  feed(s, t, 40, 1, l);
  path_in_dir(path, sizeof path, "inspect.kvs");
  EXPECT_OK(kvrt_session_save(s, path, NULL));
  b = tu_read_file(path);
  kvrt_session_destroy(s);

  memset(&info, 0xAB, sizeof info);
  info.struct_size = sizeof info;
  EXPECT_OK(kvrt_snapshot_inspect(path, NULL, &info));
  assert_int_equal(info.format_version, 1);
  assert_int_equal(info.required_flags, 0);
  assert_int_equal(info.optional_flags, 0);
  assert_int_equal(info.n_layer, TM_N_LAYER);
  assert_int_equal(info.n_head_kv, TM_N_HEAD_KV);
  assert_int_equal(info.head_dim, TM_HEAD_DIM);
  assert_int_equal(info.n_vocab, TM_N_VOCAB);
  assert_int_equal(info.block_tokens, 16);
  assert_int_equal(info.kv_format_k, KVRT_KV_FORMAT_F16);
  assert_int_equal(info.kv_format_v, KVRT_KV_FORMAT_F16);
  assert_int_equal(info.n_ctx, 64);
  assert_int_equal(info.n_tokens, 40);
  assert_true(info.temperature == 0.5f);
  assert_int_equal(info.top_k, 7);
  assert_true(info.top_p == 0.75f);
  assert_int_equal(info.seed, 99);
  assert_int_equal(info.block_bytes, (uint64_t)TM_N_LAYER * TM_N_HEAD_KV * 16 * TM_HEAD_DIM * 4);
  assert_int_equal(info.tokens_raw_bytes, 160);
  assert_int_equal(info.kv_raw_bytes, 3 * info.block_bytes);
  assert_int_equal(info.kv_plane_width, 2);
  assert_int_equal(info.stage_raw_bytes, 0);
  assert_int_equal(info.stage_stored_bytes, 0);
  assert_int_equal(info.total_bytes, b.n);
  assert_int_equal(info.total_bytes, 24 + 144 + info.tokens_stored_bytes + info.kv_stored_bytes + 16);
  assert_true(info.fingerprint_lo != 0 || info.fingerprint_hi != 0);
  EXPECT_OK(kvrt_snapshot_inspect(path, g_model, &info));
  EXPECT_OK(kvrt_snapshot_inspect_buffer(b.p, b.n, g_model, &info));
  assert_int_equal(info.n_tokens, 40);

  /* A flipped byte in the KV section's data: refused, header still read. */
  b.p[24 + 144 + info.tokens_stored_bytes + 40] ^= 0x10;
  EXPECT_ERR(kvrt_snapshot_inspect_buffer(b.p, b.n, NULL, &info), KVRT_ERR_CORRUPT);
  assert_non_null(strstr(kvrt_last_error(), "KV section"));
  assert_int_equal(info.n_tokens, 40);
  assert_true(info.tokens_stored_bytes > 0);
  assert_int_equal(info.kv_stored_bytes, 0);
  assert_int_equal(info.total_bytes, 0);
  b.p[24 + 144 + info.tokens_stored_bytes + 40] ^= 0x10;
  /* A damaged header: nothing reported. */
  b.p[30] ^= 1;
  EXPECT_ERR(kvrt_snapshot_inspect_buffer(b.p, b.n, NULL, &info), KVRT_ERR_CORRUPT);
  assert_int_equal(info.n_tokens, 0);
  assert_int_equal(info.format_version, 0);
  b.p[30] ^= 1;
  /* Trailing bytes, a missing file, bad arguments. */
  EXPECT_ERR(kvrt_snapshot_inspect_buffer(b.p, b.n - 1, NULL, &info), KVRT_ERR_CORRUPT);
  {
    uint8_t* longer = malloc(b.n + 1);
    memcpy(longer, b.p, b.n);
    longer[b.n] = 0;
    EXPECT_ERR(kvrt_snapshot_inspect_buffer(longer, b.n + 1, NULL, &info), KVRT_ERR_CORRUPT);
    free(longer);
  }
  path_in_dir(path, sizeof path, "missing.kvs");
  EXPECT_ERR(kvrt_snapshot_inspect(path, NULL, &info), KVRT_ERR_IO);
  EXPECT_ERR(kvrt_snapshot_inspect(NULL, NULL, &info), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_snapshot_inspect_buffer(b.p, b.n, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_snapshot_inspect_buffer(NULL, 10, NULL, &info), KVRT_ERR_INVALID_ARGUMENT);
  small = info;
  small.struct_size = 8;
  EXPECT_ERR(kvrt_snapshot_inspect_buffer(b.p, b.n, NULL, &small), KVRT_ERR_STRUCT_SIZE);
  free(b.p);
}

/* ---- crash safety ------------------------------------------------------- */

static int count_temp_files(const char* prefix, off_t* size) {
  DIR* d = opendir(g_dir);
  struct dirent* e;
  int n = 0;
  char p[1024];
  if (!d) return -1;
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
    ++n;
    if (size) {
      struct stat st;
      snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
      *size = stat(p, &st) == 0 ? st.st_size : 0;
    }
  }
  closedir(d);
  return n;
}

static void remove_temp_files(const char* prefix) {
  DIR* d = opendir(g_dir);
  struct dirent* e;
  char p[1024];
  if (!d) return;
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
    snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
    unlink(p);
  }
  closedir(d);
}

/* The child of the kill test: a long session saved slowly over `path`.
 * Plain exits only: no test framework in a forked child. */
static void child_save_forever(const char* path) {
  kvrt_runtime_params rp;
  kvrt_runtime* rt = NULL;
  kvrt_model* m = NULL;
  kvrt_session_params sp;
  kvrt_session* s = NULL;
  kvrt_snapshot_params p;
  static int32_t t[2048];
  kvrt_runtime_default_params(&rp);
  rp.n_threads = 1;
  if (kvrt_runtime_create(&rp, &rt) != KVRT_OK) _exit(10);
  if (kvrt_model_load(rt, tu_model_path(), NULL, &m) != KVRT_OK) _exit(11);
  kvrt_session_default_params(&sp);
  sp.kv_format_k = sp.kv_format_v = KVRT_KV_FORMAT_F32;
  sp.n_ctx = 2048;
  sp.max_batch = 256;
  if (kvrt_session_create(m, &sp, &s) != KVRT_OK) _exit(12);
  tu_tokens(t, 2048, 77);
  if (kvrt_decode_step(s, t, 2048, NULL, 0) != KVRT_OK) _exit(13);
  kvrt_snapshot_default_params(&p);
  p.compression_level = 19; /* slow, so that the kill lands mid-save */
  for (;;)
    if (kvrt_session_save(s, path, &p) != KVRT_OK) _exit(14);
}

static void test_killed_mid_save(void** state) {
  char path[600];
  bytes before, after;
  pid_t pid;
  int status = 0, waited_ms = 0, killed = 0;
  off_t tmp_size = 0;
  kvrt_session* s;
  (void)state;
  path_in_dir(path, sizeof path, "victim.kvs");
  {
    bytes b = small_snapshot(KVRT_KV_FORMAT_F16, 20);
    tu_write_file(path, b.p, b.n); /* the previous snapshot */
    free(b.p);
  }
  before = tu_read_file(path);
  fflush(NULL);
  pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) child_save_forever(path);
  /* Wait until the child's temporary file has data, then kill it. */
  while (waited_ms < 120000) {
    struct timespec ts = {0, 1000000};
    tmp_size = 0;
    if (count_temp_files(".victim.kvs.tmp.", &tmp_size) > 0 && tmp_size > 0) {
      kill(pid, SIGKILL);
      killed = 1;
      break;
    }
    if (waitpid(pid, &status, WNOHANG) == pid) break;
    nanosleep(&ts, NULL);
    ++waited_ms;
  }
  if (!killed) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    fail_msg("the child never started writing (status %d, %d ms)", status, waited_ms);
  }
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  /* The target is the previous snapshot, byte for byte, and still loads. */
  after = tu_read_file(path);
  assert_int_equal(after.n, before.n);
  assert_memory_equal(after.p, before.p, before.n);
  s = NULL;
  EXPECT_OK(kvrt_session_load(g_model, path, NULL, &s));
  assert_int_equal(tu_session_stats(s).n_tokens, 20);
  kvrt_session_destroy(s);
  /* The killed save left only its temporary file. */
  assert_int_equal(count_temp_files(".victim.kvs.tmp.", NULL), 1);
  remove_temp_files(".victim.kvs.tmp.");
  free(before.p);
  free(after.p);
}

/* A save that fails at the rename (the target is a folder) removes its
 * temporary file and leaves the folder as it was. */
static void test_failed_rename_cleans_up(void** state) {
  char path[600];
  kvrt_session* s = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
  int32_t t[20];
  float l[TM_N_VOCAB];
  struct stat st;
  (void)state;
  tu_tokens(t, 20, 1);
  feed(s, t, 20, 1, l);
  path_in_dir(path, sizeof path, "folder.kvs");
  assert_int_equal(mkdir(path, 0755), 0);
  {
    char inner[700];
    snprintf(inner, sizeof inner, "%s/keep", path);
    tu_write_file(inner, "x", 1);
    EXPECT_ERR(kvrt_session_save(s, path, NULL), KVRT_ERR_IO);
    assert_int_equal(stat(inner, &st), 0);
    assert_int_equal(st.st_size, 1);
    unlink(inner);
  }
  assert_int_equal(count_temp_files(".folder.kvs.tmp.", NULL), 0);
  assert_int_equal(stat(path, &st), 0);
  assert_true(S_ISDIR(st.st_mode));
  rmdir(path);
  /* A good save replaces an old file and leaves no temporary file. */
  {
    char file[600];
    bytes b;
    kvrt_session* back = NULL;
    path_in_dir(file, sizeof file, "good.kvs");
    tu_write_file(file, "old contents", 12);
    EXPECT_OK(kvrt_session_save(s, file, NULL));
    assert_int_equal(count_temp_files(".good.kvs.tmp.", NULL), 0);
    b = tu_read_file(file);
    assert_true(b.n > 12);
    assert_memory_equal(b.p, "KVRTSNAP", 8);
    EXPECT_OK(kvrt_session_load(g_model, file, NULL, &back));
    kvrt_session_destroy(back);
    /* Data after the end record of a file is refused. */
    tu_bytes_append(&b, "junk", 4);
    tu_write_file(file, b.p, b.n);
    EXPECT_ERR(kvrt_session_load(g_model, file, NULL, &back), KVRT_ERR_CORRUPT);
    free(b.p);
  }
  kvrt_session_destroy(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip_f32_prefill),
      cmocka_unit_test(test_roundtrip_f32_stepwise),
      cmocka_unit_test(test_roundtrip_f16_prefill),
      cmocka_unit_test(test_roundtrip_f16_stepwise),
      cmocka_unit_test(test_roundtrip_sampled),
      cmocka_unit_test(test_roundtrip_empty_and_rewound),
      cmocka_unit_test(test_second_handle_and_concatenated_stream),
      cmocka_unit_test(test_empty_and_truncated),
      cmocka_unit_test(test_flipped_bits),
      cmocka_unit_test(test_magic_and_version),
      cmocka_unit_test(test_other_model),
      cmocka_unit_test(test_block_size_and_budget),
      cmocka_unit_test(test_callbacks_fail),
      cmocka_unit_test(test_buffer_too_small),
      cmocka_unit_test(test_null_and_params),
      cmocka_unit_test(test_roundtrip_q8),
      cmocka_unit_test(test_roundtrip_q4),
      cmocka_unit_test(test_roundtrip_q8_q4),
      cmocka_unit_test(test_quantized_sections_and_flips),
      cmocka_unit_test(test_inspect),
      cmocka_unit_test(test_killed_mid_save),
      cmocka_unit_test(test_failed_rename_cleans_up),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
