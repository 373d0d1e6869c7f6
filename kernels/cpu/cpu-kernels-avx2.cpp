// AVX2 + FMA + F16C kernels: register-blocked matmul for every weight type,
// attention over paged K/V, rmsnorm, SwiGLU and f16 KV stores.
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../common/fp16.h"
#include "cpu-kernels-impl.h"

namespace kvrt_k {
namespace avx2 {

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// e^x with about 1e-7 relative error (Cephes-style polynomial after a
// reduction by ln 2). Inputs below ln(FLT_MIN) give exactly 0, so masked
// scores (-inf) vanish; inputs above 88 saturate at e^88.
inline __m256 exp_ps(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f);
  __m256 zero_mask = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
  x = _mm256_max_ps(x, lo);
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

// RB weight rows times MB activation rows: each converted weight vector is
// used MB times and each activation vector RB times, all sums in registers.
// U independent accumulators per output break the FMA latency chain when
// RB * MB is small (the M = 1 decode case, which must stream at memory speed;
// one row at a time keeps that stream sequential for the prefetcher).
template <uint32_t WT, int RB, int MB, int U>
void tile(const uint8_t* w, size_t row_bytes, size_t k, const float* x, size_t ldx, float* y,
          size_t ldy) {
  __m256 acc[U][RB][MB];
  for (int u = 0; u < U; ++u)
    for (int i = 0; i < RB; ++i)
      for (int m = 0; m < MB; ++m) acc[u][i][m] = _mm256_setzero_ps();
  float sums[RB][MB];
  if constexpr (WT == W_Q8_0) {
    const size_t nb = k / Q8_0_BLOCK;
    for (size_t b = 0; b < nb; ++b) {
      __m256 d[RB];
      const uint8_t* blk[RB];
      for (int i = 0; i < RB; ++i) {
        blk[i] = w + i * row_bytes + b * sizeof(BlockQ8_0);
        uint16_t h;
        memcpy(&h, blk[i], 2);
        d[i] = _mm256_set1_ps(f16_to_f32(h));
      }
      for (int s = 0; s < Q8_0_BLOCK / 8; ++s) {
        __m256 wv[RB];
        for (int i = 0; i < RB; ++i) {
          __m128i q = _mm_loadl_epi64((const __m128i*)(blk[i] + 2 + 8 * s));
          wv[i] = _mm256_mul_ps(d[i], _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
        }
        const size_t j = b * Q8_0_BLOCK + 8 * s;
        for (int m = 0; m < MB; ++m) {
          __m256 xv = _mm256_loadu_ps(x + m * ldx + j);
          for (int i = 0; i < RB; ++i)
            acc[s % U][i][m] = _mm256_fmadd_ps(wv[i], xv, acc[s % U][i][m]);
        }
      }
    }
  } else {
    constexpr size_t eb = elem_bytes(WT);
    const size_t k8 = k & ~(size_t)7;
    size_t j = 0;
    for (; j + 8 * U <= k8; j += 8 * U) {
      for (int u = 0; u < U; ++u) {
        __m256 wv[RB];
        for (int i = 0; i < RB; ++i) wv[i] = load8<WT>(w + i * row_bytes + (j + 8 * u) * eb);
        for (int m = 0; m < MB; ++m) {
          __m256 xv = _mm256_loadu_ps(x + m * ldx + j + 8 * u);
          for (int i = 0; i < RB; ++i) acc[u][i][m] = _mm256_fmadd_ps(wv[i], xv, acc[u][i][m]);
        }
      }
    }
    for (; j < k8; j += 8) {
      __m256 wv[RB];
      for (int i = 0; i < RB; ++i) wv[i] = load8<WT>(w + i * row_bytes + j * eb);
      for (int m = 0; m < MB; ++m) {
        __m256 xv = _mm256_loadu_ps(x + m * ldx + j);
        for (int i = 0; i < RB; ++i) acc[0][i][m] = _mm256_fmadd_ps(wv[i], xv, acc[0][i][m]);
      }
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int m = 0; m < MB; ++m) {
      __m256 t = acc[0][i][m];
      for (int u = 1; u < U; ++u) t = _mm256_add_ps(t, acc[u][i][m]);
      sums[i][m] = hsum(t);
    }
  if constexpr (WT != W_Q8_0) {
    constexpr size_t eb = elem_bytes(WT);
    for (size_t j = k & ~(size_t)7; j < k; ++j)
      for (int i = 0; i < RB; ++i) {
        float wj = load1<WT>(w + i * row_bytes + j * eb);
        for (int m = 0; m < MB; ++m) sums[i][m] += wj * x[m * ldx + j];
      }
  }
  for (int i = 0; i < RB; ++i)
    for (int m = 0; m < MB; ++m) y[m * ldy + i] = sums[i][m];
}

template <uint32_t WT, int RB>
void rows_block(const uint8_t* w, size_t row_bytes, size_t k, const float* x, size_t ldx,
                size_t n_rows_x, float* y, size_t ldy) {
  constexpr int MB = RB == 1 ? 4 : 3;
  size_t m = 0;
  for (; m + MB <= n_rows_x; m += MB)
    tile<WT, RB, MB, 1>(w, row_bytes, k, x + m * ldx, ldx, y + m * ldy, ldy);
  for (; m + 2 <= n_rows_x; m += 2)
    tile<WT, RB, 2, 2>(w, row_bytes, k, x + m * ldx, ldx, y + m * ldy, ldy);
  for (; m < n_rows_x; ++m)
    tile<WT, RB, 1, 4 / RB>(w, row_bytes, k, x + m * ldx, ldx, y + m * ldy, ldy);
}

template <uint32_t WT>
void matmul_t(const void* w, size_t k, size_t r0, size_t r1, const float* x, size_t ldx,
              size_t n_rows_x, float* y, size_t ldy) {
  const size_t rb = weight_row_bytes(WT, k);
  const uint8_t* base = (const uint8_t*)w;
  size_t r = r0;
  if (n_rows_x == 1) {  // decode: one sequential stream per row
    for (; r < r1; ++r) tile<WT, 1, 1, 4>(base + r * rb, rb, k, x, ldx, y + r, ldy);
    return;
  }
  constexpr int RB = 4;
  for (; r + RB <= r1; r += RB)
    rows_block<WT, RB>(base + r * rb, rb, k, x, ldx, n_rows_x, y + r, ldy);
  for (; r < r1; ++r) rows_block<WT, 1>(base + r * rb, rb, k, x, ldx, n_rows_x, y + r, ldy);
}

}  // namespace

void matmul(uint32_t wtype, const void* w, size_t k, size_t r0, size_t r1, const float* x,
            size_t ldx, size_t n_rows_x, float* y, size_t ldy, float* scratch) {
  switch (wtype) {
    case W_F32: matmul_t<W_F32>(w, k, r0, r1, x, ldx, n_rows_x, y, ldy); break;
    case W_F16: matmul_t<W_F16>(w, k, r0, r1, x, ldx, n_rows_x, y, ldy); break;
    case W_BF16: matmul_t<W_BF16>(w, k, r0, r1, x, ldx, n_rows_x, y, ldy); break;
    case W_Q8_0:
      if (weight_row_bytes(W_Q8_0, k) != 0 || k == 0)
        matmul_t<W_Q8_0>(w, k, r0, r1, x, ldx, n_rows_x, y, ldy);
      break;
    default: break;
  }
}

void rmsnorm(const float* x, const float* weight, float* y, size_t n, float eps) {
  // Double accumulation, as the reference does, so long rows lose nothing.
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    s0 = _mm256_fmadd_pd(lo, lo, s0);
    s1 = _mm256_fmadd_pd(hi, hi, s1);
  }
  double buf[4];
  _mm256_storeu_pd(buf, _mm256_add_pd(s0, s1));
  double ss = (buf[0] + buf[1]) + (buf[2] + buf[3]);
  for (; i < n; ++i) ss += (double)x[i] * (double)x[i];
  float s = (float)(1.0 / sqrt(ss / (double)(n ? n : 1) + (double)eps));
  __m256 sv = _mm256_set1_ps(s);
  for (i = 0; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), sv),
                                          _mm256_loadu_ps(weight + i)));
  for (; i < n; ++i) y[i] = x[i] * s * weight[i];
}

