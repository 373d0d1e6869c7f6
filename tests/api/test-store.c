/* Session stores through kvrt.h: exact round trips for every KV format,
 * incremental saves that write only the new blocks, blocks shared between
 * sessions, and every kind of damage refused with its own status, nothing
 * left allocated, and the previous state loadable after a killed save. */
#include "api-test-util.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define N_STEPS 64

static kvrt_runtime* g_rt;
static kvrt_model* g_model;
static char g_dir[512];

/* ---- helpers ------------------------------------------------------------ */

typedef tu_bytes bytes;

static long long file_size(const char* path) {
  struct stat st;
  if (stat(path, &st) != 0) return -1;
  return (long long)st.st_size;
}

static void remove_tree(const char* dir) {
  DIR* d = opendir(dir);
  struct dirent* e;
  char p[1024];
  if (!d) return;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    if (unlink(p) != 0) remove_tree(p);
  }
  closedir(d);
  rmdir(dir);
}

/* A fresh, empty store folder path under the test folder. */
static void store_dir(char* out, size_t cap, const char* name) {
  snprintf(out, cap, "%s/%s", g_dir, name);
  remove_tree(out);
}

static void file_in(char* out, size_t cap, const char* dir, const char* name) {
  snprintf(out, cap, "%s/%s", dir, name);
}

static kvrt_store* open_store(const char* dir) {
  kvrt_store* st = NULL;
  EXPECT_OK(kvrt_store_open(dir, NULL, &st));
  assert_non_null(st);
  return st;
}

static kvrt_store_save_stats save(kvrt_store* st, kvrt_session* s, const char* name) {
  kvrt_store_save_stats ss;
  memset(&ss, 0, sizeof ss);
  ss.struct_size = sizeof ss;
  EXPECT_OK(kvrt_store_save(st, s, name, NULL, &ss));
  assert_int_equal(ss.blocks_written + ss.blocks_reused, ss.blocks_total);
  return ss;
}

static uint64_t blocks_used(void) { return tu_runtime_stats(g_rt).n_blocks_used; }

/* The continuation of a session: N_STEPS greedy tokens and their logits. */
typedef struct continuation {
  float* logits;
  int32_t toks[N_STEPS];
} continuation;

static continuation continue_from(kvrt_session* s, const float* last) {
  continuation c;
  c.logits = malloc(sizeof(float) * N_STEPS * TM_N_VOCAB);
  assert_non_null(c.logits);
  tu_run_steps(s, last, N_STEPS, 0, c.logits, c.toks);
  return c;
}

static void assert_same_continuation(const continuation* a, const continuation* b) {
  assert_memory_equal(a->toks, b->toks, sizeof a->toks);
  tu_assert_bitwise_equal(a->logits, b->logits, (size_t)N_STEPS * TM_N_VOCAB);
}

/* A session fed `n` tokens of sequence `seed` in one call; logits of the
 * last one in `last`. */
static kvrt_session* fed_session(uint32_t fk, uint32_t fv, size_t n, uint32_t seed, float* last) {
  int32_t* t = malloc(sizeof(int32_t) * (n ? n : 1));
  kvrt_session* s = tu_session(g_model, fk, fv, 512, 0);
  tu_tokens(t, n, seed);
  if (n) EXPECT_OK(kvrt_decode_step(s, t, n, last, last ? TM_N_VOCAB : 0));
  free(t);
  return s;
}

/* Greedy steps that are not recorded (the session moves on). */
static void advance(kvrt_session* s, float* last, int n) {
  int i;
  for (i = 0; i < n; ++i) {
    int32_t t = tu_argmax(last, TM_N_VOCAB);
    EXPECT_OK(kvrt_decode_step(s, &t, 1, last, TM_N_VOCAB));
  }
}

/* ---- fixtures ----------------------------------------------------------- */

