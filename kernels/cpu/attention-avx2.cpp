// AVX2 + FMA + F16C attention over paged K/V blocks in f32, f16 or bf16.
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../common/fp16.h"
#include "attention-walk.h"
#include "cpu-kernels-impl.h"
#include "simd-avx2.h"

namespace kvrt_k {
namespace avx2 {

using namespace simd;

namespace {

using detail::AttnRun;

// Keys scored per pass for R rows: eight (row, key) sums fill one hsum8.
template <int R>
constexpr int kKeysPerPass = R == 1 ? 8 : R == 2 ? 4 : R <= 4 ? 2 : 1;

// Scores s[r][j] of R rows for the n positions of a chunk from t, whose key
// rows start at kptr[j] (scaled; -inf where row r does not see t + j),
// issuing pq's K prefetches spread over its passes.
// A pass takes K = kKeysPerPass<R> keys: one accumulator per (row, key),
// each query vector loaded once for the K keys, and the R * K sums reduced
// by one hsum8 (lane r * K + k; lanes past R * K stay zero).
template <uint32_t KF, int R>
inline void score_chunk(const detail::AttnRows& rows, size_t hd, float scale,
                        const uint8_t* const* kptr, uint32_t t, uint32_t n,
                        float (*s)[detail::ATTN_CHUNK_TOKENS], detail::PrefetchQueue& pq) {
  constexpr int K = kKeysPerPass<R>;
  constexpr size_t ek = elem_bytes(KF);
  alignas(32) int32_t tend[8], koff[8];
  for (int i = 0; i < 8; ++i) {
    const int r = i / K < R ? i / K : R - 1;
    tend[i] = (int32_t)rows.t_end[r];
    koff[i] = i % K;
  }
  const __m256i tend_v = _mm256_load_si256((const __m256i*)tend);
  const __m256i koff_v = _mm256_load_si256((const __m256i*)koff);
  const __m256 sv = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
  const uint32_t per_pass = pq.k.share((n + K - 1) / K);
  for (uint32_t j = 0; j < n; j += K) {
    pq.k.issue(per_pass);
    const uint8_t* kr[K];
    for (int k = 0; k < K; ++k) kr[k] = kptr[j + k < n ? j + k : n - 1];
    __m256 acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
    for (size_t d = 0; d < hd; d += 8) {
      __m256 kv[K];
      for (int k = 0; k < K; ++k) kv[k] = load8<KF>(kr[k] + d * ek);
      for (int r = 0; r < R; ++r) {
        const __m256 qv = _mm256_loadu_ps(rows.q[r] + d);
        for (int k = 0; k < K; ++k) acc[r * K + k] = _mm256_fmadd_ps(kv[k], qv, acc[r * K + k]);
      }
    }
    const __m256i pos = _mm256_add_epi32(_mm256_set1_epi32((int32_t)(t + j)), koff_v);
    const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(tend_v, pos));
    alignas(32) float out[8];
    _mm256_store_ps(out, _mm256_blendv_ps(ninf, _mm256_mul_ps(sv, hsum8(acc)), live));
    // Columns past n are overwritten with -inf by the caller.
    for (int r = 0; r < R; ++r)
      for (int k = 0; k < K; ++k) s[r][j + k] = out[r * K + k];
  }
}

// acc[r][d, d + 8W) += sum over the chunk's positions j of p[r][j] * V(j).
template <uint32_t VF, int R, int W>
inline void values_pass(const detail::AttnRows& rows, size_t hd, const AttnRun* runs,
                        uint32_t n_runs, const float (*p)[detail::ATTN_CHUNK_TOKENS], size_t d) {
  constexpr size_t ev = elem_bytes(VF);
  __m256 o[R][W];
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) o[r][w] = _mm256_loadu_ps(rows.acc[r] + d + 8 * w);
  for (uint32_t i = 0; i < n_runs; ++i) {
    const uint8_t* vrow = runs[i].vp + d * ev;
    const uint32_t off = runs[i].off, m = runs[i].n;
    for (uint32_t j = 0; j < m; ++j, vrow += hd * ev) {
      __m256 vv[W];
      for (int w = 0; w < W; ++w) vv[w] = load8<VF>(vrow + 8 * w * ev);
      for (int r = 0; r < R; ++r) {
        const __m256 pw = _mm256_broadcast_ss(&p[r][off + j]);
        for (int w = 0; w < W; ++w) o[r][w] = _mm256_fmadd_ps(pw, vv[w], o[r][w]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) _mm256_storeu_ps(rows.acc[r] + d + 8 * w, o[r][w]);
}

// Scores, softmax update and V accumulation for R rows over one chunk: runs
// [0, n_runs) covering n positions from t, while pq's prefetches are issued
// (attention-walk.h).
template <uint32_t KF, uint32_t VF, int R>
void attn_chunk(const detail::AttnRows& rows, size_t hd, float scale, const AttnRun* runs,
                uint32_t n_runs, uint32_t t, uint32_t n, detail::PrefetchQueue& pq) {
  constexpr size_t ek = elem_bytes(KF);
  alignas(32) float s[R][detail::ATTN_CHUNK_TOKENS];
  const uint8_t* kptr[detail::ATTN_CHUNK_TOKENS];
  for (uint32_t i = 0; i < n_runs; ++i)
    for (uint32_t j = 0; j < runs[i].n; ++j) kptr[runs[i].off + j] = runs[i].kp + j * hd * ek;
  score_chunk<KF, R>(rows, hd, scale, kptr, t, n, s, pq);
  // Pad to whole vectors with -inf so the vector max/exp below see no garbage.
  const uint32_t n8 = (n + 7) & ~7u;
  for (int r = 0; r < R; ++r)
    for (uint32_t j = n; j < n8; ++j) s[r][j] = -INFINITY;

  for (int r = 0; r < R; ++r) {
    __m256 mx = _mm256_set1_ps(-INFINITY);
    for (uint32_t j = 0; j < n8; j += 8) mx = _mm256_max_ps(mx, _mm256_load_ps(&s[r][j]));
    float cmax = hmax(mx);
    AttnPartial* st = rows.st[r];
    if (cmax == -INFINITY) {  // nothing visible for this row here
      for (uint32_t j = 0; j < n8; ++j) s[r][j] = 0.0f;
      continue;
    }
    float m_new = cmax > st->m ? cmax : st->m;
    float alpha = expf(st->m - m_new);
    __m256 mv = _mm256_set1_ps(m_new), lsum = _mm256_setzero_ps();
    for (uint32_t j = 0; j < n8; j += 8) {
      __m256 p = exp_ps(_mm256_sub_ps(_mm256_load_ps(&s[r][j]), mv));
      _mm256_store_ps(&s[r][j], p);
      lsum = _mm256_add_ps(lsum, p);
    }
    st->l = st->l * alpha + hsum(lsum);
    st->m = m_new;
    if (alpha != 1.0f) {
      __m256 av = _mm256_set1_ps(alpha);
      for (size_t d = 0; d < hd; d += 8)
        _mm256_storeu_ps(rows.acc[r] + d, _mm256_mul_ps(_mm256_loadu_ps(rows.acc[r] + d), av));
    }
  }

  // Values: 8 * W channels per pass: each weight broadcast serves W FMAs,
  // and R * W accumulators (up to 8) are as many independent chains for the
  // FMA units; W = 1 for more than 4 rows and for the last channels. The V
  // prefetches go out between the passes.
  constexpr int W = R == 1 ? 4 : R <= 4 ? 2 : 1;
  const uint32_t per_pass = pq.v.share((uint32_t)(hd / (8 * W)));
  size_t d = 0;
  for (; d + 8 * W <= hd; d += 8 * W) {
    pq.v.issue(per_pass);
    values_pass<VF, R, W>(rows, hd, runs, n_runs, s, d);
  }
  for (; d < hd; d += 8) values_pass<VF, R, 1>(rows, hd, runs, n_runs, s, d);
}

template <uint32_t KF, uint32_t VF, int R>
void attn_rows_t(const AttnArgs& a, uint32_t kv_head, const detail::AttnRows& rows) {
  const size_t hd = a.layout->head_dim;
  detail::attn_for_each_chunk(a, kv_head, rows, hd * elem_bytes(KF), hd * elem_bytes(VF),
                              [&](const AttnRun* runs, uint32_t n_runs, uint32_t t, uint32_t n,
                                  detail::PrefetchQueue& pq) {
                                attn_chunk<KF, VF, R>(rows, hd, a.scale, runs, n_runs, t, n, pq);
                              });
}

template <uint32_t KF, uint32_t VF>
void attn_rows_f(const AttnArgs& a, uint32_t kv_head, const detail::AttnRows& rows) {
  switch (rows.n) {
    case 1: attn_rows_t<KF, VF, 1>(a, kv_head, rows); break;
    case 2: attn_rows_t<KF, VF, 2>(a, kv_head, rows); break;
    case 3: attn_rows_t<KF, VF, 3>(a, kv_head, rows); break;
    case 4: attn_rows_t<KF, VF, 4>(a, kv_head, rows); break;
    case 5: attn_rows_t<KF, VF, 5>(a, kv_head, rows); break;
    case 6: attn_rows_t<KF, VF, 6>(a, kv_head, rows); break;
    case 7: attn_rows_t<KF, VF, 7>(a, kv_head, rows); break;
    case 8: attn_rows_t<KF, VF, 8>(a, kv_head, rows); break;
    default: break;
  }
}

// KV formats share their numbers with the weight formats for f32 and f16;
// bf16 differs (KV_BF16 = 2, W_BF16 = 30), hence the mapping.
constexpr uint32_t wfmt(uint32_t kvf) {
  return kvf == KV_F32 ? W_F32 : kvf == KV_F16 ? W_F16 : W_BF16;
}

template <uint32_t KF>
bool attn_rows_k(const AttnArgs& a, uint32_t kv_head, const detail::AttnRows& rows) {
  switch (a.layout->v_format) {
    case KV_F32: attn_rows_f<KF, W_F32>(a, kv_head, rows); return true;
    case KV_F16: attn_rows_f<KF, W_F16>(a, kv_head, rows); return true;
    case KV_BF16: attn_rows_f<KF, W_BF16>(a, kv_head, rows); return true;
    default: return false;
  }
}

}  // namespace

bool attn_rows(const AttnArgs& a, uint32_t kv_head, const detail::AttnRows& rows) {
  if (a.layout->head_dim % 8 != 0 || rows.n == 0 || rows.n > detail::ATTN_MAX_ROWS) return false;
  switch (a.layout->k_format) {
    case KV_F32: return attn_rows_k<wfmt(KV_F32)>(a, kv_head, rows);
    case KV_F16: return attn_rows_k<wfmt(KV_F16)>(a, kv_head, rows);
    case KV_BF16: return attn_rows_k<wfmt(KV_BF16)>(a, kv_head, rows);
    default: return false;
  }
}

}  // namespace avx2
}  // namespace kvrt_k
