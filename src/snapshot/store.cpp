// Session store: block pack, manifests, the lock, saves that append only
// what is new, and loads that verify every byte before a session is built.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstring>
#include <random>

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zstd.h>
#include <zstd_errors.h>

#include "snapshot/snapshot-io.hpp"
#include "snapshot/store.hpp"
#include "util/error.hpp"

namespace kvrt {
namespace snap {

namespace {

const char* kPackFile = "blocks.kvp";
const char* kLockFile = "lock";
const char* kManifestSuffix = ".kvm";

struct CctxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DctxFree {
  void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};

// Reads up to n bytes at off; returns the count (short only at the end).
size_t pread_full(int fd, void* buf, size_t n, uint64_t off) {
  uint8_t* p = static_cast<uint8_t*>(buf);
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::pread(fd, p + got, n - got, static_cast<off_t>(off + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(KVRT_ERR_IO, "reading the block pack at offset %" PRIu64 ": %s", off + got, std::strerror(errno));
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return got;
}

bool pwrite_full(int fd, const void* buf, size_t n, uint64_t off) {
  const uint8_t* p = static_cast<const uint8_t*>(buf);
  while (n) {
    const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
    off += static_cast<uint64_t>(w);
  }
  return true;
}

void sync_dir(const std::string& dir) {
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return;
  const int rc = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (rc != 0 && err != EINVAL && err != EROFS)
    fail(KVRT_ERR_IO, "syncing store folder '%s': %s", dir.c_str(), std::strerror(err));
}

// The key of a block's bytes in their one-piece form, read from its runs
// (no copy: most blocks of a save are in the store already).
BlockKey block_key(const BlockRuns& b) {
  Hasher h(kBlockKeySeed);
  b.for_each([&](const uint8_t* p, size_t n) { h.update(p, n); });
  BlockKey k;
  h.finish128(&k.lo, &k.hi);
  return k;
}

// Byte-plane width of a block: the element size when keys and values share
// one wider than a byte (as in a snapshot's KV section), else 0.
uint32_t plane_width(const kvrt_k::KvLayout& lay, bool shuffle) {
  const size_t ek = kvrt_k::kv_elem_bytes(lay.k_format), ev = kvrt_k::kv_elem_bytes(lay.v_format);
  return (shuffle && ek == ev && ek > 1 && lay.block_bytes % ek == 0) ? static_cast<uint32_t>(ek) : 0;
}

void check_zstd(size_t rc, const char* what) {
  if (ZSTD_isError(rc)) {
    if (ZSTD_getErrorCode(rc) == ZSTD_error_memory_allocation)
      fail(KVRT_ERR_OUT_OF_MEMORY, "zstd %s: %s", what, ZSTD_getErrorName(rc));
    fail(KVRT_ERR_INTERNAL, "zstd %s: %s", what, ZSTD_getErrorName(rc));
  }
}

// One zstd frame of `n` bytes (as byte planes of `width` when nonzero),
// with its content size and checksum, appended to `out`.
void compress_frame(ZSTD_CCtx* cctx, int level, const uint8_t* p, size_t n, uint32_t width,
                    std::vector<uint8_t>& planes, std::vector<uint8_t>& out) {
  if (width) {
    planes.resize(n);
    shuffle_planes(p, planes.data(), n, width);
    p = planes.data();
  }
  check_zstd(ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters), "reset");
  check_zstd(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level), "level");
  check_zstd(ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1), "checksum flag");
  check_zstd(ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1), "content size flag");
  const size_t at = out.size();
  out.resize(at + ZSTD_compressBound(n));
  const size_t k = ZSTD_compress2(cctx, out.data() + at, out.size() - at, p, n);
  check_zstd(k, "compress");
  out.resize(at + k);
}

// Decodes one whole frame that must hold exactly n bytes into dst (as
// byte planes of `width` when nonzero). Returns an empty string or why not.
std::string decompress_frame(ZSTD_DCtx* dctx, const uint8_t* src, size_t src_n, uint8_t* dst, size_t n,
                             uint32_t width, std::vector<uint8_t>& planes) {
  const unsigned long long declared = ZSTD_getFrameContentSize(src, src_n);
  if (declared == ZSTD_CONTENTSIZE_ERROR) return "not a zstd frame";
  if (declared == ZSTD_CONTENTSIZE_UNKNOWN) return "the zstd frame does not declare its size";
  if (declared != n) return strprintf("the zstd frame holds %llu bytes, %zu expected", declared, n);
  if (ZSTD_findFrameCompressedSize(src, src_n) != src_n) return "the zstd frame does not end where its record does";
  ZSTD_DCtx_reset(dctx, ZSTD_reset_session_and_parameters);
  ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, 27);
  uint8_t* out = dst;
  if (width) {
    planes.resize(n);
    out = planes.data();
  }
  const size_t rc = ZSTD_decompressDCtx(dctx, out, n, src, src_n);
  if (ZSTD_isError(rc)) {
    if (ZSTD_getErrorCode(rc) == ZSTD_error_memory_allocation)
      fail(KVRT_ERR_OUT_OF_MEMORY, "zstd: %s", ZSTD_getErrorName(rc));
    return strprintf("zstd: %s", ZSTD_getErrorName(rc));
  }
  if (rc != n) return strprintf("the zstd frame decoded to %zu bytes, %zu expected", rc, n);
  if (width) unshuffle_planes(planes.data(), dst, n, width);
  return {};
}

std::string key_hex(const BlockKey& k) { return strprintf("%016" PRIx64 "%016" PRIx64, k.hi, k.lo); }

// Reads exactly n bytes from a source, CORRUPT when it ends first.
void read_exact(Source& in, void* data, size_t n, const char* name, const char* what, uint64_t* off) {
  uint8_t* p = static_cast<uint8_t*>(data);
  size_t got = 0;
  while (got < n) {
    const size_t k = in.read(p + got, n - got);
    if (k == 0)
      fail(KVRT_ERR_CORRUPT, "%s: truncated: %s needs %zu bytes at offset %" PRIu64 ", the data ends after %zu",
           name, what, n, *off, got);
    got += k;
  }
  *off += n;
}

