// Weight tensor types (numbered as GGUF numbers them) and their row sizes.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "portable.h"

namespace kvrt_k {

enum WeightType : uint32_t {
  W_F32 = 0,
  W_F16 = 1,
  W_Q8_0 = 8,
  W_BF16 = 30,
};

// GGUF's Q8_0: 32 weights share one f16 scale; w = d * qs[i].
constexpr int Q8_0_BLOCK = 32;
struct BlockQ8_0 {
  uint16_t d;  // f16 scale
  int8_t qs[Q8_0_BLOCK];
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 34 bytes in GGUF");

// Bytes of one row of `n` weights; 0 when the type is unknown or `n` does not
// divide into the type's blocks.
KVRT_HD size_t weight_row_bytes(uint32_t type, size_t n) {
  switch (type) {
    case W_F32: return n * 4;
    case W_F16:
    case W_BF16: return n * 2;
    case W_Q8_0: return n % Q8_0_BLOCK ? 0 : n / Q8_0_BLOCK * sizeof(BlockQ8_0);
    default: return 0;
  }
}

}  // namespace kvrt_k
