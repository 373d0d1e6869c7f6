/* Suspend and resume through kvrt.h: a suspended session gives its blocks
 * back to the pool and continues bit for bit after an explicit or a
 * transparent resume, in every KV format, from host memory or a spill file;
 * a resume that does not fit fails cleanly and succeeds later; spill files
 * live exactly as long as the suspension, and one deleted or changed behind
 * the library's back is refused without losing the session. */
#include "api-test-util.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <unistd.h>

#define N_STEPS 64
#define V TM_N_VOCAB

static kvrt_runtime* g_rt;
static kvrt_model* g_model;
static char g_dir[512];   /* scratch folder of this test */
static char g_spill[600]; /* the spill folder inside it */

/* ---- helpers ------------------------------------------------------------ */

typedef tu_bytes bytes;

static float* alloc_logits(size_t n_rows) {
  float* p = (float*)malloc(sizeof(float) * V * n_rows);
  assert_non_null(p);
  return p;
}

static uint64_t blocks_used(void) { return tu_runtime_stats(g_rt).n_blocks_used; }

static kvrt_suspend_params spill_params(void) {
  kvrt_suspend_params p;
  kvrt_suspend_default_params(&p);
  p.spill_dir = g_spill;
  return p;
}

/* Spill files in the spill folder; the path of the last one in `path`. */
static int spill_files(char* path, size_t cap) {
  DIR* d = opendir(g_spill);
  struct dirent* e;
  int n = 0;
  if (!d) fail_msg("cannot open %s: %s", g_spill, strerror(errno));
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (strncmp(e->d_name, "kvrt-suspend-", 13) != 0) fail_msg("unexpected file %s", e->d_name);
    if (path) snprintf(path, cap, "%s/%s", g_spill, e->d_name);
    ++n;
  }
  closedir(d);
  return n;
}

static kvrt_snapshot_params level(int32_t l) {
  kvrt_snapshot_params p;
  kvrt_snapshot_default_params(&p);
  p.compression_level = l;
  return p;
}

/* The stats of a suspended session: no blocks, the tokens and the rest as
 * when it was live, and the held bytes. */
static void expect_suspended(const kvrt_session* s, const kvrt_session_stats* live, int spilled) {
  kvrt_session_stats st = tu_session_stats(s);
  assert_int_equal(st.suspended, 1);
  assert_int_equal(st.spilled, spilled);
  assert_true(st.suspended_bytes > 0);
  assert_int_equal(st.n_blocks, 0);
  assert_int_equal(st.kv_bytes, 0);
  assert_int_equal(st.n_tokens, live->n_tokens);
  assert_int_equal(st.n_ctx, live->n_ctx);
  assert_int_equal(st.block_tokens, live->block_tokens);
  assert_int_equal(st.kv_format_k, live->kv_format_k);
  assert_int_equal(st.kv_format_v, live->kv_format_v);
  assert_int_equal(st.kv_bytes_per_token, live->kv_bytes_per_token);
}

static void expect_live(const kvrt_session* s, const kvrt_session_stats* before) {
  kvrt_session_stats st = tu_session_stats(s);
  assert_int_equal(st.suspended, 0);
  assert_int_equal(st.spilled, 0);
  assert_int_equal(st.suspended_bytes, 0);
  assert_int_equal(st.n_tokens, before->n_tokens);
  assert_int_equal(st.n_blocks, before->n_blocks);
  assert_int_equal(st.kv_bytes, before->kv_bytes);
}

/* ---- fixtures ----------------------------------------------------------- */

static int group_setup(void** state) {
  const char* tmp = getenv("TMPDIR");
  (void)state;
  snprintf(g_dir, sizeof g_dir, "%s/kvrt-suspend-test-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) return -1;
  snprintf(g_spill, sizeof g_spill, "%s/spill", g_dir);
  if (mkdir(g_spill, 0700) != 0) return -1;
  g_rt = tu_runtime(0, 16, 2);
  g_model = tu_model(g_rt);
  return 0;
}

static void remove_dir(const char* dir) {
  DIR* d = opendir(dir);
  struct dirent* e;
  char p[1024];
  if (d) {
    while ((e = readdir(d)) != NULL) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
      if (unlink(p) != 0) remove_dir(p);
    }
    closedir(d);
  }
  rmdir(dir);
}