// Reads exactly n bytes into `out`, growing it as the data arrives.
void read_growing(Source& in, std::vector<uint8_t>& out, uint64_t n, const char* name, const char* what,
                  uint64_t* off) {
  out.clear();
  while (out.size() < n) {
    const size_t piece = static_cast<size_t>(std::min<uint64_t>(n - out.size(), uint64_t(1) << 20));
    const size_t at = out.size();
    out.resize(at + piece);
    uint64_t o = *off + at;
    read_exact(in, out.data() + at, piece, name, what, &o);
  }
  *off += n;
}

// Decodes one whole frame that must hold exactly n bytes (a multiple of 4),
// handing it to `on` in pieces of at most 64 KiB whose sizes are multiples
// of 4. Returns an empty string or why not.
template <class F>
std::string decode_stream(ZSTD_DCtx* dctx, const uint8_t* src, size_t src_n, uint64_t n, F&& on) {
  const unsigned long long declared = ZSTD_getFrameContentSize(src, src_n);
  if (declared == ZSTD_CONTENTSIZE_ERROR) return "not a zstd frame";
  if (declared == ZSTD_CONTENTSIZE_UNKNOWN) return "the zstd frame does not declare its size";
  if (declared != n) return strprintf("the zstd frame holds %llu bytes, %" PRIu64 " expected", declared, n);
  if (ZSTD_findFrameCompressedSize(src, src_n) != src_n) return "the zstd frame does not end where it should";
  ZSTD_DCtx_reset(dctx, ZSTD_reset_session_and_parameters);
  ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, 27);
  uint8_t buf[1 << 16];
  size_t filled = 0;
  uint64_t total = 0;
  ZSTD_inBuffer inb{src, src_n, 0};
  for (;;) {
    ZSTD_outBuffer ob{buf + filled, sizeof buf - filled, 0};
    const size_t rc = ZSTD_decompressStream(dctx, &ob, &inb);
    if (ZSTD_isError(rc)) {
      if (ZSTD_getErrorCode(rc) == ZSTD_error_memory_allocation)
        fail(KVRT_ERR_OUT_OF_MEMORY, "zstd: %s", ZSTD_getErrorName(rc));
      return strprintf("zstd: %s", ZSTD_getErrorName(rc));
    }
    filled += ob.pos;
    total += ob.pos;
    if (total > n) return strprintf("the zstd frame decodes to more than %" PRIu64 " bytes", n);
    const size_t whole = filled & ~size_t(3);
    if (whole && (filled == sizeof buf || rc == 0)) {
      on(buf, whole);
      std::memmove(buf, buf + whole, filled - whole);
      filled -= whole;
    }
    if (rc == 0) break;
    if (inb.pos == inb.size && ob.pos == 0) return "the zstd frame is cut short";
  }
  if (total != n || filled) return strprintf("the zstd frame decoded to %" PRIu64 " bytes, %" PRIu64 " expected", total, n);
  return {};
}

void make_store_id(uint8_t id[16]) {
  std::random_device rd;
  Hasher h(0x5354524F52454944ull);
  for (int i = 0; i < 8; ++i) {
    const uint32_t v = rd();
    h.update(&v, 4);
  }
  const auto t = std::chrono::system_clock::now().time_since_epoch().count();
  const int pid = ::getpid();
  h.update(&t, sizeof t);
  h.update(&pid, sizeof pid);
  uint64_t lo, hi;
  h.finish128(&lo, &hi);
  put_u64(id, lo);
  put_u64(id + 8, hi);
}

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

}  // namespace

void check_store_name(const char* name) {
  if (!name) fail(KVRT_ERR_INVALID_ARGUMENT, "name is NULL");
  const size_t n = std::strlen(name);
  if (n == 0 || n > kMaxNameBytes)
    fail(KVRT_ERR_INVALID_ARGUMENT, "name '%s' has %zu bytes; a name has 1..%zu", name, n, kMaxNameBytes);
  if (name[0] == '.')
    fail(KVRT_ERR_INVALID_ARGUMENT, "name '%s' starts with '.' (reserved for temporary files)", name);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(name[i]);
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    if (!ok)
      fail(KVRT_ERR_INVALID_ARGUMENT, "name '%s': byte %zu (0x%02x) is not one of A-Z a-z 0-9 . _ -", name, i, c);
  }
}

std::string parse_record_header(const uint8_t* p, size_t max_raw_bytes, BlockKey* key, uint32_t* width,
                                uint64_t* raw_bytes, uint64_t* frame_bytes) {
  if (get_u32(p) != kRecordMagic) return strprintf("no record magic (0x%08x)", get_u32(p));
  if (get_u64(p + 40) != hash64(p, 40, kRecordSeed)) return "record header checksum mismatch";
  const uint32_t flags = get_u32(p + 4);
  *width = flags & kKvShuffleMask;
  key->lo = get_u64(p + 8);
  key->hi = get_u64(p + 16);
  *raw_bytes = get_u64(p + 24);
  *frame_bytes = get_u64(p + 32);
  if ((flags & ~kKvShuffleMask) || !(*width == 0 || *width == 2 || *width == 4))
    return strprintf("record flags 0x%08x are not valid", flags);
  if (*raw_bytes == 0 || *raw_bytes > max_raw_bytes || (*width && *raw_bytes % *width))
    return strprintf("record of %" PRIu64 " bytes (at most %zu, a multiple of the plane width %u)", *raw_bytes,
                     max_raw_bytes, *width);
  if (*frame_bytes == 0 || *frame_bytes > ZSTD_compressBound(static_cast<size_t>(*raw_bytes)))
    return strprintf("record frame of %" PRIu64 " bytes for %" PRIu64 " raw bytes", *frame_bytes, *raw_bytes);
  return {};
}

