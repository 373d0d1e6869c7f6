// Snapshot reader: validates the header against the model and runtime,
// checks sizes before allocating, decompresses and verifies every section,
// and only then hands out the new session.
#include <cinttypes>
#include <cmath>
#include <functional>
#include <memory>
#include <vector>

#include <zstd.h>
#include <zstd_errors.h>

#include "snapshot/snapshot-format.hpp"
#include "util/error.hpp"

namespace kvrt {
namespace snap {

namespace {

struct DctxFree {
  void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};

const char* section_name(uint32_t id) {
  switch (id) {
    case kSectionEnd: return "end record";
    case kSectionTokens: return "tokens section";
    case kSectionKv: return "KV section";
    default: return "unknown section";
  }
}

class Reader {
 public:
  Reader(Source& in, const char* name) : in_(in), name_(name) {}

  uint64_t offset() const { return off_; }
  const char* name() const { return name_; }

  void read_exact(void* data, size_t n, const char* what) {
    uint8_t* p = static_cast<uint8_t*>(data);
    size_t got = 0;
    while (got < n) {
      size_t k = in_.read(p + got, n - got);
      if (k == 0) {
        if (off_ + got == 0)
          fail(KVRT_ERR_CORRUPT, "%s: empty: no snapshot data at all", name_);
        fail(KVRT_ERR_CORRUPT, "%s: truncated: %s needs %zu bytes at offset %" PRIu64 ", the data ends after %zu",
             name_, what, n, off_, got);
      }
      got += k;
    }
    off_ += n;
  }

