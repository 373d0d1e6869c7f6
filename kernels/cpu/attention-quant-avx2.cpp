// AVX2 + FMA + F16C inner loops of attention over q8/q4 blocks: key scores
// against the scale-folded query, value accumulation with on-the-fly
// dequantization, the query fold and a fused per-block step. Channel tails
// not a multiple of 8 use scalar code.
#include <immintrin.h>
#include <math.h>

#include <type_traits>

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

void cvt_f16(const uint16_t* src, uint32_t n, float* dst) {
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_h(src + i));
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
}

// Fused step over one run of quantized rows: codes are converted to floats
// once into L1 scratch, then every head of the group reads them, with 2
// tokens (scores) or 16 channels (values) per pass so enough independent
// FMA chains are in flight to hide their latency.
constexpr uint32_t kFused = kQAttnFusedFloats;

// Keys: code values (q8: the int8; q4: the nibble) as floats; the scale and
// minimum are folded into the query and bias.
template <uint32_t F>
inline void keys_to_f32(const uint8_t* codes, size_t rb, uint32_t n, uint32_t hd, float* out) {
  for (uint32_t t = 0; t < n; ++t) {
    const uint8_t* r = codes + t * rb;
    float* o = out + (size_t)t * hd;
    for (uint32_t c = 0; c < hd; c += 32) {
      if constexpr (F == kKvqQ8) {
        for (int k = 0; k < 4; ++k)
          _mm256_storeu_ps(o + c + 8 * k, load_i8((const int8_t*)r + c + 8 * k));
      } else {
        const __m128i x = _mm_loadu_si128((const __m128i*)(r + c / 2)), m = _mm_set1_epi8(0x0f);
        const __m128i lo = _mm_and_si128(x, m), hi = _mm_and_si128(_mm_srli_epi16(x, 4), m);
        const __m128i a = _mm_unpacklo_epi8(lo, hi), b = _mm_unpackhi_epi8(lo, hi);
        _mm256_storeu_ps(o + c, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(a)));
        _mm256_storeu_ps(o + c + 8, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(a, a))));
        _mm256_storeu_ps(o + c + 16, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)));
        _mm256_storeu_ps(o + c + 24, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(b, b))));
      }
    }
  }
}

// Values fully dequantized (scale * code, q4: + minimum); groups are 32 wide.
template <uint32_t F>
inline void values_to_f32(const uint8_t* codes, size_t rb, const uint16_t* sc, const uint16_t* mn,
                          uint32_t ngv, uint32_t n, uint32_t hd, float* out) {
  for (uint32_t t = 0; t < n; ++t) {
    const uint8_t* r = codes + t * rb;
    float* o = out + (size_t)t * hd;
    for (uint32_t c = 0; c < hd; c += 32) {
      const __m256 s = _mm256_set1_ps(_cvtsh_ss(sc[t * ngv + c / 32]));
      if constexpr (F == kKvqQ8) {
        for (int k = 0; k < 4; ++k)
          _mm256_storeu_ps(o + c + 8 * k, _mm256_mul_ps(s, load_i8((const int8_t*)r + c + 8 * k)));
      } else {
        const __m256 mv = _mm256_set1_ps(_cvtsh_ss(mn[t * ngv + c / 32]));
        const __m128i x = _mm_loadu_si128((const __m128i*)(r + c / 2)), m = _mm_set1_epi8(0x0f);
        const __m128i lo = _mm_and_si128(x, m), hi = _mm_and_si128(_mm_srli_epi16(x, 4), m);
        const __m128i a = _mm_unpacklo_epi8(lo, hi), b = _mm_unpackhi_epi8(lo, hi);
        const __m128i q[4] = {a, _mm_unpackhi_epi64(a, a), b, _mm_unpackhi_epi64(b, b)};
        for (int k = 0; k < 4; ++k)
          _mm256_storeu_ps(o + c + 8 * k,
                           _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q[k])), s, mv));
      }
    }
  }
}

// s[g * C + t] = bias[g] + dot(qs[g], k[t]) for K heads, two tokens per pass.
template <int K>
inline void scores_f32(const float* k, uint32_t n, uint32_t hd, const float* qs, const float* bias,
                       float* s) {
  uint32_t t = 0;
  for (; t + 2 <= n; t += 2) {
    __m256 a[4], b[4];
    for (int g = 0; g < 4; ++g) a[g] = b[g] = _mm256_setzero_ps();
    const float* k0 = k + (size_t)t * hd;
    const float* k1 = k0 + hd;
    for (uint32_t c = 0; c < hd; c += 8) {
      const __m256 x0 = _mm256_loadu_ps(k0 + c), x1 = _mm256_loadu_ps(k1 + c);
      for (int g = 0; g < K; ++g) {
        const __m256 q = _mm256_loadu_ps(qs + g * hd + c);
        a[g] = _mm256_fmadd_ps(q, x0, a[g]);
        b[g] = _mm256_fmadd_ps(q, x1, b[g]);
      }
    }
    float sa[4], sb[4];
    _mm_storeu_ps(sa, hsum4(a[0], a[1], a[2], a[3]));
    _mm_storeu_ps(sb, hsum4(b[0], b[1], b[2], b[3]));
    for (int g = 0; g < K; ++g) {
      s[g * C + t] = sa[g] + bias[g];
      s[g * C + t + 1] = sb[g] + bias[g];
    }
  }
  if (t < n) {
    __m256 a[4];
    for (int g = 0; g < 4; ++g) a[g] = _mm256_setzero_ps();
    const float* k0 = k + (size_t)t * hd;
    for (uint32_t c = 0; c < hd; c += 8) {
      const __m256 x0 = _mm256_loadu_ps(k0 + c);
      for (int g = 0; g < K; ++g) a[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qs + g * hd + c), x0, a[g]);
    }
    float sa[4];
    _mm_storeu_ps(sa, hsum4(a[0], a[1], a[2], a[3]));
    for (int g = 0; g < K; ++g) s[g * C + t] = sa[g] + bias[g];
  }
}

