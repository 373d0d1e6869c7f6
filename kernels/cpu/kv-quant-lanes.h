// The KV encoders of kernels/common/kv-quant.h for several sets at once, one
// set per vector lane, for the SIMD levels: q8 (range, scale, codes) and q4
// (its parameter fit, kvq_q4_fit; the codes stay scalar). A key set is one
// channel of a block, a value set one token's group. Each lane runs the
// scalar encoder's floating-point operations in the same order, on the same
// values, and rounds to f16 to the same results, so the stored bytes are
// those of the scalar encoder on every level (snapshots move between
// machines). Lanes that the scalar fit would have left (a constant set, a
// refinement that stopped) keep computing but no longer commit.
//
// Written with the compiler's generic vectors, not intrinsics, so that one
// text serves both levels: kv-quant-avx512.cpp includes it with 16 lanes
// and kv-quant-avx2.cpp with 8 (KVQ_LANES: 16 lanes as pairs of 256-bit
// registers spill, and that AVX2 fit took 1.5 times the scalar one's time).
// Each defines KVQ_LEVEL, the namespace of its kv_quantize. Those files are
// built with -ffp-contract=off: a multiply fused into an add would round
// differently from the scalar fit.
//
// The q4 fit was the largest part of a q4 prefill on models with many KV
// heads, and q8's scalar encoding 6% of a q8 one (docs/quantization.md,
// "Quantization rules").
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../common/kv-quant.h"
#include "cpu-kernels-impl.h"

