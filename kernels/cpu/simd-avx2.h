// Small AVX2 helpers shared by the AVX2 kernel files (horizontal sums, a
// vector exp, loads of 16/32-bit float formats); internal to kernels/cpu.
#pragma once

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "../common/fp16.h"
#include "../common/weight-types.h"

namespace kvrt_k {
namespace avx2 {
namespace simd {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Eight horizontal sums at once: lane i = the sum of v[i]'s lanes (a
// transposing tree: 21 shuffles and adds, where eight hsum() take 48).
__attribute__((always_inline)) inline __m256 hsum8(const __m256* v) {
  __m256 c[4], d[2];
  for (int p = 0; p < 4; ++p)  // even lanes: v[2p]'s partial sums, odd: v[2p + 1]'s
    c[p] = _mm256_add_ps(_mm256_unpacklo_ps(v[2 * p], v[2 * p + 1]),
                         _mm256_unpackhi_ps(v[2 * p], v[2 * p + 1]));
  for (int q = 0; q < 2; ++q)  // lane i of each half: v[4q + i]'s
    d[q] = _mm256_add_ps(_mm256_shuffle_ps(c[2 * q], c[2 * q + 1], 0x44),
                         _mm256_shuffle_ps(c[2 * q], c[2 * q + 1], 0xEE));
  return _mm256_add_ps(_mm256_permute2f128_ps(d[0], d[1], 0x20),
                       _mm256_permute2f128_ps(d[0], d[1], 0x31));
}

// v[i] lane j -> v[j] lane i (an 8 x 8 transpose in 24 shuffles).
inline void transpose8(__m256* v) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
  }
  for (int h = 0; h < 8; h += 4) {  // rows 0..3, then 4..7
    u[h] = _mm256_shuffle_ps(t[h], t[h + 2], 0x44);          // columns 0 | 4
    u[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], 0xEE);      // 1 | 5
    u[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0x44);  // 2 | 6
    u[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0xEE);  // 3 | 7
  }
  for (int j = 0; j < 4; ++j) {
    v[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    v[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// e^x with about 1e-7 relative error (Cephes-style polynomial after a
// reduction by ln 2). Inputs below ln(FLT_MIN) give exactly 0, so masked
// scores (-inf) vanish (whatever the polynomial made of those lanes, they
// are zeroed at the end); inputs above 88 and NaN give e^88.
inline __m256 exp_ps(__m256 x) {
  __m256 zero_mask = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_LT_OQ);
  x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 res = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(zero_mask, res);
}

// Loads 8 elements of a 16/32-bit float format as f32.
template <uint32_t FMT>
inline __m256 load8(const uint8_t* p) {
  if constexpr (FMT == W_F32) {
    return _mm256_loadu_ps((const float*)p);
  } else if constexpr (FMT == W_F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
  } else {
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
  }
}

template <uint32_t FMT>
inline float load1(const uint8_t* p) {
  if constexpr (FMT == W_F32) {
    float f;
    memcpy(&f, p, 4);
    return f;
  } else {
    uint16_t h;
    memcpy(&h, p, 2);
    return FMT == W_F16 ? f16_to_f32(h) : bf16_to_f32(h);
  }
}

constexpr size_t elem_bytes(uint32_t fmt) { return fmt == W_F32 ? 4 : 2; }

}  // namespace simd
}  // namespace avx2
}  // namespace kvrt_k
