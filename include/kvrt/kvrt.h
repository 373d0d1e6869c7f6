/**
 * @file kvrt.h
 * @brief kvrt: an embeddable LLM decoding runtime built around its KV cache.
 *
 * This header is the whole stable API. Everything is C; nothing here exposes
 * C++. Every fallible function returns a ::kvrt_status; on error,
 * kvrt_last_error() returns a message (thread-local) that says exactly what
 * was wrong, and the objects passed in are left as they were.
 *
 * Objects:
 *  - ::kvrt_runtime owns the thread pool and the KV block pool (with its
 *    byte budget). It is internally synchronized.
 *  - ::kvrt_model is a loaded GGUF model. It is immutable after loading and
 *    may be used from any number of threads at once.
 *  - ::kvrt_session is one conversation: its KV cache, its tokens and its
 *    sampler. A session is used by one thread at a time; different sessions
 *    may be used on different threads at once.
 *
 * Objects that refer to each other hold references inside the library, so
 * they may be destroyed in any order: a model stays alive while a session
 * created from it exists, and a runtime while a model loaded into it exists.
 */
#ifndef KVRT_H
#define KVRT_H

#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------------------
 * Export and deprecation macros
 * ------------------------------------------------------------------------- */

/** @brief Marks a public symbol. Define it before including this header to
 *  vendor kvrt statically (for example as empty). */
#ifndef KVRT_API
#  if defined(_WIN32)
#    if defined(KVRT_BUILDING)
#      define KVRT_API __declspec(dllexport)
#    else
#      define KVRT_API
#    endif
#  elif defined(__GNUC__)
#    define KVRT_API __attribute__((visibility("default")))
#  else
#    define KVRT_API
#  endif
#endif

/** @brief Marks a function that will be removed in a later major version. */
#if defined(__GNUC__)
#  define KVRT_DEPRECATED(msg) __attribute__((deprecated(msg)))
#else
#  define KVRT_DEPRECATED(msg)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------
 * Version
 * ------------------------------------------------------------------------- */

/** @brief Major version; the shared library's SONAME changes with it. */
#define KVRT_VERSION_MAJOR 0
/** @brief Minor version: new functions or fields, nothing removed. */
#define KVRT_VERSION_MINOR 1
/** @brief Patch version: fixes only. */
#define KVRT_VERSION_PATCH 0
/** @brief The version as one number, major * 10000 + minor * 100 + patch. */
#define KVRT_VERSION_NUMBER \
  (KVRT_VERSION_MAJOR * 10000 + KVRT_VERSION_MINOR * 100 + KVRT_VERSION_PATCH)

/**
 * @brief The library's version as text, such as "0.1.0".
 * @return Static text; never NULL. Any thread may call it.
 */
KVRT_API const char* kvrt_version(void);

/**
 * @brief The library's version as a number (see ::KVRT_VERSION_NUMBER).
 *
 * Compare it with ::KVRT_VERSION_NUMBER to detect a header/library mismatch.
 * @return The version number. Any thread may call it.
 */
KVRT_API uint32_t kvrt_version_number(void);

/**
 * @brief How the library was built and what it found on this CPU: SIMD level
 *        in use, CUDA support, zstd version.
 *
 * The SIMD level is the best the CPU has, or the cap set by the environment
 * variable `KVRT_MAX_ISA` (`scalar`, `avx2` or `avx512`; read once, at the
 * first call of this function or kvrt_runtime_create()). The text says when
 * a cap is in effect, and when the variable's value was not understood.
 * @return Static text; never NULL. Any thread may call it.
 */
KVRT_API const char* kvrt_build_info(void);

/* ---------------------------------------------------------------------------
 * Status codes
 * ------------------------------------------------------------------------- */

/**
 * @brief Result of every fallible call.
 *
 * Values are grouped by family (argument/misuse 1xx, resource 2xx,
 * format 3xx, device 4xx, other 9xx). Values are only ever added, never
 * renumbered or reused.
 */
typedef enum kvrt_status {
  KVRT_OK = 0,                         /**< Success. */

  KVRT_ERR_INVALID_ARGUMENT = 100,     /**< A NULL pointer or a meaningless value. */
  KVRT_ERR_STRUCT_SIZE = 101,          /**< A parameter struct's struct_size is too small. */
  KVRT_ERR_OUT_OF_RANGE = 102,         /**< A token id, count or index outside its range. */
  KVRT_ERR_CONTEXT_FULL = 103,         /**< The tokens would not fit in the session's context. */
  KVRT_ERR_BUFFER_TOO_SMALL = 104,     /**< An output buffer is too small; the size needed is returned. */
  KVRT_ERR_ABORTED = 105,              /**< The call was stopped by kvrt_session_request_abort(). */
  KVRT_ERR_NOT_FOUND = 106,            /**< A named item (a session in a store) does not exist. */

  KVRT_ERR_OUT_OF_MEMORY = 200,        /**< The KV budget or host memory is exhausted. */
  KVRT_ERR_IO = 201,                   /**< A file could not be opened, read or written. */

  KVRT_ERR_CORRUPT = 300,              /**< A file or buffer is malformed or truncated. */
  KVRT_ERR_UNSUPPORTED = 301,          /**< A valid but unsupported architecture, type or format. */
  KVRT_ERR_MODEL_MISMATCH = 302,       /**< Data made for another model. */
  KVRT_ERR_VERSION = 303,              /**< A format version this library cannot read. */

  KVRT_ERR_NO_DEVICE = 400,            /**< No usable GPU; the CPU is used instead. */
  KVRT_ERR_DEVICE = 401,               /**< A GPU call failed. */

  KVRT_ERR_INTERNAL = 900              /**< A bug in kvrt; the message says where. */
} kvrt_status;

/**
 * @brief A short static description of a status, such as "out of memory".
 * @param status Any value, including unknown ones.
 * @return Static text; never NULL. Any thread may call it.
 */
KVRT_API const char* kvrt_status_string(kvrt_status status);

/**
 * @brief Detail about the last error on the calling thread: which file,
 *        field, value or limit.
 *
 * Set by every call that returns an error; calls that succeed leave it as it
 * was.
 * @return Thread-local text, valid until the next kvrt call on this thread;
 *         "" when no error has occurred. Never NULL.
 */
KVRT_API const char* kvrt_last_error(void);

/* ---------------------------------------------------------------------------
 * Opaque types
 * ------------------------------------------------------------------------- */

/** @brief Thread pool, KV block pool and memory budget. */
typedef struct kvrt_runtime kvrt_runtime;
/** @brief A loaded model: weights, hyper-parameters, tokenizer. */
typedef struct kvrt_model kvrt_model;
/** @brief One conversation: KV cache, tokens, sampler. */
typedef struct kvrt_session kvrt_session;

/* ---------------------------------------------------------------------------
 * Enumerations and parameter structs
 * ------------------------------------------------------------------------- */

/**
 * @brief Storage format of the KV cache (chosen per session, for K and V).
 */
typedef enum kvrt_kv_format {
  KVRT_KV_FORMAT_F32 = 0,   /**< 32-bit float (reference). */
  KVRT_KV_FORMAT_F16 = 1,   /**< IEEE half precision. */
  KVRT_KV_FORMAT_BF16 = 2,  /**< bfloat16 (not yet supported by sessions). */
  KVRT_KV_FORMAT_Q8 = 3,    /**< 8-bit integers with per-block scales (docs/quantization.md). */
  KVRT_KV_FORMAT_Q4 = 4     /**< 4-bit integers with per-block scales and minimums. */
} kvrt_kv_format;

/** @brief Number of values in ::kvrt_kv_format. */
#define KVRT_KV_FORMAT_COUNT 5

/**
 * @brief Parameters of kvrt_runtime_create().
 *
 * Initialize with kvrt_runtime_default_params(); the library reads
 * min(struct_size, its own size) bytes and uses defaults for the rest.
 */
