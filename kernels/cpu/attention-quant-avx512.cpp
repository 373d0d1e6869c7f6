// The AVX-512 VNNI rounded-query step of attention over q8/q4 blocks
// (QAttnOps::block_q), with q4 values as bf16 dot products where the CPU
// has AVX-512 BF16 and VBMI. The other inner loops are the AVX2 table's,
// which this one extends; on AVX-512 CPUs without VNNI the AVX2 step serves.
#include <immintrin.h>
#include <math.h>

#include "../common/kv-quant.h"
#include "attention-quant.h"
#include "cpu-kernels-impl.h"
#include "simd-avx512.h"

namespace kvrt_k {

namespace {

using namespace avx512_simd;

// ---- VNNI step: integer key scores -------------------------------------
// Keys are scored with vpdpbusd (64 u8 x s8 products per instruction)
// against the query, folded with the block's key scales and rounded per
// 32-channel group to 15 bits held as two bytes (norm_query, prep_query),
// so the key side costs a fraction of the float FMAs.
// The cache keeps the row layout of kv-quant.h: 16 rows of codes are
// transposed in registers into vectors holding one 4-byte code group of
// each of 16 tokens, which gives 16 token scores per instruction and no
// horizontal sums. Values stay float: codes are converted per token and
// accumulated into 4 heads at once, the per-token scale folded into the
// softmax weight. Reductions over several vectors are done together.
//
// The functions that use vpdpbusd carry the target attribute (the file is
// built for AVX-512 F/BW/VL/DQ only; the table picks this step when the CPU
// has VNNI); helpers without it inline into them.
#define KVRT_VNNI __attribute__((target("avx512vnni")))
// The q4 value pass as bf16 dot products (below) takes vdpbf16ps and the
// byte permutes of AVX-512 VBMI; the table picks it where the CPU has both.
#define KVRT_BF16 __attribute__((target("avx512vnni,avx512bf16,avx512vbmi")))

// Channels per head of the rounded query: head_dim up to a whole 32-channel
// group (the rounding group); the padding holds zeros.
constexpr uint32_t qpad(uint32_t hd) { return (hd + 31) & ~31u; }

// Rows of codes per transposed run (one score lane per row).
constexpr uint32_t kVRows = 16;
constexpr uint32_t kMaxG32 = kQAttnMaxHeadDim / 32;

// One transpose stage: swaps bit B of the vector index with bit B of the
// lane index, for every pair of the 8 vectors differing in bit B.
template <int B>
struct SwapIdx {
  int32_t a[16], b[16];
  constexpr SwapIdx() : a(), b() {
    for (int l = 0; l < 16; ++l) {
      const bool hi = (l >> B) & 1;
      a[l] = hi ? 16 + (l ^ (1 << B)) : l;
      b[l] = hi ? 16 + l : (l ^ (1 << B));
    }
  }
};
template <int B>
inline void swap_bit(__m512i* z) {
  alignas(64) static constexpr SwapIdx<B> idx{};
  const __m512i xa = _mm512_loadu_si512(idx.a), xb = _mm512_loadu_si512(idx.b);
  for (int i = 0; i < 8; ++i) {
    if (i & (1 << B)) continue;
    const __m512i a = z[i], b = z[i | (1 << B)];
    z[i] = _mm512_permutex2var_epi32(a, xa, b);
    z[i | (1 << B)] = _mm512_permutex2var_epi32(a, xb, b);
  }
}

// 32 code bytes from byte `off` of rows 0..15 (rows past n repeat row n - 1)
// -> z[j] lane t = bytes 4j..4j+3 of row t. Vector z[i] starts as rows i
// (low half) and i + 8 (high half), so three bit swaps leave lane = row.
inline void transpose_rows(const uint8_t* codes, size_t rb, uint32_t n, size_t off, __m512i* z) {
  for (uint32_t i = 0; i < 8; ++i) {
    const uint32_t r0 = i < n ? i : n - 1, r1 = i + 8 < n ? i + 8 : n - 1;
    const __m256i lo = _mm256_loadu_si256((const __m256i*)(codes + r0 * rb + off));
    const __m256i hi = _mm256_loadu_si256((const __m256i*)(codes + r1 * rb + off));
    z[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  }
  swap_bit<0>(z);
  swap_bit<1>(z);
  swap_bit<2>(z);
}

// Key code vectors kc[m] (m < hd / 4): lane t = the 4 codes of token t that
// meet dword m of each part (hi, lo) of the rounded query. q8: channels
// 4m..4m+3 (signed). q4: the bytes of channels 8j..8j+7 split into low
// nibbles (m = 2j: channels 8j, 8j+2, 8j+4, 8j+6) and high nibbles (m = 2j
// + 1: the odd channels); the query is permuted to match.
template <uint32_t KF>
inline void key_vectors(const uint8_t* codes, size_t rb, uint32_t n, uint32_t hd, __m512i* kc) {
  const uint32_t row = (uint32_t)kvq_row_bytes(KF, hd);
  for (uint32_t off = 0; off < row; off += 32) {
    __m512i z[8];
    transpose_rows(codes, rb, n, off, z);
    if constexpr (KF == kKvqQ8) {
      for (int j = 0; j < 8; ++j) kc[off / 4 + j] = z[j];
    } else {
      const __m512i m4 = _mm512_set1_epi8(0x0f);
      for (int j = 0; j < 8; ++j) {
        kc[off / 2 + 2 * j] = _mm512_and_si512(z[j], m4);
        kc[off / 2 + 2 * j + 1] = _mm512_and_si512(_mm512_srli_epi16(z[j], 4), m4);
      }
    }
  }
}

// Lane 4k of the result = max (Max) or sum of the 16 lanes of v[k], lane
// 4k + 1 that of v[4 + k] (k < 4): 23 shuffles and operations for 8
// reductions. lane8(i) gives the lane of v[i].
template <bool Max>
inline __m512 red_op(__m512 a, __m512 b) {
  if constexpr (Max) return _mm512_max_ps(a, b);
  return _mm512_add_ps(a, b);
}
template <bool Max>
inline __m512 reduce8(const __m512* v) {
  __m512 r[4], s[2];
  for (int i = 0; i < 4; ++i)  // 128-bit lanes: [v2i: L0.L2, L1.L3, v2i+1: L0.L2, L1.L3]
    r[i] = red_op<Max>(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                       _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 2; ++i)  // 128-bit lane k: v[4i + k] down to 4 floats
    s[i] = red_op<Max>(_mm512_shuffle_f32x4(r[2 * i], r[2 * i + 1], 0x88),
                       _mm512_shuffle_f32x4(r[2 * i], r[2 * i + 1], 0xDD));
  const __m512 t = red_op<Max>(_mm512_unpacklo_ps(s[0], s[1]), _mm512_unpackhi_ps(s[0], s[1]));
  return red_op<Max>(t, _mm512_permute_ps(t, 0x4E));
}
constexpr uint32_t lane8(uint32_t i) { return i < 4 ? 4 * i : 4 * (i - 4) + 1; }

// Reduces nv vectors in batches of 8 (padded with the neutral element).
template <bool Max>
inline void reduce_n(const __m512* v, uint32_t nv, float* out) {
  for (uint32_t i = 0; i < nv; i += 8) {
    __m512 b[8];
    for (uint32_t j = 0; j < 8; ++j)
      b[j] = i + j < nv ? v[i + j] : (Max ? _mm512_set1_ps(-INFINITY) : _mm512_setzero_ps());
    alignas(64) float f[16];
    _mm512_store_ps(f, reduce8<Max>(b));
    for (uint32_t j = 0; j < 8 && i + j < nv; ++j) out[i + j] = f[lane8(j)];
  }
}

// The query is rounded to 15-bit integers per 32-channel group G, qi =
// 128 * hi + lo (hi signed, lo in 0..127), in two steps:
// - per call (norm_query): each head's query scaled so that the largest
//   |q_c| of the group is kQMax, qn = q * (kQMax / max|q|), and dmq = max|q|
//   * scale / kQMax;
// - per block (prep_query): the key scales of the group divided by their
//   largest, r_c = s_c * (1 / max s), and qi_c = round(qn_c * r_c), so that
//   |qi| <= kQMax without a maximum per head, and the score is
//   s_t = bias + sum_G d_G * (sum_c qi_c code_tc), d_G = dmq * max s.
// The rounding step d_G is max|q| * max s / kQMax, at least that of the
// exact product's maximum (by the factor max|q| max s / max|q s|), which
// 15 bits leave far below the error of the key codes (docs/quantization.md).
// Bytes per head: hi in [0, hp), lo in [hp, 2 hp) (hp = qpad(head_dim)). q8
// keys are the signed operand of vpdpbusd, so hi is stored as hi + 128; q4
// keys (nibbles) are the unsigned one, and both bytes are stored signed, in
// the order of key_vectors (each 8 bytes: even channels, then odd).
constexpr float kQMax = 16383.0f;
constexpr uint32_t kQBytes = 2;  // query bytes per channel

template <uint32_t NG>
inline void norm_query(const float* q, float scale, uint32_t hd, float* qn, float* dmq) {
  const uint32_t hp = qpad(hd), ng32 = hp / 32, np = NG * ng32;
  for (uint32_t p0 = 0; p0 < np; p0 += 8) {  // (head, group) pairs, 8 maxima reduced at a time
    __m512 q0[8], q1[8], mx[8];
    for (uint32_t j = 0; j < 8; ++j) {
      mx[j] = q0[j] = q1[j] = _mm512_setzero_ps();
      if (p0 + j >= np) continue;
      const uint32_t g = (p0 + j) / ng32, c = 32 * ((p0 + j) % ng32);
      const __mmask16 up = c + 32 <= hd ? 0xffff : 0;  // the group's channels 16..31 exist
      q0[j] = _mm512_loadu_ps(q + (size_t)g * hd + c);
      q1[j] = _mm512_maskz_loadu_ps(up, q + (size_t)g * hd + c + 16);
      mx[j] = _mm512_max_ps(_mm512_abs_ps(q0[j]), _mm512_abs_ps(q1[j]));
    }
    const __m512 amax = reduce8<true>(mx);
    alignas(64) float f[16], dm[16];
    _mm512_store_ps(f, _mm512_maskz_div_ps(_mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_GT_OQ),
                                           _mm512_set1_ps(kQMax), amax));
    _mm512_store_ps(dm, _mm512_mul_ps(_mm512_mul_ps(amax, _mm512_set1_ps(scale)),
                                      _mm512_set1_ps(1.0f / kQMax)));
    for (uint32_t j = 0; j < 8 && p0 + j < np; ++j) {
      const uint32_t g = (p0 + j) / ng32, c = 32 * ((p0 + j) % ng32);
      const __m512 fj = _mm512_set1_ps(f[lane8(j)]);
      _mm512_storeu_ps(qn + (size_t)g * hp + c, _mm512_mul_ps(q0[j], fj));
      _mm512_storeu_ps(qn + (size_t)g * hp + c + 16, _mm512_mul_ps(q1[j], fj));
      dmq[p0 + j] = dm[lane8(j)];
    }
  }
}

// The rounded query of NG heads against one block (qb, d as above, [g][G]);
// q4: bias[g] = scale * sum_c q_c kmin_c.
template <uint32_t KF, uint32_t NG>
inline void prep_query(const float* q, const float* qn, const float* dmq, float scale,
                       const uint16_t* ksc, uint32_t hd, uint8_t* qb, float* dq, float* bias) {
  const uint32_t hp = qpad(hd), ng32 = hp / 32;
  // After the packs, dword 4L + i of the vector holds (L < 4): i = 0 hi of
  // channels 4L.., 1 hi of 16 + 4L.., 2 lo of 4L.., 3 lo of 16 + 4L..
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const long long x80 = (long long)0x8080808080808080ull;
  const __m512i flip = _mm512_setr_epi64(x80, x80, x80, x80, 0, 0, 0, 0);  // the hi bytes' + 128
  const __m512i odd_even =
      _mm512_broadcast_i32x4(_mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15));
  __m512 bs[8];
  for (uint32_t g = 0; g < 8; ++g) bs[g] = _mm512_setzero_ps();
  for (uint32_t G = 0; G < ng32; ++G) {
    const uint32_t c = 32 * G;
    const __mmask16 up = c + 32 <= hd ? 0xffff : 0;
    const __m512 k0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(ksc + c)));
    const __m512 k1 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(up, ksc + c + 16));
    // Scales are >= 0 (-0 for an all-zero channel).
    const float ms = _mm512_reduce_max_ps(_mm512_max_ps(k0, k1));
    const __m512 inv = _mm512_set1_ps(ms > 0.0f ? 1.0f / ms : 0.0f);
    const __m512 r0 = _mm512_mul_ps(k0, inv), r1 = _mm512_mul_ps(k1, inv);
    __m512 m0 = _mm512_setzero_ps(), m1 = m0;
    if constexpr (KF == kKvqQ4) {
      m0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(ksc + hd + c)));
      m1 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(up, ksc + hd + c + 16));
    }
    for (uint32_t g = 0; g < NG; ++g) {
      dq[g * ng32 + G] = dmq[g * ng32 + G] * ms;
      const float* qg = qn + (size_t)g * hp + c;
      const __m512i ia = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(qg), r0));
      const __m512i ib = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(qg + 16), r1));
      const __m512i w = _mm512_packs_epi32(ia, ib);  // |qi| <= kQMax: no saturation
      const __m512i hl =
          _mm512_packs_epi16(_mm512_srai_epi16(w, 7), _mm512_and_si512(w, _mm512_set1_epi16(0x7f)));
      __m512i b = _mm512_permutexvar_epi32(order, hl);  // hi bytes of channels c.., then lo
      if constexpr (KF == kKvqQ8)
        b = _mm512_xor_si512(b, flip);
      else
        b = _mm512_shuffle_epi8(b, odd_even);
      uint8_t* o = qb + (size_t)g * kQBytes * hp + c;
      _mm256_storeu_si256((__m256i*)o, _mm512_castsi512_si256(b));
      _mm256_storeu_si256((__m256i*)(o + hp), _mm512_extracti64x4_epi64(b, 1));
      if constexpr (KF == kKvqQ4) {
        const __m512 q0 = _mm512_loadu_ps(q + (size_t)g * hd + c);
        const __m512 q1 = _mm512_maskz_loadu_ps(up, q + (size_t)g * hd + c + 16);
        bs[g] = _mm512_fmadd_ps(q1, m1, _mm512_fmadd_ps(q0, m0, bs[g]));
      }
    }
  }
  if constexpr (KF == kKvqQ4) {
    alignas(64) float f[16];
    _mm512_store_ps(f, _mm512_mul_ps(reduce8<false>(bs), _mm512_set1_ps(scale)));
    for (uint32_t g = 0; g < NG; ++g) bias[g] = f[lane8(g)];
  } else {
    for (uint32_t g = 0; g < NG; ++g) bias[g] = 0.0f;
  }
}

