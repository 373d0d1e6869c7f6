// Helpers shared by the kvrt subcommands: option parsing, value and size
// parsing, model path resolution, handle ownership and error reporting.
#pragma once

#include <kvrt/kvrt.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvrt_tools {

// Exit codes of the tool.
constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;  // a library error or a missing file
constexpr int kExitUsage = 2;    // an unknown option or a bad value

// Thrown for anything the tool reports and exits on; main() prints `message`
// on stderr and exits with `exit_code`.
struct CliError : std::runtime_error {
  int exit_code;
  CliError(int code, const std::string& message) : std::runtime_error(message), exit_code(code) {}
};

// A usage error (exit 2): the message should name the option and the value.
[[noreturn]] void usage_error(const std::string& message);

// Throws a CliError (exit 1) with "<status string>: <kvrt_last_error()>"
// unless `status` is KVRT_OK.
void check(kvrt_status status);
// The same, with what the tool was doing when the call failed ("loading X").
void check(kvrt_status status, const std::string& doing);

// Walks argv of one subcommand. Accepts "--name value" and "--name=value".
//   ArgReader a(argc, argv, 2);
//   while (a.next()) {
//     if (a.is("-m", "--model")) model = a.value();
//     else a.unknown();
//   }
class ArgReader {
 public:
  ArgReader(int argc, char** argv, int first);
  bool next();  // advances to the next argument; false at the end
  // True when the current argument is one of the names (a second name may be
  // empty); remembers the name for value() and error messages.
  bool is(const char* name, const char* alias = nullptr);
  std::string value();           // the option's value; usage error when missing
  const std::string& current() const { return arg_; }
  [[noreturn]] void unknown() const;  // usage error naming the current argument

 private:
  int argc_;
  char** argv_;
  int i_;
  std::string arg_;               // the current argument, without "=value"
  std::string inline_value_;      // the part after '=', if any
  bool has_inline_value_ = false;
  bool value_taken_ = false;
};

// Value parsers; each throws a usage error naming `opt` and the bad text.
uint32_t parse_u32(const std::string& opt, const std::string& text);
uint64_t parse_u64(const std::string& opt, const std::string& text);
float parse_float(const std::string& opt, const std::string& text);
// A byte count: a plain number or one with a binary suffix K, M, G, T
// (optionally followed by "iB" or "B"), such as 512M, 2G, 1.5GiB, 4096.
uint64_t parse_size(const std::string& opt, const std::string& text);
// --block-tokens: positions per KV block, 1..1024.
uint32_t parse_block_tokens(const std::string& opt, const std::string& text);
// The library's default positions per KV block.
uint32_t default_block_tokens();
// Comma-separated list ("1,2,4").
std::vector<std::string> split_list(const std::string& text);

// "f32" → KVRT_KV_FORMAT_F32, ... ; usage error naming `opt` otherwise.
uint32_t parse_kv_format(const std::string& opt, const std::string& text);
// "q8" or "q8/q4" (keys/values) → the two formats.
void parse_kv_pair(const std::string& opt, const std::string& text, uint32_t* format_k,
                   uint32_t* format_v);
const char* kv_format_name(uint32_t format);
std::string kv_pair_name(uint32_t format_k, uint32_t format_v);

// Human-readable byte count ("1.25 MiB").
std::string format_bytes(uint64_t bytes);

// The model path to use: `given` if not empty; else $KVRT_MODEL; else
// ../shared/models/stories260K.gguf relative to the working directory; else
// relative to the executable (<repo>/build/bin → <repo>/../shared/models/).
// Throws CliError (exit 1) explaining how to get a model when none exists.
std::string resolve_model_path(const std::string& given);

// Owning handles: the library's destroy functions accept NULL.
struct RuntimeDeleter {
  void operator()(kvrt_runtime* r) const { kvrt_runtime_destroy(r); }
};
struct ModelDeleter {
  void operator()(kvrt_model* m) const { kvrt_model_destroy(m); }
};
struct SessionDeleter {
  void operator()(kvrt_session* s) const { kvrt_session_destroy(s); }
};
using RuntimePtr = std::unique_ptr<kvrt_runtime, RuntimeDeleter>;
using ModelPtr = std::unique_ptr<kvrt_model, ModelDeleter>;
using SessionPtr = std::unique_ptr<kvrt_session, SessionDeleter>;
struct StoreDeleter {
  void operator()(kvrt_store* s) const { kvrt_store_close(s); }
};
using StorePtr = std::unique_ptr<kvrt_store, StoreDeleter>;

RuntimePtr make_runtime(uint32_t n_threads, uint64_t kv_budget_bytes /*0: default*/,
                        uint32_t block_tokens = 0 /*0: default*/);
ModelPtr load_model(kvrt_runtime* runtime, const std::string& path);
StorePtr open_store(const std::string& dir);  // creates the folder when missing
kvrt_model_info model_info(const kvrt_model* model);

// Monotonic clock in seconds.
double now_seconds();

// The subcommands; argv[0] is "kvrt", argv[1] the command name.
int cmd_run(int argc, char** argv);
int cmd_mem(int argc, char** argv);
int cmd_synth(int argc, char** argv);
int cmd_bench(int argc, char** argv);

}  // namespace kvrt_tools
