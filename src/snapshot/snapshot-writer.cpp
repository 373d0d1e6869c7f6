// Snapshot writer: header, then each section streamed through zstd in
// bounded memory, whatever the session's length.
#include <algorithm>
#include <memory>
#include <vector>

#include <zstd.h>
#include <zstd_errors.h>

#include "snapshot/snapshot-format.hpp"
#include "util/error.hpp"

namespace kvrt {
namespace snap {

namespace {

struct CctxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};

void check_zstd(size_t rc, const char* what) {
  if (ZSTD_isError(rc)) {
    if (ZSTD_getErrorCode(rc) == ZSTD_error_memory_allocation)
      fail(KVRT_ERR_OUT_OF_MEMORY, "zstd %s: %s", what, ZSTD_getErrorName(rc));
    fail(KVRT_ERR_INTERNAL, "zstd %s: %s", what, ZSTD_getErrorName(rc));
  }
}

// One section: descriptor, zstd frame in length-prefixed chunks, two hashes.
class SectionWriter {
 public:
  SectionWriter(Sink& out, ZSTD_CCtx* cctx, std::vector<uint8_t>& obuf, uint32_t id, uint32_t flags,
                uint64_t raw_bytes, int level)
      : out_(out), cctx_(cctx), obuf_(obuf), hash_(id), stored_hash_(id), raw_bytes_(raw_bytes) {
    uint8_t d[kDescriptorBytes];
    put_u32(d, id);
    put_u32(d + 4, flags);
    put_u64(d + 8, raw_bytes);
    out_.write(d, sizeof d);
    stored_hash_.update(d, sizeof d);
    check_zstd(ZSTD_CCtx_reset(cctx_, ZSTD_reset_session_and_parameters), "reset");
    check_zstd(ZSTD_CCtx_setParameter(cctx_, ZSTD_c_compressionLevel, level), "level");
    check_zstd(ZSTD_CCtx_setParameter(cctx_, ZSTD_c_checksumFlag, 1), "checksum flag");
    check_zstd(ZSTD_CCtx_setParameter(cctx_, ZSTD_c_contentSizeFlag, 1), "content size flag");
    check_zstd(ZSTD_CCtx_setPledgedSrcSize(cctx_, raw_bytes), "pledged size");
  }

  // The raw section bytes, in their logical order, for the section hash.
  void hash_raw(const uint8_t* raw, size_t n) { hash_.update(raw, n); }
  // Bytes as stored (possibly in byte planes): compressed.
  void add_stored(const uint8_t* stored, size_t n) {
    fed_ += n;
    ZSTD_inBuffer in{stored, n, 0};
    while (in.pos < in.size) {
      ZSTD_outBuffer o{obuf_.data(), obuf_.size(), 0};
      check_zstd(ZSTD_compressStream2(cctx_, &o, &in, ZSTD_e_continue), "compress");
      emit(o.pos);
    }
  }

  void finish() {
    if (fed_ != raw_bytes_)
      fail(KVRT_ERR_INTERNAL, "snapshot section fed %llu bytes, declared %llu",
           static_cast<unsigned long long>(fed_), static_cast<unsigned long long>(raw_bytes_));
    ZSTD_inBuffer in{nullptr, 0, 0};
    size_t left;
    do {
      ZSTD_outBuffer o{obuf_.data(), obuf_.size(), 0};
      left = ZSTD_compressStream2(cctx_, &o, &in, ZSTD_e_end);
      check_zstd(left, "end frame");
      emit(o.pos);
    } while (left != 0);
    uint8_t tail[20];
    put_u32(tail, 0);  // end of chunks
    stored_hash_.update(tail, 4);
    put_u64(tail + 4, hash_.finish64());
    put_u64(tail + 12, stored_hash_.finish64());
    out_.write(tail, sizeof tail);
  }

 private:
  void emit(size_t n) {
    if (n == 0) return;
    uint8_t len[4];
    put_u32(len, static_cast<uint32_t>(n));
    out_.write(len, 4);
    out_.write(obuf_.data(), n);
    stored_hash_.update(len, 4);
    stored_hash_.update(obuf_.data(), n);
  }

  Sink& out_;
  ZSTD_CCtx* cctx_;
  std::vector<uint8_t>& obuf_;
  Hasher hash_;         // the raw section bytes (unshuffled)
  Hasher stored_hash_;  // descriptor, chunk lengths and compressed bytes as stored
  uint64_t raw_bytes_;
  uint64_t fed_ = 0;
};

// Counts the bytes going to the real sink (for the end record).
class CountingSink final : public Sink {
 public:
  explicit CountingSink(Sink& out) : out_(out) {}
  void write(const void* data, size_t n) override {
    out_.write(data, n);
    n_ += n;
  }
  uint64_t count() const { return n_; }

