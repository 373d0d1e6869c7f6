// The C ABI: argument checks, parameter structs read by struct_size, C++
// exceptions turned into statuses and a thread-local message.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>

#include <zstd.h>

#include "engine/runtime.hpp"
#include "engine/session.hpp"
#include "kvrt/kvrt.h"
#include "snapshot/snapshot-format.hpp"
#include "snapshot/snapshot-io.hpp"
#include "snapshot/store.hpp"
#include "snapshot/suspend.hpp"
#include "util/error.hpp"

struct kvrt_runtime {
  std::shared_ptr<kvrt::Runtime> rt;
};
struct kvrt_model {
  std::shared_ptr<const kvrt::LoadedModel> m;
};
struct kvrt_session {
  // Exactly one of the two is set: the live session, or while suspended
  // its held snapshot (kvrt_session_suspend) and the stats it reports.
  std::unique_ptr<kvrt::Session> s;
  std::unique_ptr<kvrt::snap::SuspendedSession> held;
  kvrt_session_stats held_stats{};
  // Only the owning thread changes `s`, but kvrt_session_request_abort may
  // read it from any thread: swaps and that read hold this lock.
  std::mutex swap_mutex;
};
struct kvrt_store {
  std::unique_ptr<kvrt::snap::Store> st;
};

namespace {

thread_local std::string t_last_error;

void set_error(const char* fn, const char* msg) {
  t_last_error = fn;
  t_last_error += ": ";
  t_last_error += msg;
}

// Runs f; maps every exception to a status and the thread-local message.
template <class F>
kvrt_status guard(const char* fn, F&& f) noexcept {
  try {
    f();
    return KVRT_OK;
  } catch (const kvrt::Error& e) {
    set_error(fn, e.what());
    return e.status();
  } catch (const std::bad_alloc&) {
    set_error(fn, "out of host memory");
    return KVRT_ERR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    try {
      set_error(fn, (std::string("internal error: ") + e.what()).c_str());
    } catch (...) {
    }
    return KVRT_ERR_INTERNAL;
  } catch (...) {
    set_error(fn, "internal error: unknown exception");
    return KVRT_ERR_INTERNAL;
  }
}

// KVRT_MAX_ISA caps the SIMD level of the whole process at "scalar", "avx2"
// or "avx512" (never above what the CPU has), to reproduce a smaller CPU's
// kernels. Read once, at the first kvrt_build_info or kvrt_runtime_create;
// the text of a value not understood, else empty.
const std::string& isa_env_error() {
  static const std::string err = [] {
    const char* v = std::getenv("KVRT_MAX_ISA");
    if (!v) return std::string();
    int level = -1;
    for (int i = (int)kvrt_k::CpuIsa::scalar; i <= (int)kvrt_k::CpuIsa::avx512; ++i)
      if (std::strcmp(v, kvrt_k::cpu_isa_name((kvrt_k::CpuIsa)i)) == 0) level = i;
    if (level < 0)
      return std::string("environment variable KVRT_MAX_ISA is \"") + v +
             "\"; expected scalar, avx2 or avx512";
    if (level < (int)kvrt_k::cpu_isa()) kvrt_k::cpu_isa_set((kvrt_k::CpuIsa)level);
    return std::string();
  }();
  return err;
}

template <class T>
void require(const T* p, const char* name) {
  if (!p) kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "%s is NULL", name);
}

// Reads a caller's parameter struct: defaults for what it does not carry.
template <class T>
T read_params(const T* user, void (*defaults)(T*), const char* name) {
  T p;
  defaults(&p);
  if (!user) return p;
  if (user->struct_size < sizeof(T))
    kvrt::fail(KVRT_ERR_STRUCT_SIZE, "%s->struct_size = %u is smaller than %zu (use the *_default_params function)",
               name, user->struct_size, sizeof(T));
  std::memcpy(&p, user, sizeof(T));
  return p;
}

// The size of a report struct's first published layout: fields are only
// appended, so a caller compiled against an older header passes at least
// this and gets the fields it knows.
template <class T>
constexpr size_t first_struct_size() {
  return sizeof(T);
}
template <>
constexpr size_t first_struct_size<kvrt_session_stats>() {
  return offsetof(kvrt_session_stats, suspended);
}

// Checks an output struct's struct_size; returns the bytes to fill.
template <class T>
size_t out_size(const T* out, const char* name) {
  require(out, name);
  const size_t first = first_struct_size<T>();
  if (out->struct_size < first)
    kvrt::fail(KVRT_ERR_STRUCT_SIZE, "%s->struct_size = %u is smaller than %zu (the struct's first size)", name,
               out->struct_size, first);
  // A caller built against an older header gets the fields it knows.
  return std::min<size_t>(out->struct_size, sizeof(T));
}

