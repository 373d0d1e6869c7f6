// Session store (docs/snapshot-format.md, "Session stores"): a folder with
// an append-only pack of KV blocks keyed by a hash of their bytes, and one
// small manifest per saved session naming its blocks. Saving a session again
// appends only the blocks the store lacks; sessions that share a prefix share
// its blocks.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "snapshot/snapshot-format.hpp"

namespace kvrt {
namespace snap {

inline constexpr char kPackMagic[8] = {'K', 'V', 'R', 'T', 'P', 'A', 'C', 'K'};
inline constexpr char kManifestMagic[8] = {'K', 'V', 'R', 'T', 'M', 'N', 'F', 'T'};
inline constexpr uint32_t kStoreFormatVersion = 1;  // pack and manifests; independent of kFormatVersion
inline constexpr size_t kPackHeaderBytes = 48;      // magic, version, flags, store id, generation, checksum
inline constexpr size_t kRecordHeaderBytes = 48;    // magic, flags, key, raw bytes, frame bytes, checksum
inline constexpr size_t kRecordTrailerBytes = 8;    // hash of the frame
inline constexpr uint32_t kRecordMagic = 0x4B4C4256u;  // "VBLK" read as little-endian bytes
inline constexpr size_t kStoreRecordBytes = 64;     // manifest: store id, pack end, counts, frame sizes, generation
inline constexpr size_t kTableEntryBytes = 32;      // manifest: key, offset, record bytes
inline constexpr uint64_t kBlockKeySeed = 0x4B565254424C4F43ull;   // "KVRTBLOC"
inline constexpr uint64_t kRecordSeed = 0x4B56525450524543ull;     // "KVRTPREC"
inline constexpr uint64_t kManifestSeed = 0x4B5652544D414E49ull;   // "KVRTMANI"
inline constexpr size_t kMaxNameBytes = 200;

struct BlockKey {
  uint64_t lo = 0, hi = 0;
  bool operator==(const BlockKey& o) const { return lo == o.lo && hi == o.hi; }
};
struct BlockKeyHash {
  size_t operator()(const BlockKey& k) const { return static_cast<size_t>(k.lo ^ (k.hi * 0x9E3779B97F4A7C15ull)); }
};

// Where a block's record lies in the pack.
struct BlockLoc {
  uint64_t offset = 0;        // of the record header
  uint64_t record_bytes = 0;  // header, frame and trailer
};

struct TableEntry {
  BlockKey key;
  BlockLoc loc;
};

// A manifest as read and verified (everything it holds; not the pack).
struct Manifest {
  Header H;
  uint8_t store_id[16] = {};
  uint64_t pack_end = 0;
  uint64_t generation = 0;        // of the pack the offsets refer to
  uint32_t tail_width = 0;
  std::vector<TableEntry> table;  // the session's full blocks in logical order
  std::vector<int32_t> tokens;
  std::vector<uint8_t> tail;      // logical bytes of the partial block (f32/f16) or the stage (q8/q4); may be empty
  uint64_t total_bytes = 0;
};

// Reads a whole manifest and verifies it: the header as a snapshot's (with
// `model` against the model and runtime, without bounded), the store record,
// the block table's ranges, the trailer checksum, then the token ids and the
// tail. Throws Error (CORRUPT, VERSION, MODEL_MISMATCH, UNSUPPORTED, IO from
// the source, OUT_OF_MEMORY); allocates only what the verified header bounds.
Manifest read_manifest(Source& in, const LoadedModel* model, const char* name);

// Parses a pack record header; returns an empty string when it holds (the
// key, sizes and checksum), else why not.
std::string parse_record_header(const uint8_t* p, size_t max_raw_bytes, BlockKey* key, uint32_t* width,
                                uint64_t* raw_bytes, uint64_t* frame_bytes);

struct StoreSaveStats {
  uint32_t blocks_total = 0, blocks_written = 0, blocks_reused = 0;
  uint64_t pack_bytes = 0, manifest_bytes = 0;
};

// What inspect() found about one name.
struct StoreEntryInfo {
  uint32_t n_tokens = 0, n_blocks = 0, k_format = 0, v_format = 0, n_ctx = 0, block_tokens = 0;
  uint64_t manifest_bytes = 0, block_record_bytes = 0, block_raw_bytes = 0;
  SamplerConfig sampler;
};

// An open store. Holds an exclusive lock on the folder for its lifetime;
// calls are serialized by a mutex.
class Store {
 public:
  // Creates the folder and the pack when missing. Throws Error: IO (cannot
  // create or open, locked by another handle), CORRUPT or VERSION (pack
  // header), OUT_OF_MEMORY.
  static std::unique_ptr<Store> open(const std::string& dir);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Appends the blocks the pack lacks, syncs, then replaces the name's
  // manifest atomically. Throws Error (INVALID_ARGUMENT, IO, OUT_OF_MEMORY).
  void save(Session& s, const std::string& name, const WriteOptions& opt, StoreSaveStats* stats);
  // Verifies the manifest, then each block as it is read; throws as
  // read_snapshot() does, NOT_FOUND for a missing name.
  std::unique_ptr<Session> load(std::shared_ptr<const LoadedModel> model, const std::string& name);
  void remove(const std::string& name);  // NOT_FOUND, IO
  // Rewrites the pack with only the records some manifest names; returns
  // the bytes it shrank by.
  uint64_t compact();
  std::vector<std::string> names();
  // Verifies a name's manifest and every block it names, without building
  // a session (with `model`, also the model checks).
  void inspect(const std::string& name, const LoadedModel* model, StoreEntryInfo* info);

 private:
  Store() = default;
  std::string manifest_path(const std::string& name) const;
  std::vector<std::string> list_names();  // names() without the lock
  void scan_pack(uint64_t file_size);
  void open_pack(bool create);
  void check_usable() const;  // Error KVRT_ERR_IO after a compaction that could not reopen the pack
  // Reads and checks the record at `loc` (header, key, sizes, frame
  // checksum; block_bytes 0 accepts any size); returns an empty string or
  // why not.
  std::string read_record(const BlockLoc& loc, const BlockKey& key, size_t block_bytes, std::vector<uint8_t>& rec,
                          uint32_t* width, uint64_t* frame);
  Manifest read_named(const std::string& name, const LoadedModel* model);
  // Reads, verifies and decodes block b of manifest m into dst.
  void read_block(const Manifest& m, const char* name, uint32_t b, uint8_t* dst, std::vector<uint8_t>& rec,
                  std::vector<uint8_t>& planes, void* dctx);

  std::mutex mu_;
  std::string dir_;
  int lock_fd_ = -1;
  int pack_fd_ = -1;
  uint8_t store_id_[16] = {};
  uint64_t generation_ = 0;    // the pack's; compaction counts it up
  uint64_t pack_size_ = 0;     // where the next record goes
  uint64_t damaged_at_ = 0;    // nonzero: the scan stopped at a bad record here that manifests may need
  std::string damage_;         // what was wrong there
  bool broken_ = false;        // the pack was replaced but could not be reopened
  std::unordered_map<BlockKey, BlockLoc, BlockKeyHash> index_;
};

// Throws KVRT_ERR_INVALID_ARGUMENT unless `name` is 1..kMaxNameBytes of
// [A-Za-z0-9._-] not starting with '.'.
void check_store_name(const char* name);

}  // namespace snap
}  // namespace kvrt