// Scores of 16 tokens for K heads over hp = qpad(head_dim) channels: s[k]
// lane t = bias + sum over groups of d * integer dot product, 128 * (hi
// part) + (lo part). q8: the hi products are (hi + 128) * code, so 128 *
// (the group's code sum per token, one more vpdpbusd per code vector, shared
// by the heads) is subtracted.
template <uint32_t KF, int K>
KVRT_VNNI inline void scores_vnni(const __m512i* kc, uint32_t hp, const uint8_t* qb, const float* d,
                        const float* bias, __m512* s) {
  const uint32_t ng32 = hp / 32;
  const size_t qstride = (size_t)kQBytes * hp;
  for (int k = 0; k < K; ++k) s[k] = _mm512_set1_ps(bias[k]);
  for (uint32_t G = 0; G < ng32; ++G) {
    __m512i acc[K], lo[K], col = _mm512_setzero_si512();
    for (int k = 0; k < K; ++k) acc[k] = lo[k] = _mm512_setzero_si512();
    for (uint32_t m = 8 * G; m < 8 * G + 8; ++m) {
      for (int k = 0; k < K; ++k) {
        int32_t wh, wl;
        __builtin_memcpy(&wh, qb + k * qstride + 4 * m, 4);
        __builtin_memcpy(&wl, qb + k * qstride + hp + 4 * m, 4);
        if constexpr (KF == kKvqQ8) {
          acc[k] = _mm512_dpbusd_epi32(acc[k], _mm512_set1_epi32(wh), kc[m]);
          lo[k] = _mm512_dpbusd_epi32(lo[k], _mm512_set1_epi32(wl), kc[m]);
        } else {
          acc[k] = _mm512_dpbusd_epi32(acc[k], kc[m], _mm512_set1_epi32(wh));
          lo[k] = _mm512_dpbusd_epi32(lo[k], kc[m], _mm512_set1_epi32(wl));
        }
      }
      if constexpr (KF == kKvqQ8) col = _mm512_dpbusd_epi32(col, _mm512_set1_epi8((char)0x80), kc[m]);
    }
    for (int k = 0; k < K; ++k) {
      const __m512i hi = KF == kKvqQ8 ? _mm512_sub_epi32(acc[k], col) : acc[k];
      const __m512i v = _mm512_add_epi32(_mm512_slli_epi32(hi, 7), lo[k]);
      s[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(d[k * ng32 + G]), s[k]);
    }
  }
}

