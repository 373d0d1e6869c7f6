// Helpers shared by the kernel tests: CMocka includes, a seeded RNG, the list
// of ISA levels this CPU can run, and error-budget checks.
#pragma once

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

extern "C" {
#include <cmocka.h>
}

#include <vector>

#include "kernels/common/fp16.h"
#include "kernels/cpu/cpu-kernels.h"

namespace kt {

// xorshift64*: deterministic, so a failure reproduces.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  uint32_t u32() { return (uint32_t)(next() >> 32); }
  // Uniform in [lo, hi).
  float uni(float lo, float hi) { return lo + (hi - lo) * (float)((next() >> 40) * (1.0 / 16777216.0)); }
  uint32_t below(uint32_t n) { return (uint32_t)((next() >> 32) % n); }
};

// A half's value from its definition (not from the code under test).
inline double half_value_ref(uint16_t h) {
  int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  double v = e == 0 ? ldexp((double)m, -24) : ldexp((double)(1024 + m), e - 25);
  if (e == 31) v = m ? NAN : INFINITY;
  return (h & 0x8000) ? -v : v;
}

// Every level the CPU supports, scalar first.
inline std::vector<kvrt_k::CpuIsa> isa_levels() {
  std::vector<kvrt_k::CpuIsa> v;
  for (int i = 0; i <= (int)kvrt_k::cpu_isa_detect(); ++i) {
    kvrt_k::CpuIsa got = kvrt_k::cpu_isa_set((kvrt_k::CpuIsa)i);
    if ((int)got == i) v.push_back(got);
  }
  kvrt_k::cpu_isa_set(kvrt_k::cpu_isa_detect());
  return v;
}

// Fails the test with a message naming what differed and by how much.
inline void check_close(double got, double want, double tol, const char* what, size_t idx,
                        const char* ctx) {
  double err = fabs(got - want);
  if (!(err <= tol)) {
    print_error("%s[%zu] (%s): got %.9g want %.9g |err| %.3g > tol %.3g\n", what, idx, ctx, got,
                want, err, tol);
    fail();
  }
}

}  // namespace kt
