// Tests of the q8/q4 KV codecs (kernels/common/kv-quant.h): byte layout on
// hand-worked examples, round-trip error bounds derived from the format's
// definition on random and adversarial data, odd head dims, partial blocks.
#include <string.h>

#include <algorithm>

#include "kernels/common/kv-layout.h"
#include "test-kernels-util.h"

using namespace kvrt_k;

namespace {

const uint32_t kFormats[] = {KV_Q8, KV_Q4};
const uint32_t kDims[] = {1, 7, 8, 33, 64, 80, 96, 128};

// Worst-case error of one element in a set spanning [lo, hi]: half a step,
// with slack for the f16 rounding of scale (up, 1 ulp = 2^-10) and, for q4,
// of the minimum (down).
double bound(uint32_t fmt, double lo, double hi) {
  if (fmt == KV_Q8) return std::max(fabs(lo), fabs(hi)) / 254.0 * 1.002 + 1e-7;
  return (hi - lo + fabs(lo) * 2e-3) / 30.0 * 1.002 + fabs(lo) * 1e-3 + 1e-7;
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

// Checks every element against the bound of its own set: per channel for K,
// per token group for V.
void check_bounds(bool is_k, uint32_t fmt, const std::vector<float>& x, uint32_t n,
                  uint32_t hd, const std::vector<float>& y, const char* ctx) {
  const uint32_t gs = std::min<uint32_t>(32, hd);
  for (uint32_t t = 0; t < n; ++t) {
    for (uint32_t c = 0; c < hd; ++c) {
      double lo = 1e30, hi = -1e30;
      if (is_k) {
        for (uint32_t u = 0; u < n; ++u) {
          lo = std::min(lo, (double)x[u * hd + c]);
          hi = std::max(hi, (double)x[u * hd + c]);
        }
      } else {
        uint32_t c0 = c / gs * gs, c1 = std::min(hd, c0 + gs);
        for (uint32_t u = c0; u < c1; ++u) {
          lo = std::min(lo, (double)x[t * hd + u]);
          hi = std::max(hi, (double)x[t * hd + u]);
        }
      }
      kt::check_close(y[t * hd + c], x[t * hd + c], bound(fmt, lo, hi), "element", t * hd + c, ctx);
    }
  }
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
          check_bounds(is_k, fmt, x, bt, hd, y, ctx);
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
      for (uint32_t t = 0; t < bt; ++t)
        for (uint32_t c = 0; c < hd; ++c) {
          bool shared = is_k ? c == 3 : (t == 5 && c < 32);
          if (!shared) kt::check_close(y[t * hd + c], x[t * hd + c], bound(fmt, -0.05, 0.05), "bystander", c, ctx);
        }
      // NaN reads as 0, infinities clamp to +-65504.
      for (auto& f : x) f = rng.uni(-1.0f, 1.0f);
      x[2 * hd + 1] = NAN;
      x[4 * hd + 40] = INFINITY;
      x[4 * hd + 41] = -INFINITY;
      round_trip(is_k, fmt, x, bt, bt, hd, y);
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
      cmocka_unit_test(test_layout_sizes),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
