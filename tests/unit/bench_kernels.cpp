// Hand-run benchmark of the CPU kernels: memory read bandwidth, F16 matvec
// and paged attention throughput. Not a test; it only prints figures.
//
// Built with the tests: build/tests/unit/bench_kernels [quick] [avx2]. The whole
// program is compiled for AVX2 (it only runs on AVX2 machines); the
// library's kernels dispatch to AVX-512 where the CPU has it.
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#include "backend/backend.hpp"
#include "kernels/common/fp16.h"
#include "kernels/cpu/cpu-kernels.h"
#include "util/thread-pool.hpp"

using namespace kvrt_k;

namespace {

// KVRT_BENCH_CPU_TIME=1 measures the calling thread's CPU time instead of
// wall time (single-thread runs only): useful on a machine shared with
// other jobs, where wall time mostly measures the others.
bool g_cpu_time = getenv("KVRT_BENCH_CPU_TIME") != nullptr;

double now_s() {
  if (g_cpu_time) {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs fn(thread_index) on n threads and returns the wall time.
template <class F>
double timed_threads(int n, F fn) {
  double t0 = now_s();
  std::vector<std::thread> th;
  for (int i = 1; i < n; ++i) th.emplace_back(fn, i);
  fn(0);
  for (auto& t : th) t.join();
  return now_s() - t0;
}

float sum_bytes(const float* p, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  float b[8];
  _mm256_storeu_ps(b, s);
  return b[0] + b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + b[7];
}

// Four streams `per` bytes apart, `per` bytes each, read side by side.
float sum4(const uint8_t* p, size_t per) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 64 <= per; i += 64) {
    const float* f = (const float*)(p + i);
    const size_t q = per / 4;
    a0 = _mm256_add_ps(a0, _mm256_add_ps(_mm256_loadu_ps(f), _mm256_loadu_ps(f + 8)));
    a1 = _mm256_add_ps(a1, _mm256_add_ps(_mm256_loadu_ps(f + q), _mm256_loadu_ps(f + q + 8)));
    a2 = _mm256_add_ps(a2, _mm256_add_ps(_mm256_loadu_ps(f + 2 * q), _mm256_loadu_ps(f + 2 * q + 8)));
    a3 = _mm256_add_ps(a3, _mm256_add_ps(_mm256_loadu_ps(f + 3 * q), _mm256_loadu_ps(f + 3 * q + 8)));
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  float b[8];
  _mm256_storeu_ps(b, s);
  return b[0] + b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + b[7];
}

volatile float g_sink;

double bandwidth(int threads) {
  const size_t bytes = (size_t)1 << 30, n = bytes / 4;
  float* buf = (float*)aligned_alloc(64, bytes);
  for (size_t i = 0; i < n; ++i) buf[i] = (float)(i & 1023);
  std::vector<double> gbs;
  for (int rep = 0; rep < 5; ++rep) {
    double t = timed_threads(threads, [&](int ti) {
      size_t per = n / threads;
      g_sink = sum_bytes(buf + ti * per, per);
    });
    gbs.push_back(bytes / t / 1e9);
  }
  free(buf);
  return median(gbs);
}

// Several copies of the matrix (>= 512 MiB in all) are cycled so every
// product streams its weights from memory, not from the last-level cache.
void bench_matvec(uint32_t wtype, size_t rows, size_t k, int threads, size_t m_rows = 1) {
  const size_t rb = weight_row_bytes(wtype, k), mat = rb * rows;
  size_t copies = std::max<size_t>(2, ((size_t)512 << 20) / mat);
  std::vector<uint8_t> w(mat * copies);
  for (size_t i = 0; i < w.size(); i += 2) {
    uint16_t h = f32_to_f16((float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f);
    memcpy(&w[i], &h, 2);
  }
  std::vector<float> x(k * m_rows, 0.5f), y(rows * m_rows);
  std::vector<double> gbs;
  for (int rep = 0; rep < 5; ++rep) {
    double t = timed_threads(threads, [&](int ti) {
      std::vector<float> scratch(matmul_scratch_floats(k));
      size_t r0 = rows * ti / threads, r1 = rows * (ti + 1) / threads;
      for (size_t c = 0; c < copies; ++c)
        matmul(wtype, w.data() + c * mat, k, r0, r1, x.data(), k, m_rows, y.data(), rows,
               scratch.data());
    });
    gbs.push_back((double)mat * copies / t / 1e9);
  }
  double g = median(gbs);
  printf("  %-5s %6zu x %-5zu M=%-3zu %d thr: %6.2f GB/s  (%.3f ms/product, %.1f GFLOP/s)\n",
         wtype == W_F16 ? "f16" : wtype == W_Q8_0 ? "q8_0" : wtype == W_F32 ? "f32" : "bf16", rows,
         k, m_rows, threads, g, mat / g / 1e6, 2.0 * rows * k * m_rows * g / mat);
}

// One decode step's matrix products of the synthetic benchmark model (dim
// 1024, 12 layers, 4 KV heads of 64, ff 4096, vocab 32000, f16: 430 MB),
// grouped and split across the thread pool as Session::forward does; and a
// pass that only reads the same bytes with four streams per thread.
void bench_decode_step(unsigned threads) {
  const size_t d = 1024, kvd = 256, ff = 4096, vocab = 32000, n_layer = 12;
  struct Group {
    size_t n;
    size_t rows[3], cols;
  };
  const Group layer[4] = {{3, {d, kvd, kvd}, d}, {1, {d}, d}, {2, {ff, ff}, d}, {1, {d}, ff}};
  size_t total = vocab * d * 2;
  for (const Group& g : layer)
    for (size_t i = 0; i < g.n; ++i) total += g.rows[i] * g.cols * 2 * n_layer;
  std::vector<uint8_t> w(total);
  for (size_t i = 0; i < w.size(); i += 2) {
    uint16_t h = f32_to_f16((float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f);
    memcpy(&w[i], &h, 2);
  }
  kvrt::ThreadPool pool(threads);
  kvrt::CpuBackend be(pool);
  kvrt::BackendScratch s;
  s.row_floats = matmul_scratch_floats(ff);
  std::vector<float> rows(threads * s.row_floats), x(ff, 0.5f), y(3 * vocab);
  s.rows = rows.data();
  auto step = [&] {
    const uint8_t* p = w.data();
    auto mat = [&](size_t r, size_t c) {
      kvrt::MatRef m{W_F16, (uint32_t)r, (uint32_t)c, c * 2, p};
      p += r * c * 2;
      return m;
    };
    for (size_t l = 0; l < n_layer; ++l)
      for (const Group& g : layer) {
        kvrt::MatRef m[3];
        float* out[3];
        size_t ld[3];
        for (size_t i = 0; i < g.n; ++i) {
          m[i] = mat(g.rows[i], g.cols);
          out[i] = y.data() + i * vocab;
          ld[i] = g.rows[i];
        }
        be.matmul_multi(m, out, ld, g.n, x.data(), 1, s);
      }
    kvrt::MatRef out = mat(vocab, d);
    be.matmul(out, x.data(), 1, y.data(), vocab, s);
  };
  std::vector<double> t_step, t_read;
  std::vector<float> sums(threads);
  for (int rep = 0; rep < 23; ++rep) {
    double t0 = now_s();
    step();
    double t1 = now_s();
    pool.run(threads, [&](unsigned task, unsigned) {
      const size_t per = total / threads / 4 / 128 * 128;  // bytes per stream
      sums[task] += sum4(w.data() + task * 4 * per, per);
    });
    double t2 = now_s();
    if (rep >= 2) {  // the first passes fault the pages in
      t_step.push_back(t1 - t0);
      t_read.push_back(t2 - t1);
    }
  }
  g_sink = sums[0];
  const double ms = median(t_step) * 1e3, rms = median(t_read) * 1e3;
  printf("  decode step's products, %.0f MB f16, %u thr: %.2f ms (%.2f GB/s); read only: %.2f ms (%.2f GB/s); %.2fx\n",
         total / 1e6, threads, ms, total / ms / 1e6, rms, total / rms / 1e6, ms / rms);
}

void bench_attention(int threads, uint32_t fmt) {
  const uint32_t n_tok = 16384, hd = 64, n_kv = 4, n_head = 16, bt = 16;
  KvLayout L;
  // Several layers: each call reads a different one, so it comes from memory.
  const uint32_t n_layer = 32;
  kv_layout_init(&L, n_layer, n_kv, hd, bt, fmt, fmt);
  const uint32_t n_blocks = n_tok / bt;
  std::vector<uint8_t> pool((size_t)n_blocks * L.block_bytes);
  for (size_t i = 0; i < pool.size(); i += 2) {
    uint16_t h = f32_to_f16((float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f);
    memcpy(&pool[i], &h, 2);
  }
  std::vector<const uint8_t*> blocks(n_blocks);
  for (uint32_t b = 0; b < n_blocks; ++b) blocks[b] = pool.data() + (size_t)((b * 7919u) % n_blocks) * L.block_bytes;
  std::vector<float> q(n_head * hd, 0.1f), out(n_head * hd);
  const double bytes_per_layer = (double)n_tok * n_kv * hd * kv_elem_bytes(fmt) * 2;
  std::vector<double> gbs;
  for (int rep = 0; rep < 5; ++rep) {
    double t = timed_threads(threads, [&](int ti) {
      for (uint32_t l = 0; l < n_layer; ++l) {
        AttnArgs a{&L, blocks.data(), l, q.data(), out.data(), n_head * hd, 1, n_head,
                   (int32_t)n_tok - 1, 0.125f};
        for (uint32_t h = ti; h < n_kv; h += threads) attention(a, h);
      }
    });
    gbs.push_back(bytes_per_layer * n_layer / t / 1e9);
  }
  double g = median(gbs);
  printf("  attention %s, %u tokens, hd %u, %u KV / %u Q heads, %d thr: %6.2f GB/s (%.3f ms/layer)\n",
         fmt == KV_F16 ? "f16" : "f32", n_tok, hd, n_kv, n_head, threads, g,
         bytes_per_layer / g / 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "quick") == 0) quick = true;
    if (strcmp(argv[i], "avx2") == 0) cpu_isa_set(CpuIsa::avx2);  // on an AVX-512 CPU too
  }
  printf("kernels ISA: %s\n", cpu_isa_name(cpu_isa()));
  printf("memory read bandwidth (1 GiB sum, median of 5):\n");
  double bw1 = bandwidth(1), bw2 = bandwidth(2);
  printf("  1 thr: %.2f GB/s   2 thr: %.2f GB/s\n", bw1, bw2);
  printf("matvec (weights streamed from memory):\n");
  for (int thr : {1, 2}) {
    bench_matvec(W_F16, 4096, 1024, thr);
    bench_matvec(W_F16, 1024, 4096, thr);
    bench_matvec(W_F16, 32000, 1024, thr);
  }
  bench_decode_step(2);
  if (!quick) {
    bench_matvec(W_Q8_0, 4096, 4096, 1);
    bench_matvec(W_F32, 4096, 1024, 1);
    bench_matvec(W_BF16, 4096, 1024, 1);
    printf("prefill-shaped products (M activation rows):\n");
    bench_matvec(W_F16, 1024, 4096, 1, 8);
    bench_matvec(W_F16, 1024, 4096, 1, 16);
    bench_matvec(W_F16, 1024, 4096, 1, 64);
    bench_matvec(W_F16, 4096, 1024, 1, 64);
    bench_matvec(W_Q8_0, 1024, 4096, 1, 64);
    bench_matvec(W_F32, 1024, 4096, 1, 64);
  }
  bench_attention(1, KV_F16);
  bench_attention(2, KV_F16);
  if (!quick) bench_attention(1, KV_F32);
  return 0;
}
