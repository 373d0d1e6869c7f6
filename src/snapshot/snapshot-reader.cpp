// Snapshot reader: validates the header against the model and runtime,
// checks sizes before allocating, decompresses and verifies every section,
// and only then hands out the new session.
#include <algorithm>
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
    case kSectionStage: return "stage section";
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
          fail(KVRT_ERR_CORRUPT, "%s: empty: no data at all", name_);
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
    last_stored_bytes_ = off_ - at;
  }

  // Bytes the last section took in the snapshot, framing and checksums included.
  uint64_t last_stored_bytes_ = 0;

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


// Largest block (or stage) an inspection without a model accepts: 1 GiB,
// far beyond any model's (128 layers x 128 KV heads x 128 x 16 tokens in
// f32 is 256 MiB).
constexpr size_t kMaxBlockBytesUnchecked = size_t(1) << 30;

// Preamble and header body, through the header checksum.
Header read_header(Reader& r, const char* name, const char (&magic)[8] = kMagic,
                   uint32_t max_version = kFormatVersion) {
  uint8_t pre[kPreambleBytes];
  r.read_exact(pre, sizeof pre, "the preamble");
  if (std::memcmp(pre, magic, 8) != 0)
    fail(KVRT_ERR_CORRUPT, "%s: not a kvrt %s (the first 8 bytes are not \"%.8s\")", name,
         std::memcmp(magic, kMagic, 8) == 0 ? "snapshot" : "store manifest", magic);
  Header H;
  H.version = get_u32(pre + 8);
  if (H.version == 0) fail(KVRT_ERR_CORRUPT, "%s: format version 0 does not exist", name);
  if (H.version > max_version)
    fail(KVRT_ERR_VERSION, "%s: format version %u; this library reads versions up to %u", name, H.version,
         max_version);
  H.required = get_u32(pre + 12);
  if (H.required & ~kKnownRequiredFlags)
    fail(KVRT_ERR_VERSION, "%s: snapshot needs features 0x%08x that this library does not know", name,
         H.required & ~kKnownRequiredFlags);
  H.optional = get_u32(pre + 16);
  H.hbytes = get_u32(pre + 20);
  if (H.hbytes < kHeaderBytesV1 || H.hbytes > kMaxHeaderBytes)
    fail(KVRT_ERR_CORRUPT, "%s: header length %u is outside %zu..%zu", name, H.hbytes, kHeaderBytesV1,
         kMaxHeaderBytes);
  std::vector<uint8_t> head(kPreambleBytes + H.hbytes);
  std::memcpy(head.data(), pre, kPreambleBytes);
  r.read_exact(head.data() + kPreambleBytes, H.hbytes, "the header");
  const uint8_t* h = head.data() + kPreambleBytes;
  {
    const uint64_t stored = get_u64(h + H.hbytes - 8);
    const uint64_t computed = hash64(head.data(), kPreambleBytes + H.hbytes - 8, 0);
    if (stored != computed)
      fail(KVRT_ERR_CORRUPT, "%s: header checksum mismatch (%016" PRIx64 " stored, %016" PRIx64 " computed)",
           name, stored, computed);
  }
  H.fp_lo = get_u64(h + kHdrFingerprint);
  H.fp_hi = get_u64(h + kHdrFingerprint + 8);
  H.n_layer = get_u32(h + kHdrNLayer);
  H.n_head_kv = get_u32(h + kHdrNHeadKv);
  H.head_dim = get_u32(h + kHdrHeadDim);
  H.n_vocab = get_u32(h + kHdrNVocab);
  H.bt = get_u32(h + kHdrBlockTokens);
  H.kf = get_u32(h + kHdrKFormat);
  H.vf = get_u32(h + kHdrVFormat);
  H.n_ctx = get_u32(h + kHdrNCtx);
  H.n_tokens = get_u32(h + kHdrNTokens);
  H.max_batch = get_u32(h + kHdrMaxBatch);
  H.block_bytes = get_u64(h + kHdrBlockBytes);
  std::memcpy(&H.sc.temperature, h + kHdrTemperature, 4);
  H.sc.top_k = get_u32(h + kHdrTopK);
  std::memcpy(&H.sc.top_p, h + kHdrTopP, 4);
  H.sc.seed = get_u64(h + kHdrSeed);
  for (int i = 0; i < 4; ++i) H.rng[i] = get_u64(h + kHdrRng + 8 * i);
  H.reserved0 = get_u32(h + kHdrReserved0);
  H.reserved1 = get_u32(h + kHdrReserved1);
  H.window_kind = get_u32(h + kHdrWindowKind);
  H.window_sink = get_u32(h + kHdrWindowSink);
  H.window_tokens = get_u32(h + kHdrWindowTokens);
  return H;
}