void copy_text(char* dst, size_t cap, const char* src) {
  std::strncpy(dst, src, cap - 1);
  dst[cap - 1] = '\0';
}

// Runs an inspection into a full-size info and copies the caller's part,
// also after an error (the fields read before it stay set).
template <class F>
void snapshot_inspect_into(kvrt_snapshot_info* info, F&& run) {
  const size_t n = out_size(info, "info");
  kvrt_snapshot_info full{};
  full.struct_size = static_cast<uint32_t>(n);
  try {
    run(&full);
  } catch (...) {
    std::memcpy(info, &full, n);
    throw;
  }
  std::memcpy(info, &full, n);
}

const kvrt::Model& session_model(const kvrt_session* h) {
  return h->s ? h->s->model() : h->held->model();
}

kvrt_session_stats live_stats(const kvrt::Session& s) {
  kvrt_session_stats st{};
  st.n_tokens = s.kv().n_tokens();
  st.n_ctx = s.kv().n_ctx();
  st.n_blocks = s.kv().n_blocks();
  st.block_tokens = s.kv().layout().block_tokens;
  st.kv_format_k = s.config().k_format;
  st.kv_format_v = s.config().v_format;
  st.kv_bytes = s.kv().bytes();
  st.kv_bytes_per_token = s.kv_bytes_per_token();
  st.compute_ns = s.timers().compute_ns;
  st.attention_ns = s.timers().attention_ns;
  return st;
}

// Rebuilds a suspended session and runs f on it. The rebuilt session is
// installed first, so that kvrt_session_request_abort reaches a decode run
// by f; if the rebuild or f fails it is dropped again and the session stays
// suspended, holding the same snapshot (f changes nothing on failure).
template <class F>
void with_live(kvrt_session* h, F&& f) {
  if (h->s) {
    f(*h->s);
    return;
  }
  std::unique_ptr<kvrt::Session> s = h->held->restore();
  s->set_timers({h->held_stats.compute_ns, h->held_stats.attention_ns});
  {
    std::lock_guard<std::mutex> lock(h->swap_mutex);
    h->s = std::move(s);
  }
  try {
    f(*h->s);
  } catch (...) {
    std::lock_guard<std::mutex> lock(h->swap_mutex);
    s = std::move(h->s);  // destroyed after the lock: its blocks go back to the pool
    throw;
  }
  h->held.reset();  // frees the snapshot, removes the spill file
}

// A snapshot of the session: written from the live session, or the held
// bytes of a suspended one.
void write_session(kvrt_session* h, kvrt::snap::Sink& out, const kvrt::snap::WriteOptions& o) {
  if (h->s)
    kvrt::snap::write_snapshot(*h->s, out, o);
  else
    h->held->copy_to(out);
}

}  // namespace