typedef struct kvrt_runtime_params {
  uint32_t struct_size;      /**< sizeof(kvrt_runtime_params), set by the init function. */
  uint32_t n_threads;        /**< Worker threads; 0 means one per core. Default 0. */
  uint64_t kv_budget_bytes;  /**< Bytes of KV cache all sessions may hold together. Default 1 GiB. */
  uint32_t block_tokens;     /**< Positions per KV block (1..1024). Default 16. */
  uint32_t reserved0;        /**< Must be 0. */
} kvrt_runtime_params;

/**
 * @brief Parameters of kvrt_model_load().
 */
typedef struct kvrt_model_params {
  uint32_t struct_size;      /**< sizeof(kvrt_model_params), set by the init function. */
  uint32_t reserved0;        /**< Must be 0. */
} kvrt_model_params;

/**
 * @brief Parameters of kvrt_session_create().
 */
typedef struct kvrt_session_params {
  uint32_t struct_size;      /**< sizeof(kvrt_session_params), set by the init function. */
  uint32_t kv_format_k;      /**< ::kvrt_kv_format of keys. Default ::KVRT_KV_FORMAT_F16. */
  uint32_t kv_format_v;      /**< ::kvrt_kv_format of values. Default ::KVRT_KV_FORMAT_F16. */
  uint32_t n_ctx;            /**< Most tokens the session may hold; 0 means the model's context length. */
  uint32_t max_batch;        /**< Most tokens processed in one pass of a prefill; longer inputs are split. 0 means 64. */
} kvrt_session_params;

/**
 * @brief Sampler settings of a session (kvrt_session_set_sampler()).
 *
 * The order is: temperature; then top-k; then top-p; then a draw from a
 * generator seeded with @c seed. A temperature of 0 is greedy (the highest
 * logit, lowest id on ties) and ignores the rest.
 */
typedef struct kvrt_sampler_params {
  uint32_t struct_size;      /**< sizeof(kvrt_sampler_params), set by the init function. */
  float temperature;         /**< >= 0; 0 is greedy. Default 0.8. */
  uint32_t top_k;            /**< Keep the k most likely tokens; 0 keeps all. Default 40. */
  float top_p;               /**< Keep the smallest set whose probability reaches p, in (0, 1]. Default 0.95. */
  uint64_t seed;             /**< Seed of the random generator. Default 0. */
} kvrt_sampler_params;

/**
 * @brief What kvrt_model_get_info() reports.
 */
typedef struct kvrt_model_info {
  uint32_t struct_size;      /**< Set by the caller to sizeof(kvrt_model_info). */
  uint32_t n_vocab;          /**< Tokens in the vocabulary. */
  uint32_t n_ctx_train;      /**< Context length the model declares. */
  uint32_t n_embd;           /**< Embedding width. */
  uint32_t n_layer;          /**< Transformer blocks. */
  uint32_t n_head;           /**< Query heads. */
  uint32_t n_head_kv;        /**< Key/value heads. */
  uint32_t head_dim;         /**< Width of one head. */
  uint32_t n_ff;             /**< Feed-forward width. */
  int32_t bos_token;         /**< Beginning-of-sequence token, or -1. */
  int32_t eos_token;         /**< End-of-sequence token, or -1. */
  uint32_t reserved0;        /**< 0. */
  uint64_t n_params;         /**< Parameters in all weight tensors. */
  uint64_t weight_bytes;     /**< Bytes of all weight tensors as stored. */
  /** KV bytes per token for each ::kvrt_kv_format used for both K and V:
   *  layers x 2 x kv_heads x head_dim x bytes per element, plus scales. 0 for
   *  formats this build does not support. */
  uint64_t kv_bytes_per_token[KVRT_KV_FORMAT_COUNT];
  char architecture[32];     /**< Architecture, such as "llama"; NUL-terminated. */
  char name[64];             /**< general.name, possibly cut short; NUL-terminated. */
  /** Weight bytes one decode step reads: every matrix, plus one row of the
   *  token embedding table (unless the output layer shares it). With the KV
   *  bytes of the context, this is what bounds decode speed by memory
   *  bandwidth. */
  uint64_t decode_weight_bytes;
} kvrt_model_info;

/**
 * @brief What kvrt_session_get_stats() reports.
 */
typedef struct kvrt_session_stats {
  uint32_t struct_size;      /**< Set by the caller to sizeof(kvrt_session_stats). */
  uint32_t n_tokens;         /**< Tokens in the cache (of a suspended session: in its snapshot). */
  uint32_t n_ctx;            /**< Most tokens the session may hold. */
  uint32_t n_blocks;         /**< KV blocks the session refers to. */
  uint32_t block_tokens;     /**< Positions per block. */
  uint32_t kv_format_k;      /**< ::kvrt_kv_format of keys. */
  uint32_t kv_format_v;      /**< ::kvrt_kv_format of values. */
  uint32_t reserved0;        /**< 0. */
  uint64_t kv_bytes;         /**< Bytes of the blocks the session refers to. */
  uint64_t kv_bytes_per_token; /**< Bytes one token takes in this session's formats. */
  /** 1 while the session is suspended (kvrt_session_suspend()), else 0.
   *  A suspended session refers to no block: n_blocks and kv_bytes are 0,
   *  while n_tokens still counts its tokens. */
  uint32_t suspended;
  uint32_t spilled;          /**< 1 while the suspended session's snapshot is in a spill file, else 0. */
  uint64_t suspended_bytes;  /**< Bytes of the snapshot a suspended session holds (in host memory or in its spill file); 0 when not suspended. */
  /** Wall-clock nanoseconds the session has spent in forward passes
   *  (kvrt_decode_step(): prompt and generated tokens, the logits
   *  included, sampling excluded) since it was created or
   *  loaded; kept across kvrt_session_suspend() and resume. A call that
   *  fails adds nothing. Differences between two reads time the calls
   *  between them. */
  uint64_t compute_ns;
  /** The part of compute_ns spent in attention over the KV cache (every
   *  layer's attention kernel; storing new keys and values excluded): the
   *  cost that grows with the context and that the KV format changes. */
  uint64_t attention_ns;
} kvrt_session_stats;

/**
 * @brief What kvrt_runtime_get_stats() reports.
 */
typedef struct kvrt_runtime_stats {
  uint32_t struct_size;      /**< Set by the caller to sizeof(kvrt_runtime_stats). */
  uint32_t n_threads;        /**< Worker threads in use. */
  uint64_t kv_budget_bytes;  /**< The pool's byte budget. */
  uint64_t kv_used_bytes;    /**< Bytes of blocks in use by all sessions. */
  uint64_t kv_reserved_bytes; /**< Bytes the pool holds from the system (used or free). */
  uint64_t n_blocks_used;    /**< Blocks in use. */
} kvrt_runtime_stats;

/** @brief kvrt_tokenize() flag: put the beginning-of-sequence token first. */
#define KVRT_TOKENIZE_ADD_BOS 1u

/**
 * @brief Fills @p params with the defaults and sets struct_size.
 * @param params Out: the struct to fill; ignored when NULL.
 */
KVRT_API void kvrt_runtime_default_params(kvrt_runtime_params* params);
/** @brief Fills @p params with the defaults. @param params Out; ignored when NULL. */
KVRT_API void kvrt_model_default_params(kvrt_model_params* params);
/** @brief Fills @p params with the defaults. @param params Out; ignored when NULL. */
KVRT_API void kvrt_session_default_params(kvrt_session_params* params);
/** @brief Fills @p params with the defaults. @param params Out; ignored when NULL. */
KVRT_API void kvrt_sampler_default_params(kvrt_sampler_params* params);

/* ---------------------------------------------------------------------------
 * Runtime
 * ------------------------------------------------------------------------- */