// ---- manifests ------------------------------------------------------------

Manifest read_manifest(Source& in, const LoadedModel* model, const char* name) {
  const bool keep_tokens = model != nullptr;
  Manifest m;
  uint64_t off = 0;
  m.H = read_header_with_magic(in, name, kManifestMagic, kStoreFormatVersion, &off);
  check_header_fields(m.H, model, name);
  const Header& H = m.H;

  uint8_t rec[kStoreRecordBytes];
  const uint64_t rec_at = off;
  read_exact(in, rec, sizeof rec, name, "the store record", &off);
  if (get_u64(rec + 56) != hash64(rec, 56, kManifestSeed))
    fail(KVRT_ERR_CORRUPT, "%s: store record checksum at offset %" PRIu64 " does not match", name, rec_at + 56);
  std::memcpy(m.store_id, rec, 16);
  m.pack_end = get_u64(rec + 16);
  const uint32_t n_blocks = get_u32(rec + 24);
  m.tail_width = get_u32(rec + 28);
  const uint64_t tokens_frame = get_u64(rec + 32), tail_frame = get_u64(rec + 40);
  m.generation = get_u64(rec + 48);
  const uint32_t want_blocks = H.n_tokens / H.bt;  // full blocks only, whatever the formats
  if (n_blocks != want_blocks)
    fail(KVRT_ERR_CORRUPT, "%s: the block table has %u entries; %u tokens in blocks of %u make %u full blocks",
         name, n_blocks, H.n_tokens, H.bt, want_blocks);
  const size_t tail_raw = H.staged ? H.stage_lay.block_bytes : (H.n_tokens % H.bt ? H.lay.block_bytes : 0);
  if (!(m.tail_width == 0 || m.tail_width == 2 || m.tail_width == 4) ||
      (m.tail_width && tail_raw % m.tail_width) || (H.staged && m.tail_width == 4))
    fail(KVRT_ERR_CORRUPT, "%s: tail plane width %u is not valid for a %zu-byte tail", name, m.tail_width, tail_raw);
  const size_t tok_raw = size_t(H.n_tokens) * 4;
  if (tokens_frame == 0 || tokens_frame > ZSTD_compressBound(tok_raw))
    fail(KVRT_ERR_CORRUPT, "%s: tokens frame of %" PRIu64 " bytes for %u tokens", name, tokens_frame, H.n_tokens);
  if ((tail_raw == 0) != (tail_frame == 0) || tail_frame > ZSTD_compressBound(tail_raw))
    fail(KVRT_ERR_CORRUPT, "%s: tail frame of %" PRIu64 " bytes for a %zu-byte tail", name, tail_frame, tail_raw);
  if (m.pack_end < kPackHeaderBytes)
    fail(KVRT_ERR_CORRUPT, "%s: pack end %" PRIu64 " is inside the pack header", name, m.pack_end);

  // Everything below is bounded by the checked header (n_tokens <= n_ctx).
  Hasher body(kManifestSeed);
  body.update(rec, sizeof rec);
  // Grown as the data arrives: a short file cannot make the reader
  // allocate what its header claims (without a model, n_tokens is only
  // bounded by 2^32).
  m.table.reserve(std::min<uint32_t>(n_blocks, 4096));
  const uint64_t max_record = kRecordHeaderBytes + ZSTD_compressBound(H.lay.block_bytes) + kRecordTrailerBytes;
  for (uint32_t b = 0; b < n_blocks; ++b) {
    uint8_t e[kTableEntryBytes];
    const uint64_t at = off;
    read_exact(in, e, sizeof e, name, "a block table entry", &off);
    body.update(e, sizeof e);
    TableEntry& t = m.table.emplace_back();
    t.key.lo = get_u64(e);
    t.key.hi = get_u64(e + 8);
    t.loc.offset = get_u64(e + 16);
    t.loc.record_bytes = get_u64(e + 24);
    if (t.loc.offset < kPackHeaderBytes || t.loc.record_bytes <= kRecordHeaderBytes + kRecordTrailerBytes ||
        t.loc.record_bytes > max_record || t.loc.offset > m.pack_end || t.loc.record_bytes > m.pack_end - t.loc.offset)
      fail(KVRT_ERR_CORRUPT, "%s: block %u's table entry at offset %" PRIu64 " places a %" PRIu64
           "-byte record at pack offset %" PRIu64 ", outside the pack's first %" PRIu64 " bytes", name, b, at,
           t.loc.record_bytes, t.loc.offset, m.pack_end);
  }
  std::vector<uint8_t> tok_frame, tail_bytes;
  read_growing(in, tok_frame, tokens_frame, name, "the tokens frame", &off);
  body.update(tok_frame.data(), tok_frame.size());
  read_growing(in, tail_bytes, tail_frame, name, "the tail frame", &off);
  if (!tail_bytes.empty()) body.update(tail_bytes.data(), tail_bytes.size());
  uint8_t trailer[8];
  const uint64_t trailer_at = off;
  read_exact(in, trailer, 8, name, "the manifest checksum", &off);
  if (get_u64(trailer) != body.finish64())
    fail(KVRT_ERR_CORRUPT, "%s: manifest checksum at offset %" PRIu64 " does not match (%016" PRIx64
         " stored, %016" PRIx64 " computed)", name, trailer_at, get_u64(trailer), body.finish64());
  uint8_t extra;
  if (in.read(&extra, 1) != 0) fail(KVRT_ERR_CORRUPT, "%s: data follows the manifest checksum", name);
  m.total_bytes = off;

  std::unique_ptr<ZSTD_DCtx, DctxFree> dctx(ZSTD_createDCtx());
  if (!dctx) fail(KVRT_ERR_OUT_OF_MEMORY, "cannot create a zstd decompression context");
  std::vector<uint8_t> planes;
  // The ids are checked as they are decoded; they are kept only for a load
  // (with a model, which bounds n_tokens by its context length).
  if (keep_tokens) m.tokens.resize(H.n_tokens);
  uint32_t at = 0;
  std::string why = decode_stream(dctx.get(), tok_frame.data(), tok_frame.size(), tok_raw, [&](const uint8_t* p, size_t n) {
    for (size_t k = 0; k + 4 <= n; k += 4, ++at) {
      const int32_t t = static_cast<int32_t>(get_u32(p + k));
      if (t < 0 || static_cast<uint32_t>(t) >= H.n_vocab)
        fail(KVRT_ERR_CORRUPT, "%s: token %u = %d is outside the vocabulary [0, %u)", name, at, t, H.n_vocab);
      if (keep_tokens) m.tokens[at] = t;
    }
  });
  if (!why.empty()) fail(KVRT_ERR_CORRUPT, "%s: tokens frame: %s", name, why.c_str());
  if (tail_raw) {
    m.tail.resize(tail_raw);
    why = decompress_frame(dctx.get(), tail_bytes.data(), tail_bytes.size(), m.tail.data(), tail_raw,
                           m.tail_width, planes);
    if (!why.empty()) fail(KVRT_ERR_CORRUPT, "%s: tail frame: %s", name, why.c_str());
  }
  return m;
}