extern "C" {

KVRT_API const char* kvrt_version(void) { return KVRT_VERSION_STRING; }

KVRT_API uint32_t kvrt_version_number(void) { return KVRT_VERSION_NUMBER; }

KVRT_API const char* kvrt_build_info(void) {
  static const std::string info = [] {
    const std::string& env_error = isa_env_error();
    std::string s = "kvrt " KVRT_VERSION_STRING "; cpu: ";
    s += kvrt_k::cpu_isa_name(kvrt_k::cpu_isa());
    if (kvrt_k::cpu_isa() != kvrt_k::cpu_isa_detect()) {
      s += " (KVRT_MAX_ISA; the CPU has ";
      s += kvrt_k::cpu_isa_name(kvrt_k::cpu_isa_detect());
      s += ")";
    }
    if (!env_error.empty()) s += " (" + env_error + ", ignored)";
    s += "; cuda: no; zstd ";
    s += ZSTD_versionString();
    return s;
  }();
  return info.c_str();
}

KVRT_API const char* kvrt_status_string(kvrt_status status) {
  switch (status) {
    case KVRT_OK: return "ok";
    case KVRT_ERR_INVALID_ARGUMENT: return "invalid argument";
    case KVRT_ERR_STRUCT_SIZE: return "struct_size too small";
    case KVRT_ERR_OUT_OF_RANGE: return "out of range";
    case KVRT_ERR_CONTEXT_FULL: return "context full";
    case KVRT_ERR_BUFFER_TOO_SMALL: return "buffer too small";
    case KVRT_ERR_ABORTED: return "aborted";
    case KVRT_ERR_NOT_FOUND: return "not found";
    case KVRT_ERR_OUT_OF_MEMORY: return "out of memory";
    case KVRT_ERR_IO: return "i/o error";
    case KVRT_ERR_CORRUPT: return "corrupt data";
    case KVRT_ERR_UNSUPPORTED: return "unsupported";
    case KVRT_ERR_MODEL_MISMATCH: return "model mismatch";
    case KVRT_ERR_VERSION: return "unsupported version";
    case KVRT_ERR_NO_DEVICE: return "no device";
    case KVRT_ERR_DEVICE: return "device error";
    case KVRT_ERR_INTERNAL: return "internal error";
  }
  return "unknown status";
}

KVRT_API const char* kvrt_last_error(void) { return t_last_error.c_str(); }

KVRT_API void kvrt_runtime_default_params(kvrt_runtime_params* p) {
  if (!p) return;
  std::memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
  p->n_threads = 0;
  p->kv_budget_bytes = 1ull << 30;
  p->block_tokens = 16;
}

KVRT_API void kvrt_model_default_params(kvrt_model_params* p) {
  if (!p) return;
  std::memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

KVRT_API void kvrt_session_default_params(kvrt_session_params* p) {
  if (!p) return;
  std::memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
  p->kv_format_k = KVRT_KV_FORMAT_F16;
  p->kv_format_v = KVRT_KV_FORMAT_F16;
  p->n_ctx = 0;
  p->max_batch = 0;
}

KVRT_API void kvrt_sampler_default_params(kvrt_sampler_params* p) {
  if (!p) return;
  std::memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
  p->temperature = 0.8f;
  p->top_k = 40;
  p->top_p = 0.95f;
  p->seed = 0;
}

KVRT_API kvrt_status kvrt_runtime_create(const kvrt_runtime_params* params, kvrt_runtime** out) {
  if (out) *out = nullptr;
  return guard(__func__, [&] {
    require(out, "out");
    kvrt_runtime_params p = read_params(params, kvrt_runtime_default_params, "params");
    if (!isa_env_error().empty()) kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "%s", isa_env_error().c_str());
    if (p.reserved0 != 0) kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "params->reserved0 must be 0");
    if (p.n_threads > kvrt::CpuBackend::kMaxThreads)
      kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "n_threads = %u exceeds %u", p.n_threads,
                 kvrt::CpuBackend::kMaxThreads);
    if (p.block_tokens < 1 || p.block_tokens > 1024)
      kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "block_tokens = %u is outside 1..1024", p.block_tokens);
    if (p.kv_budget_bytes == 0)
      kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "kv_budget_bytes is 0: no KV block could ever be allocated");
    kvrt::RuntimeConfig cfg;
    cfg.n_threads = p.n_threads;
    cfg.kv_budget_bytes = p.kv_budget_bytes;
    cfg.block_tokens = p.block_tokens;
    auto h = std::make_unique<kvrt_runtime>();
    h->rt = std::make_shared<kvrt::Runtime>(cfg);
    *out = h.release();
  });
}

KVRT_API void kvrt_runtime_destroy(kvrt_runtime* runtime) { delete runtime; }

KVRT_API kvrt_status kvrt_runtime_get_stats(const kvrt_runtime* runtime, kvrt_runtime_stats* stats) {
  return guard(__func__, [&] {
    require(runtime, "runtime");
    size_t n = out_size(stats, "stats");
    kvrt_runtime_stats s{};
    s.struct_size = static_cast<uint32_t>(n);
    const kvrt::Runtime& rt = *runtime->rt;
    s.n_threads = rt.config().n_threads;
    s.kv_budget_bytes = rt.budget().limit();
    s.kv_used_bytes = rt.budget().used();
    s.kv_reserved_bytes = rt.reserved_bytes();
    s.n_blocks_used = rt.blocks_in_use();
    std::memcpy(stats, &s, n);
  });
}

KVRT_API kvrt_status kvrt_model_load(kvrt_runtime* runtime, const char* path,
                                     const kvrt_model_params* params, kvrt_model** out) {
  if (out) *out = nullptr;
  return guard(__func__, [&] {
    require(runtime, "runtime");
    require(path, "path");
    require(out, "out");
    kvrt_model_params p = read_params(params, kvrt_model_default_params, "params");
    if (p.reserved0 != 0) kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "params->reserved0 must be 0");
    auto lm = std::make_shared<kvrt::LoadedModel>();
    lm->runtime = runtime->rt;
    lm->model = kvrt::Model::load(path);
    auto h = std::make_unique<kvrt_model>();
    h->m = std::move(lm);
    *out = h.release();
  });
}

KVRT_API void kvrt_model_destroy(kvrt_model* model) { delete model; }

