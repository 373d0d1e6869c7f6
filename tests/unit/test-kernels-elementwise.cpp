// Tests of rmsnorm, RoPE, SwiGLU, kv_store and kv_load at every ISA level against
// direct double-precision formulas and the scalar f16/bf16 codecs.
#include <string.h>

#include <algorithm>

#include "test-kernels-util.h"

using namespace kvrt_k;

namespace {

const size_t kLens[] = {1, 3, 7, 8, 9, 16, 63, 64, 100, 4096, 4097};

void test_rmsnorm(void** state) {
  (void)state;
  kt::Rng rng(11);
  for (CpuIsa isa : kt::isa_levels()) {
    cpu_isa_set(isa);
    for (size_t n : kLens) {
      std::vector<float> x(n), w(n), y(n);
      for (size_t i = 0; i < n; ++i) {
        x[i] = rng.uni(-3.0f, 3.0f);
        w[i] = rng.uni(0.5f, 1.5f);
      }
      const float eps = 1e-5f;
      double ss = 0;
      for (float v : x) ss += (double)v * v;
      double inv = 1.0 / sqrt(ss / n + eps);
      rmsnorm(x.data(), w.data(), y.data(), n, eps);
      for (size_t i = 0; i < n; ++i) {
        double want = x[i] * inv * w[i];
        kt::check_close(y[i], want, 1e-6 * fabs(want) + 1e-30, "rmsnorm", i, cpu_isa_name(isa));
      }
      rmsnorm(x.data(), w.data(), x.data(), n, eps);  // in place
      for (size_t i = 0; i < n; ++i) assert_true(x[i] == y[i]);
    }
  }
  cpu_isa_set(cpu_isa_detect());
}

void test_rope(void** state) {
  (void)state;
  kt::Rng rng(12);
  struct P { size_t heads, hd, rot; int32_t pos; float base, fscale; };
  const P ps[] = {{4, 8, 8, 0, 10000.0f, 1.0f},     {3, 64, 64, 17, 10000.0f, 1.0f},
                  {2, 128, 64, 4095, 500000.0f, 1.0f}, {5, 64, 32, 123456, 10000.0f, 0.25f},
                  {1, 8, 6, 9, 10000.0f, 1.0f}};
  for (CpuIsa isa : kt::isa_levels()) {
    cpu_isa_set(isa);
    for (const P& p : ps) {
      std::vector<float> x(p.heads * p.hd);
      for (float& v : x) v = rng.uni(-2.0f, 2.0f);
      std::vector<float> y = x;
      rope(y.data(), p.heads, p.hd, p.rot, p.pos, p.base, p.fscale);
      for (size_t h = 0; h < p.heads; ++h)
        for (size_t d = 0; d < p.hd; ++d) {
          size_t idx = h * p.hd + d;
          double want = x[idx], tol = 0.0;
          if (d < p.rot) {
            size_t i = d / 2;
            double theta = (double)p.pos * p.fscale * pow((double)p.base, -2.0 * i / (double)p.rot);
            double x0 = x[h * p.hd + 2 * i], x1 = x[h * p.hd + 2 * i + 1];
            want = (d % 2 == 0) ? x0 * cos(theta) - x1 * sin(theta) : x0 * sin(theta) + x1 * cos(theta);
            // A few float roundings of sin/cos and the products.
            tol = 3e-7 * (fabs(x0) + fabs(x1));
          }
          kt::check_close(y[idx], want, tol, "rope", idx, cpu_isa_name(isa));
        }
    }
  }
  cpu_isa_set(cpu_isa_detect());
}

void test_swiglu(void** state) {
  (void)state;
  kt::Rng rng(13);
  for (CpuIsa isa : kt::isa_levels()) {
    cpu_isa_set(isa);
    for (size_t n : kLens) {
      std::vector<float> g(n), u(n);
      for (size_t i = 0; i < n; ++i) {
        g[i] = rng.uni(-20.0f, 20.0f);
        u[i] = rng.uni(-2.0f, 2.0f);
      }
      const float extremes[] = {0.0f, -0.0f, 1e-20f, -100.0f, 100.0f, -88.5f, 89.0f, 1e6f, -1e6f};
      for (size_t i = 0; i < n && i < 9; ++i) g[i * (n / 9 ? n / 9 : 1) % n] = extremes[i];
      std::vector<float> y = g;
      swiglu(y.data(), u.data(), n);
      for (size_t i = 0; i < n; ++i) {
        double want = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        kt::check_close(y[i], want, 4e-7 * fabs(want) + 1e-30, "swiglu", i, cpu_isa_name(isa));
      }
    }
  }
  cpu_isa_set(cpu_isa_detect());
}

void test_kv_store(void** state) {
  (void)state;
  kt::Rng rng(14);
  for (CpuIsa isa : kt::isa_levels()) {
    cpu_isa_set(isa);
    for (size_t n : kLens) {
      std::vector<float> src(n);
      for (size_t i = 0; i < n; ++i) {
        uint32_t b = rng.u32();
        // Mostly values around the half range, incl. subnormals, plus any bits.
        if (i % 3) b = (b & 0x807fffffu) | ((uint32_t)(98 + rng.below(46)) << 23);
        src[i] = f32_from_bits(b);
        if (isnan(src[i])) src[i] = 1.5f;
      }
      std::vector<uint8_t> dst(n * 4 + 8, 0xAB);
      kv_store(KV_F32, dst.data(), src.data(), n);
      assert_memory_equal(dst.data(), src.data(), n * 4);
      assert_int_equal(dst[n * 4], 0xAB);
      for (uint32_t fmt : {(uint32_t)KV_F16, (uint32_t)KV_BF16}) {
        std::fill(dst.begin(), dst.end(), 0xAB);
        kv_store(fmt, dst.data(), src.data(), n);
        for (size_t i = 0; i < n; ++i) {
          uint16_t got;
          memcpy(&got, dst.data() + 2 * i, 2);
          uint16_t want = fmt == KV_F16 ? f32_to_f16(src[i]) : f32_to_bf16(src[i]);
          if (got != want) {
            print_error("kv_store fmt %u isa %s [%zu] %g: got 0x%04x want 0x%04x\n", fmt,
                        cpu_isa_name(isa), i, src[i], got, want);
            fail();
          }
        }
        assert_int_equal(dst[n * 2], 0xAB);
      }
    }
  }
  cpu_isa_set(cpu_isa_detect());
}

// kv_load gives f16_to_f32 / bf16_to_f32 of every 16-bit pattern at every
// level and every offset within an 8-element vector (NaN: a NaN of the same
// sign, since vcvtph2ps quiets signalling NaNs), and f32 bit for bit; it
// writes n floats and no more.
void test_kv_load(void** state) {
  (void)state;
  std::vector<uint16_t> all(65536 + 7);
  for (size_t i = 0; i < all.size(); ++i) all[i] = (uint16_t)(i * 0x9E37u);  // a permutation of every pattern, then 7 more
  for (CpuIsa isa : kt::isa_levels()) {
    cpu_isa_set(isa);
    for (uint32_t fmt : {(uint32_t)KV_F16, (uint32_t)KV_BF16})
      for (size_t off : {0, 3}) {
        const size_t n = all.size() - off;
        std::vector<float> dst(n + 1, 12345.0f);
        kv_load(fmt, dst.data(), all.data() + off, n);
        assert_true(dst[n] == 12345.0f);
        for (size_t i = 0; i < n; ++i) {
          const uint16_t h = all[off + i];
          const float want = fmt == KV_F16 ? f16_to_f32(h) : bf16_to_f32(h);
          const bool ok = isnan(want) ? isnan(dst[i]) && signbit(dst[i]) == signbit(want)
                                      : f32_bits(dst[i]) == f32_bits(want);
          if (!ok) {
            print_error("kv_load fmt %u isa %s [%zu] 0x%04x: got 0x%08x want 0x%08x\n", fmt, cpu_isa_name(isa), i, h,
                        f32_bits(dst[i]), f32_bits(want));
            fail();
          }
        }
      }
    std::vector<float> src(37), back(38, -1.0f);
    for (size_t i = 0; i < src.size(); ++i) src[i] = f32_from_bits(0x7fc00001u + (uint32_t)i * 0x01234567u);
    kv_load(KV_F32, back.data(), src.data(), src.size());
    assert_memory_equal(back.data(), src.data(), src.size() * 4);
    assert_true(back[37] == -1.0f);
  }
  cpu_isa_set(cpu_isa_detect());
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rmsnorm),
      cmocka_unit_test(test_rope),
      cmocka_unit_test(test_swiglu),
      cmocka_unit_test(test_kv_store),
      cmocka_unit_test(test_kv_load),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