static int group_setup(void** state) {
  const char* tmp = getenv("TMPDIR");
  (void)state;
  snprintf(g_dir, sizeof g_dir, "%s/kvrt-store-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) return -1;
  g_rt = tu_runtime(0, 16, 2);
  g_model = tu_model(g_rt);
  return 0;
}

static int group_teardown(void** state) {
  (void)state;
  kvrt_model_destroy(g_model);
  kvrt_runtime_destroy(g_rt);
  remove_tree(g_dir);
  return 0;
}

/* ---- round trips -------------------------------------------------------- */

/* 37 tokens (2 full blocks and 5 in the tail) and 48 (exactly 3 blocks):
 * saved, loaded, and continued for N_STEPS greedy tokens with every
 * logit bitwise equal to a session that was never saved. */
static void check_roundtrip(uint32_t fk, uint32_t fv) {
  static const size_t counts[] = {37, 48};
  size_t c;
  char dir[600];
  kvrt_store* st;
  store_dir(dir, sizeof dir, "roundtrip");
  st = open_store(dir);
  for (c = 0; c < 2; ++c) {
    float last[TM_N_VOCAB], last_a[TM_N_VOCAB];
    kvrt_session *r = fed_session(fk, fv, counts[c], 5 + fk * 3 + fv, last), *a, *b = NULL;
    continuation want = continue_from(r, last), got;
    kvrt_store_save_stats ss;
    int32_t ta[64], tb[64];
    size_t na = 0, nb = 0;
    kvrt_session_destroy(r);
    a = fed_session(fk, fv, counts[c], 5 + fk * 3 + fv, last_a);
    ss = save(st, a, c ? "b48" : "a37");
    assert_int_equal(ss.blocks_total, counts[c] / 16);
    assert_true(ss.manifest_bytes > 0);
    if (c == 0) {
      assert_int_equal(ss.blocks_written, 2);
      assert_true(ss.pack_bytes_written > 0);
    }
    EXPECT_OK(kvrt_store_load(st, g_model, c ? "b48" : "a37", NULL, &b));
    assert_non_null(b);
    assert_int_equal(tu_session_stats(b).n_tokens, counts[c]);
    assert_int_equal(tu_session_stats(b).kv_format_k, fk);
    assert_int_equal(tu_session_stats(b).kv_format_v, fv);
    EXPECT_OK(kvrt_session_get_tokens(a, ta, 64, &na));
    EXPECT_OK(kvrt_session_get_tokens(b, tb, 64, &nb));
    assert_int_equal(na, nb);
    assert_memory_equal(ta, tb, na * sizeof(int32_t));
    got = continue_from(b, last_a);
    assert_same_continuation(&got, &want);
    free(got.logits);
    /* Saving did not disturb the saved session. */
    got = continue_from(a, last_a);
    assert_same_continuation(&got, &want);
    free(got.logits);
    free(want.logits);
    kvrt_session_destroy(a);
    kvrt_session_destroy(b);
  }
  kvrt_store_close(st);
  assert_int_equal(blocks_used(), 0);
}

static void test_roundtrip_f32(void** state) { (void)state; check_roundtrip(KVRT_KV_FORMAT_F32, KVRT_KV_FORMAT_F32); }
static void test_roundtrip_f16(void** state) { (void)state; check_roundtrip(KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16); }
static void test_roundtrip_q8(void** state) { (void)state; check_roundtrip(KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8); }
static void test_roundtrip_q4(void** state) { (void)state; check_roundtrip(KVRT_KV_FORMAT_Q4, KVRT_KV_FORMAT_Q4); }
static void test_roundtrip_q8_q4(void** state) { (void)state; check_roundtrip(KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q4); }

/* An empty session saves and loads too (no blocks, no tail). */
static void test_roundtrip_empty(void** state) {
  char dir[600];
  kvrt_store* st;
  kvrt_session *a = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 64, 0), *b = NULL;
  kvrt_store_save_stats ss;
  (void)state;
  store_dir(dir, sizeof dir, "empty");
  st = open_store(dir);
  ss = save(st, a, "empty");
  assert_int_equal(ss.blocks_total, 0);
  assert_int_equal(ss.pack_bytes_written, 0);
  EXPECT_OK(kvrt_store_load(st, g_model, "empty", NULL, &b));
  assert_int_equal(tu_session_stats(b).n_tokens, 0);
  assert_int_equal(tu_session_stats(b).n_ctx, 64);
  kvrt_session_destroy(a);
  kvrt_session_destroy(b);
  kvrt_store_close(st);
}

/* ---- incremental saves and sharing -------------------------------------- */

/* 100 tokens saved; 16 more, saved again under the same name: only the one
 * new full block goes into the pack (its growth matches the stats), the
 * manifest holds the tail, and the total stays within two raw blocks. The
 * second save loads bitwise, also after the store is reopened. */
static void check_incremental(uint32_t fmt) {
  char dir[600], pack[700];
  float last[TM_N_VOCAB], last_r[TM_N_VOCAB];
  kvrt_store* st;
  kvrt_session *r = fed_session(fmt, fmt, 100, 9, last_r), *a = fed_session(fmt, fmt, 100, 9, last), *b = NULL;
  kvrt_store_save_stats s1, s2, s3;
  long long p0, p1, p2;
  continuation want, got;
  advance(r, last_r, 16);
  want = continue_from(r, last_r);
  kvrt_session_destroy(r);
  store_dir(dir, sizeof dir, "incremental");
  file_in(pack, sizeof pack, dir, "blocks.kvp");
  st = open_store(dir);
  p0 = file_size(pack);
  assert_true(p0 > 0);
  s1 = save(st, a, "chat");
  p1 = file_size(pack);
  assert_int_equal(s1.blocks_total, 6);
  assert_int_equal(s1.blocks_written, 6);
  assert_int_equal((long long)s1.pack_bytes_written, p1 - p0);
  advance(a, last, 16); /* 116 tokens: block 6 is now full */
  s2 = save(st, a, "chat");
  p2 = file_size(pack);
  assert_int_equal(s2.blocks_total, 7);
  assert_int_equal(s2.blocks_written, 1);
  assert_int_equal(s2.blocks_reused, 6);
  assert_int_equal((long long)s2.pack_bytes_written, p2 - p1);
  assert_true(p2 - p1 < (p1 - p0) / 3); /* one block, not the session again */
  /* A few blocks' worth in all: the new block, and the manifest with the
   * tail (4 positions of 16), the token ids and the block list. */
  assert_true(s2.pack_bytes_written + s2.manifest_bytes <= 3u * (s1.pack_bytes_written / 6u));
  /* Saving unchanged data again appends nothing. */
  s3 = save(st, a, "chat");
  assert_int_equal(s3.blocks_written, 0);
  assert_int_equal(s3.pack_bytes_written, 0);
  assert_int_equal(file_size(pack), p2);
  EXPECT_OK(kvrt_store_load(st, g_model, "chat", NULL, &b));
  got = continue_from(b, last);
  assert_same_continuation(&got, &want);
  free(got.logits);
  kvrt_session_destroy(b);
  kvrt_store_close(st);
  /* A reopened store indexes the pack and loads the same. */
  st = open_store(dir);
  EXPECT_OK(kvrt_store_load(st, g_model, "chat", NULL, &b));
  got = continue_from(b, last);
  assert_same_continuation(&got, &want);
  free(got.logits);
  kvrt_session_destroy(b);
  s3 = save(st, a, "chat-copy"); /* reopened index: every block known */
  assert_int_equal(s3.blocks_written, 0);
  assert_int_equal(s3.blocks_reused, 7);
  kvrt_store_close(st);
  free(want.logits);
  kvrt_session_destroy(a);
  assert_int_equal(blocks_used(), 0);
}