KVRT_API kvrt_status kvrt_model_get_info(const kvrt_model* model, kvrt_model_info* info) {
  return guard(__func__, [&] {
    require(model, "model");
    size_t n = out_size(info, "info");
    const kvrt::Model& m = *model->m->model;
    const kvrt::HParams& hp = m.hparams();
    kvrt_model_info s{};
    s.struct_size = static_cast<uint32_t>(n);
    s.n_vocab = hp.n_vocab;
    s.n_ctx_train = hp.n_ctx_train;
    s.n_embd = hp.n_embd;
    s.n_layer = hp.n_layer;
    s.n_head = hp.n_head;
    s.n_head_kv = hp.n_head_kv;
    s.head_dim = hp.head_dim;
    s.n_ff = hp.n_ff;
    s.bos_token = m.tokenizer().bos();
    s.eos_token = m.tokenizer().eos();
    s.n_params = m.n_params;
    s.weight_bytes = m.weight_bytes;
    s.decode_weight_bytes = m.decode_weight_bytes;
    for (uint32_t f = 0; f < KVRT_KV_FORMAT_COUNT; ++f)
      s.kv_bytes_per_token[f] =
          kvrt::kv_bytes_per_token(hp, f, f, model->m->runtime->config().block_tokens);
    copy_text(s.architecture, sizeof s.architecture, hp.architecture.c_str());
    copy_text(s.name, sizeof s.name, hp.name.c_str());
    std::memcpy(info, &s, n);
  });
}

KVRT_API kvrt_status kvrt_model_kv_bytes_per_token(const kvrt_model* model, uint32_t format_k,
                                                   uint32_t format_v, uint64_t* bytes) {
  return guard(__func__, [&] {
    require(model, "model");
    require(bytes, "bytes");
    if (format_k >= KVRT_KV_FORMAT_COUNT || format_v >= KVRT_KV_FORMAT_COUNT)
      kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "unknown KV format (keys %u, values %u)", format_k, format_v);
    uint64_t b = kvrt::kv_bytes_per_token(model->m->model->hparams(), format_k, format_v,
                                          model->m->runtime->config().block_tokens);
    if (b == 0)
      kvrt::fail(KVRT_ERR_UNSUPPORTED,
                 "KV formats %u/%u (keys/values) are not supported: bf16 is not built, and "
                 "f32/f16 cannot be paired with q8/q4",
                 format_k, format_v);
    *bytes = b;
  });
}

KVRT_API kvrt_status kvrt_tokenize(const kvrt_model* model, const char* text, size_t text_len,
                                   uint32_t flags, int32_t* tokens, size_t capacity,
                                   size_t* n_tokens) {
  return guard(__func__, [&] {
    require(model, "model");
    require(n_tokens, "n_tokens");
    if (!text && text_len) kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "text is NULL but text_len = %zu", text_len);
    if (!tokens && capacity) kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "tokens is NULL but capacity = %zu", capacity);
    if (flags & ~KVRT_TOKENIZE_ADD_BOS) kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "unknown flags 0x%x", flags);
    std::vector<int32_t> ids = model->m->model->tokenizer().encode(
        std::string_view(text ? text : "", text_len), (flags & KVRT_TOKENIZE_ADD_BOS) != 0);
    *n_tokens = ids.size();
    if (ids.size() > capacity) {
      if (!tokens) return;  // a size query
      kvrt::fail(KVRT_ERR_BUFFER_TOO_SMALL, "%zu tokens do not fit in a capacity of %zu", ids.size(), capacity);
    }
    std::copy(ids.begin(), ids.end(), tokens);
  });
}

static void check_ids(const kvrt::Model& m, const int32_t* ids, size_t n) {
  const int32_t nv = m.tokenizer().n_vocab();
  for (size_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= nv)
      kvrt::fail(KVRT_ERR_OUT_OF_RANGE, "token %d (index %zu) is outside the vocabulary [0, %d)", ids[i], i, nv);
}

static void write_text(const std::string& s, char* text, size_t capacity, size_t* text_len, bool nul) {
  *text_len = s.size();
  if (s.size() > capacity) {
    if (!text) return;
    kvrt::fail(KVRT_ERR_BUFFER_TOO_SMALL, "%zu bytes of text do not fit in a capacity of %zu", s.size(), capacity);
  }
  std::memcpy(text, s.data(), s.size());
  if (nul && s.size() < capacity) text[s.size()] = '\0';
}

KVRT_API kvrt_status kvrt_detokenize(const kvrt_model* model, const int32_t* tokens, size_t n_tokens,
                                     char* text, size_t capacity, size_t* text_len) {
  return guard(__func__, [&] {
    require(model, "model");
    require(text_len, "text_len");
    if (!tokens && n_tokens) kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "tokens is NULL but n_tokens = %zu", n_tokens);
    if (!text && capacity) kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "text is NULL but capacity = %zu", capacity);
    const kvrt::Model& m = *model->m->model;
    check_ids(m, tokens, n_tokens);
    std::string s = m.tokenizer().decode(std::span<const int32_t>(tokens, n_tokens));
    write_text(s, text, capacity, text_len, true);
  });
}

