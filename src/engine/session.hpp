// A session: one conversation's KV cache, tokens, sampler and work buffers,
// and the forward pass that feeds it.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/runtime.hpp"
#include "engine/sampler.hpp"
#include "kv/kv-cache.hpp"

namespace kvrt {

struct SessionConfig {
  uint32_t k_format = kvrt_k::KV_F16;
  uint32_t v_format = kvrt_k::KV_F16;
  uint32_t n_ctx = 0;       // 0: the model's context length
  uint32_t max_batch = 64;  // tokens per forward pass of a prefill
};

class Session {
 public:
  // Throws Error: KVRT_ERR_INVALID_ARGUMENT (bad values), KVRT_ERR_UNSUPPORTED
  // (formats this build cannot store), KVRT_ERR_OUT_OF_MEMORY.
  Session(std::shared_ptr<const LoadedModel> model, const SessionConfig& cfg);
  ~Session();

  // Appends tokens and writes the last one's logits when `logits` is set.
  // On any error the session is unchanged.
  void decode(const int32_t* tokens, size_t n, float* logits);
  void rewind(size_t n_tokens);
  void request_abort() { abort_.store(true, std::memory_order_relaxed); }

  const Model& model() const { return *model_->model; }
  const std::shared_ptr<const LoadedModel>& loaded_model() const { return model_; }
  const KvCache& kv() const { return *kv_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  const SessionConfig& config() const { return cfg_; }
  Sampler& sampler() { return sampler_; }
  const Sampler& sampler() const { return sampler_; }
  uint64_t kv_bytes_per_token() const;

  // Wall-clock time spent in forward passes (decode and prefill) and, of
  // that, in attention over the cache, since creation; restore() of a
  // suspended session hands them over with set_timers.
  struct Timers {
    uint64_t compute_ns = 0;
    uint64_t attention_ns = 0;
  };
  const Timers& timers() const { return timers_; }
  void set_timers(const Timers& t) { timers_ = t; }

  // Snapshot import (src/snapshot), on a new session that holds no tokens:
  // begin_import takes the blocks for n_tokens positions from the pool
  // (Error KVRT_ERR_OUT_OF_MEMORY, KVRT_ERR_CONTEXT_FULL; unchanged then),
  // the caller writes their bytes through import_block(), and finish_import
  // counts them and sets the token ids (tokens.size() == n_tokens).
  void begin_import(uint32_t n_tokens);
  BlockRuns import_block(uint32_t logical) const { return kv_->block_runs(logical); }
  void finish_import(std::vector<int32_t> tokens);

 private:
  void forward(const int32_t* tokens, uint32_t n, uint32_t pos0, float* logits);

  // Quantized caches (q8/q4). The block being filled lives in stage_, an f16
  // block (all layers and heads) laid out by stage_layout_; pool blocks are
  // written only when full, by quantizing the stage. See docs/quantization.md.
  void quant_store(uint32_t layer, const float* k, const float* v, uint32_t n, uint32_t pos0);
  void quant_load_stage(uint32_t logical_block);  // pool block -> stage (lossy)
  bool quant_ = false;
  kvrt_k::KvLayout stage_layout_{};
  std::vector<uint8_t> stage_, stage_saved_;
  // Per worker thread: one block's K and V rows as f32 (block_tokens *
  // head_dim each) and one row of each as f16.
  std::vector<float> qtmp_k_, qtmp_v_;
  std::vector<uint16_t> qtmp_h_;

 public:
  // The f16 tail staging of a quantized session (empty otherwise): the
  // positions n_tokens - n_tokens % block_tokens .. n_tokens - 1, which are
  // not in the pool block yet. A snapshot of a q8/q4 session must carry it.
  bool kv_quantized() const { return quant_; }
  const std::vector<uint8_t>& kv_stage() const { return stage_; }
  uint8_t* import_stage() { return stage_.data(); }

 private:

  std::shared_ptr<const LoadedModel> model_;
  Runtime& rt_;
  SessionConfig cfg_;
  std::unique_ptr<KvCache> kv_;
  Sampler sampler_;
  std::vector<int32_t> tokens_;
  std::atomic<bool> abort_{false};
  Timers timers_;

  // Work buffers, sized for max_batch tokens at creation.
  std::vector<float> x_, xn_, q_, k_, v_, att_, tmp_, gate_, up_;
  std::vector<float> rows_, part_acc_;
  std::vector<kvrt_k::AttnPartial> parts_;
  BackendScratch scratch_;
};

// Bytes one token takes in the cache for these formats, scales included
// (a block's bytes / block_tokens, rounded up); 0 when unsupported.
uint64_t kv_bytes_per_token(const HParams& hp, uint32_t k_format, uint32_t v_format,
                            uint32_t block_tokens = 16);

}  // namespace kvrt