// ---- the store ------------------------------------------------------------

std::unique_ptr<Store> Store::open(const std::string& dir) {
  if (dir.empty()) fail(KVRT_ERR_INVALID_ARGUMENT, "store folder is empty");
  std::unique_ptr<Store> st(new Store());
  st->dir_ = dir;
  if (::mkdir(dir.c_str(), 0777) != 0 && errno != EEXIST)
    fail(KVRT_ERR_IO, "cannot create store folder '%s': %s", dir.c_str(), std::strerror(errno));
  struct stat sb;
  if (::stat(dir.c_str(), &sb) != 0 || !S_ISDIR(sb.st_mode))
    fail(KVRT_ERR_IO, "store '%s' is not a folder", dir.c_str());
  const std::string lock = dir + "/" + kLockFile;
  st->lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (st->lock_fd_ < 0) fail(KVRT_ERR_IO, "cannot open store lock '%s': %s", lock.c_str(), std::strerror(errno));
  if (::flock(st->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      fail(KVRT_ERR_IO, "store '%s' is locked: another handle (in this or another process) has it open",
           dir.c_str());
    fail(KVRT_ERR_IO, "cannot lock store '%s': %s", dir.c_str(), std::strerror(errno));
  }

  // With the lock held no save is under way: temporary files are leftovers
  // of saves that were killed.
  if (DIR* d = ::opendir(dir.c_str())) {
    while (struct dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n.size() > 1 && n[0] == '.' && n.find(".tmp.") != std::string::npos &&
          (n.find(kManifestSuffix) != std::string::npos || n.find(kPackFile) != std::string::npos))
        ::unlink((dir + "/" + n).c_str());
    }
    ::closedir(d);
  }

  st->open_pack(true);
  return st;
}

// Writes a pack that holds only its header. Through a temporary file, so a
// pack appears whole or not at all.
static void write_pack_header(const std::string& path, const uint8_t* store_id, uint64_t generation) {
  uint8_t h[kPackHeaderBytes] = {};
  std::memcpy(h, kPackMagic, 8);
  put_u32(h + 8, kStoreFormatVersion);
  std::memcpy(h + 16, store_id, 16);
  put_u64(h + 32, generation);
  put_u64(h + 40, hash64(h, 40, 0));
  AtomicFileSink f(path);
  f.write(h, sizeof h);
  f.commit();
}

// Opens the pack (creating it when missing and `create`), checks its
// header and indexes its records.
void Store::open_pack(bool create) {
  const std::string pack = dir_ + "/" + kPackFile;
  if (create && ::access(pack.c_str(), F_OK) != 0) {
    uint8_t id[16];
    make_store_id(id);
    write_pack_header(pack, id, 0);
  }
  int fd = ::open(pack.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) fail(KVRT_ERR_IO, "cannot open block pack '%s': %s", pack.c_str(), std::strerror(errno));
  if (pack_fd_ >= 0) ::close(pack_fd_);
  pack_fd_ = fd;
  index_.clear();
  damaged_at_ = 0;
  damage_.clear();
  struct stat sb;
  if (::fstat(pack_fd_, &sb) != 0) fail(KVRT_ERR_IO, "cannot stat '%s': %s", pack.c_str(), std::strerror(errno));
  uint8_t h[kPackHeaderBytes];
  if (pread_full(pack_fd_, h, sizeof h, 0) != sizeof h)
    fail(KVRT_ERR_CORRUPT, "%s: truncated: the pack header needs %zu bytes, the file has %lld", pack.c_str(),
         kPackHeaderBytes, static_cast<long long>(sb.st_size));
  if (std::memcmp(h, kPackMagic, 8) != 0)
    fail(KVRT_ERR_CORRUPT, "%s: not a kvrt block pack (the first 8 bytes are not \"KVRTPACK\")", pack.c_str());
  const uint32_t version = get_u32(h + 8);
  if (version == 0) fail(KVRT_ERR_CORRUPT, "%s: pack format version 0 does not exist", pack.c_str());
  if (version > kStoreFormatVersion)
    fail(KVRT_ERR_VERSION, "%s: pack format version %u; this library reads versions up to %u", pack.c_str(),
         version, kStoreFormatVersion);
  if (get_u64(h + 40) != hash64(h, 40, 0))
    fail(KVRT_ERR_CORRUPT, "%s: pack header checksum mismatch", pack.c_str());
  if (get_u32(h + 12) != 0)
    fail(KVRT_ERR_VERSION, "%s: pack needs features 0x%08x that this library does not know", pack.c_str(),
         get_u32(h + 12));
  std::memcpy(store_id_, h + 16, 16);
  generation_ = get_u64(h + 32);
  scan_pack(static_cast<uint64_t>(sb.st_size));
}

