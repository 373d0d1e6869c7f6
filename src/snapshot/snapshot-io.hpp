// Byte sinks and sources of snapshots: caller buffers, caller callbacks,
// files read plainly and files written atomically.
#pragma once

#include <cstdio>
#include <string>

#include "kvrt/kvrt.h"
#include "snapshot/snapshot-format.hpp"

namespace kvrt {
namespace snap {

// Writes into a caller's buffer while it has room and counts every byte, so
// that an overflow still yields the exact size needed.
class BufferSink final : public Sink {
 public:
  BufferSink(void* buf, size_t capacity) : buf_(static_cast<uint8_t*>(buf)), cap_(capacity) {}
  void write(const void* data, size_t n) override;
  size_t size() const { return size_; }
  bool overflowed() const { return size_ > cap_; }

 private:
  uint8_t* buf_;
  size_t cap_;
  size_t size_ = 0;
};

class CallbackSink final : public Sink {
 public:
  CallbackSink(kvrt_write_fn fn, void* user) : fn_(fn), user_(user) {}
  void write(const void* data, size_t n) override;

 private:
  kvrt_write_fn fn_;
  void* user_;
  uint64_t written_ = 0;
};

class MemorySource final : public Source {
 public:
  MemorySource(const void* data, size_t size) : p_(static_cast<const uint8_t*>(data)), size_(size) {}
  size_t read(void* data, size_t n) override;
  size_t remaining() const { return size_ - pos_; }

 private:
  const uint8_t* p_;
  size_t size_;
  size_t pos_ = 0;
};

class CallbackSource final : public Source {
 public:
  CallbackSource(kvrt_read_fn fn, void* user) : fn_(fn), user_(user) {}
  size_t read(void* data, size_t n) override;

 private:
  kvrt_read_fn fn_;
  void* user_;
  uint64_t read_ = 0;
};

class FileSource final : public Source {
 public:
  explicit FileSource(const std::string& path);  // Error KVRT_ERR_IO when it cannot be opened
  ~FileSource() override;
  size_t read(void* data, size_t n) override;

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
};

// A file written under a temporary name in the target's folder and renamed
// over the target by commit(); destroyed without commit it removes the
// temporary file and leaves the target as it was.
class AtomicFileSink final : public Sink {
 public:
  explicit AtomicFileSink(const std::string& path);  // Error KVRT_ERR_IO
  ~AtomicFileSink() override;
  AtomicFileSink(const AtomicFileSink&) = delete;
  AtomicFileSink& operator=(const AtomicFileSink&) = delete;
  void write(const void* data, size_t n) override;
  // Flushes, syncs, renames over the target and syncs the folder.
  void commit();
  const std::string& temp_path() const { return tmp_; }

 private:
  void flush_buffer();
  std::string path_, dir_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
  std::string buf_;  // small writes are gathered into larger ones
};

}  // namespace snap
}  // namespace kvrt
