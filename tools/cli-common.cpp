// Helpers shared by the kvrt subcommands: option parsing, value and size
// parsing, model path resolution, handle ownership and error reporting.
#include "cli-common.hpp"

#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace kvrt_tools {

void usage_error(const std::string& message) { throw CliError(kExitUsage, message); }

void check(kvrt_status status) {
  if (status == KVRT_OK) return;
  throw CliError(kExitFailure,
                 std::string(kvrt_status_string(status)) + ": " + kvrt_last_error());
}

void check(kvrt_status status, const std::string& doing) {
  if (status == KVRT_OK) return;
  throw CliError(kExitFailure, std::string(kvrt_status_string(status)) + ": " +
                                   kvrt_last_error() + " (" + doing + ")");
}

// ---------------------------------------------------------------------------
// ArgReader

ArgReader::ArgReader(int argc, char** argv, int first) : argc_(argc), argv_(argv), i_(first - 1) {}

bool ArgReader::next() {
  if (has_inline_value_ && !value_taken_)
    usage_error("option " + arg_ + " takes no value (got '" + inline_value_ + "')");
  ++i_;
  if (i_ >= argc_) return false;
  arg_ = argv_[i_];
  has_inline_value_ = false;
  value_taken_ = false;
  inline_value_.clear();
  // "--name=value"; short options ("-n") take their value as the next word.
  if (arg_.size() > 2 && arg_[0] == '-' && arg_[1] == '-') {
    size_t eq = arg_.find('=');
    if (eq != std::string::npos) {
      inline_value_ = arg_.substr(eq + 1);
      arg_.resize(eq);
      has_inline_value_ = true;
    }
  }
  return true;
}

bool ArgReader::is(const char* name, const char* alias) {
  return arg_ == name || (alias != nullptr && arg_ == alias);
}

std::string ArgReader::value() {
  value_taken_ = true;
  if (has_inline_value_) return inline_value_;
  if (i_ + 1 >= argc_) usage_error("option " + arg_ + " needs a value");
  return argv_[++i_];
}

void ArgReader::unknown() const {
  if (!arg_.empty() && arg_[0] == '-') usage_error("unknown option " + arg_);
  usage_error("unexpected argument '" + arg_ + "'");
}

// ---------------------------------------------------------------------------
// Values

namespace {

[[noreturn]] void bad_value(const std::string& opt, const std::string& text, const char* want) {
  usage_error("bad value '" + text + "' for " + opt + ": expected " + want);
}

}  // namespace

uint64_t parse_u64(const std::string& opt, const std::string& text) {
  if (text.empty() || text[0] == '-' || text[0] == '+') bad_value(opt, text, "a non-negative integer");
  errno = 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') bad_value(opt, text, "a non-negative integer");
  return v;
}

uint32_t parse_u32(const std::string& opt, const std::string& text) {
  uint64_t v = parse_u64(opt, text);
  if (v > UINT32_MAX) bad_value(opt, text, "an integer below 2^32");
  return static_cast<uint32_t>(v);
}

uint32_t parse_block_tokens(const std::string& opt, const std::string& text) {
  const uint32_t v = parse_u32(opt, text);
  if (v == 0 || v > 1024) bad_value(opt, text, "positions per block in 1..1024");
  return v;
}

uint32_t default_block_tokens() {
  kvrt_runtime_params p;
  kvrt_runtime_default_params(&p);
  return p.block_tokens;
}

float parse_float(const std::string& opt, const std::string& text) {
  errno = 0;
  char* end = nullptr;
  float v = std::strtof(text.c_str(), &end);
  if (text.empty() || errno != 0 || *end != '\0' || !std::isfinite(v))
    bad_value(opt, text, "a finite number");
  return v;
}