/**
 * @brief Creates a runtime: a thread pool and a KV block pool with a budget.
 *
 * @param params In: settings, or NULL for the defaults. Not kept.
 * @param out Out: the new runtime, owned by the caller (kvrt_runtime_destroy()).
 *            Set to NULL on error.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL @p out, a nonzero
 *         reserved field, block_tokens outside 1..1024, an environment
 *         variable `KVRT_MAX_ISA` set to something other than `scalar`,
 *         `avx2` or `avx512`: see kvrt_build_info());
 *         ::KVRT_ERR_STRUCT_SIZE (struct_size below the first version's
 *         size); ::KVRT_ERR_OUT_OF_MEMORY.
 * @note Any thread may call it.
 */
KVRT_API kvrt_status kvrt_runtime_create(const kvrt_runtime_params* params,
                                         kvrt_runtime** out);

/**
 * @brief Releases the caller's reference to a runtime.
 *
 * The runtime is freed once no model loaded into it remains.
 * @param runtime In: the runtime, or NULL (nothing happens).
 * @note Do not use @p runtime afterwards. Any thread may call it, but not
 *       while another thread uses the same handle.
 */
KVRT_API void kvrt_runtime_destroy(kvrt_runtime* runtime);

/**
 * @brief Reports the runtime's threads and the block pool's use.
 * @param runtime In: the runtime.
 * @param stats In/out: struct_size set by the caller; filled up to it.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL);
 *         ::KVRT_ERR_STRUCT_SIZE.
 * @note Any thread may call it at any time.
 */
KVRT_API kvrt_status kvrt_runtime_get_stats(const kvrt_runtime* runtime,
                                            kvrt_runtime_stats* stats);

/* ---------------------------------------------------------------------------
 * Model
 * ------------------------------------------------------------------------- */

/**
 * @brief Loads a GGUF model (version 2 or 3) into a runtime.
 *
 * The file is memory-mapped and every count, offset and extent in it is
 * checked against its size before use. Supported: architecture "llama";
 * weight types F32, F16, BF16, Q8_0; tokenizer "llama" (SentencePiece-style).
 *
 * @param runtime In: the runtime; the model keeps a reference to it.
 * @param path In: file path (UTF-8, NUL-terminated). Not kept.
 * @param params In: settings, or NULL for the defaults. Not kept.
 * @param out Out: the model, owned by the caller (kvrt_model_destroy()).
 *            Set to NULL on error.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT; ::KVRT_ERR_STRUCT_SIZE;
 *         ::KVRT_ERR_IO (cannot open or map); ::KVRT_ERR_CORRUPT (malformed or
 *         truncated file); ::KVRT_ERR_UNSUPPORTED (another architecture,
 *         weight type or tokenizer, named in the message);
 *         ::KVRT_ERR_OUT_OF_MEMORY.
 * @note Any thread may call it.
 */
KVRT_API kvrt_status kvrt_model_load(kvrt_runtime* runtime, const char* path,
                                     const kvrt_model_params* params,
                                     kvrt_model** out);

/**
 * @brief Releases the caller's reference to a model.
 *
 * The model is freed once no session created from it remains.
 * @param model In: the model, or NULL (nothing happens).
 */
KVRT_API void kvrt_model_destroy(kvrt_model* model);

/**
 * @brief Describes a model: shapes, vocabulary, and KV bytes per token.
 * @param model In: the model.
 * @param info In/out: struct_size set by the caller; filled up to it.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT; ::KVRT_ERR_STRUCT_SIZE.
 * @note Any thread may call it.
 */
KVRT_API kvrt_status kvrt_model_get_info(const kvrt_model* model,
                                         kvrt_model_info* info);

/**
 * @brief KV bytes one token takes with the given key and value formats,
 *        scales included.
 * @param model In: the model.
 * @param format_k In: ::kvrt_kv_format of keys.
 * @param format_v In: ::kvrt_kv_format of values.
 * @param bytes Out: bytes per token.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL, unknown format);
 *         ::KVRT_ERR_UNSUPPORTED (a format this build does not support).
 */
KVRT_API kvrt_status kvrt_model_kv_bytes_per_token(const kvrt_model* model,
                                                   uint32_t format_k,
                                                   uint32_t format_v,
                                                   uint64_t* bytes);

/**
 * @brief Turns text into token ids.
 *
 * With @p tokens NULL and @p capacity 0 it only counts. When @p capacity is
 * too small, nothing is written and ::KVRT_ERR_BUFFER_TOO_SMALL is returned
 * with the count needed in @p n_tokens.
 *
 * @param model In: the model.
 * @param text In: UTF-8 text, @p text_len bytes (need not be NUL-terminated;
 *             may be NULL when @p text_len is 0).
 * @param text_len In: bytes of @p text.
 * @param flags In: ::KVRT_TOKENIZE_ADD_BOS or 0.
 * @param tokens Out: the ids, or NULL with @p capacity 0.
 * @param capacity In: room in @p tokens, in tokens.
 * @param n_tokens Out: the number of ids (written or needed).
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL pointers, unknown
 *         flags); ::KVRT_ERR_BUFFER_TOO_SMALL.
 * @note Any thread may call it.
 */
KVRT_API kvrt_status kvrt_tokenize(const kvrt_model* model, const char* text,
                                   size_t text_len, uint32_t flags,
                                   int32_t* tokens, size_t capacity,
                                   size_t* n_tokens);

/**
 * @brief Turns token ids back into UTF-8 text.
 *
 * Control tokens (BOS, EOS, unknown) produce no text; byte tokens produce
 * their byte; the word-start marker becomes a space, except at the very start
 * of the output right after BOS. The output is NUL-terminated when room
 * remains; @p text_len does not count the NUL.
 *
 * @param model In: the model.
 * @param tokens In: @p n_tokens ids (may be NULL when @p n_tokens is 0).
 * @param n_tokens In: number of ids.
 * @param text Out: the text, or NULL with @p capacity 0 to query the size
 *             (then ::KVRT_OK is returned with the size in @p text_len).
 * @param capacity In: room in @p text, in bytes.
 * @param text_len Out: bytes of text (written or needed, NUL excluded).
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT; ::KVRT_ERR_OUT_OF_RANGE (an
 *         id outside the vocabulary); ::KVRT_ERR_BUFFER_TOO_SMALL.
 * @note Any thread may call it.
 */
KVRT_API kvrt_status kvrt_detokenize(const kvrt_model* model,
                                     const int32_t* tokens, size_t n_tokens,
                                     char* text, size_t capacity,
                                     size_t* text_len);

/**
 * @brief The text of one token as it appears when streamed after other text
 *        (a word-start marker becomes a leading space).
 * @param model In: the model.
 * @param token In: the id.
 * @param text Out: the bytes (not NUL-terminated), or NULL with @p capacity 0
 *             to query the size (::KVRT_OK with the size in @p text_len).
 * @param capacity In: room in @p text.
 * @param text_len Out: bytes written or needed.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT; ::KVRT_ERR_OUT_OF_RANGE;
 *         ::KVRT_ERR_BUFFER_TOO_SMALL.
 */
KVRT_API kvrt_status kvrt_token_to_piece(const kvrt_model* model, int32_t token,
                                         char* text, size_t capacity,
                                         size_t* text_len);

/* ---------------------------------------------------------------------------
 * Session
 * ------------------------------------------------------------------------- */

/**
 * @brief Creates an empty session (no tokens, no blocks yet).
 *
 * Work buffers are sized here, so decoding does not allocate except KV
 * blocks from the runtime's pool.
 *
 * @param model In: the model; the session keeps a reference to it.
 * @param params In: settings, or NULL for the defaults. Not kept.
 * @param out Out: the session, owned by the caller (kvrt_session_destroy()).
 *            Set to NULL on error.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL @p model or @p out,
 *         unknown format, n_ctx above
 *         the model's context length); ::KVRT_ERR_STRUCT_SIZE;
 *         ::KVRT_ERR_UNSUPPORTED (a format or K/V combination this build does
 *         not support, named in the message); ::KVRT_ERR_OUT_OF_MEMORY.
 * @note Any thread may call it.
 */
