// Benchmark (not a test): decode-step attention time of an f16 cache against
// q8 and q4 caches, one query over a long context, through the CPU backend.
// Built with the tests: build/tests/unit/bench-attention-quant.
// Run:   bench-attention-quant [THREADS[,THREADS...] [DEPTH[,DEPTH...] [REPEATS [LAYERS [cold|warm [avx2|any [whole|f32v]]]]]]]
// LAYERS (default 1): layers per block (12 for the synthetic model). The
// blocks come from a block pool, which keeps one layer's parts of a slab's
// blocks side by side, as in the engine. The middle layer is timed. With
// `whole`, each format is also timed over blocks kept in one piece (all
// layers of a block together, blocks back to back in one mapping: the
// pool's layout before it went layer-major), interleaved with the pool's
// in the same process so that both see the same load. With `f32v`, each
// format is also timed with q4 values kept in float where the AVX-512
// kernels would take them as bf16 dot products (rows "f32v"), interleaved
// the same way. With `cold`, 256 MiB are read
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
#include <cstring>
#include <memory>
#include <string>
#include <sys/mman.h>
#include <vector>

#include "backend/backend.hpp"
#include "kernels/common/kv-quant.h"
#include "kernels/cpu/attention-quant.h"
#include "kernels/cpu/cpu-kernels.h"
#include "kv/block-pool.hpp"
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

// Blocks in one piece: one huge-page-advised mapping (the layout `whole`).
struct Mapping {
  uint8_t* p = nullptr;
  size_t n = 0;
  void map(size_t bytes) {
    n = bytes;
    p = static_cast<uint8_t*>(mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (p == MAP_FAILED) std::abort();
    madvise(p, n, MADV_HUGEPAGE);
  }
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (p) munmap(p, n);
  }
};

// One cache of `depth` tokens in format fmt, its blocks taken from a block
// pool as the engine's are, or in one piece (q8/q4 blocks use an f16 stage
// for the tail, here empty because depth is a multiple of the block).
struct Bench {
  KvLayout lay, stage_lay;
  std::unique_ptr<kvrt::MemoryBudget> budget;
  std::unique_ptr<kvrt::BlockPool> pool;
  Mapping whole;
  std::vector<const uint8_t*> ptrs;
  std::vector<uint8_t> stage;
  size_t bytes = 0;  // cache bytes one call reads
};