Store::~Store() {
  if (pack_fd_ >= 0) ::close(pack_fd_);
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the lock
}

// Indexes every whole record from the pack header on. A bad or cut record
// at the end is what a save killed mid-append leaves: when no manifest
// claims the pack reaches past it, it is cut off. A bad record before a
// manifest's pack end is damage: the pack is left as it is (loads verify
// every record they read) and new records go after the end of the file.
void Store::scan_pack(uint64_t file_size) {
  const std::string pack = dir_ + "/" + kPackFile;
  uint64_t off = kPackHeaderBytes;
  uint8_t h[kRecordHeaderBytes];
  std::string why;
  while (off < file_size) {
    if (file_size - off < kRecordHeaderBytes) {
      why = "a record header cut short";
      break;
    }
    if (pread_full(pack_fd_, h, sizeof h, off) != sizeof h) {
      why = "a record header cut short";
      break;
    }
    BlockKey key;
    uint32_t width;
    uint64_t raw, frame;
    why = parse_record_header(h, size_t(1) << 30, &key, &width, &raw, &frame);
    if (!why.empty()) break;
    const uint64_t rec = kRecordHeaderBytes + frame + kRecordTrailerBytes;
    if (rec > file_size - off) {
      why = "a record cut short";
      break;
    }
    index_.emplace(key, BlockLoc{off, rec});  // the first copy of a block wins
    off += rec;
  }
  pack_size_ = file_size;
  if (off == file_size) return;
  uint64_t claimed = 0;  // the furthest pack end a manifest of this store records
  for (const std::string& n : list_names()) {
    try {
      FileSource f(manifest_path(n));
      uint64_t used = 0;
      (void)read_header_with_magic(f, n.c_str(), kManifestMagic, kStoreFormatVersion, &used);
      uint8_t rec[kStoreRecordBytes];
      read_exact(f, rec, sizeof rec, n.c_str(), "the store record", &used);
      if (get_u64(rec + 56) == hash64(rec, 56, kManifestSeed) && std::memcmp(rec, store_id_, 16) == 0 &&
          get_u64(rec + 48) == generation_)
        claimed = std::max(claimed, get_u64(rec + 16));
    } catch (const Error&) {
      // A manifest that cannot be read cannot be loaded either.
    }
  }
  if (off >= claimed) {
    if (::ftruncate(pack_fd_, static_cast<off_t>(off)) != 0 || ::fsync(pack_fd_) != 0)
      fail(KVRT_ERR_IO, "%s: cannot cut off the unfinished record at offset %" PRIu64 ": %s", pack.c_str(), off,
           std::strerror(errno));
    pack_size_ = off;
  } else {
    damaged_at_ = off;
    damage_ = why;
  }
}

std::string Store::manifest_path(const std::string& name) const { return dir_ + "/" + name + kManifestSuffix; }

std::vector<std::string> Store::names() {
  std::lock_guard<std::mutex> lk(mu_);
  return list_names();
}

std::vector<std::string> Store::list_names() {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir_.c_str());
  if (!d) fail(KVRT_ERR_IO, "cannot list store '%s': %s", dir_.c_str(), std::strerror(errno));
  while (struct dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.empty() || n[0] == '.' || !ends_with(n, kManifestSuffix)) continue;
    n.resize(n.size() - std::strlen(kManifestSuffix));
    try {
      check_store_name(n.c_str());
    } catch (const Error&) {
      continue;  // not a name this library writes
    }
    out.push_back(std::move(n));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

