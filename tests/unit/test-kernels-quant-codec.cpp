// Tests of the q8/q4 KV codecs (kernels/common/kv-quant.h): byte layout on
// hand-worked examples, round-trip error bounds derived from the encoder's
// rules on random and adversarial data, odd head dims, partial blocks.
#include <string.h>

#include <algorithm>

#include "kernels/common/kv-layout.h"
#include "kernels/cpu/cpu-kernels-impl.h"
#include "test-kernels-util.h"

using namespace kvrt_k;

namespace {

const uint32_t kFormats[] = {KV_Q8, KV_Q4};
const uint32_t kDims[] = {1, 7, 8, 33, 64, 80, 96, 128};

// q8: worst-case error of one element in a set spanning [lo, hi]: half a
// step, with slack for the f16 rounding of the scale (up, 1 ulp = 2^-10).
double bound_q8(double lo, double hi) { return std::max(fabs(lo), fabs(hi)) / 254.0 * 1.002 + 1e-7; }

// q4 sets are fitted (kvq_q4_fit): the stored parameters give a weighted
// squared error no larger than the min/max parameters (kvq_q4_params) would,
// weight 1 + w * z^2 with z = (x - mid) / half-range. Hence each element's
// weighted squared error is at most that min/max error, though an element may
// now be off by more than half a step (codes may clip). Checks both on one set
// (x the inputs, y what came back) and returns {fitted, min/max} errors.
struct SetErr {
  double fit, minmax;
};
SetErr check_q4_set(const std::vector<double>& x, const std::vector<double>& y, float edge_weight,
                    const char* ctx) {
  double lo = 1e30, hi = -1e30;
  for (double v : x) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  const double mid = 0.5 * (lo + hi), inv_half = hi > lo ? 2.0 / (hi - lo) : 0.0;
  uint16_t sh, mh;
  kvq_q4_params((float)lo, (float)hi, &sh, &mh);
  const float s = f16_to_f32(sh), mn = f16_to_f32(mh);
  std::vector<double> w(x.size());
  SetErr e{0, 0};
  for (size_t i = 0; i < x.size(); ++i) {
    // The min/max rule by its definition: code = round((x - min) / scale).
    const double z = (x[i] - mid) * inv_half, c = std::min(15.0, std::max(0.0, std::round((x[i] - mn) / s)));
    w[i] = 1.0 + edge_weight * z * z;
    const double dm = x[i] - ((double)mn + (double)s * c), df = x[i] - y[i];
    e.minmax += w[i] * dm * dm;
    e.fit += w[i] * df * df;
  }
  const double slack = e.minmax * 1e-4 + 1e-12;
  if (!(e.fit <= e.minmax + slack)) {
    fprintf(stderr, "%s: fitted error %.9g above min/max error %.9g\n", ctx, e.fit, e.minmax);
    fail();
  }
  for (size_t i = 0; i < x.size(); ++i)
    kt::check_close(y[i], x[i], sqrt((e.minmax + slack) / w[i]), "element", i, ctx);
  return e;
}

// Quantizes K or V of n tokens into a buffer with guard bytes after the
// head part, checks the guard, dequantizes; returns the part size.
size_t round_trip(bool is_k, uint32_t fmt, const std::vector<float>& x, uint32_t n, uint32_t bt,
                  uint32_t hd, std::vector<float>& y) {
  size_t bytes = is_k ? kvq_k_head_bytes(fmt, bt, hd) : kvq_v_head_bytes(fmt, bt, hd);
  assert_int_equal(bytes % 4, 0);
  std::vector<uint8_t> buf(bytes + 64, 0xAB);
  if (is_k)
    kvq_quantize_k(fmt, buf.data(), x.data(), hd, n, bt, hd);
  else
    kvq_quantize_v(fmt, buf.data(), x.data(), hd, n, bt, hd);
  for (size_t i = bytes; i < buf.size(); ++i) assert_int_equal(buf[i], 0xAB);
  y.assign((size_t)bt * hd, -999.0f);
  if (is_k)
    kvq_dequantize_k(fmt, buf.data(), bt, bt, hd, y.data(), hd);
  else
    kvq_dequantize_v(fmt, buf.data(), bt, bt, hd, y.data(), hd);
  return bytes;
}

// Checks every element against the rule of its own set: per channel for K,
// per token group for V. Inputs are compared as the encoder reads them (NaN
// as 0, clamped to the f16 range). Returns the summed q4 errors (fitted, min/max).
SetErr check_bounds(bool is_k, uint32_t fmt, const std::vector<float>& x, uint32_t n,
                    uint32_t hd, const std::vector<float>& y, const char* ctx) {
  const uint32_t gs = std::min<uint32_t>(32, hd);
  SetErr sum{0, 0};
  if (fmt == KV_Q4) {
    // One set per channel (K) or per token and group (V).
    const uint32_t n_sets = is_k ? hd : n * ((hd + gs - 1) / gs);
    for (uint32_t k = 0; k < n_sets; ++k) {
      std::vector<double> xs, ys;
      const uint32_t t = is_k ? 0 : k / ((hd + gs - 1) / gs), c0 = is_k ? k : k % ((hd + gs - 1) / gs) * gs;
      const uint32_t len = is_k ? n : std::min(hd, c0 + gs) - c0;
      for (uint32_t i = 0; i < len; ++i) {
        const size_t at = is_k ? (size_t)i * hd + c0 : (size_t)t * hd + c0 + i;
        xs.push_back(kvq_sanitize(x[at]));
        ys.push_back(y[at]);
      }
      SetErr e = check_q4_set(xs, ys, is_k ? kKvqKeyEdgeWeight : kKvqValueEdgeWeight, ctx);
      sum.fit += e.fit;
      sum.minmax += e.minmax;
    }
    return sum;
  }
  for (uint32_t t = 0; t < n; ++t) {
    for (uint32_t c = 0; c < hd; ++c) {
      double lo = 1e30, hi = -1e30;
      if (is_k) {
        for (uint32_t u = 0; u < n; ++u) {
          lo = std::min(lo, (double)kvq_sanitize(x[u * hd + c]));
          hi = std::max(hi, (double)kvq_sanitize(x[u * hd + c]));
        }
      } else {
        uint32_t c0 = c / gs * gs, c1 = std::min(hd, c0 + gs);
        for (uint32_t u = c0; u < c1; ++u) {
          lo = std::min(lo, (double)kvq_sanitize(x[t * hd + u]));
          hi = std::max(hi, (double)kvq_sanitize(x[t * hd + u]));
        }
      }
      kt::check_close(y[t * hd + c], kvq_sanitize(x[t * hd + c]), bound_q8(lo, hi), "element", t * hd + c, ctx);
    }
  }
  return sum;
}

void test_layout_example(void**) {
  // q4 keys, 2 tokens x 2 channels: channel 0 = {0, 15}, channel 1 = {15, 0}:
  // min 0, scale 1, so codes are the values; low nibble is the even channel.
  const float x[] = {0, 15, 15, 0};
  uint8_t buf[64];
  kvq_quantize_k(KV_Q4, buf, x, 2, 2, 2, 2);
  assert_int_equal(kvq_k_head_bytes(KV_Q4, 2, 2), 12);  // 2 code bytes, pad to 4, 2 scales, 2 mins
  assert_int_equal(buf[0], 0xF0);
  assert_int_equal(buf[1], 0x0F);
  uint16_t sc[4];
  memcpy(sc, buf + 4, 8);
  assert_int_equal(sc[0], 0x3C00);  // 1.0
  assert_int_equal(sc[1], 0x3C00);
  assert_int_equal(sc[2], 0x0000);  // min 0
  assert_int_equal(sc[3], 0x0000);
  // q8 values, one token, group of 4: amax 127 gives scale exactly 1.
  const float v[] = {127, -3, 0.4f, -127};
  uint8_t vb[64];
  kvq_quantize_v(KV_Q8, vb, v, 4, 1, 1, 4);
  assert_int_equal((int8_t)vb[0], 127);
  assert_int_equal((int8_t)vb[1], -3);
  assert_int_equal((int8_t)vb[2], 0);
  assert_int_equal((int8_t)vb[3], -127);
  uint16_t s8;
  memcpy(&s8, vb + 4, 2);
  assert_int_equal(s8, 0x3C00);
}

void test_random_round_trip(void**) {
  kt::Rng rng(7);
  char ctx[128];
  SetErr q4[2] = {{0, 0}, {0, 0}};  // V, K
  for (uint32_t fmt : kFormats)
    for (uint32_t hd : kDims)
      for (uint32_t bt : {1u, 16u, 32u})
        for (int is_k = 0; is_k < 2; ++is_k) {
          std::vector<float> x((size_t)bt * hd), y;
          for (uint32_t c = 0; c < hd; ++c) {
            float mag = rng.uni(0.01f, 8.0f), off = rng.uni(-2.0f, 2.0f);
            for (uint32_t t = 0; t < bt; ++t) x[t * hd + c] = off + rng.uni(-mag, mag);
          }
          snprintf(ctx, sizeof ctx, "fmt %u hd %u bt %u %s", fmt, hd, bt, is_k ? "K" : "V");
          round_trip(is_k, fmt, x, bt, bt, hd, y);
          SetErr e = check_bounds(is_k, fmt, x, bt, hd, y, ctx);
          q4[is_k].fit += e.fit;
          q4[is_k].minmax += e.minmax;
        }
  // The fit must find lower errors than min/max on uniform random data, not
  // just equal ones (an encoder without the fit would give a ratio of 1).
  for (int is_k = 0; is_k < 2; ++is_k) {
    printf("q4 %s: fitted / min/max weighted squared error %.4f\n", is_k ? "K" : "V", q4[is_k].fit / q4[is_k].minmax);
    assert_true(q4[is_k].fit < 0.99 * q4[is_k].minmax);
  }
}

void test_adversarial(void**) {
  char ctx[128];
  const uint32_t bt = 16, hd = 80;
  for (uint32_t fmt : kFormats)
    for (int is_k = 0; is_k < 2; ++is_k) {
      std::vector<float> x((size_t)bt * hd, 0.0f), y;
      // All zeros come back exactly.
      round_trip(is_k, fmt, x, bt, bt, hd, y);
      for (float f : y) assert_true(f == 0.0f);
      // Constant channels / groups: within f16 precision of the constant.
      for (uint32_t i = 0; i < x.size(); ++i) x[i] = 3.7f + (is_k ? i % hd : i / hd) * 0.25f;
      round_trip(is_k, fmt, x, bt, bt, hd, y);
      for (uint32_t i = 0; i < x.size(); ++i)
        kt::check_close(y[i], x[i], fabs(x[i]) * 5e-3, "constant", i, is_k ? "K" : "V");
      // One huge outlier: it is kept, and only its own channel (K) or group
      // (V) loses precision.
      kt::Rng rng(11);
      for (auto& f : x) f = rng.uni(-0.05f, 0.05f);
      x[5 * hd + 3] = 1000.0f;
      round_trip(is_k, fmt, x, bt, bt, hd, y);
      snprintf(ctx, sizeof ctx, "outlier fmt %u %s", fmt, is_k ? "K" : "V");
      check_bounds(is_k, fmt, x, bt, hd, y, ctx);
      kt::check_close(y[5 * hd + 3], 1000.0, 1000.0 * 2e-3, "outlier", 0, ctx);
      // q8 bystanders: half a step of their own range. q4 bystanders are
      // held by check_bounds to the min/max error of their own set, which
      // only holds values in [-0.05, 0.05].
      for (uint32_t t = 0; t < bt && fmt == KV_Q8; ++t)
        for (uint32_t c = 0; c < hd; ++c) {
          bool shared = is_k ? c == 3 : (t == 5 && c < 32);
          if (!shared) kt::check_close(y[t * hd + c], x[t * hd + c], bound_q8(-0.05, 0.05), "bystander", c, ctx);
        }
      // NaN reads as 0, infinities clamp to +-65504.
      for (auto& f : x) f = rng.uni(-1.0f, 1.0f);
      x[2 * hd + 1] = NAN;
      x[4 * hd + 40] = INFINITY;
      x[4 * hd + 41] = -INFINITY;
      round_trip(is_k, fmt, x, bt, bt, hd, y);
      check_bounds(is_k, fmt, x, bt, hd, y, ctx);
      for (float f : y) assert_true(std::isfinite(f));
      kt::check_close(y[4 * hd + 40], 65504.0, 65504.0 * 2e-3 + (fmt == KV_Q4 ? 65504.0 / 15 : 0), "+inf", 0, ctx);
      kt::check_close(y[4 * hd + 41], -65504.0, 65504.0 * 2e-3 + (fmt == KV_Q4 ? 65504.0 / 15 : 0), "-inf", 0, ctx);
      assert_true(fabs(y[2 * hd + 1]) <= (is_k ? 1.01 : 1.01));
    }
}

void test_partial_block(void**) {
  char ctx[128];
  kt::Rng rng(3);
  for (uint32_t fmt : kFormats)
    for (uint32_t hd : {8u, 33u, 96u})
      for (int is_k = 0; is_k < 2; ++is_k)
        for (uint32_t n : {1u, 5u, 15u}) {
          const uint32_t bt = 16;
          // Rows past n hold garbage that must not influence the statistics.
          std::vector<float> x((size_t)bt * hd), y;
          for (uint32_t i = 0; i < x.size(); ++i) x[i] = i < n * hd ? rng.uni(-1, 1) : 1e4f;
          round_trip(is_k, fmt, x, n, bt, hd, y);
          snprintf(ctx, sizeof ctx, "partial fmt %u hd %u n %u %s", fmt, hd, n, is_k ? "K" : "V");
          check_bounds(is_k, fmt, x, n, hd, y, ctx);
        }
}

// Fills bt rows of hd channels with one of several kinds of data, each aimed
// at a part of the q4 fit where a vectorized copy could round differently:
// f16 subnormal parameters, the clamp at the f16 range, NaN and infinities,
// exact rounding ties, constant and two-valued sets (den = 0), -0.
void fill_kind(std::vector<float>& x, uint32_t bt, uint32_t hd, int kind, kt::Rng& rng) {
  for (uint32_t t = 0; t < bt; ++t)
    for (uint32_t c = 0; c < hd; ++c) {
      float& v = x[(size_t)t * hd + c];
      switch (kind) {
        case 0: v = (float)(c % 5) - 2.0f + rng.uni(-1.0f, 1.0f) * (float)(1 + c % 3); break;
        case 1: v = rng.uni(-1e-4f, 1e-4f) * (c % 2 ? 1e-2f : 1.0f); break;  // subnormal scales
        case 2: v = rng.uni(-1.0f, 1.0f) * (rng.below(4) ? 70000.0f : 60000.0f); break;
        case 3: v = (float)((int)rng.below(9) - 4) * 0.25f; break;  // ties and few distinct values
        case 4: v = rng.below(3) ? 1.5f : (rng.below(2) ? -0.0f : 0.0f); break;
        default: {
          const uint32_t r = rng.below(40);
          v = r == 0 ? NAN : r == 1 ? INFINITY : r == 2 ? -INFINITY : r == 3 ? 1e30f : rng.uni(-3.0f, 3.0f);
        }
      }
    }
}

// The vectorized encoders (kv-quant-lanes.h) store the scalar encoder's
// bytes, q8 and q4, keys and values, at each SIMD level: called directly,
// and through the dispatcher the engine uses at every level.
void test_levels_match_reference(void**) {
  typedef void (*QFn)(uint32_t, bool, uint8_t*, const float*, size_t, uint32_t, uint32_t, uint32_t);
  const kvrt_k::CpuIsa best = cpu_isa_detect();
  std::vector<std::pair<const char*, QFn>> fns;
  if (best >= kvrt_k::CpuIsa::avx2) fns.push_back({"avx2", avx2::kv_quantize});
  if (best >= kvrt_k::CpuIsa::avx512) fns.push_back({"avx512", avx512::kv_quantize});
  if (fns.empty()) {
    printf("no SIMD level on this CPU: the vectorized encoders are not run here\n");
    skip();
  }
  kt::Rng rng(19);
  char ctx[160];
  size_t sets = 0;
  for (uint32_t fmt : kFormats)
    for (uint32_t hd : {1u, 7u, 8u, 16u, 33u, 64u, 80u, 96u, 128u, 256u})
      for (uint32_t bt : {1u, 7u, 16u, 32u, 64u})
        for (int kind = 0; kind < 6; ++kind)
          for (uint32_t n : {bt, bt / 2 + 1, 1u, 0u}) {
            std::vector<float> x((size_t)bt * hd);
            fill_kind(x, bt, hd, kind, rng);
            for (int is_k = 0; is_k < 2; ++is_k) {
              const size_t bytes = is_k ? kvq_k_head_bytes(fmt, bt, hd) : kvq_v_head_bytes(fmt, bt, hd);
              std::vector<uint8_t> want(bytes + 16, 0xAB), got(bytes + 16, 0xCD);
              if (is_k)
                kvq_quantize_k(fmt, want.data(), x.data(), hd, n, bt, hd);
              else
                kvq_quantize_v(fmt, want.data(), x.data(), hd, n, bt, hd);
              sets += is_k ? hd : (size_t)n * kvq_n_groups(hd);
              for (const auto& [name, fn] : fns) {
                snprintf(ctx, sizeof ctx, "%s fmt %u %s hd %u bt %u n %u kind %d", name, fmt, is_k ? "K" : "V",
                         hd, bt, n, kind);
                for (int via = 0; via < 2; ++via) {
                  std::fill(got.begin(), got.end(), 0xCD);
                  if (via == 0) {
                    fn(fmt, is_k, got.data(), x.data(), hd, n, bt, hd);
                  } else {
                    cpu_isa_set(strcmp(name, "avx2") == 0 ? kvrt_k::CpuIsa::avx2 : kvrt_k::CpuIsa::avx512);
                    if (is_k)
                      kv_quantize_k(fmt, got.data(), x.data(), hd, n, bt, hd);
                    else
                      kv_quantize_v(fmt, got.data(), x.data(), hd, n, bt, hd);
                    cpu_isa_set(best);
                  }
                  for (size_t i = bytes; i < got.size(); ++i) assert_int_equal(got[i], 0xCD);
                  if (memcmp(got.data(), want.data(), bytes) != 0) {
                    size_t i = 0;
                    while (got[i] == want[i]) ++i;
                    fprintf(stderr, "%s%s: byte %zu of %zu is %u, the scalar encoder's %u\n", ctx,
                            via ? " (dispatched)" : "", i, bytes, got[i], want[i]);
                    fail();
                  }
                }
              }
            }
          }
  printf("vectorized encoders: %zu sets per level, bytes equal to the scalar encoder's\n", sets);
}

void test_layout_sizes(void**) {
  // Bytes per token of a head pair, block of 16: q8 K 8 + 2/16 per channel,
  // V 1 byte + 2 per 32; the layout adds the head parts up.
  KvLayout l;
  assert_true(kv_layout_init(&l, 2, 3, 128, 16, KV_Q8, KV_Q4));
  assert_int_equal(l.k_head_bytes, 16 * 128 + 256);
  assert_int_equal(l.v_head_bytes, 16 * 64 + 16 * 4 * 4);
  assert_int_equal(l.block_bytes, 2 * 3 * (l.k_head_bytes + l.v_head_bytes));
  assert_true(kv_k_offset(l, 1, 2) == l.layer_bytes + 2 * l.k_head_bytes);
  assert_true(kv_v_offset(l, 1, 0) == l.layer_bytes + 3 * l.k_head_bytes);
  assert_true(kv_layout_init(&l, 1, 1, 8, 16, KV_Q4, KV_Q4));
  assert_int_equal(l.k_head_bytes, 16 * 4 + 32);
  assert_int_equal(l.v_head_bytes, 16 * 4 + 16 * 4);
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_layout_example),  cmocka_unit_test(test_random_round_trip),
      cmocka_unit_test(test_adversarial),     cmocka_unit_test(test_partial_block),
      cmocka_unit_test(test_layout_sizes),    cmocka_unit_test(test_levels_match_reference),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
