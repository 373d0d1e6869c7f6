// How much of the calling thread's stack kvrt_decode_step() takes. The
// caller runs kernels on its own stack (one thread: all of them), so an
// application that decodes on a thread with a small stack (a fiber, a job
// system's worker) needs a bound; docs/api.md states it and this test holds
// the library to it. A thread with a 1 MiB stack paints the part below its
// frame, decodes a prompt (one call: a prefill) and single tokens through
// every KV format, then finds the deepest byte that changed.
//
// Models: the test model (head_dim 8: the quantized formats' float step)
// and `kvrt synth` models of head_dim 64 (the rounded-query step) with 1,
// 2, 3, 4 and 7 query heads per KV head (3 and 7 run as padded passes of 4
// and 8 rows), and of head_dim 128 and 256 (the two sizes of the quantized
// walks' buffers).
#include <pthread.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "known-answers.hpp"
#include "kvrt/kvrt.h"
#include "synth-models.hpp"

extern "C" {
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
}

namespace {

// Bounds, KiB, for builds without sanitizers (which add redzones to every
// frame and are only held to kSanitizedKiB); docs/api.md gives the figures.
// q8/q4 with the AVX2 or scalar kernels are held to kQuantKiB, so that a
// fiber's 64 KiB stack keeps 16 KiB for its owner's frames; the AVX-512
// kernels' frames are larger (not measured here) and held to
// kQuantAvx512KiB.
constexpr size_t kF16KiB = 32;
constexpr size_t kQuantKiB = 48;
constexpr size_t kQuantAvx512KiB = 160;
constexpr size_t kSanitizedKiB = 256;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

constexpr size_t kStackBytes = size_t{1} << 20;  // the decoding thread's
constexpr size_t kSkipBytes = 64 << 10;          // left unpainted at the bottom
constexpr uint64_t kPaint = 0xA5C3A5C3A5C3A5C3ull;
constexpr uint32_t kPrompt = 40, kSteps = 20;

struct Job {
  kvrt_model* model;
  uint32_t kf, vf;
  int32_t n_vocab;
  kvrt_status status;
  char message[256];
  size_t used;  // bytes below the painting frame that the decode wrote
};

// The decode: a fresh session, one prefill call, then kSteps single tokens.
__attribute__((noinline)) void decode(Job* j) {
  kvrt_session_params sp;
  kvrt_session_default_params(&sp);
  sp.kv_format_k = j->kf;
  sp.kv_format_v = j->vf;
  kvrt_session* s = nullptr;
  j->status = kvrt_session_create(j->model, &sp, &s);
  std::vector<float> logits((size_t)j->n_vocab);
  std::vector<int32_t> tok(kPrompt);
  for (uint32_t i = 0; i < kPrompt; ++i) tok[i] = (int32_t)((i * 37 + 5) % (uint32_t)j->n_vocab);
  if (j->status == KVRT_OK)
    j->status = kvrt_decode_step(s, tok.data(), tok.size(), logits.data(), logits.size());
  for (uint32_t i = 0; i < kSteps && j->status == KVRT_OK; ++i) {
    const int32_t t = (int32_t)((i * 101 + 3) % (uint32_t)j->n_vocab);
    j->status = kvrt_decode_step(s, &t, 1, logits.data(), logits.size());
  }
  if (j->status != KVRT_OK) std::snprintf(j->message, sizeof j->message, "%s", kvrt_last_error());
  kvrt_session_destroy(s);
}

// Paints the stack from kSkipBytes above its lowest address to 8 KiB below
// this frame (the painting call's own frame stays above it), decodes, and
// measures from this frame down to the deepest word that changed.
__attribute__((noinline)) void paint_and_decode(Job* j, uint8_t* lo) {
  volatile uint8_t here = 0;
  uint8_t* top = (uint8_t*)&here;
  uint64_t* a = (uint64_t*)(((uintptr_t)lo + kSkipBytes + 7) & ~(uintptr_t)7);
  uint64_t* b = (uint64_t*)(((uintptr_t)top - 8192) & ~(uintptr_t)7);
  for (volatile uint64_t* p = a; p < b; ++p) *p = kPaint;
  decode(j);
  uint64_t* p = a;
  while (p < b && *p == kPaint) ++p;
  j->used = (size_t)(top - (uint8_t*)p);
  if (p == a) j->used = SIZE_MAX;  // reached the unpainted bottom: too deep to tell
}

void* thread_main(void* arg) {
  pthread_attr_t at;
  void* lo = nullptr;
  size_t size = 0;
  if (pthread_getattr_np(pthread_self(), &at) == 0) {
    pthread_attr_getstack(&at, &lo, &size);
    pthread_attr_destroy(&at);
  }
  Job* j = static_cast<Job*>(arg);
  if (!lo) {
    j->status = KVRT_ERR_INTERNAL;
    std::snprintf(j->message, sizeof j->message, "pthread_getattr_np gave no stack address");
    return nullptr;
  }
  paint_and_decode(j, static_cast<uint8_t*>(lo));
  return nullptr;
}

kvrt_runtime* runtime() {
  kvrt_runtime_params rp;
  kvrt_runtime_default_params(&rp);
  rp.n_threads = 1;  // the caller runs every kernel
  kvrt_runtime* rt = nullptr;
  assert_int_equal(kvrt_runtime_create(&rp, &rt), KVRT_OK);
  return rt;
}

size_t quant_bound_kib() {
  return std::strstr(kvrt_build_info(), "cpu: avx512") ? kQuantAvx512KiB : kQuantKiB;
}

// Decodes with each format on a fresh thread; asserts the bounds; prints the
// figures.
void check_model(kvrt_runtime* rt, const std::string& path, const char* name) {
  kvrt_model* m = nullptr;
  if (kvrt_model_load(rt, path.c_str(), nullptr, &m) != KVRT_OK)
    fail_msg("%s: %s", path.c_str(), kvrt_last_error());
  kvrt_model_info info;
  std::memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  assert_int_equal(kvrt_model_get_info(m, &info), KVRT_OK);
  const uint32_t fmts[3] = {KVRT_KV_FORMAT_F16, KVRT_KV_FORMAT_Q8, KVRT_KV_FORMAT_Q4};
  const char* names[3] = {"f16", "q8", "q4"};
  for (int f = 0; f < 3; ++f) {
    Job j{};
    j.model = m;
    j.kf = j.vf = fmts[f];
    j.n_vocab = (int32_t)info.n_vocab;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, kStackBytes);
    pthread_t th;
    assert_int_equal(pthread_create(&th, &at, thread_main, &j), 0);
    pthread_join(th, nullptr);
    pthread_attr_destroy(&at);
    if (j.status != KVRT_OK)
      fail_msg("%s %s: status %d: %s", name, names[f], (int)j.status, j.message);
    const size_t bound = (kSanitized ? kSanitizedKiB : f == 0 ? kF16KiB : quant_bound_kib()) << 10;
    std::printf("stack: %-22s %-3s %6.1f KiB (bound %zu KiB%s)\n", name, names[f],
                j.used / 1024.0, bound >> 10, kSanitized ? ", sanitized build" : "");
    if (j.used > bound)
      fail_msg("%s %s: decode took %zu bytes of the caller's stack, over %zu", name, names[f],
               j.used, bound);
  }
  kvrt_model_destroy(m);
}

