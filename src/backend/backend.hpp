// The narrow compute interface the engine uses: matrix products by weight
// type and attention over a block table, spread over the runtime's threads.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../../kernels/cpu/attention-quant.h"
#include "../../kernels/cpu/cpu-kernels.h"

namespace kvrt {

class ThreadPool;

// A weight matrix of `rows` outputs by `cols` inputs in a kvrt_k::WeightType.
struct MatRef {
  uint32_t type;
  uint32_t rows;
  uint32_t cols;
  size_t row_bytes;
  const void* data;
};

// Per-session work memory the backend may use, sized at session creation.
struct BackendScratch {
  float* rows = nullptr;        // n_threads x row_floats, for dequantized or
  size_t row_floats = 0;        // packed rows: matmul_scratch_floats(widest)
  kvrt_k::AttnPartial* parts = nullptr;  // attention partials
  float* part_acc = nullptr;     // (part_capacity + kMaxSplit) x head_dim floats
  size_t part_capacity = 0;     // partials that fit
};

class CpuBackend {
 public:
  static constexpr unsigned kMaxThreads = 256;  // the runtime refuses more
  static constexpr unsigned kMaxMats = 4;       // matrices per matmul_multi
  static constexpr unsigned kMaxSplit = 64;     // position ranges per head

  explicit CpuBackend(ThreadPool& pool) : pool_(pool) {}
  unsigned n_threads() const;

  // y[m][r] = x[m] . W[r] for m < n_x, r < rows; rows spread over threads.
  void matmul(const MatRef& w, const float* x, size_t n_x, float* y, size_t ldy,
              BackendScratch& s) const;
  // Several products of the same input in one parallel region (Q, K, V or
  // gate, up): y_i[m][r] = x[m] . W_i[r].
  void matmul_multi(const MatRef* w, float* const* y, const size_t* ldy, size_t n_mats,
                    const float* x, size_t n_x, BackendScratch& s) const;
  // Attention for every query head; splits long contexts into position
  // ranges merged with online softmax.
  void attention(const kvrt_k::AttnArgs& a, BackendScratch& s) const;
  // The same over q8/q4 blocks plus an f16 staging tail block, with the same
  // split by head and position range.
  void attention_quant(const kvrt_k::QAttnArgs& a, BackendScratch& s) const;

  // Partials attention() may need for a context of n_ctx positions.
  static size_t attention_partials_needed(unsigned n_threads, uint32_t n_head,
                                          uint32_t n_ctx);

 private:
  ThreadPool& pool_;
};

}  // namespace kvrt