void swiglu(float* gate, const float* up, size_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 g = _mm256_loadu_ps(gate + i);
    __m256 e = exp_ps(_mm256_xor_ps(g, sign));
    __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) {
    float g = gate[i];
    gate[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

void kv_store(uint32_t format, void* dst, const float* src, size_t n) {
  if (format != KV_F16) {
    scalar::kv_store(format, dst, src, n);
    return;
  }
  uint16_t* d = (uint16_t*)dst;
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i*)(d + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) d[i] = f32_to_f16(src[i]);
}

namespace {

// Scores, softmax update and V accumulation for R rows over one run of at
// most ATTN_CHUNK_TOKENS keys that lie in one block (contiguous in memory).
template <uint32_t KF, uint32_t VF, int R>
void attn_chunk(const detail::AttnRows& rows, size_t hd, float scale, const uint8_t* kp,
                const uint8_t* vp, uint32_t t, uint32_t n) {
  constexpr size_t ek = elem_bytes(KF), ev = elem_bytes(VF);
  alignas(32) float s[R][detail::ATTN_CHUNK_TOKENS];
  for (uint32_t j = 0; j < n; ++j) {
    const uint8_t* krow = kp + j * hd * ek;
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
    uint32_t j = 0;
    for (; j + C <= n; j += C)
      for (int c = 0; c < C; ++c) {
        __m256 vv = load8<VF>(vp + ((j + c) * hd + d) * ev);
        for (int r = 0; r < R; ++r)
          o[c][r] = _mm256_fmadd_ps(_mm256_set1_ps(s[r][j + c]), vv, o[c][r]);
      }
    for (; j < n; ++j) {
      __m256 vv = load8<VF>(vp + (j * hd + d) * ev);
      for (int r = 0; r < R; ++r) o[0][r] = _mm256_fmadd_ps(_mm256_set1_ps(s[r][j]), vv, o[0][r]);
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
  const KvLayout& L = *a.layout;
  const size_t hd = L.head_dim;
  const size_t koff = kv_k_offset(L, a.layer, kv_head), voff = kv_v_offset(L, a.layer, kv_head);
  uint32_t t_max = 0;
  for (int r = 0; r < R; ++r) t_max = rows.t_end[r] > t_max ? rows.t_end[r] : t_max;
  const uint32_t bt = L.block_tokens;
  // The next chunk's keys and values sit in another block, far away: fetch
  // them while this chunk computes (hardware prefetchers stop at pages).
  auto prefetch = [&](uint32_t t) {
    if (t >= t_max) return;
    const uint32_t slot = t % bt;
    uint32_t n = bt - slot;
    if (n > t_max - t) n = t_max - t;
    if (n > detail::ATTN_CHUNK_TOKENS) n = detail::ATTN_CHUNK_TOKENS;
    const uint8_t* blk = a.blocks[t / bt];
    const uint8_t* kp = blk + koff + slot * hd * elem_bytes(KF);
    const uint8_t* vp = blk + voff + slot * hd * elem_bytes(VF);
    for (size_t o = 0; o < n * hd * elem_bytes(KF); o += 64) _mm_prefetch((const char*)kp + o, _MM_HINT_T0);
    for (size_t o = 0; o < n * hd * elem_bytes(VF); o += 64) _mm_prefetch((const char*)vp + o, _MM_HINT_T0);
  };
  for (uint32_t t = rows.t0; t < t_max;) {
    const uint32_t slot = t % bt;
    uint32_t n = bt - slot;
    if (n > t_max - t) n = t_max - t;
    if (n > detail::ATTN_CHUNK_TOKENS) n = detail::ATTN_CHUNK_TOKENS;
    const uint8_t* blk = a.blocks[t / bt];
    prefetch(t + n);
    attn_chunk<KF, VF, R>(rows, hd, a.scale, blk + koff + slot * hd * elem_bytes(KF),
                          blk + voff + slot * hd * elem_bytes(VF), t, n);
    t += n;
  }
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