static int group_teardown(void** state) {
  (void)state;
  kvrt_model_destroy(g_model);
  kvrt_runtime_destroy(g_rt);
  remove_dir(g_dir);
  return 0;
}

/* ---- exact continuation ------------------------------------------------- */

/* A reference session never suspended runs N_STEPS greedy steps after the
 * prompt. The other is suspended to host memory after the prompt and
 * resumed explicitly, runs 20 steps, is suspended to a spill file and
 * resumed by its next decode: every step's token and logits are bitwise
 * those of the reference. On the way, the held snapshot is the live one's
 * save at the suspend's level, byte for byte, in the file and through
 * kvrt_session_save_buffer(). */
static void check_continuation(uint32_t fk, uint32_t fv, size_t n_prompt) {
  int32_t prompt[64], ref_t[N_STEPS], got_t[N_STEPS], toks[64];
  float last[V];
  float* ref_l = alloc_logits(N_STEPS);
  float* got_l = alloc_logits(N_STEPS);
  kvrt_session *r, *a;
  kvrt_session_stats live;
  kvrt_suspend_params sp = spill_params();
  kvrt_snapshot_params l1 = level(1), l3 = level(3);
  bytes want, held, file;
  char path[1024];
  size_t n = 0;
  uint64_t used_before;
  tu_tokens(prompt, n_prompt, 100 + fk * 5 + fv + (uint32_t)n_prompt);

  r = tu_session(g_model, fk, fv, 256, 0);
  EXPECT_OK(kvrt_decode_step(r, prompt, n_prompt, last, V));
  tu_run_steps(r, last, N_STEPS, 0, ref_l, ref_t);
  kvrt_session_destroy(r);

  a = tu_session(g_model, fk, fv, 256, 0);
  EXPECT_OK(kvrt_decode_step(a, prompt, n_prompt, last, V));
  live = tu_session_stats(a);
  assert_true(live.n_blocks > 0);
  used_before = blocks_used();
  EXPECT_OK(kvrt_session_suspend(a, NULL));
  expect_suspended(a, &live, 0);
  assert_int_equal(blocks_used(), used_before - live.n_blocks);
  EXPECT_OK(kvrt_session_get_tokens(a, toks, 64, &n));
  assert_int_equal(n, n_prompt);
  assert_memory_equal(toks, prompt, n_prompt * sizeof(int32_t));
  EXPECT_OK(kvrt_session_resume(a));
  expect_live(a, &live);
  assert_int_equal(blocks_used(), used_before);

  tu_run_steps(a, last, 20, 0, got_l, got_t);
  live = tu_session_stats(a);
  want = tu_save_buffer(a, &l1);
  assert_int_equal(spill_files(NULL, 0), 0);
  EXPECT_OK(kvrt_session_suspend(a, &sp));
  expect_suspended(a, &live, 1);
  assert_int_equal(tu_session_stats(a).suspended_bytes, want.n);
  assert_int_equal(spill_files(path, sizeof path), 1);
  file = tu_read_file(path);
  assert_int_equal(file.n, want.n);
  assert_memory_equal(file.p, want.p, want.n);
  held = tu_save_buffer(a, &l3); /* the held bytes, not a level-3 save */
  assert_int_equal(held.n, want.n);
  assert_memory_equal(held.p, want.p, want.n);
  EXPECT_OK(kvrt_session_resume(a));
  {
    /* Control: a level-3 save of the live session differs. */
    bytes other = tu_save_buffer(a, &l3);
    assert_true(other.n != want.n || memcmp(other.p, want.p, want.n) != 0);
    free(other.p);
  }
  EXPECT_OK(kvrt_session_suspend(a, &sp));
  assert_int_equal(tu_session_stats(a).suspended, 1); /* saving did not resume */

  tu_run_steps(a, got_l + 19 * V, N_STEPS - 20, 0, got_l + 20 * V, got_t + 20);
  assert_int_equal(spill_files(NULL, 0), 0);
  assert_int_equal(tu_session_stats(a).suspended, 0);
  assert_memory_equal(got_t, ref_t, sizeof ref_t);
  assert_memory_equal(got_l, ref_l, sizeof(float) * N_STEPS * V);

  kvrt_session_destroy(a);
  free(want.p);
  free(held.p);
  free(file.p);
  free(ref_l);
  free(got_l);
}

