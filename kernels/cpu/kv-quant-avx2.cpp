// The vectorized q4 parameter fit (kv-quant-lanes.h) in 256-bit vectors.
#define KVQ_LEVEL avx2
#define KVQ_LANES 8
#include "kv-quant-lanes.h"