KVRT_API kvrt_status kvrt_token_to_piece(const kvrt_model* model, int32_t token, char* text,
                                         size_t capacity, size_t* text_len) {
  return guard(__func__, [&] {
    require(model, "model");
    require(text_len, "text_len");
    if (!text && capacity) kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "text is NULL but capacity = %zu", capacity);
    const kvrt::Model& m = *model->m->model;
    check_ids(m, &token, 1);
    std::string s;
    m.tokenizer().append_piece(token, false, s);
    write_text(s, text, capacity, text_len, false);
  });
}

KVRT_API kvrt_status kvrt_session_create(kvrt_model* model, const kvrt_session_params* params,
                                         kvrt_session** out) {
  if (out) *out = nullptr;
  return guard(__func__, [&] {
    require(model, "model");
    require(out, "out");
    kvrt_session_params p = read_params(params, kvrt_session_default_params, "params");
    kvrt::SessionConfig cfg;
    cfg.k_format = p.kv_format_k;
    cfg.v_format = p.kv_format_v;
    cfg.n_ctx = p.n_ctx;
    cfg.max_batch = p.max_batch;
    auto h = std::make_unique<kvrt_session>();
    h->s = std::make_unique<kvrt::Session>(model->m, cfg);
    *out = h.release();
  });
}

KVRT_API void kvrt_session_destroy(kvrt_session* session) { delete session; }

KVRT_API kvrt_status kvrt_decode_step(kvrt_session* session, const int32_t* tokens, size_t n_tokens,
                                      float* logits, size_t logits_capacity) {
  return guard(__func__, [&] {
    require(session, "session");
    const uint32_t nv = session_model(session).hparams().n_vocab;
    if (logits && logits_capacity < nv)
      kvrt::fail(KVRT_ERR_BUFFER_TOO_SMALL, "logits_capacity = %zu is smaller than n_vocab = %u",
                 logits_capacity, nv);
    with_live(session, [&](kvrt::Session& s) { s.decode(tokens, n_tokens, logits); });
  });
}

KVRT_API kvrt_status kvrt_session_set_sampler(kvrt_session* session, const kvrt_sampler_params* params) {
  return guard(__func__, [&] {
    require(session, "session");
    kvrt_sampler_params p = read_params(params, kvrt_sampler_default_params, "params");
    kvrt::SamplerConfig c;
    c.temperature = p.temperature;
    c.top_k = p.top_k;
    c.top_p = p.top_p;
    c.seed = p.seed;
    with_live(session, [&](kvrt::Session& s) { s.sampler().configure(c); });
  });
}

KVRT_API kvrt_status kvrt_session_sample(kvrt_session* session, const float* logits, size_t n_logits,
                                         int32_t* token) {
  return guard(__func__, [&] {
    require(session, "session");
    require(logits, "logits");
    require(token, "token");
    const uint32_t nv = session_model(session).hparams().n_vocab;
    if (n_logits != nv)
      kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "n_logits = %zu but the model's vocabulary has %u tokens",
                 n_logits, nv);
    with_live(session, [&](kvrt::Session& s) { *token = s.sampler().sample(logits, n_logits); });
  });
}

KVRT_API kvrt_status kvrt_session_rewind(kvrt_session* session, size_t n_tokens) {
  return guard(__func__, [&] {
    require(session, "session");
    with_live(session, [&](kvrt::Session& s) { s.rewind(n_tokens); });
  });
}

KVRT_API kvrt_status kvrt_session_get_tokens(const kvrt_session* session, int32_t* tokens,
                                             size_t capacity, size_t* n_tokens) {
  return guard(__func__, [&] {
    require(session, "session");
    require(n_tokens, "n_tokens");
    if (!tokens && capacity) kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "tokens is NULL but capacity = %zu", capacity);
    const auto& t = session->s ? session->s->tokens() : session->held->tokens();
    *n_tokens = t.size();
    if (t.size() > capacity) {
      if (!tokens) return;
      kvrt::fail(KVRT_ERR_BUFFER_TOO_SMALL, "%zu tokens do not fit in a capacity of %zu", t.size(), capacity);
    }
    std::copy(t.begin(), t.end(), tokens);
  });
}

KVRT_API kvrt_status kvrt_session_get_stats(const kvrt_session* session, kvrt_session_stats* stats) {
  return guard(__func__, [&] {
    require(session, "session");
    size_t n = out_size(stats, "stats");
    kvrt_session_stats st = session->s ? live_stats(*session->s) : session->held_stats;
    st.struct_size = static_cast<uint32_t>(n);
    std::memcpy(stats, &st, n);
  });
}