static void test_continuation_f32(void** state) {
  (void)state;
  check_continuation(KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F32, 37);
}
static void test_continuation_f16(void** state) {
  (void)state;
  check_continuation(KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 37);
}
/* Quantized caches keep their tail in the f16 stage: a prompt that ends
 * inside a block (37) and one that ends on a block boundary (48). */
static void test_continuation_q8(void** state) {
  (void)state;
  check_continuation(KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8, 37);
  check_continuation(KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8, 48);
}
static void test_continuation_q4(void** state) {
  (void)state;
  check_continuation(KVRT_KV_FORMAT_Q4, KVRT_KV_FORMAT_Q4, 37);
  check_continuation(KVRT_KV_FORMAT_Q4, KVRT_KV_FORMAT_Q4, 48);
}
static void test_continuation_q8_q4(void** state) {
  (void)state;
  check_continuation(KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q4, 37);
  check_continuation(KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q4, 48);
}

/* A seeded sampler suspended after 10 draws continues with the same draws:
 * kvrt_session_sample() resumes the session, the generator's state included. */
static void check_sampled(uint32_t fk, uint32_t fv, const kvrt_suspend_params* sp) {
  int32_t prompt[30], ref_t[N_STEPS + 10], got_t[N_STEPS + 10], t;
  float last[V];
  float* ref_l = alloc_logits(N_STEPS + 10);
  float* got_l = alloc_logits(N_STEPS + 10);
  kvrt_sampler_params smp;
  kvrt_session *r, *a;
  int i, greedy_same = 1;
  tu_tokens(prompt, 30, 77);
  kvrt_sampler_default_params(&smp);
  smp.temperature = 0.9f;
  smp.seed = 4321;

  r = tu_session(g_model, fk, fv, 256, 0);
  EXPECT_OK(kvrt_session_set_sampler(r, &smp));
  EXPECT_OK(kvrt_decode_step(r, prompt, 30, last, V));
  tu_run_steps(r, last, N_STEPS + 10, 1, ref_l, ref_t);
  kvrt_session_destroy(r);

  a = tu_session(g_model, fk, fv, 256, 0);
  EXPECT_OK(kvrt_session_set_sampler(a, &smp));
  EXPECT_OK(kvrt_decode_step(a, prompt, 30, last, V));
  tu_run_steps(a, last, 10, 1, got_l, got_t);
  EXPECT_OK(kvrt_session_suspend(a, sp));
  EXPECT_OK(kvrt_session_sample(a, got_l + 9 * V, V, &t));
  assert_int_equal(tu_session_stats(a).suspended, 0);
  assert_int_equal(t, ref_t[10]);
  got_t[10] = t;
  EXPECT_OK(kvrt_decode_step(a, &t, 1, got_l + 10 * V, V));
  tu_run_steps(a, got_l + 10 * V, N_STEPS - 1, 1, got_l + 11 * V, got_t + 11);
  assert_memory_equal(got_t, ref_t, sizeof ref_t);
  assert_memory_equal(got_l, ref_l, sizeof(float) * (N_STEPS + 10) * V);
  /* Control: the draws are not simply greedy. */
  for (i = 10; i < N_STEPS + 10; ++i)
    if (ref_t[i] != tu_argmax(ref_l + (size_t)(i - 1) * V, V)) greedy_same = 0;
  assert_false(greedy_same);
  kvrt_session_destroy(a);
  free(ref_l);
  free(got_l);
}

static void test_sampled(void** state) {
  kvrt_suspend_params sp = spill_params();
  (void)state;
  check_sampled(KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, NULL);
  check_sampled(KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q4, &sp);
}

/* rewind and set_sampler resume a suspended session; an empty session
 * suspends and resumes; a rewind out of range leaves it suspended. */
