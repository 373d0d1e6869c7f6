// AVX-512 fused step of attention over q8/q4 blocks (see QAttnOps::block):
// codes converted once per run into L1 scratch, four tokens scored per pass
// with one transposed reduction, 64 channels of 4 heads accumulated per pass.
#include <immintrin.h>
#include <math.h>

#include <type_traits>

#include "../common/fp16.h"
#include "../common/kv-quant.h"
#include "attention-quant.h"

namespace kvrt_k {

namespace {

constexpr uint32_t C = kQAttnChunk;
constexpr uint32_t kMaxNg = kQAttnGroupChunk;
// Scratch rows past n are zero so scoring can always take four tokens.
constexpr uint32_t kPadRows = 3;

// Lane i of the result = sum of the 16 lanes of v_i.
inline __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  auto half = [](__m512 v) {
    return _mm256_add_ps(_mm512_castps512_ps256(v),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  };
  __m256 ab = _mm256_hadd_ps(half(a), half(b)), cd = _mm256_hadd_ps(half(c), half(d));
  __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// 16 bytes of nibbles (channel 2j low, 2j+1 high) -> channels 0..15 and 16..31.
inline void unpack_u4(const uint8_t* p, __m512* lo16, __m512* hi16) {
  const __m128i x = _mm_loadu_si128((const __m128i*)p), m = _mm_set1_epi8(0x0f);
  const __m128i lo = _mm_and_si128(x, m), hi = _mm_and_si128(_mm_srli_epi16(x, 4), m);
  *lo16 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
  *hi16 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi)));
}
inline __m512 load_i8x16(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}

template <uint32_t F>
inline void keys_to_f32(const uint8_t* codes, size_t rb, uint32_t n, uint32_t hd, float* out) {
  for (uint32_t t = 0; t < n; ++t) {
    const uint8_t* r = codes + t * rb;
    float* o = out + (size_t)t * hd;
    for (uint32_t c = 0; c < hd; c += 32) {
      __m512 a, b;
      if constexpr (F == kKvqQ8) {
        a = load_i8x16(r + c);
        b = load_i8x16(r + c + 16);
      } else {
        unpack_u4(r + c / 2, &a, &b);
      }
      _mm512_storeu_ps(o + c, a);
      _mm512_storeu_ps(o + c + 16, b);
    }
  }
  for (uint32_t t = n; t < n + kPadRows; ++t)
    for (uint32_t c = 0; c < hd; c += 16) _mm512_storeu_ps(out + (size_t)t * hd + c, _mm512_setzero_ps());
}

template <uint32_t F>
inline void values_to_f32(const uint8_t* codes, size_t rb, const uint16_t* sc, const uint16_t* mn,
                          uint32_t ngv, uint32_t n, uint32_t hd, float* out) {
  for (uint32_t t = 0; t < n; ++t) {
    const uint8_t* r = codes + t * rb;
    float* o = out + (size_t)t * hd;
    for (uint32_t c = 0; c < hd; c += 32) {
      const __m512 s = _mm512_set1_ps(_cvtsh_ss(sc[t * ngv + c / 32]));
      if constexpr (F == kKvqQ8) {
        _mm512_storeu_ps(o + c, _mm512_mul_ps(s, load_i8x16(r + c)));
        _mm512_storeu_ps(o + c + 16, _mm512_mul_ps(s, load_i8x16(r + c + 16)));
      } else {
        const __m512 mv = _mm512_set1_ps(_cvtsh_ss(mn[t * ngv + c / 32]));
        __m512 a, b;
        unpack_u4(r + c / 2, &a, &b);
        _mm512_storeu_ps(o + c, _mm512_fmadd_ps(a, s, mv));
        _mm512_storeu_ps(o + c + 16, _mm512_fmadd_ps(b, s, mv));
      }
    }
  }
}

// s[g * C + t] = bias[g] + dot(qs[g], k[t]) for K heads, four tokens per pass
// (rows up to n rounded up to 4 must be readable).
template <int K>
inline void scores(const float* k, uint32_t n, uint32_t hd, const float* qs, const float* bias,
                   float* s) {
  for (uint32_t t = 0; t < n; t += 4) {
    __m512 a[K][4];
    for (int g = 0; g < K; ++g)
      for (int u = 0; u < 4; ++u) a[g][u] = _mm512_setzero_ps();
    const float* k0 = k + (size_t)t * hd;
    for (uint32_t c = 0; c < hd; c += 16) {
      __m512 x[4];
      for (int u = 0; u < 4; ++u) x[u] = _mm512_loadu_ps(k0 + (size_t)u * hd + c);
      for (int g = 0; g < K; ++g) {
        const __m512 q = _mm512_loadu_ps(qs + g * hd + c);
        for (int u = 0; u < 4; ++u) a[g][u] = _mm512_fmadd_ps(q, x[u], a[g][u]);
      }
    }
    for (int g = 0; g < K; ++g)
      _mm_storeu_ps(s + g * C + t, _mm_add_ps(hsum4(a[g][0], a[g][1], a[g][2], a[g][3]),
                                              _mm_set1_ps(bias[g])));
  }
}

