// Run-time ISA dispatch of the CPU kernels, plus the parts every ISA shares:
// dequantization, RoPE and the attention drivers (row grouping, softmax merge).
#include <math.h>
#include <string.h>

#include <atomic>

#include "../common/fp16.h"
#include "../common/kv-quant.h"
#include "cpu-kernels-impl.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace kvrt_k {

namespace {

CpuIsa detect_once() {
#if defined(__x86_64__) || defined(__i386__)
  // F16C is read from CPUID leaf 1 (ECX bit 29): clang's
  // __builtin_cpu_supports does not know the name "f16c".
  __builtin_cpu_init();
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) {
    // The AVX-512 kernels are built for F, BW, VL and DQ (the CPU check also
    // covers OS support for the state); kernels without an AVX-512 version
    // run their AVX2 one at that level.
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return CpuIsa::avx512;
    return CpuIsa::avx2;
  }
#endif
  return CpuIsa::scalar;
}

// Process-wide because it describes the CPU; tests lower it to compare levels.
std::atomic<int> g_isa{-1};

bool use_avx2() { return cpu_isa() >= CpuIsa::avx2; }

}  // namespace

CpuIsa cpu_isa_detect() {
  static const CpuIsa detected = detect_once();
  return detected;
}

CpuIsa cpu_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    v = (int)cpu_isa_detect();
    g_isa.store(v, std::memory_order_relaxed);
  }
  return (CpuIsa)v;
}

CpuIsa cpu_isa_set(CpuIsa isa) {
  CpuIsa best = cpu_isa_detect();
  CpuIsa v = (int)isa > (int)best ? best : isa;
  if ((int)v < 0) v = CpuIsa::scalar;
  g_isa.store((int)v, std::memory_order_relaxed);
  return v;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::scalar: return "scalar";
    case CpuIsa::avx2: return "avx2";
    case CpuIsa::avx512: return "avx512";
  }
  return "unknown";
}

void matmul(uint32_t wtype, const void* w, size_t k, size_t r0, size_t r1, const float* x,
            size_t ldx, size_t n_rows_x, float* y, size_t ldy, float* scratch) {
  if (r0 >= r1 || n_rows_x == 0) return;
  if (cpu_isa() >= CpuIsa::avx512)
    avx512::matmul(wtype, w, k, r0, r1, x, ldx, n_rows_x, y, ldy, scratch);
  else if (use_avx2())
    avx2::matmul(wtype, w, k, r0, r1, x, ldx, n_rows_x, y, ldy, scratch);
  else
    scalar::matmul(wtype, w, k, r0, r1, x, ldx, n_rows_x, y, ldy, scratch);
}