KVRT_API kvrt_status kvrt_session_request_abort(kvrt_session* session) {
  return guard(__func__, [&] {
    require(session, "session");
    std::lock_guard<std::mutex> lock(session->swap_mutex);
    if (session->s) session->s->request_abort();  // a suspended session has no decode to stop
  });
}

KVRT_API void kvrt_snapshot_default_params(kvrt_snapshot_params* p) {
  if (!p) return;
  std::memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
  p->compression_level = 3;
}

static kvrt::snap::WriteOptions snapshot_write_options(const kvrt_snapshot_params* params) {
  kvrt_snapshot_params p = read_params(params, kvrt_snapshot_default_params, "params");
  if (p.reserved0 != 0 || p.reserved1 != 0)
    kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "params->reserved0 and reserved1 must be 0");
  kvrt::snap::WriteOptions o;
  o.level = p.compression_level == 0 ? 3 : p.compression_level;
  // Checked here too, so a bad level is refused before any file is touched.
  if (o.level < ZSTD_minCLevel() || o.level > ZSTD_maxCLevel())
    kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "compression_level = %d is outside zstd's range %d..%d",
               o.level, ZSTD_minCLevel(), ZSTD_maxCLevel());
  return o;
}

static void snapshot_check_load_params(const kvrt_snapshot_params* params) {
  kvrt_snapshot_params p = read_params(params, kvrt_snapshot_default_params, "params");
  if (p.reserved0 != 0 || p.reserved1 != 0)
    kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "params->reserved0 and reserved1 must be 0");
}

static void snapshot_wrap(std::unique_ptr<kvrt::Session> s, kvrt_session** out) {
  auto h = std::make_unique<kvrt_session>();
  h->s = std::move(s);
  *out = h.release();
}

KVRT_API kvrt_status kvrt_session_save(kvrt_session* session, const char* path,
                                       const kvrt_snapshot_params* params) {
  return guard(__func__, [&] {
    require(session, "session");
    require(path, "path");
    kvrt::snap::WriteOptions o = snapshot_write_options(params);
    kvrt::snap::AtomicFileSink file(path);
    write_session(session, file, o);
    file.commit();
  });
}

KVRT_API kvrt_status kvrt_session_load(kvrt_model* model, const char* path,
                                       const kvrt_snapshot_params* params, kvrt_session** out) {
  if (out) *out = nullptr;
  return guard(__func__, [&] {
    require(model, "model");
    require(path, "path");
    require(out, "out");
    snapshot_check_load_params(params);
    kvrt::snap::FileSource file(path);
    auto s = kvrt::snap::read_snapshot(model->m, file, path);
    uint8_t extra;
    if (file.read(&extra, 1) != 0)
      kvrt::fail(KVRT_ERR_CORRUPT, "%s: data follows the snapshot's end record", path);
    snapshot_wrap(std::move(s), out);
  });
}

KVRT_API kvrt_status kvrt_session_save_buffer(kvrt_session* session, void* buffer, size_t capacity,
                                              size_t* size, const kvrt_snapshot_params* params) {
  return guard(__func__, [&] {
    require(session, "session");
    require(size, "size");
    if (!buffer && capacity)
      kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "buffer is NULL but capacity = %zu", capacity);
    kvrt::snap::WriteOptions o = snapshot_write_options(params);
    kvrt::snap::BufferSink sink(buffer, capacity);
    write_session(session, sink, o);
    *size = sink.size();
    if (sink.overflowed() && buffer)
      kvrt::fail(KVRT_ERR_BUFFER_TOO_SMALL, "the snapshot takes %zu bytes; the buffer holds %zu", sink.size(),
                 capacity);
  });
}

KVRT_API kvrt_status kvrt_session_load_buffer(kvrt_model* model, const void* buffer, size_t size,
                                              const kvrt_snapshot_params* params, kvrt_session** out) {
  if (out) *out = nullptr;
  return guard(__func__, [&] {
    require(model, "model");
    require(out, "out");
    if (!buffer && size) kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "buffer is NULL but size = %zu", size);
    snapshot_check_load_params(params);
    kvrt::snap::MemorySource src(buffer, size);
    auto s = kvrt::snap::read_snapshot(model->m, src, "snapshot buffer");
    if (src.remaining() != 0)
      kvrt::fail(KVRT_ERR_CORRUPT, "snapshot buffer: %zu bytes follow the snapshot's end record",
                 src.remaining());
    snapshot_wrap(std::move(s), out);
  });
}

KVRT_API kvrt_status kvrt_session_save_stream(kvrt_session* session, kvrt_write_fn write, void* user,
                                              const kvrt_snapshot_params* params) {
  return guard(__func__, [&] {
    require(session, "session");
    if (!write) kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "write is NULL");
    kvrt::snap::WriteOptions o = snapshot_write_options(params);
    kvrt::snap::CallbackSink sink(write, user);
    write_session(session, sink, o);
  });
}

