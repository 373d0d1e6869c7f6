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

// Lane 4 i + u of the result is the sum of v[i][u]'s 16 lanes: sixteen
// horizontal sums in one transposed reduction (pairs of vectors, then pairs
// of pairs, then 128-bit lanes).
inline __m512 hsum16(const __m512 (&v0)[4], const __m512 (&v1)[4], const __m512 (&v2)[4],
                     const __m512 (&v3)[4]) {
  const __m512* v[4] = {v0, v1, v2, v3};
  __m512 x[8];  // x[k]: per 128-bit lane, halves of vectors 2k and 2k + 1 interleaved
  for (int k = 0; k < 8; ++k) {
    const __m512 a = v[k / 2][2 * (k % 2)], b = v[k / 2][2 * (k % 2) + 1];
    x[k] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  }
  __m512 y[4];  // y[k]: per 128-bit lane, vectors 4k..4k+3 summed over that lane
  for (int k = 0; k < 4; ++k) {
    const __m512d a = _mm512_castps_pd(x[2 * k]), b = _mm512_castps_pd(x[2 * k + 1]);
    y[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  __m512 z[2];  // z[k]: 128-bit lanes summed in pairs
  for (int k = 0; k < 2; ++k)
    z[k] = _mm512_add_ps(_mm512_shuffle_f32x4(y[2 * k], y[2 * k + 1], 0x88),
                         _mm512_shuffle_f32x4(y[2 * k], y[2 * k + 1], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], 0x88), _mm512_shuffle_f32x4(z[0], z[1], 0xdd));
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
