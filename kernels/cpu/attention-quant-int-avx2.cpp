// The rounded-query step of attention over q8/q4 blocks (QAttnOps::block_q)
// in 256-bit vectors, for every CPU with AVX2: the AVX-512 step
// (attention-quant-avx512.cpp) with 8 rows per run where that one takes 16.
// Keys are scored in integers against the query folded with each block's
// key scales and rounded per 32 channels (int8 against q4 keys, 15 bits
// against q8 keys; prep_query), tokens in lanes so that no horizontal sums
// are needed;
// the softmax update is shared by 64 rows; values are accumulated in float
// with the per-token value scales folded into the softmax weights. The
// q8 rounding is the AVX-512 step's, so both produce the same q8 scores up
// to float summation order; q4 keys are rounded to int8 here (15 bits
// there).
//
// AVX2 has no vpdpbusd; the integer products are exact all the same: q4
// keys by vpmaddubsw, whose nibble x int8 pair sums cannot saturate, summed
// in int16 over a 32-channel group and widened once; q8 keys by vpmaddwd on
// codes widened to int16 against the 15-bit query as int16. (A variant
// with vpdpbusd from AVX-VNNI measured no faster; docs/quantization.md.)
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../common/kv-quant.h"
#include "attention-quant.h"
#include "cpu-kernels-impl.h"
#include "simd-avx2.h"

namespace kvrt_k {

namespace {

using avx2::simd::exp_ps;
using avx2::simd::hmax;
using avx2::simd::hsum;

// Rows per run (one score lane per row) and runs per softmax update.
constexpr uint32_t kRows = 8;
constexpr uint32_t kMaxRuns = 8;
constexpr uint32_t kMaxG32 = kQAttnMaxHeadDim / 32;

// Channels per head of the rounded query: head_dim up to a whole 32-channel
// group (the rounding group); the padding holds zeros.
constexpr uint32_t qpad(uint32_t hd) { return (hd + 31) & ~31u; }

// z[i] = 8 dwords of row i -> z[j] lane t = dword j of row t.
inline void transpose8(__m256i* z) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_castsi256_ps(z[i]);
  avx2::simd::transpose8(r);
  for (int i = 0; i < 8; ++i) z[i] = _mm256_castps_si256(r[i]);
}

// Key code vectors kc[m] (m < hd / 4): lane t = the 4 codes of row t that
// meet dword m of the rounded query (rows past n repeat row n - 1). q8:
// channels 4m..4m+3. q4: per 8 channels, m = 2j the low nibbles (even
// channels), 2j + 1 the high ones; the query is stored in that order.
template <uint32_t KF>
inline void key_vectors(const uint8_t* codes, size_t rb, uint32_t n, uint32_t hd, __m256i* kc) {
  const uint32_t row = (uint32_t)kvq_row_bytes(KF, hd);
  for (uint32_t off = 0; off < row; off += 32) {
    __m256i z[8];
    for (uint32_t i = 0; i < 8; ++i)
      z[i] = _mm256_loadu_si256((const __m256i*)(codes + (i < n ? i : n - 1) * rb + off));
    transpose8(z);
    if constexpr (KF == kKvqQ8) {
      for (int j = 0; j < 8; ++j) kc[off / 4 + j] = z[j];
    } else {
      const __m256i m4 = _mm256_set1_epi8(0x0f);
      for (int j = 0; j < 8; ++j) {
        kc[off / 2 + 2 * j] = _mm256_and_si256(z[j], m4);
        kc[off / 2 + 2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(z[j], 4), m4);
      }
    }
  }
}

// Query rounding (docs/quantization.md, "Error bound of the rounded
// query"; the tests model both rules):
// - q8 keys: 15-bit integers as the AVX-512 step makes them
//   (attention-quant-avx512.cpp, norm_query and prep_query): per call qn =
//   q * (kQMax / max|q|) and dmq = max|q| * scale / kQMax per head and
//   32-channel group, per block qi_c = round(qn_c * s_c / max s), d_G = dmq
//   * max s.
// - q4 keys: int8, from the folded query qs_c = q_c * scale * s_c, d_G =
//   max|qs| / 127, qi_c = round(qs_c / d_G). A 15-bit query needs a second
//   vpmaddubsw per code vector here, which made the q4 step 16% slower.
template <uint32_t KF>
constexpr float kQMax = KF == kKvqQ8 ? 16383.0f : 127.0f;
template <uint32_t KF>
constexpr uint32_t kQBytes = KF == kKvqQ8 ? 2 : 1;  // query bytes per channel

// Per call, for q8 keys: qn and dmq as above.
template <uint32_t NG>
inline void norm_query(const float* q, float scale, uint32_t hd, float* qn, float* dmq) {
  const uint32_t hp = qpad(hd), ng32 = hp / 32;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (uint32_t g = 0; g < NG; ++g)
    for (uint32_t G = 0; G < ng32; ++G) {
      const uint32_t c = 32 * G;
      const int nu = c + 32 <= hd ? 4 : 2;  // vectors of 8 channels that exist
      __m256 v[4], mx = _mm256_setzero_ps();
      for (int u = 0; u < 4; ++u) {
        v[u] = u < nu ? _mm256_loadu_ps(q + (size_t)g * hd + c + 8 * u) : _mm256_setzero_ps();
        mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[u]));
      }
      const float mq = hmax(mx);
      const __m256 f = _mm256_set1_ps(mq > 0.0f ? kQMax<kKvqQ8> / mq : 0.0f);
      for (int u = 0; u < 4; ++u) _mm256_storeu_ps(qn + (size_t)g * hp + c + 8 * u, _mm256_mul_ps(v[u], f));
      dmq[g * ng32 + G] = mq * scale * (1.0f / kQMax<kKvqQ8>);
    }
}

