// Scalar reference kernels: plain loops that the SIMD versions are tested
// against, and the fallback on CPUs without AVX2.
#include <math.h>
#include <string.h>

#include "../common/fp16.h"
#include "cpu-kernels-impl.h"

namespace kvrt_k {
namespace scalar {

void matmul(uint32_t wtype, const void* w, size_t k, size_t r0, size_t r1, const float* x,
            size_t ldx, size_t n_rows_x, float* y, size_t ldy, float* scratch) {
  if (weight_row_bytes(wtype, k) == 0 && k != 0) return;
  for (size_t r = r0; r < r1; ++r) {
    dequantize_row(wtype, w, k, r, scratch);
    for (size_t m = 0; m < n_rows_x; ++m) {
      const float* xm = x + m * ldx;
      double acc = 0.0;
      for (size_t j = 0; j < k; ++j) acc += (double)xm[j] * (double)scratch[j];
      y[m * ldy + r] = (float)acc;
    }
  }
}

void rmsnorm(const float* x, const float* weight, float* y, size_t n, float eps) {
  double ss = 0.0;
  for (size_t i = 0; i < n; ++i) ss += (double)x[i] * (double)x[i];
  float s = (float)(1.0 / sqrt(ss / (double)(n ? n : 1) + (double)eps));
  for (size_t i = 0; i < n; ++i) y[i] = x[i] * s * weight[i];
}

void swiglu(float* gate, const float* up, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    float g = gate[i];
    gate[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

void kv_store(uint32_t format, void* dst, const float* src, size_t n) {
  if (format == KV_F32) {
    memcpy(dst, src, n * sizeof(float));
  } else if (format == KV_F16) {
    uint16_t* d = (uint16_t*)dst;
    for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
  } else if (format == KV_BF16) {
    uint16_t* d = (uint16_t*)dst;
    for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
  }
}

namespace {

float load_elem(uint32_t format, const uint8_t* base, size_t i) {
  if (format == KV_F32) {
    float f;
    memcpy(&f, base + i * 4, 4);
    return f;
  }
  uint16_t h;
  memcpy(&h, base + i * 2, 2);
  return format == KV_F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

}  // namespace

void kv_load(uint32_t format, float* dst, const void* src, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = load_elem(format, (const uint8_t*)src, i);
}

// One key at a time per row: the textbook online softmax.
void attn_rows(const AttnArgs& a, uint32_t kv_head, const detail::AttnRows& rows) {
  const KvLayout& L = *a.layout;
  const size_t hd = L.head_dim;
  const size_t ek = kv_elem_bytes(L.k_format), ev = kv_elem_bytes(L.v_format);
  for (uint32_t r = 0; r < rows.n; ++r) {
    const float* q = rows.q[r];
    float* acc = rows.acc[r];
    float m = rows.st[r]->m, l = rows.st[r]->l;
    for (uint32_t t = rows.t0; t < rows.t_end[r]; ++t) {
      const uint8_t* blk = a.blocks[t / L.block_tokens];
      size_t slot = t % L.block_tokens;
      const uint8_t* kp = blk + kv_k_offset(L, a.layer, kv_head) + slot * hd * ek;
      const uint8_t* vp = blk + kv_v_offset(L, a.layer, kv_head) + slot * hd * ev;
      float dot = 0.0f;
      for (size_t d = 0; d < hd; ++d) dot += q[d] * load_elem(L.k_format, kp, d);
      float s = a.scale * dot;
      float m_new = s > m ? s : m;
      float alpha = expf(m - m_new);  // 0 when m is -inf
      float p = expf(s - m_new);
      l = l * alpha + p;
      for (size_t d = 0; d < hd; ++d) acc[d] = acc[d] * alpha + p * load_elem(L.v_format, vp, d);
      m = m_new;
    }
    rows.st[r]->m = m;
    rows.st[r]->l = l;
  }
}

}  // namespace scalar
}  // namespace kvrt_k
