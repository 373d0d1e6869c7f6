// Session snapshot format (docs/snapshot-format.md): constants, field
// offsets, the project's 64/128-bit hash, byte sinks and sources, and the
// writer and reader entry points.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "engine/session.hpp"
#include "kvrt/kvrt.h"

namespace kvrt {

static_assert(std::endian::native == std::endian::little,
              "the snapshot writer and reader copy little-endian fields as they are in memory");

namespace snap {

// Fixed part at the start of every snapshot, whatever its version.
inline constexpr char kMagic[8] = {'K', 'V', 'R', 'T', 'S', 'N', 'A', 'P'};
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr size_t kPreambleBytes = 24;  // magic, version, required and optional flags, header length
// Required flag bit 0: the session's KV formats are quantized; the KV
// section holds only the full (quantized) blocks and a stage section with
// the f16 tail block follows it. An unknown required flag means the snapshot
// needs a newer reader.
inline constexpr uint32_t kFlagStage = 1u;
inline constexpr uint32_t kKnownRequiredFlags = kFlagStage;

// Header body of version 1 (offsets from the end of the preamble). Later
// writers may append fields before the checksum, which stays last.
inline constexpr size_t kHdrFingerprint = 0;  // 16 bytes: lo, hi
inline constexpr size_t kHdrNLayer = 16;
inline constexpr size_t kHdrNHeadKv = 20;
inline constexpr size_t kHdrHeadDim = 24;
inline constexpr size_t kHdrNVocab = 28;
inline constexpr size_t kHdrBlockTokens = 32;
inline constexpr size_t kHdrKFormat = 36;
inline constexpr size_t kHdrVFormat = 40;
inline constexpr size_t kHdrNCtx = 44;
inline constexpr size_t kHdrNTokens = 48;
inline constexpr size_t kHdrMaxBatch = 52;
inline constexpr size_t kHdrBlockBytes = 56;  // u64
inline constexpr size_t kHdrTemperature = 64;  // f32 bits
inline constexpr size_t kHdrTopK = 68;
inline constexpr size_t kHdrTopP = 72;  // f32 bits
inline constexpr size_t kHdrReserved0 = 76;
inline constexpr size_t kHdrSeed = 80;  // u64
inline constexpr size_t kHdrRng = 88;   // 4 x u64
inline constexpr size_t kHdrWindowKind = 120;  // 0: no window (the only kind so far)
inline constexpr size_t kHdrWindowSink = 124;
inline constexpr size_t kHdrWindowTokens = 128;
inline constexpr size_t kHdrReserved1 = 132;
inline constexpr size_t kHdrChecksum = 136;  // u64, last field of the header body
inline constexpr size_t kHeaderBytesV1 = 144;
inline constexpr size_t kMaxHeaderBytes = 4096;

// Sections follow the header: a 16-byte descriptor (id, flags, raw bytes),
// the zstd frame cut into length-prefixed chunks ending with a zero length,
// then the 64-bit hashes of the raw section bytes and of the stored bytes
// (descriptor, chunk lengths, compressed data). An end record closes it.
inline constexpr uint32_t kSectionEnd = 0;  // raw-bytes field: snapshot bytes before the end record
inline constexpr uint32_t kSectionTokens = 1;
inline constexpr uint32_t kSectionKv = 2;
inline constexpr uint32_t kSectionStage = 3;  // only with kFlagStage
inline constexpr size_t kDescriptorBytes = 16;
inline constexpr size_t kMaxChunkBytes = size_t(1) << 20;
// KV section flags: bits 0..7 are the byte-plane shuffle width (0: none).
inline constexpr uint32_t kKvShuffleMask = 0xffu;

inline void put_u32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline void put_u64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
inline uint32_t get_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t get_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// Streaming hash: four independent multiply-rotate lanes over 32-byte
// stripes (so the multiplies pipeline), zero-padded tail, length and lanes
// folded by a multiply-xorshift avalanche. Specified in the format document.
class Hasher {
 public:
  explicit Hasher(uint64_t seed = 0);
  void update(const void* data, size_t n);
  uint64_t finish64() const;
  void finish128(uint64_t* lo, uint64_t* hi) const;