// Validates the header in the documented order. With a model: fingerprint,
// shapes, the runtime's block_tokens and the model's context length; without
// one, the shapes are only bounded so that every size below fits in 64 bits.
void check_header(Header& H, const LoadedModel* model, const char* name) {
  if (model) {
    const Model& m = *model->model;
    const HParams& hp = m.hparams();
    const ModelFingerprint fp = m.fingerprint();
    if (H.fp_lo != fp.lo || H.fp_hi != fp.hi)
      fail(KVRT_ERR_MODEL_MISMATCH,
           "%s: made with another model (fingerprint %016" PRIx64 "%016" PRIx64 "; this model's is %016" PRIx64
           "%016" PRIx64 ")", name, H.fp_hi, H.fp_lo, fp.hi, fp.lo);
    auto same = [&](uint32_t got, uint32_t want, const char* field) {
      if (got != want)
        fail(KVRT_ERR_MODEL_MISMATCH, "%s: %s = %u, the model has %u", name, field, got, want);
    };
    same(H.n_layer, hp.n_layer, "n_layer");
    same(H.n_head_kv, hp.n_head_kv, "n_head_kv");
    same(H.head_dim, hp.head_dim, "head_dim");
    same(H.n_vocab, hp.n_vocab, "n_vocab");
  } else {
    // Bounds far beyond any model, so that block sizes cannot overflow.
    auto bounded = [&](uint32_t v, uint32_t lo, uint32_t hi, const char* field) {
      if (v < lo || v > hi) fail(KVRT_ERR_CORRUPT, "%s: %s = %u is outside %u..%u", name, field, v, lo, hi);
    };
    bounded(H.n_layer, 1, 1u << 12, "n_layer");
    bounded(H.n_head_kv, 1, 1u << 12, "n_head_kv");
    bounded(H.head_dim, 1, 1u << 12, "head_dim");
    bounded(H.n_vocab, 1, 1u << 30, "n_vocab");
  }

  for (uint32_t f : {H.kf, H.vf})
    if (f >= KVRT_KV_FORMAT_COUNT) fail(KVRT_ERR_CORRUPT, "%s: KV format %u is not a kvrt_kv_format", name, f);
  const bool qk = kvrt_k::kv_is_quant(H.kf), qv = kvrt_k::kv_is_quant(H.vf);
  if (qk != qv)
    fail(KVRT_ERR_CORRUPT, "%s: KV formats %s keys with %s values cannot be paired", name, format_name(H.kf),
         format_name(H.vf));
  H.staged = (H.required & kFlagStage) != 0;
  if (H.staged != qk)
    fail(KVRT_ERR_CORRUPT, "%s: the stage flag is %s but the KV formats are %s/%s", name,
         H.staged ? "set" : "clear", format_name(H.kf), format_name(H.vf));
  for (uint32_t f : {H.kf, H.vf})
    if (f != kvrt_k::KV_F32 && f != kvrt_k::KV_F16 && !kvrt_k::kv_is_quant(f))
      fail(KVRT_ERR_UNSUPPORTED, "%s: KV format %s is not supported by this build", name, format_name(f));
  if (H.bt == 0 || H.bt > 1024) fail(KVRT_ERR_CORRUPT, "%s: block_tokens = %u is outside 1..1024", name, H.bt);
  if (model) {
    const uint32_t rt_bt = model->runtime->config().block_tokens;
    if (H.bt != rt_bt)
      fail(KVRT_ERR_UNSUPPORTED,
           "%s: the snapshot's KV blocks hold %u tokens but this runtime's hold %u (create the runtime with "
           "block_tokens = %u to load it)", name, H.bt, rt_bt, H.bt);
  }
  if (!kvrt_k::kv_layout_init(&H.lay, H.n_layer, H.n_head_kv, H.head_dim, H.bt, H.kf, H.vf))
    fail(KVRT_ERR_UNSUPPORTED, "%s: no block layout for formats %s/%s", name, format_name(H.kf),
         format_name(H.vf));
  if (H.staged && (H.head_dim > 512))
    fail(KVRT_ERR_CORRUPT, "%s: head_dim = %u exceeds 512, the limit of quantized formats", name, H.head_dim);
  kvrt_k::kv_layout_init(&H.stage_lay, H.n_layer, H.n_head_kv, H.head_dim, H.bt, kvrt_k::KV_F16,
                         kvrt_k::KV_F16);
  if (H.block_bytes != H.lay.block_bytes)
    fail(KVRT_ERR_CORRUPT, "%s: block_bytes = %" PRIu64 " but the geometry gives %zu", name, H.block_bytes,
         H.lay.block_bytes);
  // A reader holds one block (and the stage) at a time: without a model to
  // bound the shapes, so is their size.
  if (!model && (H.lay.block_bytes > kMaxBlockBytesUnchecked || H.stage_lay.block_bytes > kMaxBlockBytesUnchecked))
    fail(KVRT_ERR_CORRUPT, "%s: blocks of %zu bytes (stage %zu) exceed %zu bytes", name, H.lay.block_bytes,
         H.stage_lay.block_bytes, kMaxBlockBytesUnchecked);
  const uint32_t ctx_limit = model ? model->model->hparams().n_ctx_train : UINT32_MAX;
  if (H.n_ctx == 0 || H.n_ctx > ctx_limit)
    fail(KVRT_ERR_CORRUPT, "%s: n_ctx = %u is outside 1..%u (the model's context length)", name, H.n_ctx,
         ctx_limit);
  if (H.n_tokens > H.n_ctx)
    fail(KVRT_ERR_CORRUPT, "%s: n_tokens = %u exceeds n_ctx = %u", name, H.n_tokens, H.n_ctx);
  if (H.max_batch == 0 || H.max_batch > 4096 || H.max_batch > H.n_ctx)
    fail(KVRT_ERR_CORRUPT, "%s: max_batch = %u is outside 1..min(4096, n_ctx = %u)", name, H.max_batch,
         H.n_ctx);
  if (!std::isfinite(H.sc.temperature) || H.sc.temperature < 0.0f)
    fail(KVRT_ERR_CORRUPT, "%s: sampler temperature %g is not finite and >= 0", name, double(H.sc.temperature));
  if (!(H.sc.top_p > 0.0f && H.sc.top_p <= 1.0f))
    fail(KVRT_ERR_CORRUPT, "%s: sampler top_p %g is outside (0, 1]", name, double(H.sc.top_p));
  if ((H.rng[0] | H.rng[1] | H.rng[2] | H.rng[3]) == 0)
    fail(KVRT_ERR_CORRUPT, "%s: sampler generator state is all zero", name);
  if (H.reserved0 || H.reserved1) fail(KVRT_ERR_CORRUPT, "%s: reserved header fields are not zero", name);
  if (H.window_kind != 0)
    fail(KVRT_ERR_UNSUPPORTED, "%s: window kind %u is not supported by this build", name, H.window_kind);
  if (H.window_sink || H.window_tokens)
    fail(KVRT_ERR_CORRUPT, "%s: window sizes are set without a window", name);
  // A quantized cache keeps its unfinished block in the stage: the KV
  // section holds only the full blocks.
  H.n_kv_blocks = H.staged ? H.n_tokens / H.bt : (H.n_tokens + H.bt - 1) / H.bt;
}