KVRT_API kvrt_status kvrt_session_load_stream(kvrt_model* model, kvrt_read_fn read, void* user,
                                              const kvrt_snapshot_params* params, kvrt_session** out) {
  if (out) *out = nullptr;
  return guard(__func__, [&] {
    require(model, "model");
    if (!read) kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "read is NULL");
    require(out, "out");
    snapshot_check_load_params(params);
    kvrt::snap::CallbackSource src(read, user);
    snapshot_wrap(kvrt::snap::read_snapshot(model->m, src, "snapshot stream"), out);
  });
}

KVRT_API kvrt_status kvrt_snapshot_inspect(const char* path, const kvrt_model* model,
                                           kvrt_snapshot_info* info) {
  return guard(__func__, [&] {
    require(path, "path");
    snapshot_inspect_into(info, [&](kvrt_snapshot_info* full) {
      kvrt::snap::FileSource file(path);
      kvrt::snap::inspect_snapshot(model ? model->m.get() : nullptr, file, path, full);
      uint8_t extra;
      if (file.read(&extra, 1) != 0)
        kvrt::fail(KVRT_ERR_CORRUPT, "%s: data follows the snapshot's end record", path);
    });
  });
}

KVRT_API kvrt_status kvrt_snapshot_inspect_buffer(const void* buffer, size_t size, const kvrt_model* model,
                                                  kvrt_snapshot_info* info) {
  return guard(__func__, [&] {
    if (!buffer && size) kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "buffer is NULL but size = %zu", size);
    snapshot_inspect_into(info, [&](kvrt_snapshot_info* full) {
      kvrt::snap::MemorySource src(buffer, size);
      kvrt::snap::inspect_snapshot(model ? model->m.get() : nullptr, src, "snapshot buffer", full);
      if (src.remaining() != 0)
        kvrt::fail(KVRT_ERR_CORRUPT, "snapshot buffer: %zu bytes follow the snapshot's end record",
                   src.remaining());
    });
  });
}

/* ---- session store ------------------------------------------------------ */

KVRT_API void kvrt_store_default_params(kvrt_store_params* p) {
  if (!p) return;
  std::memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

KVRT_API kvrt_status kvrt_store_open(const char* dir, const kvrt_store_params* params, kvrt_store** out) {
  if (out) *out = nullptr;
  return guard(__func__, [&] {
    require(dir, "dir");
    require(out, "out");
    kvrt_store_params p = read_params(params, kvrt_store_default_params, "params");
    if (p.reserved0 != 0 || p.reserved1 != 0)
      kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "params->reserved0 and reserved1 must be 0");
    auto h = std::make_unique<kvrt_store>();
    h->st = kvrt::snap::Store::open(dir);
    *out = h.release();
  });
}

KVRT_API void kvrt_store_close(kvrt_store* store) { delete store; }

KVRT_API kvrt_status kvrt_store_save(kvrt_store* store, kvrt_session* session, const char* name,
                                     const kvrt_snapshot_params* params, kvrt_store_save_stats* stats) {
  return guard(__func__, [&] {
    require(store, "store");
    require(session, "session");
    kvrt::snap::check_store_name(name);
    const size_t n_stats = stats ? out_size(stats, "stats") : 0;
    kvrt::snap::WriteOptions o = snapshot_write_options(params);
    kvrt::snap::StoreSaveStats st;
    // A suspended session is resumed first (the store keys its blocks).
    with_live(session, [&](kvrt::Session& live) { store->st->save(live, name, o, &st); });
    if (stats) {
      kvrt_store_save_stats full{};
      full.struct_size = stats->struct_size;
      full.blocks_total = st.blocks_total;
      full.blocks_written = st.blocks_written;
      full.blocks_reused = st.blocks_reused;
      full.pack_bytes_written = st.pack_bytes;
      full.manifest_bytes = st.manifest_bytes;
      std::memcpy(stats, &full, n_stats);
    }
  });
}

KVRT_API kvrt_status kvrt_store_load(kvrt_store* store, kvrt_model* model, const char* name,
                                     const kvrt_snapshot_params* params, kvrt_session** out) {
  if (out) *out = nullptr;
  return guard(__func__, [&] {
    require(store, "store");
    require(model, "model");
    kvrt::snap::check_store_name(name);
    require(out, "out");
    snapshot_check_load_params(params);
    snapshot_wrap(store->st->load(model->m, name), out);
  });
}

KVRT_API kvrt_status kvrt_store_remove(kvrt_store* store, const char* name) {
  return guard(__func__, [&] {
    require(store, "store");
    kvrt::snap::check_store_name(name);
    store->st->remove(name);
  });
}