static void test_rewind_sampler_empty(void** state) {
  int32_t t[40];
  float la[V], lb[V];
  kvrt_session *a, *b, *e;
  kvrt_sampler_params smp;
  kvrt_session_stats live;
  (void)state;
  tu_tokens(t, 40, 9);
  a = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
  b = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
  EXPECT_OK(kvrt_decode_step(a, t, 40, NULL, 0));
  live = tu_session_stats(a);
  EXPECT_OK(kvrt_session_suspend(a, NULL));
  EXPECT_ERR(kvrt_session_rewind(a, 41), KVRT_ERR_OUT_OF_RANGE);
  expect_suspended(a, &live, 0);
  EXPECT_OK(kvrt_session_rewind(a, 25));
  assert_int_equal(tu_session_stats(a).suspended, 0);
  assert_int_equal(tu_session_stats(a).n_tokens, 25);
  /* b makes the same calls without the suspend (batching changes rounding). */
  EXPECT_OK(kvrt_decode_step(b, t, 40, NULL, 0));
  EXPECT_OK(kvrt_session_rewind(b, 25));
  EXPECT_OK(kvrt_decode_step(a, t + 30, 3, la, V));
  EXPECT_OK(kvrt_decode_step(b, t + 30, 3, lb, V));
  tu_assert_bitwise_equal(la, lb, V);

  kvrt_sampler_default_params(&smp);
  smp.seed = 99;
  EXPECT_OK(kvrt_session_suspend(a, NULL));
  smp.top_p = 2.0f;
  EXPECT_ERR(kvrt_session_set_sampler(a, &smp), KVRT_ERR_INVALID_ARGUMENT);
  assert_int_equal(tu_session_stats(a).suspended, 1);
  smp.top_p = 0.9f;
  EXPECT_OK(kvrt_session_set_sampler(a, &smp));
  assert_int_equal(tu_session_stats(a).suspended, 0);
  EXPECT_OK(kvrt_session_set_sampler(b, &smp));
  {
    int32_t ta, tb;
    EXPECT_OK(kvrt_session_sample(a, la, V, &ta));
    EXPECT_OK(kvrt_session_sample(b, lb, V, &tb));
    assert_int_equal(ta, tb);
  }
  kvrt_session_destroy(a);
  kvrt_session_destroy(b);

  e = tu_session(g_model, KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8, 64, 0);
  live = tu_session_stats(e);
  EXPECT_OK(kvrt_session_suspend(e, NULL));
  expect_suspended(e, &live, 0);
  EXPECT_OK(kvrt_session_resume(e));
  expect_live(e, &live);
  b = tu_session(g_model, KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8, 64, 0);
  EXPECT_OK(kvrt_decode_step(e, t, 20, la, V));
  EXPECT_OK(kvrt_decode_step(b, t, 20, lb, V));
  tu_assert_bitwise_equal(la, lb, V);
  kvrt_session_destroy(b);
  kvrt_session_destroy(e);
}

/* ---- the pool ------------------------------------------------------------ */

/* A budget of 10 f16 blocks. A holds 7 (100 tokens); B cannot take 7 more
 * until A is suspended. Then A's resume does not fit and fails, with A
 * still suspended (also when resumed by a decode); once B is gone A
 * resumes and continues as the reference does. */