// Section flags: the KV and stage sections carry a byte-plane width.
void set_unit_rule(Reader& r, const Header& H, const char* name, uint32_t* kv_width, uint32_t* stage_width) {
  r.unit_for_flags_ = [&H, name, kv_width, stage_width](uint32_t id, uint32_t flags) -> size_t {
    if (id == kSectionKv || id == kSectionStage) {
      const size_t bb = id == kSectionKv ? H.lay.block_bytes : H.stage_lay.block_bytes;
      const uint32_t w = flags & kKvShuffleMask;
      if ((flags & ~kKvShuffleMask) || !(w == 0 || w == 2 || w == 4) || (w && bb % w) ||
          (id == kSectionStage && w == 4))
        fail(KVRT_ERR_CORRUPT, "%s: %s flags 0x%08x are not valid for %zu-byte blocks", name, section_name(id),
             flags, bb);
      *(id == kSectionKv ? kv_width : stage_width) = w;
      return w ? bb / w : bb;  // one block's plane
    }
    if (flags != 0)
      fail(KVRT_ERR_CORRUPT, "%s: %s flags 0x%08x: none are defined", name, section_name(id), flags);
    return size_t(1) << 16;
  };
}

// Reads a sectioned run of n_blocks blocks of bb bytes, stored whole or as
// byte planes across all blocks, into the blocks block(b) names (each in
// runs, as the pool keeps them; the stored form is the contiguous one).
void read_blocks(Reader& r, uint32_t id, uint32_t n_blocks, size_t bb, const uint32_t& width,
                 const std::function<BlockRuns(uint32_t)>& block) {
  uint32_t flags = 0;
  uint64_t unit_index = 0;
  std::vector<uint8_t> stored(bb);
  r.section(id, &flags, uint64_t(n_blocks) * bb, stored.data(),
            [&](uint8_t* p, size_t n, Hasher&) {
              const uint64_t j = unit_index / n_blocks;  // plane
              const BlockRuns dst = block(static_cast<uint32_t>(unit_index % n_blocks));
              ++unit_index;
              if (!width) {
                dst.scatter(p);
                return;
              }
              // Plane byte i is block byte i * w + j; a piece holds block
              // bytes [lo, lo + its bytes), so plane bytes [i0, i1) with
              // i0 the first i whose i * w + j reaches lo. (A piece need not
              // hold whole elements: a file may choose any w that divides
              // block_bytes.)
              const size_t w = width;
              auto first = [&](size_t lo) { return lo > j ? (lo - j + w - 1) / w : 0; };
              size_t lo = 0;
              dst.for_each([&](uint8_t* d, size_t pb) {
                const size_t i0 = first(lo), i1 = std::min(first(lo + pb), n);
                for (size_t i = i0; i < i1; ++i) d[i * w + j - lo] = p[i];
                lo += pb;
              });
            },
            [&](Hasher& hash) {
              for (uint32_t b = 0; b < n_blocks; ++b) {
                block(b).for_each([&](const uint8_t* q, size_t m) { hash.update(q, m); });
              }
            });
}

