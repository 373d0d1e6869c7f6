// A loaded Llama-family model: hyper-parameters, weight views into the mapped
// GGUF file, and its tokenizer.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "model/gguf-reader.hpp"
#include "model/tokenizer.hpp"

namespace kvrt {

// 128-bit identity of a model's weights (see Model::fingerprint()).
struct ModelFingerprint {
  uint64_t lo = 0;
  uint64_t hi = 0;
};

struct HParams {
  std::string architecture;  // "llama"
  std::string name;          // general.name
  uint32_t n_vocab = 0;
  uint32_t n_ctx_train = 0;
  uint32_t n_embd = 0;
  uint32_t n_layer = 0;
  uint32_t n_head = 0;
  uint32_t n_head_kv = 0;
  uint32_t head_dim = 0;     // n_embd / n_head
  uint32_t n_ff = 0;
  uint32_t rope_dim = 0;     // rotated dims per head (rope.dimension_count, default head_dim)
  float rope_freq_base = 10000.0f;
  float rope_freq_scale = 1.0f;  // 1 / rope.scaling.factor for linear scaling
  float norm_eps = 1e-5f;
};

// A matrix of `rows` output features by `cols` inputs, stored row by row in
// the file's type (kvrt_k::WeightType); GGUF's ne[0] is `cols`.
struct WeightMatrix {
  uint32_t type = 0;
  uint32_t rows = 0;
  uint32_t cols = 0;
  size_t row_bytes = 0;
  const void* data = nullptr;
};

struct LayerWeights {
  const float* attn_norm = nullptr;  // [n_embd]
  WeightMatrix wq, wk, wv, wo;       // wq: n_embd x n_embd; wk, wv: kv_dim x n_embd; wo: n_embd x n_embd
  const float* ffn_norm = nullptr;   // [n_embd]
  WeightMatrix w_gate, w_up;         // n_ff x n_embd
  WeightMatrix w_down;               // n_embd x n_ff
};

class Model {
 public:
  // Loads and validates. Throws Error: KVRT_ERR_IO, KVRT_ERR_CORRUPT (bad
  // file, missing tensor, wrong shape), KVRT_ERR_UNSUPPORTED (architecture,
  // weight type or tokenizer other than supported, named in the message).
  static std::unique_ptr<Model> load(const std::string& path);
  // Same over an already parsed file (tests, fuzzing).
  static std::unique_ptr<Model> from_gguf(std::unique_ptr<GgufFile> file);

  const HParams& hparams() const { return hp_; }
  const Tokenizer& tokenizer() const { return tok_; }
  const GgufFile& file() const { return *file_; }

  WeightMatrix tok_embd;           // n_vocab x n_embd
  const float* output_norm = nullptr;
  WeightMatrix output;             // n_vocab x n_embd (tok_embd when tied)
  std::vector<LayerWeights> layers;

  uint64_t n_params = 0;
  uint64_t weight_bytes = 0;
  uint64_t decode_weight_bytes = 0;  // read by one decode step (one embedding row)

  // Hash of the hyper-parameters and of every tensor's name, type, shape and
  // data (src/snapshot/fingerprint.cpp), so that a snapshot is only loaded
  // into the model it was made with. Computed on first use; thread-safe.
  ModelFingerprint fingerprint() const;

 private:
  std::unique_ptr<GgufFile> file_;
  HParams hp_;
  Tokenizer tok_;
  std::vector<std::vector<float>> owned_norms_;  // norms converted to f32 when stored otherwise
  mutable std::once_flag fingerprint_once_;
  mutable ModelFingerprint fingerprint_;
};

}  // namespace kvrt