// Four vectors of 8 int32 (channels 0..31 in order) -> 32 bytes in channel
// order (values must fit int8).
inline __m256i pack_bytes(const __m256i* x) {
  const __m256i w = _mm256_packs_epi16(_mm256_packs_epi32(x[0], x[1]), _mm256_packs_epi32(x[2], x[3]));
  return _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// The rounded query of NG heads against one block (d[g][G] as above). q8:
// qi as int16, the channels of each 4 in the order 0, 2, 1, 3 (dword 2m
// pairs channels 4m and 4m + 2, dword 2m + 1 the other two). q4: qi int8 in
// key_vectors order, bias[g] = scale * sum_c q_c kmin_c.
template <uint32_t KF, uint32_t NG>
inline void prep_query(const float* q, const float* qn, const float* dmq, float scale,
                       const uint16_t* ksc, uint32_t hd, uint8_t* qb, float* dq, float* bias) {
  // A head_dim that is an odd multiple of 16 ends in a 16-channel group:
  // its upper half is zero, and each head's bytes take qpad(hd) channels.
  const uint32_t hp = qpad(hd), ng32 = hp / 32;
  const __m256 sv = _mm256_set1_ps(scale);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 bs[NG];
  for (uint32_t g = 0; g < NG; ++g) bs[g] = _mm256_setzero_ps();
  for (uint32_t G = 0; G < ng32; ++G) {
    const uint32_t c = 32 * G;
    const int nu = c + 32 <= hd ? 4 : 2;  // vectors of 8 channels that exist
    __m256 k[4], mn[4];
    for (int u = 0; u < 4; ++u) {
      k[u] = mn[u] = _mm256_setzero_ps();
      if (u >= nu) continue;
      k[u] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(ksc + c + 8 * u)));
      if constexpr (KF == kKvqQ4) {
        k[u] = _mm256_mul_ps(sv, k[u]);
        mn[u] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(ksc + hd + c + 8 * u)));
      }
    }
    if constexpr (KF == kKvqQ8) {
      // Scales are >= 0 (-0 for an all-zero channel).
      const float ms = hmax(_mm256_max_ps(_mm256_max_ps(k[0], k[1]), _mm256_max_ps(k[2], k[3])));
      const __m256 inv = _mm256_set1_ps(ms > 0.0f ? 1.0f / ms : 0.0f);
      for (int u = 0; u < 4; ++u) k[u] = _mm256_mul_ps(k[u], inv);
      const __m256i pairs = _mm256_setr_epi8(0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15,
                                             0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15);
      for (uint32_t g = 0; g < NG; ++g) {
        dq[g * ng32 + G] = dmq[g * ng32 + G] * ms;
        __m256i ia[4];
        for (int u = 0; u < 4; ++u)
          ia[u] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(qn + (size_t)g * hp + c + 8 * u), k[u]));
        uint8_t* o = qb + (size_t)kQBytes<KF> * (g * hp + c);
        for (int u = 0; u < 4; u += 2) {
          const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(ia[u], ia[u + 1]), 0xD8);
          _mm256_storeu_si256((__m256i*)(o + 16 * u), _mm256_shuffle_epi8(w, pairs));
        }
      }
    } else {
      const __m256i odd_even = _mm256_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15,
                                                0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
      for (uint32_t g = 0; g < NG; ++g) {
        __m256 a[4], mx = _mm256_setzero_ps();
        for (int u = 0; u < 4; ++u) {
          const __m256 qv = u < nu ? _mm256_loadu_ps(q + (size_t)g * hd + c + 8 * u) : _mm256_setzero_ps();
          a[u] = _mm256_mul_ps(qv, k[u]);
          mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, a[u]));
          bs[g] = _mm256_fmadd_ps(qv, mn[u], bs[g]);
        }
        const float amax = hmax(mx);
        dq[g * ng32 + G] = amax * (1.0f / kQMax<KF>);
        const __m256 inv = _mm256_set1_ps(amax > 0.0f ? kQMax<KF> / amax : 0.0f);
        __m256i ia[4];
        for (int u = 0; u < 4; ++u) ia[u] = _mm256_cvtps_epi32(_mm256_mul_ps(a[u], inv));
        uint8_t* o = qb + (size_t)kQBytes<KF> * (g * hp + c);
        _mm256_storeu_si256((__m256i*)o, _mm256_shuffle_epi8(pack_bytes(ia), odd_even));
      }
    }
  }
  for (uint32_t g = 0; g < NG; ++g) bias[g] = KF == kKvqQ4 ? scale * hsum(bs[g]) : 0.0f;
}

