// Attention over quantized KV blocks: the block walk with online softmax
// (shared by every ISA) and the scalar reference of the inner loops.
#include "attention-quant.h"

#include <math.h>
#include <string.h>

#include <atomic>

#include "../common/fp16.h"
#include "../common/kv-quant.h"
#include "cpu-kernels-impl.h"

namespace kvrt_k {

namespace {

// Scalar inner loops: the reference the SIMD versions are tested against.
constexpr uint32_t C = kQAttnChunk;

void k_i8_scalar(const int8_t* codes, size_t rb, uint32_t n, uint32_t hd, const float* qs,
                 const float* bias, uint32_t ng, float* s) {
  for (uint32_t g = 0; g < ng; ++g)
    for (uint32_t t = 0; t < n; ++t) {
      const int8_t* r = codes + t * rb;
      float sum = 0.0f;
      for (uint32_t c = 0; c < hd; ++c) sum += qs[g * hd + c] * (float)r[c];
      s[g * C + t] = sum + bias[g];
    }
}

void k_u4_scalar(const uint8_t* codes, size_t rb, uint32_t n, uint32_t hd, const float* qs,
                 const float* bias, uint32_t ng, float* s) {
  for (uint32_t g = 0; g < ng; ++g)
    for (uint32_t t = 0; t < n; ++t) {
      const uint8_t* r = codes + t * rb;
      float sum = 0.0f;
      for (uint32_t c = 0; c < hd; ++c) sum += qs[g * hd + c] * (float)kvq_get4(r, c);
      s[g * C + t] = sum + bias[g];
    }
}

void k_f16_scalar(const uint16_t* k, uint32_t n, uint32_t hd, const float* q, uint32_t ng,
                  float* s) {
  for (uint32_t g = 0; g < ng; ++g)
    for (uint32_t t = 0; t < n; ++t) {
      float sum = 0.0f;
      for (uint32_t c = 0; c < hd; ++c) sum += q[g * hd + c] * f16_to_f32(k[t * hd + c]);
      s[g * C + t] = sum;
    }
}

void v_i8_scalar(const int8_t* codes, size_t rb, const uint16_t* scales, uint32_t ngv, uint32_t n,
                 uint32_t hd, const float* p, uint32_t ng, float* acc) {
  const uint32_t gs = kvq_group(hd);
  for (uint32_t g = 0; g < ng; ++g)
    for (uint32_t t = 0; t < n; ++t)
      for (uint32_t v = 0; v < ngv; ++v) {
        const float w = p[g * C + t] * f16_to_f32(scales[t * ngv + v]);
        const uint32_t c1 = (v + 1) * gs < hd ? (v + 1) * gs : hd;
        for (uint32_t c = v * gs; c < c1; ++c) acc[g * hd + c] += w * (float)codes[t * rb + c];
      }
}

void v_u4_scalar(const uint8_t* codes, size_t rb, const uint16_t* scales, const uint16_t* mins,
                 uint32_t ngv, uint32_t n, uint32_t hd, const float* p, uint32_t ng, float* acc) {
  const uint32_t gs = kvq_group(hd);
  for (uint32_t g = 0; g < ng; ++g)
    for (uint32_t t = 0; t < n; ++t)
      for (uint32_t v = 0; v < ngv; ++v) {
        const float w = p[g * C + t] * f16_to_f32(scales[t * ngv + v]);
        const float b = p[g * C + t] * f16_to_f32(mins[t * ngv + v]);
        const uint32_t c1 = (v + 1) * gs < hd ? (v + 1) * gs : hd;
        for (uint32_t c = v * gs; c < c1; ++c)
          acc[g * hd + c] += w * (float)kvq_get4(codes + t * rb, c) + b;
      }
}

void v_f16_scalar(const uint16_t* v, uint32_t n, uint32_t hd, const float* p, uint32_t ng,
                  float* acc) {
  for (uint32_t g = 0; g < ng; ++g)
    for (uint32_t t = 0; t < n; ++t)
      for (uint32_t c = 0; c < hd; ++c) acc[g * hd + c] += p[g * C + t] * f16_to_f32(v[t * hd + c]);
}

void fold_scalar(const float* q, uint32_t ng, uint32_t hd, float scale, uint32_t k_format,
                 const uint16_t* k_scales, float* qs, float* bias) {
  for (uint32_t g = 0; g < ng; ++g) {
    const float* qg = q + (size_t)g * hd;
    float* o = qs + (size_t)g * hd;
    bias[g] = 0.0f;
    for (uint32_t c = 0; c < hd; ++c) o[c] = qg[c] * scale * f16_to_f32(k_scales[c]);
    if (k_format == KV_Q4) {
      float bsum = 0.0f;
      for (uint32_t c = 0; c < hd; ++c) bsum += qg[c] * f16_to_f32(k_scales[hd + c]);
      bias[g] = bsum * scale;
    }
  }
}

float exp_sum_scalar(const float* s, float m, uint32_t n, float* p) {
  float sum = 0.0f;
  for (uint32_t t = 0; t < n; ++t) {
    p[t] = expf(s[t] - m);
    sum += p[t];
  }
  return sum;
}

const QAttnOps kScalarOps = {k_i8_scalar,  k_u4_scalar,  k_f16_scalar,   v_i8_scalar,
                             v_u4_scalar,  v_f16_scalar, exp_sum_scalar,
                             fold_scalar,  nullptr,      false,          false};

std::atomic<bool> g_bf16_values{true};  // qattn_allow_bf16_values

const QAttnOps& ops() {
  if (cpu_isa() >= CpuIsa::avx512) {
    const QAttnOps* o = qattn_ops_avx512(g_bf16_values.load(std::memory_order_relaxed));
    if (o) return *o;
  }
  if (cpu_isa() >= CpuIsa::avx2) {
    const QAttnOps* o = qattn_ops_avx2();
    if (o) return *o;
  }
  return kScalarOps;
}

// Query heads handled together per pass over a block, so each block is read
// from memory and its codes converted once for the whole group.
constexpr uint32_t kGroupChunk = kQAttnGroupChunk;

// The head count a pass of ng query heads runs with: ng itself, or, where
// the rounded-query step takes the next power of two but not ng (3, 5, 6 or
// 7 heads: Qwen2.5 and Llama 3.2 3B class models), that power of two, the
// extra heads zero queries whose outputs are dropped. Padded, the step does
// up to 60% more work for those heads (33% for 3 and 6, 14% for 7), where
// the float step takes about twice the time of the rounded one.
uint32_t pass_heads(const QAttnOps& op, uint32_t hd, uint32_t ng) {
  if (!op.block_q || qattn_block_q_takes(hd, ng)) return ng;
  uint32_t p = 1;
  while (p < ng) p *= 2;
  return qattn_block_q_takes(hd, p) ? p : ng;
}

// The online-softmax state of n heads before any position: running max m,
// sum l, unnormalized acc (hd floats per head).
void start(uint32_t n, uint32_t hd, float* m, float* l, float* acc) {
  for (uint32_t g = 0; g < n; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
  }
  memset(acc, 0, (size_t)n * hd * sizeof(float));
}

// out[g] = acc[g] / l[g] for n heads; out may be acc.
void finish(uint32_t n, uint32_t hd, const float* l, const float* acc, float* out) {
  for (uint32_t g = 0; g < n; ++g) {
    const float inv = l[g] > 0.0f ? 1.0f / l[g] : 0.0f;
    for (uint32_t c = 0; c < hd; ++c) out[(size_t)g * hd + c] = acc[(size_t)g * hd + c] * inv;
  }
}

// The walks' buffers live on the stack of the thread that calls into the
// library (docs/api.md), so each walk comes in two sizes: for head_dim up to
// kSmallHeadDim (a multiple of 32, as the rounded step pads to) and up to
// kQAttnMaxHeadDim. With 8 heads the small walk_heads takes 4 KiB of query
// buffer instead of 16, walk_padded 8 instead of 32.
constexpr uint32_t kSmallHeadDim = 128;

// Continues the online softmax (m, l, acc as start() sets them up) of ngh
// query heads (rows of hd <= HdCap floats from q0) over positions [t0, t1).
template <uint32_t HdCap>
void walk_heads_t(const QAttnArgs& qa, const QAttnOps& op, uint32_t kv_head, const float* q0,
                  uint32_t ngh, uint32_t t0, uint32_t t1, float* m, float* l, float* acc) {
  const AttnArgs& a = qa.base;
  const KvLayout& L = *a.layout;
  const uint32_t hd = L.head_dim, bt = L.block_tokens;
  const uint32_t ngv = kvq_n_groups(hd);
  const size_t rbk = kvq_row_bytes(L.k_format, hd), rbv = kvq_row_bytes(L.v_format, hd);
  float qs[kGroupChunk * HdCap], bias[kGroupChunk], s[kGroupChunk * C], p[kGroupChunk * C];
  // Fetch this head's K and V blocks ATTN_PREFETCH_TOKENS ahead, in whole
  // blocks (at least 2: 8 of 16 tokens, 2 of 64).
  const uint32_t b_end = t0 < t1 ? (t1 + bt - 1) / bt : 0;
  const uint32_t b_quant_end = qa.n_quant_blocks < b_end ? qa.n_quant_blocks : b_end;
  const size_t koff = kv_k_offset(L, a.layer, kv_head), voff = kv_v_offset(L, a.layer, kv_head);
  auto prefetch = [&](uint32_t pb) {
    if (pb >= b_quant_end) return;
    detail::prefetch_lines(a.blocks[pb] + koff, L.k_head_bytes);
    detail::prefetch_lines(a.blocks[pb] + voff, L.v_head_bytes);
  };
  const uint32_t pf_blocks = detail::ATTN_PREFETCH_TOKENS / bt, pfd = pf_blocks > 2 ? pf_blocks : 2;
  for (uint32_t pb = t0 / bt; pb < t0 / bt + pfd; ++pb) prefetch(pb);
  const bool rounded = op.block_q && qattn_block_q_takes(hd, ngh);
  for (uint32_t b = t0 / bt; t0 < t1 && b * bt < t1; ++b) {
    // The rounded-query step takes up to kQAttnBatchBlocks quantized blocks
    // per call (rows [lo, hi) of each), so its softmax update is shared.
    if (rounded && b < qa.n_quant_blocks) {
      QAttnBlock blk[kQAttnBatchBlocks];
      uint32_t nb = 0;
      for (; nb < kQAttnBatchBlocks && b + nb < qa.n_quant_blocks && (b + nb) * bt < t1; ++nb) {
        const uint32_t bb = b + nb;
        // block_q prefetches block pb itself, between its steps: issued here
        // at once, four blocks' lines held up the steps behind them when
        // the cache comes from memory (measured 25-30% slower for q8).
        const uint32_t pb = bb + pfd;
        const uint8_t* kp = a.blocks[bb] + koff;
        const uint8_t* vp = a.blocks[bb] + voff;
        const uint16_t* vsc = (const uint16_t*)(vp + kvq_scale_offset(L.v_format, bt, hd));
        const uint32_t lo = bb * bt > t0 ? bb * bt : t0;
        const uint32_t hi = (bb + 1) * bt < t1 ? (bb + 1) * bt : t1, j0 = lo - bb * bt;
        const bool pf = pb < b_quant_end;
        blk[nb] = {kp + j0 * rbk, (const uint16_t*)(kp + kvq_scale_offset(L.k_format, bt, hd)),
                   vp + j0 * rbv, vsc + (size_t)j0 * ngv, vsc + (size_t)(bt + j0) * ngv, hi - lo,
                   pf ? a.blocks[pb] + koff : nullptr, pf ? a.blocks[pb] + voff : nullptr,
                   (uint32_t)L.k_head_bytes, (uint32_t)L.v_head_bytes};
      }
      // qs (the float step's folded query, set per block) is its work space.
      if (op.block_q(L.k_format, L.v_format, blk, nb, rbk, rbv, hd, q0, a.scale, ngh, qs, m, l,
                     acc)) {
        b += nb - 1;
        continue;
      }
    }
    prefetch(b + pfd);
    const bool quant = b < qa.n_quant_blocks;
    const uint8_t* kp;
    const uint8_t* vp;
    if (quant) {
      kp = a.blocks[b] + koff;
      vp = a.blocks[b] + voff;
    } else {
      kp = qa.stage + kv_k_offset(*qa.stage_layout, a.layer, kv_head);
      vp = qa.stage + kv_v_offset(*qa.stage_layout, a.layer, kv_head);
    }
    const uint16_t* ksc = (const uint16_t*)(kp + kvq_scale_offset(L.k_format, bt, hd));
    const uint16_t* vsc = (const uint16_t*)(vp + kvq_scale_offset(L.v_format, bt, hd));
    const uint16_t* vmin = vsc + (size_t)bt * ngv;
    const uint32_t lo = b * bt > t0 ? b * bt : t0, hi = (b + 1) * bt < t1 ? (b + 1) * bt : t1;
    // Fold the per-channel key scales (and, for q4, the minimums) into the
    // query once per block: s = sum_c (q_c scale_c) code_c + sum_c q_c min_c.
    if (quant) {
      op.fold(q0, ngh, hd, a.scale, L.k_format, ksc, qs, bias);
    } else {
      for (uint32_t g = 0; g < ngh; ++g) {
        const float* q = q0 + (size_t)g * hd;
        float* o = qs + (size_t)g * hd;
        bias[g] = 0.0f;
        for (uint32_t c = 0; c < hd; ++c) o[c] = q[c] * a.scale;
      }
    }
    for (uint32_t u0 = lo; u0 < hi; u0 += C) {
      const uint32_t n = hi - u0 < C ? hi - u0 : C, j = u0 - b * bt;
      if (!quant)
        op.k_f16((const uint16_t*)kp + (size_t)j * hd, n, hd, qs, ngh, s);
      else if (L.k_format == KV_Q8)
        op.k_i8((const int8_t*)kp + j * rbk, rbk, n, hd, qs, bias, ngh, s);
      else
        op.k_u4(kp + j * rbk, rbk, n, hd, qs, bias, ngh, s);
      for (uint32_t g = 0; g < ngh; ++g) {
        const float* sg = s + g * C;
        float mx = m[g];
        for (uint32_t t = 0; t < n; ++t) mx = sg[t] > mx ? sg[t] : mx;
        if (mx > m[g]) {
          const float alpha = m[g] == -INFINITY ? 0.0f : expf(m[g] - mx);
          float* ac = acc + (size_t)g * hd;
          for (uint32_t c = 0; c < hd; ++c) ac[c] *= alpha;
          l[g] *= alpha;
          m[g] = mx;
        }
        l[g] += op.exp_sum(sg, m[g], n, p + g * C);
      }
      if (!quant)
        op.v_f16((const uint16_t*)vp + (size_t)j * hd, n, hd, p, ngh, acc);
      else if (L.v_format == KV_Q8)
        op.v_i8((const int8_t*)vp + j * rbv, rbv, vsc + (size_t)j * ngv, ngv, n, hd, p, ngh, acc);
      else
        op.v_u4(vp + j * rbv, rbv, vsc + (size_t)j * ngv, vmin + (size_t)j * ngv, ngv, n, hd, p,
                ngh, acc);
    }
  }
}

void walk_heads(const QAttnArgs& qa, const QAttnOps& op, uint32_t kv_head, const float* q0,
                uint32_t ngh, uint32_t t0, uint32_t t1, float* m, float* l, float* acc) {
  if (qa.base.layout->head_dim <= kSmallHeadDim)
    walk_heads_t<kSmallHeadDim>(qa, op, kv_head, q0, ngh, t0, t1, m, l, acc);
  else
    walk_heads_t<kQAttnMaxHeadDim>(qa, op, kv_head, q0, ngh, t0, t1, m, l, acc);
}

// walk_heads for ngh heads run as ngp > ngh: the extra rows zero queries,
// their results dropped; the real rows' state is copied in and out. Out of
// line, so that its buffers (2 x 8 heads x HdCap floats) are on the stack
// only while a padded pass runs.
template <uint32_t HdCap>
__attribute__((noinline)) void walk_padded_t(const QAttnArgs& qa, const QAttnOps& op,
                                             uint32_t kv_head, const float* q0, uint32_t ngh,
                                             uint32_t ngp, uint32_t t0, uint32_t t1, float* m,
                                             float* l, float* acc) {
  const uint32_t hd = qa.base.layout->head_dim;
  alignas(64) float qp[kGroupChunk * HdCap], ap[kGroupChunk * HdCap];
  float mp[kGroupChunk], lp[kGroupChunk];
  memcpy(qp, q0, (size_t)ngh * hd * sizeof(float));
  memset(qp + (size_t)ngh * hd, 0, (size_t)(ngp - ngh) * hd * sizeof(float));
  memcpy(mp, m, ngh * sizeof(float));
  memcpy(lp, l, ngh * sizeof(float));
  memcpy(ap, acc, (size_t)ngh * hd * sizeof(float));
  start(ngp - ngh, hd, mp + ngh, lp + ngh, ap + (size_t)ngh * hd);
  walk_heads(qa, op, kv_head, qp, ngp, t0, t1, mp, lp, ap);
  memcpy(m, mp, ngh * sizeof(float));
  memcpy(l, lp, ngh * sizeof(float));
  memcpy(acc, ap, (size_t)ngh * hd * sizeof(float));
}

void walk_padded(const QAttnArgs& qa, const QAttnOps& op, uint32_t kv_head, const float* q0,
                 uint32_t ngh, uint32_t ngp, uint32_t t0, uint32_t t1, float* m, float* l,
                 float* acc) {
  if (qa.base.layout->head_dim <= kSmallHeadDim)
    walk_padded_t<kSmallHeadDim>(qa, op, kv_head, q0, ngh, ngp, t0, t1, m, l, acc);
  else
    walk_padded_t<kQAttnMaxHeadDim>(qa, op, kv_head, q0, ngh, ngp, t0, t1, m, l, acc);
}

// walk_heads for query heads [g0, g0 + ngh) of query qi; a head count the
// rounded step takes only when padded (pass_heads) runs padded.
void walk(const QAttnArgs& qa, const QAttnOps& op, uint32_t kv_head, uint32_t qi, uint32_t g0,
          uint32_t ngh, uint32_t t0, uint32_t t1, float* m, float* l, float* acc) {
  const AttnArgs& a = qa.base;
  const uint32_t hd = a.layout->head_dim, group = a.n_head / a.layout->n_head_kv;
  const float* q0 = a.q + (size_t)qi * a.q_stride + (size_t)(kv_head * group + g0) * hd;
  const uint32_t ngp = pass_heads(op, hd, ngh);
  if (ngp == ngh)
    walk_heads(qa, op, kv_head, q0, ngh, t0, t1, m, l, acc);
  else
    walk_padded(qa, op, kv_head, q0, ngh, ngp, t0, t1, m, l, acc);
}

// Floats of the query rows, padding included, that a pass of several
// queries copies out, and of their accumulators: the buffers live on the
// stack of the thread that calls into the library, so they stay at 4 KiB
// each (8 rows of head_dim 128).
constexpr uint32_t kPassFloats = 1024;

// Queries a rounded pass takes together in a prefill batch: with g query
// heads per KV head, up to 8 / g of them (8, 4, 2 and 2 for g = 1, 2, 3, 4
// up to head_dim 128; fewer above), as one pass of (query, head) rows, so
// that each block's key codes are loaded and transposed, and its value
// scales converted, once for all of them. 1 where that would not be a
// rounded pass.
uint32_t queries_per_pass(const QAttnOps& op, uint32_t hd, uint32_t group) {
  if (!op.block_q || group > kGroupChunk / 2) return 1;
  for (uint32_t n = kGroupChunk / group; n >= 2; --n) {
    const uint32_t rows = pass_heads(op, hd, n * group);
    if (qattn_block_q_takes(hd, rows) && rows * hd <= kPassFloats) return n;
  }
  return 1;
}

// Outputs of queries [qi0, qi0 + nq) (nq <= queries_per_pass) of KV head
// kv_head: one pass of their rows over the positions all of them see, then
// each query j > 0 continues its rows' online softmax over its own last j
// positions alone.
void walk_queries(const QAttnArgs& qa, const QAttnOps& op, uint32_t kv_head, uint32_t qi0,
                  uint32_t nq) {
  const AttnArgs& a = qa.base;
  const uint32_t hd = a.layout->head_dim, group = a.n_head / a.layout->n_head_kv;
  const uint32_t rows = nq * group, ngp = pass_heads(op, hd, rows);
  const size_t head_off = (size_t)kv_head * group * hd, row_floats = (size_t)group * hd;
  alignas(64) float qp[kPassFloats], ap[kPassFloats];
  float mp[kGroupChunk], lp[kGroupChunk];
  for (uint32_t j = 0; j < nq; ++j)
    memcpy(qp + j * row_floats, a.q + (size_t)(qi0 + j) * a.q_stride + head_off,
           row_floats * sizeof(float));
  memset(qp + (size_t)rows * hd, 0, (size_t)(ngp - rows) * hd * sizeof(float));
  const uint32_t t_all = (uint32_t)a.pos0 + qi0 + 1;  // what query qi0, and so every one, sees
  start(ngp, hd, mp, lp, ap);
  walk_heads(qa, op, kv_head, qp, ngp, 0, t_all, mp, lp, ap);
  for (uint32_t j = 0; j < nq; ++j) {
    const size_t r = (size_t)j * group;
    if (j > 0)
      walk(qa, op, kv_head, qi0 + j, 0, group, t_all, t_all + j, mp + r, lp + r, ap + r * hd);
    finish(group, hd, lp + r, ap + r * hd, a.out + (size_t)(qi0 + j) * a.q_stride + head_off);
  }
}

}  // namespace

const QAttnOps& qattn_ops_scalar() { return kScalarOps; }

bool qattn_block_q_takes(uint32_t hd, uint32_t ng) {
  return hd % 16 == 0 && hd <= kQAttnMaxHeadDim && (ng == 1 || ng == 2 || ng == 4 || ng == 8);
}

bool qattn_rounds_query(uint32_t head_dim, uint32_t ng) {
  const QAttnOps& op = ops();
  return op.block_q && qattn_block_q_takes(head_dim, pass_heads(op, head_dim, ng));
}

void qattn_allow_bf16_values(bool allow) { g_bf16_values.store(allow, std::memory_order_relaxed); }

bool qattn_bf16_values(uint32_t head_dim, uint32_t ng) {
  return qattn_rounds_query(head_dim, ng) && ops().bf16_values;
}

uint32_t qattn_query_bits(uint32_t k_format) {
  return k_format == KV_Q8 || ops().q4_query_15bit ? 15 : 8;
}

void attention_quant(const QAttnArgs& qa, uint32_t kv_head) {
  const AttnArgs& a = qa.base;
  const uint32_t hd = a.layout->head_dim, group = a.n_head / a.layout->n_head_kv;
  const QAttnOps& op = ops();
  const uint32_t per_pass = a.n_q > 1 ? queries_per_pass(op, hd, group) : 1;  // decode: one query
  float m[kGroupChunk], l[kGroupChunk];
  for (uint32_t qi = 0; qi < a.n_q; ++qi) {
    if (per_pass > 1 && a.n_q - qi > 1) {
      const uint32_t nq = a.n_q - qi < per_pass ? a.n_q - qi : per_pass;
      walk_queries(qa, op, kv_head, qi, nq);
      qi += nq - 1;
      continue;
    }
    const uint32_t t1 = (uint32_t)a.pos0 + qi + 1;
    for (uint32_t g0 = 0; g0 < group; g0 += kGroupChunk) {
      const uint32_t ngh = group - g0 < kGroupChunk ? group - g0 : kGroupChunk;
      // Heads of one KV head are adjacent in out, so acc can be out itself.
      float* out = a.out + (size_t)qi * a.q_stride + (size_t)(kv_head * group + g0) * hd;
      start(ngh, hd, m, l, out);
      walk(qa, op, kv_head, qi, g0, ngh, 0, t1, m, l, out);
      finish(ngh, hd, l, out, out);
    }
  }
}

void attention_quant_partial(const QAttnArgs& qa, uint32_t kv_head, uint32_t qi, uint32_t t0,
                             uint32_t t1, AttnPartial* part, float* acc) {
  const AttnArgs& a = qa.base;
  const uint32_t hd = a.layout->head_dim, group = a.n_head / a.layout->n_head_kv;
  const uint32_t vis = (uint32_t)a.pos0 + qi + 1;
  if (t1 > vis) t1 = vis;
  const QAttnOps& op = ops();
  float m[kGroupChunk], l[kGroupChunk];
  for (uint32_t g0 = 0; g0 < group; g0 += kGroupChunk) {
    const uint32_t ngh = group - g0 < kGroupChunk ? group - g0 : kGroupChunk;
    start(ngh, hd, m, l, acc + (size_t)g0 * hd);
    walk(qa, op, kv_head, qi, g0, ngh, t0, t0 < t1 ? t1 : t0, m, l, acc + (size_t)g0 * hd);
    for (uint32_t g = 0; g < ngh; ++g) part[g0 + g] = {m[g], l[g]};
  }
}

}  // namespace kvrt_k
