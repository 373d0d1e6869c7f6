// AVX2 + FMA + F16C inner loops of attention over q8/q4 blocks: key scores
// against the scale-folded query, value accumulation with on-the-fly
// dequantization and the query fold, for the shapes the rounded-query step
// (attention-quant-int-avx2.cpp) does not take and for the f16 tail block.
// Channel tails not a multiple of 8 use scalar code.
#include <immintrin.h>
#include <math.h>


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

constexpr uint32_t C = kQAttnChunk;
constexpr uint32_t kMaxNg = kQAttnGroupChunk;

// K query heads (1..4) at once: each row of codes is converted once and
// multiplied with every head's folded query.
template <int K, typename Load, typename Tail>
inline void scores_k(uint32_t n, uint32_t hd, const float* qs, const float* bias, float* s,
                     Load load, Tail tail) {
  const uint32_t h8 = hd & ~7u;
  for (uint32_t t = 0; t < n; ++t) {
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    for (uint32_t c = 0; c < h8; c += 8) {
      const __m256 x = load(t, c);
      for (int g = 0; g < K; ++g) a[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qs + g * hd + c), x, a[g]);
    }
    float sum[4];
    _mm_storeu_ps(sum, hsum4(a[0], a[1], a[2], a[3]));
    for (int g = 0; g < K; ++g) {
      float v = sum[g] + bias[g];
      for (uint32_t c = h8; c < hd; ++c) v += qs[g * hd + c] * tail(t, c);
      s[g * C + t] = v;
    }
  }
}

template <typename Load, typename Tail>
inline void scores(uint32_t n, uint32_t hd, const float* qs, const float* bias, uint32_t ng,
                   float* s, Load load, Tail tail) {
  for (uint32_t g = 0; g < ng; g += 4) {
    const float* q = qs + (size_t)g * hd;
    switch (ng - g) {
      case 1: scores_k<1>(n, hd, q, bias + g, s + g * C, load, tail); break;
      case 2: scores_k<2>(n, hd, q, bias + g, s + g * C, load, tail); break;
      case 3: scores_k<3>(n, hd, q, bias + g, s + g * C, load, tail); break;
      default: scores_k<4>(n, hd, q, bias + g, s + g * C, load, tail); break;
    }
  }
}

void k_i8(const int8_t* codes, size_t rb, uint32_t n, uint32_t hd, const float* qs,
          const float* bias, uint32_t ng, float* s) {
  scores(
      n, hd, qs, bias, ng, s, [&](uint32_t t, uint32_t c) { return load_i8(codes + t * rb + c); },
      [&](uint32_t t, uint32_t c) { return (float)codes[t * rb + c]; });
}

void k_u4(const uint8_t* codes, size_t rb, uint32_t n, uint32_t hd, const float* qs,
          const float* bias, uint32_t ng, float* s) {
  scores(
      n, hd, qs, bias, ng, s,
      [&](uint32_t t, uint32_t c) { return load_u4(codes + t * rb + c / 2); },
      [&](uint32_t t, uint32_t c) { return (float)kvq_get4(codes + t * rb, c); });
}

void k_f16(const uint16_t* k, uint32_t n, uint32_t hd, const float* q, uint32_t ng, float* s) {
  const float zero[kMaxNg] = {};  // no bias: f16 keys are not folded
  scores(
      n, hd, q, zero, ng, s, [&](uint32_t t, uint32_t c) { return load_h(k + (size_t)t * hd + c); },
      [&](uint32_t t, uint32_t c) { return f16_to_f32(k[(size_t)t * hd + c]); });
}

// acc[g][c0..c1) += sum_t w[g][t] * x(t, c) for K heads (1..4); channels in
// steps of 8 keep the K accumulators in registers across all n tokens.
template <int K, typename Load, typename Tail>
inline void accum_k(uint32_t n, uint32_t hd, uint32_t c0, uint32_t c1, const float* w, float* acc,
                    Load load, Tail tail) {
  uint32_t c = c0;
  for (; c + 8 <= c1; c += 8) {
    __m256 a[4];
    for (int g = 0; g < K; ++g) a[g] = _mm256_loadu_ps(acc + g * hd + c);
    for (uint32_t t = 0; t < n; ++t) {
      const __m256 x = load(t, c);
      for (int g = 0; g < K; ++g) a[g] = _mm256_fmadd_ps(_mm256_set1_ps(w[g * C + t]), x, a[g]);
    }
    for (int g = 0; g < K; ++g) _mm256_storeu_ps(acc + g * hd + c, a[g]);
  }
  for (; c < c1; ++c)
    for (int g = 0; g < K; ++g) {
      float v = 0.0f;
      for (uint32_t t = 0; t < n; ++t) v += w[g * C + t] * tail(t, c);
      acc[g * hd + c] += v;
    }
}

template <typename Load, typename Tail>
inline void accum(uint32_t n, uint32_t hd, uint32_t c0, uint32_t c1, const float* w, uint32_t ng,
                  float* acc, Load load, Tail tail) {
  for (uint32_t g = 0; g < ng; g += 4) {
    float* a = acc + (size_t)g * hd;
    switch (ng - g) {
      case 1: accum_k<1>(n, hd, c0, c1, w + g * C, a, load, tail); break;
      case 2: accum_k<2>(n, hd, c0, c1, w + g * C, a, load, tail); break;
      case 3: accum_k<3>(n, hd, c0, c1, w + g * C, a, load, tail); break;
      default: accum_k<4>(n, hd, c0, c1, w + g * C, a, load, tail); break;
    }
  }
}