KVRT_API kvrt_status kvrt_session_create(kvrt_model* model,
                                         const kvrt_session_params* params,
                                         kvrt_session** out);

/**
 * @brief Destroys a session and returns its KV blocks to the pool.
 *
 * A suspended session's held snapshot is freed and its spill file removed.
 * @param session In: the session, or NULL (nothing happens).
 */
KVRT_API void kvrt_session_destroy(kvrt_session* session);

/**
 * @brief Appends @p n_tokens tokens to the session and computes the logits of
 *        the last one.
 *
 * One token is a decode step; more are a prefill, processed in batches of up
 * to max_batch tokens. All KV blocks the tokens need are taken from the pool
 * before any work starts, so a refused call changes nothing.
 *
 * @param session In/out: the session.
 * @param tokens In: @p n_tokens ids, each in [0, n_vocab).
 * @param n_tokens In: at least 1.
 * @param logits Out: n_vocab floats for the last token, or NULL to skip the
 *               output layer (for example for a prompt whose logits are not
 *               needed).
 * @param logits_capacity In: room in @p logits, in floats (>= n_vocab when
 *               @p logits is not NULL).
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL, n_tokens 0);
 *         ::KVRT_ERR_OUT_OF_RANGE (a token id outside the vocabulary);
 *         ::KVRT_ERR_CONTEXT_FULL (the tokens would exceed n_ctx);
 *         ::KVRT_ERR_BUFFER_TOO_SMALL (@p logits_capacity < n_vocab);
 *         ::KVRT_ERR_OUT_OF_MEMORY (the pool's budget cannot hold the new
 *         blocks); ::KVRT_ERR_ABORTED. On any error the session is unchanged
 *         and remains usable. A suspended session is resumed first (see
 *         kvrt_session_suspend()); the resume's errors are returned too, and
 *         on any error it stays suspended.
 * @note One thread at a time per session.
 */
KVRT_API kvrt_status kvrt_decode_step(kvrt_session* session,
                                      const int32_t* tokens, size_t n_tokens,
                                      float* logits, size_t logits_capacity);

/**
 * @brief Sets the session's sampler and reseeds its random generator.
 * @param session In/out: the session.
 * @param params In: settings, or NULL for the defaults.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (negative or non-finite
 *         temperature, top_p outside (0, 1]); ::KVRT_ERR_STRUCT_SIZE. On
 *         error the previous sampler is kept. A suspended session is
 *         resumed first and stays suspended on any error (see
 *         kvrt_session_suspend()).
 * @note One thread at a time per session.
 */
KVRT_API kvrt_status kvrt_session_set_sampler(kvrt_session* session,
                                              const kvrt_sampler_params* params);

/**
 * @brief Draws the next token from logits with the session's sampler.
 *
 * The draw advances the session's random generator; the same seed and the
 * same logits give the same tokens.
 *
 * @param session In/out: the session (its generator advances).
 * @param logits In: @p n_logits scores (n_vocab of them); not modified.
 * @param n_logits In: must equal the model's n_vocab.
 * @param token Out: the chosen id.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL, wrong count, NaN in
 *         the logits). A suspended session is resumed first and stays
 *         suspended on any error (see kvrt_session_suspend()).
 * @note One thread at a time per session.
 */
KVRT_API kvrt_status kvrt_session_sample(kvrt_session* session,
                                         const float* logits, size_t n_logits,
                                         int32_t* token);

/**
 * @brief Shortens the session to its first @p n_tokens tokens.
 *
 * Blocks past the new end go back to the pool.
 * @param session In/out: the session.
 * @param n_tokens In: at most the session's current token count.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT; ::KVRT_ERR_OUT_OF_RANGE
 *         (more tokens than the session holds; nothing changes). A suspended
 *         session is resumed first and stays suspended on any error (see
 *         kvrt_session_suspend()).
 * @note One thread at a time per session.
 */
KVRT_API kvrt_status kvrt_session_rewind(kvrt_session* session, size_t n_tokens);

/**
 * @brief Copies the session's token ids.
 * @param session In: the session.
 * @param tokens Out: the ids, or NULL with @p capacity 0 to query the count
 *               (::KVRT_OK with the count in @p n_tokens).
 * @param capacity In: room in @p tokens.
 * @param n_tokens Out: the count (written or needed).
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT; ::KVRT_ERR_BUFFER_TOO_SMALL.
 */
KVRT_API kvrt_status kvrt_session_get_tokens(const kvrt_session* session,
                                             int32_t* tokens, size_t capacity,
                                             size_t* n_tokens);

/**
 * @brief Reports the session's tokens, blocks and bytes.
 * @param session In: the session.
 * @param stats In/out: struct_size set by the caller; filled up to it.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT; ::KVRT_ERR_STRUCT_SIZE.
 */
KVRT_API kvrt_status kvrt_session_get_stats(const kvrt_session* session,
                                            kvrt_session_stats* stats);

/**
 * @brief Asks a running kvrt_decode_step() on @p session to stop early.
 *
 * This is the one call that may be made from another thread while the
 * session is in use. The decode returns ::KVRT_ERR_ABORTED with the session
 * unchanged; the request is cleared when a decode starts. On a suspended
 * session it does nothing.
 * @param session In: the session.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT.
 */
KVRT_API kvrt_status kvrt_session_request_abort(kvrt_session* session);

/* ---------------------------------------------------------------------------
 * Snapshot
 *
 * A snapshot holds everything needed to continue a session bit for bit: the
 * model's fingerprint, the cache's formats and shapes, the token ids, the KV
 * blocks exactly as stored (never recomputed or re-quantized), and the
 * sampler's settings and generator state. Its byte layout is specified in
 * docs/snapshot-format.md and has its own version number. Sections are
 * zstd-compressed and every part is checksummed; a load validates the whole
 * snapshot before it returns a session, and a failed load leaves nothing
 * allocated.
 *
 * The same bytes go to a file (written atomically), to a caller's buffer, or
 * through caller-supplied callbacks.
 * ------------------------------------------------------------------------- */

/**
 * @brief Parameters of the kvrt_session_save*() and kvrt_session_load*()
 *        functions.
 *
 * Initialize with kvrt_snapshot_default_params(); the library reads
 * min(struct_size, its own size) bytes and uses defaults for the rest.
 */
typedef struct kvrt_snapshot_params {
  uint32_t struct_size;       /**< sizeof(kvrt_snapshot_params), set by the init function. */
  int32_t compression_level;  /**< zstd level used by saves, from zstd's minimum (negative: faster) to its maximum (22); 0 means zstd's default (3). Default 3. Loads ignore it. */
  uint32_t reserved0;         /**< Must be 0. */
  uint32_t reserved1;         /**< Must be 0. */
} kvrt_snapshot_params;

/**
 * @brief Write callback of kvrt_session_save_stream().
 * @param user The caller's pointer, passed through.
 * @param data In: @p size bytes to write (only valid during the call).
 * @param size Bytes in @p data, at least 1.
 * @return 0 when all @p size bytes were written; anything else is a failure
 *         and ends the save with ::KVRT_ERR_IO.
 */
typedef int (*kvrt_write_fn)(void* user, const void* data, size_t size);

/**
 * @brief Read callback of kvrt_session_load_stream().
 * @param user The caller's pointer, passed through.
 * @param data Out: room for @p size bytes.
 * @param size Bytes wanted, at least 1.
 * @return The bytes read, 1..@p size (fewer than asked is fine); 0 at the
 *         end of the data; a negative value is a failure and ends the load
 *         with ::KVRT_ERR_IO.
 */
typedef int64_t (*kvrt_read_fn)(void* user, void* data, size_t size);

/**
 * @brief Fills @p params with the defaults and sets struct_size.
 * @param params Out: the struct to fill; ignored when NULL.
 * @note Any thread may call it.
 */