// Lane t = f[t * ngv + G] (f holds 16 * ngv floats).
inline __m512 token_lanes(const float* f, uint32_t ngv, uint32_t G) {
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i idx = _mm512_add_epi32(_mm512_mullo_epi32(lanes, _mm512_set1_epi32((int)ngv)),
                                       _mm512_set1_epi32((int)G));
  switch (ngv) {
    case 1: return _mm512_load_ps(f);
    case 2: return _mm512_permutex2var_ps(_mm512_load_ps(f), idx, _mm512_load_ps(f + 16));
    case 4: {
      const __m512 lo = _mm512_permutex2var_ps(_mm512_load_ps(f), idx, _mm512_load_ps(f + 16));
      const __m512 hi = _mm512_permutex2var_ps(_mm512_load_ps(f + 32), idx, _mm512_load_ps(f + 48));
      return _mm512_mask_blend_ps(0xff00, lo, hi);
    }
    default: return _mm512_i32gather_ps(idx, f, 4);
  }
}

// Even/odd channel split of 32 accumulators (q4 values decode a byte into
// an even and an odd channel, so accumulators are kept split in the step).
inline void split_even_odd(__m512* a0, __m512* a1) {
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512 e = _mm512_permutex2var_ps(*a0, ie, *a1), o = _mm512_permutex2var_ps(*a0, io, *a1);
  *a0 = e;
  *a1 = o;
}
inline void join_even_odd(__m512* e, __m512* o) {
  const __m512i i0 = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i i1 = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512 a = _mm512_permutex2var_ps(*e, i0, *o), b = _mm512_permutex2var_ps(*e, i1, *o);
  *e = a;
  *o = b;
}