KVRT_API kvrt_status kvrt_store_compact(kvrt_store* store, uint64_t* bytes_freed) {
  return guard(__func__, [&] {
    require(store, "store");
    const uint64_t freed = store->st->compact();
    if (bytes_freed) *bytes_freed = freed;
  });
}

KVRT_API kvrt_status kvrt_store_list(kvrt_store* store, char* buffer, size_t capacity, size_t* size) {
  return guard(__func__, [&] {
    require(store, "store");
    require(size, "size");
    if (!buffer && capacity)
      kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "buffer is NULL but capacity = %zu", capacity);
    std::string all;
    for (const std::string& n : store->st->names()) {
      all += n;
      all += '\0';
    }
    *size = all.size();
    if (all.size() > capacity && buffer)
      kvrt::fail(KVRT_ERR_BUFFER_TOO_SMALL, "the list takes %zu bytes; the buffer holds %zu", all.size(),
                 capacity);
    if (buffer && !all.empty()) std::memcpy(buffer, all.data(), all.size());
  });
}

KVRT_API kvrt_status kvrt_store_inspect(kvrt_store* store, const char* name, const kvrt_model* model,
                                        kvrt_store_entry_info* info) {
  return guard(__func__, [&] {
    require(store, "store");
    kvrt::snap::check_store_name(name);
    const size_t n = out_size(info, "info");
    const uint32_t keep = info->struct_size;
    std::memset(info, 0, n);
    info->struct_size = keep;
    kvrt::snap::StoreEntryInfo e;
    store->st->inspect(name, model ? model->m.get() : nullptr, &e);
    info->n_tokens = e.n_tokens;
    info->n_blocks = e.n_blocks;
    info->kv_format_k = e.k_format;
    info->kv_format_v = e.v_format;
    info->manifest_bytes = e.manifest_bytes;
    info->block_stored_bytes = e.block_record_bytes;
    info->block_raw_bytes = e.block_raw_bytes;
    info->n_ctx = e.n_ctx;
    info->block_tokens = e.block_tokens;
    info->temperature = e.sampler.temperature;
    info->top_k = static_cast<int32_t>(e.sampler.top_k);
    info->top_p = e.sampler.top_p;
    info->seed = e.sampler.seed;
  });
}

// ---- Suspend and resume ----------------------------------------------------

KVRT_API void kvrt_suspend_default_params(kvrt_suspend_params* p) {
  if (!p) return;
  std::memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
  p->compression_level = 1;
  p->spill_dir = nullptr;
}

static kvrt::snap::SuspendOptions suspend_options(const kvrt_suspend_params* params) {
  kvrt_suspend_params p = read_params(params, kvrt_suspend_default_params, "params");
  if (p.reserved0 != 0 || p.reserved1 != 0)
    kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "params->reserved0 and reserved1 must be 0");
  kvrt::snap::SuspendOptions o;
  o.level = p.compression_level == 0 ? 1 : p.compression_level;
  if (o.level < ZSTD_minCLevel() || o.level > ZSTD_maxCLevel())
    kvrt::fail(KVRT_ERR_INVALID_ARGUMENT, "compression_level = %d is outside zstd's range %d..%d",
               o.level, ZSTD_minCLevel(), ZSTD_maxCLevel());
  if (p.spill_dir) {
    if (p.spill_dir[0] == '\0')
      kvrt::fail(KVRT_ERR_INVALID_ARGUMENT,
                 "params->spill_dir is empty (NULL keeps the snapshot in host memory)");
    o.spill_dir = p.spill_dir;
  }
  return o;
}

KVRT_API kvrt_status kvrt_session_suspend(kvrt_session* session, const kvrt_suspend_params* params) {
  return guard(__func__, [&] {
    require(session, "session");
    const kvrt::snap::SuspendOptions o = suspend_options(params);
    if (!session->s) return;  // already suspended: its snapshot stays as it is
    auto held = std::make_unique<kvrt::snap::SuspendedSession>(*session->s, o);
    kvrt_session_stats st = live_stats(*session->s);
    st.n_blocks = 0;
    st.kv_bytes = 0;
    st.suspended = 1;
    st.spilled = held->spilled() ? 1 : 0;
    st.suspended_bytes = held->bytes();
    std::unique_ptr<kvrt::Session> live;
    {
      std::lock_guard<std::mutex> lock(session->swap_mutex);
      live = std::move(session->s);
    }
    session->held = std::move(held);
    session->held_stats = st;
    // `live` goes here, outside the lock: blocks back to the pool, buffers freed.
  });
}

KVRT_API kvrt_status kvrt_session_resume(kvrt_session* session) {
  return guard(__func__, [&] {
    require(session, "session");
    with_live(session, [](kvrt::Session&) {});
  });
}

}  // extern "C"