void v_i8(const int8_t* codes, size_t rb, const uint16_t* scales, uint32_t ngv, uint32_t n,
          uint32_t hd, const float* p, uint32_t ng, float* acc) {
  const uint32_t gs = kvq_group(hd);
  float w[kMaxNg * C];
  for (uint32_t v = 0; v < ngv; ++v) {
    for (uint32_t g = 0; g < ng; ++g)
      for (uint32_t t = 0; t < n; ++t) w[g * C + t] = p[g * C + t] * _cvtsh_ss(scales[t * ngv + v]);
    const uint32_t c0 = v * gs, c1 = c0 + gs < hd ? c0 + gs : hd;
    accum(
        n, hd, c0, c1, w, ng, acc, [&](uint32_t t, uint32_t c) { return load_i8(codes + t * rb + c); },
        [&](uint32_t t, uint32_t c) { return (float)codes[t * rb + c]; });
  }
}

void v_u4(const uint8_t* codes, size_t rb, const uint16_t* scales, const uint16_t* mins,
          uint32_t ngv, uint32_t n, uint32_t hd, const float* p, uint32_t ng, float* acc) {
  const uint32_t gs = kvq_group(hd);
  float w[kMaxNg * C];
  for (uint32_t v = 0; v < ngv; ++v) {
    const uint32_t c0 = v * gs, c1 = c0 + gs < hd ? c0 + gs : hd;
    for (uint32_t g = 0; g < ng; ++g) {
      // The minimum adds the same sum_t p[t] min[t] to every channel of the group.
      float b = 0.0f;
      for (uint32_t t = 0; t < n; ++t) {
        w[g * C + t] = p[g * C + t] * _cvtsh_ss(scales[t * ngv + v]);
        b += p[g * C + t] * _cvtsh_ss(mins[t * ngv + v]);
      }
      for (uint32_t c = c0; c < c1; ++c) acc[g * hd + c] += b;
    }
    // Groups start at multiples of 32 (or 0), so c is even: whole bytes.
    accum(
        n, hd, c0, c1, w, ng, acc,
        [&](uint32_t t, uint32_t c) { return load_u4(codes + t * rb + c / 2); },
        [&](uint32_t t, uint32_t c) { return (float)kvq_get4(codes + t * rb, c); });
  }
}

void v_f16(const uint16_t* v, uint32_t n, uint32_t hd, const float* p, uint32_t ng, float* acc) {
  accum(
      n, hd, 0, hd, p, ng, acc, [&](uint32_t t, uint32_t c) { return load_h(v + (size_t)t * hd + c); },
      [&](uint32_t t, uint32_t c) { return f16_to_f32(v[(size_t)t * hd + c]); });
}

// e^x for x <= 0: 2^k e^r with r = x - k ln 2 in [-ln2/2, ln2/2] and a
// degree-6 Taylor polynomial (relative error below 2e-7); x < -87 gives 0.
inline __m256 exp_neg(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.0f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.4426950408889634f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln 2 split in a part exact in float and a small remainder.
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(1.428606765330187e-06f), r);
  __m256 y = _mm256_set1_ps(1.0f / 720);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 120));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 24));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 6));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.5f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

float exp_sum(const float* s, float m, uint32_t n, float* p) {
  const __m256 mv = _mm256_set1_ps(m);
  __m256 acc = _mm256_setzero_ps();
  uint32_t t = 0;
  for (; t + 8 <= n; t += 8) {
    const __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(s + t), mv));
    _mm256_storeu_ps(p + t, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum(acc);
  for (; t < n; ++t) {
    p[t] = __builtin_expf(s[t] - m);
    sum += p[t];
  }
  return sum;
}

void fold(const float* q, uint32_t ng, uint32_t hd, float scale, uint32_t k_format,
          const uint16_t* k_scales, float* qs, float* bias) {
  const uint32_t h8 = hd & ~7u;
  const __m256 sv = _mm256_set1_ps(scale);
  for (uint32_t g = 0; g < ng; ++g) {
    const float* qg = q + (size_t)g * hd;
    float* o = qs + (size_t)g * hd;
    __m256 b = _mm256_setzero_ps();
    for (uint32_t c = 0; c < h8; c += 8) {
      const __m256 x = _mm256_loadu_ps(qg + c);
      _mm256_storeu_ps(o + c, _mm256_mul_ps(_mm256_mul_ps(x, sv), load_h(k_scales + c)));
      if (k_format == kKvqQ4) b = _mm256_fmadd_ps(x, load_h(k_scales + hd + c), b);
    }
    float bsum = hsum(b);
    for (uint32_t c = h8; c < hd; ++c) {
      o[c] = qg[c] * scale * _cvtsh_ss(k_scales[c]);
      if (k_format == kKvqQ4) bsum += qg[c] * _cvtsh_ss(k_scales[hd + c]);
    }
    bias[g] = k_format == kKvqQ4 ? bsum * scale : 0.0f;
  }
}

// The rounded-query step (block_q) is in attention-quant-int-avx2.cpp.
const QAttnOps kAvx2Ops = {k_i8, k_u4, k_f16, v_i8, v_u4, v_f16, exp_sum, fold,
                           qattn_block_q_avx2, false, false};

}  // namespace

const QAttnOps* qattn_ops_avx2() { return &kAvx2Ops; }

}  // namespace kvrt_k