void test_test_model(void**) {
  kvrt_runtime* rt = runtime();
  const std::string path = kvrt_test::model_path();
  if (path.empty()) fail_msg("test model not found: set KVRT_MODEL to stories260K.gguf");
  check_model(rt, path, "test model");
  kvrt_runtime_destroy(rt);
}

void test_synthetic(void**) {
  const kvrt_test::SynthShape shapes[] = {{"hd64, 1 head per KV", "4", "4", "256"},
                                          {"hd64, 2 heads per KV", "4", "2", "256"},
                                          {"hd64, 3 heads per KV", "6", "2", "384"},
                                          {"hd64, 4 heads per KV", "8", "2", "512"},
                                          {"hd64, 7 heads per KV", "7", "1", "448"},
                                          {"hd128, 4 heads per KV", "8", "2", "1024"},
                                          {"hd256, 4 heads per KV", "8", "2", "2048"}};
  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("kvrt-stack-" + std::to_string(getpid()))).string();
  std::filesystem::create_directories(dir);
  kvrt_runtime* rt = runtime();
  for (const kvrt_test::SynthShape& s : shapes) {
    const std::string path = dir + "/model.gguf";
    assert_int_equal(kvrt_test::write_synth_model(s, path, "f16", "5"), 0);
    check_model(rt, path, s.name);
  }
  kvrt_runtime_destroy(rt);
  std::filesystem::remove_all(dir);
}

}  // namespace

int main() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_test_model),
      cmocka_unit_test(test_synthetic),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
