// Small AVX-512 helpers shared by the AVX-512 kernel files (a transposed
// horizontal sum, a vector exp, tail masks); internal to kernels/cpu, as
// simd-avx2.h is for AVX2. Include only from files compiled for AVX-512.
#pragma once

#include <immintrin.h>
#include <stdint.h>

namespace kvrt_k {
namespace avx512_simd {

// Lane i of the result is the sum of v[i]'s 16 lanes: sixteen horizontal
// sums in one transposed reduction (pairs of vectors, then pairs of pairs,
// then 128-bit lanes).
inline __m512 hsum16(const __m512* v) {
  __m512 x[8];  // x[k]: per 128-bit lane, halves of vectors 2k and 2k + 1 interleaved
  for (int k = 0; k < 8; ++k)
    x[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]),
                         _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
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
  return _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], 0x88),
                       _mm512_shuffle_f32x4(z[0], z[1], 0xdd));
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