// The accumulators of K heads over channels [c0, c0 + 16 NV), times
// alpha[k], in the order a pass keeps them. Split: the even and odd
// channels of each 32 apart (q4: a code byte holds one of each); for NV = 1
// (16 channels) with Split1, even channels in lanes 0..7 and odd in 8..15.
template <int K, int NV, bool Split, bool Split1>
inline void acc_in(const float* acc, uint32_t hd, uint32_t c0, const float* alpha, __m512 (*a)[NV]) {
  const __m512i to_split = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  for (int k = 0; k < K; ++k) {
    const __m512 al = _mm512_set1_ps(alpha[k]);
    for (int u = 0; u < NV; ++u)
      a[k][u] = _mm512_mul_ps(al, _mm512_loadu_ps(acc + (size_t)k * hd + c0 + 16 * u));
    if constexpr (Split && NV >= 2)
      for (int u = 0; u < NV; u += 2) split_even_odd(&a[k][u], &a[k][u + 1]);
    if constexpr (Split1 && NV == 1) a[k][0] = _mm512_permutexvar_ps(to_split, a[k][0]);
  }
}
// The inverse of acc_in, after adding the q4 minimum terms mb[k * ngv + G]
// (Q4) to each 32-channel group G.
template <int K, int NV, bool Q4, bool Split1>
inline void acc_out(__m512 (*a)[NV], const float* mb, uint32_t ngv, uint32_t hd, uint32_t c0, float* acc) {
  const __m512i from_split = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  const uint32_t G0 = c0 / 32;
  for (int k = 0; k < K; ++k) {
    if constexpr (Q4 && NV == 1) {
      a[k][0] = _mm512_add_ps(a[k][0], _mm512_set1_ps(mb[k * ngv + G0]));
      if constexpr (Split1) a[k][0] = _mm512_permutexvar_ps(from_split, a[k][0]);
    } else if constexpr (Q4) {
      for (int u = 0; u < NV; u += 2) {
        const __m512 mv = _mm512_set1_ps(mb[k * ngv + G0 + u / 2]);
        a[k][u] = _mm512_add_ps(a[k][u], mv);
        a[k][u + 1] = _mm512_add_ps(a[k][u + 1], mv);
        join_even_odd(&a[k][u], &a[k][u + 1]);
      }
    }
    for (int u = 0; u < NV; ++u) _mm512_storeu_ps(acc + (size_t)k * hd + c0 + 16 * u, a[k][u]);
  }
}

// Value rows of one run of n <= 16 rows: codes of the first row, its
// per-token scales and minimums.
struct VRun {
  const uint8_t* v;
  const uint16_t* sc;
  const uint16_t* mn;
  uint32_t n;
};

// Runs of 16 rows scored before one online-softmax update (64 scores per
// head: one maximum, one rescale of the accumulators).
constexpr uint32_t kMaxRuns = 4;