KVRT_API void kvrt_snapshot_default_params(kvrt_snapshot_params* params);

/**
 * @brief Saves a session to a file, atomically.
 *
 * The snapshot is written to a new temporary file in the same folder
 * (named ".<file name>.tmp.<unique suffix>"), flushed and synced, then
 * renamed over @p path, and the folder is synced. Readers of @p path see
 * either the old file or the complete new one. On any failure the temporary
 * file is removed and an existing file at @p path is left untouched (a
 * process killed mid-save may leave its temporary file behind, never a
 * partial @p path).
 *
 * @param session In: the session; it is not changed.
 * @param path In: destination path (UTF-8, NUL-terminated). Not kept.
 * @param params In: settings, or NULL for the defaults. Not kept.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL @p session or @p path,
 *         a compression level outside zstd's range, a nonzero reserved
 *         field); ::KVRT_ERR_STRUCT_SIZE; ::KVRT_ERR_IO (the folder is not
 *         writable, a write, sync or rename failed; the message names the
 *         path and the system's reason); ::KVRT_ERR_OUT_OF_MEMORY. On error
 *         the session is unchanged. Every KV format is saved, quantized
 *         (q8, q4) caches with their f16 tail block. A suspended session
 *         writes the snapshot it holds (see kvrt_session_suspend()).
 * @note One thread at a time per session (the session is read, not changed,
 *       but it must not be decoding meanwhile).
 */
KVRT_API kvrt_status kvrt_session_save(kvrt_session* session, const char* path,
                                       const kvrt_snapshot_params* params);

/**
 * @brief Loads a session saved by kvrt_session_save() (or any save function)
 *        from a file.
 *
 * The new session has the saved formats, n_ctx and max_batch, the saved
 * tokens and KV bytes, and the saved sampler settings and generator state:
 * decoding and sampling continue exactly as the saved session would have
 * (bitwise-identical logits on the same runtime settings).
 *
 * @param model In: the model; it must be the one the snapshot was made with
 *              (same fingerprint of weights and hyper-parameters). The new
 *              session keeps a reference to it.
 * @param path In: file path (UTF-8, NUL-terminated). Not kept.
 * @param params In: settings, or NULL for the defaults. Not kept.
 * @param out Out: the new session, owned by the caller
 *            (kvrt_session_destroy()). Set to NULL on error.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL arguments, a nonzero
 *         reserved field); ::KVRT_ERR_STRUCT_SIZE; ::KVRT_ERR_IO (cannot
 *         open or read the file); ::KVRT_ERR_CORRUPT (not a snapshot,
 *         truncated, a checksum or a value that does not hold; the message
 *         names the field or section and the offset);
 *         ::KVRT_ERR_VERSION (a newer format version or a required feature
 *         this library does not know); ::KVRT_ERR_MODEL_MISMATCH (made with
 *         another model, even one of the same shapes);
 *         ::KVRT_ERR_UNSUPPORTED (the runtime's block_tokens differs from the
 *         snapshot's, both named; a window kind or format this build does not
 *         support); ::KVRT_ERR_OUT_OF_MEMORY (the runtime's KV budget cannot
 *         hold the session's blocks, or host memory ran out). On error
 *         nothing stays allocated.
 * @note Any thread may call it.
 */
KVRT_API kvrt_status kvrt_session_load(kvrt_model* model, const char* path,
                                       const kvrt_snapshot_params* params,
                                       kvrt_session** out);

/**
 * @brief Saves a session into a caller's buffer.
 *
 * With @p buffer NULL and @p capacity 0 it only computes the exact size and
 * returns ::KVRT_OK. The size does not change while the session is not
 * changed and the parameters are the same. A suspended session writes the
 * snapshot it holds (see kvrt_session_suspend()).
 *
 * @param session In: the session; it is not changed.
 * @param buffer Out: room for @p capacity bytes, or NULL with @p capacity 0.
 * @param capacity In: bytes of room in @p buffer.
 * @param size Out: bytes written, or needed (size query,
 *             ::KVRT_ERR_BUFFER_TOO_SMALL).
 * @param params In: settings, or NULL for the defaults. Not kept.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL @p session or
 *         @p size, NULL @p buffer with a nonzero @p capacity, a bad level or
 *         reserved field); ::KVRT_ERR_STRUCT_SIZE; ::KVRT_ERR_BUFFER_TOO_SMALL
 *         (@p size holds the bytes needed; the buffer's contents are then
 *         unspecified); ::KVRT_ERR_OUT_OF_MEMORY. On error the session is
 *         unchanged.
 * @note One thread at a time per session.
 */
KVRT_API kvrt_status kvrt_session_save_buffer(kvrt_session* session, void* buffer,
                                              size_t capacity, size_t* size,
                                              const kvrt_snapshot_params* params);

/**
 * @brief Loads a session from a snapshot in memory (see kvrt_session_load()).
 *
 * The buffer must hold exactly one snapshot: trailing bytes are refused.
 *
 * @param model In: the model the snapshot was made with; the session keeps a
 *              reference to it.
 * @param buffer In: @p size bytes; not kept, not modified.
 * @param size In: bytes in @p buffer.
 * @param params In: settings, or NULL for the defaults. Not kept.
 * @param out Out: the new session, owned by the caller. Set to NULL on error.
 * @return As kvrt_session_load(), without ::KVRT_ERR_IO.
 * @note Any thread may call it.
 */
KVRT_API kvrt_status kvrt_session_load_buffer(kvrt_model* model, const void* buffer,
                                              size_t size,
                                              const kvrt_snapshot_params* params,
                                              kvrt_session** out);

/**
 * @brief Saves a session through a write callback (a save archive, a
 *        key-value store, a socket).
 *
 * The snapshot is produced in pieces (at most about 1 MiB each) while it is
 * compressed, so memory use does not grow with the session's length. A
 * suspended session writes the snapshot it holds (see
 * kvrt_session_suspend()).
 *
 * @param session In: the session; it is not changed.
 * @param write In: called with each piece, in order.
 * @param user In: passed to @p write; may be NULL.
 * @param params In: settings, or NULL for the defaults. Not kept.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL @p session or
 *         @p write, a bad level or reserved field); ::KVRT_ERR_STRUCT_SIZE;
 *         ::KVRT_ERR_IO (@p write returned nonzero; no further call is made;
 *         what was written so far is incomplete and a load of it fails with
 *         ::KVRT_ERR_CORRUPT); ::KVRT_ERR_OUT_OF_MEMORY. On error the session
 *         is unchanged and the library holds nothing from the call.
 * @note One thread at a time per session; @p write runs on the calling
 *       thread and must not call kvrt functions on the same session.
 */
KVRT_API kvrt_status kvrt_session_save_stream(kvrt_session* session, kvrt_write_fn write,
                                              void* user,
                                              const kvrt_snapshot_params* params);

/**
 * @brief Loads a session through a read callback (see kvrt_session_load()).
 *
 * Exactly the snapshot's bytes are requested: the load never reads past the
 * snapshot's end record, so a snapshot may be followed by other data in the
 * caller's stream.
 *
 * @param model In: the model the snapshot was made with; the session keeps a
 *              reference to it.
 * @param read In: called until the snapshot is complete.
 * @param user In: passed to @p read; may be NULL.
 * @param params In: settings, or NULL for the defaults. Not kept.
 * @param out Out: the new session, owned by the caller. Set to NULL on error.
 * @return As kvrt_session_load(); ::KVRT_ERR_IO when @p read returns a
 *         negative value or more bytes than asked; ::KVRT_ERR_CORRUPT when it
 *         reports the end before the snapshot is complete.
 * @note Any thread may call it; @p read runs on the calling thread.
 */
KVRT_API kvrt_status kvrt_session_load_stream(kvrt_model* model, kvrt_read_fn read,
                                              void* user,
                                              const kvrt_snapshot_params* params,
                                              kvrt_session** out);

