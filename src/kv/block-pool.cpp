// The KV block pool: lazily allocated slabs, a free-list stack, atomic
// reference counts and the shared byte budget.
#include "kv/block-pool.hpp"

#include <sys/mman.h>

#include <cassert>
#include <cstdlib>
#include <new>

namespace kvrt {

bool MemoryBudget::try_reserve(uint64_t bytes) {
  uint64_t cur = used_.load(std::memory_order_relaxed);
  do {
    if (cur > limit_ || bytes > limit_ - cur) return false;
  } while (!used_.compare_exchange_weak(cur, cur + bytes, std::memory_order_relaxed));
  return true;
}

void MemoryBudget::release(uint64_t bytes) {
  uint64_t cur = used_.load(std::memory_order_relaxed);
  // Never wrap below zero: a double release is a bug, not a reason to
  // corrupt every later accounting decision.
  do {
    assert(bytes <= cur && "MemoryBudget released more than reserved");
    if (bytes > cur) bytes = cur;
  } while (!used_.compare_exchange_weak(cur, cur - bytes, std::memory_order_relaxed));
}

namespace {

constexpr size_t kSlabTargetBytes = size_t{2} << 20;  // one x86 huge page
// Upper bound on slab-table entries; very large budgets get larger slabs so
// that the table (allocated whole at construction) stays small.
constexpr uint64_t kMaxSlabs = uint64_t{1} << 16;
constexpr uint64_t kMaxBlocks = UINT32_MAX - 1;  // ids are uint32, kNoBlock excluded

}  // namespace

struct BlockPool::Impl {
  // One slab: block memory plus one reference count per block. Both
  // pointers are published with release stores so that data() and
  // refcount() read them without the lock.
  struct Slab {
    std::atomic<uint8_t*> mem{nullptr};
    std::atomic<std::atomic<uint32_t>*> refs{nullptr};
    size_t bytes = 0;       // mapped for this slab (guarded by mu)
    bool mapped = false;    // mmap'ed (else aligned_alloc)
  };

  uint64_t max_blocks = 0;        // the budget cannot hold more of this size
  uint32_t blocks_per_slab = 1;
  uint32_t n_slabs_max = 0;
  std::unique_ptr<Slab[]> slabs;  // n_slabs_max entries, filled in order

  std::mutex mu;
  uint32_t n_slabs = 0;               // created so far (guarded by mu)
  std::vector<uint32_t> free_ids;     // stack (guarded by mu)
  std::atomic<size_t> in_use{0};
  std::atomic<size_t> reserved{0};

  uint32_t slab_blocks(uint32_t s) const {
    uint64_t first = uint64_t{s} * blocks_per_slab;
    uint64_t left = max_blocks - first;
    return static_cast<uint32_t>(left < blocks_per_slab ? left : blocks_per_slab);
  }

  // Adds the next slab and pushes its ids on the free list; false when the
  // table is full or the system refuses memory. Part p of the slab's block
  // i is at p * stride + i * part_bytes: the stride is one number for the
  // whole pool, so a short last slab leaves the ends of its runs unused
  // (mapped, never touched, never backed by memory; reserved_bytes counts
  // only what blocks hold).
  bool grow(size_t part_bytes, uint32_t n_parts, size_t stride) {
    if (n_slabs >= n_slabs_max) return false;
    uint32_t s = n_slabs;
    uint32_t nb = slab_blocks(s);
    size_t bytes = (static_cast<size_t>(n_parts - 1) * stride + nb * part_bytes + 63) & ~size_t{63};
    uint8_t* mem = nullptr;
    bool mapped = false;
    if (bytes >= kSlabTargetBytes) {
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return false;
#ifdef MADV_HUGEPAGE
      madvise(p, bytes, MADV_HUGEPAGE);  // a hint; refusal is harmless
#endif
      mem = static_cast<uint8_t*>(p);
      mapped = true;
    } else {
      mem = static_cast<uint8_t*>(std::aligned_alloc(64, bytes));  // a multiple of 64
      if (!mem) return false;
    }
    auto* refs = new (std::nothrow) std::atomic<uint32_t>[nb];
    if (!refs) {
      if (mapped) munmap(mem, bytes); else std::free(mem);
      return false;
    }
    for (uint32_t i = 0; i < nb; ++i) refs[i].store(0, std::memory_order_relaxed);
    try {
      // Room for every block ever created, so release() never allocates.
      free_ids.reserve(static_cast<size_t>(s) * blocks_per_slab + nb);
    } catch (const std::bad_alloc&) {
      delete[] refs;
      if (mapped) munmap(mem, bytes); else std::free(mem);
      return false;
    }
    Slab& sl = slabs[s];
    sl.bytes = bytes;
    sl.mapped = mapped;
    sl.refs.store(refs, std::memory_order_release);
    sl.mem.store(mem, std::memory_order_release);
    // Pushed in reverse so the lowest ids are handed out first.
    uint32_t base = s * blocks_per_slab;
    for (uint32_t i = nb; i-- > 0;) free_ids.push_back(base + i);
    n_slabs = s + 1;
    reserved.fetch_add(static_cast<size_t>(nb) * part_bytes * n_parts, std::memory_order_relaxed);
    return true;
  }

