// Benchmark (not a test): decode-step attention time of an f16 cache against
// q8 and q4 caches, one query over a long context, through the CPU backend.
// Built with the tests: build/tests/unit/bench-attention-quant.
// Run:   bench-attention-quant [THREADS[,THREADS...] [DEPTH[,DEPTH...] [REPEATS [LAYERS [cold|warm [avx2]]]]]]
// LAYERS (default 1): layers per block. The engine's blocks hold every layer
// (12 for the synthetic model), so one layer's parts of successive blocks
// are a block apart; with 1 they sit back to back, which flatters hardware
// prefetch. The middle layer is timed. With `cold`, 256 MiB are read
// before each call, as a decode step's weight reads do between two layers'
// attention, so the cache comes from memory rather than from the CPU's
// caches (without it, a depth-4096 q8 layer, 2 MB, stays cached). With
// `avx2`, the kernels of that level run even where the CPU has AVX-512 (the
// step CPUs without AVX-512 take).
// Columns: the kernel's median time per layer and the cache bytes it read
// per second; then the read floor, a pass that only loads the same bytes
// split the same way (one task per KV head), and the kernel's time over it.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sys/mman.h>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "kernels/common/kv-quant.h"
#include "kernels/cpu/attention-quant.h"
#include "kernels/cpu/cpu-kernels.h"
#include "util/thread-pool.hpp"

using namespace kvrt_k;