uint64_t parse_size(const std::string& opt, const std::string& text) {
  const char* want = "a byte count such as 1073741824, 512M or 2G";
  if (text.empty() || text[0] == '-' || text[0] == '+') bad_value(opt, text, want);
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (errno != 0 || end == text.c_str() || !std::isfinite(v) || v < 0) bad_value(opt, text, want);
  std::string suffix(end);
  for (char& c : suffix) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double unit = 1;
  if (!suffix.empty()) {
    switch (suffix[0]) {
      case 'K': unit = 1024.0; break;
      case 'M': unit = 1024.0 * 1024; break;
      case 'G': unit = 1024.0 * 1024 * 1024; break;
      case 'T': unit = 1024.0 * 1024 * 1024 * 1024; break;
      case 'B': unit = 1; break;
      default: bad_value(opt, text, want);
    }
    std::string rest = suffix.substr(1);
    if (suffix[0] == 'B' ? !rest.empty() : !(rest.empty() || rest == "B" || rest == "IB"))
      bad_value(opt, text, want);
  }
  double bytes = v * unit;
  if (bytes >= 18446744073709551615.0) bad_value(opt, text, want);
  if (bytes != std::floor(bytes)) bad_value(opt, text, "a whole number of bytes");
  return static_cast<uint64_t>(bytes);
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t comma = text.find(',', start);
    out.push_back(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

namespace {
const char* const kFormatNames[KVRT_KV_FORMAT_COUNT] = {"f32", "f16", "bf16", "q8", "q4"};
}

uint32_t parse_kv_format(const std::string& opt, const std::string& text) {
  for (uint32_t f = 0; f < KVRT_KV_FORMAT_COUNT; ++f)
    if (text == kFormatNames[f]) return f;
  bad_value(opt, text, "one of f32, f16, bf16, q8, q4, or K/V such as q8/q4");
}

void parse_kv_pair(const std::string& opt, const std::string& text, uint32_t* format_k,
                   uint32_t* format_v) {
  size_t slash = text.find('/');
  if (slash == std::string::npos) {
    *format_k = *format_v = parse_kv_format(opt, text);
    return;
  }
  *format_k = parse_kv_format(opt, text.substr(0, slash));
  *format_v = parse_kv_format(opt, text.substr(slash + 1));
}

const char* kv_format_name(uint32_t format) {
  return format < KVRT_KV_FORMAT_COUNT ? kFormatNames[format] : "?";
}

std::string kv_pair_name(uint32_t format_k, uint32_t format_v) {
  if (format_k == format_v) return kv_format_name(format_k);
  return std::string(kv_format_name(format_k)) + "/" + kv_format_name(format_v);
}

std::string format_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[64];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else
    std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

// ---------------------------------------------------------------------------
// Model path

std::string resolve_model_path(const std::string& given) {
  namespace fs = std::filesystem;
  if (!given.empty()) return given;
  if (const char* env = std::getenv("KVRT_MODEL"); env != nullptr && env[0] != '\0') return env;
  const char* rel = "../shared/models/stories260K.gguf";
  std::error_code ec;
  if (fs::is_regular_file(rel, ec)) return rel;
  // The executable sits in <repo>/<build>/bin; the models folder is beside <repo>.
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    fs::path candidate = exe.parent_path() / "../../.." / rel;
    if (fs::is_regular_file(candidate, ec)) return candidate.lexically_normal().string();
  }
  throw CliError(kExitFailure,
                 "no model given and none found.\n"
                 "  Pass one with -m MODEL.gguf, or set KVRT_MODEL=/path/to/model.gguf,\n"
                 "  or place stories260K.gguf in ../shared/models/ beside the project,\n"
                 "  or create a synthetic model with random weights:\n"
                 "    kvrt synth -o model.gguf && kvrt run -m model.gguf -p \"Hello\"");
}

// ---------------------------------------------------------------------------
// Handles

RuntimePtr make_runtime(uint32_t n_threads, uint64_t kv_budget_bytes, uint32_t block_tokens) {
  kvrt_runtime_params p;
  kvrt_runtime_default_params(&p);
  p.n_threads = n_threads;
  if (kv_budget_bytes != 0) p.kv_budget_bytes = kv_budget_bytes;
  if (block_tokens != 0) p.block_tokens = block_tokens;
  kvrt_runtime* r = nullptr;
  check(kvrt_runtime_create(&p, &r), "creating the runtime");
  return RuntimePtr(r);
}

ModelPtr load_model(kvrt_runtime* runtime, const std::string& path) {
  kvrt_model* m = nullptr;
  check(kvrt_model_load(runtime, path.c_str(), nullptr, &m));  // the message names the file
  return ModelPtr(m);
}

StorePtr open_store(const std::string& dir) {
  kvrt_store* st = nullptr;
  check(kvrt_store_open(dir.c_str(), nullptr, &st), "opening the session store " + dir);
  return StorePtr(st);
}

kvrt_model_info model_info(const kvrt_model* model) {
  kvrt_model_info info{};
  info.struct_size = sizeof info;
  check(kvrt_model_get_info(model, &info), "reading the model's info");
  return info;
}

double now_seconds() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

}  // namespace kvrt_tools
