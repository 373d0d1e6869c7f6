/* The C example of README.md, verbatim between the markers (a CTest check
 * compares them), run here against the test model. */

/* POSIX (dup, mkstemp) for the harness below, under -std=c11. */
#define _POSIX_C_SOURCE 200809L

/* README example begins */
#include <kvrt/kvrt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prints up to n_predict tokens that follow prompt. Returns 0 or a kvrt_status. */
int generate(const char* model_path, const char* prompt, int n_predict) {
  kvrt_runtime* rt = NULL;
  kvrt_model* model = NULL;
  kvrt_session* session = NULL;
  kvrt_model_info info = {.struct_size = sizeof info};
  kvrt_sampler_params sampler;
  int32_t tokens[256], next;
  size_t n_tokens = 0, len = 0;
  char piece[64];
  float* logits = NULL;

  kvrt_status st = kvrt_runtime_create(NULL, &rt); /* 1 GiB KV budget, a thread per core */
  if (!st) st = kvrt_model_load(rt, model_path, NULL, &model);
  if (!st) st = kvrt_model_get_info(model, &info);
  if (!st) st = kvrt_tokenize(model, prompt, strlen(prompt), KVRT_TOKENIZE_ADD_BOS, tokens, 256, &n_tokens);
  if (!st) st = kvrt_session_create(model, NULL, &session); /* f16 KV cache */
  kvrt_sampler_default_params(&sampler);
  sampler.temperature = 0.0f; /* greedy */
  if (!st) st = kvrt_session_set_sampler(session, &sampler);
  if (!st && !(logits = malloc(info.n_vocab * sizeof *logits))) st = KVRT_ERR_OUT_OF_MEMORY;
  if (!st) st = kvrt_decode_step(session, tokens, n_tokens, logits, info.n_vocab); /* prefill */
  for (int i = 0; !st && i < n_predict; ++i) {
    st = kvrt_session_sample(session, logits, info.n_vocab, &next);
    if (st || next == info.eos_token) break;
    if (!st) st = kvrt_token_to_piece(model, next, piece, sizeof piece, &len);
    if (!st) printf("%.*s", (int)len, piece);
    if (!st) st = kvrt_decode_step(session, &next, 1, logits, info.n_vocab);
  }
  if (st) fprintf(stderr, "kvrt: %s: %s\n", kvrt_status_string(st), kvrt_last_error());
  free(logits);
  kvrt_session_destroy(session); /* in any order; NULL is fine */
  kvrt_model_destroy(model);
  kvrt_runtime_destroy(rt);
  return (int)st;
}
/* README example ends */

#include "api-test-util.h"

#include <unistd.h>

/* Runs generate() with stdout sent to a temporary file; returns its status
 * and the text printed. */
static int run_captured(const char* model_path, int n_predict, char* out, size_t cap) {
  char path[4096];
  const char* dir = getenv("TMPDIR");
  int fd, saved, rc;
  ssize_t got;
  snprintf(path, sizeof path, "%s/kvrt-readme-XXXXXX", dir && dir[0] ? dir : "/tmp");
  fd = mkstemp(path);
  assert_true(fd >= 0);
  fflush(stdout);
  saved = dup(1);
  assert_true(saved >= 0);
  assert_true(dup2(fd, 1) >= 0);
  rc = generate(model_path, "Once upon a time", n_predict);
  fflush(stdout);
  assert_true(dup2(saved, 1) >= 0);
  close(saved);
  assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
  got = read(fd, out, cap - 1);
  assert_true(got >= 0);
  out[got] = '\0';
  close(fd);
  unlink(path);
  return rc;
}

static void test_readme_example_generates(void** state) {
  char text[4096];
  (void)state;
  assert_int_equal(run_captured(tu_model_path(), 27, text, sizeof text), 0);
  /* The model's greedy continuation (see the reference in test-api-state). */
  assert_string_equal(text, ", there was a little girl named Lily. She loved to play outside in the park.");
}

static void test_readme_example_reports_errors(void** state) {
  char text[256];
  (void)state;
  assert_int_equal(run_captured("/nonexistent-dir-kvrt/model.gguf", 4, text, sizeof text),
                   KVRT_ERR_IO);
  assert_string_equal(text, "");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_readme_example_generates),
      cmocka_unit_test(test_readme_example_reports_errors),
  };
  return cmocka_run_group_tests_name("readme-example", tests, NULL, NULL);
}