// Reads and checks the token ids; keeps them in *out when it is set (the
// inspection only streams them, so a header's claim allocates nothing).
void read_tokens(Reader& r, const Header& H, const char* name, std::vector<int32_t>* out) {
  if (out) out->resize(H.n_tokens);
  uint32_t flags;
  size_t pos = 0;  // bytes so far; every piece is a multiple of 4 bytes
  std::vector<uint8_t> buf(std::min<size_t>(size_t(H.n_tokens) * 4, 1 << 16));
  r.section(kSectionTokens, &flags, uint64_t(H.n_tokens) * 4, buf.data(),
            [&](uint8_t* p, size_t n, Hasher& hash) {
              hash.update(p, n);
              for (size_t k = 0; k + 4 <= n; k += 4) {
                const int32_t t = static_cast<int32_t>(get_u32(p + k));
                if (t < 0 || static_cast<uint32_t>(t) >= H.n_vocab)
                  fail(KVRT_ERR_CORRUPT, "%s: token %zu = %d is outside the vocabulary [0, %u)", name,
                       (pos + k) / 4, t, H.n_vocab);
              }
              if (out) std::memcpy(reinterpret_cast<uint8_t*>(out->data()) + pos, p, n);
              pos += n;
            });
}

void read_end(Reader& r, const char* name) {
  uint8_t end[kDescriptorBytes];
  const uint64_t at = r.offset();
  r.read_exact(end, sizeof end, "the end record");
  if (get_u32(end) != kSectionEnd || get_u32(end + 4) != 0 || get_u64(end + 8) != at)
    fail(KVRT_ERR_CORRUPT, "%s: bad end record at offset %" PRIu64 " (id %u, flags 0x%x, length %" PRIu64 ")",
         name, at, get_u32(end), get_u32(end + 4), get_u64(end + 8));
}

}  // namespace

Header read_header_with_magic(Source& in, const char* name, const char (&magic)[8], uint32_t max_version,
                              uint64_t* bytes_read) {
  Reader r(in, name);
  Header H = read_header(r, name, magic, max_version);
  *bytes_read = r.offset();
  return H;
}

void check_header_fields(Header& H, const LoadedModel* model, const char* name) { check_header(H, model, name); }