// acc[g][c] += sum_t p[g * C + t] * v[t][c] for K heads, 16 channels per pass.
template <int K>
inline void accum_f32(const float* v, uint32_t n, uint32_t hd, const float* p, float* acc) {
  for (uint32_t c = 0; c < hd; c += 16) {
    __m256 a[4][2];
    for (int g = 0; g < K; ++g) {
      a[g][0] = _mm256_loadu_ps(acc + g * hd + c);
      a[g][1] = _mm256_loadu_ps(acc + g * hd + c + 8);
    }
    for (uint32_t t = 0; t < n; ++t) {
      const __m256 x0 = _mm256_loadu_ps(v + (size_t)t * hd + c);
      const __m256 x1 = _mm256_loadu_ps(v + (size_t)t * hd + c + 8);
      for (int g = 0; g < K; ++g) {
        const __m256 w = _mm256_broadcast_ss(p + g * C + t);
        a[g][0] = _mm256_fmadd_ps(w, x0, a[g][0]);
        a[g][1] = _mm256_fmadd_ps(w, x1, a[g][1]);
      }
    }
    for (int g = 0; g < K; ++g) {
      _mm256_storeu_ps(acc + g * hd + c, a[g][0]);
      _mm256_storeu_ps(acc + g * hd + c + 8, a[g][1]);
    }
  }
}

template <typename F>
inline void by_four(uint32_t ng, F f) {
  for (uint32_t g = 0; g < ng; g += 4) {
    switch (ng - g) {
      case 1: f(g, std::integral_constant<int, 1>{}); break;
      case 2: f(g, std::integral_constant<int, 2>{}); break;
      case 3: f(g, std::integral_constant<int, 3>{}); break;
      default: f(g, std::integral_constant<int, 4>{}); break;
    }
  }
}

template <uint32_t KF, uint32_t VF>
void block_t(const uint8_t* kcodes, size_t rbk, const uint8_t* vcodes, size_t rbv,
             const uint16_t* vsc, const uint16_t* vmin, uint32_t ngv, uint32_t n, uint32_t hd,
             const float* qs, const float* bias, uint32_t ng, float* m, float* l, float* acc) {
  alignas(32) float kf[kFused], vf[kFused], s[kMaxNg * C];
  keys_to_f32<KF>(kcodes, rbk, n, hd, kf);
  by_four(ng, [&](uint32_t g, auto k) {
    scores_f32<decltype(k)::value>(kf, n, hd, qs + (size_t)g * hd, bias + g, s + g * C);
  });
  const uint32_t n8 = n & ~7u;
  for (uint32_t g = 0; g < ng; ++g) {
    float* sg = s + g * C;
    __m256 mx8 = _mm256_set1_ps(m[g]);
    for (uint32_t t = 0; t < n8; t += 8) mx8 = _mm256_max_ps(mx8, _mm256_loadu_ps(sg + t));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx8), _mm256_extractf128_ps(mx8, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    float mx = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    for (uint32_t t = n8; t < n; ++t) mx = sg[t] > mx ? sg[t] : mx;
    if (mx > m[g]) {
      const float alpha = m[g] == -INFINITY ? 0.0f : __builtin_expf(m[g] - mx);
      const __m256 av = _mm256_set1_ps(alpha);
      float* ac = acc + (size_t)g * hd;
      for (uint32_t c = 0; c < hd; c += 8) _mm256_storeu_ps(ac + c, _mm256_mul_ps(av, _mm256_loadu_ps(ac + c)));
      l[g] *= alpha;
      m[g] = mx;
    }
    l[g] += exp_sum(sg, m[g], n, sg);  // weights overwrite the scores
  }
  values_to_f32<VF>(vcodes, rbv, vsc, vmin, ngv, n, hd, vf);
  by_four(ng, [&](uint32_t g, auto k) {
    accum_f32<decltype(k)::value>(vf, n, hd, s + g * C, acc + (size_t)g * hd);
  });
}

bool block(uint32_t kfmt, uint32_t vfmt, const uint8_t* kcodes, size_t rbk, const uint8_t* vcodes,
           size_t rbv, const uint16_t* vsc, const uint16_t* vmin, uint32_t ngv, uint32_t n,
           uint32_t hd, const float* qs, const float* bias, uint32_t ng, float* m, float* l,
           float* acc) {
  if (hd % 32 != 0 || (size_t)n * hd > kFused || n > C || ng > kMaxNg) return false;
  const bool k8 = kfmt == kKvqQ8, v8 = vfmt == kKvqQ8;
  auto f = k8 ? (v8 ? block_t<kKvqQ8, kKvqQ8> : block_t<kKvqQ8, kKvqQ4>)
              : (v8 ? block_t<kKvqQ4, kKvqQ8> : block_t<kKvqQ4, kKvqQ4>);
  f(kcodes, rbk, vcodes, rbv, vsc, vmin, ngv, n, hd, qs, bias, ng, m, l, acc);
  return true;
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
const QAttnOps kAvx2Ops = {k_i8, k_u4, k_f16, v_i8, v_u4, v_f16, exp_sum, cvt_f16, block, fold,
                           qattn_block_q_avx2};

}  // namespace

const QAttnOps* qattn_ops_avx2() { return &kAvx2Ops; }

}  // namespace kvrt_k
