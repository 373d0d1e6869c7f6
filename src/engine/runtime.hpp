// A runtime: thread pool, backend, and the KV block pools under one budget.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

#include "backend/backend.hpp"
#include "kv/block-pool.hpp"
#include "model/model.hpp"
#include "util/thread-pool.hpp"

namespace kvrt {

struct RuntimeConfig {
  unsigned n_threads = 0;
  uint64_t kv_budget_bytes = 1ull << 30;
  uint32_t block_tokens = 16;
};

class Runtime {
 public:
  explicit Runtime(const RuntimeConfig& cfg);
  ~Runtime();

  const RuntimeConfig& config() const { return cfg_; }
  ThreadPool& threads() { return threads_; }
  const CpuBackend& backend() const { return backend_; }
  MemoryBudget& budget() { return budget_; }
  const MemoryBudget& budget() const { return budget_; }
  // The pool handing out blocks of n_parts parts of part_bytes (made on
  // first use).
  BlockPool& pool_for(size_t part_bytes, uint32_t n_parts);
  uint64_t reserved_bytes() const;
  uint64_t blocks_in_use() const;

 private:
  RuntimeConfig cfg_;
  ThreadPool threads_;
  CpuBackend backend_;
  MemoryBudget budget_;
  mutable std::mutex pools_mutex_;
  std::map<std::pair<size_t, uint32_t>, std::unique_ptr<BlockPool>> pools_;
};

// A model loaded into a runtime; keeps the runtime alive.
struct LoadedModel {
  std::shared_ptr<Runtime> runtime;
  std::unique_ptr<Model> model;
};

}  // namespace kvrt
