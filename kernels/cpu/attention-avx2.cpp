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

// Scores, softmax update and V accumulation for R rows over one chunk: runs
// [0, n_runs) covering n positions from t (attention-walk.h).
template <uint32_t KF, uint32_t VF, int R>
void attn_chunk(const detail::AttnRows& rows, size_t hd, float scale, const AttnRun* runs,
                uint32_t n_runs, uint32_t t, uint32_t n) {
  constexpr size_t ek = elem_bytes(KF), ev = elem_bytes(VF);
  alignas(32) float s[R][detail::ATTN_CHUNK_TOKENS];
  for (uint32_t i = 0; i < n_runs; ++i)
    for (uint32_t j = runs[i].off, e = j + runs[i].n; j < e; ++j) {
      const uint8_t* krow = runs[i].kp + (j - runs[i].off) * hd * ek;
      // Two partial sums per row halve the FMA dependency chain.
      __m256 acc[2][R];
      for (int r = 0; r < R; ++r) acc[0][r] = acc[1][r] = _mm256_setzero_ps();
      size_t d = 0;
      for (; d + 16 <= hd; d += 16)
        for (int h = 0; h < 2; ++h) {
          __m256 kv = load8<KF>(krow + (d + 8 * h) * ek);
          for (int r = 0; r < R; ++r)
            acc[h][r] = _mm256_fmadd_ps(kv, _mm256_loadu_ps(rows.q[r] + d + 8 * h), acc[h][r]);
        }
      if (d < hd) {
        __m256 kv = load8<KF>(krow + d * ek);
        for (int r = 0; r < R; ++r)
          acc[0][r] = _mm256_fmadd_ps(kv, _mm256_loadu_ps(rows.q[r] + d), acc[0][r]);
      }
      for (int r = 0; r < R; ++r)
        s[r][j] = t + j < rows.t_end[r] ? scale * hsum(_mm256_add_ps(acc[0][r], acc[1][r]))
                                        : -INFINITY;
    }
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

  // Even and odd keys feed separate accumulators (when registers allow) so
  // the per-row FMA chains are half as long.
  constexpr int C = R <= 4 ? 2 : 1;
  for (size_t d = 0; d < hd; d += 8) {
    __m256 o[C][R];
    for (int r = 0; r < R; ++r) {
      o[0][r] = _mm256_loadu_ps(rows.acc[r] + d);
      if constexpr (C == 2) o[C - 1][r] = _mm256_setzero_ps();
    }
    for (uint32_t i = 0; i < n_runs; ++i) {
      const uint8_t* vrun = runs[i].vp;
      const uint32_t off = runs[i].off, m = runs[i].n;
      uint32_t j = 0;
      for (; j + C <= m; j += C)
        for (int c = 0; c < C; ++c) {
          __m256 vv = load8<VF>(vrun + ((j + c) * hd + d) * ev);
          for (int r = 0; r < R; ++r)
            o[c][r] = _mm256_fmadd_ps(_mm256_set1_ps(s[r][off + j + c]), vv, o[c][r]);
        }
      for (; j < m; ++j) {
        __m256 vv = load8<VF>(vrun + (j * hd + d) * ev);
        for (int r = 0; r < R; ++r)
          o[0][r] = _mm256_fmadd_ps(_mm256_set1_ps(s[r][off + j]), vv, o[0][r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      __m256 v = o[0][r];
      if constexpr (C == 2) v = _mm256_add_ps(v, o[C - 1][r]);
      _mm256_storeu_ps(rows.acc[r] + d, v);
    }
  }
}

template <uint32_t KF, uint32_t VF, int R>
void attn_rows_t(const AttnArgs& a, uint32_t kv_head, const detail::AttnRows& rows) {
  const size_t hd = a.layout->head_dim;
  detail::attn_for_each_chunk(a, kv_head, rows, hd * elem_bytes(KF), hd * elem_bytes(VF),
                              [&](const AttnRun* runs, uint32_t n_runs, uint32_t t, uint32_t n) {
                                attn_chunk<KF, VF, R>(rows, hd, a.scale, runs, n_runs, t, n);
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
constexpr uint32_t wfmt(uint32_t kvf) { return kvf == KV_F32 ? W_F32 : kvf == KV_F16 ? W_F16 : W_BF16; }

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
