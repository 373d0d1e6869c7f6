// Scalar conversions between f32 and the 16-bit float formats (IEEE half and
// bfloat16), shared by the CPU kernels, the cache and CUDA so all agree bit for bit.
#pragma once

#include <stdint.h>
#include <string.h>

#include "portable.h"

namespace kvrt_k {

static_assert(sizeof(float) == 4, "f32 conversions assume a 32-bit IEEE float");
static_assert(sizeof(uint16_t) == 2, "16-bit formats are stored as uint16_t");

KVRT_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
#endif
}

KVRT_HD float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// Exact: every half value is representable in f32. NaN payloads are kept.
KVRT_HD float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1fu) return f32_from_bits(sign | 0x7f800000u | (man << 13));
  if (exp != 0) return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
  if (man == 0) return f32_from_bits(sign);
  // Subnormal half: shift the mantissa up until its leading 1 is implicit.
  uint32_t e = 113;  // exponent of 2^-14 in f32 bias
  while ((man & 0x400u) == 0) {
    man <<= 1;
    --e;
  }
  return f32_from_bits(sign | (e << 23) | ((man & 0x3ffu) << 13));
}

// Round to nearest, ties to even; overflow gives inf, NaN stays a (quiet) NaN.
KVRT_HD uint16_t f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) {
    if (a == 0x7f800000u) return (uint16_t)(sign | 0x7c00u);
    return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  }
  // 65520 is halfway between the largest half (65504) and 65536; its tie
  // rounds to the even neighbour, which is infinity.
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
  uint32_t e = a >> 23;
  if (e < 113) {  // below 2^-14: the result is subnormal (or zero)
    uint32_t shift = 126 - e;  // value / 2^-24 = m >> shift
    if (shift > 24) return sign;
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return (uint16_t)(sign | q);
  }
  uint32_t h = ((e - 112u) << 10) | ((a >> 13) & 0x3ffu);
  uint32_t rem = a & 0x1fffu;
  // A carry out of the mantissa correctly bumps the exponent.
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return (uint16_t)(sign | h);
}

KVRT_HD float bf16_to_f32(uint16_t b) { return f32_from_bits((uint32_t)b << 16); }

// Round to nearest, ties to even; NaN is kept a NaN (forced quiet so the
// truncated payload cannot become zero, which would read as infinity).
KVRT_HD uint16_t f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

}  // namespace kvrt_k
