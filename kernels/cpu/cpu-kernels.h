// CPU compute kernels: matrix products over every weight type, norms, RoPE,
// activations and attention over paged KV blocks. Pure functions over raw
// pointers; the SIMD level is picked at run time (see cpu_isa()).
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "../common/kv-layout.h"
#include "../common/weight-types.h"

namespace kvrt_k {

enum class CpuIsa { scalar = 0, avx2 = 1, avx512 = 2 };

// The best level this CPU supports (AVX2 needs FMA and F16C too).
CpuIsa cpu_isa_detect();
// The level in use; starts as cpu_isa_detect().
CpuIsa cpu_isa();
// Forces a level (tests compare levels); clamps to what the CPU supports and
// returns the level actually set.
CpuIsa cpu_isa_set(CpuIsa isa);
const char* cpu_isa_name(CpuIsa isa);

// Floats a matmul may pack weights into (the AVX2 prefill path: 16 rows of
// 256 weights as f32).
constexpr size_t MATMUL_PACK_FLOATS = 4096;
// Floats of `scratch` a matmul of k-weight rows needs: k for a dequantized
// row, or the packed weights and room to align them to 32 bytes.
constexpr size_t matmul_scratch_floats(size_t k) {
  return k > MATMUL_PACK_FLOATS + 8 ? k : MATMUL_PACK_FLOATS + 8;
}

// y[m * ldy + r] = dot(x[m * ldx .. + k], W row r) for r in [r0, r1) and
// m in [0, n_rows_x). W holds rows of k weights of type `wtype`, each
// weight_row_bytes(wtype, k) bytes, starting at `w`. Callers split [r0, r1)
// across threads. `scratch` holds at least matmul_scratch_floats(k) floats.
void matmul(uint32_t wtype, const void* w, size_t k, size_t r0, size_t r1,
            const float* x, size_t ldx, size_t n_rows_x, float* y, size_t ldy,
            float* scratch);

// out[0..k) = row `row` of W, dequantized to f32.
void dequantize_row(uint32_t wtype, const void* w, size_t k, size_t row, float* out);

// y = x / sqrt(mean(x^2) + eps) * weight, n elements. y may equal x.
void rmsnorm(const float* x, const float* weight, float* y, size_t n, float eps);

// Rotates adjacent pairs (x[2i], x[2i+1]) of each of n_heads heads of
// head_dim floats, for the first rot_dim dims of each head, at position pos:
// theta_i = pos * freq_scale * base^(-2i / rot_dim).
void rope(float* x, size_t n_heads, size_t head_dim, size_t rot_dim, int32_t pos,
          float freq_base, float freq_scale);

// gate[i] = silu(gate[i]) * up[i].
void swiglu(float* gate, const float* up, size_t n);

// Converts n floats into a KV storage format (KV_F32, KV_F16 or KV_BF16) at
// dst.
void kv_store(uint32_t format, void* dst, const float* src, size_t n);
// The inverse: n elements of a KV storage format (KV_F32, KV_F16, KV_BF16)
// at src to floats. Exact; every level gives the scalar conversion's bits
// (a NaN stays a NaN of the same sign).
void kv_load(uint32_t format, float* dst, const void* src, size_t n);

// Quantizes the first n_tokens rows of src into one head's K (or V) part of
// a block: kvq_quantize_k / kvq_quantize_v (kernels/common/kv-quant.h), run
// on 8 (AVX2) or 16 (AVX-512) sets at once for q8 and q4 (with its
// parameter fit). The bytes are the same on every level.
void kv_quantize_k(uint32_t format, uint8_t* dst, const float* src, size_t src_stride, uint32_t n_tokens,
                   uint32_t block_tokens, uint32_t head_dim);
void kv_quantize_v(uint32_t format, uint8_t* dst, const float* src, size_t src_stride, uint32_t n_tokens,
                   uint32_t block_tokens, uint32_t head_dim);
// Attention of a batch of queries over a session's paged cache.
struct AttnArgs {
  const KvLayout* layout;
  const uint8_t* const* blocks;  // base of each logical block, in order
  uint32_t layer;
  const float* q;     // [n_q][n_head][head_dim], RoPE applied
  float* out;         // [n_q][n_head][head_dim]
  size_t q_stride;    // floats between consecutive queries in q and out
  uint32_t n_q;       // queries in the batch
  uint32_t n_head;    // query heads; n_head / layout->n_head_kv share a KV head
  int32_t pos0;       // position of query 0; query i sees cache positions [0, pos0 + i]
  float scale;        // usually 1 / sqrt(head_dim)
};

// Partial attention state of one query head over a range of positions:
// running max m, sum of exp(s - m) l, and unnormalized output acc[head_dim].
// Partials over disjoint ranges merge exactly (online softmax).
struct AttnPartial {
  float m;
  float l;
};

// Computes the output of every query and every query head that uses KV head
// `kv_head`, over all positions each query may see.
void attention(const AttnArgs& a, uint32_t kv_head);

// Same for positions [t0, t1) only, for a single query `qi`: writes, for each
// query head of the group (in head order), its partial into part[g] and its
// unnormalized accumulator into acc[g * head_dim ..]. A range the query cannot
// see yields m = -inf, l = 0, acc = 0.
void attention_partial(const AttnArgs& a, uint32_t kv_head, uint32_t qi,
                       uint32_t t0, uint32_t t1, AttnPartial* part, float* acc);

// Merges n partials of one head (each with its acc of head_dim floats) and
// writes the normalized output.
void attention_merge(const AttnPartial* parts, const float* accs, size_t n,
                     size_t head_dim, float* out);

}  // namespace kvrt_k
