// Atomic snapshot files: a uniquely named temporary file in the target's
// folder, synced, renamed over the target, then the folder synced.
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "snapshot/snapshot-io.hpp"
#include "util/error.hpp"

namespace kvrt {
namespace snap {

namespace {

std::atomic<uint64_t> g_temp_counter{0};

// Writes all n bytes, retrying short writes and interruptions.
bool write_all(int fd, const char* p, size_t n) {
  while (n) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

AtomicFileSink::AtomicFileSink(const std::string& path) : path_(path) {
  if (path.empty()) fail(KVRT_ERR_INVALID_ARGUMENT, "snapshot path is empty");
  const size_t slash = path.find_last_of('/');
  std::string base;
  if (slash == std::string::npos) {
    dir_ = ".";
    base = path;
  } else {
    dir_ = slash == 0 ? "/" : path.substr(0, slash);
    base = path.substr(slash + 1);
  }
  if (base.empty()) fail(KVRT_ERR_IO, "snapshot path '%s' names a folder, not a file", path.c_str());
  // pid, a process-wide counter and the clock make the name unique; O_EXCL
  // makes sure it is, and a clash just tries the next name.
  for (int attempt = 0; attempt < 16; ++attempt) {
    const uint64_t n = g_temp_counter.fetch_add(1, std::memory_order_relaxed);
    const auto t = static_cast<unsigned long long>(
        std::chrono::steady_clock::now().time_since_epoch().count());
    std::string name = (dir_ == "/" ? std::string("/") : dir_ + "/") + "." + base + ".tmp." +
                       std::to_string(static_cast<long long>(::getpid())) + "." + std::to_string(n) +
                       "." + std::to_string(t & 0xffffffu);
    int fd = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      fd_ = fd;
      tmp_ = std::move(name);
      break;
    }
    if (errno != EEXIST)
      fail(KVRT_ERR_IO, "cannot create temporary file '%s' for snapshot '%s': %s", name.c_str(),
           path.c_str(), std::strerror(errno));
  }
  if (fd_ < 0) fail(KVRT_ERR_IO, "cannot find a free temporary name for snapshot '%s'", path.c_str());
  // A replaced snapshot keeps its permissions.
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) (void)::fchmod(fd_, st.st_mode & 07777);
  buf_.reserve(1 << 16);
}

AtomicFileSink::~AtomicFileSink() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !tmp_.empty()) ::unlink(tmp_.c_str());
}

void AtomicFileSink::flush_buffer() {
  if (buf_.empty()) return;
  if (!write_all(fd_, buf_.data(), buf_.size()))
    fail(KVRT_ERR_IO, "writing snapshot '%s' (temporary file '%s'): %s", path_.c_str(), tmp_.c_str(),
         std::strerror(errno));
  buf_.clear();
}

void AtomicFileSink::write(const void* data, size_t n) {
  if (fd_ < 0) fail(KVRT_ERR_INTERNAL, "write to a closed snapshot file '%s'", path_.c_str());
  if (buf_.size() + n > buf_.capacity()) flush_buffer();
  if (n >= buf_.capacity()) {
    if (!write_all(fd_, static_cast<const char*>(data), n))
      fail(KVRT_ERR_IO, "writing snapshot '%s' (temporary file '%s'): %s", path_.c_str(),
           tmp_.c_str(), std::strerror(errno));
    return;
  }
  buf_.append(static_cast<const char*>(data), n);
}

void AtomicFileSink::commit() {
  flush_buffer();
  if (::fsync(fd_) != 0)
    fail(KVRT_ERR_IO, "syncing snapshot '%s' (temporary file '%s'): %s", path_.c_str(), tmp_.c_str(),
         std::strerror(errno));
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0)
    fail(KVRT_ERR_IO, "closing snapshot '%s' (temporary file '%s'): %s", path_.c_str(), tmp_.c_str(),
         std::strerror(errno));
  if (::rename(tmp_.c_str(), path_.c_str()) != 0)
    fail(KVRT_ERR_IO, "renaming '%s' over snapshot '%s': %s", tmp_.c_str(), path_.c_str(),
         std::strerror(errno));
  committed_ = true;
  // The rename is durable once the folder's entry is synced. Some file
  // systems cannot sync a folder (EINVAL); the data itself is synced.
  int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return;
  const int rc = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (rc != 0 && err != EINVAL && err != EROFS)
    fail(KVRT_ERR_IO, "snapshot '%s' is in place but syncing folder '%s' failed: %s", path_.c_str(),
         dir_.c_str(), std::strerror(err));
}

}  // namespace snap
}  // namespace kvrt