static void check_budget(const kvrt_suspend_params* sp, int spilled) {
  kvrt_runtime* rt = tu_runtime(10ull * TM_F16_BLOCK_BYTES, 16, 2);
  kvrt_model* m = tu_model(rt);
  kvrt_session *a = tu_session(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 128, 0);
  kvrt_session *b = tu_session(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 128, 0);
  kvrt_session *r;
  int32_t t[101], toks[101];
  float la[V], lr[V];
  size_t n = 0;
  kvrt_session_stats live;
  kvrt_runtime_stats rs;
  tu_tokens(t, 101, 55);

  EXPECT_OK(kvrt_decode_step(a, t, 100, NULL, 0));
  live = tu_session_stats(a);
  assert_int_equal(live.n_blocks, 7);
  assert_int_equal(tu_runtime_stats(rt).n_blocks_used, 7);
  EXPECT_ERR(kvrt_decode_step(b, t, 100, NULL, 0), KVRT_ERR_OUT_OF_MEMORY);

  EXPECT_OK(kvrt_session_suspend(a, sp));
  rs = tu_runtime_stats(rt);
  assert_int_equal(rs.n_blocks_used, 0);
  assert_int_equal(rs.kv_used_bytes, 0);
  EXPECT_OK(kvrt_decode_step(b, t, 100, NULL, 0));
  assert_int_equal(tu_runtime_stats(rt).n_blocks_used, 7);

  EXPECT_ERR(kvrt_session_resume(a), KVRT_ERR_OUT_OF_MEMORY);
  expect_suspended(a, &live, spilled);
  assert_int_equal(spill_files(NULL, 0), spilled);
  EXPECT_ERR(kvrt_decode_step(a, &t[100], 1, la, V), KVRT_ERR_OUT_OF_MEMORY);
  expect_suspended(a, &live, spilled);
  assert_int_equal(tu_runtime_stats(rt).n_blocks_used, 7);
  EXPECT_OK(kvrt_session_get_tokens(a, toks, 101, &n));
  assert_int_equal(n, 100);
  assert_memory_equal(toks, t, 100 * sizeof(int32_t));

  kvrt_session_destroy(b);
  EXPECT_OK(kvrt_session_resume(a));
  expect_live(a, &live);
  assert_int_equal(spill_files(NULL, 0), 0);
  EXPECT_OK(kvrt_decode_step(a, &t[100], 1, la, V));
  kvrt_session_destroy(a);

  r = tu_session(m, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 128, 0);
  EXPECT_OK(kvrt_decode_step(r, t, 100, NULL, 0));
  EXPECT_OK(kvrt_decode_step(r, &t[100], 1, lr, V));
  tu_assert_bitwise_equal(la, lr, V);
  kvrt_session_destroy(r);
  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
}

static void test_budget_memory(void** state) {
  (void)state;
  check_budget(NULL, 0);
}

static void test_budget_spill(void** state) {
  kvrt_suspend_params sp = spill_params();
  (void)state;
  check_budget(&sp, 1);
}

/* ---- spill files ---------------------------------------------------------- */

/* A spill file exists exactly while its session is suspended: removed by a
 * resume and by a destroy. Suspending again and resuming a live session
 * change nothing. */
static void test_spill_lifetime(void** state) {
  kvrt_suspend_params sp = spill_params(), mem;
  kvrt_session* s = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
  char p1[1024], p2[1024];
  struct stat st;
  int32_t t[20];
  (void)state;
  kvrt_suspend_default_params(&mem);
  tu_tokens(t, 20, 4);
  EXPECT_OK(kvrt_decode_step(s, t, 20, NULL, 0));
  EXPECT_OK(kvrt_session_resume(s)); /* not suspended: nothing happens */
  assert_int_equal(tu_session_stats(s).suspended, 0);
  assert_int_equal(spill_files(NULL, 0), 0);

  EXPECT_OK(kvrt_session_suspend(s, &sp));
  assert_int_equal(spill_files(p1, sizeof p1), 1);
  assert_int_equal(stat(p1, &st), 0);
  assert_int_equal(st.st_mode & 0077, 0); /* private to its owner */
  assert_int_equal((uint64_t)st.st_size, tu_session_stats(s).suspended_bytes);
  /* Suspending again, even to host memory, leaves the file where it is. */
  EXPECT_OK(kvrt_session_suspend(s, &mem));
  EXPECT_OK(kvrt_session_suspend(s, &sp));
  assert_int_equal(spill_files(p2, sizeof p2), 1);
  assert_string_equal(p1, p2);
  assert_int_equal(tu_session_stats(s).spilled, 1);
  EXPECT_OK(kvrt_session_resume(s));
  assert_int_equal(spill_files(NULL, 0), 0);
  EXPECT_OK(kvrt_session_resume(s));

  /* A trailing slash in spill_dir works as well. */
  {
    char dir[700];
    snprintf(dir, sizeof dir, "%s/", g_spill);
    sp.spill_dir = dir;
    EXPECT_OK(kvrt_session_suspend(s, &sp));
  }
  assert_int_equal(spill_files(NULL, 0), 1);
  kvrt_session_destroy(s);
  assert_int_equal(spill_files(NULL, 0), 0);

  /* Two suspended sessions get two files. */
  {
    kvrt_session* x = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
    kvrt_session* y = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
    sp = spill_params();
    EXPECT_OK(kvrt_session_suspend(x, &sp));
    EXPECT_OK(kvrt_session_suspend(y, &sp));
    assert_int_equal(spill_files(NULL, 0), 2);
    kvrt_session_destroy(x);
    assert_int_equal(spill_files(NULL, 0), 1);
    kvrt_session_destroy(y);
    assert_int_equal(spill_files(NULL, 0), 0);
  }
}