/**
 * @brief What kvrt_snapshot_inspect() found in a snapshot: its header and
 *        the size of each section.
 *
 * Set struct_size to sizeof(kvrt_snapshot_info) before the call; the library
 * fills min(struct_size, its own size) bytes. Fields are only appended.
 */
typedef struct kvrt_snapshot_info {
  uint32_t struct_size;      /**< Set by the caller to sizeof(kvrt_snapshot_info). */
  uint32_t format_version;   /**< The snapshot format's own version (docs/snapshot-format.md). */
  uint32_t required_flags;   /**< Features a reader must know; bit 0: quantized cache with an f16 tail stage section. */
  uint32_t optional_flags;   /**< Features a reader may ignore (none defined). */
  uint64_t fingerprint_lo;   /**< Low 64 bits of the model fingerprint the snapshot was made with. */
  uint64_t fingerprint_hi;   /**< High 64 bits of the model fingerprint. */
  uint32_t n_layer;          /**< Layers of the cache. */
  uint32_t n_head_kv;        /**< KV heads per layer. */
  uint32_t head_dim;         /**< Elements per head. */
  uint32_t n_vocab;          /**< Vocabulary size of the model. */
  uint32_t block_tokens;     /**< Positions per KV block. */
  uint32_t kv_format_k;      /**< Key storage format, a ::kvrt_kv_format value. */
  uint32_t kv_format_v;      /**< Value storage format, a ::kvrt_kv_format value. */
  uint32_t n_ctx;            /**< The session's context length, tokens. */
  uint32_t n_tokens;         /**< Tokens held by the session. */
  uint32_t max_batch;        /**< The session's prefill batch, tokens. */
  uint64_t block_bytes;      /**< Bytes of one KV block as stored. */
  float temperature;         /**< Saved sampler temperature (0: greedy). */
  int32_t top_k;             /**< Saved sampler top-k (0: all). */
  float top_p;               /**< Saved sampler top-p. */
  uint32_t kv_plane_width;   /**< Byte-plane width of the KV section (0: none). */
  uint64_t seed;             /**< Seed the saved sampler was configured with. */
  uint64_t tokens_raw_bytes;    /**< Tokens section: uncompressed bytes. */
  uint64_t tokens_stored_bytes; /**< Tokens section: bytes in the snapshot, framing and checksums included. */
  uint64_t kv_raw_bytes;        /**< KV section: uncompressed bytes. */
  uint64_t kv_stored_bytes;     /**< KV section: bytes in the snapshot. */
  uint64_t stage_raw_bytes;     /**< Stage section (quantized caches only, else 0): uncompressed bytes. */
  uint64_t stage_stored_bytes;  /**< Stage section: bytes in the snapshot. */
  uint64_t total_bytes;         /**< The whole snapshot, end record included. */
} kvrt_snapshot_info;

/**
 * @brief Reads a snapshot file, verifies every checksum and value in it
 *        without building a session, and reports its header and sizes.
 *
 * Without a model it needs no weights: it checks the magic, version, flags,
 * header checksum, the values' ranges, every section's zstd frame, length
 * and both checksums, the token ids against the header's vocabulary, and the
 * end record. With a model it also checks, as kvrt_session_load() would, that
 * the snapshot was made with that model (fingerprint and shapes) and that the
 * model's runtime has the snapshot's block_tokens. It allocates the KV
 * section's uncompressed size (to check its checksum in logical order).
 *
 * @param path In: file path (UTF-8, NUL-terminated). Not kept.
 * @param model In: the model to check against, or NULL for none. Not kept.
 * @param info In/out: struct_size set by the caller; zeroed up to it, then
 *             filled as far as the snapshot was read: the header fields once
 *             the header checksum holds, each section's sizes once that
 *             section is verified, total_bytes once the end record is.
 *             So after an error the fields read before it are still set.
 * @return ::KVRT_OK (every check passed); ::KVRT_ERR_INVALID_ARGUMENT (NULL
 *         @p path or @p info); ::KVRT_ERR_STRUCT_SIZE; ::KVRT_ERR_IO
 *         (cannot open or read the file); ::KVRT_ERR_CORRUPT (as
 *         kvrt_session_load(), also for bytes after the end record);
 *         ::KVRT_ERR_VERSION; ::KVRT_ERR_MODEL_MISMATCH and
 *         ::KVRT_ERR_UNSUPPORTED (only with @p model, as kvrt_session_load(),
 *         and for a KV format this build does not know);
 *         ::KVRT_ERR_OUT_OF_MEMORY. The message (kvrt_last_error()) names the
 *         field or section and offset. Nothing stays allocated after the call.
 * @note Any thread may call it.
 */
KVRT_API kvrt_status kvrt_snapshot_inspect(const char* path, const kvrt_model* model,
                                           kvrt_snapshot_info* info);

/**
 * @brief Like kvrt_snapshot_inspect(), for a snapshot in memory.
 *
 * @param buffer In: @p size bytes holding exactly one snapshot; not kept,
 *               not modified.
 * @param size In: bytes in @p buffer.
 * @param model In: the model to check against, or NULL for none. Not kept.
 * @param info In/out: as kvrt_snapshot_inspect().
 * @return As kvrt_snapshot_inspect(), without ::KVRT_ERR_IO; NULL @p buffer
 *         with a nonzero @p size, or NULL @p info, is
 *         ::KVRT_ERR_INVALID_ARGUMENT.
 * @note Any thread may call it.
 */
KVRT_API kvrt_status kvrt_snapshot_inspect_buffer(const void* buffer, size_t size,
                                                  const kvrt_model* model,
                                                  kvrt_snapshot_info* info);

/* ---------------------------------------------------------------------------
 * Session store
 *
 * A store is a folder holding many saved sessions. Their full KV blocks
 * (which never change once full) go into one append-only pack, each stored
 * once under a 128-bit hash of its bytes; each saved name is a small
 * manifest listing its blocks plus its tokens, partial tail block and
 * sampler state. Saving a session again under the same name writes only the
 * blocks that are new since the last save, and sessions that share a prefix
 * (the same system prompt, fed the same way) share its blocks. The layout is
 * specified in docs/snapshot-format.md ("Session stores") with its own
 * version number.
 *
 * Crash safety: new blocks are appended and synced before the manifest that
 * names them is written to a temporary file and renamed into place, so a
 * process killed mid-save leaves every name loadable as it was. One handle
 * at a time may have a store open (an advisory lock on "<folder>/lock", held
 * until kvrt_store_close()); a second open, in this or another process,
 * fails with ::KVRT_ERR_IO. Removed names leave their blocks in the pack
 * until kvrt_store_compact().
 * ------------------------------------------------------------------------- */

/** @brief An open session store (see kvrt_store_open()). */
typedef struct kvrt_store kvrt_store;

/**
 * @brief Parameters of kvrt_store_open(). Initialize with
 *        kvrt_store_default_params(); the library reads
 *        min(struct_size, its own size) bytes.
 */
typedef struct kvrt_store_params {
  uint32_t struct_size;  /**< sizeof(kvrt_store_params), set by the init function. */
  uint32_t reserved0;    /**< Must be 0. */
  uint64_t reserved1;    /**< Must be 0. */
} kvrt_store_params;

/**
 * @brief What one kvrt_store_save() wrote. Set struct_size to
 *        sizeof(kvrt_store_save_stats); the library fills
 *        min(struct_size, its own size) bytes.
 */
typedef struct kvrt_store_save_stats {
  uint32_t struct_size;         /**< Set by the caller to sizeof(kvrt_store_save_stats). */
  uint32_t blocks_total;        /**< Full KV blocks of the session, all named by the manifest. */
  uint32_t blocks_written;      /**< Of those, blocks appended to the pack by this save. */
  uint32_t blocks_reused;       /**< Of those, blocks the store already held (or repeated in the session). */
  uint64_t pack_bytes_written;  /**< Bytes appended to the pack. */
  uint64_t manifest_bytes;      /**< Bytes of the new manifest (tokens, tail block, block list, header). */
} kvrt_store_save_stats;