void Store::save(Session& s, const std::string& name, const WriteOptions& opt, StoreSaveStats* stats) {
  std::lock_guard<std::mutex> lk(mu_);
  check_usable();
  check_store_name(name.c_str());
  if (opt.level < ZSTD_minCLevel() || opt.level > ZSTD_maxCLevel())
    fail(KVRT_ERR_INVALID_ARGUMENT, "compression_level = %d is outside zstd's range %d..%d", opt.level,
         ZSTD_minCLevel(), ZSTD_maxCLevel());
  const KvCache& kv = s.kv();
  const kvrt_k::KvLayout lay = kv.stored_layout();
  const uint32_t n_tokens = kv.n_tokens();
  const uint32_t bt = lay.block_tokens;
  const uint32_t n_full = n_tokens / bt;
  const size_t bb = lay.block_bytes;
  const uint32_t width = plane_width(lay, opt.shuffle);
  if (s.tokens().size() != n_tokens)
    fail(KVRT_ERR_INTERNAL, "session holds %zu token ids but %u cached positions", s.tokens().size(), n_tokens);

  std::unique_ptr<ZSTD_CCtx, CctxFree> cctx(ZSTD_createCCtx());
  if (!cctx) fail(KVRT_ERR_OUT_OF_MEMORY, "cannot create a zstd compression context");
  StoreSaveStats st;
  st.blocks_total = n_full;

  // 1. Full blocks never change: key each by its bytes and append those the
  // store lacks, as whole records, after the pack's end.
  std::vector<TableEntry> table(n_full);
  std::unordered_map<BlockKey, BlockLoc, BlockKeyHash> added;
  std::vector<uint8_t> buf, planes, whole(bb);
  const uint64_t start = pack_size_;
  uint64_t end = start;
  auto flush = [&] {
    if (buf.empty()) return;
    if (!pwrite_full(pack_fd_, buf.data(), buf.size(), end - buf.size()))
      fail(KVRT_ERR_IO, "store '%s': appending to the block pack at offset %" PRIu64 ": %s", dir_.c_str(),
           end - buf.size(), std::strerror(errno));
    buf.clear();
  };
  try {
    for (uint32_t b = 0; b < n_full; ++b) {
      const BlockRuns runs = kv.block_runs(b);
      const BlockKey key = block_key(runs);
      table[b].key = key;
      if (auto it = index_.find(key); it != index_.end()) {
        table[b].loc = it->second;
        ++st.blocks_reused;
        continue;
      }
      if (auto a = added.find(key); a != added.end()) {  // repeated within this session
        table[b].loc = a->second;
        ++st.blocks_reused;
        continue;
      }
      runs.gather(whole.data());
      const size_t at = buf.size();
      buf.resize(at + kRecordHeaderBytes);
      compress_frame(cctx.get(), opt.level, whole.data(), bb, width, planes, buf);
      const uint64_t frame = buf.size() - at - kRecordHeaderBytes;
      uint8_t* h = buf.data() + at;
      put_u32(h, kRecordMagic);
      put_u32(h + 4, width);
      put_u64(h + 8, key.lo);
      put_u64(h + 16, key.hi);
      put_u64(h + 24, bb);
      put_u64(h + 32, frame);
      put_u64(h + 40, hash64(h, 40, kRecordSeed));
      uint8_t tr[8];
      put_u64(tr, hash64(h + kRecordHeaderBytes, frame, kRecordSeed ^ key.lo));
      buf.insert(buf.end(), tr, tr + 8);
      const uint64_t rec = kRecordHeaderBytes + frame + kRecordTrailerBytes;
      table[b].loc = BlockLoc{end, rec};
      added.emplace(key, table[b].loc);
      end += rec;
      ++st.blocks_written;
      if (buf.size() >= (size_t(1) << 20)) flush();
    }
    flush();
    // 2. The records are durable before any manifest names them.
    if (end != start && ::fsync(pack_fd_) != 0)
      fail(KVRT_ERR_IO, "store '%s': syncing the block pack: %s", dir_.c_str(), std::strerror(errno));
  } catch (...) {
    // Nothing names the new bytes: cut them off so the pack is as it was.
    if (end != start && ::ftruncate(pack_fd_, static_cast<off_t>(start)) != 0) {
      // The next open cuts them off instead (no manifest claims them).
    }
    throw;
  }
  pack_size_ = end;
  index_.insert(added.begin(), added.end());
  st.pack_bytes = end - start;

  // 3. The manifest: header, store record, block table, tokens, tail,
  // checksum; written to a temporary file and renamed over the old one.
  const bool staged = s.kv_quantized();
  std::vector<uint8_t> tail;
  uint32_t tail_width = 0;
  if (staged) {
    kvrt_k::KvLayout sl;
    kvrt_k::kv_layout_init(&sl, lay.n_layer, lay.n_head_kv, lay.head_dim, bt, kvrt_k::KV_F16, kvrt_k::KV_F16);
    tail = s.kv_stage();
    if (tail.size() != sl.block_bytes)
      fail(KVRT_ERR_INTERNAL, "session stage holds %zu bytes, its layout %zu", tail.size(), sl.block_bytes);
    const uint32_t used = n_tokens % bt;
    const size_t row = size_t(lay.head_dim) * 2;
    for (uint32_t l = 0; l < lay.n_layer; ++l)
      for (uint32_t hh = 0; hh < lay.n_head_kv; ++hh) {
        std::memset(tail.data() + kvrt_k::kv_k_offset(sl, l, hh) + used * row, 0, size_t(bt - used) * row);
        std::memset(tail.data() + kvrt_k::kv_v_offset(sl, l, hh) + used * row, 0, size_t(bt - used) * row);
      }
    tail_width = opt.shuffle ? 2 : 0;
  } else if (n_tokens % bt) {
    // The partial block changes with every token: it lives in the manifest,
    // positions past the last token zeroed as in a snapshot.
    tail.resize(bb);
    kv.block_runs(n_full).gather(tail.data());
    const uint32_t used = n_tokens % bt;
    const size_t ek = kvrt_k::kv_elem_bytes(lay.k_format), ev = kvrt_k::kv_elem_bytes(lay.v_format);
    for (uint32_t l = 0; l < lay.n_layer; ++l)
      for (uint32_t hh = 0; hh < lay.n_head_kv; ++hh) {
        std::memset(tail.data() + kvrt_k::kv_k_offset(lay, l, hh) + size_t(used) * lay.head_dim * ek, 0,
                    size_t(bt - used) * lay.head_dim * ek);
        std::memset(tail.data() + kvrt_k::kv_v_offset(lay, l, hh) + size_t(used) * lay.head_dim * ev, 0,
                    size_t(bt - used) * lay.head_dim * ev);
      }
    tail_width = width;
  }
  std::vector<uint8_t> tok_frame, tail_frame;
  compress_frame(cctx.get(), opt.level, reinterpret_cast<const uint8_t*>(s.tokens().data()), size_t(n_tokens) * 4,
                 0, planes, tok_frame);
  if (!tail.empty()) compress_frame(cctx.get(), opt.level, tail.data(), tail.size(), tail_width, planes, tail_frame);

  uint8_t head[kPreambleBytes + kHeaderBytesV1];
  encode_header(s, kManifestMagic, kStoreFormatVersion, head);
  uint8_t rec[kStoreRecordBytes] = {};
  std::memcpy(rec, store_id_, 16);
  put_u64(rec + 16, pack_size_);
  put_u32(rec + 24, n_full);
  put_u32(rec + 28, tail_width);
  put_u64(rec + 32, tok_frame.size());
  put_u64(rec + 40, tail_frame.size());
  put_u64(rec + 48, generation_);
  put_u64(rec + 56, hash64(rec, 56, kManifestSeed));
  std::vector<uint8_t> body(rec, rec + sizeof rec);
  body.reserve(sizeof rec + table.size() * kTableEntryBytes + tok_frame.size() + tail_frame.size() + 8);
  for (const TableEntry& t : table) {
    uint8_t e[kTableEntryBytes];
    put_u64(e, t.key.lo);
    put_u64(e + 8, t.key.hi);
    put_u64(e + 16, t.loc.offset);
    put_u64(e + 24, t.loc.record_bytes);
    body.insert(body.end(), e, e + sizeof e);
  }
  body.insert(body.end(), tok_frame.begin(), tok_frame.end());
  body.insert(body.end(), tail_frame.begin(), tail_frame.end());
  uint8_t tr[8];
  put_u64(tr, hash64(body.data(), body.size(), kManifestSeed));
  body.insert(body.end(), tr, tr + 8);
  AtomicFileSink f(manifest_path(name));
  f.write(head, sizeof head);
  f.write(body.data(), body.size());
  f.commit();
  st.manifest_bytes = sizeof head + body.size();
  if (stats) *stats = st;
}

