// The vectorized q4 parameter fit (kv-quant-lanes.h) in pairs of 256-bit vectors.
#define KVQ_LEVEL avx2
#include "kv-quant-lanes.h"