void fill(Bench& b, uint32_t fmt, uint32_t depth, uint32_t layers, bool whole) {
  kv_layout_init(&b.lay, layers, kKv, kHd, kBt, fmt, fmt);
  kv_layout_init(&b.stage_lay, layers, kKv, kHd, kBt, KV_F16, KV_F16);
  const uint32_t layer = layers / 2;
  const uint32_t n_blocks = (depth + kBt - 1) / kBt;
  std::vector<uint8_t*> blocks(n_blocks);
  if (whole) {
    b.whole.map((size_t)n_blocks * b.lay.block_bytes);
    for (uint32_t i = 0; i < n_blocks; ++i) blocks[i] = b.whole.p + (size_t)i * b.lay.block_bytes;
  } else {
    b.budget = std::make_unique<kvrt::MemoryBudget>((uint64_t)n_blocks * b.lay.block_bytes);
    b.pool = std::make_unique<kvrt::BlockPool>(kv_head_part_bytes(b.lay), kv_n_head_parts(b.lay), *b.budget);
    kv_layout_head_parts(&b.lay, b.pool->part_stride());
    std::vector<uint32_t> ids(n_blocks);
    if (!b.pool->alloc(n_blocks, ids.data())) std::abort();
    for (uint32_t i = 0; i < n_blocks; ++i) blocks[i] = b.pool->data(ids[i]);
  }
  // Every byte written, as in the engine, the timed layer with codes of
  // random data (the speed does not depend on them).
  std::vector<float> rows((size_t)kBt * kHd);
  uint64_t r = 88172645463325252ull;
  auto rnd = [&] {
    r ^= r << 13; r ^= r >> 7; r ^= r << 17;
    return (float)((r >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
  };
  for (uint8_t* blk : blocks) {
    for (uint32_t l = 0; l < layers; ++l)
      for (uint32_t h = 0; h < kKv; ++h) {
        std::memset(blk + kv_k_offset(b.lay, l, h), 0, b.lay.k_head_bytes);
        std::memset(blk + kv_v_offset(b.lay, l, h), 0, b.lay.v_head_bytes);
      }
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
// 32-byte vector loads, four streams of them (a 64-byte vector type made
// the AVX2 clone spill every vector to the stack: 8 GB/s from L2); one
// clone per ISA level, picked at load time, so the floor does not depend on
// the build's -march.
typedef uint64_t U64x4 __attribute__((vector_size(32), aligned(1)));
__attribute__((target_clones("avx512f", "avx2", "default")))
uint64_t read_run(const uint8_t* p, size_t n, uint64_t r) {
  U64x4 a = {}, b = {}, c = {}, d = {};
  size_t x = 0;
  for (; x + 128 <= n; x += 128) {
    a ^= *(const U64x4*)(p + x);
    b ^= *(const U64x4*)(p + x + 32);
    c ^= *(const U64x4*)(p + x + 64);
    d ^= *(const U64x4*)(p + x + 96);
  }
  for (; x + 32 <= n; x += 32) a ^= *(const U64x4*)(p + x);
  a ^= b ^ c ^ d;
  for (int j = 0; j < 4; ++j) r ^= a[j];
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
  const std::string second = argc > 7 ? argv[7] : "";
  const int n_layouts = second == "whole" || second == "f32v" ? 2 : 1;
  std::vector<float> flush(cold ? (256u << 20) / sizeof(float) : 0, 1.0f);
  volatile float sink = 0.0f;
  volatile uint64_t read_sink[kKv];
  const uint32_t fmts[3] = {KV_F16, KV_Q8, KV_Q4};
  const char* names[3] = {"f16", "q8", "q4"};
  const char* layout_names[2] = {"pool", second == "f32v" ? "f32v" : "whole"};
  std::printf("%u heads / %u KV heads of %u, blocks of %u tokens x %u layer%s; medians of %d calls, formats interleaved%s; %s kernels\n",
              kHeads, kKv, kHd, kBt, layers, layers == 1 ? "" : "s", reps,
              cold ? ", caches flushed before each call" : "", cpu_isa_name(cpu_isa()));
  std::printf("%3s %7s %4s %6s %10s %8s %8s %9s %8s %8s\n", "thr", "depth", "kv", "blocks", "us/layer", "GB/s",
              "vs f16", "read us", "read GB/s", "vs read");
  for (uint32_t nt : threads) {
    kvrt::ThreadPool pool(nt);
    kvrt::CpuBackend be(pool);
    for (uint32_t depth : depths) {
      const int nc = 3 * n_layouts;  // cache c: format c % 3, layout c / 3
      Bench b[6];
      for (int c = 0; c < nc; ++c) fill(b[c], fmts[c % 3], depth, layers, c >= 3 && second == "whole");
      std::vector<float> q(kHeads * kHd), out(q.size());
      for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.37 * (double)i);
      kvrt::BackendScratch s;
      std::vector<AttnPartial> parts(kvrt::CpuBackend::attention_partials_needed(nt, kHeads, depth));
      std::vector<float> pacc((parts.size() + kvrt::CpuBackend::kMaxSplit) * kHd);
      s.parts = parts.data();
      s.part_acc = pacc.data();
      s.part_capacity = parts.size();
      AttnArgs a[6];
      QAttnArgs qa[6];
      for (int c = 0; c < nc; ++c) {
        a[c] = AttnArgs{};
        a[c].layout = &b[c].lay;
        a[c].layer = layers / 2;
        a[c].blocks = b[c].ptrs.data();
        a[c].q = q.data();
        a[c].out = out.data();
        a[c].q_stride = q.size();
        a[c].n_q = 1;
        a[c].n_head = kHeads;
        a[c].pos0 = (int32_t)depth - 1;
        a[c].scale = 1.0f / std::sqrt((float)kHd);
        qa[c] = QAttnArgs{};
        qa[c].base = a[c];
        qa[c].stage_layout = &b[c].stage_lay;
        qa[c].stage = b[c].stage.data();
        qa[c].n_quant_blocks = depth / kBt;
      }
      // Kernel calls and read-floor passes of every cache interleaved.
      std::vector<double> t[6], rd[6];
      const uint32_t n_blocks = depth / kBt;
      for (int i = 0; i < reps + 2; ++i)
        for (int j = 0; j < 2 * nc; ++j) {
          const int c = j % nc;
          if (cold)  // by the pool, whose workers then stay awake as in a step
            pool.run(nt, [&](unsigned task, unsigned) {
              float acc = 0.0f;
              for (size_t x = task * 16; x < flush.size(); x += 16 * nt) acc += flush[x];
              sink = sink + acc;
            });
          qattn_allow_bf16_values(!(c >= 3 && second == "f32v"));
          const double t0 = seconds();
          if (j >= nc)
            pool.run(kKv, [&](unsigned h, unsigned) { read_sink[h] = read_parts(b[c], layers / 2, h, n_blocks); });
          else if (fmts[c % 3] == KV_F16)
            be.attention(a[c], s);
          else
            be.attention_quant(qa[c], s);
          if (i >= 2) (j >= nc ? rd[c] : t[c]).push_back(seconds() - t0);  // two warm-up rounds
        }
      for (int c = 0; c < nc; ++c) {
        const int f0 = c - c % 3;  // the f16 cache of the same layout
        const double us = median(t[c]) * 1e6, rus = median(rd[c]) * 1e6, f16_us = median(t[f0]) * 1e6;
        std::printf("%3u %7u %4s %6s %10.1f %8.2f %7.2fx %9.1f %8.2f %7.2fx\n", nt, depth, names[c % 3],
                    layout_names[c / 3], us, (double)b[c].bytes / (us * 1e3), us / f16_us, rus,
                    (double)b[c].bytes / (rus * 1e3), us / rus);
      }
    }
  }
  return 0;
}
