// Session: validation, KV reservation, batching and the Llama forward pass.
#include "engine/session.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "../../kernels/common/kv-quant.h"
#include "util/error.hpp"

namespace kvrt {

static uint64_t elapsed_ns(std::chrono::steady_clock::time_point t0) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
}

static const char* format_name(uint32_t f) {
  switch (f) {
    case kvrt_k::KV_F32: return "f32";
    case kvrt_k::KV_F16: return "f16";
    case kvrt_k::KV_BF16: return "bf16";
    case kvrt_k::KV_Q8: return "q8";
    case kvrt_k::KV_Q4: return "q4";
    default: return "unknown";
  }
}

static void check_format(uint32_t f, const char* which) {
  if (f >= KVRT_KV_FORMAT_COUNT)
    fail(KVRT_ERR_INVALID_ARGUMENT, "kv_format_%s = %u is not a kvrt_kv_format (0..%d)", which, f,
         KVRT_KV_FORMAT_COUNT - 1);
  if (f == kvrt_k::KV_BF16)
    fail(KVRT_ERR_UNSUPPORTED,
         "KV format %s for %s is not supported by this build (supported: f32, f16, q8, q4)",
         format_name(f), which);
}

static bool is_float_format(uint32_t f) { return f == kvrt_k::KV_F32 || f == kvrt_k::KV_F16; }

// Keys and values are either both unquantized (f32/f16, any pairing) or both
// quantized (q8/q4, any pairing): a quantized side keeps its tail in the f16
// stage, so the two sides must agree on where the tail lives. Null if the
// pairing is supported, else why not.
static const char* pairing_problem(uint32_t k, uint32_t v) {
  if (k >= KVRT_KV_FORMAT_COUNT || v >= KVRT_KV_FORMAT_COUNT) return "unknown format";
  if (k == kvrt_k::KV_BF16 || v == kvrt_k::KV_BF16) return "bf16 is not supported by this build";
  if (is_float_format(k) != is_float_format(v))
    return "an unquantized format (f32, f16) cannot be paired with a quantized one (q8, q4)";
  return nullptr;
}

static void check_head_dim(const HParams& hp, uint32_t k, uint32_t v) {
  if ((kvrt_k::kv_is_quant(k) || kvrt_k::kv_is_quant(v)) && hp.head_dim > kvrt_k::kQAttnMaxHeadDim)
    fail(KVRT_ERR_UNSUPPORTED, "KV formats %s/%s need head_dim <= %u; the model has %u",
         format_name(k), format_name(v), kvrt_k::kQAttnMaxHeadDim, hp.head_dim);
}

uint64_t kv_bytes_per_token(const HParams& hp, uint32_t k_format, uint32_t v_format,
                            uint32_t block_tokens) {
  if (pairing_problem(k_format, v_format) || block_tokens == 0) return 0;
  kvrt_k::KvLayout l;
  if (!kvrt_k::kv_layout_init(&l, hp.n_layer, hp.n_head_kv, hp.head_dim, block_tokens, k_format,
                              v_format))
    return 0;
  return (static_cast<uint64_t>(l.block_bytes) + block_tokens - 1) / block_tokens;
}

static MatRef ref(const WeightMatrix& w) { return {w.type, w.rows, w.cols, w.row_bytes, w.data}; }

