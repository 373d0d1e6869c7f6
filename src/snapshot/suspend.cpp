// Suspended sessions: the snapshot written to host memory in pieces (no
// copy as it grows) or to a private spill file, and read back through the
// snapshot reader's full validation.
#include "snapshot/suspend.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include <fcntl.h>
#include <unistd.h>

#include "snapshot/snapshot-io.hpp"
#include "util/error.hpp"

namespace kvrt {
namespace snap {

namespace {

std::atomic<uint64_t> g_spill_counter{0};
constexpr uint64_t kSpillHashSeed = 0x5350494c4cull;  // "SPILL"

// Appends into pieces of kMaxChunkBytes, so memory grows without copying.
class ChunkSink final : public Sink {
 public:
  explicit ChunkSink(std::vector<std::vector<uint8_t>>& chunks) : chunks_(chunks) {}
  void write(const void* data, size_t n) override {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    while (n) {
      if (chunks_.empty() || chunks_.back().size() == kMaxChunkBytes) {
        chunks_.emplace_back();
        chunks_.back().reserve(kMaxChunkBytes);
      }
      std::vector<uint8_t>& c = chunks_.back();
      const size_t k = std::min(n, kMaxChunkBytes - c.size());
      c.insert(c.end(), p, p + k);
      p += k;
      n -= k;
    }
  }

 private:
  std::vector<std::vector<uint8_t>>& chunks_;
};

// Writes a new file and hashes what goes into it.
class SpillSink final : public Sink {
 public:
  SpillSink(std::FILE* f, const std::string& path) : f_(f), path_(path), hash_(kSpillHashSeed) {}
  void write(const void* data, size_t n) override {
    if (std::fwrite(data, 1, n, f_) != n)
      fail(KVRT_ERR_IO, "writing spill file '%s': %s", path_.c_str(), std::strerror(errno));
    hash_.update(data, n);
    size_ += n;
  }
  uint64_t size() const { return size_; }
  uint64_t hash() const { return hash_.finish64(); }

 private:
  std::FILE* f_;
  const std::string& path_;
  Hasher hash_;
  uint64_t size_ = 0;
};

// Reads a spill file, hashing and counting its bytes, so the caller can
// tell whether the file is still the one written.
class SpillSource final : public Source {
 public:
  explicit SpillSource(const std::string& path) : path_(path), file_(open(path)), hash_(kSpillHashSeed) {}
  size_t read(void* data, size_t n) override {
    const size_t k = file_.read(data, n);
    hash_.update(data, k);
    size_ += k;
    return k;
  }
  // Reads what is left and fails unless the file held exactly the bytes
  // written at the suspend.
  void check_unchanged(uint64_t size, uint64_t hash) {
    uint8_t rest[4096];
    while (read(rest, sizeof rest) != 0) {
    }
    if (size_ != size || hash_.finish64() != hash)
      fail(KVRT_ERR_CORRUPT,
           "spill file '%s' of a suspended session changed since the suspend (%" PRIu64
           " bytes, %" PRIu64 " written)",
           path_.c_str(), size_, size);
  }

 private:
  static FileSource open(const std::string& path) {
    try {
      return FileSource(path);
    } catch (const Error& e) {
      fail(e.status(), "spill file of a suspended session: %s", e.what());
    }
  }
  const std::string& path_;
  FileSource file_;
  Hasher hash_;
  uint64_t size_ = 0;
};

}  // namespace

// The held pieces, read in order.
class SuspendedSession::HeldSource final : public Source {
 public:
  explicit HeldSource(const std::vector<std::vector<uint8_t>>& chunks) : chunks_(chunks) {}
  size_t read(void* data, size_t n) override {
    while (i_ < chunks_.size() && pos_ == chunks_[i_].size()) {
      ++i_;
      pos_ = 0;
    }
    if (i_ == chunks_.size()) return 0;
    const size_t k = std::min(n, chunks_[i_].size() - pos_);
    std::memcpy(data, chunks_[i_].data() + pos_, k);
    pos_ += k;
    return k;
  }