namespace kvrt_k {
namespace {

constexpr uint32_t kLanes = KVQ_LANES;
typedef float VF __attribute__((vector_size(4 * KVQ_LANES)));
typedef int32_t VI __attribute__((vector_size(4 * KVQ_LANES)));

#define KVQ_INLINE inline __attribute__((always_inline))

KVQ_INLINE VF splat(float x) { return VF{} + x; }
KVQ_INLINE VI splati(int32_t x) { return VI{} + x; }
// Lane-wise m ? a : b, m a comparison result (all ones or zero per lane).
KVQ_INLINE VF sel(VI m, VF a, VF b) { return (VF)((m & (VI)a) | (~m & (VI)b)); }
KVQ_INLINE VI sel(VI m, VI a, VI b) { return (m & a) | (~m & b); }
KVQ_INLINE bool any(VI m) {
  VI r = m;
  for (uint32_t i = 0; i < kLanes; ++i)
    if (r[i]) return true;
  return false;
}

// kvq_sanitize: NaN reads as 0, the rest clamps to the f16 range.
KVQ_INLINE VF sanitize(VF x) {
  const VF mx = splat(kKvQuantMax), mn = splat(-kKvQuantMax);
  VF y = sel(x < mn, mn, x);
  y = sel(x > mx, mx, y);
  return sel(x == x, y, splat(0.0f));
}

// f16_to_f32 (kernels/common/fp16.h) per lane for finite halves (the fit's
// parameters are; see f16_trunc); h holds the half's 16 bits. A subnormal
// half is man * 2^-24, which a float holds exactly.
KVQ_INLINE VF f16_f32(VI h) {
  const VI sign = (h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  const VI normal = sign | ((exp + 112) << 23) | (man << 13);
  const VI sub = sign | (VI)(__builtin_convertvector(man, VF) * 5.9604644775390625e-8f);
  return (VF)sel(exp == 0, sub, normal);
}

// The f16 of x rounded toward zero, for |x| <= 65504: the scale and minimum
// that attempt() commits are within that range, and the min/max parameters
// too. Lanes that will not commit may hold anything; their results are
// dropped.
KVQ_INLINE VI f16_trunc(VF f) {
  const VI x = (VI)f, sign = (x >> 16) & 0x8000, a = x & 0x7fffffff, e = a >> 23;
  const VI normal = ((e - 112) << 10) | ((a >> 13) & 0x3ff);
  // Below 2^-14 the half is subnormal: |x| / 2^-24 = m >> (126 - e), which
  // is 0 from a shift of 25 on (m < 2^24).
  VI shift = 126 - e;
  shift = sel(shift < 0, splati(0), sel(shift > 25, splati(25), shift));
  const VI sub = ((a & 0x7fffff) | 0x800000) >> shift;
  return sign | sel(e < 113, sub, normal);
}

// kvq_f16_up / kvq_f16_down: the f16 nearest to x towards +inf / -inf. The
// scalar versions round to nearest first and step one unit when that went
// the wrong way. Here the truncated half h is already on the asked side
// unless x is positive (up) or negative (down) and not a half, and then the
// half one unit further from zero, h + 1, is the answer. Both give x's
// neighbour on the asked side (or x), so the results are equal.
KVQ_INLINE VI f16_up(VF x) {
  const VI h = f16_trunc(x);
  return h - (f16_f32(h) < x);
}
KVQ_INLINE VI f16_down(VF x) {
  const VI h = f16_trunc(x);
  return h - (f16_f32(h) > x);
}

// kvq_round then the clamp of kvq_q4_code, as a float. The scalar code
// rounds t < 0 to a code <= 0, which clamps to 0, and t >= 0 to (int)(t +
// 0.5), which clamps to 15 from 15.5 on; so the sum is clamped to [0, 15.5]
// before the conversion, which keeps every lane's conversion in range
// (lanes that do not commit may hold infinities or NaN).
KVQ_INLINE VF q4_code(VF v, VF mn, VF inv) {
  const VF t = (v - mn) * inv;
  VF u = t + 0.5f;
  u = sel(u > 15.5f, splat(15.5f), u);
  u = sel(t >= 0.0f, u, splat(0.0f));
  return __builtin_convertvector(__builtin_convertvector(u, VI), VF);
}

// kLanes sets of n elements: element i of lane j is x[i * stride + j], j < nl
// (lanes past nl read 0).
struct Sets {
  const float* x;
  size_t stride;
  uint32_t n, nl;
  KVQ_INLINE VF load(uint32_t i) const {
    VF v = {};
    if (nl == kLanes)
      memcpy(&v, x + i * stride, sizeof v);
    else
      memcpy(&v, x + i * stride, nl * sizeof(float));
    return sanitize(v);
  }
  // Each lane's smallest and largest element, compared in element order as
  // the scalar encoders do (which decides the sign of a zero).
  KVQ_INLINE void range(VF& lo, VF& hi) const {
    lo = hi = load(0);
    for (uint32_t i = 1; i < n; ++i) {
      const VF v = load(i);
      lo = sel(v < lo, v, lo);
      hi = sel(v > hi, v, hi);
    }
  }
};

// KvqQ4Fit per lane, and `on`: the lanes whose set is not constant.
// kWeighted false is the fit of values (edge weight 0), whose weights are all
// 1: the scalar fit multiplies by that 1, which changes nothing, so leaving
// it out gives the same sums.
template <bool kWeighted>
struct Fit {
  Sets set;
  VF lo, mid, inv_half, edge_weight, range, err;
  VI scale_h, min_h, on;

  // kvq_q4_weight. A lane whose weight is 0 has inv_half 0, so z = 0 and
  // the weight 1, as in the scalar function.
  KVQ_INLINE VF weight(VF v) const {
    const VF z = (v - mid) * inv_half;
    return 1.0f + edge_weight * z * z;
  }
  // kvq_q4_error.
  KVQ_INLINE VF error(VI sh, VI mh) const {
    const VF s = f16_f32(sh), mn = f16_f32(mh), inv = sel(s > 0.0f, 1.0f / s, splat(0.0f));
    VF e = splat(0.0f);
    for (uint32_t i = 0; i < set.n; ++i) {
      const VF v = set.load(i);
      const VF d = v - (mn + s * q4_code(v, mn, inv));
      if (kWeighted)
        e += weight(v) * d * d;
      else
        e += d * d;
    }
    return e;
  }
  // kvq_q4_try, on the lanes of m.
  KVQ_INLINE void attempt(VI m, VF s, VF mn) {
    m &= (s <= kKvQuantMax) & (mn >= -kKvQuantMax) & (mn <= kKvQuantMax);
    if (!any(m)) return;
    const VI sh = f16_up(s), mh = f16_down(mn);
    const VF e = error(sh, mh);
    const VI better = m & (e < err);
    err = sel(better, e, err);
    scale_h = sel(better, sh, scale_h);
    min_h = sel(better, mh, min_h);
  }
  // kvq_q4_refine; a lane leaves where the scalar loop returns.
  void refine(const VF& s0, const VF& m0) {
    VF s = s0, m = m0;
    VI alive = on;
    for (uint32_t round = 0; round < kKvqFitRounds && any(alive); ++round) {
      const VF inv = 1.0f / s;
      VF sw = {}, sc = {}, scc = {}, sx = {}, scx = {};
      for (uint32_t i = 0; i < set.n; ++i) {
        const VF v = set.load(i), c = q4_code(v, m, inv), d = v - lo;
        if (kWeighted) {
          const VF w = weight(v);
          sw += w;
          sc += w * c;
          scc += w * c * c;
          sx += w * d;
          scx += w * c * d;
        } else {
          sw += 1.0f;
          sc += c;
          scc += c * c;
          sx += d;
          scx += c * d;
        }
      }
      const VF den = sw * scc - sc * sc;
      alive &= den > 0.0f;
      const VF s2 = (sw * scx - sc * sx) / den;
      alive &= (s2 >= range / 64.0f) & (s2 <= range);
      const VF m2 = lo + (sx - s2 * sc) / sw;
      if (round > 0) alive &= ~((s2 == s) & (m2 == m));
      s = sel(alive, s2, s);
      m = sel(alive, m2, m);
      attempt(alive, s, m);
    }
  }
};

// kvq_q4_fit of kLanes sets; writes lane j's parameters to scale_h[j * out_stride]
// and min_h[j * out_stride] for j < n_out.
template <bool kWeighted>
void fit_q4(const Sets& set, float edge_weight, uint32_t n_shrink, uint32_t n_out, uint16_t* scale_h,
            uint16_t* min_h, size_t out_stride) {
  VF lo, hi;
  set.range(lo, hi);
  Fit<kWeighted> f;
  f.set = set;
  f.min_h = f16_down(lo);
  f.scale_h = f16_up((hi - f16_f32(f.min_h)) / 15.0f);
  f.on = hi > lo;
  if (any(f.on)) {
    const VF r = hi - lo, inv_half = 2.0f / r;
    const VI finite = inv_half <= 3.0e38f;
    f.lo = lo;
    f.mid = 0.5f * (lo + hi);
    f.inv_half = sel(finite, inv_half, splat(0.0f));
    f.edge_weight = sel(finite, splat(edge_weight), splat(0.0f));
    f.range = r;
    f.err = f.error(f.scale_h, f.min_h);
    f.refine(r / 15.0f, lo);
    for (uint32_t k = 1; k <= n_shrink; ++k) {
      const VF cut = (float)((k + 2) / 3) / 32.0f * r;
      const VF a = k % 3 != 2 ? cut : splat(0.0f), b = k % 3 != 1 ? cut : splat(0.0f);
      const VF s = (r - a - b) / 15.0f, m = lo + a;
      f.attempt(f.on, s, m);
      f.refine(s, m);
    }
  }
  for (uint32_t j = 0; j < n_out; ++j) {
    scale_h[j * out_stride] = (uint16_t)f.scale_h[j];
    min_h[j * out_stride] = (uint16_t)f.min_h[j];
  }
}

// q8 of kLanes sets, as kvq_quantize_k / kvq_quantize_v find each set's
// range and scale and round its codes: lane j's scale goes to
// scale_h[j * out_stride] and the code of its element i to
// codes[i * di + j * dj], for j < n_out.
void encode_q8(const Sets& set, uint32_t n_out, uint16_t* scale_h, size_t out_stride, int8_t* codes, size_t di,
               size_t dj) {
  typedef int8_t VC __attribute__((vector_size(KVQ_LANES)));
  VF lo, hi;
  set.range(lo, hi);
  const VI sh = f16_up(sel(hi > -lo, hi, -lo) / 127.0f);
  const VF s = f16_f32(sh), inv = sel(s > 0.0f, 1.0f / s, splat(0.0f));
  for (uint32_t i = 0; i < set.n; ++i) {
    // kvq_round, then the clamp to +-127, done first on the product (which
    // gives the same codes, and keeps the conversions in range). The scale
    // is rounded up, so |product| <= 127 but for the reciprocal's rounding.
    VF v = set.load(i) * inv;
    v = sel(v > 127.0f, splat(127.0f), sel(v < -127.0f, splat(-127.0f), v));
    const VI c = sel(v >= 0.0f, __builtin_convertvector(v + 0.5f, VI), -__builtin_convertvector(-v + 0.5f, VI));
    const VC b = __builtin_convertvector(c, VC);
    if (dj == 1) {
      memcpy(codes + i * di, &b, n_out);
    } else {
      for (uint32_t j = 0; j < n_out; ++j) codes[i * di + j * dj] = b[j];
    }
  }
  for (uint32_t j = 0; j < n_out; ++j) scale_h[j * out_stride] = (uint16_t)sh[j];
}

// kvq_quantize_k / kvq_quantize_v for q8 and q4, kLanes channels (K) or
// tokens (V) at once.
void quantize_k(uint32_t format, uint8_t* dst, const float* src, size_t src_stride, uint32_t n_tokens,
                uint32_t block_tokens, uint32_t head_dim) {
  memset(dst, 0, kvq_k_head_bytes(format, block_tokens, head_dim));
  uint16_t* sc = (uint16_t*)(dst + kvq_scale_offset(format, block_tokens, head_dim));
  const size_t rb = kvq_row_bytes(format, head_dim);
  for (uint32_t c = 0; c < head_dim; c += kLanes) {
    const uint32_t nl = head_dim - c < kLanes ? head_dim - c : kLanes;
    const Sets set{src + c, src_stride, n_tokens, nl};
    if (format == kKvqQ8)
      encode_q8(set, nl, sc + c, 1, (int8_t*)dst + c, rb, 1);
    else
      fit_q4<kKvqKeyEdgeWeight != 0.0f>(set, kKvqKeyEdgeWeight, kKvqKeyShrinkStarts, nl, sc + c,
                                        sc + head_dim + c, 1);
  }
  if (format == kKvqQ4) kvq_encode_k_q4(dst, src, src_stride, n_tokens, block_tokens, head_dim);
}

void quantize_v(uint32_t format, uint8_t* dst, const float* src, size_t src_stride, uint32_t n_tokens,
                uint32_t block_tokens, uint32_t head_dim) {
  memset(dst, 0, kvq_v_head_bytes(format, block_tokens, head_dim));
  const uint32_t gs = kvq_group(head_dim), ng = kvq_n_groups(head_dim);
  uint16_t* sc = (uint16_t*)(dst + kvq_scale_offset(format, block_tokens, head_dim));
  uint16_t* mins = sc + (size_t)block_tokens * ng;
  const size_t rb = kvq_row_bytes(format, head_dim);
  float xt[kKvGroup * kLanes];  // one group of kLanes tokens, channel-major
  for (uint32_t t0 = 0; t0 < n_tokens; t0 += kLanes) {
    const uint32_t nl = n_tokens - t0 < kLanes ? n_tokens - t0 : kLanes;
    for (uint32_t g = 0; g < ng; ++g) {
      const uint32_t c0 = g * gs, n = (c0 + gs < head_dim ? c0 + gs : head_dim) - c0;
      for (uint32_t i = 0; i < n; ++i)
        for (uint32_t j = 0; j < kLanes; ++j)
          xt[i * kLanes + j] = j < nl ? src[(t0 + j) * src_stride + c0 + i] : 0.0f;
      const Sets set{xt, kLanes, n, kLanes};
      if (format == kKvqQ8)
        encode_q8(set, nl, sc + t0 * ng + g, ng, (int8_t*)dst + t0 * rb + c0, 1, rb);
      else
        fit_q4<kKvqValueEdgeWeight != 0.0f>(set, kKvqValueEdgeWeight, kKvqValueShrinkStarts, nl,
                                            sc + t0 * ng + g, mins + t0 * ng + g, ng);
    }
  }
  if (format == kKvqQ4) kvq_encode_v_q4(dst, src, src_stride, n_tokens, block_tokens, head_dim);
}

#undef KVQ_INLINE

}  // namespace

namespace KVQ_LEVEL {
void kv_quantize(uint32_t format, bool keys, uint8_t* dst, const float* src, size_t src_stride,
                 uint32_t n_tokens, uint32_t block_tokens, uint32_t head_dim) {
  // An empty set: the scalar encoders' parameters of no elements (q8 keys
  // store a scale of -0) are theirs to give.
  if (n_tokens == 0) {
    if (keys)
      kvq_quantize_k(format, dst, src, src_stride, n_tokens, block_tokens, head_dim);
    else
      kvq_quantize_v(format, dst, src, src_stride, n_tokens, block_tokens, head_dim);
  } else if (keys) {
    quantize_k(format, dst, src, src_stride, n_tokens, block_tokens, head_dim);
  } else {
    quantize_v(format, dst, src, src_stride, n_tokens, block_tokens, head_dim);
  }
}
}  // namespace KVQ_LEVEL
}  // namespace kvrt_k