Session::Session(std::shared_ptr<const LoadedModel> model, const SessionConfig& cfg)
    : model_(std::move(model)), rt_(*model_->runtime), cfg_(cfg),
      sampler_(model_->model->hparams().n_vocab) {
  const HParams& hp = model_->model->hparams();
  check_format(cfg_.k_format, "keys");
  check_format(cfg_.v_format, "values");
  if (const char* why = pairing_problem(cfg_.k_format, cfg_.v_format))
    fail(KVRT_ERR_UNSUPPORTED, "KV formats %s keys with %s values are not supported: %s",
         format_name(cfg_.k_format), format_name(cfg_.v_format), why);
  check_head_dim(hp, cfg_.k_format, cfg_.v_format);
  if (cfg_.n_ctx == 0) cfg_.n_ctx = hp.n_ctx_train;
  if (cfg_.n_ctx > hp.n_ctx_train)
    fail(KVRT_ERR_INVALID_ARGUMENT, "n_ctx = %u exceeds the model's context length %u", cfg_.n_ctx,
         hp.n_ctx_train);
  if (cfg_.max_batch == 0) cfg_.max_batch = 64;
  if (cfg_.max_batch > 4096)
    fail(KVRT_ERR_INVALID_ARGUMENT, "max_batch = %u exceeds 4096", cfg_.max_batch);
  cfg_.max_batch = std::min(cfg_.max_batch, cfg_.n_ctx);

  kvrt_k::KvLayout layout;
  kvrt_k::kv_layout_init(&layout, hp.n_layer, hp.n_head_kv, hp.head_dim,
                         rt_.config().block_tokens, cfg_.k_format, cfg_.v_format);
  BlockPool& pool = rt_.pool_for(kvrt_k::kv_head_part_bytes(layout), kvrt_k::kv_n_head_parts(layout));
  kv_ = std::make_unique<KvCache>(pool, layout, cfg_.n_ctx);
  quant_ = kvrt_k::kv_is_quant(cfg_.k_format);
  if (quant_) {
    kvrt_k::kv_layout_init(&stage_layout_, hp.n_layer, hp.n_head_kv, hp.head_dim,
                           layout.block_tokens, kvrt_k::KV_F16, kvrt_k::KV_F16);
    stage_.assign(stage_layout_.block_bytes, 0);
    stage_saved_.resize(stage_layout_.block_bytes);
    const size_t per = static_cast<size_t>(layout.block_tokens) * hp.head_dim, nt = rt_.threads().size();
    qtmp_k_.resize(nt * per);
    qtmp_v_.resize(nt * per);
    qtmp_h_.resize(nt * 2 * hp.head_dim);
  }

  const size_t mb = cfg_.max_batch, d = hp.n_embd, kvd = size_t(hp.n_head_kv) * hp.head_dim,
               ff = hp.n_ff;
  x_.resize(mb * d);
  xn_.resize(mb * d);
  q_.resize(mb * d);
  k_.resize(mb * kvd);
  v_.resize(mb * kvd);
  att_.resize(mb * d);
  tmp_.resize(mb * d);
  gate_.resize(mb * ff);
  up_.resize(mb * ff);
  const unsigned nt = rt_.threads().size();
  scratch_.row_floats = kvrt_k::matmul_scratch_floats(std::max(d, ff));
  rows_.resize(nt * scratch_.row_floats);
  scratch_.rows = rows_.data();
  scratch_.part_capacity = CpuBackend::attention_partials_needed(nt, hp.n_head, cfg_.n_ctx);
  parts_.resize(scratch_.part_capacity);
  part_acc_.resize((scratch_.part_capacity + CpuBackend::kMaxSplit) * hp.head_dim);
  scratch_.parts = parts_.data();
  scratch_.part_acc = part_acc_.data();
  tokens_.reserve(cfg_.n_ctx);
}

Session::~Session() = default;

uint64_t Session::kv_bytes_per_token() const {
  return kvrt::kv_bytes_per_token(model().hparams(), cfg_.k_format, cfg_.v_format,
                                  kv_->layout().block_tokens);
}

void Session::decode(const int32_t* tokens, size_t n, float* logits) {
  const HParams& hp = model().hparams();
  if (!tokens) fail(KVRT_ERR_INVALID_ARGUMENT, "tokens is NULL");
  if (n == 0) fail(KVRT_ERR_INVALID_ARGUMENT, "n_tokens is 0: a decode step needs at least one token");
  for (size_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || static_cast<uint32_t>(tokens[i]) >= hp.n_vocab)
      fail(KVRT_ERR_OUT_OF_RANGE, "tokens[%zu] = %d is outside the vocabulary [0, %u)", i, tokens[i],
           hp.n_vocab);
  }
  const uint32_t n0 = kv_->n_tokens();
  if (n > cfg_.n_ctx - n0)
    fail(KVRT_ERR_CONTEXT_FULL, "%zu more tokens do not fit: the session holds %u of %u", n, n0,
         cfg_.n_ctx);
  abort_.store(false, std::memory_order_relaxed);
  kv_->reserve(static_cast<uint32_t>(n));  // all blocks up front; throws with nothing changed
  // A batch that fills the staged tail block overwrites the stage with the
  // next block; keep a copy so a failed decode leaves the session unchanged.
  const uint32_t bt = kv_->layout().block_tokens;
  const bool stage_moves = quant_ && n0 % bt != 0 && (n0 + n) / bt != n0 / bt;
  if (stage_moves) stage_saved_ = stage_;
  const Timers timers_before = timers_;
  const auto t_start = std::chrono::steady_clock::now();
  try {
    for (size_t done = 0; done < n;) {
      const uint32_t chunk = static_cast<uint32_t>(std::min<size_t>(cfg_.max_batch, n - done));
      const bool last = done + chunk == n;
      forward(tokens + done, chunk, n0 + static_cast<uint32_t>(done), last ? logits : nullptr);
      done += chunk;
    }
  } catch (...) {
    kv_->truncate(n0);
    if (stage_moves) stage_.swap(stage_saved_);
    timers_ = timers_before;
    throw;
  }
  timers_.compute_ns += elapsed_ns(t_start);
  kv_->commit(static_cast<uint32_t>(n));
  tokens_.insert(tokens_.end(), tokens, tokens + n);
}

