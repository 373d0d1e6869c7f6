// Qualifiers that let shared math compile for the host and for CUDA devices.
#pragma once

#if defined(__CUDACC__)
#  define KVRT_HD __host__ __device__ __forceinline__
#else
#  define KVRT_HD inline
#endif
