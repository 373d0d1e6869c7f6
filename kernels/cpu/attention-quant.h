// Attention over a paged cache whose full blocks are quantized (q8/q4 keys
// and values, any pairing) and whose tail block lives in an f16 staging block.
// Entry points mirror attention()/attention_partial() of cpu-kernels.h, so the
// backend splits work the same way and merges partials with attention_merge().
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "../common/kv-layout.h"
#include "cpu-kernels.h"

namespace kvrt_k {

// Widest head and largest query-head group the quantized kernels take (their
// per-block working set lives on the stack); sessions refuse wider models.
constexpr uint32_t kQAttnMaxHeadDim = 512;

struct QAttnArgs {
  // base.layout is the quantized layout (k_format, v_format in {q8, q4});
  // base.blocks[b] for b < n_quant_blocks hold quantized blocks.
  AttnArgs base;
  // Logical block n_quant_blocks (the partly filled tail, if any) is read
  // from `stage`, a block in f16 for both K and V laid out by stage_layout.
  const KvLayout* stage_layout;
  const uint8_t* stage;
  uint32_t n_quant_blocks;
};

// Output of every query and query head using KV head `kv_head`.
void attention_quant(const QAttnArgs& a, uint32_t kv_head);

// Partials of query `qi` over positions [t0, t1), as attention_partial().
void attention_quant_partial(const QAttnArgs& a, uint32_t kv_head, uint32_t qi, uint32_t t0,
                             uint32_t t1, AttnPartial* part, float* acc);

// Scores per softmax update; score and weight arrays hold kQAttnChunk floats
// per query head.
constexpr uint32_t kQAttnChunk = 64;
// Query heads of one KV head processed per pass over a block (ng <= this).
constexpr uint32_t kQAttnGroupChunk = 8;

// Rows of one quantized block for QAttnOps::block_q: key and value codes of
// the first row, the block's key scales (q4: then minimums), the value scales
// and minimums of the first row, and the row count.
struct QAttnBlock {
  const uint8_t* k;
  const uint16_t* k_scales;
  const uint8_t* v;
  const uint16_t* v_scales;
  const uint16_t* v_mins;
  uint32_t n;
  // A later block's K and V head parts (null: none) for block_q to prefetch
  // while it works on this one, spread between its steps.
  const uint8_t* pf_k;
  const uint8_t* pf_v;
  uint32_t pf_k_bytes, pf_v_bytes;
};
// Blocks per QAttnOps::block_q call.
constexpr uint32_t kQAttnBatchBlocks = 16;

// The inner loops, one table per ISA level (scalar reference, AVX2, AVX-512;
// `block_q` may be null). Each works on `ng` query heads at once so a row
// of codes is converted once.
// k_*: s[g * kQAttnChunk + t] = bias[g] + sum_c qs[g * hd + c] * key(t, c)
// for n rows of codes (row stride rb bytes). v_*: acc[g * hd + c] +=
// sum_t p[g * kQAttnChunk + t] * value(t, c), with per-token group scales
// (ngv per token) and, for q4, minimums. exp_sum: p[t] = exp(s[t] - m),
// returns the sum.
struct QAttnOps {
  void (*k_i8)(const int8_t* codes, size_t rb, uint32_t n, uint32_t hd, const float* qs,
               const float* bias, uint32_t ng, float* s);
  void (*k_u4)(const uint8_t* codes, size_t rb, uint32_t n, uint32_t hd, const float* qs,
               const float* bias, uint32_t ng, float* s);
  void (*k_f16)(const uint16_t* k, uint32_t n, uint32_t hd, const float* q, uint32_t ng, float* s);
  void (*v_i8)(const int8_t* codes, size_t rb, const uint16_t* scales, uint32_t ngv, uint32_t n,
               uint32_t hd, const float* p, uint32_t ng, float* acc);
  void (*v_u4)(const uint8_t* codes, size_t rb, const uint16_t* scales, const uint16_t* mins,
               uint32_t ngv, uint32_t n, uint32_t hd, const float* p, uint32_t ng, float* acc);
  void (*v_f16)(const uint16_t* v, uint32_t n, uint32_t hd, const float* p, uint32_t ng, float* acc);
  float (*exp_sum)(const float* s, float m, uint32_t n, float* p);
  // Folds a quantized block's per-channel key scales (and, for q4, minimums;
  // both f16 in k_scales, scales first) into ng queries q[g * hd + c]:
  // qs[g * hd + c] = q * scale * kscale_c, bias[g] = scale * sum_c q * kmin_c.
  void (*fold)(const float* q, uint32_t ng, uint32_t hd, float scale, uint32_t k_format,
               const uint16_t* k_scales, float* qs, float* bias);
  // Optional fused step over nb <= kQAttnBatchBlocks quantized blocks (rows
  // blocks[i].n <= the block's tokens of each) that applies each block's key
  // scales itself (q unscaled, k_scales as for fold), scores the keys
  // against the query rounded per 32 channels and block (15 bits against q8
  // keys; against q4 keys 15 bits with q4_query_15bit, else int8; the rules
  // and error bound are in docs/quantization.md) and updates the online
  // softmax once per 64 scored rows rather than once per block. `work`
  // holds ng * hp floats (hp: hd rounded up to a multiple of 32) the step
  // may overwrite (the caller's, so that the step's own stack frame stays
  // small). Tried before fold and the k_*/v_* loops for the shapes
  // qattn_block_q_takes(hd, ng) accepts; returns false otherwise.
  bool (*block_q)(uint32_t k_format, uint32_t v_format, const QAttnBlock* blocks, uint32_t nb,
                  size_t rbk, size_t rbv, uint32_t hd, const float* q, float scale, uint32_t ng,
                  float* work, float* m, float* l, float* acc);
  // block_q accumulates q4 values as bf16 dot products: each weight p *
  // value scale rounded to bf16 (relative error <= 2^-8; the bound is in
  // docs/quantization.md). Other value formats stay float.
  bool bf16_values;
  // block_q rounds the query to 15 bits against q4 keys, as against q8 keys
  // (the AVX-512 step); without it, to int8 (the AVX2 step).
  bool q4_query_15bit;
};

// True when, at the current ISA level, a pass of ng query heads (passes
// take kQAttnGroupChunk heads of a KV head group, the last one the rest) is
// scored against a rounded query (QAttnOps::block_q), as tests must know.
// Head counts the step does not take (3, 5, 6, 7) run padded with zero
// queries to the next power of two.
bool qattn_rounds_query(uint32_t head_dim, uint32_t ng);
// True when such a pass also takes its q4 values as bf16 dot products
// (QAttnOps::bf16_values), as tests must know.
bool qattn_bf16_values(uint32_t head_dim, uint32_t ng);
// Bits of the rounded query against keys of k_format at the current ISA
// level (QAttnOps::block_q): 15 or 8, as tests must know.
uint32_t qattn_query_bits(uint32_t k_format);

const QAttnOps& qattn_ops_scalar();
// Null when this build has no AVX2 version.
const QAttnOps* qattn_ops_avx2();
// The shapes both rounded-query steps (AVX2 and AVX-512, QAttnOps::block_q)
// take: head_dim a multiple of 16 and passes of 1, 2, 4 or 8 query heads;
// other shapes take the float step. The query is rounded per 32 channels (a
// last group of 16 is padded with zeros), and a key transpose takes 32
// bytes of each row (32 q8 or 64 q4 channels): where the row is shorter,
// the last one reads up to 24 bytes past it, inside the block's key part
// (the next row, or the key scales, at least 2 * head_dim bytes, after the
// last row), and those lanes meet zero query bytes.
bool qattn_block_q_takes(uint32_t hd, uint32_t ng);
// The 256-bit rounded-query step (attention-quant-int-avx2.cpp), the AVX2
// table's QAttnOps::block_q.
bool qattn_block_q_avx2(uint32_t k_format, uint32_t v_format, const QAttnBlock* blocks,
                        uint32_t nb, size_t rbk, size_t rbv, uint32_t hd, const float* q,
                        float scale, uint32_t ng, float* work, float* m, float* l, float* acc);
// The AVX2 table with AVX-512 versions where they exist; null without AVX2.
// With bf16_values, block_q takes q4 values as bf16 dot products where the
// CPU has AVX-512 BF16 and VBMI.
const QAttnOps* qattn_ops_avx512(bool bf16_values);
// Whether the AVX-512 level may take q4 values as bf16 dot products (the
// default; true). Off, it keeps them in float as CPUs without AVX-512 BF16
// do, so that tests and benchmarks reach that step on any AVX-512 CPU.
// Kernel calls that start after it see the new setting.
void qattn_allow_bf16_values(bool allow);

}  // namespace kvrt_k