void Session::rewind(size_t n_tokens) {
  if (n_tokens > kv_->n_tokens())
    fail(KVRT_ERR_OUT_OF_RANGE, "cannot rewind to %zu tokens: the session holds %u", n_tokens,
         kv_->n_tokens());
  // A quantized session resuming inside a block that was already quantized
  // continues from its dequantized values (the f16 originals are gone).
  const uint32_t bt = kv_->layout().block_tokens, n_new = static_cast<uint32_t>(n_tokens);
  if (quant_ && n_new % bt != 0 && n_new / bt != kv_->n_tokens() / bt) quant_load_stage(n_new / bt);
  kv_->truncate(n_new);
  tokens_.resize(n_tokens);
}

void Session::begin_import(uint32_t n_tokens) {
  if (kv_->n_tokens() != 0 || kv_->n_blocks() != 0 || !tokens_.empty())
    fail(KVRT_ERR_INTERNAL, "snapshot import into a session that already holds %u tokens",
         kv_->n_tokens());
  kv_->reserve(n_tokens);
}

void Session::finish_import(std::vector<int32_t> tokens) {
  if (tokens.size() > cfg_.n_ctx || kv_->n_tokens() != 0)
    fail(KVRT_ERR_INTERNAL, "snapshot import of %zu tokens does not match the reserved cache",
         tokens.size());
  tokens.reserve(cfg_.n_ctx);  // decode() appends without reallocating
  kv_->commit(static_cast<uint32_t>(tokens.size()));
  tokens_ = std::move(tokens);
}