// acc[g][c] += sum_t p[g * C + t] * v[t][c] for K heads, 64 channels per pass.
template <int K>
inline void accum(const float* v, uint32_t n, uint32_t hd, const float* p, float* acc) {
  for (uint32_t c0 = 0; c0 < hd; c0 += 64) {
    const int nv = hd - c0 >= 64 ? 4 : (int)(hd - c0) / 16;
    __m512 a[K][4];
    for (int g = 0; g < K; ++g)
      for (int u = 0; u < 4; ++u)
        a[g][u] = u < nv ? _mm512_loadu_ps(acc + g * hd + c0 + 16 * u) : _mm512_setzero_ps();
    if (nv == 4) {
      for (uint32_t t = 0; t < n; ++t) {
        const float* vr = v + (size_t)t * hd + c0;
        __m512 x[4];
        for (int u = 0; u < 4; ++u) x[u] = _mm512_loadu_ps(vr + 16 * u);
        for (int g = 0; g < K; ++g) {
          const __m512 w = _mm512_set1_ps(p[g * C + t]);
          for (int u = 0; u < 4; ++u) a[g][u] = _mm512_fmadd_ps(w, x[u], a[g][u]);
        }
      }
    } else {
      for (uint32_t t = 0; t < n; ++t) {
        const float* vr = v + (size_t)t * hd + c0;
        for (int g = 0; g < K; ++g) {
          const __m512 w = _mm512_set1_ps(p[g * C + t]);
          for (int u = 0; u < nv; ++u) a[g][u] = _mm512_fmadd_ps(w, _mm512_loadu_ps(vr + 16 * u), a[g][u]);
        }
      }
    }
    for (int g = 0; g < K; ++g)
      for (int u = 0; u < nv; ++u) _mm512_storeu_ps(acc + g * hd + c0 + 16 * u, a[g][u]);
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

// e^x for x <= 0 (as the AVX2 version: degree-6 polynomial after a reduction
// by ln 2; x < -87 gives 0).
inline __m512 exp_neg(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(x, lo);
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
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mul_ps((__mmask16)~under, y, _mm512_castsi512_ps(e));
}

inline __mmask16 tail_mask(uint32_t left) {
  return (__mmask16)(left >= 16 ? 0xffffu : (1u << left) - 1);
}

template <uint32_t KF, uint32_t VF>
void block_t(const uint8_t* kcodes, size_t rbk, const uint8_t* vcodes, size_t rbv,
             const uint16_t* vsc, const uint16_t* vmin, uint32_t ngv, uint32_t n, uint32_t hd,
             const float* qs, const float* bias, uint32_t ng, float* m, float* l, float* acc) {
  alignas(64) float kf[kQAttnFusedFloats + kPadRows * kQAttnMaxHeadDim], vf[kQAttnFusedFloats];
  alignas(64) float s[kMaxNg * C];
  keys_to_f32<KF>(kcodes, rbk, n, hd, kf);
  by_four(ng, [&](uint32_t g, auto k) {
    scores<decltype(k)::value>(kf, n, hd, qs + (size_t)g * hd, bias + g, s + g * C);
  });
  for (uint32_t g = 0; g < ng; ++g) {
    float* sg = s + g * C;
    // Lanes past n read as -inf (max) and give weight 0 (exp).
    __m512 mx16 = _mm512_set1_ps(m[g]);
    for (uint32_t t = 0; t < n; t += 16)
      mx16 = _mm512_max_ps(mx16, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(n - t), sg + t));
    const float mx = _mm512_reduce_max_ps(mx16);
    if (mx > m[g]) {
      const float alpha = m[g] == -INFINITY ? 0.0f : __builtin_expf(m[g] - mx);
      const __m512 av = _mm512_set1_ps(alpha);
      float* ac = acc + (size_t)g * hd;
      for (uint32_t c = 0; c < hd; c += 16) _mm512_storeu_ps(ac + c, _mm512_mul_ps(av, _mm512_loadu_ps(ac + c)));
      l[g] *= alpha;
      m[g] = mx;
    }
    const __m512 mv = _mm512_set1_ps(m[g]);
    __m512 sum = _mm512_setzero_ps();
    for (uint32_t t = 0; t < n; t += 16) {
      const __mmask16 k = tail_mask(n - t);
      const __m512 e = _mm512_maskz_mov_ps(k, exp_neg(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, sg + t), mv)));
      _mm512_storeu_ps(sg + t, e);  // weights overwrite the scores (C is a multiple of 16)
      sum = _mm512_add_ps(sum, e);
    }
    l[g] += _mm512_reduce_add_ps(sum);
  }
  values_to_f32<VF>(vcodes, rbv, vsc, vmin, ngv, n, hd, vf);
  by_four(ng, [&](uint32_t g, auto k) {
    accum<decltype(k)::value>(vf, n, hd, s + g * C, acc + (size_t)g * hd);
  });
}

bool block(uint32_t kfmt, uint32_t vfmt, const uint8_t* kcodes, size_t rbk, const uint8_t* vcodes,
           size_t rbv, const uint16_t* vsc, const uint16_t* vmin, uint32_t ngv, uint32_t n,
           uint32_t hd, const float* qs, const float* bias, uint32_t ng, float* m, float* l,
           float* acc) {
  if (hd % 32 != 0 || hd > kQAttnMaxHeadDim || (size_t)n * hd > kQAttnFusedFloats || n > C ||
      ng > kMaxNg)
    return false;
  const bool k8 = kfmt == kKvqQ8, v8 = vfmt == kKvqQ8;
  auto f = k8 ? (v8 ? block_t<kKvqQ8, kKvqQ8> : block_t<kKvqQ8, kKvqQ4>)
              : (v8 ? block_t<kKvqQ4, kKvqQ8> : block_t<kKvqQ4, kKvqQ4>);
  f(kcodes, rbk, vcodes, rbv, vsc, vmin, ngv, n, hd, qs, bias, ng, m, l, acc);
  return true;
}

}  // namespace

const QAttnOps* qattn_ops_avx512() {
  const QAttnOps* base = qattn_ops_avx2();
  if (!base) return nullptr;
  static const QAttnOps ops = [&] {
    QAttnOps o = *base;
    o.block = block;
    return o;
  }();
  return &ops;
}

}  // namespace kvrt_k
