// Fuzz target: arbitrary bytes through the GGUF reader, the tokenizer and
// model validation. kvrt::Error is the only acceptable failure.
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <string>

#include "model/gguf-reader.hpp"
#include "model/model.hpp"
#include "model/tokenizer.hpp"
#include "util/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<kvrt::GgufFile> f;
  try {
    f = kvrt::GgufFile::parse(data, size, "fuzz.gguf");
  } catch (const kvrt::Error&) {
    return 0;
  }
  // Reading every tensor's extent proves the reader's bounds hold.
  volatile uint8_t sink = 0;
  for (const auto& t : f->tensors())
    if (t.nbytes) sink = sink ^ t.data[0] ^ t.data[t.nbytes - 1];
  try {
    kvrt::Tokenizer tok = kvrt::Tokenizer::from_gguf(*f);
    const std::string text = "Hello w\xC3\xB6rld \xF0\x9F\x98\x80 <s> 12\n";
    std::vector<int32_t> ids = tok.encode(text, true);
    for (int32_t id : ids)
      if (id < 0 || id >= tok.n_vocab()) {
        std::fprintf(stderr, "encode produced id %d outside [0, %d)\n", id, tok.n_vocab());
        std::abort();
      }
    (void)tok.decode(ids);
  } catch (const kvrt::Error&) {
  }
  try {
    auto m = kvrt::Model::from_gguf(std::move(f));
    // Every view must lie inside the file it came from.
    const auto in_file = [&](const void* p, uint64_t n) {
      const uint8_t* b = static_cast<const uint8_t*>(p);
      if (b < data || b + n > data + size) {
        std::fprintf(stderr, "weight view outside the file\n");
        std::abort();
      }
    };
    const auto& hp = m->hparams();
    in_file(m->tok_embd.data, uint64_t(m->tok_embd.row_bytes) * m->tok_embd.rows);
    in_file(m->output.data, uint64_t(m->output.row_bytes) * m->output.rows);
    for (const auto& L : m->layers) {
      for (const kvrt::WeightMatrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up,
                                          &L.w_down})
        in_file(w->data, uint64_t(w->row_bytes) * w->rows);
      sink = sink ^ static_cast<uint8_t>(L.attn_norm[hp.n_embd - 1] > 0) ^
             static_cast<uint8_t>(L.ffn_norm[0] > 0);
    }
  } catch (const kvrt::Error&) {
  }
  return 0;
}
