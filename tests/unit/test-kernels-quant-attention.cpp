// Tests of attention over q8/q4 blocks with an f16 tail (attention-quant.h)
// at every ISA level and through the CPU backend with 1 and 2 threads,
// against a double-precision softmax attention over the dequantized cache.
#include <string.h>

#include <algorithm>
#include <memory>

#include "backend/backend.hpp"
#include "kernels/common/kv-quant.h"
#include "kernels/cpu/attention-quant.h"
#include "test-kernels-util.h"
#include "util/thread-pool.hpp"

using namespace kvrt_k;

namespace {

struct QCache {
  KvLayout layout, stage_layout;
  uint32_t n_tokens;
  std::vector<std::vector<uint8_t>> blocks;
  std::vector<const uint8_t*> ptrs;
  std::vector<uint8_t> stage;
  std::vector<double> k, v;  // dense [layer][head][t][c], the values attention must see
};

QCache make(uint32_t n_layer, uint32_t n_kv, uint32_t hd, uint32_t bt, uint32_t kf, uint32_t vf,
            uint32_t n_tokens, kt::Rng& rng) {
  QCache c;
  assert_true(kv_layout_init(&c.layout, n_layer, n_kv, hd, bt, kf, vf));
  assert_true(kv_layout_init(&c.stage_layout, n_layer, n_kv, hd, bt, KV_F16, KV_F16));
  c.n_tokens = n_tokens;
  const uint32_t n_full = n_tokens / bt, n_blocks = (n_tokens + bt - 1) / bt;
  c.blocks.assign(n_blocks, std::vector<uint8_t>(c.layout.block_bytes, 0xCD));
  for (auto& b : c.blocks) c.ptrs.push_back(b.data());
  c.stage.assign(c.stage_layout.block_bytes, 0);
  const size_t per_head = (size_t)n_tokens * hd;
  c.k.resize((size_t)n_layer * n_kv * per_head);
  c.v.resize(c.k.size());
  std::vector<float> kx((size_t)bt * hd), vx((size_t)bt * hd);
  for (uint32_t l = 0; l < n_layer; ++l)
    for (uint32_t h = 0; h < n_kv; ++h) {
      // Keys get channel offsets and an outlier channel, as real keys do.
      std::vector<float> off(hd);
      for (auto& o : off) o = rng.uni(-1.0f, 1.0f);
      off[hd / 2] = 6.0f;
      double* kd = c.k.data() + ((size_t)l * n_kv + h) * per_head;
      double* vd = c.v.data() + ((size_t)l * n_kv + h) * per_head;
      for (uint32_t b = 0; b < n_blocks; ++b) {
        const uint32_t n = std::min(bt, n_tokens - b * bt);
        for (uint32_t t = 0; t < n; ++t)
          for (uint32_t ch = 0; ch < hd; ++ch) {
            kx[t * hd + ch] = off[ch] + rng.uni(-1.0f, 1.0f);
            vx[t * hd + ch] = rng.uni(-1.0f, 1.0f);
          }
        if (b < n_full) {
          uint8_t* kp = c.blocks[b].data() + kv_k_offset(c.layout, l, h);
          uint8_t* vp = c.blocks[b].data() + kv_v_offset(c.layout, l, h);
          kvq_quantize_k(kf, kp, kx.data(), hd, bt, bt, hd);
          kvq_quantize_v(vf, vp, vx.data(), hd, bt, bt, hd);
          for (uint32_t t = 0; t < bt; ++t)
            for (uint32_t ch = 0; ch < hd; ++ch) {
              kd[(size_t)(b * bt + t) * hd + ch] = kvq_k_value(kf, kp, bt, hd, t, ch);
              vd[(size_t)(b * bt + t) * hd + ch] = kvq_v_value(vf, vp, bt, hd, t, ch);
            }
        } else {
          uint16_t* kp = (uint16_t*)(c.stage.data() + kv_k_offset(c.stage_layout, l, h));
          uint16_t* vp = (uint16_t*)(c.stage.data() + kv_v_offset(c.stage_layout, l, h));
          for (uint32_t t = 0; t < n; ++t)
            for (uint32_t ch = 0; ch < hd; ++ch) {
              kp[t * hd + ch] = f32_to_f16(kx[t * hd + ch]);
              vp[t * hd + ch] = f32_to_f16(vx[t * hd + ch]);
              kd[(size_t)(b * bt + t) * hd + ch] = kt::half_value_ref(kp[t * hd + ch]);
              vd[(size_t)(b * bt + t) * hd + ch] = kt::half_value_ref(vp[t * hd + ch]);
            }
        }
      }
    }
  return c;
}

QAttnArgs args(const QCache& c, uint32_t layer, const std::vector<float>& q, std::vector<float>& out,
               uint32_t n_q, uint32_t n_head) {
  QAttnArgs a{};
  a.base.layout = &c.layout;
  a.base.blocks = c.ptrs.data();
  a.base.layer = layer;
  a.base.q = q.data();
  a.base.out = out.data();
  a.base.q_stride = (size_t)n_head * c.layout.head_dim;
  a.base.n_q = n_q;
  a.base.n_head = n_head;
  a.base.pos0 = (int32_t)(c.n_tokens - n_q);
  a.base.scale = 1.0f / sqrtf((float)c.layout.head_dim);
  a.stage_layout = &c.stage_layout;
  a.stage = c.stage.data();
  a.n_quant_blocks = c.n_tokens / c.layout.block_tokens;
  return a;
}

// Score of key t (head h, query q) as a kernel that rounds the query
// computes it (QAttnOps::block_q, docs/quantization.md), per 32 channels
// (the last group of a head_dim that is an odd multiple of 16 has 16), in
// the kernels' float operations and order. With 15 bits: the query scaled
// so that its largest |q| is 16383, times the block's key scales divided
// by their largest, rounded to integers qi; d = max|q| * softmax scale /
// 16383 * max key scale. With 8 bits: the query folded with the softmax
// scale and the key scales, qs, rounded with d = max|qs| / 127. The score
// is the sum over groups of d * sum qi * code.
// *bound gets sum over groups of d / 2 * sum |code|: how far that score may
// be from the unrounded one.
double rounded_score(const QCache& c, uint32_t layer, const float* q, uint32_t kvh, uint32_t t,
                     uint32_t bits, double* bound) {
  const KvLayout& L = c.layout;
  const uint32_t hd = L.head_dim, bt = L.block_tokens, b = t / bt, j = t % bt;
  const uint8_t* kp = c.blocks[b].data() + kv_k_offset(L, layer, kvh);
  const uint16_t* ks = (const uint16_t*)(kp + kvq_scale_offset(L.k_format, bt, hd));
  const size_t rb = kvq_row_bytes(L.k_format, hd);
  const float scale = 1.0f / sqrtf((float)hd), qmax = bits == 15 ? 16383.0f : 127.0f;
  double s = 0.0;
  *bound = 0.0;
  for (uint32_t g0 = 0; g0 < hd; g0 += 32) {
    const uint32_t gn = std::min(32u, hd - g0);
    float qi[32], mq = 0.0f, ms = 0.0f, mqs = 0.0f, d;
    for (uint32_t ch = 0; ch < gn; ++ch) {
      const float kscale = f16_to_f32(ks[g0 + ch]);
      qi[ch] = q[g0 + ch] * (scale * kscale);  // 8 bits: the folded query
      mq = std::max(mq, fabsf(q[g0 + ch]));
      ms = std::max(ms, kscale);
      mqs = std::max(mqs, fabsf(qi[ch]));
    }
    if (bits == 15) {
      const float f = mq > 0.0f ? qmax / mq : 0.0f, inv = ms > 0.0f ? 1.0f / ms : 0.0f;
      for (uint32_t ch = 0; ch < gn; ++ch)
        qi[ch] = nearbyintf((q[g0 + ch] * f) * (f16_to_f32(ks[g0 + ch]) * inv));
      d = mq * scale * (1.0f / qmax) * ms;
    } else {
      const float inv = mqs > 0.0f ? qmax / mqs : 0.0f;
      for (uint32_t ch = 0; ch < gn; ++ch) qi[ch] = nearbyintf(qi[ch] * inv);
      d = mqs * (1.0f / qmax);
    }
    double dot = 0.0, codes = 0.0;
    for (uint32_t ch = 0; ch < gn; ++ch) {
      const int code = L.k_format == KV_Q8 ? (int)((const int8_t*)kp)[j * rb + g0 + ch]
                                           : (int)kvq_get4(kp + j * rb, g0 + ch);
      dot += (double)qi[ch] * code;
      codes += abs(code);
    }
    s += (double)d * dot;
    *bound += (double)d / 2 * codes;
  }
  if (L.k_format == KV_Q4)
    for (uint32_t ch = 0; ch < hd; ++ch) s += (double)scale * q[ch] * f16_to_f32(ks[hd + ch]);
  return s;
}

// |scale * code| of q4 value (t, ch) of a quantized block: what a weight
// rounded to bf16 multiplies.
double q4_value_step(const QCache& c, uint32_t layer, uint32_t kvh, uint32_t t, uint32_t ch) {
  const KvLayout& L = c.layout;
  const uint32_t hd = L.head_dim, bt = L.block_tokens, b = t / bt, j = t % bt;
  const uint8_t* vp = c.blocks[b].data() + kv_v_offset(L, layer, kvh);
  const uint16_t* vs = (const uint16_t*)(vp + kvq_scale_offset(KV_Q4, bt, hd));
  return (double)f16_to_f32(vs[j * kvq_n_groups(hd) + ch / 32]) *
         kvq_get4(vp + j * kvq_row_bytes(KV_Q4, hd), ch);
}

// Softmax attention in double of query qi, head h, over [0, vis). With
// `rounded`, keys of quantized blocks are scored as rounded_score() with
// the current level's query bits and *eps gets the largest score bound.
// With vbound, (*vbound)[ch] gets how far a kernel whose q4 value weights
// are rounded to bf16 (relative error <= 2^-8 each) may be from out:
// 2^-8 * sum_t p_t |scale * code| / sum_t p_t.
void reference(const QCache& c, uint32_t layer, const float* q, uint32_t h, uint32_t n_head,
               uint32_t vis, bool rounded, std::vector<double>& out, double* eps = nullptr,
               std::vector<double>* vbound = nullptr) {
  const uint32_t hd = c.layout.head_dim, n_kv = c.layout.n_head_kv, kvh = h / (n_head / n_kv);
  const uint32_t n_quant = c.n_tokens / c.layout.block_tokens * c.layout.block_tokens;
  const size_t per_head = (size_t)c.n_tokens * hd;
  const double* kd = c.k.data() + ((size_t)layer * n_kv + kvh) * per_head;
  const double* vd = c.v.data() + ((size_t)layer * n_kv + kvh) * per_head;
  std::vector<double> s(vis);
  double mx = -1e300, sum = 0;
  if (eps) *eps = 0.0;
  for (uint32_t t = 0; t < vis; ++t) {
    if (rounded && t < n_quant) {
      double bound;
      s[t] = rounded_score(c, layer, q, kvh, t, qattn_query_bits(c.layout.k_format), &bound);
      if (eps) *eps = std::max(*eps, bound);
    } else {
      double d = 0;
      for (uint32_t ch = 0; ch < hd; ++ch) d += (double)q[ch] * kd[(size_t)t * hd + ch];
      s[t] = d / sqrt((double)hd);
    }
    mx = std::max(mx, s[t]);
  }
  out.assign(hd, 0.0);
  if (vbound) vbound->assign(hd, 0.0);
  for (uint32_t t = 0; t < vis; ++t) {
    double p = exp(s[t] - mx);
    sum += p;
    for (uint32_t ch = 0; ch < hd; ++ch) out[ch] += p * vd[(size_t)t * hd + ch];
    if (vbound && t < n_quant && c.layout.v_format == KV_Q4)
      for (uint32_t ch = 0; ch < hd; ++ch) (*vbound)[ch] += p * q4_value_step(c, layer, kvh, t, ch);
  }
  for (auto& o : out) o /= sum;
  if (vbound)
    for (auto& b : *vbound) b *= 1.0 / 256 / sum;
}

// An ISA level, and whether the AVX-512 one may take q4 values as bf16 dot
// products: where the CPU has AVX-512 BF16, its float value step (that of
// AVX-512 CPUs without it) is tested too.
struct Level {
  CpuIsa isa;
  bool bf16;
  void set() const {
    cpu_isa_set(isa);
    qattn_allow_bf16_values(bf16);
  }
  const char* name() const { return isa == CpuIsa::avx512 && !bf16 ? "avx512 (float values)" : cpu_isa_name(isa); }
};
std::vector<Level> levels() {
  std::vector<Level> v;
  for (CpuIsa isa : kt::isa_levels()) {
    v.push_back({isa, true});
    if (isa == CpuIsa::avx512) {
      qattn_allow_bf16_values(true);
      cpu_isa_set(isa);
      if (qattn_bf16_values(64, 4)) v.push_back({isa, false});
      cpu_isa_set(cpu_isa_detect());
    }
  }
  return v;
}

const uint32_t kPairs[][2] = {{KV_Q8, KV_Q8}, {KV_Q8, KV_Q4}, {KV_Q4, KV_Q8}, {KV_Q4, KV_Q4}};
// Outputs are convex combinations of values in [-1, 1]; float accumulation
// over a few thousand positions stays well inside this.
const double kTol = 2e-5;

// Checks out against the reference. Heads whose pass the current ISA level
// scores with a rounded query are checked against the reference that rounds
// the same way (to kTol), and against the unrounded one within the bound a
// score error eps gives: |out - ref| <= (e^(2 eps) - 1) max|v| (|v| <= 1).
// Where the pass takes q4 values as bf16 dot products, both also allow the
// weights' rounding (reference(), vbound).
void check_out(const QCache& c, uint32_t layer, const std::vector<float>& q,
               const std::vector<float>& out, uint32_t n_q, uint32_t n_head, const char* ctx) {
  const uint32_t hd = c.layout.head_dim, group = n_head / c.layout.n_head_kv;
  std::vector<double> ref, exact, vb;
  for (uint32_t qi = 0; qi < n_q; ++qi)
    for (uint32_t h = 0; h < n_head; ++h) {
      const size_t o = (size_t)qi * n_head * hd + (size_t)h * hd;
      const uint32_t vis = c.n_tokens - n_q + qi + 1, g0 = h % group / kQAttnGroupChunk * kQAttnGroupChunk;
      const uint32_t ng = std::min(group - g0, kQAttnGroupChunk);
      const bool rounded = qattn_rounds_query(hd, ng), bf16v = qattn_bf16_values(hd, ng);
      double eps = 0.0;
      reference(c, layer, q.data() + o, h, n_head, vis, rounded, ref, &eps, bf16v ? &vb : nullptr);
      if (!bf16v) vb.assign(hd, 0.0);
      for (uint32_t ch = 0; ch < hd; ++ch)
        kt::check_close(out[o + ch], ref[ch], kTol + vb[ch], "out", o + ch, ctx);
      if (!rounded) continue;
      reference(c, layer, q.data() + o, h, n_head, vis, false, exact);
      for (uint32_t ch = 0; ch < hd; ++ch)
        kt::check_close(out[o + ch], exact[ch], expm1(2 * eps) + kTol + vb[ch], "out vs unrounded", o + ch, ctx);
    }
}

void test_kernel_levels(void**) {
  kt::Rng rng(21);
  char ctx[160];
  for (auto& fp : kPairs)
    for (uint32_t hd : {8u, 16u, 32u, 48u, 64u, 80u, 96u, 128u, 33u, 256u})
      for (uint32_t bt : {16u, 32u})
      for (uint32_t n_tokens : {1u, 16u, 37u, 131u}) {
        if (bt == 32 && hd != 64) continue;  // blocks of 32: runs of 16 rows and a tail
        // Query heads per KV head: 10 (passes of 8 and 2), 8, 4, 2, 1 or 3
        // (128: a pass of 3 padded to 4). 16, 48 and 80 end in a 16-channel
        // rounding group, 32 and 96 in a 32-channel one; 8 and 33 take the
        // float step.
        // 9 queries at 37 tokens: passes of several queries (1, 2, 3 or 4
        // heads per KV head) whose own positions cross a block boundary.
        const uint32_t n_kv = 2, n_q = std::min(n_tokens, n_tokens == 37 ? 9u : 3u), layer = 1;
        const uint32_t n_head = hd == 64 ? 20 : hd == 80 ? 16 : (hd == 96 || hd == 48) ? 8
                                : hd == 256 || hd == 16 ? 4 : hd == 32 ? 2 : 6;
        QCache c = make(2, n_kv, hd, bt, fp[0], fp[1], n_tokens, rng);
        std::vector<float> q((size_t)n_q * n_head * hd);
        for (auto& f : q) f = rng.uni(-2.0f, 2.0f);
        for (const Level& lv : levels()) {
          lv.set();
          std::vector<float> out(q.size(), 0.0f);
          QAttnArgs a = args(c, layer, q, out, n_q, n_head);
          for (uint32_t h = 0; h < n_kv; ++h) attention_quant(a, h);
          snprintf(ctx, sizeof ctx, "%s k %u v %u hd %u bt %u n %u", lv.name(), fp[0], fp[1],
                   hd, bt, n_tokens);
          check_out(c, layer, q, out, n_q, n_head, ctx);
          // Partials over uneven ranges merged must agree too (last query).
          std::vector<float> out2(q.size(), 0.0f);
          const uint32_t cuts[] = {0, n_tokens / 3, n_tokens / 3 + 5, n_tokens};
          const uint32_t group = n_head / n_kv;
          for (uint32_t h = 0; h < n_kv; ++h) {
            std::vector<AttnPartial> parts(3 * group);
            std::vector<float> accs(3 * group * hd);
            for (uint32_t r = 0; r < 3; ++r)
              attention_quant_partial(a, h, n_q - 1, std::min(cuts[r], n_tokens),
                                      std::min(cuts[r + 1], n_tokens), &parts[r * group],
                                      &accs[(size_t)r * group * hd]);
            for (uint32_t g = 0; g < group; ++g) {
              AttnPartial pg[3];
              std::vector<float> ag(3 * hd);
              for (uint32_t r = 0; r < 3; ++r) {
                pg[r] = parts[r * group + g];
                memcpy(&ag[r * hd], &accs[((size_t)r * group + g) * hd], hd * sizeof(float));
              }
              attention_merge(pg, ag.data(), 3, hd,
                              out2.data() + (size_t)(n_q - 1) * n_head * hd + (h * group + g) * hd);
            }
          }
          // Weights rounded to bf16 under another running maximum may
          // round the other way: both within vbound of the reference.
          std::vector<double> ref, vb(hd, 0.0);
          for (uint32_t hq = 0; hq < n_head; ++hq) {
            const size_t o = (size_t)(n_q - 1) * n_head * hd + (size_t)hq * hd;
            const uint32_t ng = std::min(group - hq % group / kQAttnGroupChunk * kQAttnGroupChunk, kQAttnGroupChunk);
            if (qattn_bf16_values(hd, ng))
              reference(c, layer, q.data() + o, hq, n_head, n_tokens, true, ref, nullptr, &vb);
            else
              vb.assign(hd, 0.0);
            for (uint32_t ch = 0; ch < hd; ++ch)
              kt::check_close(out2[o + ch], out[o + ch], 1e-5 + 2 * vb[ch], "merged", o + ch, ctx);
          }
        }
        Level{cpu_isa_detect(), true}.set();
      }
}

// Which passes take the rounded-query step: every head_dim that is a
// multiple of 16 up to 512 and every head count up to 8 (3, 5, 6, 7
// padded) at the SIMD levels, nothing at the scalar one; q4 values as bf16
// dot products in every such pass at the AVX-512 level of a CPU with AVX-512
// BF16, VBMI and VNNI, in none elsewhere; a 15-bit query against q8 keys,
// and against q4 keys at that AVX-512 level (with VNNI), int8 elsewhere.
// test_kernel_levels picks its reference from qattn_rounds_query and
// qattn_query_bits, so without this a shape quietly falling back to the
// float step, or a level rounding the other way, would still pass there.
void test_rounded_shapes(void**) {
  for (CpuIsa isa : kt::isa_levels()) {
    cpu_isa_set(isa);
    const bool simd = isa != CpuIsa::scalar;
    const uint32_t q4_bits = isa == CpuIsa::avx512 && __builtin_cpu_supports("avx512vnni") ? 15 : 8;
    if (simd && (qattn_query_bits(KV_Q8) != 15 || qattn_query_bits(KV_Q4) != q4_bits))
      fail_msg("%s: query bits q8 %u q4 %u, want 15 and %u", cpu_isa_name(isa), qattn_query_bits(KV_Q8),
               qattn_query_bits(KV_Q4), q4_bits);
    for (uint32_t hd = 8; hd <= 528; hd += 8)
      for (uint32_t ng = 1; ng <= kQAttnGroupChunk; ++ng) {
        const bool want = simd && hd % 16 == 0 && hd <= kQAttnMaxHeadDim;
        if (qattn_rounds_query(hd, ng) != want)
          fail_msg("%s hd %u ng %u: rounded %d, want %d", cpu_isa_name(isa), hd, ng, !want, want);
        // Every rounded AVX-512 pass takes bf16 values where the CPU can.
        const bool bf = want && isa == CpuIsa::avx512 && __builtin_cpu_supports("avx512vnni") &&
                        __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vbmi");
        if (qattn_bf16_values(hd, ng) != bf)
          fail_msg("%s hd %u ng %u: bf16 values %d, want %d", cpu_isa_name(isa), hd, ng, !bf, bf);
      }
  }
  cpu_isa_set(cpu_isa_detect());
}

void test_backend_threads(void**) {
  // Long contexts split by position range across threads; the tail block is
  // partial (not a multiple of 16).
  kt::Rng rng(5);
  char ctx[160];
  for (auto& fp : kPairs)
    for (unsigned nt : {1u, 2u}) {
      const uint32_t hd = 64, n_kv = 2, n_head = 4, n_tokens = 1500;
      QCache c = make(1, n_kv, hd, 16, fp[0], fp[1], n_tokens, rng);
      kvrt::ThreadPool pool(nt);
      kvrt::CpuBackend be(pool);
      kvrt::BackendScratch s;
      std::vector<kvrt_k::AttnPartial> parts(kvrt::CpuBackend::attention_partials_needed(nt, n_head, n_tokens));
      std::vector<float> pacc((parts.size() + kvrt::CpuBackend::kMaxSplit) * hd);
      s.parts = parts.data();
      s.part_acc = pacc.data();
      s.part_capacity = parts.size();
      for (uint32_t n_q : {1u, 4u}) {
        std::vector<float> q((size_t)n_q * n_head * hd), out(q.size());
        for (auto& f : q) f = rng.uni(-2.0f, 2.0f);
        QAttnArgs a = args(c, 0, q, out, n_q, n_head);
        for (bool bf16 : {true, false}) {
          qattn_allow_bf16_values(bf16);
          std::fill(out.begin(), out.end(), 0.0f);
          be.attention_quant(a, s);
          snprintf(ctx, sizeof ctx, "backend threads %u k %u v %u n_q %u bf16 %d", nt, fp[0], fp[1], n_q, bf16);
          check_out(c, 0, q, out, n_q, n_head, ctx);
        }
        qattn_allow_bf16_values(true);
      }
    }
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_kernel_levels),
      cmocka_unit_test(test_rounded_shapes),
      cmocka_unit_test(test_backend_threads),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
