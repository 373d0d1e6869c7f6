// The snapshot hash (four-lane multiply-rotate), byte-plane shuffling, and
// the model fingerprint built from them.
#include <algorithm>
#include <numeric>

#include "model/model.hpp"
#include "snapshot/snapshot-format.hpp"

namespace kvrt {
namespace snap {

namespace {

constexpr uint64_t kP1 = 0x9e3779b185ebca87ULL;
constexpr uint64_t kP2 = 0xc2b2ae3d27d4eb4fULL;
constexpr uint64_t kP3 = 0x165667b19e3779f9ULL;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

inline uint64_t load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// Multiply-xorshift avalanche: every input bit reaches every output bit.
inline uint64_t avalanche(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

inline uint64_t lane_round(uint64_t v, uint64_t w) { return rotl(v + w * kP2, 31) * kP1; }

}  // namespace

Hasher::Hasher(uint64_t seed) {
  for (int i = 0; i < 4; ++i) v_[i] = seed + kP1 * static_cast<uint64_t>(i + 1) + kP3;
}

void Hasher::stripe(const uint8_t* p) {
  v_[0] = lane_round(v_[0], load64(p));
  v_[1] = lane_round(v_[1], load64(p + 8));
  v_[2] = lane_round(v_[2], load64(p + 16));
  v_[3] = lane_round(v_[3], load64(p + 24));
}

void Hasher::update(const void* data, size_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  total_ += n;
  if (buffered_) {
    size_t take = std::min(n, sizeof buf_ - buffered_);
    std::memcpy(buf_ + buffered_, p, take);
    buffered_ += take;
    p += take;
    n -= take;
    if (buffered_ < sizeof buf_) return;
    stripe(buf_);
    buffered_ = 0;
  }
  for (; n >= 32; p += 32, n -= 32) stripe(p);
  if (n) {
    std::memcpy(buf_, p, n);
    buffered_ = n;
  }
}

void Hasher::final_lanes(uint64_t v[4]) const {
  for (int i = 0; i < 4; ++i) v[i] = v_[i];
  if (buffered_) {
    uint8_t last[32] = {};
    std::memcpy(last, buf_, buffered_);
    for (int i = 0; i < 4; ++i) v[i] = lane_round(v[i], load64(last + 8 * i));
  }
}

uint64_t Hasher::finish64() const {
  uint64_t v[4];
  final_lanes(v);
  return avalanche(rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18) + total_ * kP3);
}

void Hasher::finish128(uint64_t* lo, uint64_t* hi) const {
  uint64_t v[4];
  final_lanes(v);
  *lo = avalanche(rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18) + total_ * kP3);
  *hi = avalanche((v[0] ^ rotl(v[2], 29)) * kP2 + (v[1] ^ rotl(v[3], 43)) + (total_ ^ kP1));
}

uint64_t hash64(const void* data, size_t n, uint64_t seed) {
  Hasher h(seed);
  h.update(data, n);
  return h.finish64();
}

void shuffle_planes(const uint8_t* src, uint8_t* dst, size_t n_bytes, size_t width) {
  if (width <= 1) {
    std::memcpy(dst, src, n_bytes);
    return;
  }
  const size_t n = n_bytes / width;
  for (size_t j = 0; j < width; ++j) {
    uint8_t* plane = dst + j * n;
    for (size_t i = 0; i < n; ++i) plane[i] = src[i * width + j];
  }
}

void unshuffle_planes(const uint8_t* src, uint8_t* dst, size_t n_bytes, size_t width) {
  if (width <= 1) {
    std::memcpy(dst, src, n_bytes);
    return;
  }
  const size_t n = n_bytes / width;
  for (size_t j = 0; j < width; ++j) {
    const uint8_t* plane = src + j * n;
    for (size_t i = 0; i < n; ++i) dst[i * width + j] = plane[i];
  }
}

}  // namespace snap

namespace {

void hash_u32(snap::Hasher& h, uint32_t v) { h.update(&v, 4); }
void hash_u64(snap::Hasher& h, uint64_t v) { h.update(&v, 8); }
void hash_f32(snap::Hasher& h, float v) { h.update(&v, 4); }
void hash_str(snap::Hasher& h, const std::string& s) {
  hash_u64(h, s.size());
  h.update(s.data(), s.size());
}

}  // namespace

ModelFingerprint Model::fingerprint() const {
  std::call_once(fingerprint_once_, [this] {
    snap::Hasher h(0x4b56525446503031ULL);  // "KVRTFP01"
    const HParams& hp = hp_;
    // Everything the forward pass reads besides the tensors.
    hash_str(h, hp.architecture);
    for (uint32_t v : {hp.n_vocab, hp.n_ctx_train, hp.n_embd, hp.n_layer, hp.n_head, hp.n_head_kv,
                       hp.head_dim, hp.n_ff, hp.rope_dim})
      hash_u32(h, v);
    hash_f32(h, hp.rope_freq_base);
    hash_f32(h, hp.rope_freq_scale);
    hash_f32(h, hp.norm_eps);
    // Tensors by name, so that the file's order does not matter.
    const auto& ts = file_->tensors();
    std::vector<size_t> order(ts.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ts[a].name < ts[b].name; });
    hash_u64(h, ts.size());
    for (size_t i : order) {
      const GgufTensor& t = ts[i];
      hash_str(h, t.name);
      hash_u32(h, t.type);
      hash_u32(h, t.n_dims);
      for (uint64_t d : t.ne) hash_u64(h, d);
      hash_u64(h, t.nbytes);
      h.update(t.data, t.nbytes);
    }
    h.finish128(&fingerprint_.lo, &fingerprint_.hi);
  });
  return fingerprint_;
}

}  // namespace kvrt