/* Deleted, flipped, truncated or replaced spill files: the resume (and a
 * decode or save) fails with KVRT_ERR_IO or KVRT_ERR_CORRUPT, the session
 * stays suspended, and once the original bytes are back it resumes and
 * continues exactly; destroy works in every state. */
static void test_spill_tampering(void** state) {
  kvrt_suspend_params sp = spill_params();
  kvrt_session* s = tu_session(g_model, KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8, 128, 0);
  kvrt_session* other = tu_session(g_model, KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8, 128, 0);
  kvrt_session* r = tu_session(g_model, KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8, 128, 0);
  kvrt_session_stats live;
  char path[1024];
  bytes orig, bad, other_bytes;
  size_t got = 0;
  int32_t t[60];
  float la[V], lr[V];
  uint64_t used;
  (void)state;
  tu_tokens(t, 60, 8);
  EXPECT_OK(kvrt_decode_step(s, t, 50, NULL, 0));
  EXPECT_OK(kvrt_decode_step(other, t + 1, 50, NULL, 0));
  live = tu_session_stats(s);
  EXPECT_OK(kvrt_session_suspend(s, &sp));
  used = blocks_used();
  assert_int_equal(spill_files(path, sizeof path), 1);
  orig = tu_read_file(path);

  /* Deleted. */
  assert_int_equal(unlink(path), 0);
  EXPECT_ERR(kvrt_session_resume(s), KVRT_ERR_IO);
  assert_non_null(strstr(kvrt_last_error(), "spill file"));
  EXPECT_ERR(kvrt_decode_step(s, t + 50, 1, la, V), KVRT_ERR_IO);
  EXPECT_ERR(kvrt_session_save_buffer(s, NULL, 0, &got, NULL), KVRT_ERR_IO);
  expect_suspended(s, &live, 1);
  assert_int_equal(blocks_used(), used);

  /* One bit flipped in the middle, and the last byte. */
  bad.n = orig.n;
  bad.p = (uint8_t*)malloc(bad.n);
  memcpy(bad.p, orig.p, bad.n);
  bad.p[bad.n / 2] ^= 0x10;
  tu_write_file(path, bad.p, bad.n);
  EXPECT_ERR(kvrt_session_resume(s), KVRT_ERR_CORRUPT);
  EXPECT_ERR(kvrt_session_save_buffer(s, NULL, 0, &got, NULL), KVRT_ERR_CORRUPT);
  bad.p[bad.n / 2] ^= 0x10;
  bad.p[bad.n - 1] ^= 0x01;
  tu_write_file(path, bad.p, bad.n);
  EXPECT_ERR(kvrt_session_resume(s), KVRT_ERR_CORRUPT);
  /* Truncated, and with a byte appended. */
  tu_write_file(path, orig.p, orig.n - 100);
  EXPECT_ERR(kvrt_session_resume(s), KVRT_ERR_CORRUPT);
  memcpy(bad.p, orig.p, orig.n);
  bad.p = (uint8_t*)realloc(bad.p, orig.n + 1);
  bad.p[orig.n] = 0;
  tu_write_file(path, bad.p, orig.n + 1);
  EXPECT_ERR(kvrt_session_resume(s), KVRT_ERR_CORRUPT);
  /* Replaced by another session's valid snapshot of the same model. */
  {
    kvrt_snapshot_params l1 = level(1);
    other_bytes = tu_save_buffer(other, &l1);
    tu_write_file(path, other_bytes.p, other_bytes.n);
    EXPECT_ERR(kvrt_session_resume(s), KVRT_ERR_CORRUPT);
    assert_non_null(strstr(kvrt_last_error(), "changed"));
  }
  expect_suspended(s, &live, 1);
  assert_int_equal(blocks_used(), used);

  /* The original bytes back: the session resumes and continues exactly. */
  tu_write_file(path, orig.p, orig.n);
  EXPECT_OK(kvrt_session_resume(s));
  expect_live(s, &live);
  assert_int_equal(spill_files(NULL, 0), 0);
  EXPECT_OK(kvrt_decode_step(s, t + 50, 1, la, V));
  EXPECT_OK(kvrt_decode_step(r, t, 50, NULL, 0));
  EXPECT_OK(kvrt_decode_step(r, t + 50, 1, lr, V));
  tu_assert_bitwise_equal(la, lr, V);

  /* Destroying a session whose file is gone or broken frees everything. */
  EXPECT_OK(kvrt_session_suspend(s, &sp));
  assert_int_equal(spill_files(path, sizeof path), 1);
  assert_int_equal(unlink(path), 0);
  kvrt_session_destroy(s);
  EXPECT_OK(kvrt_session_suspend(other, &sp));
  assert_int_equal(spill_files(path, sizeof path), 1);
  tu_write_file(path, "junk", 4);
  kvrt_session_destroy(other);
  assert_int_equal(spill_files(NULL, 0), 0);

  kvrt_session_destroy(r);
  free(orig.p);
  free(bad.p);
  free(other_bytes.p);
}