// acc[k] = alpha[k] * acc[k] + sum over runs r and rows t of
// w[k][r][G][t] * code(r, t, c) (+ mb[k][G] for q4) for K heads over the
// NV * 16 channels from c0 (NV = 4: groups G0, G0 + 1; NV = 2: a last group
// of 32 channels; NV = 1: a last group of 16), the accumulators held in
// registers over all runs; w is [k][kMaxRuns][G][kVRows]. q4 passes of 32
// or 64 channels keep even and odd channels apart (a code byte holds one of
// each); a 16-channel pass unpacks its 8 bytes in channel order.
// Inlined into values_vnni: as a call of its own the q4 step measured 3%
// slower warm.
template <uint32_t VF, int K, int NV>
__attribute__((always_inline)) inline void values_pass(const VRun* runs, uint32_t nr, size_t rb,
                                                       uint32_t hd, uint32_t c0, const float* w,
                                                       const float* mb, const float* alpha,
                                                       float* acc) {
  const uint32_t ngv = qpad(hd) / 32, G0 = c0 / 32;
  const size_t wk = (size_t)kMaxRuns * ngv * kVRows;  // floats per head in w
  __m512 a[K][NV];
  acc_in<K, NV, VF == kKvqQ4, false>(acc, hd, c0, alpha, a);
  for (uint32_t r = 0; r < nr; ++r) {
    const uint8_t* codes = runs[r].v;
    const float* wr = w + ((size_t)r * ngv + G0) * kVRows;
    for (uint32_t t = 0; t < runs[r].n; ++t) {
      const uint8_t* row = codes + t * rb;
      __m512 x[NV];
      if constexpr (VF == kKvqQ8) {
        for (int u = 0; u < NV; ++u)
          x[u] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(row + c0 + 16 * u))));
      } else if constexpr (NV == 1) {
        const __m128i b = _mm_loadl_epi64((const __m128i*)(row + c0 / 2)), m4 = _mm_set1_epi8(0x0f);
        const __m128i lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
        x[0] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
      } else {
        for (int h = 0; h < NV / 2; ++h) {
          const __m512i y = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(row + c0 / 2 + 16 * h)));
          x[2 * h] = _mm512_cvtepi32_ps(_mm512_and_si512(y, _mm512_set1_epi32(0x0f)));
          x[2 * h + 1] = _mm512_cvtepi32_ps(_mm512_srli_epi32(y, 4));
        }
      }
      for (int k = 0; k < K; ++k) {
        const float* wt = wr + k * wk + t;
        const __m512 w0 = _mm512_set1_ps(wt[0]);
        a[k][0] = _mm512_fmadd_ps(w0, x[0], a[k][0]);
        if constexpr (NV >= 2) a[k][1] = _mm512_fmadd_ps(w0, x[1], a[k][1]);
        if constexpr (NV == 4) {
          const __m512 w1 = _mm512_set1_ps(wt[kVRows]);
          a[k][2] = _mm512_fmadd_ps(w1, x[2], a[k][2]);
          a[k][3] = _mm512_fmadd_ps(w1, x[3], a[k][3]);
        }
      }
    }
  }
  acc_out<K, NV, VF == kKvqQ4, false>(a, mb, ngv, hd, c0, acc);
}

// All channels of K heads: 64 per pass, then the 32 and 16 left. Out of
// line: inlined into softmax_values, whose live vectors leave too few
// registers, the q8 loop spilled its inputs (measured 10% slower for the
// whole q8 step).
template <uint32_t VF, int K>
__attribute__((noinline)) void values_vnni(const VRun* runs, uint32_t nr, size_t rb, uint32_t hd, const float* w,
                        const float* mb, const float* alpha, float* acc) {
  uint32_t c0 = 0;
  for (; c0 + 64 <= hd; c0 += 64) values_pass<VF, K, 4>(runs, nr, rb, hd, c0, w, mb, alpha, acc);
  if (c0 + 32 <= hd) {
    values_pass<VF, K, 2>(runs, nr, rb, hd, c0, w, mb, alpha, acc);
    c0 += 32;
  }
  if (c0 < hd) values_pass<VF, K, 1>(runs, nr, rb, hd, c0, w, mb, alpha, acc);
}

// ---- q4 values as bf16 dot products ----------------------------------
// A 4-bit code k is the bf16 1 + k / 16 (0x3F80 | k << 3), exact. Two
// tokens' codes of one channel share a dword and meet the pair of their
// weights in one vdpbf16ps: 32 products per instruction where the float
// pass's FMAs take 16. The weights are w~ = bf16(16 * p * scale) (rounded
// to nearest even: relative error <= 2^-8), so a pass adds
// sum w~ (1 + k / 16) = W + sum (w~ / 16) k, W = sum w~ of the token group;
// the caller folds -W into the minimum term mb.

// Words 2j and 2j + 1 of the result = bytes j and B + j of z (j < 16 from
// byte `first`), upper bytes zero: the codes of two rows, paired by byte.
struct PairIdx {
  uint8_t i[64];
  constexpr PairIdx(int first, int B, bool dup) : i() {
    for (int j = 0; j < 16; ++j) {
      const int jj = dup ? j % 8 : j;
      i[4 * j] = (uint8_t)(first + jj);
      i[4 * j + 2] = (uint8_t)(first + B + jj);
    }
  }
};
constexpr __mmask64 kLowBytes = 0x5555555555555555ull;

KVRT_BF16 inline __m512i pair_bytes(__m512i z, const PairIdx& idx) {
  return _mm512_maskz_permutexvar_epi8(kLowBytes, _mm512_loadu_si512(idx.i), z);
}
// Words with a code nibble at bit 3 -> bf16 1 + k / 16.
inline __m512i nib_bf16(__m512i shifted) {
  return _mm512_ternarylogic_epi32(shifted, _mm512_set1_epi16(0x78), _mm512_set1_epi16(0x3F80), 0xEA);
}

