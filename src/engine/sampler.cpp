// Token sampler: greedy, temperature, top-k, top-p over a xoshiro256**
// generator seeded by splitmix64.
#include "engine/sampler.hpp"

#include <algorithm>
#include <cmath>

#include "util/error.hpp"

namespace kvrt {

namespace {

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// Higher logit first; the lower id wins ties so that results do not depend
// on the order std::nth_element leaves equal elements in.
inline bool better(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

}  // namespace

Sampler::Sampler(size_t n_vocab) : n_vocab_(n_vocab) {
  cand_.reserve(n_vocab);
  uint64_t x = cfg_.seed;
  for (auto& w : s_) w = splitmix64(x);
}

void Sampler::configure(const SamplerConfig& cfg) {
  if (!std::isfinite(cfg.temperature) || cfg.temperature < 0.0f)
    fail(KVRT_ERR_INVALID_ARGUMENT, "sampler temperature %g: must be finite and >= 0",
         static_cast<double>(cfg.temperature));
  if (!(cfg.top_p > 0.0f && cfg.top_p <= 1.0f))
    fail(KVRT_ERR_INVALID_ARGUMENT, "sampler top_p %g: must be in (0, 1]",
         static_cast<double>(cfg.top_p));
  cfg_ = cfg;
  uint64_t x = cfg.seed;
  for (auto& w : s_) w = splitmix64(x);
}

void Sampler::set_rng_state(const uint64_t state[4]) {
  // The all-zero state is a fixed point of xoshiro and would yield zeros forever.
  if ((state[0] | state[1] | state[2] | state[3]) == 0)
    fail(KVRT_ERR_INVALID_ARGUMENT, "sampler generator state is all zero");
  for (int i = 0; i < 4; ++i) s_[i] = state[i];
}

double Sampler::next_uniform() {
  // xoshiro256**
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return static_cast<double>(result >> 11) * 0x1.0p-53;  // 53 bits
}

int32_t Sampler::sample(const float* logits, size_t n) {
  if (!logits || n == 0 || n > n_vocab_)
    fail(KVRT_ERR_INVALID_ARGUMENT, "sampler: %zu logits for a vocabulary of %zu", n, n_vocab_);
  for (size_t i = 0; i < n; ++i)
    if (std::isnan(logits[i]))
      fail(KVRT_ERR_INVALID_ARGUMENT, "sampler: logit %zu is NaN", i);

  if (cfg_.temperature == 0.0f) {
    size_t best = 0;
    for (size_t i = 1; i < n; ++i)
      if (logits[i] > logits[best]) best = i;
    return static_cast<int32_t>(best);
  }

  // cand_ has capacity n_vocab_ >= n, so none of this allocates.
  cand_.clear();
  // Divide rather than multiply by 1/T: a tiny T would make 1/T infinite and
  // a zero logit times infinity NaN.
  const float t = cfg_.temperature;
  for (size_t i = 0; i < n; ++i) cand_.emplace_back(logits[i] / t, static_cast<int32_t>(i));
  size_t k = (cfg_.top_k == 0 || cfg_.top_k >= n) ? n : cfg_.top_k;
  if (k < n) std::nth_element(cand_.begin(), cand_.begin() + (k - 1), cand_.end(), better);
  std::sort(cand_.begin(), cand_.begin() + k, better);

  // Softmax in double with the maximum subtracted. An infinite maximum
  // (+inf logit, or every logit -inf) leaves the mass on the tied maxima.
  const double mx = cand_[0].first;
  const bool inf_max = std::isinf(mx);
  double sum = 0.0;
  auto weight = [&](size_t i) {
    double l = cand_[i].first;
    if (inf_max) return l == mx ? 1.0 : 0.0;
    return std::exp(l - mx);
  };
  for (size_t i = 0; i < k; ++i) sum += weight(i);

  // Top-p: the smallest sorted prefix whose probability reaches top_p.
  size_t keep = k;
  if (cfg_.top_p < 1.0f) {
    const double target = static_cast<double>(cfg_.top_p) * sum;
    double cum = 0.0;
    for (size_t i = 0; i < k; ++i) {
      cum += weight(i);
      if (cum >= target) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0.0;
  for (size_t i = 0; i < keep; ++i) kept += weight(i);

  const double u = next_uniform() * kept;
  double cum = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    cum += weight(i);
    if (u < cum) return cand_[i].second;
  }
  // Rounding can leave u a hair above the last partial sum.
  for (size_t i = keep; i-- > 0;)
    if (weight(i) > 0.0) return cand_[i].second;
  return cand_[0].second;
}

}  // namespace kvrt