namespace {

// The synthetic benchmark model's attention shape: 16 query heads over 4 KV
// heads of 64, blocks of 16 tokens, one layer (the per-layer cost).
constexpr uint32_t kHeads = 16, kKv = 4, kHd = 64, kBt = 16;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Block memory mapped like the pool's slabs (huge pages advised).
struct Slab {
  uint8_t* p = nullptr;
  size_t n = 0;
  void map(size_t bytes) {
    n = bytes;
    p = static_cast<uint8_t*>(mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (p == MAP_FAILED) std::abort();
    madvise(p, n, MADV_HUGEPAGE);
  }
  Slab() = default;
  Slab(const Slab&) = delete;
  Slab& operator=(const Slab&) = delete;
  ~Slab() {
    if (p) munmap(p, n);
  }
};

// One cache of `depth` tokens in format fmt (q8/q4 blocks use an f16 stage
// for the tail, here empty because depth is a multiple of the block).
struct Bench {
  KvLayout lay, stage_lay;
  Slab slab;
  std::vector<const uint8_t*> ptrs;
  std::vector<uint8_t> stage;
  size_t bytes = 0;  // cache bytes one call reads
};

void fill(Bench& b, uint32_t fmt, uint32_t depth, uint32_t layers) {
  kv_layout_init(&b.lay, layers, kKv, kHd, kBt, fmt, fmt);
  kv_layout_init(&b.stage_lay, layers, kKv, kHd, kBt, KV_F16, KV_F16);
  const uint32_t layer = layers / 2;
  const uint32_t n_blocks = (depth + kBt - 1) / kBt;
  // One huge-page-advised mapping for all blocks, as the pool's slabs are,
  // filled with codes of random data (the speed does not depend on them).
  b.slab.map((size_t)n_blocks * b.lay.block_bytes);
  std::vector<float> rows((size_t)kBt * kHd);
  uint64_t r = 88172645463325252ull;
  auto rnd = [&] {
    r ^= r << 13; r ^= r >> 7; r ^= r << 17;
    return (float)((r >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
  };
  for (uint32_t i = 0; i < n_blocks; ++i) {
    uint8_t* blk = b.slab.p + (size_t)i * b.lay.block_bytes;
    for (uint32_t h = 0; h < kKv; ++h) {
      for (auto& f : rows) f = rnd();
      if (fmt == KV_F16) {
        kv_store(KV_F16, blk + kv_k_offset(b.lay, layer, h), rows.data(), rows.size());
        kv_store(KV_F16, blk + kv_v_offset(b.lay, layer, h), rows.data(), rows.size());
      } else {
        kvq_quantize_k(fmt, blk + kv_k_offset(b.lay, layer, h), rows.data(), kHd, kBt, kBt, kHd);
        kvq_quantize_v(fmt, blk + kv_v_offset(b.lay, layer, h), rows.data(), kHd, kBt, kBt, kHd);
      }
    }
    b.ptrs.push_back(blk);
  }
  b.stage.assign(b.stage_lay.block_bytes, 0);
  b.bytes = (size_t)n_blocks * kKv * (b.lay.k_head_bytes + b.lay.v_head_bytes);
}

// The read floor: the same bytes one call's attention reads (each KV head's
// K and V parts of every block, one task per KV head as the kernels split
// them), loaded and summed with no other work.
// 64-byte vector loads; one clone per ISA level, picked at load time, so the
// floor does not depend on the build's -march (checked against an -march=native build).
typedef uint64_t U64x8 __attribute__((vector_size(64), aligned(1)));
__attribute__((target_clones("avx512f", "avx2", "default")))
uint64_t read_run(const uint8_t* p, size_t n, uint64_t r) {
  U64x8 a = {}, b = {};
  size_t x = 0;
  for (; x + 128 <= n; x += 128) {
    a ^= *(const U64x8*)(p + x);
    b ^= *(const U64x8*)(p + x + 64);
  }
  if (x + 64 <= n) a ^= *(const U64x8*)(p + x);
  a ^= b;
  for (int j = 0; j < 8; ++j) r ^= a[j];
  return r;
}
uint64_t read_parts(const Bench& b, uint32_t layer, uint32_t head, uint32_t n_blocks) {
  uint64_t r = 0;
  const size_t ko = kv_k_offset(b.lay, layer, head), vo = kv_v_offset(b.lay, layer, head);
  for (uint32_t i = 0; i < n_blocks; ++i) {
    r = read_run(b.ptrs[i] + ko, b.lay.k_head_bytes, r);
    r = read_run(b.ptrs[i] + vo, b.lay.v_head_bytes, r);
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<uint32_t> threads, depths;
  auto list = [](const char* p, std::vector<uint32_t>& out) {
    while (*p) {
      out.push_back((uint32_t)std::strtoul(p, const_cast<char**>(&p), 10));
      if (*p == ',') ++p;
    }
  };
  list(argc > 1 ? argv[1] : "1,2", threads);
  list(argc > 2 ? argv[2] : "4096,16384", depths);
  const int reps = argc > 3 ? std::atoi(argv[3]) : 31;
  const uint32_t layers = argc > 4 ? (uint32_t)std::max(1, std::atoi(argv[4])) : 1;
  const bool cold = argc > 5 && std::string(argv[5]) == "cold";
  if (argc > 6 && std::string(argv[6]) == "avx2") cpu_isa_set(CpuIsa::avx2);
  std::vector<float> flush(cold ? (256u << 20) / sizeof(float) : 0, 1.0f);
  volatile float sink = 0.0f;
  volatile uint64_t read_sink[kKv];
  const uint32_t fmts[3] = {KV_F16, KV_Q8, KV_Q4};
  const char* names[3] = {"f16", "q8", "q4"};
  std::printf("%u heads / %u KV heads of %u, blocks of %u tokens x %u layer%s; medians of %d calls, formats interleaved%s; %s kernels\n",
              kHeads, kKv, kHd, kBt, layers, layers == 1 ? "" : "s", reps,
              cold ? ", caches flushed before each call" : "", cpu_isa_name(cpu_isa()));
  std::printf("%3s %7s %4s %10s %8s %8s %9s %8s %8s\n", "thr", "depth", "kv", "us/layer", "GB/s",
              "vs f16", "read us", "read GB/s", "vs read");
  for (uint32_t nt : threads) {
    kvrt::ThreadPool pool(nt);
    kvrt::CpuBackend be(pool);
    for (uint32_t depth : depths) {
      Bench b[3];
      for (int f = 0; f < 3; ++f) fill(b[f], fmts[f], depth, layers);
      std::vector<float> q(kHeads * kHd), out(q.size());
      for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.37 * (double)i);
      kvrt::BackendScratch s;
      std::vector<AttnPartial> parts(kvrt::CpuBackend::attention_partials_needed(nt, kHeads, depth));
      std::vector<float> pacc((parts.size() + kvrt::CpuBackend::kMaxSplit) * kHd);
      s.parts = parts.data();
      s.part_acc = pacc.data();
      s.part_capacity = parts.size();
      AttnArgs a[3];
      QAttnArgs qa[3];
      for (int f = 0; f < 3; ++f) {
        a[f] = AttnArgs{};
        a[f].layout = &b[f].lay;
        a[f].layer = layers / 2;
        a[f].blocks = b[f].ptrs.data();
        a[f].q = q.data();
        a[f].out = out.data();
        a[f].q_stride = q.size();
        a[f].n_q = 1;
        a[f].n_head = kHeads;
        a[f].pos0 = (int32_t)depth - 1;
        a[f].scale = 1.0f / std::sqrt((float)kHd);
        qa[f] = QAttnArgs{};
        qa[f].base = a[f];
        qa[f].stage_layout = &b[f].stage_lay;
        qa[f].stage = b[f].stage.data();
        qa[f].n_quant_blocks = depth / kBt;
      }
      // Kernel calls and read-floor passes of the three formats interleaved.
      std::vector<double> t[3], rd[3];
      const uint32_t n_blocks = depth / kBt;
      for (int i = 0; i < reps + 2; ++i)
        for (int j = 0; j < 6; ++j) {
          const int f = j % 3;
          if (cold)  // by the pool, whose workers then stay awake as in a step
            pool.run(nt, [&](unsigned task, unsigned) {
              float acc = 0.0f;
              for (size_t x = task * 16; x < flush.size(); x += 16 * nt) acc += flush[x];
              sink = sink + acc;
            });
          const double t0 = seconds();
          if (j >= 3)
            pool.run(kKv, [&](unsigned h, unsigned) { read_sink[h] = read_parts(b[f], layers / 2, h, n_blocks); });
          else if (fmts[f] == KV_F16)
            be.attention(a[f], s);
          else
            be.attention_quant(qa[f], s);
          if (i >= 2) (j >= 3 ? rd[f] : t[f]).push_back(seconds() - t0);  // two warm-up rounds
        }
      double f16_us = 0;
      for (int f = 0; f < 3; ++f) {
        const double us = median(t[f]) * 1e6, rus = median(rd[f]) * 1e6;
        if (f == 0) f16_us = us;
        std::printf("%3u %7u %4s %10.1f %8.2f %7.2fx %9.1f %8.2f %7.2fx\n", nt, depth, names[f], us,
                    (double)b[f].bytes / (us * 1e3), us / f16_us, rus,
                    (double)b[f].bytes / (rus * 1e3), us / rus);
      }
    }
  }
  return 0;
}