/**
 * @brief What kvrt_store_inspect() found about one saved name.
 *
 * Set struct_size to sizeof(kvrt_store_entry_info); the library fills
 * min(struct_size, its own size) bytes.
 */
typedef struct kvrt_store_entry_info {
  uint32_t struct_size;        /**< Set by the caller to sizeof(kvrt_store_entry_info). */
  uint32_t n_tokens;           /**< Tokens of the saved session. */
  uint32_t n_blocks;           /**< Full KV blocks it names in the pack. */
  uint32_t kv_format_k;        /**< Key storage format, a ::kvrt_kv_format value. */
  uint32_t kv_format_v;        /**< Value storage format. */
  uint32_t n_ctx;              /**< The session's context length, tokens. */
  uint64_t manifest_bytes;     /**< Bytes of its manifest file. */
  uint64_t block_stored_bytes; /**< Bytes its blocks take in the pack (shared ones counted for each name). */
  uint64_t block_raw_bytes;    /**< Uncompressed bytes of its blocks. */
  float temperature;           /**< Saved sampler temperature (0: greedy). */
  int32_t top_k;               /**< Saved sampler top-k (0: all). */
  float top_p;                 /**< Saved sampler top-p. */
  uint32_t block_tokens;       /**< Positions per KV block. */
  uint64_t seed;               /**< Seed the saved sampler was configured with. */
} kvrt_store_entry_info;

/**
 * @brief Fills @p params with the defaults and sets struct_size.
 * @param params Out: the struct to fill; ignored when NULL.
 * @note Any thread may call it.
 */
KVRT_API void kvrt_store_default_params(kvrt_store_params* params);

/**
 * @brief Opens a session store, creating the folder and its pack when
 *        missing, and takes the store's lock.
 *
 * Opening reads the pack's record headers to index its blocks (not their
 * data). A record cut short at the pack's end (a save killed mid-append,
 * named by no manifest) is cut off; a bad record that a manifest may need is
 * left in place and reported by the loads that read it.
 *
 * @param dir In: the folder (UTF-8, NUL-terminated). Not kept.
 * @param params In: settings, or NULL for the defaults. Not kept.
 * @param out Out: the store, owned by the caller (kvrt_store_close()). Set
 *            to NULL on error.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL or empty @p dir, NULL
 *         @p out, a nonzero reserved field); ::KVRT_ERR_STRUCT_SIZE;
 *         ::KVRT_ERR_IO (the folder cannot be created or read, or the store
 *         is locked by another open handle); ::KVRT_ERR_CORRUPT (the pack's
 *         header is damaged); ::KVRT_ERR_VERSION (a newer pack version);
 *         ::KVRT_ERR_OUT_OF_MEMORY. On error nothing stays open or locked.
 * @note Any thread may call it.
 */
KVRT_API kvrt_status kvrt_store_open(const char* dir, const kvrt_store_params* params,
                                     kvrt_store** out);

/**
 * @brief Closes a store and releases its lock.
 * @param store The store; NULL is ignored. Sessions loaded from it are
 *              independent of it and stay valid.
 * @note One thread, with no other call on the store running.
 */
KVRT_API void kvrt_store_close(kvrt_store* store);

/**
 * @brief Saves a session under @p name, replacing what the name held.
 *
 * Full blocks the store lacks are appended to the pack and synced; then the
 * name's manifest is written to a temporary file and renamed into place.
 * Readers see the old or the new session under @p name, never a mix.
 *
 * @param store In: the store.
 * @param session In: the session; it is not changed.
 * @param name In: 1 to 200 bytes of A-Z a-z 0-9 '.' '_' '-', not starting
 *             with '.'. Not kept.
 * @param params In: compression level, or NULL for the defaults. Not kept.
 * @param stats Out: what was written, or NULL; struct_size set by the
 *              caller. Left as it was on error.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL arguments, a bad
 *         name, level or reserved field); ::KVRT_ERR_STRUCT_SIZE;
 *         ::KVRT_ERR_IO (a write or sync failed; the message names the file
 *         and the system's reason); ::KVRT_ERR_OUT_OF_MEMORY. On error the
 *         session is unchanged and @p name holds what it held; blocks already
 *         appended and synced stay in the pack, unnamed, for later saves.
 * @note Any thread; calls on one store are serialized, and the session must
 *       not be decoding meanwhile.
 */
KVRT_API kvrt_status kvrt_store_save(kvrt_store* store, kvrt_session* session, const char* name,
                                     const kvrt_snapshot_params* params,
                                     kvrt_store_save_stats* stats);

/**
 * @brief Loads the session saved under @p name.
 *
 * The manifest is verified whole (checksums, model fingerprint, shapes,
 * version, sizes) before anything is allocated; each block read from the
 * pack is verified (record checksums and the hash of its decoded bytes)
 * before the session is returned. The session continues exactly as the
 * saved one would have, as after kvrt_session_load().
 *
 * @param store In: the store.
 * @param model In: the model the session was saved with; the new session
 *              keeps a reference to it.
 * @param name In: a saved name. Not kept.
 * @param params In: settings, or NULL for the defaults. Not kept.
 * @param out Out: the new session, owned by the caller. Set to NULL on error.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL arguments, a bad name
 *         or reserved field); ::KVRT_ERR_STRUCT_SIZE; ::KVRT_ERR_NOT_FOUND
 *         (no such name); ::KVRT_ERR_IO; ::KVRT_ERR_CORRUPT (the manifest or a
 *         block it names is damaged, truncated or missing from the pack; the
 *         message names the block, its key and its pack offset);
 *         ::KVRT_ERR_VERSION; ::KVRT_ERR_MODEL_MISMATCH; ::KVRT_ERR_UNSUPPORTED;
 *         ::KVRT_ERR_OUT_OF_MEMORY, all as kvrt_session_load(). On error
 *         nothing stays allocated.
 * @note Any thread; calls on one store are serialized.
 */
KVRT_API kvrt_status kvrt_store_load(kvrt_store* store, kvrt_model* model, const char* name,
                                     const kvrt_snapshot_params* params, kvrt_session** out);

/**
 * @brief Removes a saved name. Its blocks stay in the pack (shared ones are
 *        still used by other names) until kvrt_store_compact().
 * @param store In: the store.
 * @param name In: a saved name. Not kept.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL arguments, a bad
 *         name); ::KVRT_ERR_NOT_FOUND (no such name); ::KVRT_ERR_IO. On error
 *         the store is unchanged.
 * @note Any thread; calls on one store are serialized.
 */
KVRT_API kvrt_status kvrt_store_remove(kvrt_store* store, const char* name);

/**
 * @brief Rewrites the pack with only the blocks that saved names use,
 *        dropping those of removed names and of saves that never finished.
 *
 * The new pack is written to a temporary file, synced and renamed over the
 * old one, so a crash leaves the old pack or the new one, and every name
 * loads either way. Manifests are not rewritten: their blocks are found by
 * key in the new pack. It reads every manifest and copies every block it
 * keeps (checking each record's checksums), so it takes about as long as
 * reading the store once.
 *
 * @param store In: the store.
 * @param bytes_freed Out: bytes the pack shrank by, or NULL.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL @p store);
 *         ::KVRT_ERR_CORRUPT (a manifest cannot be read, or a block a name
 *         uses is damaged or missing; nothing is compacted then and the
 *         message names it); ::KVRT_ERR_IO; ::KVRT_ERR_OUT_OF_MEMORY. On
 *         error the store is as it was, unless the new pack was already in
 *         place and could not be reopened (::KVRT_ERR_IO): then every later
 *         call on the handle fails and the store must be reopened.
 * @note Any thread; calls on one store are serialized.
 */
KVRT_API kvrt_status kvrt_store_compact(kvrt_store* store, uint64_t* bytes_freed);