void dequantize_row(uint32_t wtype, const void* w, size_t k, size_t row, float* out) {
  size_t rb = weight_row_bytes(wtype, k);
  const uint8_t* p = (const uint8_t*)w + row * rb;
  switch (wtype) {
    case W_F32: memcpy(out, p, k * sizeof(float)); break;
    case W_F16:
    case W_BF16:
      for (size_t j = 0; j < k; ++j) {
        uint16_t h;
        memcpy(&h, p + 2 * j, 2);
        out[j] = wtype == W_F16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
      break;
    case W_Q8_0:
      if (rb == 0) break;
      for (size_t b = 0; b < k / Q8_0_BLOCK; ++b) {
        BlockQ8_0 blk;
        memcpy(&blk, p + b * sizeof(BlockQ8_0), sizeof blk);
        float d = f16_to_f32(blk.d);
        for (int i = 0; i < Q8_0_BLOCK; ++i) out[b * Q8_0_BLOCK + i] = d * (float)blk.qs[i];
      }
      break;
    default: break;
  }
}

void rmsnorm(const float* x, const float* weight, float* y, size_t n, float eps) {
  if (use_avx2())
    avx2::rmsnorm(x, weight, y, n, eps);
  else
    scalar::rmsnorm(x, weight, y, n, eps);
}

// Cheap next to the matmuls; one path for every ISA keeps them identical.
void rope(float* x, size_t n_heads, size_t head_dim, size_t rot_dim, int32_t pos,
          float freq_base, float freq_scale) {
  if (rot_dim > head_dim) rot_dim = head_dim;
  for (size_t i = 0; i < rot_dim / 2; ++i) {
    double inv_freq = pow((double)freq_base, -2.0 * (double)i / (double)rot_dim);
    double theta = (double)pos * (double)freq_scale * inv_freq;
    float c = (float)cos(theta), s = (float)sin(theta);
    for (size_t h = 0; h < n_heads; ++h) {
      float* p = x + h * head_dim + 2 * i;
      float x0 = p[0], x1 = p[1];
      p[0] = x0 * c - x1 * s;
      p[1] = x0 * s + x1 * c;
    }
  }
}

void swiglu(float* gate, const float* up, size_t n) {
  if (use_avx2())
    avx2::swiglu(gate, up, n);
  else
    scalar::swiglu(gate, up, n);
}

void kv_store(uint32_t format, void* dst, const float* src, size_t n) {
  if (use_avx2())
    avx2::kv_store(format, dst, src, n);
  else
    scalar::kv_store(format, dst, src, n);
}

void kv_load(uint32_t format, float* dst, const void* src, size_t n) {
  if (use_avx2())
    avx2::kv_load(format, dst, src, n);
  else
    scalar::kv_load(format, dst, src, n);
}

namespace {

void kv_quantize(bool keys, uint32_t format, uint8_t* dst, const float* src, size_t src_stride,
                 uint32_t n_tokens, uint32_t block_tokens, uint32_t head_dim) {
  const bool quant = format == KV_Q8 || format == KV_Q4;
  if (quant && cpu_isa() >= CpuIsa::avx512)
    avx512::kv_quantize(format, keys, dst, src, src_stride, n_tokens, block_tokens, head_dim);
  else if (quant && use_avx2())
    avx2::kv_quantize(format, keys, dst, src, src_stride, n_tokens, block_tokens, head_dim);
  else if (keys)
    kvq_quantize_k(format, dst, src, src_stride, n_tokens, block_tokens, head_dim);
  else
    kvq_quantize_v(format, dst, src, src_stride, n_tokens, block_tokens, head_dim);
}

}  // namespace

void kv_quantize_k(uint32_t format, uint8_t* dst, const float* src, size_t src_stride, uint32_t n_tokens,
                   uint32_t block_tokens, uint32_t head_dim) {
  kv_quantize(true, format, dst, src, src_stride, n_tokens, block_tokens, head_dim);
}

void kv_quantize_v(uint32_t format, uint8_t* dst, const float* src, size_t src_stride, uint32_t n_tokens,
                   uint32_t block_tokens, uint32_t head_dim) {
  kv_quantize(false, format, dst, src, src_stride, n_tokens, block_tokens, head_dim);
}

namespace {

void run_rows(const AttnArgs& a, uint32_t kv_head, detail::AttnRows& rows) {
  for (uint32_t r = 0; r < rows.n; ++r) {
    rows.st[r]->m = -INFINITY;
    rows.st[r]->l = 0.0f;
    memset(rows.acc[r], 0, a.layout->head_dim * sizeof(float));
  }
  if (cpu_isa() >= CpuIsa::avx512 && avx512::attn_rows(a, kv_head, rows)) return;
  if (use_avx2() && avx2::attn_rows(a, kv_head, rows)) return;
  scalar::attn_rows(a, kv_head, rows);
}

}  // namespace

void attention(const AttnArgs& a, uint32_t kv_head) {
  const uint32_t hd = a.layout->head_dim;
  const uint32_t group = a.n_head / a.layout->n_head_kv;
  if (group == 0) return;
  AttnPartial st[detail::ATTN_MAX_ROWS];
  detail::AttnRows rows;
  rows.n = 0;
  rows.t0 = 0;
  // Rows are (query, head) pairs, query-major, so a set shares its keys.
  auto flush = [&]() {
    if (rows.n == 0) return;
    run_rows(a, kv_head, rows);
    for (uint32_t r = 0; r < rows.n; ++r) {
      float inv = rows.st[r]->l > 0.0f ? 1.0f / rows.st[r]->l : 0.0f;
      for (uint32_t d = 0; d < hd; ++d) rows.acc[r][d] *= inv;
    }
    rows.n = 0;
  };
  for (uint32_t i = 0; i < a.n_q; ++i) {
    int64_t vis = (int64_t)a.pos0 + i + 1;
    if (vis < 0) vis = 0;
    for (uint32_t g = 0; g < group; ++g) {
      size_t off = (size_t)i * a.q_stride + (size_t)(kv_head * group + g) * hd;
      rows.q[rows.n] = a.q + off;
      rows.acc[rows.n] = a.out + off;
      rows.st[rows.n] = &st[rows.n];
      rows.t_end[rows.n] = (uint32_t)vis;
      if (++rows.n == detail::ATTN_MAX_ROWS) flush();
    }
  }
  flush();
}

void attention_partial(const AttnArgs& a, uint32_t kv_head, uint32_t qi, uint32_t t0,
                       uint32_t t1, AttnPartial* part, float* acc) {
  const uint32_t hd = a.layout->head_dim;
  const uint32_t group = a.n_head / a.layout->n_head_kv;
  int64_t vis = (int64_t)a.pos0 + qi + 1;
  if (vis < 0) vis = 0;
  uint32_t t_end = (int64_t)t1 < vis ? t1 : (uint32_t)vis;
  detail::AttnRows rows;
  rows.n = 0;
  rows.t0 = t0;
  for (uint32_t g = 0; g < group; ++g) {
    if (t0 >= t_end) {
      part[g].m = -INFINITY;
      part[g].l = 0.0f;
      memset(acc + (size_t)g * hd, 0, hd * sizeof(float));
      continue;
    }
    size_t off = (size_t)qi * a.q_stride + (size_t)(kv_head * group + g) * hd;
    rows.q[rows.n] = a.q + off;
    rows.acc[rows.n] = acc + (size_t)g * hd;
    rows.st[rows.n] = &part[g];
    rows.t_end[rows.n] = t_end;
    if (++rows.n == detail::ATTN_MAX_ROWS) {
      run_rows(a, kv_head, rows);
      rows.n = 0;
    }
  }
  if (rows.n) run_rows(a, kv_head, rows);
}

void attention_merge(const AttnPartial* parts, const float* accs, size_t n, size_t head_dim,
                     float* out) {
  float m = -INFINITY;
  for (size_t j = 0; j < n; ++j)
    if (parts[j].m > m) m = parts[j].m;
  memset(out, 0, head_dim * sizeof(float));
  if (m == -INFINITY) return;
  float l = 0.0f;
  for (size_t j = 0; j < n; ++j) {
    if (parts[j].l == 0.0f) continue;
    float c = expf(parts[j].m - m);
    l += parts[j].l * c;
    const float* acc = accs + j * head_dim;
    for (size_t d = 0; d < head_dim; ++d) out[d] += acc[d] * c;
  }
  float inv = l > 0.0f ? 1.0f / l : 0.0f;
  for (size_t d = 0; d < head_dim; ++d) out[d] *= inv;
}

}  // namespace kvrt_k
