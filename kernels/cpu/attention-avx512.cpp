// AVX-512 attention over paged K/V blocks in f32, f16 or bf16: sixteen
// scores per pass (four rows by four keys, or one row by sixteen) from one
// transposed reduction, 64 value channels of up to four rows accumulated
// per pass, and the softmax state updated once per chunk of up to 64
// positions, which may span several blocks.
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include <type_traits>

#include "attention-walk.h"
#include "cpu-kernels-impl.h"
#include "simd-avx512.h"

namespace kvrt_k {
namespace avx512 {

namespace {

using namespace avx512_simd;

using detail::AttnRun;
constexpr uint32_t kChunk = detail::ATTN_CHUNK_TOKENS;
// Score rows hold the chunk and the up to 15 -inf columns a run may write
// past it, rounded up to whole 16-lane vectors.
constexpr uint32_t kSRow = (kChunk + 15 + 15) & ~15u;

constexpr size_t ebytes(uint32_t f) { return f == KV_F32 ? 4 : 2; }

// 16 elements of a storage format as f32.
template <uint32_t F>
inline __m512 load16(const uint8_t* p) {
  if constexpr (F == KV_F32) {
    return _mm512_loadu_ps((const float*)p);
  } else if constexpr (F == KV_F16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
  } else {
    const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
  }
}

// Scores of K rows (r0..r0+K) against keys [0, n) of one contiguous run at
// position t, into columns [off, off + n); up to 15 columns past them (keys
// read from the last one) get -inf, as do positions a row may not see.
// Each pass scores 16 / K keys (4 for three rows), and all of its K x 16 / K
// dot products come out of one transposed reduction.
template <uint32_t KF, int K>
inline void scores(const detail::AttnRows& rows, int r0, size_t hd, float scale, const uint8_t* kp,
                   uint32_t t, uint32_t n, uint32_t off, float (*s)[kSRow]) {
  constexpr size_t ek = ebytes(KF);
  constexpr int NK = K == 3 ? 4 : 16 / K;  // keys per pass; lane NK g + u: row g, key j + u
  // Visible: j + u < n and t + j + u < t_end, so j + u < lim of row g.
  alignas(64) int32_t lim[16];
  for (int l = 0; l < 16; ++l) {
    const int g = l / NK;
    uint32_t m = 0;
    if (g < K) {
      const uint32_t te = rows.t_end[r0 + g];
      m = te > t ? te - t : 0;
      m = m < n ? m : n;
    }
    lim[l] = (int32_t)m;
  }
  const __m512i lim16 = _mm512_load_si512(lim);
  const __m512i key16 = _mm512_and_si512(  // lane l: key l % NK (NK is a power of two)
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
      _mm512_set1_epi32(NK - 1));
  for (uint32_t j = 0; j < n; j += NK) {
    const uint8_t* kr[NK];
    for (int u = 0; u < NK; ++u) kr[u] = kp + (j + u < n ? j + u : n - 1) * hd * ek;
    __m512 a[16];
    for (int l = 0; l < 16; ++l) a[l] = _mm512_setzero_ps();
    for (size_t c = 0; c < hd; c += 16) {
      __m512 q[K];
      for (int g = 0; g < K; ++g) q[g] = _mm512_loadu_ps(rows.q[r0 + g] + c);
      for (int u = 0; u < NK; ++u) {
        const __m512 x = load16<KF>(kr[u] + c * ek);
        for (int g = 0; g < K; ++g) a[NK * g + u] = _mm512_fmadd_ps(q[g], x, a[NK * g + u]);
      }
    }
    const __m512 v = _mm512_mul_ps(hsum16(a), _mm512_set1_ps(scale));
    const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32((int)j), key16);
    const __m512 sv = _mm512_mask_blend_ps(_mm512_cmpgt_epi32_mask(lim16, idx),
                                           _mm512_set1_ps(-INFINITY), v);
    if constexpr (NK == 16) {
      _mm512_storeu_ps(&s[r0][off + j], sv);
    } else if constexpr (NK == 8) {
      _mm256_storeu_ps(&s[r0][off + j], _mm512_castps512_ps256(sv));
      _mm256_storeu_ps(&s[r0 + 1][off + j], _mm512_extractf32x8_ps(sv, 1));
    } else {
      _mm_storeu_ps(&s[r0][off + j], _mm512_castps512_ps128(sv));
      if constexpr (K > 1) _mm_storeu_ps(&s[r0 + 1][off + j], _mm512_extractf32x4_ps(sv, 1));
      if constexpr (K > 2) _mm_storeu_ps(&s[r0 + 2][off + j], _mm512_extractf32x4_ps(sv, 2));
      if constexpr (K > 3) _mm_storeu_ps(&s[r0 + 3][off + j], _mm512_extractf32x4_ps(sv, 3));
    }
  }
}

// acc[r] += sum_j p[r][j] v[j] for K rows from r0 over a chunk's runs, 64
// channels per pass.
template <uint32_t VF, int K>
inline void accum(const detail::AttnRows& rows, int r0, size_t hd, const AttnRun* runs,
                  uint32_t n_runs, const float (*p)[kSRow]) {
  constexpr size_t ev = ebytes(VF);
  for (size_t c0 = 0; c0 < hd; c0 += 64) {
    const int nv = hd - c0 >= 64 ? 4 : (int)(hd - c0) / 16;
    __m512 a[K][4];
    for (int g = 0; g < K; ++g)
      for (int u = 0; u < 4; ++u)
        a[g][u] = u < nv ? _mm512_loadu_ps(rows.acc[r0 + g] + c0 + 16 * u) : _mm512_setzero_ps();
    for (uint32_t i = 0; i < n_runs; ++i) {
      const AttnRun& run = runs[i];
      for (uint32_t j = 0; j < run.n; ++j) {
        const uint8_t* vr = run.vp + (j * hd + c0) * ev;
        __m512 x[4];
        for (int u = 0; u < 4; ++u)
          x[u] = u < nv ? load16<VF>(vr + 16 * u * ev) : _mm512_setzero_ps();
        for (int g = 0; g < K; ++g) {
          const __m512 w = _mm512_set1_ps(p[r0 + g][run.off + j]);
          for (int u = 0; u < 4; ++u)
            if (u < nv) a[g][u] = _mm512_fmadd_ps(w, x[u], a[g][u]);
        }
      }
    }
    for (int g = 0; g < K; ++g)
      for (int u = 0; u < nv; ++u) _mm512_storeu_ps(rows.acc[r0 + g] + c0 + 16 * u, a[g][u]);
  }
}

template <typename F>
inline void by_four(int R, F f) {
  for (int r = 0; r < R; r += 4) {
    switch (R - r) {
      case 1: f(r, std::integral_constant<int, 1>{}); break;
      case 2: f(r, std::integral_constant<int, 2>{}); break;
      case 3: f(r, std::integral_constant<int, 3>{}); break;
      default: f(r, std::integral_constant<int, 4>{}); break;
    }
  }
}

// One chunk: runs[0..n_runs) cover n positions from t.
template <uint32_t KF, uint32_t VF>
void chunk(const detail::AttnRows& rows, size_t hd, float scale, const AttnRun* runs,
           uint32_t n_runs, uint32_t t, uint32_t n) {
  alignas(64) float s[detail::ATTN_MAX_ROWS][kSRow];
  const int R = (int)rows.n;
  // Runs in order: a run's -inf padding past its end is overwritten by the
  // next run's scores.
  for (uint32_t i = 0; i < n_runs; ++i)
    by_four(R, [&](int r0, auto k) {
      scores<KF, decltype(k)::value>(rows, r0, hd, scale, runs[i].kp, t + runs[i].off, runs[i].n,
                                     runs[i].off, s);
    });
  // Only the 16-lane vectors the chunk touches take part in the softmax.
  const uint32_t n16 = (n + 15) & ~15u;
  for (int r = 0; r < R; ++r)
    for (uint32_t j = n; j < n16; ++j) s[r][j] = -INFINITY;
  for (int r = 0; r < R; ++r) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (uint32_t j = 0; j < n16; j += 16) mx = _mm512_max_ps(mx, _mm512_load_ps(&s[r][j]));
    const float cmax = _mm512_reduce_max_ps(mx);
    AttnPartial* st = rows.st[r];
    if (cmax == -INFINITY) {  // nothing visible for this row here
      for (uint32_t j = 0; j < n16; j += 16) _mm512_store_ps(&s[r][j], _mm512_setzero_ps());
      continue;
    }
    const float m_new = cmax > st->m ? cmax : st->m;
    const float alpha = expf(st->m - m_new);
    const __m512 mv = _mm512_set1_ps(m_new);
    __m512 lsum = _mm512_setzero_ps();
    for (uint32_t j = 0; j < n16; j += 16) {
      const __m512 e = exp_neg(_mm512_sub_ps(_mm512_load_ps(&s[r][j]), mv));
      _mm512_store_ps(&s[r][j], e);
      lsum = _mm512_add_ps(lsum, e);
    }
    st->l = st->l * alpha + _mm512_reduce_add_ps(lsum);
    st->m = m_new;
    if (alpha != 1.0f) {
      const __m512 av = _mm512_set1_ps(alpha);
      for (size_t d = 0; d < hd; d += 16)
        _mm512_storeu_ps(rows.acc[r] + d, _mm512_mul_ps(_mm512_loadu_ps(rows.acc[r] + d), av));
    }
  }
  by_four(R, [&](int r0, auto k) { accum<VF, decltype(k)::value>(rows, r0, hd, runs, n_runs, s); });
}

template <uint32_t KF, uint32_t VF>
void rows_t(const AttnArgs& a, uint32_t kv_head, const detail::AttnRows& rows) {
  const size_t hd = a.layout->head_dim;
  detail::attn_for_each_chunk(a, kv_head, rows, hd * ebytes(KF), hd * ebytes(VF),
                              [&](const AttnRun* runs, uint32_t n_runs, uint32_t t, uint32_t n,
                                  detail::PrefetchQueue& pq) {
                                // All at once, as measured on AVX-512 CPUs;
                                // the AVX2 kernel spreads them.
                                pq.issue_rest();
                                chunk<KF, VF>(rows, hd, a.scale, runs, n_runs, t, n);
                              });
}

template <uint32_t KF>
bool rows_k(const AttnArgs& a, uint32_t kv_head, const detail::AttnRows& rows) {
  switch (a.layout->v_format) {
    case KV_F32: rows_t<KF, KV_F32>(a, kv_head, rows); return true;
    case KV_F16: rows_t<KF, KV_F16>(a, kv_head, rows); return true;
    case KV_BF16: rows_t<KF, KV_BF16>(a, kv_head, rows); return true;
    default: return false;
  }
}

}  // namespace

bool attn_rows(const AttnArgs& a, uint32_t kv_head, const detail::AttnRows& rows) {
  if (a.layout->head_dim % 16 != 0 || rows.n == 0 || rows.n > detail::ATTN_MAX_ROWS) return false;
  switch (a.layout->k_format) {
    case KV_F32: return rows_k<KV_F32>(a, kv_head, rows);
    case KV_F16: return rows_k<KV_F16>(a, kv_head, rows);
    case KV_BF16: return rows_k<KV_BF16>(a, kv_head, rows);
    default: return false;
  }
}

}  // namespace avx512
}  // namespace kvrt_k