 private:
  const std::vector<std::vector<uint8_t>>& chunks_;
  size_t i_ = 0, pos_ = 0;
};

SuspendedSession::SuspendedSession(Session& s, const SuspendOptions& opt)
    : model_(s.loaded_model()), tokens_(s.tokens()) {
  WriteOptions wo;
  wo.level = opt.level;
  if (!opt.spill_dir.empty()) {
    write_spill_file(s, opt);
    return;
  }
  ChunkSink sink(chunks_);
  write_snapshot(s, sink, wo);
  if (!chunks_.empty()) chunks_.back().shrink_to_fit();
  for (const auto& c : chunks_) size_ += c.size();
}

void SuspendedSession::write_spill_file(Session& s, const SuspendOptions& opt) {
  WriteOptions wo;
  wo.level = opt.level;
  const std::string& dir = opt.spill_dir;
  const std::string prefix = dir + (dir.back() == '/' ? "" : "/") + "kvrt-suspend-" +
                             std::to_string(static_cast<long long>(::getpid())) + "-";
  // pid, a process-wide counter and the clock make the name unique; O_EXCL
  // makes sure of it. 0600: the file holds the conversation.
  int fd = -1;
  std::string name;
  for (int attempt = 0; attempt < 16 && fd < 0; ++attempt) {
    const auto t = static_cast<unsigned long long>(
        std::chrono::steady_clock::now().time_since_epoch().count());
    name = prefix + std::to_string(g_spill_counter.fetch_add(1, std::memory_order_relaxed)) + "-" +
           std::to_string(t & 0xffffffu) + ".kvs";
    fd = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST)
      fail(KVRT_ERR_IO, "cannot create a spill file in spill_dir '%s': %s", dir.c_str(),
           std::strerror(errno));
  }
  if (fd < 0) fail(KVRT_ERR_IO, "cannot find a free spill file name in spill_dir '%s'", dir.c_str());
  std::FILE* f = ::fdopen(fd, "wb");
  if (!f) {
    const int err = errno;
    ::close(fd);
    ::unlink(name.c_str());
    fail(KVRT_ERR_IO, "cannot open spill file '%s': %s", name.c_str(), std::strerror(err));
  }
  try {
    SpillSink sink(f, name);
    write_snapshot(s, sink, wo);
    // Not synced: the file lives only while the session is suspended.
    if (std::fflush(f) != 0)
      fail(KVRT_ERR_IO, "writing spill file '%s': %s", name.c_str(), std::strerror(errno));
    size_ = sink.size();
    hash_ = sink.hash();
  } catch (...) {
    std::fclose(f);
    ::unlink(name.c_str());
    throw;
  }
  const int rc = std::fclose(f);
  if (rc != 0) {
    const int err = errno;
    ::unlink(name.c_str());
    fail(KVRT_ERR_IO, "closing spill file '%s': %s", name.c_str(), std::strerror(err));
  }
  path_ = std::move(name);
}

SuspendedSession::~SuspendedSession() {
  if (!path_.empty()) ::unlink(path_.c_str());
}

std::unique_ptr<Session> SuspendedSession::restore() const {
  if (path_.empty()) {
    HeldSource src(chunks_);
    auto s = read_snapshot(model_, src, "suspended session");
    uint8_t extra;
    if (src.read(&extra, 1) != 0)
      fail(KVRT_ERR_INTERNAL, "suspended session: bytes follow the held snapshot's end record");
    return s;
  }
  SpillSource src(path_);
  std::unique_ptr<Session> s;
  try {
    s = read_snapshot(model_, src, path_.c_str());
  } catch (const Error&) {
    // Whatever the reader found, a file that is not the one written is
    // reported as such.
    src.check_unchanged(size_, hash_);
    throw;
  }
  src.check_unchanged(size_, hash_);
  return s;
}

void SuspendedSession::copy_to(Sink& out) const {
  if (path_.empty()) {
    for (const auto& c : chunks_) out.write(c.data(), c.size());
    return;
  }
  SpillSource src(path_);
  std::vector<uint8_t> buf(kMaxChunkBytes);
  uint64_t done = 0;
  for (size_t k; done < size_ && (k = src.read(buf.data(), std::min<uint64_t>(buf.size(), size_ - done))) != 0;
       done += k)
    out.write(buf.data(), k);
  src.check_unchanged(size_, hash_);
}

}  // namespace snap
}  // namespace kvrt