void Session::forward(const int32_t* tok, uint32_t n, uint32_t pos0, float* logits) {
  const Model& m = model();
  const HParams& hp = m.hparams();
  const CpuBackend& be = rt_.backend();
  const kvrt_k::KvLayout& lay = kv_->layout();
  const size_t d = hp.n_embd, hd = hp.head_dim, n_kv = hp.n_head_kv, kvd = n_kv * hd,
               ff = hp.n_ff;
  const size_t ek = kvrt_k::kv_elem_bytes(lay.k_format), ev = kvrt_k::kv_elem_bytes(lay.v_format);
  const uint32_t bt = lay.block_tokens;
  float *x = x_.data(), *xn = xn_.data(), *q = q_.data(), *k = k_.data(), *v = v_.data(),
        *att = att_.data(), *tmp = tmp_.data(), *g = gate_.data(), *u = up_.data();

  for (uint32_t i = 0; i < n; ++i)
    kvrt_k::dequantize_row(m.tok_embd.type, m.tok_embd.data, d, static_cast<size_t>(tok[i]),
                           x + i * d);

  for (uint32_t l = 0; l < hp.n_layer; ++l) {
    if (abort_.load(std::memory_order_relaxed))
      fail(KVRT_ERR_ABORTED, "decode stopped by kvrt_session_request_abort at layer %u", l);
    const LayerWeights& L = m.layers[l];
    for (uint32_t i = 0; i < n; ++i) kvrt_k::rmsnorm(x + i * d, L.attn_norm, xn + i * d, d, hp.norm_eps);
    {
      const MatRef w[3] = {ref(L.wq), ref(L.wk), ref(L.wv)};
      float* const y[3] = {q, k, v};
      const size_t ld[3] = {d, kvd, kvd};
      be.matmul_multi(w, y, ld, 3, xn, n, scratch_);
    }
    for (uint32_t i = 0; i < n; ++i) {
      const int32_t pos = static_cast<int32_t>(pos0 + i);
      kvrt_k::rope(q + i * d, hp.n_head, hd, hp.rope_dim, pos, hp.rope_freq_base, hp.rope_freq_scale);
      kvrt_k::rope(k + i * kvd, n_kv, hd, hp.rope_dim, pos, hp.rope_freq_base, hp.rope_freq_scale);
      if (quant_) continue;  // stored by quant_store below
      uint8_t* block = kv_->block_ptr((pos0 + i) / bt);
      const size_t off = (pos0 + i) % bt;
      for (uint32_t h = 0; h < n_kv; ++h) {
        kvrt_k::kv_store(lay.k_format, block + kvrt_k::kv_k_offset(lay, l, h) + off * hd * ek,
                         k + i * kvd + h * hd, hd);
        kvrt_k::kv_store(lay.v_format, block + kvrt_k::kv_v_offset(lay, l, h) + off * hd * ev,
                         v + i * kvd + h * hd, hd);
      }
    }
    kvrt_k::AttnArgs a{};
    a.layout = &lay;
    a.blocks = kv_->block_ptrs();
    a.layer = l;
    a.q = q;
    a.out = att;
    a.q_stride = d;
    a.n_q = n;
    a.n_head = hp.n_head;
    a.pos0 = static_cast<int32_t>(pos0);
    a.scale = 1.0f / std::sqrt(static_cast<float>(hd));
    if (quant_) quant_store(l, k, v, n, pos0);
    const auto t_attn = std::chrono::steady_clock::now();
    if (quant_) {
      kvrt_k::QAttnArgs qa{};
      qa.base = a;
      qa.stage_layout = &stage_layout_;
      qa.stage = stage_.data();
      qa.n_quant_blocks = (pos0 + n) / bt;
      be.attention_quant(qa, scratch_);
    } else {
      be.attention(a, scratch_);
    }
    timers_.attention_ns += elapsed_ns(t_attn);
    be.matmul(ref(L.wo), att, n, tmp, d, scratch_);
    for (size_t i = 0; i < n * d; ++i) x[i] += tmp[i];

    for (uint32_t i = 0; i < n; ++i) kvrt_k::rmsnorm(x + i * d, L.ffn_norm, xn + i * d, d, hp.norm_eps);
    {
      const MatRef w[2] = {ref(L.w_gate), ref(L.w_up)};
      float* const y[2] = {g, u};
      const size_t ld[2] = {ff, ff};
      be.matmul_multi(w, y, ld, 2, xn, n, scratch_);
    }
    for (uint32_t i = 0; i < n; ++i) kvrt_k::swiglu(g + i * ff, u + i * ff, ff);
    be.matmul(ref(L.w_down), g, n, tmp, d, scratch_);
    for (size_t i = 0; i < n * d; ++i) x[i] += tmp[i];
  }

  if (logits) {
    kvrt_k::rmsnorm(x + (n - 1) * d, m.output_norm, xn, d, hp.norm_eps);
    be.matmul(ref(m.output), xn, 1, logits, hp.n_vocab, scratch_);
  }
}