Manifest Store::read_named(const std::string& name, const LoadedModel* model) {
  check_store_name(name.c_str());
  const std::string path = manifest_path(name);
  if (::access(path.c_str(), F_OK) != 0 && errno == ENOENT)
    fail(KVRT_ERR_NOT_FOUND, "store '%s' holds no session named '%s'", dir_.c_str(), name.c_str());
  FileSource f(path);
  Manifest m = read_manifest(f, model, path.c_str());
  if (std::memcmp(m.store_id, store_id_, 16) != 0)
    fail(KVRT_ERR_CORRUPT, "%s: the manifest belongs to another store's pack (store id %016" PRIx64 "%016" PRIx64
         ", this pack's %016" PRIx64 "%016" PRIx64 ")", path.c_str(), get_u64(m.store_id + 8), get_u64(m.store_id),
         get_u64(store_id_ + 8), get_u64(store_id_));
  return m;
}

std::string Store::read_record(const BlockLoc& loc, const BlockKey& want, size_t bb, std::vector<uint8_t>& rec,
                               uint32_t* width, uint64_t* frame) {
  // Bounded by the pack's real size before anything is allocated.
  if (loc.offset >= pack_size_ || loc.record_bytes > pack_size_ - loc.offset)
    return strprintf("the pack (%" PRIu64 " bytes) ends before the %" PRIu64 "-byte record does (truncated pack)",
                     pack_size_, loc.record_bytes);
  rec.resize(static_cast<size_t>(loc.record_bytes));
  const size_t got = pread_full(pack_fd_, rec.data(), rec.size(), loc.offset);
  if (got != rec.size()) return strprintf("the pack ends %zu bytes into the %zu-byte record (truncated pack)", got, rec.size());
  BlockKey key;
  uint64_t raw;
  std::string why = parse_record_header(rec.data(), bb ? bb : size_t(1) << 30, &key, width, &raw, frame);
  if (!why.empty()) return why;
  if (!(key == want)) return "the record holds block " + key_hex(key) + ", not the one named";
  if (bb && raw != bb) return strprintf("the record holds %" PRIu64 " bytes; the session's blocks have %zu", raw, bb);
  if (kRecordHeaderBytes + *frame + kRecordTrailerBytes != rec.size())
    return strprintf("the record has a %" PRIu64 "-byte frame; the manifest says %zu record bytes", *frame, rec.size());
  const uint8_t* fr = rec.data() + kRecordHeaderBytes;
  if (get_u64(fr + *frame) != hash64(fr, *frame, kRecordSeed ^ key.lo)) return "checksum of the stored frame does not match";
  return {};
}

void Store::read_block(const Manifest& m, const char* name, uint32_t b, uint8_t* dst, std::vector<uint8_t>& rec,
                       std::vector<uint8_t>& planes, void* dctx) {
  const TableEntry& t = m.table[b];
  const size_t bb = m.H.lay.block_bytes;
  BlockLoc loc = t.loc;
  auto bad = [&](const std::string& why) {
    fail(KVRT_ERR_CORRUPT, "store '%s': session '%s': block %u (key %s) at pack offset %" PRIu64 ": %s%s",
         dir_.c_str(), name, b, key_hex(t.key).c_str(), loc.offset, why.c_str(),
         damaged_at_ ? strprintf(" (the pack is damaged from offset %" PRIu64 ": %s)", damaged_at_, damage_.c_str()).c_str()
                     : "");
  };
  // The table holds where the record was when the manifest was written; in
  // a compacted pack (another generation), or when that copy is damaged,
  // the index says where a copy is.
  uint32_t width = 0;
  uint64_t frame = 0;
  const bool same_pack = m.generation == generation_;
  std::string why = same_pack ? read_record(loc, t.key, bb, rec, &width, &frame)
                              : "no record of this block in the pack (compacted since the manifest was written)";
  if (!why.empty()) {
    auto it = index_.find(t.key);
    if (it != index_.end() && (!same_pack || it->second.offset != loc.offset)) {
      loc = it->second;
      why = read_record(loc, t.key, bb, rec, &width, &frame);
    }
  }
  if (!why.empty()) bad(why);
  why = decompress_frame(static_cast<ZSTD_DCtx*>(dctx), rec.data() + kRecordHeaderBytes, frame, dst, bb, width, planes);
  if (!why.empty()) bad(why);
  if (!(block_key(BlockRuns::whole(dst, bb)) == t.key)) bad("the decoded bytes do not hash to the block's key");
}