 private:
  void stripe(const uint8_t* p);
  void final_lanes(uint64_t v[4]) const;
  uint64_t v_[4];
  uint8_t buf_[32];
  size_t buffered_ = 0;
  uint64_t total_ = 0;
};

uint64_t hash64(const void* data, size_t n, uint64_t seed);

// Byte planes: for each element of `width` bytes, byte j goes to plane j.
void shuffle_planes(const uint8_t* src, uint8_t* dst, size_t n_bytes, size_t width);
void unshuffle_planes(const uint8_t* src, uint8_t* dst, size_t n_bytes, size_t width);

// Where snapshot bytes go. write() throws Error on failure.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual void write(const void* data, size_t n) = 0;
};

// Where snapshot bytes come from. read() returns 1..n bytes, 0 at the end,
// and throws Error on failure.
class Source {
 public:
  virtual ~Source() = default;
  virtual size_t read(void* data, size_t n) = 0;
};

struct WriteOptions {
  int level = 3;         // zstd level
  bool shuffle = true;   // byte-plane shuffle of KV blocks (measurement switch)
};

// Writes a snapshot of `s` (the session is not changed; the sampler is only
// read). Throws what the sink throws, KVRT_ERR_INVALID_ARGUMENT for a bad
// level, KVRT_ERR_OUT_OF_MEMORY.
void write_snapshot(Session& s, Sink& out, const WriteOptions& opt);

// Reads and verifies a whole snapshot without building a session, filling
// `info` (zeroed first, then filled as far as it was read: header fields
// once the header checksum holds, each section's sizes once it is checked).
// With `model` also checks the fingerprint, geometry and block size as a
// load would. Throws as read_snapshot(); never allocates more than the
// snapshot's declared section sizes (the KV section is held to check its
// checksum in logical order).
void inspect_snapshot(const LoadedModel* model, Source& in, const char* source_name,
                      kvrt_snapshot_info* info);

// Reads, validates and builds a new session. Throws Error: KVRT_ERR_CORRUPT,
// KVRT_ERR_VERSION, KVRT_ERR_MODEL_MISMATCH, KVRT_ERR_UNSUPPORTED,
// KVRT_ERR_OUT_OF_MEMORY, or what the source throws (KVRT_ERR_IO).
// `source_name` prefixes messages. Nothing stays allocated on error.
std::unique_ptr<Session> read_snapshot(std::shared_ptr<const LoadedModel> model, Source& in,
                                       const char* source_name);

// The header's fields as stored (snapshots and store manifests share the
// header body); check_header_fields() validates them.
struct Header {
  uint32_t version = 0, required = 0, optional = 0, hbytes = 0;
  uint64_t fp_lo = 0, fp_hi = 0;
  uint32_t n_layer = 0, n_head_kv = 0, head_dim = 0, n_vocab = 0, bt = 0, kf = 0, vf = 0;
  uint32_t n_ctx = 0, n_tokens = 0, max_batch = 0;
  uint64_t block_bytes = 0;
  SamplerConfig sc;
  uint64_t rng[4] = {};
  uint32_t reserved0 = 0, reserved1 = 0, window_kind = 0, window_sink = 0, window_tokens = 0;
  // Derived by check_header().
  kvrt_k::KvLayout lay{};        // the cache's blocks
  kvrt_k::KvLayout stage_lay{};  // the f16 tail stage of a quantized cache
  bool staged = false;           // kFlagStage: quantized cache, stage section present
  uint32_t n_kv_blocks = 0;      // blocks in the KV section
};

// Builds the preamble and the version-1 header body of session `s` (the
// layout above) into `head` (kPreambleBytes + kHeaderBytesV1 bytes), with
// the given magic and version; the store's manifests share the header body.
void encode_header(Session& s, const char (&magic)[8], uint32_t version, uint8_t* head);

// Reads the preamble and header body from `in` (the magic must be `magic`,
// the version 1..max_version) and checks the header checksum; sets
// *bytes_read. check_header_fields() then validates the fields as a
// snapshot load does (with `model`) or bounds them (without).
Header read_header_with_magic(Source& in, const char* name, const char (&magic)[8], uint32_t max_version,
                              uint64_t* bytes_read);
void check_header_fields(Header& H, const LoadedModel* model, const char* name);

}  // namespace snap
}  // namespace kvrt