template <int K, int NV>
KVRT_BF16 __attribute__((always_inline)) inline void values_pass_bf16(
    const VRun* runs, uint32_t nr, size_t rb, uint32_t hd, uint32_t c0, const uint16_t* wb,
    const float* mb, const float* alpha, float* acc) {
  const uint32_t ngv = qpad(hd) / 32, G0 = c0 / 32;
  const size_t wk = (size_t)kMaxRuns * ngv * kVRows;  // weights per head in wb
  // NV = 4: bytes 0..31 of two rows (rows at bytes 0 and 32 of z); NV = 2:
  // bytes 0..15 (rows at 0 and 16); NV = 1: bytes 0..7 twice, lanes 0..7
  // taking the low nibbles (even channels), 8..15 the high (odd).
  alignas(64) static constexpr PairIdx i4a(0, 32, false), i4b(16, 32, false), i2(0, 16, false),
      i1(0, 16, true);
  __m512 a[K][NV];
  acc_in<K, NV, true, true>(acc, hd, c0, alpha, a);
  for (uint32_t r = 0; r < nr; ++r) {
    const uint32_t n = runs[r].n;
    const uint8_t* codes = runs[r].v + c0 / 2;
    const uint16_t* wr = wb + ((size_t)r * ngv + G0) * kVRows;
    for (uint32_t t = 0; t < n; t += 2) {
      const uint8_t* row = codes + t * rb;
      // The second row of an odd run's last pair is not read (its weight is 0).
      const __mmask64 second = t + 1 < n ? ~0ull : 0;
      __m512i x[NV];
      if constexpr (NV == 4) {
        const __m512i z = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)row)),
            _mm256_maskz_loadu_epi8((__mmask32)second, row + rb), 1);
        const __m512i p0 = pair_bytes(z, i4a), p1 = pair_bytes(z, i4b);
        x[0] = nib_bf16(_mm512_slli_epi16(p0, 3));
        x[1] = nib_bf16(_mm512_srli_epi16(p0, 1));
        x[2] = nib_bf16(_mm512_slli_epi16(p1, 3));
        x[3] = nib_bf16(_mm512_srli_epi16(p1, 1));
      } else {
        const __m128i lo = NV == 2 ? _mm_loadu_si128((const __m128i*)row) : _mm_loadl_epi64((const __m128i*)row);
        const __m128i hi = NV == 2 ? _mm_maskz_loadu_epi8((__mmask16)second, row + rb)
                                   : _mm_maskz_loadu_epi8((__mmask16)(second & 0xff), row + rb);
        const __m512i z = _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
        if constexpr (NV == 2) {
          const __m512i p = pair_bytes(z, i2);
          x[0] = nib_bf16(_mm512_slli_epi16(p, 3));
          x[1] = nib_bf16(_mm512_srli_epi16(p, 1));
        } else {
          const __m512i p = pair_bytes(z, i1);
          x[0] = nib_bf16(_mm512_mask_srli_epi16(_mm512_slli_epi16(p, 3), 0xFFFF0000u, p, 1));
        }
      }
      for (int k = 0; k < K; ++k) {
        const uint16_t* wt = wr + k * wk + t;
        uint32_t w0, w1 = 0;
        __builtin_memcpy(&w0, wt, 4);
        if constexpr (NV == 4) __builtin_memcpy(&w1, wt + kVRows, 4);
        const __m512bh b0 = (__m512bh)_mm512_set1_epi32((int)w0);
        a[k][0] = _mm512_dpbf16_ps(a[k][0], (__m512bh)x[0], b0);
        if constexpr (NV >= 2) a[k][1] = _mm512_dpbf16_ps(a[k][1], (__m512bh)x[1], b0);
        if constexpr (NV == 4) {
          const __m512bh b1 = (__m512bh)_mm512_set1_epi32((int)w1);
          a[k][2] = _mm512_dpbf16_ps(a[k][2], (__m512bh)x[2], b1);
          a[k][3] = _mm512_dpbf16_ps(a[k][3], (__m512bh)x[3], b1);
        }
      }
    }
  }
  acc_out<K, NV, true, true>(a, mb, ngv, hd, c0, acc);
}

template <int K>
KVRT_BF16 __attribute__((noinline)) void values_bf16(const VRun* runs, uint32_t nr, size_t rb, uint32_t hd,
                                                     const uint16_t* wb, const float* mb,
                                                     const float* alpha, float* acc) {
  uint32_t c0 = 0;
  for (; c0 + 64 <= hd; c0 += 64) values_pass_bf16<K, 4>(runs, nr, rb, hd, c0, wb, mb, alpha, acc);
  if (c0 + 32 <= hd) {
    values_pass_bf16<K, 2>(runs, nr, rb, hd, c0, wb, mb, alpha, acc);
    c0 += 32;
  }
  if (c0 < hd) values_pass_bf16<K, 1>(runs, nr, rb, hd, c0, wb, mb, alpha, acc);
}

// Per-token value scales (and q4 minimums) of one run as floats, [t][G],
// zero past its rows.
template <uint32_t VF>
inline void run_scales(const VRun& run, uint32_t ngv, float* sf, float* mf) {
  for (uint32_t i = 0; i < kVRows * ngv; i += 16) {
    const __mmask16 k = i < run.n * ngv ? tail_mask(run.n * ngv - i) : 0;
    _mm512_store_ps(sf + i, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, run.sc + i)));
    if constexpr (VF == kKvqQ4)
      _mm512_store_ps(mf + i, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, run.mn + i)));
  }
}

