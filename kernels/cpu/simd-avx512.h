// Small AVX-512 helpers shared by the AVX-512 kernel files (a transposed
// horizontal sum, a vector exp, tail masks); internal to kernels/cpu, as
// simd-avx2.h is for AVX2. Include only from files compiled for AVX-512.
#pragma once

#include <immintrin.h>
#include <stdint.h>

namespace kvrt_k {
namespace avx512_simd {

// Lane i of the result = sum of the 16 lanes of the i-th argument.
inline __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  auto half = [](__m512 v) {
    return _mm256_add_ps(_mm512_castps512_ps256(v),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  };
  __m256 ab = _mm256_hadd_ps(half(a), half(b)), cd = _mm256_hadd_ps(half(c), half(d));
  __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// e^x for x <= 0: degree-6 polynomial after a reduction by ln 2 (as the AVX2
// version), scaled by 2^k with vscalefps; x < -87 (and -inf) gives 0 (the
// lanes are zeroed at the end, whatever the polynomial made of them).
inline __m512 exp_neg(__m512 x) {
  const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 y = _mm512_set1_ps(1.0f / 720);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 120));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 24));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 6));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.5f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps((__mmask16)~under, y, k);
}

// The first min(left, 16) lanes.
inline __mmask16 tail_mask(uint32_t left) {
  return (__mmask16)(left >= 16 ? 0xffffu : (1u << left) - 1);
}

}  // namespace avx512_simd
}  // namespace kvrt_k