 private:
  Sink& out_;
  uint64_t n_ = 0;
};

}  // namespace

void encode_header(Session& s, const char (&magic)[8], uint32_t version, uint8_t* head) {
  const Model& m = s.model();
  const HParams& hp = m.hparams();
  const KvCache& kv = s.kv();
  const kvrt_k::KvLayout& lay = kv.layout();
  const SamplerConfig& sc = s.sampler().config();
  const uint64_t* rng = s.sampler().rng_state();
  const ModelFingerprint fp = m.fingerprint();
  const bool staged = s.kv_quantized();
  std::memset(head, 0, kPreambleBytes + kHeaderBytesV1);
  std::memcpy(head, magic, 8);
  put_u32(head + 8, version);
  put_u32(head + 12, staged ? kFlagStage : 0);  // required flags
  put_u32(head + 16, 0);  // optional flags
  put_u32(head + 20, static_cast<uint32_t>(kHeaderBytesV1));
  uint8_t* h = head + kPreambleBytes;
  put_u64(h + kHdrFingerprint, fp.lo);
  put_u64(h + kHdrFingerprint + 8, fp.hi);
  put_u32(h + kHdrNLayer, lay.n_layer);
  put_u32(h + kHdrNHeadKv, lay.n_head_kv);
  put_u32(h + kHdrHeadDim, lay.head_dim);
  put_u32(h + kHdrNVocab, hp.n_vocab);
  put_u32(h + kHdrBlockTokens, lay.block_tokens);
  put_u32(h + kHdrKFormat, lay.k_format);
  put_u32(h + kHdrVFormat, lay.v_format);
  put_u32(h + kHdrNCtx, kv.n_ctx());
  put_u32(h + kHdrNTokens, kv.n_tokens());
  put_u32(h + kHdrMaxBatch, s.config().max_batch);
  put_u64(h + kHdrBlockBytes, lay.block_bytes);
  std::memcpy(h + kHdrTemperature, &sc.temperature, 4);
  put_u32(h + kHdrTopK, sc.top_k);
  std::memcpy(h + kHdrTopP, &sc.top_p, 4);
  put_u64(h + kHdrSeed, sc.seed);
  for (int i = 0; i < 4; ++i) put_u64(h + kHdrRng + 8 * i, rng[i]);
  // Window state: none yet (kind 0, counts 0), left zero.
  put_u64(h + kHdrChecksum, hash64(head, kPreambleBytes + kHdrChecksum, 0));
}

void write_snapshot(Session& s, Sink& sink, const WriteOptions& opt) {
  if (opt.level < ZSTD_minCLevel() || opt.level > ZSTD_maxCLevel())
    fail(KVRT_ERR_INVALID_ARGUMENT, "compression_level = %d is outside zstd's range %d..%d", opt.level,
         ZSTD_minCLevel(), ZSTD_maxCLevel());
  CountingSink out(sink);
  const KvCache& kv = s.kv();
  const kvrt_k::KvLayout lay = kv.stored_layout();
  const uint32_t n_tokens = kv.n_tokens();
  // A quantized cache keeps its unfinished block in an f16 stage: the KV
  // section then holds only the full blocks, and a stage section follows.
  const bool staged = s.kv_quantized();
  if (staged != kvrt_k::kv_is_quant(lay.v_format))
    fail(KVRT_ERR_INTERNAL, "KV formats %u/%u: one side quantized", lay.k_format, lay.v_format);

  uint8_t head[kPreambleBytes + kHeaderBytesV1];
  encode_header(s, kMagic, kFormatVersion, head);
  out.write(head, sizeof head);

  std::unique_ptr<ZSTD_CCtx, CctxFree> cctx(ZSTD_createCCtx());
  if (!cctx) fail(KVRT_ERR_OUT_OF_MEMORY, "cannot create a zstd compression context");
  std::vector<uint8_t> obuf(std::min(ZSTD_CStreamOutSize(), kMaxChunkBytes));

  {
    const std::vector<int32_t>& toks = s.tokens();
    if (toks.size() != n_tokens)
      fail(KVRT_ERR_INTERNAL, "session holds %zu token ids but %u cached positions", toks.size(),
           n_tokens);
    SectionWriter w(out, cctx.get(), obuf, kSectionTokens, 0, uint64_t(n_tokens) * 4, opt.level);
    const uint8_t* p = reinterpret_cast<const uint8_t*>(toks.data());
    w.hash_raw(p, size_t(n_tokens) * 4);
    w.add_stored(p, size_t(n_tokens) * 4);
    w.finish();
  }

  {
    const size_t bb = lay.block_bytes;
    const size_t ek = kvrt_k::kv_elem_bytes(lay.k_format), ev = kvrt_k::kv_elem_bytes(lay.v_format);
    // Byte planes help when every element has the same width: the high bytes
    // (sign, exponent) of neighbouring values repeat, the low bytes do not.
    const size_t width = (opt.shuffle && ek == ev && ek > 1 && bb % ek == 0) ? ek : 0;
    const uint32_t n_blocks =
        staged ? n_tokens / lay.block_tokens : (n_tokens + lay.block_tokens - 1) / lay.block_tokens;
    SectionWriter w(out, cctx.get(), obuf, kSectionKv, static_cast<uint32_t>(width),
                    uint64_t(n_blocks) * bb, opt.level);
    std::vector<uint8_t> raw(bb), plane(width ? bb / width : 0);
    // A zstd block (up to 128 KiB) codes its literals with one table, so the
    // planes go in long runs: plane 0 of every block, then plane 1, ...
    const size_t passes = width ? width : 1;
    for (size_t j = 0; j < passes; ++j)
      for (uint32_t b = 0; b < n_blocks; ++b) {
        kv.block_runs(b).gather(raw.data());
        const uint32_t used = std::min<uint32_t>(lay.block_tokens, n_tokens - b * lay.block_tokens);
        if (used < lay.block_tokens) {
          // Positions past the last token hold leftovers (a rewind, an aborted
          // decode) that nothing reads: write zeros so that equal sessions give
          // equal snapshots and no stale data leaves the process.
          for (uint32_t l = 0; l < lay.n_layer; ++l)
            for (uint32_t hh = 0; hh < lay.n_head_kv; ++hh) {
              std::memset(raw.data() + kvrt_k::kv_k_offset(lay, l, hh) + size_t(used) * lay.head_dim * ek,
                          0, size_t(lay.block_tokens - used) * lay.head_dim * ek);
              std::memset(raw.data() + kvrt_k::kv_v_offset(lay, l, hh) + size_t(used) * lay.head_dim * ev,
                          0, size_t(lay.block_tokens - used) * lay.head_dim * ev);
            }
        }
        if (j == 0) w.hash_raw(raw.data(), bb);
        if (width) {
          const size_t n = bb / width;
          for (size_t i = 0; i < n; ++i) plane[i] = raw[i * width + j];
          w.add_stored(plane.data(), n);
        } else {
          w.add_stored(raw.data(), bb);
        }
      }
    w.finish();
  }

  if (staged) {
    // The stage in the f16 layout, positions at and after the tail's length
    // zeroed (what it holds there is never read), as byte planes (w = 2).
    const std::vector<uint8_t>& st = s.kv_stage();
    kvrt_k::KvLayout sl;
    kvrt_k::kv_layout_init(&sl, lay.n_layer, lay.n_head_kv, lay.head_dim, lay.block_tokens, kvrt_k::KV_F16,
                           kvrt_k::KV_F16);
    if (st.size() != sl.block_bytes)
      fail(KVRT_ERR_INTERNAL, "session stage holds %zu bytes, its layout %zu", st.size(), sl.block_bytes);
    std::vector<uint8_t> raw(st);
    const uint32_t used = n_tokens % lay.block_tokens;
    const size_t row = size_t(lay.head_dim) * 2;
    for (uint32_t l = 0; l < lay.n_layer; ++l)
      for (uint32_t hh = 0; hh < lay.n_head_kv; ++hh) {
        std::memset(raw.data() + kvrt_k::kv_k_offset(sl, l, hh) + used * row, 0,
                    size_t(lay.block_tokens - used) * row);
        std::memset(raw.data() + kvrt_k::kv_v_offset(sl, l, hh) + used * row, 0,
                    size_t(lay.block_tokens - used) * row);
      }
    const size_t width = opt.shuffle ? 2 : 0;
    SectionWriter w(out, cctx.get(), obuf, kSectionStage, static_cast<uint32_t>(width), raw.size(), opt.level);
    w.hash_raw(raw.data(), raw.size());
    if (width) {
      std::vector<uint8_t> planes(raw.size());
      shuffle_planes(raw.data(), planes.data(), raw.size(), width);
      w.add_stored(planes.data(), planes.size());
    } else {
      w.add_stored(raw.data(), raw.size());
    }
    w.finish();
  }

  uint8_t end[kDescriptorBytes];
  put_u32(end, kSectionEnd);
  put_u32(end + 4, 0);
  put_u64(end + 8, out.count());
  out.write(end, sizeof end);
}

}  // namespace snap
}  // namespace kvrt