// Scores of 8 rows for K heads over hp = qpad(head_dim) channels: s[k] lane
// t = bias + sum over groups of d * (integer dot product of the group). q4:
// vpmaddubsw (codes 0..15 x int8 query: pair sums <= 3810) summed in int16
// over the group's 8 code vectors (<= 30480) and widened once. q8: the codes of each dword widened to int16
// (bytes 0, 2 and bytes 1, 3) and vpmaddwd against the int16 query.
template <uint32_t KF, int K>
inline void scores(const __m256i* kc, uint32_t hp, const uint8_t* qb, const float* d,
                       const float* bias, __m256* s) {
  const uint32_t ng32 = hp / 32;
  const size_t qstride = (size_t)kQBytes<KF> * hp;
  for (int k = 0; k < K; ++k) s[k] = _mm256_set1_ps(bias[k]);
  for (uint32_t G = 0; G < ng32; ++G) {
    __m256i acc[K];
    for (int k = 0; k < K; ++k) acc[k] = _mm256_setzero_si256();
    for (uint32_t m = 8 * G; m < 8 * G + 8; ++m) {
      if constexpr (KF == kKvqQ8) {
        const __m256i even = _mm256_srai_epi16(_mm256_slli_epi16(kc[m], 8), 8);
        const __m256i odd = _mm256_srai_epi16(kc[m], 8);
        for (int k = 0; k < K; ++k) {
          int32_t w[2];
          memcpy(w, qb + k * qstride + 8 * m, 8);
          acc[k] = _mm256_add_epi32(acc[k], _mm256_madd_epi16(even, _mm256_set1_epi32(w[0])));
          acc[k] = _mm256_add_epi32(acc[k], _mm256_madd_epi16(odd, _mm256_set1_epi32(w[1])));
        }
      } else {
        for (int k = 0; k < K; ++k) {
          int32_t w;
          memcpy(&w, qb + k * qstride + 4 * m, 4);
          acc[k] = _mm256_add_epi16(acc[k], _mm256_maddubs_epi16(kc[m], _mm256_set1_epi32(w)));
        }
      }
    }
    for (int k = 0; k < K; ++k) {
      __m256i v = acc[k];
      if constexpr (KF == kKvqQ4) v = _mm256_madd_epi16(v, _mm256_set1_epi16(1));
      s[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(d[k * ng32 + G]), s[k]);
    }
  }
}

// Lanes of s past n -> -inf.
template <uint32_t NG>
inline void mask_rows(uint32_t n, __m256* s) {
  const __m256 live = _mm256_castsi256_ps(
      _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  for (uint32_t g = 0; g < NG; ++g) s[g] = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), s[g], live);
}

