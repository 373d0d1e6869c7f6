// AVX-512 attention over paged K/V blocks in f32, f16 or bf16: four keys
// scored per pass with one transposed reduction, 64 value channels of up to
// four rows accumulated per pass.
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include <type_traits>

#include "cpu-kernels-impl.h"
#include "simd-avx512.h"

namespace kvrt_k {
namespace avx512 {

namespace {

using namespace avx512_simd;

constexpr uint32_t kChunk = detail::ATTN_CHUNK_TOKENS;
// Score rows hold the chunk rounded up to whole 16-lane vectors.
constexpr uint32_t kSRow = (kChunk + 15) & ~15u;

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
// position t; keys past n (read from the last key) and positions a row may
// not see get -inf.
template <uint32_t KF, int K>
inline void scores(const detail::AttnRows& rows, int r0, size_t hd, float scale, const uint8_t* kp,
                   uint32_t t, uint32_t n, float (*s)[kSRow]) {
  constexpr size_t ek = ebytes(KF);
  for (uint32_t j = 0; j < n; j += 4) {
    const uint8_t* kr[4];
    for (int u = 0; u < 4; ++u) kr[u] = kp + (j + u < n ? j + u : n - 1) * hd * ek;
    __m512 a[K][4];
    for (int g = 0; g < K; ++g)
      for (int u = 0; u < 4; ++u) a[g][u] = _mm512_setzero_ps();
    for (size_t c = 0; c < hd; c += 16) {
      __m512 x[4];
      for (int u = 0; u < 4; ++u) x[u] = load16<KF>(kr[u] + c * ek);
      for (int g = 0; g < K; ++g) {
        const __m512 q = _mm512_loadu_ps(rows.q[r0 + g] + c);
        for (int u = 0; u < 4; ++u) a[g][u] = _mm512_fmadd_ps(q, x[u], a[g][u]);
      }
    }
    for (int g = 0; g < K; ++g) {
      const __m128 v = _mm_mul_ps(hsum4(a[g][0], a[g][1], a[g][2], a[g][3]), _mm_set1_ps(scale));
      // Visible: j + u < n and t + j + u < t_end.
      const uint32_t te = rows.t_end[r0 + g];
      uint32_t lim = te > t ? te - t : 0;
      lim = lim < n ? lim : n;
      const __m128i idx = _mm_add_epi32(_mm_set1_epi32((int)j), _mm_setr_epi32(0, 1, 2, 3));
      const __m128 vis = _mm_castsi128_ps(_mm_cmpgt_epi32(_mm_set1_epi32((int)lim), idx));
      _mm_storeu_ps(&s[r0 + g][j], _mm_blendv_ps(_mm_set1_ps(-INFINITY), v, vis));
    }
  }
  for (int g = 0; g < K; ++g)
    for (uint32_t j = (n + 3) & ~3u; j < kSRow; ++j) s[r0 + g][j] = -INFINITY;
}

// acc[r] += sum_j p[r][j] v[j] for K rows from r0, 64 channels per pass.
template <uint32_t VF, int K>
inline void accum(const detail::AttnRows& rows, int r0, size_t hd, const uint8_t* vp, uint32_t n,
                  const float (*p)[kSRow]) {
  constexpr size_t ev = ebytes(VF);
  for (size_t c0 = 0; c0 < hd; c0 += 64) {
    const int nv = hd - c0 >= 64 ? 4 : (int)(hd - c0) / 16;
    __m512 a[K][4];
    for (int g = 0; g < K; ++g)
      for (int u = 0; u < 4; ++u)
        a[g][u] = u < nv ? _mm512_loadu_ps(rows.acc[r0 + g] + c0 + 16 * u) : _mm512_setzero_ps();
    for (uint32_t j = 0; j < n; ++j) {
      const uint8_t* vr = vp + (j * hd + c0) * ev;
      __m512 x[4];
      for (int u = 0; u < 4; ++u) x[u] = u < nv ? load16<VF>(vr + 16 * u * ev) : _mm512_setzero_ps();
      for (int g = 0; g < K; ++g) {
        const __m512 w = _mm512_set1_ps(p[r0 + g][j]);
        for (int u = 0; u < 4; ++u)
          if (u < nv) a[g][u] = _mm512_fmadd_ps(w, x[u], a[g][u]);
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

template <uint32_t KF, uint32_t VF>
void chunk(const detail::AttnRows& rows, size_t hd, float scale, const uint8_t* kp,
           const uint8_t* vp, uint32_t t, uint32_t n) {
  alignas(64) float s[detail::ATTN_MAX_ROWS][kSRow];
  const int R = (int)rows.n;
  by_four(R, [&](int r0, auto k) { scores<KF, decltype(k)::value>(rows, r0, hd, scale, kp, t, n, s); });
  for (int r = 0; r < R; ++r) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (uint32_t j = 0; j < kSRow; j += 16) mx = _mm512_max_ps(mx, _mm512_load_ps(&s[r][j]));
    const float cmax = _mm512_reduce_max_ps(mx);
    AttnPartial* st = rows.st[r];
    if (cmax == -INFINITY) {  // nothing visible for this row here
      for (uint32_t j = 0; j < kSRow; j += 16) _mm512_store_ps(&s[r][j], _mm512_setzero_ps());
      continue;
    }
    const float m_new = cmax > st->m ? cmax : st->m;
    const float alpha = expf(st->m - m_new);
    const __m512 mv = _mm512_set1_ps(m_new);
    __m512 lsum = _mm512_setzero_ps();
    for (uint32_t j = 0; j < kSRow; j += 16) {
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
  by_four(R, [&](int r0, auto k) { accum<VF, decltype(k)::value>(rows, r0, hd, vp, n, s); });
}

template <uint32_t KF, uint32_t VF>
void rows_t(const AttnArgs& a, uint32_t kv_head, const detail::AttnRows& rows) {
  const KvLayout& L = *a.layout;
  const size_t hd = L.head_dim;
  const size_t koff = kv_k_offset(L, a.layer, kv_head), voff = kv_v_offset(L, a.layer, kv_head);
  uint32_t t_max = 0;
  for (uint32_t r = 0; r < rows.n; ++r) t_max = rows.t_end[r] > t_max ? rows.t_end[r] : t_max;
  const uint32_t bt = L.block_tokens;
  const size_t krow = hd * ebytes(KF), vrow = hd * ebytes(VF);
  uint32_t pf = rows.t0;
  auto prefetch_to = [&](uint32_t end) {
    if (end > t_max) end = t_max;
    while (pf < end) {
      const uint32_t slot = pf % bt;
      uint32_t n = bt - slot;
      if (n > end - pf) n = end - pf;
      const uint8_t* blk = a.blocks[pf / bt];
      const char* kp = (const char*)(blk + koff + slot * krow);
      const char* vp = (const char*)(blk + voff + slot * vrow);
      // Runs need not start on a cache line: cover every line they touch.
      for (uintptr_t x = (uintptr_t)kp & ~(uintptr_t)63; x < (uintptr_t)kp + n * krow; x += 64)
        _mm_prefetch((const char*)x, _MM_HINT_T0);
      for (uintptr_t x = (uintptr_t)vp & ~(uintptr_t)63; x < (uintptr_t)vp + n * vrow; x += 64)
        _mm_prefetch((const char*)x, _MM_HINT_T0);
      pf += n;
    }
  };
  for (uint32_t t = rows.t0; t < t_max;) {
    const uint32_t slot = t % bt;
    uint32_t n = bt - slot;
    if (n > t_max - t) n = t_max - t;
    if (n > kChunk) n = kChunk;
    const uint8_t* blk = a.blocks[t / bt];
    prefetch_to(t + n + detail::ATTN_PREFETCH_TOKENS);
    chunk<KF, VF>(rows, hd, a.scale, blk + koff + slot * krow, blk + voff + slot * vrow, t, n);
    t += n;
  }
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
