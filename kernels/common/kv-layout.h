// Byte layout of one KV block, shared by the cache, the CPU kernels and CUDA.
//
// A block holds block_tokens positions for every layer. In its one-piece
// form (snapshots, the stage), per layer: the K part of each KV head, then
// the V part of each KV head. For f32/f16/bf16 a head part is
// [block_tokens][head_dim] elements; for q8/q4 it is the codes followed by
// their scales (kv-quant.h has the byte layout). One head's keys for a block
// are contiguous, so attention for a head streams one run of bytes per block.
//
// In the block pool (kv/block-pool.hpp) a block is cut into one part per
// (layer, KV head), that head's K part followed by its V part, and a slab
// keeps the same part of its blocks side by side: one head's K and V of
// neighbouring blocks form one run, which one attention task reads front to
// back (docs/benchmarks.md, "The head-major pool"). Offsets are therefore
// computed from strides (kv_k_offset, kv_v_offset), never assumed.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "kv-quant.h"
#include "portable.h"

namespace kvrt_k {

// Storage formats; the values are kvrt_kv_format's.
enum KvFormat : uint32_t {
  KV_F32 = 0,
  KV_F16 = 1,
  KV_BF16 = 2,
  KV_Q8 = 3,
  KV_Q4 = 4,
};

static_assert(KV_Q8 == kKvqQ8 && KV_Q4 == kKvqQ4, "kv-quant.h uses the kvrt_kv_format values");

KVRT_HD bool kv_is_quant(uint32_t format) { return format == KV_Q8 || format == KV_Q4; }

struct KvLayout {
  uint32_t n_layer;
  uint32_t n_head_kv;
  uint32_t head_dim;
  uint32_t block_tokens;
  uint32_t k_format;
  uint32_t v_format;
  size_t k_head_bytes;  // one head's K in one block
  size_t v_head_bytes;  // one head's V in one block
  size_t layer_bytes;   // n_head_kv * (k_head_bytes + v_head_bytes)
  size_t block_bytes;   // n_layer * layer_bytes
  size_t layer_stride;  // from a block's layer to its next
  size_t k_head_stride;  // from one head's K part to the next head's
  size_t v_base;         // from a layer's start to head 0's V part
  size_t v_head_stride;  // from one head's V part to the next head's
};

// Bytes of one element of an unquantized format; 0 for formats that are not
// plain element arrays.
KVRT_HD size_t kv_elem_bytes(uint32_t format) {
  return format == KV_F32 ? 4 : (format == KV_F16 || format == KV_BF16) ? 2 : 0;
}

// The strides of a block in one piece (the order described above).
KVRT_HD void kv_layout_one_piece(KvLayout* l) {
  l->layer_stride = l->layer_bytes;
  l->k_head_stride = l->k_head_bytes;
  l->v_base = (size_t)l->n_head_kv * l->k_head_bytes;
  l->v_head_stride = l->v_head_bytes;
}

// A pool block's parts: one per (layer, KV head), of kv_head_part_bytes:
// that head's K, then its V.
KVRT_HD size_t kv_head_part_bytes(const KvLayout& l) { return l.k_head_bytes + l.v_head_bytes; }
KVRT_HD uint32_t kv_n_head_parts(const KvLayout& l) { return l.n_layer * l.n_head_kv; }

// The strides of a pool block: part (layer, head) at (layer * n_head_kv +
// head) * part_stride from the block's base, holding K then V.
KVRT_HD void kv_layout_head_parts(KvLayout* l, size_t part_stride) {
  l->layer_stride = (size_t)l->n_head_kv * part_stride;
  l->k_head_stride = part_stride;
  l->v_base = l->k_head_bytes;
  l->v_head_stride = part_stride;
}

// Fills the derived sizes (one-piece strides). Returns false for formats without a layout yet.
KVRT_HD bool kv_layout_init(KvLayout* l, uint32_t n_layer, uint32_t n_head_kv,
                            uint32_t head_dim, uint32_t block_tokens,
                            uint32_t k_format, uint32_t v_format) {
  size_t ek = kv_elem_bytes(k_format), ev = kv_elem_bytes(v_format);
  if ((ek == 0 && !kv_is_quant(k_format)) || (ev == 0 && !kv_is_quant(v_format))) return false;
  l->n_layer = n_layer;
  l->n_head_kv = n_head_kv;
  l->head_dim = head_dim;
  l->block_tokens = block_tokens;
  l->k_format = k_format;
  l->v_format = v_format;
  l->k_head_bytes = ek ? (size_t)block_tokens * head_dim * ek
                      : kvq_k_head_bytes(k_format, block_tokens, head_dim);
  l->v_head_bytes = ev ? (size_t)block_tokens * head_dim * ev
                      : kvq_v_head_bytes(v_format, block_tokens, head_dim);
  l->layer_bytes = (size_t)n_head_kv * (l->k_head_bytes + l->v_head_bytes);
  l->block_bytes = (size_t)n_layer * l->layer_bytes;
  kv_layout_one_piece(l);
  return true;
}

// Byte offset, from a block's base, of head `head`'s K in layer `layer`.
KVRT_HD size_t kv_k_offset(const KvLayout& l, uint32_t layer, uint32_t head) {
  return (size_t)layer * l.layer_stride + (size_t)head * l.k_head_stride;
}

// Byte offset, from a block's base, of head `head`'s V in layer `layer`.
KVRT_HD size_t kv_v_offset(const KvLayout& l, uint32_t layer, uint32_t head) {
  return (size_t)layer * l.layer_stride + l.v_base + (size_t)head * l.v_head_stride;
}

}  // namespace kvrt_k