// Scores s[g] of NG heads for n <= 8 rows; lanes past n are -inf.
template <uint32_t KF, uint32_t NG>
__attribute__((noinline)) void score_run(const uint8_t* kcodes, size_t rbk, uint32_t n, uint32_t hd,
                                         const uint8_t* qb, const float* dq, const float* bias, __m256* s) {
  const uint32_t hp = qpad(hd);
  __m256i kc[kQAttnMaxHeadDim / 4];
  key_vectors<KF>(kcodes, rbk, n, hd, kc);
  for (uint32_t g0 = 0; g0 < NG; g0 += 4) {
    constexpr int K = NG < 4 ? (int)NG : 4;
    scores<KF, K>(kc, hp, qb + (size_t)g0 * kQBytes<KF> * hp, dq + (size_t)g0 * (hp / 32), bias + g0, s + g0);
  }
  mask_rows<NG>(n, s);
}

// Value rows of one run of n <= 8 rows: codes of the first row, its
// per-token scales and minimums.
struct VRun {
  const uint8_t* v;
  const uint16_t* sc;
  const uint16_t* mn;
  uint32_t n;
};

// Lane t = the f16 at p[t * ngv + G] as float, for rows t < n (0 past n):
// one group's value scales (or minimums) of a run's rows.
inline __m256 token_lanes(const uint16_t* p, uint32_t ngv, uint32_t n, uint32_t G) {
  if (n == kRows && ngv == 1) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
  if (n == kRows && ngv == 2) {  // [t][2]: even halves are group 0, odd ones group 1
    const __m256 a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
    const __m256 b = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + 8)));
    const __m256 s = G ? _mm256_shuffle_ps(a, b, 0xDD) : _mm256_shuffle_ps(a, b, 0x88);
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), 0xD8));
  }
  // Rows past n may lie past the block part: read only n.
  alignas(16) uint16_t h[kRows] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (uint32_t t = 0; t < n; ++t) h[t] = p[(size_t)t * ngv + G];
  return _mm256_cvtph_ps(_mm_load_si128((const __m128i*)h));
}

// Channels [c_begin, c_end) of one 32-channel group, K <= 4 heads: acc[k]
// = alpha[k] * acc[k] + sum over runs r and rows t of w[k][r][t] *
// code(r, t, c) (+ mb[k] for q4), 16 channels per pass (8 accumulators of
// the 16 registers); w is [k][kMaxRuns][kRows], the group's value scales
// folded in. q4 passes keep even and odd channels apart (a code byte holds
// one of each) and interleave them when storing.
template <uint32_t VF, int K>
__attribute__((noinline)) void values(const VRun* runs, uint32_t nr, size_t rb, uint32_t hd,
                                      uint32_t c_begin, uint32_t c_end, const float* w,
                                      const float* mb, const float* alpha, float* acc) {
  constexpr size_t wk = (size_t)kMaxRuns * kRows;  // floats per head in w
  for (uint32_t c0 = c_begin; c0 < c_end; c0 += 16) {
    __m256 a[K][2];
    for (int k = 0; k < K; ++k) {
      const __m256 al = _mm256_set1_ps(alpha[k]);
      const float* ac = acc + (size_t)k * hd + c0;
      a[k][0] = _mm256_mul_ps(al, _mm256_loadu_ps(ac));
      a[k][1] = _mm256_mul_ps(al, _mm256_loadu_ps(ac + 8));
      if constexpr (VF == kKvqQ4) {  // -> even channels, odd channels
        const __m256 e = _mm256_shuffle_ps(a[k][0], a[k][1], 0x88), o = _mm256_shuffle_ps(a[k][0], a[k][1], 0xDD);
        a[k][0] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8));
        a[k][1] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8));
      }
    }
    for (uint32_t r = 0; r < nr; ++r) {
      const uint8_t* codes = runs[r].v;
      const float* wr = w + (size_t)r * kRows;
      for (uint32_t t = 0; t < runs[r].n; ++t) {
        const uint8_t* row = codes + t * rb;
        __m256 x0, x1;
        if constexpr (VF == kKvqQ8) {
          const __m128i b = _mm_loadu_si128((const __m128i*)(row + c0));
          x0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
          x1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
        } else {
          const __m256i y = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(row + c0 / 2)));
          x0 = _mm256_cvtepi32_ps(_mm256_and_si256(y, _mm256_set1_epi32(0x0f)));
          x1 = _mm256_cvtepi32_ps(_mm256_srli_epi32(y, 4));
        }
        for (int k = 0; k < K; ++k) {
          const __m256 wt = _mm256_broadcast_ss(wr + k * wk + t);
          a[k][0] = _mm256_fmadd_ps(wt, x0, a[k][0]);
          a[k][1] = _mm256_fmadd_ps(wt, x1, a[k][1]);
        }
      }
    }
    for (int k = 0; k < K; ++k) {
      float* ac = acc + (size_t)k * hd + c0;
      if constexpr (VF == kKvqQ4) {
        const __m256 mv = _mm256_set1_ps(mb[k]);
        const __m256 e = _mm256_add_ps(a[k][0], mv), o = _mm256_add_ps(a[k][1], mv);
        const __m256 lo = _mm256_unpacklo_ps(e, o), hi = _mm256_unpackhi_ps(e, o);
        a[k][0] = _mm256_permute2f128_ps(lo, hi, 0x20);
        a[k][1] = _mm256_permute2f128_ps(lo, hi, 0x31);
      }
      _mm256_storeu_ps(ac, a[k][0]);
      _mm256_storeu_ps(ac + 8, a[k][1]);
    }
  }
}

