// AVX2 + FMA + F16C inner loops of attention over q8/q4 blocks: key scores
// against the scale-folded query and value accumulation with on-the-fly
// dequantization. Channel tails not a multiple of 8 use scalar code.
#include <immintrin.h>

#include "../common/fp16.h"
#include "../common/kv-quant.h"
#include "attention-quant.h"

namespace kvrt_k {

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Sums of four vectors, lane i of the result = hsum(v_i).
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
  __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// 8 signed bytes -> 8 floats.
inline __m256 load_i8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
// 4 bytes of nibbles (channels 2j = low, 2j+1 = high) -> 8 floats in order.
inline __m256 load_u4(const uint8_t* p) {
  int32_t w;
  __builtin_memcpy(&w, p, 4);
  const __m128i x = _mm_cvtsi32_si128(w), m = _mm_set1_epi8(0x0f);
  const __m128i lo = _mm_and_si128(x, m), hi = _mm_and_si128(_mm_srli_epi16(x, 4), m);
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
}
inline __m256 load_h(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
}

template <typename Load, typename Tail>
inline void scores(uint32_t n, uint32_t hd, const float* qs, float bias, float* s, Load load,
                   Tail tail) {
  const uint32_t h8 = hd & ~7u;
  uint32_t t = 0;
  if (h8 == hd && hd >= 16) {
    // Four rows at a time share each query load and one reduction.
    for (; t + 4 <= n; t += 4) {
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (uint32_t c = 0; c < hd; c += 8) {
        const __m256 q = _mm256_loadu_ps(qs + c);
        a0 = _mm256_fmadd_ps(q, load(t, c), a0);
        a1 = _mm256_fmadd_ps(q, load(t + 1, c), a1);
        a2 = _mm256_fmadd_ps(q, load(t + 2, c), a2);
        a3 = _mm256_fmadd_ps(q, load(t + 3, c), a3);
      }
      _mm_storeu_ps(s + t, _mm_add_ps(hsum4(a0, a1, a2, a3), _mm_set1_ps(bias)));
    }
  }
  for (; t < n; ++t) {
    __m256 a = _mm256_setzero_ps();
    for (uint32_t c = 0; c < h8; c += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(qs + c), load(t, c), a);
    float sum = hsum(a);
    for (uint32_t c = h8; c < hd; ++c) sum += qs[c] * tail(t, c);
    s[t] = sum + bias;
  }
}

void k_i8(const int8_t* codes, size_t rb, uint32_t n, uint32_t hd, const float* qs, float bias,
          float* s) {
  scores(
      n, hd, qs, bias, s, [&](uint32_t t, uint32_t c) { return load_i8(codes + t * rb + c); },
      [&](uint32_t t, uint32_t c) { return (float)codes[t * rb + c]; });
}

void k_u4(const uint8_t* codes, size_t rb, uint32_t n, uint32_t hd, const float* qs, float bias,
          float* s) {
  scores(
      n, hd, qs, bias, s, [&](uint32_t t, uint32_t c) { return load_u4(codes + t * rb + c / 2); },
      [&](uint32_t t, uint32_t c) { return (float)kvq_get4(codes + t * rb, c); });
}

void k_f16(const uint16_t* k, uint32_t n, uint32_t hd, const float* q, float* s) {
  scores(
      n, hd, q, 0.0f, s, [&](uint32_t t, uint32_t c) { return load_h(k + (size_t)t * hd + c); },
      [&](uint32_t t, uint32_t c) { return f16_to_f32(k[(size_t)t * hd + c]); });
}

void v_i8(const int8_t* codes, size_t rb, const uint16_t* scales, uint32_t ng, uint32_t n,
          uint32_t hd, const float* p, float* acc) {
  const uint32_t gs = kvq_group(hd);
  for (uint32_t t = 0; t < n; ++t) {
    const int8_t* r = codes + t * rb;
    for (uint32_t g = 0; g < ng; ++g) {
      const float w = p[t] * f16_to_f32(scales[t * ng + g]);
      const __m256 wv = _mm256_set1_ps(w);
      const uint32_t c0 = g * gs, c1 = c0 + gs < hd ? c0 + gs : hd;
      uint32_t c = c0;
      for (; c + 8 <= c1; c += 8)
        _mm256_storeu_ps(acc + c, _mm256_fmadd_ps(wv, load_i8(r + c), _mm256_loadu_ps(acc + c)));
      for (; c < c1; ++c) acc[c] += w * (float)r[c];
    }
  }
}

void v_u4(const uint8_t* codes, size_t rb, const uint16_t* scales, const uint16_t* mins,
          uint32_t ng, uint32_t n, uint32_t hd, const float* p, float* acc) {
  const uint32_t gs = kvq_group(hd);
  for (uint32_t t = 0; t < n; ++t) {
    const uint8_t* r = codes + t * rb;
    for (uint32_t g = 0; g < ng; ++g) {
      const float w = p[t] * f16_to_f32(scales[t * ng + g]);
      const float b = p[t] * f16_to_f32(mins[t * ng + g]);
      const __m256 wv = _mm256_set1_ps(w), bv = _mm256_set1_ps(b);
      const uint32_t c0 = g * gs, c1 = c0 + gs < hd ? c0 + gs : hd;
      uint32_t c = c0;
      // Groups start at multiples of 32 (or 0), so c is even: whole bytes.
      for (; c + 8 <= c1; c += 8)
        _mm256_storeu_ps(acc + c, _mm256_add_ps(_mm256_fmadd_ps(wv, load_u4(r + c / 2), bv),
                                                _mm256_loadu_ps(acc + c)));
      for (; c < c1; ++c) acc[c] += w * (float)kvq_get4(r, c) + b;
    }
  }
}

void v_f16(const uint16_t* v, uint32_t n, uint32_t hd, const float* p, float* acc) {
  const uint32_t h8 = hd & ~7u;
  for (uint32_t t = 0; t < n; ++t) {
    const uint16_t* r = v + (size_t)t * hd;
    const __m256 pv = _mm256_set1_ps(p[t]);
    for (uint32_t c = 0; c < h8; c += 8)
      _mm256_storeu_ps(acc + c, _mm256_fmadd_ps(pv, load_h(r + c), _mm256_loadu_ps(acc + c)));
    for (uint32_t c = h8; c < hd; ++c) acc[c] += p[t] * f16_to_f32(r[c]);
  }
}

const QAttnOps kAvx2Ops = {k_i8, k_u4, k_f16, v_i8, v_u4, v_f16};

}  // namespace

const QAttnOps* qattn_ops_avx2() { return &kAvx2Ops; }

}  // namespace kvrt_k