// Writes the K/V rows of n tokens of one layer into the f16 stage; each block
// that becomes full is quantized once into its pool block, from its rows as
// f16 (what attention saw of them so far). The blocks that fill in one call
// (a prefill batch fills several) are quantized in parallel, one task per
// block and KV head: the q4 parameter fit, even vectorized, takes 4-10% of a
// q4 prefill's samples (docs/quantization.md, "Quantization rules").
void Session::quant_store(uint32_t layer, const float* k, const float* v, uint32_t n,
                          uint32_t pos0) {
  const kvrt_k::KvLayout& lay = kv_->layout();
  const uint32_t bt = lay.block_tokens, hd = lay.head_dim, n_kv = lay.n_head_kv;
  const size_t kvd = static_cast<size_t>(n_kv) * hd, per = static_cast<size_t>(bt) * hd;
  uint8_t* st = stage_.data();
  // Blocks [b0, b1) fill now; b0's rows before pos0 are in the stage.
  const uint32_t b0 = pos0 / bt, b1 = (pos0 + n) / bt;
  if (b1 > b0) {
    rt_.threads().run((b1 - b0) * n_kv, [&](unsigned task, unsigned thread) {
      const uint32_t b = b0 + task / n_kv, h = task % n_kv;
      float* kx = qtmp_k_.data() + thread * per;
      float* vx = qtmp_v_.data() + thread * per;
      uint16_t* kh = qtmp_h_.data() + thread * 2 * size_t{hd};
      uint16_t* vh = kh + hd;
      const uint16_t* ks = reinterpret_cast<const uint16_t*>(st + kvrt_k::kv_k_offset(stage_layout_, layer, h));
      const uint16_t* vs = reinterpret_cast<const uint16_t*>(st + kvrt_k::kv_v_offset(stage_layout_, layer, h));
      for (uint32_t t = 0; t < bt; ++t) {
        const uint32_t pos = b * bt + t;
        const uint16_t* kr = ks + static_cast<size_t>(t) * hd;
        const uint16_t* vr = vs + static_cast<size_t>(t) * hd;
        if (pos >= pos0) {
          const size_t i = pos - pos0;
          kvrt_k::kv_store(kvrt_k::KV_F16, kh, k + i * kvd + h * hd, hd);
          kvrt_k::kv_store(kvrt_k::KV_F16, vh, v + i * kvd + h * hd, hd);
          kr = kh;
          vr = vh;
        }
        kvrt_k::kv_load(kvrt_k::KV_F16, kx + static_cast<size_t>(t) * hd, kr, hd);
        kvrt_k::kv_load(kvrt_k::KV_F16, vx + static_cast<size_t>(t) * hd, vr, hd);
      }
      uint8_t* block = kv_->block_ptr(b);
      kvrt_k::kv_quantize_k(lay.k_format, block + kvrt_k::kv_k_offset(lay, layer, h), kx, hd, bt, bt, hd);
      kvrt_k::kv_quantize_v(lay.v_format, block + kvrt_k::kv_v_offset(lay, layer, h), vx, hd, bt, bt, hd);
    });
  }
  // The stage keeps, per offset, the latest row written there: the last
  // block_tokens rows of this call.
  for (uint32_t i = n > bt ? n - bt : 0; i < n; ++i) {
    const size_t off = (pos0 + i) % bt;
    for (uint32_t h = 0; h < n_kv; ++h) {
      kvrt_k::kv_store(kvrt_k::KV_F16, st + kvrt_k::kv_k_offset(stage_layout_, layer, h) + off * hd * 2,
                       k + i * kvd + h * hd, hd);
      kvrt_k::kv_store(kvrt_k::KV_F16, st + kvrt_k::kv_v_offset(stage_layout_, layer, h) + off * hd * 2,
                       v + i * kvd + h * hd, hd);
    }
  }
}

void Session::quant_load_stage(uint32_t logical_block) {
  const kvrt_k::KvLayout& lay = kv_->layout();
  const uint32_t bt = lay.block_tokens, hd = lay.head_dim;
  const uint8_t* block = kv_->block_ptr(logical_block);
  for (uint32_t l = 0; l < lay.n_layer; ++l)
    for (uint32_t h = 0; h < lay.n_head_kv; ++h) {
      kvrt_k::kvq_dequantize_k(lay.k_format, block + kvrt_k::kv_k_offset(lay, l, h), bt, bt, hd,
                               qtmp_k_.data(), hd);
      kvrt_k::kvq_dequantize_v(lay.v_format, block + kvrt_k::kv_v_offset(lay, l, h), bt, bt, hd,
                               qtmp_v_.data(), hd);
      kvrt_k::kv_store(kvrt_k::KV_F16, stage_.data() + kvrt_k::kv_k_offset(stage_layout_, l, h),
                       qtmp_k_.data(), static_cast<size_t>(bt) * hd);
      kvrt_k::kv_store(kvrt_k::KV_F16, stage_.data() + kvrt_k::kv_v_offset(stage_layout_, l, h),
                       qtmp_v_.data(), static_cast<size_t>(bt) * hd);
    }
}

}  // namespace kvrt
