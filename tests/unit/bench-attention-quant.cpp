// Benchmark (not a test): decode-step attention time of an f16 cache against
// q8 and q4 caches, one query over a long context, through the CPU backend.
// Build: c++ -O2 -std=c++20 -I. -Isrc -Iinclude tests/unit/bench-attention-quant.cpp
//        BUILD/src/libkvrt.a -lpthread -o bench-attention-quant
// Run:   bench-attention-quant THREADS DEPTH[,DEPTH...] [REPEATS]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "kernels/common/kv-quant.h"
#include "kernels/cpu/attention-quant.h"
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

}  // namespace

int main(int argc, char** argv) {
  const unsigned nt = argc > 1 ? (unsigned)std::atoi(argv[1]) : 2;
  std::vector<uint32_t> depths;
  for (const char* p = argc > 2 ? argv[2] : "4096,16384"; *p;) {
    depths.push_back((uint32_t)std::strtoul(p, const_cast<char**>(&p), 10));
    if (*p == ',') ++p;
  }
  const int reps = argc > 3 ? std::atoi(argv[3]) : 15;
  kvrt::ThreadPool pool(nt);
  kvrt::CpuBackend be(pool);
  std::printf("threads %u, %u heads / %u KV heads of %u, blocks of %u; median of %d calls\n", nt,
              kHeads, kKv, kHd, kBt, reps);
  std::printf("%8s %6s %12s %10s\n", "depth", "kv", "us/layer", "vs f16");
  for (uint32_t depth : depths) {
    double f16_us = 0;
    for (uint32_t fmt : {KV_F16, KV_Q8, KV_Q4}) {
      KvLayout lay, stage_lay;
      kv_layout_init(&lay, 1, kKv, kHd, kBt, fmt, fmt);
      kv_layout_init(&stage_lay, 1, kKv, kHd, kBt, KV_F16, KV_F16);
      const uint32_t n_blocks = (depth + kBt - 1) / kBt;
      // Separate allocations per block, like pool slabs, filled with codes of
      // random data (the speed does not depend on the values).
      std::vector<std::vector<uint8_t>> blocks(n_blocks, std::vector<uint8_t>(lay.block_bytes));
      std::vector<const uint8_t*> ptrs;
      std::vector<float> rows((size_t)kBt * kHd);
      uint64_t r = 88172645463325252ull;
      auto rnd = [&] {
        r ^= r << 13; r ^= r >> 7; r ^= r << 17;
        return (float)((r >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
      };
      for (auto& b : blocks) {
        for (uint32_t h = 0; h < kKv; ++h) {
          for (auto& f : rows) f = rnd();
          if (fmt == KV_F16) {
            kv_store(KV_F16, b.data() + kv_k_offset(lay, 0, h), rows.data(), rows.size());
            kv_store(KV_F16, b.data() + kv_v_offset(lay, 0, h), rows.data(), rows.size());
          } else {
            kvq_quantize_k(fmt, b.data() + kv_k_offset(lay, 0, h), rows.data(), kHd, kBt, kBt, kHd);
            kvq_quantize_v(fmt, b.data() + kv_v_offset(lay, 0, h), rows.data(), kHd, kBt, kBt, kHd);
          }
        }
        ptrs.push_back(b.data());
      }
      std::vector<uint8_t> stage(stage_lay.block_bytes, 0);
      std::vector<float> q(kHeads * kHd), out(q.size());
      for (auto& f : q) f = rnd();
      kvrt::BackendScratch s;
      std::vector<AttnPartial> parts(kvrt::CpuBackend::attention_partials_needed(nt, kHeads, depth));
      std::vector<float> pacc((parts.size() + kvrt::CpuBackend::kMaxSplit) * kHd);
      s.parts = parts.data();
      s.part_acc = pacc.data();
      s.part_capacity = parts.size();
      AttnArgs a{};
      a.layout = &lay;
      a.blocks = ptrs.data();
      a.q = q.data();
      a.out = out.data();
      a.q_stride = q.size();
      a.n_q = 1;
      a.n_head = kHeads;
      a.pos0 = (int32_t)depth - 1;
      a.scale = 1.0f / std::sqrt((float)kHd);
      QAttnArgs qa{};
      qa.base = a;
      qa.stage_layout = &stage_lay;
      qa.stage = stage.data();
      qa.n_quant_blocks = depth / kBt;
      std::vector<double> t;
      for (int i = 0; i < reps + 2; ++i) {
        double t0 = seconds();
        if (fmt == KV_F16) be.attention(a, s); else be.attention_quant(qa, s);
        if (i >= 2) t.push_back(seconds() - t0);  // two warm-up calls
      }
      const double us = median(t) * 1e6;
      if (fmt == KV_F16) f16_us = us;
      std::printf("%8u %6s %12.1f %9.2fx\n", depth, fmt == KV_F16 ? "f16" : fmt == KV_Q8 ? "q8" : "q4",
                  us, us / f16_us);
    }
  }
  return 0;
}
