// Fuzz target: arbitrary bytes as text through the test model's tokenizer;
// encoding then decoding must give the text back (unless it holds U+2581,
// which decodes as a space by design).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "model/model.hpp"
#include "util/error.hpp"

namespace {

const kvrt::Model* model() {
  static std::unique_ptr<kvrt::Model> m = [] {
    const char* p = std::getenv("KVRT_MODEL");
    if (!p || !*p) p = std::getenv("KVRT_MODEL_DEFAULT");
    std::unique_ptr<kvrt::Model> r;
    if (!p || !*p) return r;
    try {
      r = kvrt::Model::load(p);
    } catch (const kvrt::Error& e) {
      std::fprintf(stderr, "cannot load %s: %s\n", p, e.what());
      std::abort();
    }
    return r;
  }();
  return m.get();
}

[[noreturn]] void mismatch(const char* what, std::string_view in, const std::string& out) {
  std::fprintf(stderr, "%s: round trip of %zu bytes gave %zu bytes\n", what, in.size(),
               out.size());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const kvrt::Model* m = model();
  if (!m) return 0;
  const kvrt::Tokenizer& t = m->tokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> with_bos = t.encode(text, true);
  const std::vector<int32_t> without = t.encode(text, false);
  for (int32_t id : with_bos)
    if (id < 0 || id >= t.n_vocab()) std::abort();
  const std::string a = t.decode(with_bos);
  const std::string b = t.decode(without);
  if (text.find("\xE2\x96\x81") != std::string_view::npos || !t.has_all_byte_tokens())
    return 0;
  // Every byte the vocabulary lacks a piece for has a byte token, so any
  // byte string comes back, valid UTF-8 or not.
  if (a != text) mismatch("with BOS", text, a);
  const std::string prefix = t.add_space_prefix() ? " " : "";
  if (!text.empty() && b != prefix + std::string(text)) mismatch("without BOS", text, b);
  return 0;
}