// The weights of one softmax update for values_bf16 from the exponentials
// s[r][g]: wb[g][r][G][t] = bf16(16 p_t scale_tG) (vcvtneps2bf16, nearest
// even), and pm[g * ngv + G] += p_t min_tG less those bf16 weights (the
// pass's offset W; summed in pairs by vdpbf16ps against ones).
template <uint32_t NG>
KVRT_BF16 __attribute__((noinline)) void weights_bf16(__m512 (*s)[8], const VRun* runs, uint32_t nr,
                                                      uint32_t ngv, uint16_t* wb, __m512* pm) {
  const __m256bh ones = (__m256bh)_mm256_set1_epi16(0x3F80);
  for (uint32_t r = 0; r < nr; ++r) {
    alignas(64) float sf[kVRows * kMaxG32], mf[kVRows * kMaxG32];
    run_scales<kKvqQ4>(runs[r], ngv, sf, mf);
    for (uint32_t G = 0; G < ngv; ++G) {
      const __m512 vs = _mm512_mul_ps(token_lanes(sf, ngv, G), _mm512_set1_ps(16.0f));
      const __m512 vm = token_lanes(mf, ngv, G);
      for (uint32_t g = 0; g < NG; ++g) {
        const __m256bh w = _mm512_cvtneps_pbh(_mm512_mul_ps(s[r][g], vs));
        _mm256_store_si256((__m256i*)(wb + (((size_t)g * kMaxRuns + r) * ngv + G) * kVRows), (__m256i)w);
        const __m256 pairs = _mm256_dpbf16_ps(_mm256_setzero_ps(), w, ones);
        pm[g * ngv + G] = _mm512_sub_ps(_mm512_fmadd_ps(s[r][g], vm, pm[g * ngv + G]),
                                        _mm512_zextps256_ps512(pairs));
      }
    }
  }
}

// One online-softmax update of NG heads over the scores s[r][g] of nr runs
// (lanes past a run's rows are -inf), then the values of those runs.
template <uint32_t VF, uint32_t NG, bool BF>
void softmax_values(__m512 (*s)[8], const VRun* runs, uint32_t nr, size_t rbv, uint32_t hd,
                    float* m, float* l, float* acc) {
  const uint32_t ngv = qpad(hd) / 32;
  __m512 mx[8];
  for (uint32_t g = 0; g < 8; ++g) mx[g] = g < NG ? s[0][g] : _mm512_set1_ps(-INFINITY);
  for (uint32_t r = 1; r < nr; ++r)
    for (uint32_t g = 0; g < NG; ++g) mx[g] = _mm512_max_ps(mx[g], s[r][g]);
  alignas(64) float f[16], dm[16];
  _mm512_store_ps(f, reduce8<true>(mx));
  _mm512_store_ps(dm, _mm512_set1_ps(-INFINITY));
  // alpha = e^(m_old - m_new): 0 for the first update (m_old = -inf), 1
  // exactly when the maximum stays (exp_neg(0) = 1), one vector for all heads.
  float m_new[NG];
  for (uint32_t g = 0; g < NG; ++g) {
    const float mxg = f[lane8(g)];
    m_new[g] = mxg > m[g] ? mxg : m[g];
    dm[g] = m[g] - m_new[g];
    m[g] = m_new[g];
  }
  alignas(64) float alpha[16];
  _mm512_store_ps(alpha, exp_neg(_mm512_load_ps(dm)));
  __m512 sum[8];
  for (uint32_t g = 0; g < 8; ++g) sum[g] = _mm512_setzero_ps();
  for (uint32_t r = 0; r < nr; ++r)
    for (uint32_t g = 0; g < NG; ++g) {
      // -inf lanes give exp_neg = 0.
      s[r][g] = exp_neg(_mm512_sub_ps(s[r][g], _mm512_set1_ps(m_new[g])));
      sum[g] = _mm512_add_ps(sum[g], s[r][g]);
    }
  _mm512_store_ps(f, reduce8<false>(sum));
  for (uint32_t g = 0; g < NG; ++g) l[g] = l[g] * alpha[g] + f[lane8(g)];
  // Weights with the value scales folded in, [g][r][G][t]; q4: sum_t p * min
  // (BF: weights as bf16 of 16 times that, their sum taken from mb).
  alignas(64) float w[BF ? 1 : NG * kMaxRuns * kMaxG32 * kVRows];
  alignas(64) uint16_t wb[BF ? NG * kMaxRuns * kMaxG32 * kVRows : 1];
  float mb[NG * kMaxG32];
  __m512 pm[NG * kMaxG32];
  if constexpr (VF == kKvqQ4)
    for (uint32_t i = 0; i < NG * ngv; ++i) pm[i] = _mm512_setzero_ps();
  if constexpr (BF) {
    weights_bf16<NG>(s, runs, nr, ngv, wb, pm);
  } else {
    for (uint32_t r = 0; r < nr; ++r) {
      alignas(64) float sf[kVRows * kMaxG32], mf[kVRows * kMaxG32];
      run_scales<VF>(runs[r], ngv, sf, mf);
      for (uint32_t G = 0; G < ngv; ++G) {
        const __m512 vs = token_lanes(sf, ngv, G);
        const __m512 vm = VF == kKvqQ4 ? token_lanes(mf, ngv, G) : _mm512_setzero_ps();
        for (uint32_t g = 0; g < NG; ++g) {
          _mm512_store_ps(w + (((size_t)g * kMaxRuns + r) * ngv + G) * kVRows, _mm512_mul_ps(s[r][g], vs));
          if constexpr (VF == kKvqQ4) pm[g * ngv + G] = _mm512_fmadd_ps(s[r][g], vm, pm[g * ngv + G]);
        }
      }
    }
  }
  if constexpr (VF == kKvqQ4) reduce_n<false>(pm, NG * ngv, mb);
  for (uint32_t g = 0; g < NG; g += 4) {
    constexpr int K = NG < 4 ? (int)NG : 4;
    if constexpr (BF)
      values_bf16<K>(runs, nr, rbv, hd, wb + (size_t)g * kMaxRuns * ngv * kVRows,
                     mb + (size_t)g * ngv, alpha + g, acc + (size_t)g * hd);
    else
      values_vnni<VF, K>(runs, nr, rbv, hd, w + (size_t)g * kMaxRuns * ngv * kVRows,
                         mb + (size_t)g * ngv, alpha + g, acc + (size_t)g * hd);
  }
}

