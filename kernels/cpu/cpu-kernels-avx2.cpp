// AVX2 + FMA + F16C kernels: register-blocked matmul for every weight type,
// rmsnorm, SwiGLU and f16 KV stores (attention is in attention-avx2.cpp).
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../common/fp16.h"
#include "cpu-kernels-impl.h"
#include "simd-avx2.h"

namespace kvrt_k {
namespace avx2 {

using namespace simd;

namespace {

// RB weight rows times MB activation rows: each converted weight vector is
// used MB times and each activation vector RB times, all sums in registers.
// U independent accumulators per output break the FMA latency chain when
// RB * MB is small (the M = 1 decode case, which must stream at memory speed).
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

// Prefill products (many activation rows) of f16, bf16 and Q8_0 weights: a
// panel of kPanelRows weight rows is converted to f32 and packed k-major, kPackK
// weights of each row at a time (16 KiB, in L1), and an MB x 16 block of
// outputs is accumulated in 2 * MB registers from one broadcast activation
// and two panel vectors per weight column: no conversion per FMA, no
// horizontal sums, and 2 + MB loads per 2 * MB FMAs, where the dot-product
// tile (above) converts each weight vector for 3 activation rows and ends
// every output with a horizontal sum. The output block is stored after the
// first kPackK weights and added to after each further kPackK.
constexpr size_t kPanelRows = 16;
constexpr size_t kPackK = MATMUL_PACK_FLOATS / kPanelRows;
static_assert(kPackK % Q8_0_BLOCK == 0, "a chunk of the panel holds whole Q8_0 blocks");
// Activation rows from which a product takes the packed path.
constexpr size_t kPackMinRows = 16;

// Weights [j, j + 8) of a row as f32 (for Q8_0, j is a multiple of 8 and
// the 8 lie in one block).
template <uint32_t WT>
inline __m256 load8_at(const uint8_t* row, size_t j) {
  if constexpr (WT == W_Q8_0) {
    const uint8_t* blk = row + (j / Q8_0_BLOCK) * sizeof(BlockQ8_0);
    uint16_t h;
    memcpy(&h, blk, 2);
    const __m128i q = _mm_loadl_epi64((const __m128i*)(blk + 2 + j % Q8_0_BLOCK));
    return _mm256_mul_ps(_mm256_set1_ps(f16_to_f32(h)),
                         _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
  } else {
    return load8<WT>(row + j * elem_bytes(WT));
  }
}

// pk[(j - j0) * 16 + i] = W[i][j] as f32 for rows i < 16 and j in [j0, j1)
// (for Q8_0, j0 and j1 are multiples of its block).
template <uint32_t WT>
void pack_panel(const uint8_t* w, size_t row_bytes, size_t j0, size_t j1, float* pk) {
  size_t j = j0;
  for (; j + 8 <= j1; j += 8)
    for (size_t h = 0; h < kPanelRows; h += 8) {
      __m256 v[8];
      for (size_t i = 0; i < 8; ++i) v[i] = load8_at<WT>(w + (h + i) * row_bytes, j);
      transpose8(v);
      for (size_t c = 0; c < 8; ++c) _mm256_store_ps(pk + (j - j0 + c) * kPanelRows + h, v[c]);
    }
  if constexpr (WT != W_Q8_0)
    for (; j < j1; ++j)
      for (size_t i = 0; i < kPanelRows; ++i)
        pk[(j - j0) * kPanelRows + i] = load1<WT>(w + i * row_bytes + j * elem_bytes(WT));
}

// y[m][0, 16) (+)= sum over n columns of pk[j][0, 16) * x[m][j], m < MB.
template <int MB>
void panel_block(const float* pk, size_t n, const float* x, size_t ldx, float* y, size_t ldy,
                 bool add) {
  // Two arrays, loops unrolled: kept as one array of pairs, GCC stored
  // every accumulator to the stack once per column (half the speed).
  __m256 c0[MB], c1[MB];
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m) c0[m] = c1[m] = _mm256_setzero_ps();
  for (size_t j = 0; j < n; ++j) {
    const __m256 w0 = _mm256_load_ps(pk + j * kPanelRows);
    const __m256 w1 = _mm256_load_ps(pk + j * kPanelRows + 8);
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      const __m256 xv = _mm256_broadcast_ss(x + m * ldx + j);
      c0[m] = _mm256_fmadd_ps(w0, xv, c0[m]);
      c1[m] = _mm256_fmadd_ps(w1, xv, c1[m]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m) {
    float* o = y + m * ldy;
    if (add) {
      c0[m] = _mm256_add_ps(c0[m], _mm256_loadu_ps(o));
      c1[m] = _mm256_add_ps(c1[m], _mm256_loadu_ps(o + 8));
    }
    _mm256_storeu_ps(o, c0[m]);
    _mm256_storeu_ps(o + 8, c1[m]);
  }
}

// Rows [r, r + 16) of y for every activation row, from the packed panel.
template <uint32_t WT>
void panel_rows(const uint8_t* w, size_t row_bytes, size_t k, const float* x, size_t ldx,
                size_t n_rows_x, float* y, size_t ldy, float* pk) {
  constexpr int MB = 6;
  for (size_t j0 = 0; j0 < k; j0 += kPackK) {
    const size_t j1 = j0 + kPackK < k ? j0 + kPackK : k, n = j1 - j0;
    const bool add = j0 > 0;
    pack_panel<WT>(w, row_bytes, j0, j1, pk);
    size_t m = 0;
    for (; m + MB <= n_rows_x; m += MB)
      panel_block<MB>(pk, n, x + m * ldx + j0, ldx, y + m * ldy, ldy, add);
    const float* xm = x + m * ldx + j0;
    float* ym = y + m * ldy;
    switch (n_rows_x - m) {
      case 5: panel_block<5>(pk, n, xm, ldx, ym, ldy, add); break;
      case 4: panel_block<4>(pk, n, xm, ldx, ym, ldy, add); break;
      case 3: panel_block<3>(pk, n, xm, ldx, ym, ldy, add); break;
      case 2: panel_block<2>(pk, n, xm, ldx, ym, ldy, add); break;
      case 1: panel_block<1>(pk, n, xm, ldx, ym, ldy, add); break;
      default: break;
    }
  }
}

template <uint32_t WT>
void matmul_t(const void* w, size_t k, size_t r0, size_t r1, const float* x, size_t ldx,
              size_t n_rows_x, float* y, size_t ldy, float* scratch) {
  const size_t rb = weight_row_bytes(WT, k);
  const uint8_t* base = (const uint8_t*)w;
  size_t r = r0;
  // f32 weights need no conversion, and their dot-product tiles measured as
  // fast as the packed panel.
  if constexpr (WT != W_F32) {
    if (n_rows_x >= kPackMinRows && k > 0) {
      // The panel must be 32-byte aligned for its vector loads.
      float* pk = (float*)(((uintptr_t)scratch + 31) & ~(uintptr_t)31);
      for (; r + kPanelRows <= r1; r += kPanelRows)
        panel_rows<WT>(base + r * rb, rb, k, x, ldx, n_rows_x, y + r, ldy, pk);
    }
  }
  if (n_rows_x == 1) {
    // Decode: four rows a quarter of the range apart at once, so four
    // streams are in flight (see dot_rows4 in matmul-avx512.cpp); the rows
    // left over go one at a time.
    const size_t q = (r1 - r0) / 4;
    for (; r < r0 + q; ++r) {
      float t[4];
      tile<WT, 4, 1, 1>(base + r * rb, q * rb, k, x, ldx, t, 1);
      for (int i = 0; i < 4; ++i) y[r + i * q] = t[i];
    }
    for (r = r0 + 4 * q; r < r1; ++r) tile<WT, 1, 1, 4>(base + r * rb, rb, k, x, ldx, y + r, ldy);
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
    case W_F32: matmul_t<W_F32>(w, k, r0, r1, x, ldx, n_rows_x, y, ldy, scratch); break;
    case W_F16: matmul_t<W_F16>(w, k, r0, r1, x, ldx, n_rows_x, y, ldy, scratch); break;
    case W_BF16: matmul_t<W_BF16>(w, k, r0, r1, x, ldx, n_rows_x, y, ldy, scratch); break;
    case W_Q8_0:
      if (weight_row_bytes(W_Q8_0, k) != 0 || k == 0)
        matmul_t<W_Q8_0>(w, k, r0, r1, x, ldx, n_rows_x, y, ldy, scratch);
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

// vcvtph2ps is exact like f16_to_f32, subnormals included; it keeps a NaN's
// payload but sets its quiet bit, where f16_to_f32 keeps a signalling NaN
// signalling (a NaN either way; the KV quantizers treat every NaN alike).
void kv_load(uint32_t format, float* dst, const void* src, size_t n) {
  if (format != KV_F16) {
    scalar::kv_load(format, dst, src, n);
    return;
  }
  const uint16_t* s = (const uint16_t*)src;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(s + i))));
  if (i < n) scalar::kv_load(format, dst + i, s + i, n - i);
}

}  // namespace avx2
}  // namespace kvrt_k
