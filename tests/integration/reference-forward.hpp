// A plain scalar Llama forward pass in double precision, independent of the
// engine and its kernels, used by the tests as the source of truth for logits.
//
// It takes only the hyper-parameters and raw weight bytes from kvrt::Model
// and does everything else itself: weight decoding (F32, F16, BF16, Q8_0),
// RMSNorm, RoPE on adjacent pairs, grouped-query causal attention over a
// dense cache, SwiGLU, the output projection. Written for clarity, not speed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "model/model.hpp"

namespace kvrt_test {

// IEEE binary16 bits to their exact value.
inline double ref_half_to_double(uint16_t h) {
  const int sign = (h >> 15) & 1;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  double v;
  if (exp == 0)
    v = std::ldexp(double(mant), -24);  // subnormal or zero
  else if (exp == 31)
    v = mant ? NAN : INFINITY;
  else
    v = std::ldexp(double(1024 + mant), exp - 25);
  return sign ? -v : v;
}

// bfloat16 bits are the top half of a float's.
inline double ref_bf16_to_double(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The binary16 value nearest to v (ties to even), as a double: what an f16
// KV cache keeps of a value.
inline double ref_round_to_half(double v) {
  if (!std::isfinite(v) || v == 0.0) return v;
  int e;
  std::frexp(v, &e);  // |v| in [2^(e-1), 2^e)
  // 11 significant bits for normals; a fixed step of 2^-24 below 2^-14.
  const int step_exp = e - 11 > -24 ? e - 11 : -24;
  const double r = std::ldexp(std::nearbyint(std::ldexp(v, -step_exp)), step_exp);
  return std::fabs(r) > 65504.0 ? std::copysign(INFINITY, v) : r;
}

class ReferenceModel {
 public:
  // `f16_cache` stores K and V rounded to binary16, as an f16 KV cache does.
  explicit ReferenceModel(const kvrt::Model& m, bool f16_cache = false)
      : m_(m), hp_(m.hparams()), f16_cache_(f16_cache) {
    k_cache_.resize(hp_.n_layer);
    v_cache_.resize(hp_.n_layer);
  }

  // Forgets every cached position.
  void reset() {
    for (auto& c : k_cache_) c.clear();
    for (auto& c : v_cache_) c.clear();
    n_pos_ = 0;
  }

  uint32_t n_pos() const { return n_pos_; }

  // Runs one token at the next position, appends its K and V to the cache
  // and returns the n_vocab logits.
  std::vector<float> step(int32_t token) {
    if (token < 0 || uint32_t(token) >= hp_.n_vocab)
      throw std::out_of_range("reference model: token id out of range");
    const uint32_t n_embd = hp_.n_embd, hd = hp_.head_dim;
    const uint32_t n_head = hp_.n_head, n_kv = hp_.n_head_kv;
    const uint32_t kv_dim = n_kv * hd;
    const uint32_t group = n_head / n_kv;
    const uint32_t pos = n_pos_;

    std::vector<double> x = row(m_.tok_embd, uint32_t(token));
    for (uint32_t l = 0; l < hp_.n_layer; ++l) {
      const kvrt::LayerWeights& w = m_.layers[l];
      std::vector<double> xn = rms_norm(x, w.attn_norm);
      std::vector<double> q = matvec(w.wq, xn);
      std::vector<double> k = matvec(w.wk, xn);
      std::vector<double> v = matvec(w.wv, xn);
      for (uint32_t h = 0; h < n_head; ++h) rope(&q[h * hd], pos);
      for (uint32_t h = 0; h < n_kv; ++h) rope(&k[h * hd], pos);
      if (f16_cache_) {
        for (double& e : k) e = ref_round_to_half(e);
        for (double& e : v) e = ref_round_to_half(e);
      }
      // Cache layout: [pos][kv_dim].
      k_cache_[l].insert(k_cache_[l].end(), k.begin(), k.end());
      v_cache_[l].insert(v_cache_[l].end(), v.begin(), v.end());

      std::vector<double> attn(n_embd, 0.0);
      const double scale = 1.0 / std::sqrt(double(hd));
      std::vector<double> score(pos + 1);
      for (uint32_t h = 0; h < n_head; ++h) {
        const uint32_t g = h / group;  // the KV head this query head reads
        const double* qh = &q[h * hd];
        double mx = -INFINITY;
        for (uint32_t t = 0; t <= pos; ++t) {
          const double* kt = &k_cache_[l][size_t(t) * kv_dim + g * hd];
          double s = 0.0;
          for (uint32_t d = 0; d < hd; ++d) s += qh[d] * kt[d];
          score[t] = s * scale;
          if (score[t] > mx) mx = score[t];
        }
        double sum = 0.0;
        for (uint32_t t = 0; t <= pos; ++t) sum += score[t] = std::exp(score[t] - mx);
        for (uint32_t t = 0; t <= pos; ++t) {
          const double p = score[t] / sum;
          const double* vt = &v_cache_[l][size_t(t) * kv_dim + g * hd];
          for (uint32_t d = 0; d < hd; ++d) attn[h * hd + d] += p * vt[d];
        }
      }
      std::vector<double> o = matvec(w.wo, attn);
      for (uint32_t i = 0; i < n_embd; ++i) x[i] += o[i];

      std::vector<double> xf = rms_norm(x, w.ffn_norm);
      std::vector<double> gate = matvec(w.w_gate, xf);
      std::vector<double> up = matvec(w.w_up, xf);
      for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
      std::vector<double> down = matvec(w.w_down, gate);
      for (uint32_t i = 0; i < n_embd; ++i) x[i] += down[i];
    }
    std::vector<double> xn = rms_norm(x, m_.output_norm);
    std::vector<double> logits = matvec(m_.output, xn);
    ++n_pos_;
    return std::vector<float>(logits.begin(), logits.end());
  }

 private:
  // Row r of a weight matrix, decoded from its stored type.
  static std::vector<double> row(const kvrt::WeightMatrix& w, uint32_t r) {
    if (r >= w.rows) throw std::out_of_range("reference model: weight row out of range");
    std::vector<double> out(w.cols);
    const uint8_t* p = static_cast<const uint8_t*>(w.data) + size_t(r) * w.row_bytes;
    switch (w.type) {
      case 0:  // F32
        for (uint32_t c = 0; c < w.cols; ++c) {
          float f;
          std::memcpy(&f, p + 4 * size_t(c), 4);
          out[c] = f;
        }
        break;
      case 1:  // F16
      case 30:  // BF16
        for (uint32_t c = 0; c < w.cols; ++c) {
          uint16_t h;
          std::memcpy(&h, p + 2 * size_t(c), 2);
          out[c] = w.type == 1 ? ref_half_to_double(h) : ref_bf16_to_double(h);
        }
        break;
      case 8:  // Q8_0: blocks of 32 weights, an f16 scale then 32 int8
        for (uint32_t c = 0; c < w.cols; ++c) {
          const uint8_t* blk = p + size_t(c / 32) * 34;
          uint16_t d;
          std::memcpy(&d, blk, 2);
          out[c] = ref_half_to_double(d) * double(int8_t(blk[2 + c % 32]));
        }
        break;
      default:
        throw std::runtime_error("reference model: unsupported weight type");
    }
    return out;
  }

  static std::vector<double> matvec(const kvrt::WeightMatrix& w, const std::vector<double>& x) {
    if (x.size() != w.cols) throw std::logic_error("reference model: matvec shape mismatch");
    std::vector<double> y(w.rows);
    for (uint32_t r = 0; r < w.rows; ++r) {
      std::vector<double> wr = row(w, r);
      double s = 0.0;
      for (uint32_t c = 0; c < w.cols; ++c) s += wr[c] * x[c];
      y[r] = s;
    }
    return y;
  }

  std::vector<double> rms_norm(const std::vector<double>& x, const float* weight) const {
    double ss = 0.0;
    for (double e : x) ss += e * e;
    const double inv = 1.0 / std::sqrt(ss / double(x.size()) + double(hp_.norm_eps));
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * double(weight[i]);
    return y;
  }

  // Rotates pairs (v[2i], v[2i+1]) of one head by pos * scale * base^(-2i/rope_dim).
  void rope(double* v, uint32_t pos) const {
    const double base = hp_.rope_freq_base, fscale = hp_.rope_freq_scale;
    for (uint32_t i = 0; 2 * i < hp_.rope_dim; ++i) {
      const double theta = double(pos) * fscale * std::pow(base, -2.0 * i / double(hp_.rope_dim));
      const double c = std::cos(theta), s = std::sin(theta);
      const double a = v[2 * i], b = v[2 * i + 1];
      v[2 * i] = a * c - b * s;
      v[2 * i + 1] = a * s + b * c;
    }
  }

  const kvrt::Model& m_;
  kvrt::HParams hp_;
  bool f16_cache_;
  uint32_t n_pos_ = 0;
  std::vector<std::vector<double>> k_cache_;  // per layer, [pos][n_head_kv * head_dim]
  std::vector<std::vector<double>> v_cache_;
};

}  // namespace kvrt_test