std::unique_ptr<Session> Store::load(std::shared_ptr<const LoadedModel> model, const std::string& name) {
  std::lock_guard<std::mutex> lk(mu_);
  check_usable();
  Manifest m = read_named(name, model.get());
  const Header& H = m.H;
  SessionConfig cfg;
  cfg.k_format = H.kf;
  cfg.v_format = H.vf;
  cfg.n_ctx = H.n_ctx;
  cfg.max_batch = H.max_batch;
  // Private until every block is verified; on error its blocks go back.
  auto s = std::make_unique<Session>(model, cfg);
  s->begin_import(H.n_tokens);
  std::unique_ptr<ZSTD_DCtx, DctxFree> dctx(ZSTD_createDCtx());
  if (!dctx) fail(KVRT_ERR_OUT_OF_MEMORY, "cannot create a zstd decompression context");
  std::vector<uint8_t> rec, planes;
  const uint32_t n_full = static_cast<uint32_t>(m.table.size());
  const size_t bb = H.lay.block_bytes;
  std::vector<uint8_t> whole(bb);
  for (uint32_t b = 0; b < n_full; ++b) {
    read_block(m, name.c_str(), b, whole.data(), rec, planes, dctx.get());
    s->import_block(b).scatter(whole.data());
  }
  if (H.staged) {
    if (H.n_tokens % H.bt) s->import_block(n_full).clear();  // written only when the tail fills
    if (s->kv_stage().size() != m.tail.size())
      fail(KVRT_ERR_INTERNAL, "session stage holds %zu bytes, the manifest's %zu", s->kv_stage().size(), m.tail.size());
    std::memcpy(s->import_stage(), m.tail.data(), m.tail.size());
  } else if (!m.tail.empty()) {
    s->import_block(n_full).scatter(m.tail.data());
  }
  s->finish_import(std::move(m.tokens));
  s->sampler().configure(H.sc);
  s->sampler().set_rng_state(H.rng);
  return s;
}

void Store::remove(const std::string& name) {
  std::lock_guard<std::mutex> lk(mu_);
  check_store_name(name.c_str());
  const std::string path = manifest_path(name);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) fail(KVRT_ERR_NOT_FOUND, "store '%s' holds no session named '%s'", dir_.c_str(), name.c_str());
    fail(KVRT_ERR_IO, "cannot remove '%s': %s", path.c_str(), std::strerror(errno));
  }
  sync_dir(dir_);
}

void Store::check_usable() const {
  if (broken_)
    fail(KVRT_ERR_IO, "store '%s': its pack was replaced by a compaction but could not be reopened; reopen the store",
         dir_.c_str());
}

uint64_t Store::compact() {
  std::lock_guard<std::mutex> lk(mu_);
  check_usable();
  // Every record some manifest names, where the index (or, in this
  // generation, the manifest) says it is. A manifest that cannot be read
  // stops the compaction: its blocks cannot be told apart from garbage.
  std::unordered_map<BlockKey, BlockLoc, BlockKeyHash> needed;
  for (const std::string& n : list_names()) {
    const std::string path = manifest_path(n);
    FileSource f(path);
    Manifest m = read_manifest(f, nullptr, path.c_str());
    if (std::memcmp(m.store_id, store_id_, 16) != 0)
      fail(KVRT_ERR_CORRUPT, "%s: the manifest belongs to another store's pack; nothing was compacted", path.c_str());
    for (const TableEntry& t : m.table) {
      auto it = index_.find(t.key);
      if (it != index_.end())
        needed.emplace(t.key, it->second);
      else if (m.generation == generation_)
        needed.emplace(t.key, t.loc);
      else
        fail(KVRT_ERR_CORRUPT, "%s: block %s is not in the pack; nothing was compacted", path.c_str(),
             key_hex(t.key).c_str());
    }
  }
  std::vector<std::pair<BlockKey, BlockLoc>> order(needed.begin(), needed.end());
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.second.offset < b.second.offset; });

  // The new pack, with the next generation, replaces the old one whole or
  // not at all; manifests stay as they are (their blocks are found by key).
  const std::string pack = dir_ + "/" + kPackFile;
  {
    uint8_t h[kPackHeaderBytes] = {};
    std::memcpy(h, kPackMagic, 8);
    put_u32(h + 8, kStoreFormatVersion);
    std::memcpy(h + 16, store_id_, 16);
    put_u64(h + 32, generation_ + 1);
    put_u64(h + 40, hash64(h, 40, 0));
    AtomicFileSink out(pack);
    out.write(h, sizeof h);
    std::vector<uint8_t> rec;
    for (const auto& [key, loc] : order) {
      uint32_t width;
      uint64_t frame;
      const std::string why = read_record(loc, key, 0, rec, &width, &frame);
      if (!why.empty())
        fail(KVRT_ERR_CORRUPT, "store '%s': block %s at pack offset %" PRIu64 ": %s; nothing was compacted",
             dir_.c_str(), key_hex(key).c_str(), loc.offset, why.c_str());
      out.write(rec.data(), rec.size());
    }
    out.commit();
  }
  const uint64_t before = pack_size_;
  try {
    open_pack(false);
  } catch (...) {
    // The old pack is gone: nothing may append to it or trust its index.
    if (pack_fd_ >= 0) ::close(pack_fd_);
    pack_fd_ = -1;
    index_.clear();
    broken_ = true;
    throw;
  }
  return before > pack_size_ ? before - pack_size_ : 0;
}

void Store::inspect(const std::string& name, const LoadedModel* model, StoreEntryInfo* info) {
  std::lock_guard<std::mutex> lk(mu_);
  check_usable();
  *info = StoreEntryInfo{};
  Manifest m = read_named(name, model);
  info->n_tokens = m.H.n_tokens;
  info->n_blocks = static_cast<uint32_t>(m.table.size());
  info->k_format = m.H.kf;
  info->v_format = m.H.vf;
  info->n_ctx = m.H.n_ctx;
  info->block_tokens = m.H.bt;
  info->sampler = m.H.sc;
  info->manifest_bytes = m.total_bytes;
  std::unique_ptr<ZSTD_DCtx, DctxFree> dctx(ZSTD_createDCtx());
  if (!dctx) fail(KVRT_ERR_OUT_OF_MEMORY, "cannot create a zstd decompression context");
  std::vector<uint8_t> rec, planes, block(m.H.lay.block_bytes);
  for (uint32_t b = 0; b < info->n_blocks; ++b) {
    read_block(m, name.c_str(), b, block.data(), rec, planes, dctx.get());
    info->block_record_bytes += m.table[b].loc.record_bytes;
    info->block_raw_bytes += block.size();
  }
}

}  // namespace snap
}  // namespace kvrt
