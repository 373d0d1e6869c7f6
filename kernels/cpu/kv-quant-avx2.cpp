// The vectorized q8 and q4 encoders (kv-quant-lanes.h) in 256-bit vectors.
#define KVQ_LEVEL avx2
#define KVQ_LANES 8
#include "kv-quant-lanes.h"