static void test_incremental_f16(void** state) { (void)state; check_incremental(KVRT_KV_FORMAT_F16); }
static void test_incremental_q8(void** state) { (void)state; check_incremental(KVRT_KV_FORMAT_Q8); }

/* Two sessions with the same 64-token prompt, then their own 20 tokens:
 * the second save reuses the prompt's 4 blocks; removing one name keeps the
 * other loadable; names are listed. */
static void test_shared_prefix(void** state) {
  char dir[600], pack[700];
  int32_t sys[64], own[20];
  float la[TM_N_VOCAB], lb[TM_N_VOCAB], lr[TM_N_VOCAB];
  kvrt_session *a = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 256, 0);
  kvrt_session *b = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 256, 0);
  kvrt_session *r = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 256, 0), *l = NULL;
  kvrt_store* st;
  kvrt_store_save_stats sa, sb;
  long long p0, p1, p2;
  char list[64];
  size_t n = 0;
  continuation want, got;
  (void)state;
  tu_tokens(sys, 64, 40);
  EXPECT_OK(kvrt_decode_step(a, sys, 64, NULL, 0));
  EXPECT_OK(kvrt_decode_step(b, sys, 64, NULL, 0));
  EXPECT_OK(kvrt_decode_step(r, sys, 64, NULL, 0));
  tu_tokens(own, 20, 41);
  EXPECT_OK(kvrt_decode_step(a, own, 20, la, TM_N_VOCAB));
  tu_tokens(own, 20, 42);
  EXPECT_OK(kvrt_decode_step(b, own, 20, lb, TM_N_VOCAB));
  EXPECT_OK(kvrt_decode_step(r, own, 20, lr, TM_N_VOCAB));
  want = continue_from(r, lr);
  kvrt_session_destroy(r);
  store_dir(dir, sizeof dir, "shared");
  file_in(pack, sizeof pack, dir, "blocks.kvp");
  st = open_store(dir);
  p0 = file_size(pack);
  sa = save(st, a, "alice");
  p1 = file_size(pack);
  sb = save(st, b, "bob");
  p2 = file_size(pack);
  assert_int_equal(sa.blocks_total, 5);
  assert_int_equal(sa.blocks_written, 5);
  assert_int_equal(sb.blocks_total, 5);
  assert_int_equal(sb.blocks_reused, 4); /* the shared prompt */
  assert_int_equal(sb.blocks_written, 1);
  assert_true(p2 - p1 < (p1 - p0) / 2);
  /* Listing: a size query, a short buffer, then the names in order. */
  EXPECT_OK(kvrt_store_list(st, NULL, 0, &n));
  assert_int_equal(n, 10); /* "alice\0bob\0" */
  EXPECT_ERR(kvrt_store_list(st, list, 4, &n), KVRT_ERR_BUFFER_TOO_SMALL);
  assert_int_equal(n, 10);
  EXPECT_OK(kvrt_store_list(st, list, sizeof list, &n));
  assert_memory_equal(list, "alice\0bob\0", 10);
  /* Removing alice keeps bob whole. */
  EXPECT_OK(kvrt_store_remove(st, "alice"));
  EXPECT_ERR(kvrt_store_remove(st, "alice"), KVRT_ERR_NOT_FOUND);
  EXPECT_ERR(kvrt_store_load(st, g_model, "alice", NULL, &l), KVRT_ERR_NOT_FOUND);
  assert_null(l);
  assert_non_null(strstr(kvrt_last_error(), "alice"));
  EXPECT_OK(kvrt_store_list(st, list, sizeof list, &n));
  assert_int_equal(n, 4);
  EXPECT_OK(kvrt_store_load(st, g_model, "bob", NULL, &l));
  got = continue_from(l, lb);
  assert_same_continuation(&got, &want);
  free(got.logits);
  free(want.logits);
  kvrt_session_destroy(l);
  /* Saving alice again reuses every block the pack still holds. */
  sa = save(st, a, "alice");
  assert_int_equal(sa.blocks_written, 0);
  assert_int_equal(file_size(pack), p2);
  kvrt_store_close(st);
  kvrt_session_destroy(a);
  kvrt_session_destroy(b);
}

/* ---- bad arguments ------------------------------------------------------ */