/**
 * @brief Lists the saved names, sorted, each followed by a NUL byte.
 *
 * @param store In: the store.
 * @param buffer Out: room for @p capacity bytes, or NULL with @p capacity 0
 *               (a size query).
 * @param capacity In: bytes of room in @p buffer.
 * @param size Out: bytes of the list (names and their NULs); 0 when the store
 *             is empty.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL @p store or @p size,
 *         NULL @p buffer with a nonzero @p capacity);
 *         ::KVRT_ERR_BUFFER_TOO_SMALL (@p size holds the bytes needed; the
 *         buffer is unchanged); ::KVRT_ERR_IO.
 * @note Any thread; calls on one store are serialized.
 */
KVRT_API kvrt_status kvrt_store_list(kvrt_store* store, char* buffer, size_t capacity, size_t* size);

/**
 * @brief Verifies a saved name without building a session: its manifest
 *        and every block it names (record checksums, decoding, block hash).
 *
 * @param store In: the store.
 * @param name In: a saved name. Not kept.
 * @param model In: the model to check against (fingerprint, shapes, the
 *              runtime's block_tokens), or NULL for none. Not kept.
 * @param info In/out: struct_size set by the caller; zeroed up to it, filled
 *             on success.
 * @return As kvrt_store_load(), without ::KVRT_ERR_MODEL_MISMATCH and
 *         ::KVRT_ERR_UNSUPPORTED when @p model is NULL. Nothing stays
 *         allocated after the call.
 * @note Any thread; calls on one store are serialized.
 */
KVRT_API kvrt_status kvrt_store_inspect(kvrt_store* store, const char* name, const kvrt_model* model,
                                        kvrt_store_entry_info* info);

/* ---------------------------------------------------------------------------
 * Suspend and resume
 *
 * A suspended session gives its KV blocks back to the runtime's pool and
 * frees its work buffers; it keeps only its snapshot (the bytes
 * kvrt_session_save() writes), in host memory or in a file the library
 * creates in a folder the caller names, and its token ids. Resuming rebuilds
 * the session from that snapshot, validated as a load is, exactly as it was.
 * An idle conversation thus costs its compressed snapshot instead of its
 * cache, and its budget serves the sessions that are decoding.
 * ------------------------------------------------------------------------- */

/**
 * @brief Parameters of kvrt_session_suspend().
 *
 * Initialize with kvrt_suspend_default_params(); the library reads
 * min(struct_size, its own size) bytes and uses defaults for the rest.
 */
typedef struct kvrt_suspend_params {
  uint32_t struct_size;       /**< sizeof(kvrt_suspend_params), set by the init function. */
  int32_t compression_level;  /**< zstd level of the held snapshot, from zstd's minimum (negative: faster) to its maximum (22); 0 means 1. Default 1: suspending is on the path of the next request, so speed counts more than size (docs/benchmarks.md). */
  uint32_t reserved0;         /**< Must be 0. */
  uint32_t reserved1;         /**< Must be 0. */
  /** NULL (the default): the snapshot stays in host memory. Otherwise an
   *  existing folder (UTF-8, NUL-terminated; not kept) in which the library
   *  creates a new file, "kvrt-suspend-<pid>-<n>-<t>.kvs", readable and
   *  writable by its owner only, and not synced to disk (it only has to
   *  live as long as the suspension). The file is removed when the session
   *  is resumed or destroyed; a process that ends with sessions still
   *  suspended leaves their files behind. */
  const char* spill_dir;
} kvrt_suspend_params;

/**
 * @brief Fills @p params with the defaults and sets struct_size.
 * @param params Out: the struct to fill; ignored when NULL.
 * @note Any thread may call it.
 */
KVRT_API void kvrt_suspend_default_params(kvrt_suspend_params* params);

/**
 * @brief Suspends a session: writes its snapshot, then gives its KV blocks
 *        back to the runtime's pool.
 *
 * The snapshot is the one kvrt_session_save() would write at the same
 * compression level. Once it is complete, the session's blocks return to the
 * pool: the runtime's kv_used_bytes and n_blocks_used drop by the session's
 * kv_bytes and n_blocks, and other sessions may use that budget. The session's work buffers and, for q8/q4 caches, its
 * f16 tail stage are freed too. The pool keeps the memory it took from the
 * system (kv_reserved_bytes) for its next blocks. The token ids (4 bytes
 * each) stay in host memory.
 *
 * While the session is suspended:
 *  - kvrt_decode_step(), kvrt_session_sample(), kvrt_session_rewind() and
 *    kvrt_session_set_sampler() resume it first, as kvrt_session_resume()
 *    does. If the resume or the call itself fails, the session stays
 *    suspended, as it was, and the call returns that status (for example
 *    ::KVRT_ERR_OUT_OF_MEMORY when the budget cannot hold the blocks).
 *  - kvrt_session_save(), kvrt_session_save_buffer() and
 *    kvrt_session_save_stream() write the held snapshot without resuming:
 *    exactly the bytes kvrt_session_save() would have written at the
 *    suspend's compression level. Their params are checked as usual, but
 *    their compression_level is not applied. A spill file that is gone or
 *    changed fails them as it fails kvrt_session_resume().
 *  - kvrt_session_get_tokens() and kvrt_session_get_stats() answer without
 *    resuming (see kvrt_session_stats::suspended).
 *  - kvrt_session_request_abort() does nothing: there is no decode to stop.
 *  - kvrt_session_destroy() frees everything and removes the spill file.
 *
 * Suspending a session that is already suspended checks @p params and
 * returns ::KVRT_OK without changing anything: its snapshot stays where and
 * as it is.
 *
 * @param session In/out: the session.
 * @param params In: settings, or NULL for the defaults. Not kept.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL @p session, a
 *         compression level outside zstd's range, a nonzero reserved field,
 *         an empty spill_dir); ::KVRT_ERR_STRUCT_SIZE; ::KVRT_ERR_IO
 *         (spill_dir is not a folder in which the process can create a
 *         file, or a write failed, for example on a full disk; the message
 *         names the folder or file and the system's reason; no file is left
 *         behind); ::KVRT_ERR_OUT_OF_MEMORY (host memory). On error the
 *         session is live and unchanged.
 * @note One thread at a time per session, as for decoding;
 *       kvrt_session_request_abort() may still be called from another
 *       thread at any time.
 */
KVRT_API kvrt_status kvrt_session_suspend(kvrt_session* session,
                                          const kvrt_suspend_params* params);

/**
 * @brief Resumes a suspended session: rebuilds it from its snapshot.
 *
 * The snapshot is read and validated as kvrt_session_load() does (every
 * checksum and value; a spill file must moreover still hold exactly the
 * bytes written at the suspend). The session then takes its blocks from the
 * pool and continues exactly as it would have without the suspend: the same
 * tokens, bitwise-identical logits, its sampler's settings and generator
 * state. The held snapshot is freed and the spill file removed.
 *
 * Resuming a session that is not suspended does nothing and returns
 * ::KVRT_OK.
 *
 * @param session In/out: the session.
 * @return ::KVRT_OK; ::KVRT_ERR_INVALID_ARGUMENT (NULL @p session);
 *         ::KVRT_ERR_OUT_OF_MEMORY (the runtime's KV budget cannot hold the
 *         session's blocks now, or host memory ran out: free blocks, for
 *         example by suspending or destroying other sessions, and try
 *         again); ::KVRT_ERR_IO (the spill file is gone or cannot be read);
 *         ::KVRT_ERR_CORRUPT (the spill file's bytes changed). On error the
 *         session stays suspended and unchanged, holding its snapshot (and
 *         spill file, if still there): it may be resumed again, saved or
 *         destroyed.
 * @note One thread at a time per session; kvrt_session_request_abort()
 *       may still be called from another thread at any time.
 */
KVRT_API kvrt_status kvrt_session_resume(kvrt_session* session);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* KVRT_H */