// Scores s[g] of NG heads for n <= 16 rows of keys against the rounded
// query; lanes past n are -inf for the maximum and weigh 0. Out of line:
// inlined into the block loop it measured a few percent slower for q8 keys.
template <uint32_t KF, uint32_t NG>
KVRT_VNNI __attribute__((noinline)) void score_run(const uint8_t* kcodes, size_t rbk, uint32_t n, uint32_t hd,
                         const uint8_t* qb, const float* dq, const float* bias, __m512* s) {
  const uint32_t hp = qpad(hd);
  __m512i kc[kQAttnMaxHeadDim / 4];
  key_vectors<KF>(kcodes, rbk, n, hd, kc);
  for (uint32_t g0 = 0; g0 < NG; g0 += 4) {
    constexpr int K = NG < 4 ? (int)NG : 4;
    scores_vnni<KF, K>(kc, hp, qb + (size_t)g0 * kQBytes * hp, dq + (size_t)g0 * (hp / 32),
                       bias + g0, s + g0);
  }
  const __mmask16 live = tail_mask(n);
  for (uint32_t g = 0; g < NG; ++g) s[g] = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), live, s[g]);
}

// Blocks in runs of up to 16 rows: the query scaled once per call and
// rounded per block (the key scales are per block), keys scored per run,
// and the softmax update and values done per kMaxRuns runs.
template <uint32_t KF, uint32_t VF, uint32_t NG, bool BF>
KVRT_VNNI void block_q_t(const QAttnBlock* blocks, uint32_t nb, size_t rbk, size_t rbv, uint32_t hd,
                         const float* q, float scale, float* qn, float* m, float* l, float* acc) {
  const uint32_t ngv = qpad(hd) / 32;
  alignas(64) uint8_t qb[NG * kQBytes * kQAttnMaxHeadDim];
  float dmq[NG * kMaxG32], dq[NG * kMaxG32], bias[NG];
  norm_query<NG>(q, scale, hd, qn, dmq);
  __m512 s[kMaxRuns][8];
  VRun runs[kMaxRuns];
  uint32_t nr = 0;
  for (uint32_t i = 0; i < nb; ++i) {
    const QAttnBlock& B = blocks[i];
    detail::prefetch_lines(B.pf_k, B.pf_k_bytes);
    prep_query<KF, NG>(q, qn, dmq, scale, B.k_scales, hd, qb, dq, bias);
    for (uint32_t t0 = 0; t0 < B.n; t0 += kVRows) {
      const uint32_t n = B.n - t0 < kVRows ? B.n - t0 : kVRows;
      score_run<KF, NG>(B.k + t0 * rbk, rbk, n, hd, qb, dq, bias, s[nr]);
      if (t0 == 0) detail::prefetch_lines(B.pf_v, B.pf_v_bytes);
      runs[nr++] = {B.v + t0 * rbv, B.v_scales + (size_t)t0 * ngv, B.v_mins + (size_t)t0 * ngv, n};
      if (nr == kMaxRuns) {
        softmax_values<VF, NG, BF>(s, runs, nr, rbv, hd, m, l, acc);
        nr = 0;
      }
    }
  }
  if (nr) softmax_values<VF, NG, BF>(s, runs, nr, rbv, hd, m, l, acc);
}

using BlockQFn = void (*)(const QAttnBlock*, uint32_t, size_t, size_t, uint32_t, const float*,
                          float, float*, float*, float*, float*);

template <uint32_t KF, uint32_t VF, bool BF = false>
BlockQFn pick_ng(uint32_t ng) {
  switch (ng) {
    case 1: return block_q_t<KF, VF, 1, BF>;
    case 2: return block_q_t<KF, VF, 2, BF>;
    case 4: return block_q_t<KF, VF, 4, BF>;
    case 8: return block_q_t<KF, VF, 8, BF>;
    default: return nullptr;
  }
}

// BF: q4 values as bf16 dot products (values_bf16), where the table finds
// the CPU has AVX-512 BF16 and VBMI.
template <bool BF>
bool block_q(uint32_t kfmt, uint32_t vfmt, const QAttnBlock* blocks, uint32_t nb, size_t rbk,
             size_t rbv, uint32_t hd, const float* q, float scale, uint32_t ng, float* work, float* m,
             float* l, float* acc) {
  if (!qattn_block_q_takes(hd, ng)) return false;
  const bool k8 = kfmt == kKvqQ8, v8 = vfmt == kKvqQ8;
  const BlockQFn f = k8 ? (v8 ? pick_ng<kKvqQ8, kKvqQ8>(ng) : pick_ng<kKvqQ8, kKvqQ4, BF>(ng))
                        : (v8 ? pick_ng<kKvqQ4, kKvqQ8>(ng) : pick_ng<kKvqQ4, kKvqQ4, BF>(ng));
  if (!f) return false;
  f(blocks, nb, rbk, rbv, hd, q, scale, work, m, l, acc);
  return true;
}

#undef KVRT_VNNI
#undef KVRT_BF16

}  // namespace

const QAttnOps* qattn_ops_avx512(bool bf16_values) {
  const QAttnOps* base = qattn_ops_avx2();
  if (!base) return nullptr;
  auto make = [&](bool bf16) {
    QAttnOps o = *base;
    // The integer key path needs AVX-512 VNNI (vpdpbusd); without it the
    // AVX2 table's step serves.
    if (__builtin_cpu_supports("avx512vnni")) {
      o.block_q = block_q<false>;
      o.q4_query_15bit = true;
      if (bf16 && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vbmi")) {
        o.block_q = block_q<true>;
        o.bf16_values = true;
      }
    }
    return o;
  };
  static const QAttnOps ops[2] = {make(false), make(true)};
  return &ops[bf16_values];
}

}  // namespace kvrt_k