static void test_names_and_arguments(void** state) {
  static const char* bad[] = {"", ".hidden", "a/b", "..", "/abs", "sp ace", "t\xc3\xa9", "a\\b", "x:y"};
  char dir[600], longname[256];
  kvrt_store *st, *st2 = NULL;
  kvrt_session* s = fed_session(KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 20, 3, NULL), *out = NULL;
  kvrt_store_params sp;
  kvrt_store_save_stats ss;
  kvrt_store_entry_info info;
  kvrt_snapshot_params pp;
  size_t i, n = 0;
  (void)state;
  store_dir(dir, sizeof dir, "args");
  st = open_store(dir);
  for (i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
    EXPECT_ERR(kvrt_store_save(st, s, bad[i], NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
    EXPECT_ERR(kvrt_store_load(st, g_model, bad[i], NULL, &out), KVRT_ERR_INVALID_ARGUMENT);
    assert_null(out);
    EXPECT_ERR(kvrt_store_remove(st, bad[i]), KVRT_ERR_INVALID_ARGUMENT);
  }
  memset(longname, 'n', 201);
  longname[201] = '\0';
  EXPECT_ERR(kvrt_store_save(st, s, longname, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  longname[200] = '\0';
  EXPECT_OK(kvrt_store_save(st, s, longname, NULL, NULL)); /* 200 bytes is fine */
  EXPECT_OK(kvrt_store_save(st, s, "Ok_name-1.v2", NULL, NULL));
  /* Nothing was written for the refused names. */
  EXPECT_OK(kvrt_store_list(st, NULL, 0, &n));
  assert_int_equal(n, 201 + 13);
  /* NULLs. */
  EXPECT_ERR(kvrt_store_open(NULL, NULL, &st2), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_open("", NULL, &st2), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_open(dir, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_save(NULL, s, "x", NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_save(st, NULL, "x", NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_save(st, s, NULL, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_load(NULL, g_model, "x", NULL, &out), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_load(st, NULL, "x", NULL, &out), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_load(st, g_model, NULL, NULL, &out), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_load(st, g_model, "x", NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_remove(NULL, "x"), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_remove(st, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_list(NULL, NULL, 0, &n), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_list(st, NULL, 0, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_list(st, NULL, 5, &n), KVRT_ERR_INVALID_ARGUMENT);
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  EXPECT_ERR(kvrt_store_inspect(NULL, "x", NULL, &info), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_inspect(st, NULL, NULL, &info), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_inspect(st, "Ok_name-1.v2", NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(kvrt_store_inspect(st, "missing", NULL, &info), KVRT_ERR_NOT_FOUND);
  kvrt_store_close(NULL);
  kvrt_store_default_params(NULL);
  /* Struct sizes and reserved fields. */
  kvrt_store_default_params(&sp);
  assert_int_equal(sp.struct_size, sizeof sp);
  sp.struct_size = 4;
  EXPECT_ERR(kvrt_store_open(dir, &sp, &st2), KVRT_ERR_STRUCT_SIZE);
  kvrt_store_default_params(&sp);
  sp.reserved1 = 1;
  EXPECT_ERR(kvrt_store_open(dir, &sp, &st2), KVRT_ERR_INVALID_ARGUMENT);
  assert_null(st2);
  memset(&ss, 0, sizeof ss);
  ss.struct_size = 8;
  EXPECT_ERR(kvrt_store_save(st, s, "x", NULL, &ss), KVRT_ERR_STRUCT_SIZE);
  info.struct_size = 8;
  EXPECT_ERR(kvrt_store_inspect(st, "Ok_name-1.v2", NULL, &info), KVRT_ERR_STRUCT_SIZE);
  kvrt_snapshot_default_params(&pp);
  pp.compression_level = 1000;
  EXPECT_ERR(kvrt_store_save(st, s, "x", &pp, NULL), KVRT_ERR_INVALID_ARGUMENT);
  kvrt_snapshot_default_params(&pp);
  pp.reserved0 = 1;
  EXPECT_ERR(kvrt_store_load(st, g_model, "Ok_name-1.v2", &pp, &out), KVRT_ERR_INVALID_ARGUMENT);
  /* "x" was never saved by any of those calls. */
  EXPECT_ERR(kvrt_store_load(st, g_model, "x", NULL, &out), KVRT_ERR_NOT_FOUND);
  assert_null(out);
  /* A second handle on the same folder is refused while the first is open. */
  EXPECT_ERR(kvrt_store_open(dir, NULL, &st2), KVRT_ERR_IO);
  assert_null(st2);
  assert_non_null(strstr(kvrt_last_error(), "locked"));
  kvrt_store_close(st);
  st2 = open_store(dir);
  kvrt_store_close(st2);
  /* A file where the folder should be. */
  {
    char f[700];
    file_in(f, sizeof f, g_dir, "plain-file");
    tu_write_file(f, "x", 1);
    EXPECT_ERR(kvrt_store_open(f, NULL, &st2), KVRT_ERR_IO);
    unlink(f);
  }
  kvrt_session_destroy(s);
}

/* ---- damage ------------------------------------------------------------- */

/* A store with one f16 session of 70 tokens (4 full blocks) named "s". */
static void damaged_fixture(const char* dir, bytes* pack, bytes* manifest) {
  char p[700];
  kvrt_store* st = open_store(dir);
  kvrt_session* s = fed_session(KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 70, 21, NULL);
  save(st, s, "s");
  kvrt_session_destroy(s);
  kvrt_store_close(st);
  file_in(p, sizeof p, dir, "blocks.kvp");
  *pack = tu_read_file(p);
  file_in(p, sizeof p, dir, "s.kvm");
  *manifest = tu_read_file(p);
}

static void expect_store_load_fails(const char* dir, kvrt_status want, const char* needle) {
  kvrt_store* st = open_store(dir);
  kvrt_session* s = NULL;
  EXPECT_ERR(kvrt_store_load(st, g_model, "s", NULL, &s), want);
  assert_null(s);
  if (needle && !strstr(kvrt_last_error(), needle))
    fail_msg("message '%s' does not name '%s'", kvrt_last_error(), needle);
  assert_int_equal(blocks_used(), 0);
  kvrt_store_close(st);
}

static void expect_store_loads(const char* dir) {
  kvrt_store* st = open_store(dir);
  kvrt_session* s = NULL;
  EXPECT_OK(kvrt_store_load(st, g_model, "s", NULL, &s));
  assert_int_equal(tu_session_stats(s).n_tokens, 70);
  kvrt_session_destroy(s);
  kvrt_store_close(st);
}

static void put32(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

static uint64_t rd64(const uint8_t* p) {
  uint64_t v = 0;
  int i;
  for (i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

/* Pack offsets of the records, from the pack's own framing: a 48-byte
 * header, then records of 48 + frame + 8 bytes with the frame length at
 * byte 32 (docs/snapshot-format.md). */
#define PACK_HEADER 48
static size_t record_offsets(const bytes* pack, uint64_t* off, size_t max) {
  uint64_t o = PACK_HEADER;
  size_t n = 0;
  while (o + 48 <= pack->n && n < max) {
    off[n++] = o;
    o += 48 + rd64(pack->p + o + 32) + 8;
  }
  assert_int_equal(o, pack->n);
  return n;
}

static void test_damaged_pack(void** state) {
  char dir[600], pp[700];
  bytes pack, man;
  uint64_t off[16];
  size_t n;
  (void)state;
  store_dir(dir, sizeof dir, "damaged");
  damaged_fixture(dir, &pack, &man);
  file_in(pp, sizeof pp, dir, "blocks.kvp");
  n = record_offsets(&pack, off, 16);
  assert_int_equal(n, 4);
  expect_store_loads(dir);
  /* A flipped byte in block 2's compressed data: named by block and offset. */
  pack.p[off[2] + 48 + 20] ^= 0x10;
  tu_write_file(pp, pack.p, pack.n);
  expect_store_load_fails(dir, KVRT_ERR_CORRUPT, "block 2");
  pack.p[off[2] + 48 + 20] ^= 0x10;
  /* A flipped byte in block 1's record header (its key). The damage lies
   * before the end the manifest claims, so the open keeps the pack as it
   * is; new saves still go in and load. */
  pack.p[off[1] + 9] ^= 0x01;
  tu_write_file(pp, pack.p, pack.n);
  expect_store_load_fails(dir, KVRT_ERR_CORRUPT, "block 1");
  assert_int_equal(file_size(pp), (long long)pack.n);
  {
    kvrt_store* st = open_store(dir);
    kvrt_session *f = fed_session(KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 40, 99, NULL), *l = NULL;
    save(st, f, "fresh");
    EXPECT_OK(kvrt_store_load(st, g_model, "fresh", NULL, &l));
    kvrt_session_destroy(l);
    kvrt_session_destroy(f);
    EXPECT_OK(kvrt_store_remove(st, "fresh"));
    kvrt_store_close(st);
  }
  pack.p[off[1] + 9] ^= 0x01;
  /* Cut inside block 3: the pack is shorter than the manifest claims, so the
   * cut is not mistaken for a killed save's tail, and the load says so. */
  tu_write_file(pp, pack.p, (size_t)off[3] + 30);
  expect_store_load_fails(dir, KVRT_ERR_CORRUPT, "block 3");
  assert_int_equal(file_size(pp), (long long)off[3] + 30);
  /* Cut to the header alone. */
  tu_write_file(pp, pack.p, PACK_HEADER);
  expect_store_load_fails(dir, KVRT_ERR_CORRUPT, "block 0");
  /* A pack header with another version or a bad magic: the open says so. */
  {
    kvrt_store* st = NULL;
    put32(pack.p + 8, 2);
    tu_write_file(pp, pack.p, pack.n);
    EXPECT_ERR(kvrt_store_open(dir, NULL, &st), KVRT_ERR_VERSION);
    put32(pack.p + 8, 1);
    pack.p[0] = 'X';
    tu_write_file(pp, pack.p, pack.n);
    EXPECT_ERR(kvrt_store_open(dir, NULL, &st), KVRT_ERR_CORRUPT);
    pack.p[0] = 'K';
    pack.p[20] ^= 1; /* store id: header checksum */
    tu_write_file(pp, pack.p, pack.n);
    EXPECT_ERR(kvrt_store_open(dir, NULL, &st), KVRT_ERR_CORRUPT);
    pack.p[20] ^= 1;
    assert_null(st);
  }
  /* Restored: loads again. */
  tu_write_file(pp, pack.p, pack.n);
  expect_store_loads(dir);
  /* What a save killed mid-append leaves after the end every manifest
   * claims (a cut record, zeros): the open cuts it off. */
  {
    uint8_t* torn = malloc(pack.n + (size_t)(off[1] - off[0]) + 100);
    memcpy(torn, pack.p, pack.n);
    memcpy(torn + pack.n, pack.p + off[0], 30); /* the start of a record header */
    tu_write_file(pp, torn, pack.n + 30);
    expect_store_loads(dir);
    assert_int_equal(file_size(pp), (long long)pack.n);
    memset(torn + pack.n, 0, 100);
    tu_write_file(pp, torn, pack.n + 100);
    expect_store_loads(dir);
    assert_int_equal(file_size(pp), (long long)pack.n);
    /* A whole record past the claimed end is kept (a save that died before
     * its manifest): the pack reads as whole records. */
    memcpy(torn + pack.n, pack.p + off[0], (size_t)(off[1] - off[0]));
    tu_write_file(pp, torn, pack.n + (size_t)(off[1] - off[0]));
    expect_store_loads(dir);
    assert_int_equal(file_size(pp), (long long)(pack.n + (off[1] - off[0])));
    free(torn);
    tu_write_file(pp, pack.p, pack.n);
  }
  /* Another store's pack of the same blocks: the manifest is refused. */
  {
    char other[600], op[700];
    kvrt_store* st;
    store_dir(other, sizeof other, "damaged-other");
    st = open_store(other);
    kvrt_store_close(st);
    file_in(op, sizeof op, other, "blocks.kvp");
    {
      bytes fresh = tu_read_file(op);
      memcpy(pack.p + 16, fresh.p + 16, 32); /* its store id, generation and header checksum */
      free(fresh.p);
    }
    tu_write_file(pp, pack.p, pack.n);
    expect_store_load_fails(dir, KVRT_ERR_CORRUPT, "another store");
    remove_tree(other);
  }
  free(pack.p);
  free(man.p);
}

static void test_damaged_manifest(void** state) {
  char dir[600], mp[700];
  bytes pack, man;
  size_t i;
  (void)state;
  store_dir(dir, sizeof dir, "damaged-manifest");
  damaged_fixture(dir, &pack, &man);
  file_in(mp, sizeof mp, dir, "s.kvm");
  /* Every 37th byte flipped in turn: each is caught. */
  for (i = 0; i < man.n; i += 37) {
    man.p[i] ^= 0x04;
    tu_write_file(mp, man.p, man.n);
    {
      kvrt_store* st = open_store(dir);
      kvrt_session* s = NULL;
      const kvrt_status rc = kvrt_store_load(st, g_model, "s", NULL, &s);
      if (rc != KVRT_ERR_CORRUPT && rc != KVRT_ERR_VERSION && rc != KVRT_ERR_MODEL_MISMATCH)
        fail_msg("byte %zu flipped: status %d (%s)", i, (int)rc, kvrt_last_error());
      assert_null(s);
      kvrt_store_close(st);
    }
    man.p[i] ^= 0x04;
  }
  assert_int_equal(blocks_used(), 0);
  /* Truncated anywhere, and with bytes after it. */
  tu_write_file(mp, man.p, man.n - 1);
  expect_store_load_fails(dir, KVRT_ERR_CORRUPT, "truncated");
  tu_write_file(mp, man.p, 30);
  expect_store_load_fails(dir, KVRT_ERR_CORRUPT, "truncated");
  {
    uint8_t* more = malloc(man.n + 3);
    memcpy(more, man.p, man.n);
    memcpy(more + man.n, "abc", 3);
    tu_write_file(mp, more, man.n + 3);
    expect_store_load_fails(dir, KVRT_ERR_CORRUPT, "follows");
    free(more);
  }
  /* A newer version, an unknown required feature, a snapshot's magic. */
  put32(man.p + 8, 2);
  tu_write_file(mp, man.p, man.n);
  expect_store_load_fails(dir, KVRT_ERR_VERSION, "version 2");
  put32(man.p + 8, 1);
  put32(man.p + 12, 0x100);
  tu_write_file(mp, man.p, man.n);
  expect_store_load_fails(dir, KVRT_ERR_VERSION, NULL);
  put32(man.p + 12, 0);
  memcpy(man.p, "KVRTSNAP", 8);
  tu_write_file(mp, man.p, man.n);
  expect_store_load_fails(dir, KVRT_ERR_CORRUPT, "manifest");
  memcpy(man.p, "KVRTMNFT", 8);
  tu_write_file(mp, man.p, man.n);
  expect_store_loads(dir);
  free(pack.p);
  free(man.p);
}

/* A model of the same shapes with one weight bit changed: MODEL_MISMATCH. */
static void test_other_model(void** state) {
  char dir[600], path[700];
  bytes gg = tu_read_file(tu_model_path()), pack, man;
  kvrt_model* other = NULL;
  kvrt_store* st;
  kvrt_session* s = NULL;
  kvrt_store_entry_info info;
  (void)state;
  store_dir(dir, sizeof dir, "other-model");
  damaged_fixture(dir, &pack, &man);
  gg.p[gg.n * 3 / 4] ^= 0x01;
  file_in(path, sizeof path, g_dir, "other.gguf");
  tu_write_file(path, gg.p, gg.n);
  EXPECT_OK(kvrt_model_load(g_rt, path, NULL, &other));
  st = open_store(dir);
  EXPECT_ERR(kvrt_store_load(st, other, "s", NULL, &s), KVRT_ERR_MODEL_MISMATCH);
  assert_null(s);
  assert_non_null(strstr(kvrt_last_error(), "another model"));
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  EXPECT_ERR(kvrt_store_inspect(st, "s", other, &info), KVRT_ERR_MODEL_MISMATCH);
  /* Without a model, and with the right one, the inspection passes. */
  EXPECT_OK(kvrt_store_inspect(st, "s", NULL, &info));
  assert_int_equal(info.n_tokens, 70);
  assert_int_equal(info.n_blocks, 4);
  assert_int_equal(info.kv_format_k, KVRT_KV_FORMAT_F16);
  assert_int_equal(info.n_ctx, 512);
  assert_int_equal(info.block_tokens, 16);
  assert_int_equal(info.manifest_bytes, man.n);
  assert_int_equal(info.block_raw_bytes, 4u * TM_F16_BLOCK_BYTES);
  assert_int_equal(info.block_stored_bytes, pack.n - PACK_HEADER);
  EXPECT_OK(kvrt_store_inspect(st, "s", g_model, &info));
  kvrt_store_close(st);
  assert_int_equal(blocks_used(), 0);
  kvrt_model_destroy(other);
  unlink(path);
  free(gg.p);
  free(pack.p);
  free(man.p);
}

/* ---- compaction --------------------------------------------------------- */

/* Two sessions share a 64-token prompt; "c" is a copy of "b" saved before
 * the compaction. After "a" is removed, the compaction drops exactly a's
 * own block; "b" and the old-generation manifest "c" still load bitwise,
 * also after reopening; saves reuse the moved blocks; a damaged manifest
 * stops a compaction with the pack untouched. */
static void test_compact(void** state) {
  char dir[600], pack[700], cm[700];
  int32_t sys[64], own[20];
  float lb[TM_N_VOCAB], lr[TM_N_VOCAB];
  kvrt_session *a = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 256, 0);
  kvrt_session *b = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 256, 0);
  kvrt_session *r = tu_session(g_model, KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 256, 0), *l = NULL;
  kvrt_store* st;
  kvrt_store_save_stats ss;
  uint64_t freed = 0, off[16];
  long long p_full, p_after;
  bytes before, man;
  continuation want, got;
  (void)state;
  tu_tokens(sys, 64, 50);
  EXPECT_OK(kvrt_decode_step(a, sys, 64, NULL, 0));
  EXPECT_OK(kvrt_decode_step(b, sys, 64, NULL, 0));
  EXPECT_OK(kvrt_decode_step(r, sys, 64, NULL, 0));
  tu_tokens(own, 20, 51);
  EXPECT_OK(kvrt_decode_step(a, own, 20, NULL, 0));
  tu_tokens(own, 20, 52);
  EXPECT_OK(kvrt_decode_step(b, own, 20, lb, TM_N_VOCAB));
  EXPECT_OK(kvrt_decode_step(r, own, 20, lr, TM_N_VOCAB));
  want = continue_from(r, lr);
  kvrt_session_destroy(r);
  store_dir(dir, sizeof dir, "compact");
  file_in(pack, sizeof pack, dir, "blocks.kvp");
  file_in(cm, sizeof cm, dir, "c.kvm");
  st = open_store(dir);
  EXPECT_ERR(kvrt_store_compact(NULL, &freed), KVRT_ERR_INVALID_ARGUMENT);
  EXPECT_OK(kvrt_store_compact(st, &freed)); /* an empty store: nothing to drop */
  assert_int_equal(freed, 0);
  save(st, a, "a");
  save(st, b, "b");
  save(st, b, "c");
  p_full = file_size(pack);
  EXPECT_OK(kvrt_store_remove(st, "a"));
  /* A damaged manifest stops the compaction; the pack is untouched. */
  before = tu_read_file(pack);
  man = tu_read_file(cm);
  man.p[man.n / 2] ^= 0x08;
  tu_write_file(cm, man.p, man.n);
  EXPECT_ERR(kvrt_store_compact(st, &freed), KVRT_ERR_CORRUPT);
  assert_non_null(strstr(kvrt_last_error(), "c.kvm"));
  {
    bytes now = tu_read_file(pack);
    assert_int_equal(now.n, before.n);
    assert_memory_equal(now.p, before.p, before.n);
    free(now.p);
  }
  man.p[man.n / 2] ^= 0x08;
  tu_write_file(cm, man.p, man.n);
  /* Now it drops a's own block, and only that. */
  EXPECT_OK(kvrt_store_compact(st, &freed));
  p_after = file_size(pack);
  assert_true(freed > 0);
  assert_int_equal(p_after, p_full - (long long)freed);
  {
    bytes now = tu_read_file(pack);
    assert_int_equal(record_offsets(&now, off, 16), 5); /* 4 shared + b's own */
    free(now.p);
  }
  EXPECT_ERR(kvrt_store_load(st, g_model, "a", NULL, &l), KVRT_ERR_NOT_FOUND);
  EXPECT_OK(kvrt_store_load(st, g_model, "c", NULL, &l)); /* by key: its offsets are stale */
  got = continue_from(l, lb);
  assert_same_continuation(&got, &want);
  free(got.logits);
  kvrt_session_destroy(l);
  /* Saving b again finds every block in the new pack. */
  ss = save(st, b, "b");
  assert_int_equal(ss.blocks_reused, 5);
  assert_int_equal(ss.pack_bytes_written, 0);
  /* Saving a again writes only its own block back. */
  ss = save(st, a, "a");
  assert_int_equal(ss.blocks_written, 1);
  assert_int_equal(file_size(pack), p_full);
  EXPECT_OK(kvrt_store_remove(st, "a"));
  EXPECT_OK(kvrt_store_compact(st, &freed));
  assert_int_equal(file_size(pack), p_after);
  kvrt_store_close(st);
  /* Reopened; a cut record after the end is still cut off (only manifests of
   * the current pack count), and both names load. */
  {
    bytes now = tu_read_file(pack);
    uint8_t* torn = malloc(now.n + 30);
    memcpy(torn, now.p, now.n);
    memcpy(torn + now.n, now.p + PACK_HEADER, 30);
    tu_write_file(pack, torn, now.n + 30);
    free(torn);
    free(now.p);
  }
  st = open_store(dir);
  assert_int_equal(file_size(pack), p_after);
  EXPECT_OK(kvrt_store_load(st, g_model, "b", NULL, &l));
  got = continue_from(l, lb);
  assert_same_continuation(&got, &want);
  free(got.logits);
  kvrt_session_destroy(l);
  EXPECT_OK(kvrt_store_load(st, g_model, "c", NULL, &l));
  kvrt_session_destroy(l);
  kvrt_store_close(st);
  free(want.logits);
  free(before.p);
  free(man.p);
  kvrt_session_destroy(a);
  kvrt_session_destroy(b);
  assert_int_equal(blocks_used(), 0);
}

/* ---- one handle, several threads ---------------------------------------- */

typedef struct saver {
  kvrt_store* st;
  kvrt_session* s;
  const char* name;
  int failures;
} saver;

/* Saves its session and loads it back, again and again. No cmocka calls
 * off the main thread: failures are counted. */
static void* save_loop(void* arg) {
  saver* w = (saver*)arg;
  int i;
  for (i = 0; i < 6; ++i) {
    kvrt_session* l = NULL;
    if (kvrt_store_save(w->st, w->s, w->name, NULL, NULL) != KVRT_OK) ++w->failures;
    if (kvrt_store_load(w->st, g_model, w->name, NULL, &l) != KVRT_OK) ++w->failures;
    kvrt_session_destroy(l);
  }
  return NULL;
}

/* Two threads share one store handle (calls are serialized inside): every
 * save and load succeeds, and each name holds its own session. */
static void test_threads_share_a_handle(void** state) {
  char dir[600];
  float la[TM_N_VOCAB], lb[TM_N_VOCAB];
  kvrt_store* st;
  saver w[2];
  pthread_t th[2];
  int i;
  (void)state;
  store_dir(dir, sizeof dir, "threads");
  st = open_store(dir);
  w[0].st = w[1].st = st;
  w[0].s = fed_session(KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 50, 61, la);
  w[1].s = fed_session(KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q8, 45, 62, lb);
  w[0].name = "one";
  w[1].name = "two";
  w[0].failures = w[1].failures = 0;
  for (i = 0; i < 2; ++i) assert_int_equal(pthread_create(&th[i], NULL, save_loop, &w[i]), 0);
  for (i = 0; i < 2; ++i) assert_int_equal(pthread_join(th[i], NULL), 0);
  assert_int_equal(w[0].failures + w[1].failures, 0);
  for (i = 0; i < 2; ++i) {
    kvrt_session* l = NULL;
    continuation want, got;
    EXPECT_OK(kvrt_store_load(st, g_model, w[i].name, NULL, &l));
    assert_int_equal(tu_session_stats(l).n_tokens, i ? 45 : 50);
    want = continue_from(w[i].s, i ? lb : la);
    got = continue_from(l, i ? lb : la);
    assert_same_continuation(&got, &want);
    free(want.logits);
    free(got.logits);
    kvrt_session_destroy(l);
    kvrt_session_destroy(w[i].s);
  }
  kvrt_store_close(st);
  assert_int_equal(blocks_used(), 0);
}

/* ---- a save killed half way --------------------------------------------- */

/* The child: a long f32 session saved slowly under "victim". Plain exits
 * only: no test framework in a forked child. */
static void child_save(const char* dir) {
  kvrt_runtime_params rp;
  kvrt_runtime* rt = NULL;
  kvrt_model* m = NULL;
  kvrt_session_params sp;
  kvrt_session* s = NULL;
  kvrt_store* st = NULL;
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
  tu_tokens(t, 2048, 78);
  if (kvrt_decode_step(s, t, 2048, NULL, 0) != KVRT_OK) _exit(13);
  if (kvrt_store_open(dir, NULL, &st) != KVRT_OK) _exit(14);
  kvrt_snapshot_default_params(&p);
  p.compression_level = 19; /* slow, so that the kill lands mid-save */
  for (;;) {
    if (kvrt_store_save(st, s, "victim", &p, NULL) != KVRT_OK) _exit(15);
    /* New blocks for the next round. */
    if (kvrt_session_rewind(s, 0) != KVRT_OK) _exit(16);
    t[0] = 3 + t[0] % 500;
    if (kvrt_decode_step(s, t, 2048, NULL, 0) != KVRT_OK) _exit(17);
  }
}

static void test_killed_mid_save(void** state) {
  char dir[600], pack[700], mp[700];
  bytes before, after;
  float last[TM_N_VOCAB];
  kvrt_session *s = fed_session(KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_F16, 40, 31, last), *b = NULL;
  kvrt_store* st;
  continuation want, got;
  long long size0, size_seen = 0;
  pid_t pid;
  int status = 0, waited_ms = 0, killed = 0;
  (void)state;
  store_dir(dir, sizeof dir, "killed");
  file_in(pack, sizeof pack, dir, "blocks.kvp");
  file_in(mp, sizeof mp, dir, "victim.kvm");
  st = open_store(dir);
  save(st, s, "victim"); /* the previous state */
  kvrt_store_close(st);
  before = tu_read_file(mp);
  size0 = file_size(pack);
  fflush(NULL);
  pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) child_save(dir);
  /* Kill the child once its first records are in the pack but its manifest
   * is not: mid-append. */
  while (waited_ms < 120000) {
    struct timespec ts = {0, 1000000};
    size_seen = file_size(pack);
    if (size_seen > size0) {
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
    fail_msg("the child never started appending (status %d, %d ms)", status, waited_ms);
  }
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  /* The manifest is the previous one, byte for byte, and loads exactly. */
  after = tu_read_file(mp);
  assert_int_equal(after.n, before.n);
  assert_memory_equal(after.p, before.p, before.n);
  st = open_store(dir); /* cuts off the unfinished record, if any */
  EXPECT_OK(kvrt_store_load(st, g_model, "victim", NULL, &b));
  assert_int_equal(tu_session_stats(b).n_tokens, 40);
  want = continue_from(s, last);
  got = continue_from(b, last);
  assert_same_continuation(&got, &want);
  free(want.logits);
  free(got.logits);
  kvrt_session_destroy(b);
  /* The pack ends on a whole record: a new save appends and loads. */
  save(st, s, "after");
  EXPECT_OK(kvrt_store_load(st, g_model, "after", NULL, &b));
  kvrt_session_destroy(b);
  kvrt_store_close(st);
  {
    bytes pk = tu_read_file(pack);
    uint64_t off[512];
    record_offsets(&pk, off, 512);
    free(pk.p);
  }
  free(before.p);
  free(after.p);
  kvrt_session_destroy(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip_f32),
      cmocka_unit_test(test_roundtrip_f16),
      cmocka_unit_test(test_roundtrip_q8),
      cmocka_unit_test(test_roundtrip_q4),
      cmocka_unit_test(test_roundtrip_q8_q4),
      cmocka_unit_test(test_roundtrip_empty),
      cmocka_unit_test(test_incremental_f16),
      cmocka_unit_test(test_incremental_q8),
      cmocka_unit_test(test_shared_prefix),
      cmocka_unit_test(test_names_and_arguments),
      cmocka_unit_test(test_damaged_pack),
      cmocka_unit_test(test_damaged_manifest),
      cmocka_unit_test(test_other_model),
      cmocka_unit_test(test_compact),
      cmocka_unit_test(test_threads_share_a_handle),
      cmocka_unit_test(test_killed_mid_save),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
