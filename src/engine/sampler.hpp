// Token sampler: greedy, temperature, top-k, top-p, with a seeded generator
// whose state is plain data (saved with session snapshots).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace kvrt {

struct SamplerConfig {
  float temperature = 0.8f;  // 0 = greedy
  uint32_t top_k = 40;       // 0 = all
  float top_p = 0.95f;       // (0, 1]
  uint64_t seed = 0;
};

class Sampler {
 public:
  // Sizes the scratch so sample() does not allocate.
  explicit Sampler(size_t n_vocab);
  // Sets the config and reseeds. Throws Error(KVRT_ERR_INVALID_ARGUMENT)
  // naming the bad field; the sampler is unchanged then.
  void configure(const SamplerConfig& cfg);
  const SamplerConfig& config() const { return cfg_; }

  // Picks a token from n_vocab logits. Throws Error(KVRT_ERR_INVALID_ARGUMENT)
  // on NaN logits. Greedy picks the highest logit, lowest id on ties.
  int32_t sample(const float* logits, size_t n);

  // The generator's state (xoshiro256**), for snapshots.
  const uint64_t* rng_state() const { return s_; }
  void set_rng_state(const uint64_t state[4]);

 private:
  double next_uniform();  // [0, 1)
  SamplerConfig cfg_;
  uint64_t s_[4];
  std::vector<std::pair<float, int32_t>> cand_;
  size_t n_vocab_;
};

}  // namespace kvrt
