// Runtime: owns the threads and the block pools.
#include "engine/runtime.hpp"

namespace kvrt {

Runtime::Runtime(const RuntimeConfig& cfg)
    : cfg_(cfg), threads_(cfg.n_threads), backend_(threads_), budget_(cfg.kv_budget_bytes) {
  cfg_.n_threads = threads_.size();
}

Runtime::~Runtime() = default;

BlockPool& Runtime::pool_for(size_t part_bytes, uint32_t n_parts) {
  std::lock_guard<std::mutex> lock(pools_mutex_);
  auto& p = pools_[{part_bytes, n_parts}];
  if (!p) p = std::make_unique<BlockPool>(part_bytes, n_parts, budget_);
  return *p;
}

uint64_t Runtime::reserved_bytes() const {
  std::lock_guard<std::mutex> lock(pools_mutex_);
  uint64_t n = 0;
  for (auto& [bytes, p] : pools_) n += p->reserved_bytes();
  return n;
}

uint64_t Runtime::blocks_in_use() const {
  std::lock_guard<std::mutex> lock(pools_mutex_);
  uint64_t n = 0;
  for (auto& [bytes, p] : pools_) n += p->blocks_in_use();
  return n;
}

}  // namespace kvrt
