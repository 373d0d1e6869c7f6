// Snapshot byte sinks and sources over caller buffers, callbacks and files.
#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "snapshot/snapshot-io.hpp"
#include "util/error.hpp"

namespace kvrt {
namespace snap {

void BufferSink::write(const void* data, size_t n) {
  if (size_ <= cap_ && n <= cap_ - size_) std::memcpy(buf_ + size_, data, n);
  size_ += n;  // past the capacity only counted: the size query's answer
}

void CallbackSink::write(const void* data, size_t n) {
  if (n == 0) return;
  const int rc = fn_(user_, data, n);
  if (rc != 0)
    fail(KVRT_ERR_IO, "write callback returned %d for %zu bytes at offset %" PRIu64, rc, n, written_);
  written_ += n;
}

size_t MemorySource::read(void* data, size_t n) {
  const size_t k = n < size_ - pos_ ? n : size_ - pos_;
  if (k) std::memcpy(data, p_ + pos_, k);
  pos_ += k;
  return k;
}

size_t CallbackSource::read(void* data, size_t n) {
  const int64_t r = fn_(user_, data, n);
  if (r < 0) fail(KVRT_ERR_IO, "read callback returned %" PRId64 " at offset %" PRIu64, r, read_);
  if (static_cast<uint64_t>(r) > n)
    fail(KVRT_ERR_IO, "read callback returned %" PRId64 " bytes for a request of %zu at offset %" PRIu64,
         r, n, read_);
  read_ += static_cast<uint64_t>(r);
  return static_cast<size_t>(r);
}

FileSource::FileSource(const std::string& path) : path_(path) {
  f_ = std::fopen(path.c_str(), "rb");
  if (!f_) fail(KVRT_ERR_IO, "cannot open snapshot '%s': %s", path.c_str(), std::strerror(errno));
}

FileSource::~FileSource() {
  if (f_) std::fclose(f_);
}

size_t FileSource::read(void* data, size_t n) {
  size_t k = std::fread(data, 1, n, f_);
  if (k == 0 && std::ferror(f_))
    fail(KVRT_ERR_IO, "reading snapshot '%s': %s", path_.c_str(), std::strerror(errno));
  return k;
}

}  // namespace snap
}  // namespace kvrt