  // Reads one section's descriptor, checks it, and streams its bytes to
  // on_data in pieces of unit_for_flags_ bytes (the last may be shorter); then checks
  // the section hash over the bytes on_hash is given.
  // on_done, when set, runs after the data and before the checks of the
  // hashes (for sections stored in another order than their raw bytes).
  void section(uint32_t id, uint32_t* flags, uint64_t raw_bytes, uint8_t* unit_buf,
               const std::function<void(uint8_t*, size_t, Hasher&)>& on_data,
               const std::function<void(Hasher&)>& on_done = nullptr) {
    const char* sname = section_name(id);
    uint8_t d[kDescriptorBytes];
    const uint64_t at = off_;
    read_exact(d, sizeof d, sname);
    if (get_u32(d) != id)
      fail(KVRT_ERR_CORRUPT, "%s: section id %u at offset %" PRIu64 " where the %s (id %u) belongs", name_,
           get_u32(d), at, sname, id);
    *flags = get_u32(d + 4);
    if (get_u64(d + 8) != raw_bytes)
      fail(KVRT_ERR_CORRUPT, "%s: %s at offset %" PRIu64 " declares %" PRIu64 " bytes; the header implies %" PRIu64,
           name_, sname, at, get_u64(d + 8), raw_bytes);
    const size_t unit = unit_for_flags_(id, *flags);
    Hasher stored_hash(id);
    stored_hash.update(d, sizeof d);

    if (!dctx_) {
      dctx_.reset(ZSTD_createDCtx());
      if (!dctx_) fail(KVRT_ERR_OUT_OF_MEMORY, "cannot create a zstd decompression context");
    }
    ZSTD_DCtx_reset(dctx_.get(), ZSTD_reset_session_and_parameters);
    ZSTD_DCtx_setParameter(dctx_.get(), ZSTD_d_windowLogMax, 27);  // bounds a hostile frame's window

    Hasher hash(id);
    uint64_t left = raw_bytes;
    size_t target = static_cast<size_t>(std::min<uint64_t>(unit, left)), filled = 0;
    bool frame_done = false;
    uint8_t excess[1];
    for (;;) {
      uint8_t lenb[4];
      const uint64_t chunk_at = off_;
      read_exact(lenb, 4, "a chunk length");
      const uint32_t len = get_u32(lenb);
      stored_hash.update(lenb, 4);
      if (len == 0) break;
      if (len > kMaxChunkBytes)
        fail(KVRT_ERR_CORRUPT, "%s: %s: chunk at offset %" PRIu64 " claims %u bytes (at most %zu)", name_,
             sname, chunk_at, len, kMaxChunkBytes);
      if (frame_done)
        fail(KVRT_ERR_CORRUPT, "%s: %s: chunk at offset %" PRIu64 " follows the end of its zstd frame", name_,
             sname, chunk_at);
      chunk_.resize(len);
      read_exact(chunk_.data(), len, "a compressed chunk");
      stored_hash.update(chunk_.data(), len);
      ZSTD_inBuffer in{chunk_.data(), len, 0};
      for (;;) {
        const bool spill = target == 0;  // all declared bytes seen: any more output is an error
        ZSTD_outBuffer out = spill ? ZSTD_outBuffer{excess, 1, 0}
                                   : ZSTD_outBuffer{unit_buf + filled, target - filled, 0};
        const size_t in0 = in.pos;
        const size_t rc = ZSTD_decompressStream(dctx_.get(), &out, &in);
        if (ZSTD_isError(rc)) {
          if (ZSTD_getErrorCode(rc) == ZSTD_error_memory_allocation)
            fail(KVRT_ERR_OUT_OF_MEMORY, "%s: %s: zstd: %s", name_, sname, ZSTD_getErrorName(rc));
          fail(KVRT_ERR_CORRUPT, "%s: %s: zstd data in the chunk at offset %" PRIu64 ": %s", name_, sname,
               chunk_at, ZSTD_getErrorName(rc));
        }
        if (spill && out.pos)
          fail(KVRT_ERR_CORRUPT, "%s: %s holds more than its declared %" PRIu64 " bytes", name_, sname,
               raw_bytes);
        if (!spill) {
          filled += out.pos;
          if (filled == target) {
            on_data(unit_buf, filled, hash);
            left -= filled;
            filled = 0;
            target = static_cast<size_t>(std::min<uint64_t>(unit, left));
          }
        }
        if (rc == 0) {
          frame_done = true;
          if (in.pos < in.size)
            fail(KVRT_ERR_CORRUPT, "%s: %s: %zu bytes after the end of its zstd frame", name_, sname,
                 in.size - in.pos);
          break;
        }
        const bool out_full = out.pos == out.size;
        if (in.pos == in.size && !out_full) break;
        if (in.pos == in0 && out.pos == 0)
          fail(KVRT_ERR_CORRUPT, "%s: %s: zstd made no progress in the chunk at offset %" PRIu64, name_, sname,
               chunk_at);
      }
    }
    if (!frame_done)
      fail(KVRT_ERR_CORRUPT, "%s: %s: its zstd frame is cut short (chunks end at offset %" PRIu64 ")", name_,
           sname, off_);
    if (left != 0 || filled != 0)
      fail(KVRT_ERR_CORRUPT, "%s: %s holds %" PRIu64 " bytes fewer than its declared %" PRIu64, name_, sname,
           left - filled, raw_bytes);
    if (on_done) on_done(hash);
    uint8_t hb[16];
    const uint64_t hash_at = off_;
    read_exact(hb, 16, "the section checksums");
    if (get_u64(hb + 8) != stored_hash.finish64())
      fail(KVRT_ERR_CORRUPT, "%s: %s: checksum of the stored bytes at offset %" PRIu64 " does not match "
           "(%016" PRIx64 " stored, %016" PRIx64 " computed)", name_, sname, hash_at + 8, get_u64(hb + 8),
           stored_hash.finish64());
    if (get_u64(hb) != hash.finish64())
      fail(KVRT_ERR_CORRUPT, "%s: %s: checksum at offset %" PRIu64 " does not match its data (%016" PRIx64
           " stored, %016" PRIx64 " computed)", name_, sname, hash_at, get_u64(hb), hash.finish64());
  }

  // Checks a section's flags; returns the bytes on_data gets at a time.
  std::function<size_t(uint32_t, uint32_t)> unit_for_flags_;

