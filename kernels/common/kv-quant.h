// Quantized KV block formats (q8, q4): byte layout of one head's keys or
// values in one block, and the quantize/dequantize rules every backend shares.
//
// Keys are quantized per channel across the block's tokens (outliers live in
// channels), values per token in groups of kKvGroup channels along head_dim.
// q8 is symmetric int8 with one f16 scale; q4 is asymmetric 4-bit (f16 scale
// and f16 minimum), two codes per byte, low nibble first. Scales follow the
// codes inside the same head part of the block. docs/quantization.md lists
// every byte.
//
// Non-finite inputs: NaN is stored as 0 and values are clamped to the f16
// range [-65504, 65504] (the range of the 16-bit staging the tail block lives
// in before it is quantized).
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "fp16.h"
#include "portable.h"

namespace kvrt_k {

// Channels per value group (per token); a head narrower than this is one group.
constexpr uint32_t kKvGroup = 32;
constexpr float kKvQuantMax = 65504.0f;
// The kvrt_kv_format values of the two formats (kv-layout.h checks they match).
constexpr uint32_t kKvqQ8 = 3;
constexpr uint32_t kKvqQ4 = 4;

static_assert(sizeof(int8_t) == 1 && sizeof(uint16_t) == 2, "code and scale widths");

KVRT_HD constexpr size_t kvq_align4(size_t n) { return (n + 3) & ~(size_t)3; }
KVRT_HD constexpr uint32_t kvq_group(uint32_t head_dim) { return head_dim < kKvGroup ? head_dim : kKvGroup; }
KVRT_HD constexpr uint32_t kvq_n_groups(uint32_t head_dim) {
  uint32_t g = kvq_group(head_dim);
  return g == 0 ? 0 : (head_dim + g - 1) / g;
}
// Bytes of one token's codes: head_dim for q8, ceil(head_dim / 2) for q4.
KVRT_HD constexpr size_t kvq_row_bytes(uint32_t format, uint32_t head_dim) {
  return format == kKvqQ8 ? (size_t)head_dim : (size_t)(head_dim + 1) / 2;
}
// Offset of the scales after the codes of block_tokens rows.
KVRT_HD constexpr size_t kvq_scale_offset(uint32_t format, uint32_t block_tokens, uint32_t head_dim) {
  return kvq_align4((size_t)block_tokens * kvq_row_bytes(format, head_dim));
}

// One head's K part of a block: codes[T][row], f16 scale[D] (q4: then f16 min[D]).
KVRT_HD constexpr size_t kvq_k_head_bytes(uint32_t format, uint32_t block_tokens, uint32_t head_dim) {
  size_t per_channel = format == kKvqQ8 ? 2 : 4;
  return kvq_align4(kvq_scale_offset(format, block_tokens, head_dim) + per_channel * head_dim);
}
// One head's V part: codes[T][row], f16 scale[T][G] (q4: then f16 min[T][G]).
KVRT_HD constexpr size_t kvq_v_head_bytes(uint32_t format, uint32_t block_tokens, uint32_t head_dim) {
  size_t n = (size_t)block_tokens * kvq_n_groups(head_dim) * (format == kKvqQ8 ? 2 : 4);
  return kvq_align4(kvq_scale_offset(format, block_tokens, head_dim) + n);
}

// The f16 nearest to x on the side of +inf (up) or -inf (down).
KVRT_HD uint16_t kvq_f16_up(float x) {
  uint16_t h = f32_to_f16(x);
  if (f16_to_f32(h) >= x) return h;
  if (h == 0x8000u) return 0x0001u;         // -0 -> smallest positive
  return (h & 0x8000u) ? (uint16_t)(h - 1) : (uint16_t)(h + 1);
}
KVRT_HD uint16_t kvq_f16_down(float x) {
  uint16_t h = f32_to_f16(x);
  if (f16_to_f32(h) <= x) return h;
  if (h == 0x0000u) return 0x8001u;
  return (h & 0x8000u) ? (uint16_t)(h + 1) : (uint16_t)(h - 1);
}

KVRT_HD float kvq_sanitize(float x) {
  if (!(x == x)) return 0.0f;  // NaN
  return x > kKvQuantMax ? kKvQuantMax : (x < -kKvQuantMax ? -kKvQuantMax : x);
}
// Round half away from zero, without libm (CUDA and host agree).
KVRT_HD int kvq_round(float v) { return v >= 0.0f ? (int)(v + 0.5f) : -(int)(-v + 0.5f); }

// Symmetric int8 parameters for values in [-amax, amax]: the smallest f16
// scale with 127 * scale >= amax, so codes never clip.
KVRT_HD uint16_t kvq_q8_scale(float amax) { return kvq_f16_up(amax / 127.0f); }
KVRT_HD int8_t kvq_q8_code(float x, float inv_scale) {
  int c = kvq_round(kvq_sanitize(x) * inv_scale);
  return (int8_t)(c > 127 ? 127 : (c < -127 ? -127 : c));
}
// Asymmetric 4-bit parameters for [lo, hi]: min rounded down to f16, scale
// rounded up so min + 15 * scale >= hi.
KVRT_HD void kvq_q4_params(float lo, float hi, uint16_t* scale_h, uint16_t* min_h) {
  *min_h = kvq_f16_down(lo);
  float mn = f16_to_f32(*min_h);
  *scale_h = kvq_f16_up((hi - mn) / 15.0f);
}
KVRT_HD uint8_t kvq_q4_code(float x, float mn, float inv_scale) {
  int c = kvq_round((kvq_sanitize(x) - mn) * inv_scale);
  return (uint8_t)(c > 15 ? 15 : (c < 0 ? 0 : c));
}
KVRT_HD float kvq_inv(float s) { return s > 0.0f ? 1.0f / s : 0.0f; }

// Fitting q4 parameters. kvq_q4_params gives the min/max parameters, under
// which no code clips. kvq_q4_fit starts there and looks for parameters with a
// lower (weighted) squared error: it alternates assigning codes and the
// closed-form least-squares (scale, min) for those codes, from the min/max
// range and optionally from a few shrunken ranges, and keeps the best
// candidate rounded outward to f16 (min down, scale up). A fitted candidate
// may let the extreme elements clip to code 0 or 15; it is only kept when its
// error over the whole set is lower, so the fitted error is never above the
// min/max error. Only the encoder runs this: the stored format and the
// decoder are unchanged.
//
// The error of element v is weighted by 1 + edge_weight * z^2, z = (v - mid) /
// half_range in [-1, 1] over the set. Keys use a large edge weight: the
// tokens at the ends of a key channel are the ones whose scores move most
// with the query and which attention weights most, and a plain
// least-squares fit that trades their error for the middle's made attention
// worse (docs/quantization.md has the figures). Values use 0 (plain squared
// error) and also start from shrunken ranges.
constexpr float kKvqKeyEdgeWeight = 256.0f;
constexpr float kKvqValueEdgeWeight = 0.0f;
constexpr uint32_t kKvqKeyShrinkStarts = 0;
constexpr uint32_t kKvqValueShrinkStarts = 9;
constexpr uint32_t kKvqFitRounds = 4;

KVRT_HD float kvq_q4_weight(float v, float mid, float inv_half, float edge_weight) {
  if (edge_weight == 0.0f) return 1.0f;
  float z = (v - mid) * inv_half;
  return 1.0f + edge_weight * z * z;
}

// Weighted squared error of n elements (x[i * stride]) stored with these f16
// parameters: codes exactly as the encoder writes them, values exactly as the
// decoder reads them. mid and inv_half = 2 / (max - min) place the weights.
KVRT_HD float kvq_q4_error(const float* x, size_t stride, uint32_t n, uint16_t scale_h, uint16_t min_h,
                           float mid, float inv_half, float edge_weight) {
  const float s = f16_to_f32(scale_h), mn = f16_to_f32(min_h), inv = kvq_inv(s);
  float e = 0.0f;
  for (uint32_t i = 0; i < n; ++i) {
    float v = kvq_sanitize(x[i * stride]);
    float d = v - (mn + s * (float)kvq_q4_code(v, mn, inv));
    e += kvq_q4_weight(v, mid, inv_half, edge_weight) * d * d;
  }
  return e;
}

// State of one fit: the set, its weighting and the best parameters so far.
struct KvqQ4Fit {
  const float* x;
  size_t stride;
  uint32_t n;
  float lo, mid, inv_half, edge_weight;
  uint16_t scale_h, min_h;
  float err;
};

// Keeps (s, m), rounded outward to f16, if it stores the set with a lower
// error than the best so far. A pair outside the f16 range is skipped.
KVRT_HD void kvq_q4_try(KvqQ4Fit* f, float s, float m) {
  if (!(s <= kKvQuantMax) || !(m >= -kKvQuantMax) || !(m <= kKvQuantMax)) return;
  const uint16_t sh = kvq_f16_up(s), mh = kvq_f16_down(m);
  const float e = kvq_q4_error(f->x, f->stride, f->n, sh, mh, f->mid, f->inv_half, f->edge_weight);
  if (e < f->err) {
    f->err = e;
    f->scale_h = sh;
    f->min_h = mh;
  }
}

// kKvqFitRounds rounds of: codes for (s, m), then the weighted least-squares
// (s, m) for those codes. Sums are taken relative to lo so that a set far
// from zero does not lose its spread to cancellation.
KVRT_HD void kvq_q4_refine(KvqQ4Fit* f, float range, float s, float m) {
  for (uint32_t round = 0; round < kKvqFitRounds; ++round) {
    const float inv = 1.0f / s;
    float sw = 0, sc = 0, scc = 0, sx = 0, scx = 0;
    for (uint32_t i = 0; i < f->n; ++i) {
      const float v = kvq_sanitize(f->x[i * f->stride]);
      const float w = kvq_q4_weight(v, f->mid, f->inv_half, f->edge_weight);
      const float c = (float)kvq_q4_code(v, m, inv), d = v - f->lo;
      sw += w;
      sc += w * c;
      scc += w * c * c;
      sx += w * d;
      scx += w * c * d;
    }
    const float den = sw * scc - sc * sc;
    if (!(den > 0.0f)) return;  // all elements share one code
    const float s2 = (sw * scx - sc * sx) / den;
    // A step below range/64 or above the range is never better, and the
    // bounds keep (v - m) / s small enough for the integer code conversion.
    if (!(s2 >= range / 64.0f) || !(s2 <= range)) return;
    const float m2 = f->lo + (sx - s2 * sc) / sw;
    // A fixed point after the first round: (s, m) came from the round
    // before and were tried there, and the next round would assign the same
    // codes and arrive here again, so stopping changes nothing.
    if (round > 0 && s2 == s && m2 == m) return;
    m = m2;
    s = s2;
    kvq_q4_try(f, s, m);
  }
}

// Fitted q4 parameters of n elements x[i * stride] (n >= 1). n_shrink extra
// starts shrink the range by k/32 of it (k = 1, 2, 3, ...) from the low end,
// the high end and both ends in turn.
KVRT_HD void kvq_q4_fit(const float* x, size_t stride, uint32_t n, float edge_weight, uint32_t n_shrink,
                        uint16_t* scale_h, uint16_t* min_h) {
  float lo = 0.0f, hi = 0.0f;
  for (uint32_t i = 0; i < n; ++i) {
    const float v = kvq_sanitize(x[i * stride]);
    if (i == 0 || v < lo) lo = v;
    if (i == 0 || v > hi) hi = v;
  }
  kvq_q4_params(lo, hi, scale_h, min_h);
  if (!(hi > lo)) return;  // constant set: min/max is already exact up to f16
  const float r = hi - lo, inv_half = 2.0f / r;
  // A range so small that 2 / range overflows is weighted uniformly.
  const bool finite = inv_half <= 3.0e38f;
  KvqQ4Fit f = {x, stride, n, lo, 0.5f * (lo + hi), finite ? inv_half : 0.0f, finite ? edge_weight : 0.0f,
                *scale_h, *min_h, 0.0f};
  f.err = kvq_q4_error(x, stride, n, f.scale_h, f.min_h, f.mid, f.inv_half, f.edge_weight);
  kvq_q4_refine(&f, r, r / 15.0f, lo);
  for (uint32_t k = 1; k <= n_shrink; ++k) {
    const float cut = (float)((k + 2) / 3) / 32.0f * r;
    const float a = k % 3 != 2 ? cut : 0.0f, b = k % 3 != 1 ? cut : 0.0f;
    const float s = (r - a - b) / 15.0f, m = lo + a;
    kvq_q4_try(&f, s, m);
    kvq_q4_refine(&f, r, s, m);
  }
  *scale_h = f.scale_h;
  *min_h = f.min_h;
}

KVRT_HD void kvq_put4(uint8_t* row, uint32_t c, uint8_t code) {
  uint8_t* b = row + c / 2;
  *b = (c & 1) ? (uint8_t)((*b & 0x0fu) | (code << 4)) : (uint8_t)((*b & 0xf0u) | code);
}
KVRT_HD uint32_t kvq_get4(const uint8_t* row, uint32_t c) {
  return (c & 1) ? (uint32_t)(row[c / 2] >> 4) : (uint32_t)(row[c / 2] & 0x0fu);
}

// Writes the q4 codes of the first n_tokens rows of src into one head's K
// part whose f16 scales and minimums (one pair per channel) are already set.
// Split from the fit so that a vectorized fit (kernels/cpu) shares it.
KVRT_HD void kvq_encode_k_q4(uint8_t* dst, const float* src, size_t src_stride, uint32_t n_tokens,
                             uint32_t block_tokens, uint32_t head_dim) {
  const size_t rb = kvq_row_bytes(kKvqQ4, head_dim);
  const uint16_t* sc = (const uint16_t*)(dst + kvq_scale_offset(kKvqQ4, block_tokens, head_dim));
  for (uint32_t c = 0; c < head_dim; ++c) {
    const float mn = f16_to_f32(sc[head_dim + c]), inv = kvq_inv(f16_to_f32(sc[c]));
    for (uint32_t t = 0; t < n_tokens; ++t)
      kvq_put4(dst + t * rb, c, kvq_q4_code(src[t * src_stride + c], mn, inv));
  }
}
// Same for one head's V part (one pair per token and group).
KVRT_HD void kvq_encode_v_q4(uint8_t* dst, const float* src, size_t src_stride, uint32_t n_tokens,
                             uint32_t block_tokens, uint32_t head_dim) {
  const size_t rb = kvq_row_bytes(kKvqQ4, head_dim);
  const uint32_t gs = kvq_group(head_dim), ng = kvq_n_groups(head_dim);
  const uint16_t* sc = (const uint16_t*)(dst + kvq_scale_offset(kKvqQ4, block_tokens, head_dim));
  const uint16_t* mins = sc + (size_t)block_tokens * ng;
  for (uint32_t t = 0; t < n_tokens; ++t)
    for (uint32_t c = 0; c < head_dim; ++c) {
      const uint32_t g = c / gs;
      const float mn = f16_to_f32(mins[t * ng + g]), inv = kvq_inv(f16_to_f32(sc[t * ng + g]));
      kvq_put4(dst + t * rb, c, kvq_q4_code(src[t * src_stride + c], mn, inv));
    }
}

// Quantizes the first n_tokens rows of src (row t at src + t * src_stride
// floats, head_dim channels) into one head's K part `dst` (format 3 = q8 or
// 4 = q4). Per-channel statistics use those rows only; rows n_tokens..T-1
// get code 0. The whole part, padding included, is written.
KVRT_HD void kvq_quantize_k(uint32_t format, uint8_t* dst, const float* src, size_t src_stride,
                            uint32_t n_tokens, uint32_t block_tokens, uint32_t head_dim) {
  const size_t bytes = kvq_k_head_bytes(format, block_tokens, head_dim);
  for (size_t i = 0; i < bytes; ++i) dst[i] = 0;
  uint16_t* sc = (uint16_t*)(dst + kvq_scale_offset(format, block_tokens, head_dim));
  if (format == kKvqQ4) {
    for (uint32_t c = 0; c < head_dim; ++c)
      kvq_q4_fit(src + c, src_stride, n_tokens, kKvqKeyEdgeWeight, kKvqKeyShrinkStarts, &sc[c], &sc[head_dim + c]);
    kvq_encode_k_q4(dst, src, src_stride, n_tokens, block_tokens, head_dim);
    return;
  }
  const size_t rb = kvq_row_bytes(format, head_dim);
  for (uint32_t c = 0; c < head_dim; ++c) {
    float lo = 0.0f, hi = 0.0f;
    for (uint32_t t = 0; t < n_tokens; ++t) {
      float x = kvq_sanitize(src[t * src_stride + c]);
      if (t == 0 || x < lo) lo = x;
      if (t == 0 || x > hi) hi = x;
    }
    sc[c] = kvq_q8_scale(hi > -lo ? hi : -lo);
    float inv = kvq_inv(f16_to_f32(sc[c]));
    for (uint32_t t = 0; t < n_tokens; ++t) ((int8_t*)dst)[t * rb + c] = kvq_q8_code(src[t * src_stride + c], inv);
  }
}

// Same for one head's V part; groups are independent per token.
KVRT_HD void kvq_quantize_v(uint32_t format, uint8_t* dst, const float* src, size_t src_stride,
                            uint32_t n_tokens, uint32_t block_tokens, uint32_t head_dim) {
  const size_t bytes = kvq_v_head_bytes(format, block_tokens, head_dim);
  for (size_t i = 0; i < bytes; ++i) dst[i] = 0;
  const uint32_t gs = kvq_group(head_dim), ng = kvq_n_groups(head_dim);
  uint16_t* sc = (uint16_t*)(dst + kvq_scale_offset(format, block_tokens, head_dim));
  if (format == kKvqQ4) {
    uint16_t* mins = sc + (size_t)block_tokens * ng;
    for (uint32_t t = 0; t < n_tokens; ++t)
      for (uint32_t g = 0; g < ng; ++g) {
        const uint32_t c0 = g * gs, c1 = c0 + gs < head_dim ? c0 + gs : head_dim;
        kvq_q4_fit(src + t * src_stride + c0, 1, c1 - c0, kKvqValueEdgeWeight, kKvqValueShrinkStarts,
                   &sc[t * ng + g], &mins[t * ng + g]);
      }
    kvq_encode_v_q4(dst, src, src_stride, n_tokens, block_tokens, head_dim);
    return;
  }
  const size_t rb = kvq_row_bytes(format, head_dim);
  for (uint32_t t = 0; t < n_tokens; ++t) {
    const float* x = src + t * src_stride;
    for (uint32_t g = 0; g < ng; ++g) {
      const uint32_t c0 = g * gs, c1 = c0 + gs < head_dim ? c0 + gs : head_dim;
      float lo = kvq_sanitize(x[c0]), hi = lo;
      for (uint32_t c = c0 + 1; c < c1; ++c) {
        float v = kvq_sanitize(x[c]);
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
      }
      uint16_t s = kvq_q8_scale(hi > -lo ? hi : -lo);
      sc[t * ng + g] = s;
      float inv = kvq_inv(f16_to_f32(s));
      for (uint32_t c = c0; c < c1; ++c) ((int8_t*)dst)[t * rb + c] = kvq_q8_code(x[c], inv);
    }
  }
}

// Element (token t, channel c) of one head's quantized K part.
KVRT_HD float kvq_k_value(uint32_t format, const uint8_t* src, uint32_t block_tokens,
                          uint32_t head_dim, uint32_t t, uint32_t c) {
  const size_t rb = kvq_row_bytes(format, head_dim);
  const uint16_t* sc = (const uint16_t*)(src + kvq_scale_offset(format, block_tokens, head_dim));
  if (format == kKvqQ8) return f16_to_f32(sc[c]) * (float)((const int8_t*)src)[t * rb + c];
  return f16_to_f32(sc[head_dim + c]) + f16_to_f32(sc[c]) * (float)kvq_get4(src + t * rb, c);
}

// Element (token t, channel c) of one head's quantized V part.
KVRT_HD float kvq_v_value(uint32_t format, const uint8_t* src, uint32_t block_tokens,
                          uint32_t head_dim, uint32_t t, uint32_t c) {
  const size_t rb = kvq_row_bytes(format, head_dim);
  const uint32_t ng = kvq_n_groups(head_dim), g = c / kvq_group(head_dim);
  const uint16_t* sc = (const uint16_t*)(src + kvq_scale_offset(format, block_tokens, head_dim));
  if (format == kKvqQ8) return f16_to_f32(sc[t * ng + g]) * (float)((const int8_t*)src)[t * rb + c];
  const uint16_t* mins = sc + (size_t)block_tokens * ng;
  return f16_to_f32(mins[t * ng + g]) + f16_to_f32(sc[t * ng + g]) * (float)kvq_get4(src + t * rb, c);
}

// Dequantizes n_tokens rows of one head's K or V part into dst (row stride
// dst_stride floats).
KVRT_HD void kvq_dequantize_k(uint32_t format, const uint8_t* src, uint32_t n_tokens,
                              uint32_t block_tokens, uint32_t head_dim, float* dst,
                              size_t dst_stride) {
  for (uint32_t t = 0; t < n_tokens; ++t)
    for (uint32_t c = 0; c < head_dim; ++c)
      dst[t * dst_stride + c] = kvq_k_value(format, src, block_tokens, head_dim, t, c);
}
KVRT_HD void kvq_dequantize_v(uint32_t format, const uint8_t* src, uint32_t n_tokens,
                              uint32_t block_tokens, uint32_t head_dim, float* dst,
                              size_t dst_stride) {
  for (uint32_t t = 0; t < n_tokens; ++t)
    for (uint32_t c = 0; c < head_dim; ++c)
      dst[t * dst_stride + c] = kvq_v_value(format, src, block_tokens, head_dim, t, c);
}

// Sizes of the example in docs/quantization.md (16 tokens, head_dim 128).
static_assert(kvq_k_head_bytes(kKvqQ8, 16, 128) == 16 * 128 + 2 * 128, "q8 K head part");
static_assert(kvq_k_head_bytes(kKvqQ4, 16, 128) == 16 * 64 + 4 * 128, "q4 K head part");
static_assert(kvq_v_head_bytes(kKvqQ8, 16, 128) == 16 * 128 + 2 * 16 * 4, "q8 V head part");
static_assert(kvq_v_head_bytes(kKvqQ4, 16, 128) == 16 * 64 + 4 * 16 * 4, "q4 V head part");
static_assert(kvq_v_head_bytes(kKvqQ4, 16, 80) == 16 * 40 + 4 * 16 * 3, "q4 V with a 16-channel tail group");

}  // namespace kvrt_k