// One online-softmax update of NG heads over the scores s[r][g] of nr runs
// (lanes past a run's rows are -inf), then the values of those runs, one
// 32-channel group at a time: the weights of one group of NG heads take 2
// KiB of stack where those of every group of head_dim 512 took 32
// (docs/api.md, the caller's stack).
template <uint32_t VF, uint32_t NG>
void softmax_values(__m256 (*s)[8], const VRun* runs, uint32_t nr, size_t rbv, uint32_t hd, float* m,
                    float* l, float* acc) {
  const uint32_t ngv = qpad(hd) / 32;
  float m_new[NG], alpha[NG];
  for (uint32_t g = 0; g < NG; ++g) {
    __m256 mx = s[0][g];
    for (uint32_t r = 1; r < nr; ++r) mx = _mm256_max_ps(mx, s[r][g]);
    const float mxg = hmax(mx);
    m_new[g] = mxg > m[g] ? mxg : m[g];
  }
  // alpha = e^(m_old - m_new): 0 for the first update (m_old = -inf), 1
  // exactly when the maximum stays (exp_ps(0) = 1).
  {
    alignas(32) float dm[8] = {0, 0, 0, 0, 0, 0, 0, 0}, al[8];
    for (uint32_t g = 0; g < NG; ++g) dm[g] = m[g] - m_new[g];
    _mm256_store_ps(al, exp_ps(_mm256_load_ps(dm)));
    for (uint32_t g = 0; g < NG; ++g) {
      alpha[g] = al[g];
      m[g] = m_new[g];
    }
  }
  // Exponentials p[r][g] in place of the scores (-inf lanes give 0).
  __m256 sum[NG];
  for (uint32_t g = 0; g < NG; ++g) sum[g] = _mm256_setzero_ps();
  for (uint32_t r = 0; r < nr; ++r)
    for (uint32_t g = 0; g < NG; ++g) {
      s[r][g] = exp_ps(_mm256_sub_ps(s[r][g], _mm256_set1_ps(m_new[g])));
      sum[g] = _mm256_add_ps(sum[g], s[r][g]);
    }
  for (uint32_t g = 0; g < NG; ++g) l[g] = l[g] * alpha[g] + hsum(sum[g]);
  // Per group G: weights with its value scales folded in, [g][r][t]; q4:
  // mb[g] = sum_t p * min.
  alignas(32) float w[NG * kMaxRuns * kRows];
  for (uint32_t G = 0; G < ngv; ++G) {
    float mb[NG];
    __m256 pm[NG];
    for (uint32_t g = 0; g < NG; ++g) pm[g] = _mm256_setzero_ps();
    for (uint32_t r = 0; r < nr; ++r) {
      const __m256 vs = token_lanes(runs[r].sc, ngv, runs[r].n, G);
      const __m256 vm = VF == kKvqQ4 ? token_lanes(runs[r].mn, ngv, runs[r].n, G) : vs;
      for (uint32_t g = 0; g < NG; ++g) {
        _mm256_store_ps(w + ((size_t)g * kMaxRuns + r) * kRows, _mm256_mul_ps(s[r][g], vs));
        if constexpr (VF == kKvqQ4) pm[g] = _mm256_fmadd_ps(s[r][g], vm, pm[g]);
      }
    }
    if constexpr (VF == kKvqQ4)
      for (uint32_t g = 0; g < NG; ++g) mb[g] = hsum(pm[g]);
    const uint32_t c_end = 32 * G + 32 < hd ? 32 * G + 32 : hd;
    for (uint32_t g = 0; g < NG; g += 4) {
      constexpr int K = NG < 4 ? (int)NG : 4;
      values<VF, K>(runs, nr, rbv, hd, 32 * G, c_end, w + (size_t)g * kMaxRuns * kRows, mb + g,
                    alpha + g, acc + (size_t)g * hd);
    }
  }
}