/* A spill folder that cannot take a file: refused with KVRT_ERR_IO, the
 * session live and unchanged, nothing created. */
static void test_spill_dir_unusable(void** state) {
  kvrt_suspend_params sp;
  kvrt_session* s = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
  kvrt_session_stats live;
  char missing[700], file[700], below_file[800];
  int32_t t[20];
  float la[V], lb[V];
  kvrt_session* r = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0);
  (void)state;
  tu_tokens(t, 20, 6);
  EXPECT_OK(kvrt_decode_step(s, t, 19, NULL, 0));
  live = tu_session_stats(s);
  snprintf(missing, sizeof missing, "%s/no-such-folder", g_dir);
  snprintf(file, sizeof file, "%s/a-file", g_dir);
  snprintf(below_file, sizeof below_file, "%s/sub", file);
  tu_write_file(file, "x", 1);
  kvrt_suspend_default_params(&sp);
  sp.spill_dir = missing;
  EXPECT_ERR(kvrt_session_suspend(s, &sp), KVRT_ERR_IO);
  assert_non_null(strstr(kvrt_last_error(), "no-such-folder"));
  sp.spill_dir = file;
  EXPECT_ERR(kvrt_session_suspend(s, &sp), KVRT_ERR_IO);
  sp.spill_dir = below_file;
  EXPECT_ERR(kvrt_session_suspend(s, &sp), KVRT_ERR_IO);
  expect_live(s, &live);
  EXPECT_OK(kvrt_decode_step(s, t + 19, 1, la, V));
  EXPECT_OK(kvrt_decode_step(r, t, 19, NULL, 0));
  EXPECT_OK(kvrt_decode_step(r, t + 19, 1, lb, V));
  tu_assert_bitwise_equal(la, lb, V);
  unlink(file);
  kvrt_session_destroy(s);
  kvrt_session_destroy(r);
}

/* ---- threads --------------------------------------------------------------- */

/* kvrt_session_request_abort from another thread while the session is
 * suspended, resumed and decoding: always accepted; decodes complete or
 * stop with the session unchanged. */
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

