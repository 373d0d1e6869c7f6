// Tests of paged attention (full, partial + merge) at every ISA level against
// a naive softmax attention over a dense copy of the cache written here.
#include <string.h>

#include <algorithm>

#include "test-kernels-util.h"

using namespace kvrt_k;

namespace {

struct Cache {
  KvLayout layout;
  uint32_t n_tokens;
  std::vector<uint8_t> pool;            // physical blocks, shuffled
  std::vector<const uint8_t*> blocks;   // logical -> physical
  std::vector<double> k, v;             // dense [layer][head][t][d], stored values
};

double store_elem(uint32_t fmt, uint8_t* p, float f) {
  if (fmt == KV_F32) {
    memcpy(p, &f, 4);
    return f;
  }
  if (fmt == KV_F16) {
    uint16_t h = f32_to_f16(f);
    memcpy(p, &h, 2);
    return kt::half_value_ref(h);
  }
  uint32_t bits = f32_bits(f) & 0xffff0000u;
  uint16_t h = (uint16_t)(bits >> 16);
  memcpy(p, &h, 2);
  return f32_from_bits(bits);
}

Cache make_cache(uint32_t n_layer, uint32_t n_kv, uint32_t hd, uint32_t bt, uint32_t kf,
                 uint32_t vf, uint32_t n_tokens, kt::Rng& rng) {
  Cache c;
  assert_true(kv_layout_init(&c.layout, n_layer, n_kv, hd, bt, kf, vf));
  c.n_tokens = n_tokens;
  uint32_t n_blocks = (n_tokens + bt - 1) / bt;
  c.pool.resize((size_t)n_blocks * c.layout.block_bytes);
  std::vector<uint32_t> perm(n_blocks);
  for (uint32_t i = 0; i < n_blocks; ++i) perm[i] = i;
  for (uint32_t i = n_blocks; i > 1; --i) std::swap(perm[i - 1], perm[rng.below(i)]);
  c.blocks.resize(n_blocks);
  for (uint32_t i = 0; i < n_blocks; ++i) c.blocks[i] = c.pool.data() + (size_t)perm[i] * c.layout.block_bytes;
  size_t dense = (size_t)n_layer * n_kv * n_tokens * hd;
  c.k.resize(dense);
  c.v.resize(dense);
  size_t ek = kv_elem_bytes(kf), ev = kv_elem_bytes(vf);
  // Place each element by the layout's documented byte rule, written out here.
  for (uint32_t l = 0; l < n_layer; ++l)
    for (uint32_t h = 0; h < n_kv; ++h)
      for (uint32_t t = 0; t < n_tokens; ++t) {
        uint8_t* blk = c.pool.data() + (size_t)perm[t / bt] * c.layout.block_bytes;
        size_t layer_base = (size_t)l * n_kv * bt * hd * (ek + ev);
        uint8_t* kp = blk + layer_base + ((size_t)h * bt + t % bt) * hd * ek;
        uint8_t* vp = blk + layer_base + (size_t)n_kv * bt * hd * ek + ((size_t)h * bt + t % bt) * hd * ev;
        size_t di = (((size_t)l * n_kv + h) * n_tokens + t) * hd;
        for (uint32_t d = 0; d < hd; ++d) {
          c.k[di + d] = store_elem(kf, kp + d * ek, rng.uni(-1.0f, 1.0f));
          c.v[di + d] = store_elem(vf, vp + d * ev, rng.uni(-1.0f, 1.0f));
        }
      }
  return c;
}

// out[i][h][d] by the definition, in double.
std::vector<double> naive(const Cache& c, uint32_t layer, const std::vector<float>& q,
                          size_t q_stride, uint32_t n_q, uint32_t n_head, int32_t pos0, float scale) {
  const uint32_t hd = c.layout.head_dim, n_kv = c.layout.n_head_kv, group = n_head / n_kv;
  std::vector<double> out((size_t)n_q * q_stride, 0.0);
  std::vector<double> s;
  for (uint32_t i = 0; i < n_q; ++i)
    for (uint32_t h = 0; h < n_head; ++h) {
      uint32_t kvh = h / group, n_vis = (uint32_t)pos0 + i + 1;
      const float* qi = q.data() + (size_t)i * q_stride + (size_t)h * hd;
      s.assign(n_vis, 0.0);
      double mx = -INFINITY;
      for (uint32_t t = 0; t < n_vis; ++t) {
        const double* kt_ = c.k.data() + (((size_t)layer * n_kv + kvh) * c.n_tokens + t) * hd;
        double dot = 0;
        for (uint32_t d = 0; d < hd; ++d) dot += (double)qi[d] * kt_[d];
        s[t] = (double)scale * dot;
        mx = std::max(mx, s[t]);
      }
      double sum = 0;
      for (uint32_t t = 0; t < n_vis; ++t) sum += (s[t] = exp(s[t] - mx));
      double* o = out.data() + (size_t)i * q_stride + (size_t)h * hd;
      for (uint32_t t = 0; t < n_vis; ++t) {
        const double* vt = c.v.data() + (((size_t)layer * n_kv + kvh) * c.n_tokens + t) * hd;
        for (uint32_t d = 0; d < hd; ++d) o[d] += s[t] / sum * vt[d];
      }
    }
  return out;
}

struct Case {
  uint32_t hd, bt, group, n_q, kf, vf;
  int32_t pos0;
  float q_amp;  // larger values make the softmax peaky
};

void run_case(const Case& cs, kt::Rng& rng) {
  const uint32_t n_kv = 2, n_head = n_kv * cs.group, layer = 1;
  const uint32_t n_tokens = (uint32_t)cs.pos0 + cs.n_q;
  Cache c = make_cache(2, n_kv, cs.hd, cs.bt, cs.kf, cs.vf, n_tokens, rng);
  const size_t q_stride = (size_t)n_head * cs.hd + 4;
  std::vector<float> q((size_t)cs.n_q * q_stride);
  for (float& v : q) v = rng.uni(-cs.q_amp, cs.q_amp);
  const float scale = 1.0f / sqrtf((float)cs.hd);
  std::vector<double> want = naive(c, layer, q, q_stride, cs.n_q, n_head, cs.pos0, scale);
  char ctx[200];
  for (CpuIsa isa : kt::isa_levels()) {
    cpu_isa_set(isa);
    snprintf(ctx, sizeof ctx, "isa %s hd %u bt %u group %u n_q %u kf %u vf %u pos0 %d amp %g",
             cpu_isa_name(isa), cs.hd, cs.bt, cs.group, cs.n_q, cs.kf, cs.vf, cs.pos0, cs.q_amp);
    const float sentinel = -777.0f;
    std::vector<float> out(q.size(), sentinel);
    AttnArgs a{&c.layout, c.blocks.data(), layer, q.data(), out.data(), q_stride, cs.n_q, n_head,
               cs.pos0, scale};
    for (uint32_t kvh = 0; kvh < n_kv; ++kvh) attention(a, kvh);
    for (size_t i = 0; i < out.size(); ++i) {
      if (i % q_stride >= (size_t)n_head * cs.hd) {
        if (out[i] != sentinel) {
          print_error("wrote into the stride gap at %zu (%s)\n", i, ctx);
          fail();
        }
        continue;
      }
      kt::check_close(out[i], want[i], 2e-5, "out", i, ctx);
    }
    // Partial + merge over a random split of [0, n_tokens + 3) equals the full result.
    for (uint32_t qi = 0; qi < cs.n_q; ++qi) {
      std::vector<uint32_t> cuts(4);
      uint32_t n_parts = 1 + rng.below(4);
      for (uint32_t j = 0; j + 1 < n_parts; ++j) cuts[j] = rng.below(n_tokens + 4);
      cuts[n_parts - 1] = n_tokens + 3;
      std::sort(cuts.begin(), cuts.begin() + n_parts);
      for (uint32_t kvh = 0; kvh < n_kv; ++kvh) {
        std::vector<AttnPartial> parts((size_t)n_parts * cs.group);
        std::vector<float> accs((size_t)n_parts * cs.group * cs.hd);
        uint32_t t0 = 0;
        for (uint32_t j = 0; j < n_parts; ++j) {
          std::vector<AttnPartial> p(cs.group);
          std::vector<float> acc((size_t)cs.group * cs.hd, 99.0f);
          attention_partial(a, kvh, qi, t0, cuts[j], p.data(), acc.data());
          if (t0 >= std::min(cuts[j], (uint32_t)cs.pos0 + qi + 1)) {  // nothing visible
            for (uint32_t g = 0; g < cs.group; ++g) assert_true(p[g].m == -INFINITY && p[g].l == 0.0f);
            for (float v : acc) assert_true(v == 0.0f);
          }
          for (uint32_t g = 0; g < cs.group; ++g) {
            parts[(size_t)g * n_parts + j] = p[g];
            memcpy(&accs[((size_t)g * n_parts + j) * cs.hd], &acc[(size_t)g * cs.hd], cs.hd * 4);
          }
          t0 = cuts[j];
        }
        for (uint32_t g = 0; g < cs.group; ++g) {
          std::vector<float> o(cs.hd);
          attention_merge(&parts[(size_t)g * n_parts], &accs[(size_t)g * n_parts * cs.hd], n_parts,
                          cs.hd, o.data());
          size_t base = (size_t)qi * q_stride + (size_t)(kvh * cs.group + g) * cs.hd;
          for (uint32_t d = 0; d < cs.hd; ++d)
            kt::check_close(o[d], out[base + d], 1e-5, "merged", base + d, ctx);
        }
      }
    }
  }
  cpu_isa_set(cpu_isa_detect());
}

void sweep(uint32_t kf, uint32_t vf) {
  kt::Rng rng(31 + kf * 7 + vf);
  // hd 40 and 80: 32-channel value passes and an 8-channel tail (AVX2).
  for (uint32_t hd : {8u, 12u, 40u, 64u, 80u, 128u})
    for (uint32_t bt : {1u, 16u, 32u})
      for (uint32_t group : {1u, 2u, 4u})
        // 2: a two-row set of two queries (group 1); 3: sets of 3, 6 rows.
        for (uint32_t n_q : {1u, 2u, 3u, 7u})
          for (int32_t pos0 : {0, 5, 37, 100}) {
            if ((hd == 12 || hd == 40 || hd == 80) && bt != 16) continue;
            run_case({hd, bt, group, n_q, kf, vf, pos0, 1.0f}, rng);
          }
}

void test_attention_f32(void** s) { (void)s; sweep(KV_F32, KV_F32); }
void test_attention_f16(void** s) { (void)s; sweep(KV_F16, KV_F16); }
void test_attention_mixed(void** s) { (void)s; sweep(KV_F16, KV_F32); sweep(KV_BF16, KV_F16); }

// Peaky softmax and a group wider than one row set (8 rows).
void test_attention_sharp_and_wide(void** state) {
  (void)state;
  kt::Rng rng(5);
  run_case({64, 16, 1, 7, KV_F16, KV_F16, 200, 12.0f}, rng);
  run_case({64, 16, 12, 3, KV_F16, KV_F16, 70, 1.0f}, rng);
  run_case({32, 16, 8, 7, KV_F32, KV_F16, 333, 4.0f}, rng);
}

// Merging partials that saw nothing leaves them out; all empty gives zeros.
void test_merge_empty(void** state) {
  (void)state;
  AttnPartial parts[3] = {{-INFINITY, 0.0f}, {1.0f, 2.0f}, {3.0f, 1.0f}};
  float accs[3 * 2] = {0, 0, 2.0f, 4.0f, 1.0f, -1.0f};
  float out[2];
  attention_merge(parts, accs, 3, 2, out);
  double w1 = exp(1.0 - 3.0), l = 2.0 * w1 + 1.0;
  kt::check_close(out[0], (2.0 * w1 + 1.0) / l, 1e-6, "merge", 0, "");
  kt::check_close(out[1], (4.0 * w1 - 1.0) / l, 1e-6, "merge", 1, "");
  attention_merge(parts, accs, 1, 2, out);
  assert_true(out[0] == 0.0f && out[1] == 0.0f);
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_merge_empty),
      cmocka_unit_test(test_attention_f32),
      cmocka_unit_test(test_attention_f16),
      cmocka_unit_test(test_attention_mixed),
      cmocka_unit_test(test_attention_sharp_and_wide),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
