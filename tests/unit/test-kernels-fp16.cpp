// Tests of the f16/bf16 <-> f32 conversions: every half value, every rounding
// tie, and random floats against an independent nearest-value search.
#include "test-kernels-util.h"

using namespace kvrt_k;

namespace {

bool half_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }

// A half's value from its definition, in double.
double half_value(uint16_t h) {
  int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  double v = e == 0 ? ldexp((double)m, -24) : ldexp((double)(1024 + m), e - 25);
  if (e == 31) v = m ? NAN : INFINITY;
  return (h & 0x8000) ? -v : v;
}

// Round-to-nearest-even by searching the ordered finite halves, in double.
uint16_t ref_f32_to_f16(float f) {
  if (isnan(f)) return 0x7e00;
  uint16_t sign = signbit(f) ? 0x8000 : 0;
  double a = fabs((double)f);
  if (a >= 65520.0) return sign | 0x7c00;
  uint16_t lo = 0, hi = 0x7bff;  // largest h with value(h) <= a
  while (lo < hi) {
    uint16_t mid = (uint16_t)((lo + hi + 1) / 2);
    if (half_value(mid) <= a) lo = mid; else hi = (uint16_t)(mid - 1);
  }
  if (lo == 0x7bff) return sign | lo;
  double d0 = a - half_value(lo), d1 = half_value((uint16_t)(lo + 1)) - a;
  uint16_t r = d0 < d1 ? lo : d1 < d0 ? (uint16_t)(lo + 1) : ((lo & 1) ? (uint16_t)(lo + 1) : lo);
  return sign | r;
}

uint16_t ref_f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  uint32_t lo = x & 0xffff0000u;
  // From halfway above the largest finite bf16 (a tie, odd mantissa) up: inf.
  if ((x & 0x7fffffffu) >= 0x7f7f8000u) return (uint16_t)(((x >> 16) & 0x8000u) | 0x7f80u);
  double a = fabs((double)f);
  double v0 = fabs((double)f32_from_bits(lo)), v1 = fabs((double)f32_from_bits(lo + 0x10000u));
  double d0 = a - v0, d1 = v1 - a;
  uint32_t r = d0 < d1 ? lo : d1 < d0 ? lo + 0x10000u : (((lo >> 16) & 1) ? lo + 0x10000u : lo);
  return (uint16_t)(r >> 16);
}

void test_f16_all_halves(void** state) {
  (void)state;
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = f16_to_f32((uint16_t)h);
    if (half_is_nan((uint16_t)h)) {
      assert_true(isnan(f));
      assert_true(half_is_nan(f32_to_f16(f)));
      continue;
    }
    if ((double)f != half_value((uint16_t)h)) {
      print_error("half 0x%04x decodes to %.10g, want %.10g\n", h, f, half_value((uint16_t)h));
      fail();
    }
    assert_int_equal(signbit(f) != 0, (h & 0x8000) != 0);
    uint16_t back = f32_to_f16(f);
    if (back != h) {
      print_error("half 0x%04x -> %g -> 0x%04x\n", h, f, back);
      fail();
    }
  }
}

// Midpoints between neighbouring halves are the ties; one ulp either side
// must round away from the tie.
void test_f16_ties(void** state) {
  (void)state;
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    for (int sgn = 0; sgn < 2; ++sgn) {
      double mid = (half_value((uint16_t)h) + (h == 0x7bff ? 65536.0 : half_value((uint16_t)(h + 1)))) / 2;
      float fm = (float)mid;
      assert_true((double)fm == mid);  // exactly representable
      float cases[3] = {fm, nextafterf(fm, 0.0f), nextafterf(fm, INFINITY)};
      for (float c : cases) {
        float v = sgn ? -c : c;
        uint16_t got = f32_to_f16(v), want = ref_f32_to_f16(v);
        if (got != want) {
          print_error("f32 %.10g (0x%08x): got 0x%04x want 0x%04x\n", v, f32_bits(v), got, want);
          fail();
        }
      }
    }
  }
}

void test_f16_random_and_special(void** state) {
  (void)state;
  kt::Rng rng(1);
  std::vector<float> vals = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f, 65519.99f,
                             65520.0f, 1e-8f, 2.9802322e-8f, 2.9802326e-8f, 5.9604645e-8f,
                             6.1035156e-5f, 6.1035152e-5f, 1e30f, 1.4e-45f, -3.0e38f};
  for (int i = 0; i < 2000000; ++i) {
    uint32_t b = rng.u32();
    // Half the samples are drawn near the half range, where rounding matters.
    if (i & 1) b = (b & 0x807fffffu) | ((uint32_t)(96 + rng.below(48)) << 23);
    vals.push_back(f32_from_bits(b));
  }
  for (float v : vals) {
    uint16_t got = f32_to_f16(v);
    if (isnan(v)) {
      assert_true(half_is_nan(got));
      continue;
    }
    uint16_t want = ref_f32_to_f16(v);
    if (got != want) {
      print_error("f32 %.10g (0x%08x): got 0x%04x want 0x%04x\n", v, f32_bits(v), got, want);
      fail();
    }
  }
}

void test_bf16(void** state) {
  (void)state;
  for (uint32_t b = 0; b < 65536; ++b) {
    float f = bf16_to_f32((uint16_t)b);
    assert_true(f32_bits(f) == b << 16);
    uint16_t back = f32_to_bf16(f);
    if (isnan(f)) assert_true((back & 0x7f80) == 0x7f80 && (back & 0x7f) != 0);
    else assert_int_equal(back, b);
  }
  // A NaN whose payload lives only in the low 16 bits must stay NaN.
  assert_true(isnan(bf16_to_f32(f32_to_bf16(f32_from_bits(0x7f800001u)))));
  assert_true(isnan(bf16_to_f32(f32_to_bf16(f32_from_bits(0xff800100u)))));
  kt::Rng rng(2);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t x = rng.u32();
    if (i % 4 == 0) x = (x & 0xffff0000u) | 0x8000u;  // exact ties
    float f = f32_from_bits(x);
    if (isnan(f)) continue;
    uint16_t got = f32_to_bf16(f), want = ref_f32_to_bf16(f);
    if (got != want) {
      print_error("f32 0x%08x: got 0x%04x want 0x%04x\n", x, got, want);
      fail();
    }
  }
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_f16_all_halves),
      cmocka_unit_test(test_f16_ties),
      cmocka_unit_test(test_f16_random_and_special),
      cmocka_unit_test(test_bf16),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
