// A suspended session: its snapshot held in host memory or in a spill file
// the runtime creates and removes, plus the token ids, which queries answer
// without rebuilding the session.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/session.hpp"
#include "snapshot/snapshot-format.hpp"

namespace kvrt {
namespace snap {

struct SuspendOptions {
  int level = 1;          // zstd level of the held snapshot
  std::string spill_dir;  // empty: host memory; else a folder for the spill file
};

class SuspendedSession {
 public:
  // Writes the snapshot of `s` (not changed). Throws Error: KVRT_ERR_IO (the
  // spill file cannot be created or written; nothing is left behind),
  // KVRT_ERR_INVALID_ARGUMENT (level), KVRT_ERR_OUT_OF_MEMORY.
  SuspendedSession(Session& s, const SuspendOptions& opt);
  ~SuspendedSession();  // removes the spill file
  SuspendedSession(const SuspendedSession&) = delete;
  SuspendedSession& operator=(const SuspendedSession&) = delete;

  // Reads and validates the held snapshot into a new session; this object
  // is not changed. Throws as read_snapshot(); a spill file that is gone or
  // unreadable is KVRT_ERR_IO, one whose bytes differ from those written is
  // KVRT_ERR_CORRUPT.
  std::unique_ptr<Session> restore() const;
  // Copies the held snapshot's bytes to `out` in pieces of at most
  // kMaxChunkBytes, checking a spill file as restore() does (the error may
  // come after some bytes went out).
  void copy_to(Sink& out) const;

  uint64_t bytes() const { return size_; }
  bool spilled() const { return !path_.empty(); }
  const std::string& spill_path() const { return path_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  const Model& model() const { return *model_->model; }

 private:
  class HeldSource;
  void write_spill_file(Session& s, const SuspendOptions& opt);
  std::shared_ptr<const LoadedModel> model_;
  std::vector<int32_t> tokens_;
  std::vector<std::vector<uint8_t>> chunks_;  // host memory: the bytes in pieces
  std::string path_;                          // spill file, or empty
  uint64_t size_ = 0;                         // bytes of the snapshot
  uint64_t hash_ = 0;                         // of all its bytes, to recognise a changed file
};

}  // namespace snap
}  // namespace kvrt