static void test_abort_while_suspending(void** state) {
  kvrt_session* s = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 0, 0);
  kvrt_session* r;
  kvrt_suspend_params sp = spill_params();
  aborter ab;
  pthread_t th;
  int32_t t[200];
  float la[V], lr[V];
  int round;
  (void)state;
  tu_tokens(t, 200, 12);
  EXPECT_OK(kvrt_decode_step(s, t, 10, NULL, 0));
  /* Accepted while suspended, which it leaves as it is. */
  EXPECT_OK(kvrt_session_suspend(s, NULL));
  EXPECT_OK(kvrt_session_request_abort(s));
  assert_int_equal(tu_session_stats(s).suspended, 1);
  EXPECT_OK(kvrt_decode_step(s, t + 10, 1, NULL, 0));
  EXPECT_OK(kvrt_session_rewind(s, 10));

  memset(&ab, 0, sizeof ab);
  atomic_init(&ab.stop, 0);
  ab.s = s;
  ab.worst = KVRT_OK;
  assert_int_equal(pthread_create(&th, NULL, aborter_main, &ab), 0);
  for (round = 0; round < 12; ++round) {
    kvrt_status st;
    EXPECT_OK(kvrt_session_suspend(s, round % 2 ? &sp : NULL));
    if (round % 3 == 0) EXPECT_OK(kvrt_session_resume(s));
    st = kvrt_decode_step(s, t + 10, 150, NULL, 0);
    if (st == KVRT_OK) {
      EXPECT_OK(kvrt_session_rewind(s, 10));
    } else if (st != KVRT_ERR_ABORTED) {
      fail_msg("decode under abort requests: %d (%s): %s", (int)st, kvrt_status_string(st),
               kvrt_last_error());
    }
    assert_int_equal(tu_session_stats(s).n_tokens, 10);
  }
  atomic_store(&ab.stop, 1);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_int_equal(ab.worst, KVRT_OK);
  assert_true(ab.calls > 0);

  EXPECT_OK(kvrt_decode_step(s, t + 10, 5, la, V));
  r = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 0, 0);
  EXPECT_OK(kvrt_decode_step(r, t, 10, NULL, 0));
  EXPECT_OK(kvrt_decode_step(r, t + 10, 5, lr, V));
  tu_assert_bitwise_equal(la, lr, V);
  kvrt_session_destroy(r);
  kvrt_session_destroy(s);
  assert_int_equal(spill_files(NULL, 0), 0);
}

/* Destroyed while suspended in host memory and in a file, with the model
 * and runtime handles gone first: everything is freed (the ASan build
 * checks the memory) and the file removed. */
static void test_destroy_suspended(void** state) {
  kvrt_runtime* rt = tu_runtime(0, 16, 1);
  kvrt_model* m = tu_model(rt);
  kvrt_session* a = tu_session(m, KVRT_KV_FORMAT_Q4, KVRT_KV_FORMAT_Q4, 64, 0);
  kvrt_session* b = tu_session(m, KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F32, 64, 0);
  kvrt_suspend_params sp = spill_params();
  int32_t t[40];
  (void)state;
  tu_tokens(t, 40, 1);
  EXPECT_OK(kvrt_decode_step(a, t, 40, NULL, 0));
  EXPECT_OK(kvrt_decode_step(b, t, 40, NULL, 0));
  EXPECT_OK(kvrt_session_suspend(a, NULL));
  EXPECT_OK(kvrt_session_suspend(b, &sp));
  kvrt_model_destroy(m);
  kvrt_runtime_destroy(rt);
  /* The suspended sessions keep their model: b still resumes. */
  EXPECT_OK(kvrt_session_resume(b));
  EXPECT_OK(kvrt_session_suspend(b, &sp));
  assert_int_equal(spill_files(NULL, 0), 1);
  kvrt_session_destroy(a);
  kvrt_session_destroy(b);
  assert_int_equal(spill_files(NULL, 0), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_continuation_f32),
      cmocka_unit_test(test_continuation_f16),
      cmocka_unit_test(test_continuation_q8),
      cmocka_unit_test(test_continuation_q4),
      cmocka_unit_test(test_continuation_q8_q4),
      cmocka_unit_test(test_sampled),
      cmocka_unit_test(test_rewind_sampler_empty),
      cmocka_unit_test(test_budget_memory),
      cmocka_unit_test(test_budget_spill),
      cmocka_unit_test(test_spill_lifetime),
      cmocka_unit_test(test_spill_tampering),
      cmocka_unit_test(test_spill_dir_unusable),
      cmocka_unit_test(test_abort_while_suspending),
      cmocka_unit_test(test_destroy_suspended),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