 private:
  Source& in_;
  const char* name_;
  uint64_t off_ = 0;
  std::unique_ptr<ZSTD_DCtx, DctxFree> dctx_;
  std::vector<uint8_t> chunk_;
};

const char* format_name(uint32_t f) {
  switch (f) {
    case kvrt_k::KV_F32: return "f32";
    case kvrt_k::KV_F16: return "f16";
    case kvrt_k::KV_BF16: return "bf16";
    case kvrt_k::KV_Q8: return "q8";
    case kvrt_k::KV_Q4: return "q4";
    default: return "unknown";
  }
}

}  // namespace

std::unique_ptr<Session> read_snapshot(std::shared_ptr<const LoadedModel> model, Source& src,
                                       const char* name) {
  Reader r(src, name);
  const Model& m = *model->model;
  const HParams& hp = m.hparams();

  uint8_t pre[kPreambleBytes];
  r.read_exact(pre, sizeof pre, "the preamble");
  if (std::memcmp(pre, kMagic, 8) != 0)
    fail(KVRT_ERR_CORRUPT, "%s: not a kvrt snapshot (the first 8 bytes are not \"KVRTSNAP\")", name);
  const uint32_t version = get_u32(pre + 8);
  if (version == 0) fail(KVRT_ERR_CORRUPT, "%s: format version 0 does not exist", name);
  if (version > kFormatVersion)
    fail(KVRT_ERR_VERSION, "%s: snapshot format version %u; this library reads versions up to %u", name,
         version, kFormatVersion);
  const uint32_t required = get_u32(pre + 12);
  if (required & ~kKnownRequiredFlags)
    fail(KVRT_ERR_VERSION, "%s: snapshot needs features 0x%08x that this library does not know", name,
         required & ~kKnownRequiredFlags);
  const uint32_t hbytes = get_u32(pre + 20);
  if (hbytes < kHeaderBytesV1 || hbytes > kMaxHeaderBytes)
    fail(KVRT_ERR_CORRUPT, "%s: header length %u is outside %zu..%zu", name, hbytes, kHeaderBytesV1,
         kMaxHeaderBytes);
  std::vector<uint8_t> head(kPreambleBytes + hbytes);
  std::memcpy(head.data(), pre, kPreambleBytes);
  r.read_exact(head.data() + kPreambleBytes, hbytes, "the header");
  const uint8_t* h = head.data() + kPreambleBytes;
  {
    const uint64_t stored = get_u64(h + hbytes - 8);
    const uint64_t computed = hash64(head.data(), kPreambleBytes + hbytes - 8, 0);
    if (stored != computed)
      fail(KVRT_ERR_CORRUPT, "%s: header checksum mismatch (%016" PRIx64 " stored, %016" PRIx64 " computed)",
           name, stored, computed);
  }

  const ModelFingerprint fp = m.fingerprint();
  if (get_u64(h + kHdrFingerprint) != fp.lo || get_u64(h + kHdrFingerprint + 8) != fp.hi)
    fail(KVRT_ERR_MODEL_MISMATCH,
         "%s: made with another model (fingerprint %016" PRIx64 "%016" PRIx64 "; this model's is %016" PRIx64
         "%016" PRIx64 ")", name, get_u64(h + kHdrFingerprint + 8), get_u64(h + kHdrFingerprint), fp.hi, fp.lo);
  auto same = [&](size_t off, uint32_t want, const char* field) {
    if (get_u32(h + off) != want)
      fail(KVRT_ERR_MODEL_MISMATCH, "%s: %s = %u, the model has %u", name, field, get_u32(h + off), want);
  };
  same(kHdrNLayer, hp.n_layer, "n_layer");
  same(kHdrNHeadKv, hp.n_head_kv, "n_head_kv");
  same(kHdrHeadDim, hp.head_dim, "head_dim");
  same(kHdrNVocab, hp.n_vocab, "n_vocab");

  const uint32_t kf = get_u32(h + kHdrKFormat), vf = get_u32(h + kHdrVFormat);
  for (uint32_t f : {kf, vf})
    if (f >= KVRT_KV_FORMAT_COUNT) fail(KVRT_ERR_CORRUPT, "%s: KV format %u is not a kvrt_kv_format", name, f);
  for (uint32_t f : {kf, vf})
    if (f != kvrt_k::KV_F32 && f != kvrt_k::KV_F16)
      fail(KVRT_ERR_UNSUPPORTED, "%s: KV format %s is not supported by this build", name, format_name(f));
  const uint32_t bt = get_u32(h + kHdrBlockTokens);
  if (bt == 0 || bt > 1024) fail(KVRT_ERR_CORRUPT, "%s: block_tokens = %u is outside 1..1024", name, bt);
  const uint32_t rt_bt = model->runtime->config().block_tokens;
  if (bt != rt_bt)
    fail(KVRT_ERR_UNSUPPORTED,
         "%s: the snapshot's KV blocks hold %u tokens but this runtime's hold %u (create the runtime with "
         "block_tokens = %u to load it)", name, bt, rt_bt, bt);
  kvrt_k::KvLayout lay;
  if (!kvrt_k::kv_layout_init(&lay, hp.n_layer, hp.n_head_kv, hp.head_dim, bt, kf, vf))
    fail(KVRT_ERR_UNSUPPORTED, "%s: no block layout for formats %s/%s", name, format_name(kf), format_name(vf));
  if (get_u64(h + kHdrBlockBytes) != lay.block_bytes)
    fail(KVRT_ERR_CORRUPT, "%s: block_bytes = %" PRIu64 " but the geometry gives %zu", name,
         get_u64(h + kHdrBlockBytes), lay.block_bytes);
  const uint32_t n_ctx = get_u32(h + kHdrNCtx), n_tokens = get_u32(h + kHdrNTokens),
                 max_batch = get_u32(h + kHdrMaxBatch);
  if (n_ctx == 0 || n_ctx > hp.n_ctx_train)
    fail(KVRT_ERR_CORRUPT, "%s: n_ctx = %u is outside 1..%u (the model's context length)", name, n_ctx,
         hp.n_ctx_train);
  if (n_tokens > n_ctx) fail(KVRT_ERR_CORRUPT, "%s: n_tokens = %u exceeds n_ctx = %u", name, n_tokens, n_ctx);
  if (max_batch == 0 || max_batch > 4096 || max_batch > n_ctx)
    fail(KVRT_ERR_CORRUPT, "%s: max_batch = %u is outside 1..min(4096, n_ctx = %u)", name, max_batch, n_ctx);

  SamplerConfig sc;
  std::memcpy(&sc.temperature, h + kHdrTemperature, 4);
  sc.top_k = get_u32(h + kHdrTopK);
  std::memcpy(&sc.top_p, h + kHdrTopP, 4);
  sc.seed = get_u64(h + kHdrSeed);
  if (!std::isfinite(sc.temperature) || sc.temperature < 0.0f)
    fail(KVRT_ERR_CORRUPT, "%s: sampler temperature %g is not finite and >= 0", name, double(sc.temperature));
  if (!(sc.top_p > 0.0f && sc.top_p <= 1.0f))
    fail(KVRT_ERR_CORRUPT, "%s: sampler top_p %g is outside (0, 1]", name, double(sc.top_p));
  uint64_t rng[4];
  for (int i = 0; i < 4; ++i) rng[i] = get_u64(h + kHdrRng + 8 * i);
  if ((rng[0] | rng[1] | rng[2] | rng[3]) == 0)
    fail(KVRT_ERR_CORRUPT, "%s: sampler generator state is all zero", name);
  if (get_u32(h + kHdrReserved0) || get_u32(h + kHdrReserved1))
    fail(KVRT_ERR_CORRUPT, "%s: reserved header fields are not zero", name);
  if (get_u32(h + kHdrWindowKind) != 0)
    fail(KVRT_ERR_UNSUPPORTED, "%s: window kind %u is not supported by this build", name,
         get_u32(h + kHdrWindowKind));
  if (get_u32(h + kHdrWindowSink) || get_u32(h + kHdrWindowTokens))
    fail(KVRT_ERR_CORRUPT, "%s: window sizes are set without a window", name);

  // Everything sized by the header is now bounded by the model's context.
  const size_t bb = lay.block_bytes;
  uint32_t kv_width = 0;
  r.unit_for_flags_ = [&](uint32_t id, uint32_t flags) -> size_t {
    if (id == kSectionKv) {
      const uint32_t w = flags & kKvShuffleMask;
      if ((flags & ~kKvShuffleMask) || !(w == 0 || w == 2 || w == 4) || (w && bb % w))
        fail(KVRT_ERR_CORRUPT, "%s: KV section flags 0x%08x are not valid for %zu-byte blocks", name, flags, bb);
      kv_width = w;
      return w ? bb / w : bb;  // one block's plane
    }
    if (flags != 0)
      fail(KVRT_ERR_CORRUPT, "%s: %s flags 0x%08x: none are defined", name, section_name(id), flags);
    return size_t(1) << 16;
  };

  std::vector<int32_t> tokens(n_tokens);
  {
    uint32_t flags;
    size_t pos = 0;
    std::vector<uint8_t> buf(std::min<size_t>(size_t(n_tokens) * 4, 1 << 16));
    r.section(kSectionTokens, &flags, uint64_t(n_tokens) * 4, buf.data(),
              [&](uint8_t* p, size_t n, Hasher& hash) {
                hash.update(p, n);
                std::memcpy(reinterpret_cast<uint8_t*>(tokens.data()) + pos, p, n);
                pos += n;
              });
    for (uint32_t i = 0; i < n_tokens; ++i)
      if (tokens[i] < 0 || static_cast<uint32_t>(tokens[i]) >= hp.n_vocab)
        fail(KVRT_ERR_CORRUPT, "%s: token %u = %d is outside the vocabulary [0, %u)", name, i, tokens[i],
             hp.n_vocab);
  }

  SessionConfig cfg;
  cfg.k_format = kf;
  cfg.v_format = vf;
  cfg.n_ctx = n_ctx;
  cfg.max_batch = max_batch;
  // The session stays private until every check below has passed; on any
  // error it is destroyed and its blocks go back to the pool.
  auto s = std::make_unique<Session>(model, cfg);
  s->begin_import(n_tokens);
  {
    const uint32_t n_blocks = (n_tokens + bt - 1) / bt;
    uint32_t flags = 0;
    uint64_t unit_index = 0;
    // Stored as plane 0 of every block, then plane 1, ... (or whole blocks).
    std::vector<uint8_t> stored(bb);
    r.section(kSectionKv, &flags, uint64_t(n_blocks) * bb, stored.data(),
              [&](uint8_t* p, size_t n, Hasher&) {
                const uint64_t j = unit_index / n_blocks;  // plane
                uint8_t* dst = s->import_block(static_cast<uint32_t>(unit_index % n_blocks));
                ++unit_index;
                if (!kv_width) {
                  std::memcpy(dst, p, n);
                  return;
                }
                for (size_t i = 0; i < n; ++i) dst[i * kv_width + j] = p[i];
              },
              [&](Hasher& hash) {
                for (uint32_t b = 0; b < n_blocks; ++b) hash.update(s->import_block(b), bb);
              });
  }
  {
    uint8_t end[kDescriptorBytes];
    const uint64_t at = r.offset();
    r.read_exact(end, sizeof end, "the end record");
    if (get_u32(end) != kSectionEnd || get_u32(end + 4) != 0 || get_u64(end + 8) != at)
      fail(KVRT_ERR_CORRUPT, "%s: bad end record at offset %" PRIu64 " (id %u, flags 0x%x, length %" PRIu64 ")",
           name, at, get_u32(end), get_u32(end + 4), get_u64(end + 8));
  }
  s->finish_import(std::move(tokens));
  s->sampler().configure(sc);
  s->sampler().set_rng_state(rng);
  return s;
}

}  // namespace snap
}  // namespace kvrt