std::unique_ptr<Session> read_snapshot(std::shared_ptr<const LoadedModel> model, Source& src,
                                       const char* name) {
  Reader r(src, name);
  Header H = read_header(r, name);
  check_header(H, model.get(), name);
  // Everything sized by the header is now bounded by the model's context.
  uint32_t kv_width = 0, stage_width = 0;
  set_unit_rule(r, H, name, &kv_width, &stage_width);
  std::vector<int32_t> tokens;
  read_tokens(r, H, name, &tokens);

  SessionConfig cfg;
  cfg.k_format = H.kf;
  cfg.v_format = H.vf;
  cfg.n_ctx = H.n_ctx;
  cfg.max_batch = H.max_batch;
  // The session stays private until every check below has passed; on any
  // error it is destroyed and its blocks go back to the pool.
  auto s = std::make_unique<Session>(model, cfg);
  s->begin_import(H.n_tokens);
  const size_t bb = H.lay.block_bytes;
  read_blocks(r, kSectionKv, H.n_kv_blocks, bb, kv_width, [&](uint32_t b) { return s->import_block(b); });
  if (H.staged) {
    // The reserved pool block of the unfinished tail is written only when it
    // fills; clear it so that no other session's bytes remain there.
    if (H.n_tokens % H.bt) s->import_block(H.n_kv_blocks).clear();
    if (s->kv_stage().size() != H.stage_lay.block_bytes)
      fail(KVRT_ERR_INTERNAL, "session stage holds %zu bytes, the snapshot's %zu", s->kv_stage().size(),
           H.stage_lay.block_bytes);
    uint8_t* stage = s->import_stage();
    const size_t sb = H.stage_lay.block_bytes;
    read_blocks(r, kSectionStage, 1, sb, stage_width, [stage, sb](uint32_t) { return BlockRuns::whole(stage, sb); });
  }
  read_end(r, name);
  s->finish_import(std::move(tokens));
  s->sampler().configure(H.sc);
  s->sampler().set_rng_state(H.rng);
  return s;
}

void inspect_snapshot(const LoadedModel* model, Source& src, const char* name, kvrt_snapshot_info* info) {
  const uint32_t keep = info->struct_size;
  std::memset(info, 0, sizeof *info);
  info->struct_size = keep;
  Reader r(src, name);
  Header H = read_header(r, name);
  info->format_version = H.version;
  info->required_flags = H.required;
  info->optional_flags = H.optional;
  info->fingerprint_lo = H.fp_lo;
  info->fingerprint_hi = H.fp_hi;
  info->n_layer = H.n_layer;
  info->n_head_kv = H.n_head_kv;
  info->head_dim = H.head_dim;
  info->n_vocab = H.n_vocab;
  info->block_tokens = H.bt;
  info->kv_format_k = H.kf;
  info->kv_format_v = H.vf;
  info->n_ctx = H.n_ctx;
  info->n_tokens = H.n_tokens;
  info->max_batch = H.max_batch;
  info->block_bytes = H.block_bytes;
  info->temperature = H.sc.temperature;
  info->top_k = static_cast<int32_t>(H.sc.top_k);
  info->top_p = H.sc.top_p;
  info->seed = H.sc.seed;
  check_header(H, model, name);
  uint32_t kv_width = 0, stage_width = 0;
  set_unit_rule(r, H, name, &kv_width, &stage_width);
  read_tokens(r, H, name, nullptr);
  info->tokens_raw_bytes = uint64_t(H.n_tokens) * 4;
  info->tokens_stored_bytes = r.last_stored_bytes_;
  // The KV data is held (in logical order) to check its checksum; grown as
  // the data arrives, so a short file cannot make it allocate its claim.
  const size_t bb = H.lay.block_bytes;
  std::vector<std::unique_ptr<uint8_t[]>> blocks;
  read_blocks(r, kSectionKv, H.n_kv_blocks, bb, kv_width, [&](uint32_t b) {
    while (blocks.size() <= b) blocks.emplace_back(new uint8_t[bb]);
    return BlockRuns::whole(blocks[b].get(), bb);
  });
  info->kv_plane_width = kv_width;
  info->kv_raw_bytes = uint64_t(H.n_kv_blocks) * bb;
  info->kv_stored_bytes = r.last_stored_bytes_;
  blocks.clear();
  if (H.staged) {
    std::vector<uint8_t> stage(H.stage_lay.block_bytes);
    read_blocks(r, kSectionStage, 1, stage.size(), stage_width,
                [&](uint32_t) { return BlockRuns::whole(stage.data(), stage.size()); });
    info->stage_raw_bytes = stage.size();
    info->stage_stored_bytes = r.last_stored_bytes_;
  }
  read_end(r, name);
  info->total_bytes = r.offset();
}

}  // namespace snap
}  // namespace kvrt
