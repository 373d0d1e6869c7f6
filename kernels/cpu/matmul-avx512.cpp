// AVX-512 matrix products for every weight type: a streaming dot product per
// row for decode (one activation row) and a register-blocked tile for prefill.
#include <string.h>

// GCC 12's AVX-512 intrinsics fill unused lanes from a self-initialized
// variable, which -Wuninitialized reports in every caller.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "cpu-kernels-impl.h"

namespace kvrt_k {
namespace avx512 {

namespace {

template <uint32_t WT>
constexpr size_t elem_bytes() {
  return WT == W_F32 ? 4 : 2;
}

// 16 weights of a float format at p, as f32.
template <uint32_t WT>
inline __m512 load16(const uint8_t* p) {
  if constexpr (WT == W_F32) {
    return _mm512_loadu_ps(p);
  } else if constexpr (WT == W_F16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
  } else {
    __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
  }
}

// The first lanes of `mask` of the same; masked-off lanes are 0 and their
// bytes are never read, so a row's tail needs no scalar loop.
template <uint32_t WT>
inline __m512 load16_mask(const uint8_t* p, __mmask16 mask) {
  if constexpr (WT == W_F32) {
    return _mm512_maskz_loadu_ps(mask, p);
  } else if constexpr (WT == W_F16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p));
  } else {
    __m512i u = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
  }
}

inline __mmask16 tail_mask(size_t n) { return (__mmask16)((1u << n) - 1u); }

inline float q8_scale(const uint8_t* blk) {
  uint16_t h;
  memcpy(&h, blk, 2);
  return _cvtsh_ss(h);
}

// 16 int8 quants at p as f32.
inline __m512 q8_16(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}

// Decode: W row . x, for the rows dot_rows4 leaves (fewer than four);
// four accumulators hide the FMA latency.
template <uint32_t WT>
float dot_row(const uint8_t* w, size_t k, const float* x) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  if constexpr (WT == W_Q8_0) {
    const size_t nb = k / Q8_0_BLOCK;
    size_t b = 0;
    // Sum q * x over each block, then scale once per block.
    for (; b + 2 <= nb; b += 2) {
      const uint8_t* blk = w + b * sizeof(BlockQ8_0);
      const float* xb = x + b * Q8_0_BLOCK;
      __m512 s0 = _mm512_mul_ps(q8_16(blk + 2), _mm512_loadu_ps(xb));
      __m512 s1 = _mm512_mul_ps(q8_16(blk + 18), _mm512_loadu_ps(xb + 16));
      __m512 t0 = _mm512_mul_ps(q8_16(blk + 36), _mm512_loadu_ps(xb + 32));
      __m512 t1 = _mm512_mul_ps(q8_16(blk + 52), _mm512_loadu_ps(xb + 48));
      a0 = _mm512_fmadd_ps(_mm512_set1_ps(q8_scale(blk)), _mm512_add_ps(s0, s1), a0);
      a1 = _mm512_fmadd_ps(_mm512_set1_ps(q8_scale(blk + 34)), _mm512_add_ps(t0, t1), a1);
    }
    if (b < nb) {
      const uint8_t* blk = w + b * sizeof(BlockQ8_0);
      const float* xb = x + b * Q8_0_BLOCK;
      __m512 s0 = _mm512_mul_ps(q8_16(blk + 2), _mm512_loadu_ps(xb));
      s0 = _mm512_fmadd_ps(q8_16(blk + 18), _mm512_loadu_ps(xb + 16), s0);
      a2 = _mm512_mul_ps(_mm512_set1_ps(q8_scale(blk)), s0);
    }
  } else {
    constexpr size_t eb = elem_bytes<WT>();
    size_t j = 0;
    for (; j + 64 <= k; j += 64) {
      const uint8_t* p = w + j * eb;
      a0 = _mm512_fmadd_ps(load16<WT>(p), _mm512_loadu_ps(x + j), a0);
      a1 = _mm512_fmadd_ps(load16<WT>(p + 16 * eb), _mm512_loadu_ps(x + j + 16), a1);
      a2 = _mm512_fmadd_ps(load16<WT>(p + 32 * eb), _mm512_loadu_ps(x + j + 32), a2);
      a3 = _mm512_fmadd_ps(load16<WT>(p + 48 * eb), _mm512_loadu_ps(x + j + 48), a3);
    }
    for (; j + 16 <= k; j += 16)
      a0 = _mm512_fmadd_ps(load16<WT>(w + j * eb), _mm512_loadu_ps(x + j), a0);
    if (j < k) {
      const __mmask16 mk = tail_mask(k - j);
      a1 = _mm512_fmadd_ps(load16_mask<WT>(w + j * eb, mk), _mm512_maskz_loadu_ps(mk, x + j), a1);
    }
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// Decode, four rows at once: rows w, w + stride, w + 2 stride, w + 3 stride
// (a quarter of the thread's rows apart) into y[0], y[ys], y[2 ys], y[3 ys].
// One row at a time is one sequential stream, and a core reaches its read
// bandwidth from memory only with several streams in flight: a decode
// step's products take 0.8-0.9x the time they took row by row, about the
// time of only reading their weights (docs/benchmarks.md, "Matrix products
// alone"). Each x vector serves four rows.
template <uint32_t WT>
void dot_rows4(const uint8_t* w, size_t stride, size_t k, const float* x, float* y, size_t ys) {
  const uint8_t* w1 = w + stride;
  const uint8_t* w2 = w1 + stride;
  const uint8_t* w3 = w2 + stride;
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  if constexpr (WT == W_Q8_0) {
    const size_t nb = k / Q8_0_BLOCK;
    for (size_t b = 0; b < nb; ++b) {
      const size_t o = b * sizeof(BlockQ8_0);
      const __m512 x0 = _mm512_loadu_ps(x + b * Q8_0_BLOCK);
      const __m512 x1 = _mm512_loadu_ps(x + b * Q8_0_BLOCK + 16);
      const __m512 s0 = _mm512_fmadd_ps(q8_16(w + o + 18), x1, _mm512_mul_ps(q8_16(w + o + 2), x0));
      const __m512 s1 = _mm512_fmadd_ps(q8_16(w1 + o + 18), x1, _mm512_mul_ps(q8_16(w1 + o + 2), x0));
      const __m512 s2 = _mm512_fmadd_ps(q8_16(w2 + o + 18), x1, _mm512_mul_ps(q8_16(w2 + o + 2), x0));
      const __m512 s3 = _mm512_fmadd_ps(q8_16(w3 + o + 18), x1, _mm512_mul_ps(q8_16(w3 + o + 2), x0));
      a0 = _mm512_fmadd_ps(_mm512_set1_ps(q8_scale(w + o)), s0, a0);
      a1 = _mm512_fmadd_ps(_mm512_set1_ps(q8_scale(w1 + o)), s1, a1);
      a2 = _mm512_fmadd_ps(_mm512_set1_ps(q8_scale(w2 + o)), s2, a2);
      a3 = _mm512_fmadd_ps(_mm512_set1_ps(q8_scale(w3 + o)), s3, a3);
    }
  } else {
    constexpr size_t eb = elem_bytes<WT>();
    size_t j = 0;
    for (; j + 16 <= k; j += 16) {
      const __m512 xv = _mm512_loadu_ps(x + j);
      a0 = _mm512_fmadd_ps(load16<WT>(w + j * eb), xv, a0);
      a1 = _mm512_fmadd_ps(load16<WT>(w1 + j * eb), xv, a1);
      a2 = _mm512_fmadd_ps(load16<WT>(w2 + j * eb), xv, a2);
      a3 = _mm512_fmadd_ps(load16<WT>(w3 + j * eb), xv, a3);
    }
    if (j < k) {
      const __mmask16 mk = tail_mask(k - j);
      const __m512 xv = _mm512_maskz_loadu_ps(mk, x + j);
      a0 = _mm512_fmadd_ps(load16_mask<WT>(w + j * eb, mk), xv, a0);
      a1 = _mm512_fmadd_ps(load16_mask<WT>(w1 + j * eb, mk), xv, a1);
      a2 = _mm512_fmadd_ps(load16_mask<WT>(w2 + j * eb, mk), xv, a2);
      a3 = _mm512_fmadd_ps(load16_mask<WT>(w3 + j * eb, mk), xv, a3);
    }
  }
  y[0] = _mm512_reduce_add_ps(a0);
  y[ys] = _mm512_reduce_add_ps(a1);
  y[2 * ys] = _mm512_reduce_add_ps(a2);
  y[3 * ys] = _mm512_reduce_add_ps(a3);
}

// Prefill: RB weight rows times MB activation rows, all sums in registers;
// each converted weight vector serves MB rows, each x vector RB rows.
template <uint32_t WT, int RB, int MB>
void tile(const uint8_t* w, size_t rb, size_t k, const float* x, size_t ldx, float* y,
          size_t ldy) {
  __m512 acc[RB][MB];
  for (int i = 0; i < RB; ++i)
    for (int m = 0; m < MB; ++m) acc[i][m] = _mm512_setzero_ps();
  if constexpr (WT == W_Q8_0) {
    const size_t nb = k / Q8_0_BLOCK;
    for (size_t b = 0; b < nb; ++b) {
      __m512 d[RB];
      for (int i = 0; i < RB; ++i) d[i] = _mm512_set1_ps(q8_scale(w + i * rb + b * sizeof(BlockQ8_0)));
      for (int h = 0; h < 2; ++h) {
        __m512 wv[RB];
        for (int i = 0; i < RB; ++i)
          wv[i] = _mm512_mul_ps(d[i], q8_16(w + i * rb + b * sizeof(BlockQ8_0) + 2 + 16 * h));
        const size_t j = b * Q8_0_BLOCK + 16 * h;
        for (int m = 0; m < MB; ++m) {
          const __m512 xv = _mm512_loadu_ps(x + m * ldx + j);
          for (int i = 0; i < RB; ++i) acc[i][m] = _mm512_fmadd_ps(wv[i], xv, acc[i][m]);
        }
      }
    }
  } else {
    constexpr size_t eb = elem_bytes<WT>();
    size_t j = 0;
    for (; j + 16 <= k; j += 16) {
      __m512 wv[RB];
      for (int i = 0; i < RB; ++i) wv[i] = load16<WT>(w + i * rb + j * eb);
      for (int m = 0; m < MB; ++m) {
        const __m512 xv = _mm512_loadu_ps(x + m * ldx + j);
        for (int i = 0; i < RB; ++i) acc[i][m] = _mm512_fmadd_ps(wv[i], xv, acc[i][m]);
      }
    }
    if (j < k) {
      const __mmask16 mk = tail_mask(k - j);
      __m512 wv[RB];
      for (int i = 0; i < RB; ++i) wv[i] = load16_mask<WT>(w + i * rb + j * eb, mk);
      for (int m = 0; m < MB; ++m) {
        const __m512 xv = _mm512_maskz_loadu_ps(mk, x + m * ldx + j);
        for (int i = 0; i < RB; ++i) acc[i][m] = _mm512_fmadd_ps(wv[i], xv, acc[i][m]);
      }
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int m = 0; m < MB; ++m) y[m * ldy + i] = _mm512_reduce_add_ps(acc[i][m]);
}

template <uint32_t WT, int RB>
void tile_rows(const uint8_t* w, size_t rb, size_t k, const float* x, size_t ldx,
               size_t n_rows_x, float* y, size_t ldy) {
  // RB * MB accumulators + RB weights + 1 x vector fit the 32 registers.
  constexpr int MB = RB == 4 ? 6 : 8;
  size_t m = 0;
  for (; m + MB <= n_rows_x; m += MB)
    tile<WT, RB, MB>(w, rb, k, x + m * ldx, ldx, y + m * ldy, ldy);
  const float* xm = x + m * ldx;
  float* ym = y + m * ldy;
  switch (n_rows_x - m) {
    case 1: tile<WT, RB, 1>(w, rb, k, xm, ldx, ym, ldy); break;
    case 2: tile<WT, RB, 2>(w, rb, k, xm, ldx, ym, ldy); break;
    case 3: tile<WT, RB, 3>(w, rb, k, xm, ldx, ym, ldy); break;
    case 4: tile<WT, RB, 4>(w, rb, k, xm, ldx, ym, ldy); break;
    case 5: tile<WT, RB, 5>(w, rb, k, xm, ldx, ym, ldy); break;
    case 6:
      if constexpr (MB > 6) tile<WT, RB, 6>(w, rb, k, xm, ldx, ym, ldy);
      break;
    case 7:
      if constexpr (MB > 7) tile<WT, RB, 7>(w, rb, k, xm, ldx, ym, ldy);
      break;
    default: break;
  }
}

template <uint32_t WT>
void matmul_t(const void* w, size_t k, size_t r0, size_t r1, const float* x, size_t ldx,
              size_t n_rows_x, float* y, size_t ldy) {
  const size_t rb = weight_row_bytes(WT, k);
  const uint8_t* base = (const uint8_t*)w;
  size_t r = r0;
  if (n_rows_x == 1) {
    const size_t q = (r1 - r0) / 4;
    for (; r < r0 + q; ++r) dot_rows4<WT>(base + r * rb, q * rb, k, x, y + r, q);
    for (r = r0 + 4 * q; r < r1; ++r) y[r] = dot_row<WT>(base + r * rb, k, x);
    return;
  }
  for (; r + 4 <= r1; r += 4)
    tile_rows<WT, 4>(base + r * rb, rb, k, x, ldx, n_rows_x, y + r, ldy);
  for (; r < r1; ++r) tile_rows<WT, 1>(base + r * rb, rb, k, x, ldx, n_rows_x, y + r, ldy);
}

}  // namespace

void matmul(uint32_t wtype, const void* w, size_t k, size_t r0, size_t r1, const float* x,
            size_t ldx, size_t n_rows_x, float* y, size_t ldy, float* scratch) {
  (void)scratch;
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

}  // namespace avx512
}  // namespace kvrt_k
