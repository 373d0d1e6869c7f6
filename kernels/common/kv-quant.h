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

KVRT_HD void kvq_put4(uint8_t* row, uint32_t c, uint8_t code) {
  uint8_t* b = row + c / 2;
  *b = (c & 1) ? (uint8_t)((*b & 0x0fu) | (code << 4)) : (uint8_t)((*b & 0xf0u) | code);
}
KVRT_HD uint32_t kvq_get4(const uint8_t* row, uint32_t c) {
  return (c & 1) ? (uint32_t)(row[c / 2] >> 4) : (uint32_t)(row[c / 2] & 0x0fu);
}

// Quantizes the first n_tokens rows of src (row t at src + t * src_stride
// floats, head_dim channels) into one head's K part `dst` (format 3 = q8 or
// 4 = q4). Per-channel statistics use those rows only; rows n_tokens..T-1
// get code 0. The whole part, padding included, is written.
KVRT_HD void kvq_quantize_k(uint32_t format, uint8_t* dst, const float* src, size_t src_stride,
                            uint32_t n_tokens, uint32_t block_tokens, uint32_t head_dim) {
  const size_t bytes = kvq_k_head_bytes(format, block_tokens, head_dim);
  for (size_t i = 0; i < bytes; ++i) dst[i] = 0;
  const size_t rb = kvq_row_bytes(format, head_dim);
  uint16_t* sc = (uint16_t*)(dst + kvq_scale_offset(format, block_tokens, head_dim));
  for (uint32_t c = 0; c < head_dim; ++c) {
    float lo = 0.0f, hi = 0.0f;
    for (uint32_t t = 0; t < n_tokens; ++t) {
      float x = kvq_sanitize(src[t * src_stride + c]);
      if (t == 0 || x < lo) lo = x;
      if (t == 0 || x > hi) hi = x;
    }
    if (format == kKvqQ8) {
      float amax = hi > -lo ? hi : -lo;
      sc[c] = kvq_q8_scale(amax);
      float inv = kvq_inv(f16_to_f32(sc[c]));
      for (uint32_t t = 0; t < n_tokens; ++t)
        ((int8_t*)dst)[t * rb + c] = kvq_q8_code(src[t * src_stride + c], inv);
    } else {
      kvq_q4_params(lo, hi, &sc[c], &sc[head_dim + c]);
      float mn = f16_to_f32(sc[head_dim + c]), inv = kvq_inv(f16_to_f32(sc[c]));
      for (uint32_t t = 0; t < n_tokens; ++t)
        kvq_put4(dst + t * rb, c, kvq_q4_code(src[t * src_stride + c], mn, inv));
    }
  }
}

// Same for one head's V part; groups are independent per token.
KVRT_HD void kvq_quantize_v(uint32_t format, uint8_t* dst, const float* src, size_t src_stride,
                            uint32_t n_tokens, uint32_t block_tokens, uint32_t head_dim) {
  const size_t bytes = kvq_v_head_bytes(format, block_tokens, head_dim);
  for (size_t i = 0; i < bytes; ++i) dst[i] = 0;
  const size_t rb = kvq_row_bytes(format, head_dim);
  const uint32_t gs = kvq_group(head_dim), ng = kvq_n_groups(head_dim);
  uint16_t* sc = (uint16_t*)(dst + kvq_scale_offset(format, block_tokens, head_dim));
  uint16_t* mins = sc + (size_t)block_tokens * ng;
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
      if (format == kKvqQ8) {
        uint16_t s = kvq_q8_scale(hi > -lo ? hi : -lo);
        sc[t * ng + g] = s;
        float inv = kvq_inv(f16_to_f32(s));
        for (uint32_t c = c0; c < c1; ++c) ((int8_t*)dst)[t * rb + c] = kvq_q8_code(x[c], inv);
      } else {
        kvq_q4_params(lo, hi, &sc[t * ng + g], &mins[t * ng + g]);
        float mn = f16_to_f32(mins[t * ng + g]), inv = kvq_inv(f16_to_f32(sc[t * ng + g]));
        for (uint32_t c = c0; c < c1; ++c) kvq_put4(dst + t * rb, c, kvq_q4_code(x[c], mn, inv));
      }
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