// Blocks in runs of up to 8 rows: the query folded and rounded per block
// (the key scales are per block), keys scored per run, and the softmax
// update and values done per kMaxRuns runs.
template <uint32_t KF, uint32_t VF, uint32_t NG>
void block_q_t(const QAttnBlock* blocks, uint32_t nb, size_t rbk, size_t rbv, uint32_t hd, const float* q,
               float scale, float* qn, float* m, float* l, float* acc) {
  const uint32_t ngv = qpad(hd) / 32;
  alignas(32) uint8_t qb[NG * kQBytes<KF> * kQAttnMaxHeadDim];
  float dmq[NG * kMaxG32], dq[NG * kMaxG32], bias[NG];
  if constexpr (KF == kKvqQ8) norm_query<NG>(q, scale, hd, qn, dmq);
  __m256 s[kMaxRuns][8];
  VRun runs[kMaxRuns];
  uint32_t nr = 0;
  for (uint32_t i = 0; i < nb; ++i) {
    const QAttnBlock& B = blocks[i];
    detail::prefetch_lines(B.pf_k, B.pf_k_bytes);
    prep_query<KF, NG>(q, qn, dmq, scale, B.k_scales, hd, qb, dq, bias);
    for (uint32_t t0 = 0; t0 < B.n; t0 += kRows) {
      const uint32_t n = B.n - t0 < kRows ? B.n - t0 : kRows;
      score_run<KF, NG>(B.k + t0 * rbk, rbk, n, hd, qb, dq, bias, s[nr]);
      if (t0 == 0) detail::prefetch_lines(B.pf_v, B.pf_v_bytes);
      runs[nr++] = {B.v + t0 * rbv, B.v_scales + (size_t)t0 * ngv, B.v_mins + (size_t)t0 * ngv, n};
      if (nr == kMaxRuns) {
        softmax_values<VF, NG>(s, runs, nr, rbv, hd, m, l, acc);
        nr = 0;
      }
    }
  }
  if (nr) softmax_values<VF, NG>(s, runs, nr, rbv, hd, m, l, acc);
}

using BlockQFn = void (*)(const QAttnBlock*, uint32_t, size_t, size_t, uint32_t, const float*, float,
                          float*, float*, float*, float*);

template <uint32_t KF, uint32_t VF>
BlockQFn pick_ng(uint32_t ng) {
  switch (ng) {
    case 1: return block_q_t<KF, VF, 1>;
    case 2: return block_q_t<KF, VF, 2>;
    case 4: return block_q_t<KF, VF, 4>;
    case 8: return block_q_t<KF, VF, 8>;
    default: return nullptr;
  }
}

}  // namespace

bool qattn_block_q_avx2(uint32_t kfmt, uint32_t vfmt, const QAttnBlock* blocks, uint32_t nb, size_t rbk,
                        size_t rbv, uint32_t hd, const float* q, float scale, uint32_t ng, float* work,
                        float* m, float* l, float* acc) {
  if (!qattn_block_q_takes(hd, ng)) return false;
  const bool k8 = kfmt == kKvqQ8, v8 = vfmt == kKvqQ8;
  const BlockQFn f = k8 ? (v8 ? pick_ng<kKvqQ8, kKvqQ8>(ng) : pick_ng<kKvqQ8, kKvqQ4>(ng))
                        : (v8 ? pick_ng<kKvqQ4, kKvqQ8>(ng) : pick_ng<kKvqQ4, kKvqQ4>(ng));
  if (!f) return false;
  f(blocks, nb, rbk, rbv, hd, q, scale, work, m, l, acc);
  return true;
}

}  // namespace kvrt_k