  std::atomic<uint32_t>* ref(uint32_t id) const {
    uint32_t s = id / blocks_per_slab;
    if (s >= n_slabs_max) return nullptr;
    std::atomic<uint32_t>* r = slabs[s].refs.load(std::memory_order_acquire);
    if (!r || id - s * blocks_per_slab >= slab_blocks(s)) return nullptr;
    return r + (id - s * blocks_per_slab);
  }
};

BlockPool::BlockPool(size_t part_bytes, uint32_t n_parts, MemoryBudget& budget)
    : impl_(std::make_unique<Impl>()),
      part_bytes_(part_bytes ? part_bytes : 1),
      n_parts_(n_parts ? n_parts : 1),
      budget_(budget) {
  Impl& im = *impl_;
  const size_t block_bytes = this->block_bytes();
  uint64_t mb = budget.limit() / block_bytes;
  im.max_blocks = mb < kMaxBlocks ? mb : kMaxBlocks;
  uint64_t bps = (kSlabTargetBytes + block_bytes - 1) / block_bytes;
  if (bps == 0) bps = 1;
  if (im.max_blocks > 0 && bps > im.max_blocks) bps = im.max_blocks;
  uint64_t n_slabs = (im.max_blocks + bps - 1) / bps;
  if (n_slabs > kMaxSlabs) {
    bps = (im.max_blocks + kMaxSlabs - 1) / kMaxSlabs;
    n_slabs = (im.max_blocks + bps - 1) / bps;
  }
  im.blocks_per_slab = static_cast<uint32_t>(bps);
  im.n_slabs_max = static_cast<uint32_t>(n_slabs);
  im.slabs = std::make_unique<Impl::Slab[]>(n_slabs);
  part_stride_ = (static_cast<size_t>(bps) * part_bytes_ + 63) & ~size_t{63};
}

BlockPool::~BlockPool() {
  Impl& im = *impl_;
  // Blocks still held (a leak elsewhere) must not keep the budget's bytes.
  size_t still = im.in_use.load();
  if (still) budget_.release(static_cast<uint64_t>(still) * block_bytes());
  for (uint32_t s = 0; s < im.n_slabs; ++s) {
    Impl::Slab& sl = im.slabs[s];
    uint8_t* mem = sl.mem.load();
    if (sl.mapped) munmap(mem, sl.bytes); else std::free(mem);
    delete[] sl.refs.load();
  }
}

bool BlockPool::alloc(uint32_t n, uint32_t* ids) {
  if (n == 0) return true;
  Impl& im = *impl_;
  uint64_t bytes = static_cast<uint64_t>(n) * block_bytes();
  if (!budget_.try_reserve(bytes)) return false;
  std::lock_guard<std::mutex> lock(im.mu);
  while (im.free_ids.size() < n) {
    if (!im.grow(part_bytes_, n_parts_, part_stride_)) {
      budget_.release(bytes);
      return false;
    }
  }
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t id = im.free_ids.back();
    im.free_ids.pop_back();
    im.ref(id)->store(1, std::memory_order_relaxed);
    ids[i] = id;
  }
  im.in_use.fetch_add(n, std::memory_order_relaxed);
  return true;
}

void BlockPool::retain(uint32_t id) {
  std::atomic<uint32_t>* r = impl_->ref(id);
  assert(r && "BlockPool::retain: id out of range");
  if (!r) return;
  uint32_t c = r->load(std::memory_order_relaxed);
  do {
    assert(c != 0 && "BlockPool::retain: block is free");
    if (c == 0 || c == UINT32_MAX) return;
  } while (!r->compare_exchange_weak(c, c + 1, std::memory_order_relaxed));
}

void BlockPool::release(uint32_t id) {
  Impl& im = *impl_;
  std::atomic<uint32_t>* r = im.ref(id);
  assert(r && "BlockPool::release: id out of range");
  if (!r) return;
  uint32_t c = r->load(std::memory_order_relaxed);
  do {
    assert(c != 0 && "BlockPool::release: block is already free");
    if (c == 0) return;
  } while (!r->compare_exchange_weak(c, c - 1, std::memory_order_acq_rel));
  if (c != 1) return;
  // Only the thread that took the count from 1 to 0 gets here, so the id is
  // pushed exactly once.
  {
    std::lock_guard<std::mutex> lock(im.mu);
    im.free_ids.push_back(id);  // capacity reserved when its slab was added
    im.in_use.fetch_sub(1, std::memory_order_relaxed);
  }
  budget_.release(block_bytes());
}

uint32_t BlockPool::refcount(uint32_t id) const {
  std::atomic<uint32_t>* r = impl_->ref(id);
  return r ? r->load(std::memory_order_relaxed) : 0;
}

uint8_t* BlockPool::data(uint32_t id) const {
  const Impl& im = *impl_;
  uint32_t s = id / im.blocks_per_slab;
  if (s >= im.n_slabs_max) return nullptr;
  uint8_t* mem = im.slabs[s].mem.load(std::memory_order_acquire);
  uint32_t i = id - s * im.blocks_per_slab;
  if (!mem || i >= im.slab_blocks(s)) return nullptr;
  return mem + static_cast<size_t>(i) * part_bytes_;
}

size_t BlockPool::blocks_in_use() const { return impl_->in_use.load(std::memory_order_relaxed); }

size_t BlockPool::reserved_bytes() const { return impl_->reserved.load(std::memory_order_relaxed); }

}  // namespace kvrt
