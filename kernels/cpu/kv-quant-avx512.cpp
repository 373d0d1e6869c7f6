// The vectorized q8 and q4 encoders (kv-quant-lanes.h) in 512-bit vectors.
#define KVQ_LEVEL avx512
#define KVQ_LANES 16
#include "kv-quant-lanes.h"
