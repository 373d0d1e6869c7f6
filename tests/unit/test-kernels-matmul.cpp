// Tests of matmul and dequantize_row at every ISA level and weight type,
// against a double-precision product computed here from the raw encoding.
#include <string.h>

#include "test-kernels-util.h"

using namespace kvrt_k;

namespace {

struct Weights {
  uint32_t type;
  size_t k, rows;
  std::vector<uint8_t> bytes;
  std::vector<double> value;  // rows * k decoded values, independent of the kernels
};

// Fills W with random weights and records their exact values.
Weights make_weights(uint32_t type, size_t k, size_t rows, kt::Rng& rng) {
  Weights w{type, k, rows, {}, {}};
  size_t rb = weight_row_bytes(type, k);
  w.bytes.resize(rb * rows);
  w.value.resize(k * rows);
  for (size_t r = 0; r < rows; ++r) {
    uint8_t* row = w.bytes.data() + r * rb;
    if (type == W_Q8_0) {
      for (size_t b = 0; b < k / 32; ++b) {
        uint8_t* blk = row + b * 34;
        uint16_t d = f32_to_f16(rng.uni(0.001f, 0.05f));
        memcpy(blk, &d, 2);
        double dv = kt::half_value_ref(d);
        for (int i = 0; i < 32; ++i) {
          int8_t q = (int8_t)((int)rng.below(255) - 127);
          blk[2 + i] = (uint8_t)q;
          w.value[r * k + b * 32 + i] = dv * q;
        }
      }
      continue;
    }
    for (size_t j = 0; j < k; ++j) {
      float f = rng.uni(-1.0f, 1.0f);
      if (type == W_F32) {
        memcpy(row + 4 * j, &f, 4);
        w.value[r * k + j] = f;
      } else if (type == W_F16) {
        uint16_t h = f32_to_f16(f);
        memcpy(row + 2 * j, &h, 2);
        w.value[r * k + j] = kt::half_value_ref(h);
      } else {
        uint32_t bits = f32_bits(f) & 0xffff0000u;  // truncate: an exact bf16
        uint16_t h = (uint16_t)(bits >> 16);
        memcpy(row + 2 * j, &h, 2);
        w.value[r * k + j] = (double)f32_from_bits(bits);
      }
    }
  }
  return w;
}

const char* type_name(uint32_t t) {
  return t == W_F32 ? "f32" : t == W_F16 ? "f16" : t == W_BF16 ? "bf16" : "q8_0";
}

void run_case(const Weights& w, size_t r0, size_t r1, size_t m_rows, kt::Rng& rng) {
  const size_t k = w.k;
  const size_t ldx = k + 3, ldy = w.rows + 5;  // strides wider than the data
  std::vector<float> x(m_rows * ldx);
  for (float& v : x) v = rng.uni(-1.0f, 1.0f);
  std::vector<float> scratch(matmul_scratch_floats(k));
  const float sentinel = 12345.0f;
  for (CpuIsa isa : kt::isa_levels()) {
    cpu_isa_set(isa);
    std::vector<float> y(m_rows * ldy, sentinel);
    matmul(w.type, w.bytes.data(), k, r0, r1, x.data(), ldx, m_rows, y.data(), ldy, scratch.data());
    char ctx[160];
    snprintf(ctx, sizeof ctx, "isa %s type %s k %zu rows [%zu,%zu) M %zu", cpu_isa_name(isa),
             type_name(w.type), k, r0, r1, m_rows);
    for (size_t m = 0; m < m_rows; ++m) {
      for (size_t r = 0; r < ldy; ++r) {
        float got = y[m * ldy + r];
        if (r < r0 || r >= r1) {
          if (got != sentinel) {
            print_error("wrote outside rows: y[%zu][%zu] (%s)\n", m, r, ctx);
            fail();
          }
          continue;
        }
        double want = 0, mag = 0;
        for (size_t j = 0; j < k; ++j) {
          double t = (double)x[m * ldx + j] * w.value[r * k + j];
          want += t;
          mag += fabs(t);
        }
        // Float accumulation: relative to the sum of |terms|.
        kt::check_close(got, want, 1e-5 * mag + 1e-30, "y", m * ldy + r, ctx);
      }
    }
  }
  cpu_isa_set(cpu_isa_detect());
}

void sweep(uint32_t type, const std::vector<size_t>& ks) {
  kt::Rng rng(100 + type);
  for (size_t k : ks) {
    const size_t rows = 40;
    Weights w = make_weights(type, k, rows, rng);
    // Ranges of fewer than 16 rows, and of one or two 16-row panels of the
    // AVX2 prefill path with and without rows left over.
    const size_t ranges[][2] = {{0, 13}, {3, 40}, {1, 2}, {5, 12}, {2, 10}, {2, 34}};
    // Row counts hitting every tile height and remainder of each ISA's
    // prefill blocking (6 and 8 rows for AVX-512; 3 and 4 for AVX2's
    // dot-product tile, 6 for its panel blocks from 16 rows on).
    const size_t ms[] = {1, 2, 3, 6, 7, 13, 16, 17, 23, 64};
    for (auto& rr : ranges)
      for (size_t m : ms) {
        if (k >= 2048 && m > 3 && rr[0] != 3) continue;  // keep the run short
        run_case(w, rr[0], rr[1], m, rng);
      }
  }
}

const std::vector<size_t> kFloatKs = {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 96, 100, 255, 256, 1000, 1023, 4095, 4096};

void test_matmul_f32(void** s) { (void)s; sweep(W_F32, kFloatKs); }
void test_matmul_f16(void** s) { (void)s; sweep(W_F16, kFloatKs); }
void test_matmul_bf16(void** s) { (void)s; sweep(W_BF16, kFloatKs); }
void test_matmul_q8_0(void** s) { (void)s; sweep(W_Q8_0, {32, 64, 96, 160, 256, 1024, 4096}); }

void test_dequantize_row(void** state) {
  (void)state;
  kt::Rng rng(7);
  for (uint32_t type : {W_F32, W_F16, W_BF16, W_Q8_0}) {
    const size_t k = 96, rows = 5;
    Weights w = make_weights(type, k, rows, rng);
    std::vector<float> out(k);
    for (size_t r = 0; r < rows; ++r) {
      dequantize_row(type, w.bytes.data(), k, r, out.data());
      for (size_t j = 0; j < k; ++j) assert_true((double)out[j] == w.value[r * k + j]);
    }
  }
}

void test_isa_set(void** state) {
  (void)state;
  assert_int_equal((int)cpu_isa_set(CpuIsa::scalar), (int)CpuIsa::scalar);
  assert_int_equal((int)cpu_isa(), (int)CpuIsa::scalar);
  CpuIsa top = cpu_isa_set(CpuIsa::avx512);
  assert_true((int)top <= (int)cpu_isa_detect());
  assert_int_equal((int)cpu_isa(), (int)top);
  assert_string_equal(cpu_isa_name(CpuIsa::avx2), "avx2");
#if defined(__x86_64__)
  // A CPU with the AVX-512 subsets the kernels are built for must get them,
  // or their tests here would silently not run.
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    assert_int_equal((int)cpu_isa_detect(), (int)CpuIsa::avx512);
#endif
  cpu_isa_set(cpu_isa_detect());
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_isa_set),        cmocka_unit_test(test_dequantize_row),
      cmocka_unit_test(test_matmul_f32),     cmocka_unit_test(test_matmul_f16),
      cmocka_unit_test(test_matmul_bf16),    cmocka_unit_test(test_matmul_q8_0),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
