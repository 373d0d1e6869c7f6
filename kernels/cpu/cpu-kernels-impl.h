// Internal declarations shared by the CPU kernel dispatcher and its per-ISA
// implementations (scalar reference, AVX2, AVX-512 matmul).
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "cpu-kernels.h"

namespace kvrt_k {
namespace detail {

// Attention works on up to this many (query, head) rows at once, so each K/V
// row loaded from the cache serves every row of the set.
constexpr uint32_t ATTN_MAX_ROWS = 8;
// Cache positions the quantized kernels prefetch ahead of the ones being
// computed (attention-quant.cpp; the float walk counts bytes instead,
// attention-walk.h). Blocks are scattered (block table) and hardware
// prefetchers stop at page edges, so the walk fetches its K and V blocks
// this far ahead: far enough to cover DRAM latency, and counted in
// positions, not blocks, so that large blocks do not keep more lines in
// flight than the L1 cache holds (docs/quantization.md, "Block size").
constexpr uint32_t ATTN_PREFETCH_TOKENS = 128;

// The kernels' software prefetch of one cache line into L1. A test that
// includes a walk's header may define it first to see which lines the walk
// asks for, and when (test-kernels-walk.cpp).
#ifndef KVRT_PREFETCH_LINE
#define KVRT_PREFETCH_LINE(p) __builtin_prefetch((p), 0, 3)
#endif

// Prefetches every cache line of [p, p + n) into L1; nothing for a null p.
// Runs need not start on a cache line. Static: each ISA's file keeps its own
// copy, compiled with its own flags.
static inline void prefetch_lines(const void* p, size_t n) {
  if (!p) return;
  for (uintptr_t x = (uintptr_t)p & ~(uintptr_t)63; x < (uintptr_t)p + n; x += 64)
    KVRT_PREFETCH_LINE((const void*)x);
}

// A set of rows sharing one KV head. Row r sees positions [t0, t_end[r]);
// its running state (m, l) and unnormalized accumulator acc[r][head_dim] are
// initialized by the caller and updated in place (online softmax).
struct AttnRows {
  uint32_t n;
  uint32_t t0;
  const float* q[ATTN_MAX_ROWS];
  float* acc[ATTN_MAX_ROWS];
  AttnPartial* st[ATTN_MAX_ROWS];
  uint32_t t_end[ATTN_MAX_ROWS];
};

}  // namespace detail

namespace scalar {
void matmul(uint32_t wtype, const void* w, size_t k, size_t r0, size_t r1, const float* x,
            size_t ldx, size_t n_rows_x, float* y, size_t ldy, float* scratch);
void rmsnorm(const float* x, const float* weight, float* y, size_t n, float eps);
void swiglu(float* gate, const float* up, size_t n);
void kv_store(uint32_t format, void* dst, const float* src, size_t n);
void kv_load(uint32_t format, float* dst, const void* src, size_t n);
void attn_rows(const AttnArgs& a, uint32_t kv_head, const detail::AttnRows& rows);
}  // namespace scalar

namespace avx2 {
void matmul(uint32_t wtype, const void* w, size_t k, size_t r0, size_t r1, const float* x,
            size_t ldx, size_t n_rows_x, float* y, size_t ldy, float* scratch);
void rmsnorm(const float* x, const float* weight, float* y, size_t n, float eps);
void swiglu(float* gate, const float* up, size_t n);
void kv_store(uint32_t format, void* dst, const float* src, size_t n);
void kv_load(uint32_t format, float* dst, const void* src, size_t n);
// Returns false when it does not handle the shape (head_dim not a multiple
// of 8); the caller then uses the scalar path.
bool attn_rows(const AttnArgs& a, uint32_t kv_head, const detail::AttnRows& rows);
// kv_quantize_k (keys) or kv_quantize_v for q8 and q4 (kv-quant-lanes.h).
void kv_quantize(uint32_t format, bool keys, uint8_t* dst, const float* src, size_t src_stride,
                 uint32_t n_tokens, uint32_t block_tokens, uint32_t head_dim);
}  // namespace avx2

namespace avx512 {
// As avx2::attn_rows; takes head_dim % 16 == 0 only.
bool attn_rows(const AttnArgs& a, uint32_t kv_head, const detail::AttnRows& rows);
void matmul(uint32_t wtype, const void* w, size_t k, size_t r0, size_t r1, const float* x,
            size_t ldx, size_t n_rows_x, float* y, size_t ldy, float* scratch);
void kv_quantize(uint32_t format, bool keys, uint8_t* dst, const float* src, size_t src_stride,
                 uint32_t n_tokens, uint32_t block_tokens, uint32_t head_dim);
}  // namespace avx512

}  // namespace kvrt_k
