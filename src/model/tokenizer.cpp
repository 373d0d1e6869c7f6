// SentencePiece-style BPE tokenizer over GGUF vocabulary metadata: score-
// ordered merges of adjacent symbols, with byte fallback for the rest.
#include "model/tokenizer.hpp"

#include <cinttypes>
#include <cmath>
#include <cstring>
#include <queue>

#include "model/gguf-reader.hpp"
#include "util/error.hpp"

namespace kvrt {
namespace {

// Token types as GGUF numbers them.
constexpr int32_t kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5,
                  kByte = 6;
// Generous bound on the vocabulary: ids must fit in int32 with room to spare.
constexpr uint64_t kMaxVocab = 1u << 24;

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// Length of the UTF-8 character at s[i], or 1 when the bytes there are not a
// well-formed sequence (each such byte becomes a symbol of its own).
size_t utf8_len(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) n = 2;
  else if ((c & 0xF0) == 0xE0) n = 3;
  else if ((c & 0xF8) == 0xF0) n = 4;
  else return 1;
  if (i + n > s.size()) return 1;
  for (size_t k = 1; k < n; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 1;
  return n;
}

// "<0xNN>" -> NN, else -1.
int parse_byte_piece(std::string_view p) {
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  int v = 0;
  for (size_t k = 3; k < 5; ++k) {
    char c = p[k];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
          : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

// Reads a special token id; absent -> fallback (if inside the vocabulary),
// the all-ones "none" value -> -1, any other value outside the vocabulary is
// corrupt.
int32_t special_id(const GgufFile& f, const char* key, int32_t fallback, size_t n_vocab) {
  const GgufValue* v = f.find(key);
  if (!v) return fallback >= 0 && static_cast<size_t>(fallback) < n_vocab ? fallback : -1;
  int64_t id;
  switch (v->type) {
    case GgufType::u32: id = v->u == UINT32_MAX ? -1 : static_cast<int64_t>(v->u); break;
    case GgufType::i32: case GgufType::i64: id = v->i; break;
    case GgufType::u64: id = v->u == UINT64_MAX ? -1 : v->u > INT64_MAX ? INT64_MAX
                             : static_cast<int64_t>(v->u); break;
    default:
      id = static_cast<int64_t>(f.get_uint(key, 0));  // throws for non-integers
  }
  if (id == -1) return -1;
  if (id < 0 || static_cast<uint64_t>(id) >= n_vocab)
    fail(KVRT_ERR_CORRUPT, "%s: %s %" PRId64 " is outside the vocabulary of %zu tokens",
         f.source().c_str(), key, id, n_vocab);
  return static_cast<int32_t>(id);
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const GgufFile& f) {
  const char* src = f.source().c_str();
  const GgufValue* model = f.find("tokenizer.ggml.model");
  if (!model) fail(KVRT_ERR_CORRUPT, "%s: missing key 'tokenizer.ggml.model'", src);
  const std::string kind = f.get_string("tokenizer.ggml.model", "");
  if (kind != "llama")
    fail(KVRT_ERR_UNSUPPORTED, "%s: tokenizer model '%s' is not supported (only 'llama', "
         "SentencePiece-style)", src, kind.c_str());

  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  if (!tokens) fail(KVRT_ERR_CORRUPT, "%s: missing key 'tokenizer.ggml.tokens'", src);
  if (tokens->type != GgufType::array || tokens->elem_type != GgufType::string)
    fail(KVRT_ERR_CORRUPT, "%s: tokenizer.ggml.tokens is not an array of strings", src);
  const uint64_t n = tokens->n_elems;
  if (n == 0 || n > kMaxVocab)
    fail(KVRT_ERR_CORRUPT, "%s: vocabulary of %" PRIu64 " tokens (1 to %" PRIu64 " allowed)",
         src, n, kMaxVocab);

  const GgufValue* scores = f.find("tokenizer.ggml.scores");
  if (!scores) fail(KVRT_ERR_CORRUPT, "%s: missing key 'tokenizer.ggml.scores'", src);
  if (scores->type != GgufType::array || scores->elem_type != GgufType::f32 ||
      scores->n_elems != n)
    fail(KVRT_ERR_CORRUPT, "%s: tokenizer.ggml.scores must be an array of %" PRIu64
         " f32 values (has %" PRIu64 ")", src, n, scores->n_elems);
  const GgufValue* types = f.find("tokenizer.ggml.token_type");
  if (types && (types->type != GgufType::array || types->elem_type != GgufType::i32 ||
                types->n_elems != n))
    fail(KVRT_ERR_CORRUPT, "%s: tokenizer.ggml.token_type must be an array of %" PRIu64
         " i32 values (has %" PRIu64 ")", src, n, types->n_elems);

  Tokenizer t;
  t.pieces_.reserve(n);
  t.scores_.resize(n);
  t.types_.resize(n);
  t.byte_value_.assign(n, -1);
  std::memset(t.byte_ids_, 0xff, sizeof(t.byte_ids_));  // -1: no byte token
  t.index_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    t.pieces_.emplace_back(tokens->strings[i]);
    float s;
    std::memcpy(&s, scores->elems + 4 * i, 4);
    if (std::isnan(s))
      fail(KVRT_ERR_CORRUPT, "%s: score of token %zu is NaN", src, i);
    t.scores_[i] = s;
    int32_t ty = kNormal;
    if (types) std::memcpy(&ty, types->elems + 4 * i, 4);
    const int b = parse_byte_piece(t.pieces_[i]);
    // Without token types, pieces spelled <0xNN> are taken as byte tokens.
    if (!types && b >= 0) ty = kByte;
    if (ty < kNormal || ty > kByte) ty = kNormal;
    t.types_[i] = ty;
    if (ty == kByte && b >= 0) {
      t.byte_value_[i] = static_cast<int16_t>(b);
      if (t.byte_ids_[b] < 0) t.byte_ids_[b] = static_cast<int32_t>(i);
    }
    // Control, unknown, unused and byte pieces never come out of merging
    // text, as in SentencePiece.
    if ((ty == kNormal || ty == kUserDefined) && !t.pieces_[i].empty())
      t.index_.emplace(t.pieces_[i], static_cast<int32_t>(i));  // first id of a piece wins
  }
  t.bos_ = special_id(f, "tokenizer.ggml.bos_token_id", 1, n);
  t.eos_ = special_id(f, "tokenizer.ggml.eos_token_id", 2, n);
  t.unk_ = special_id(f, "tokenizer.ggml.unknown_token_id", 0, n);
  t.add_space_prefix_ = f.get_bool("tokenizer.ggml.add_space_prefix", true);
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> out;
  if (add_bos && bos_ >= 0) out.push_back(bos_);
  if (text.empty()) return out;
  // Symbol offsets are 32-bit; the normalized text grows by up to 3x.
  if (text.size() > (INT32_MAX - 3) / 3)
    fail(KVRT_ERR_INVALID_ARGUMENT, "text of %zu bytes is too long to tokenize at once",
         text.size());

  // Normalize: optional leading space, then every space as U+2581.
  std::string norm;
  norm.reserve(text.size() + (text.size() + 1) * 2 + 3);
  if (add_space_prefix_) norm.append(kSpaceMark);
  for (char c : text) {
    if (c == ' ') norm.append(kSpaceMark);
    else norm.push_back(c);
  }

  // Symbols form a doubly linked list over the normalized text; a merged-away
  // symbol keeps len 0.
  struct Symbol {
    int32_t prev, next;
    uint32_t off, len;
  };
  std::vector<Symbol> sym;
  sym.reserve(norm.size());
  for (size_t i = 0; i < norm.size();) {
    size_t l = utf8_len(norm, i);
    const int32_t k = static_cast<int32_t>(sym.size());
    sym.push_back({k - 1, k + 1, static_cast<uint32_t>(i), static_cast<uint32_t>(l)});
    i += l;
  }
  sym.back().next = -1;

  struct Bigram {
    int32_t left, right;
    float score;
    uint32_t len;  // combined length when queued; a mismatch later means stale
  };
  // Highest score first; among equal scores the leftmost pair.
  auto worse = [](const Bigram& a, const Bigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(worse)> queue(worse);
  auto try_pair = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    std::string_view piece(norm.data() + sym[l].off, sym[l].len + sym[r].len);
    auto it = index_.find(piece);
    if (it == index_.end()) return;
    queue.push({l, r, scores_[it->second], static_cast<uint32_t>(piece.size())});
  };
  for (size_t i = 1; i < sym.size(); ++i)
    try_pair(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));

  while (!queue.empty()) {
    Bigram b = queue.top();
    queue.pop();
    Symbol& l = sym[b.left];
    Symbol& r = sym[b.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != b.len) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_pair(l.prev, b.left);
    try_pair(b.left, l.next);
  }

  for (int32_t i = 0; i >= 0; i = sym[i].next) {
    std::string_view piece(norm.data() + sym[i].off, sym[i].len);
    auto it = index_.find(piece);
    if (it != index_.end()) {
      out.push_back(it->second);
      continue;
    }
    for (char c : piece) {
      const int32_t id = byte_ids_[static_cast<unsigned char>(c)];
      if (id >= 0) out.push_back(id);
      else if (unk_ >= 0) out.push_back(unk_);
    }
  }
  return out;
}

void Tokenizer::append_piece(int32_t id, bool strip_leading_space, std::string& out) const {
  if (id < 0 || id >= n_vocab())
    fail(KVRT_ERR_OUT_OF_RANGE, "token id %d is outside the vocabulary of %d tokens", id,
         n_vocab());
  switch (types_[id]) {
    case kByte:
      if (byte_value_[id] >= 0) out.push_back(static_cast<char>(byte_value_[id]));
      return;
    case kControl:
    case kUnknown:
    case kUnused:
      return;
    default:
      break;
  }
  std::string_view p = pieces_[id];
  bool first = true;
  for (size_t i = 0; i < p.size();) {
    if (p.compare(i, kSpaceMark.size(), kSpaceMark) == 0) {
      if (!(first && strip_leading_space)) out.push_back(' ');
      i += kSpaceMark.size();
    } else {
      out.push_back(p[i]);
      ++i;
    }
    first = false;
  }
}

bool Tokenizer::has_all_byte_tokens() const {
  for (int32_t id : byte_ids_)
    if (id < 0) return false;
  return true;
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  // The space the encoder put in front of the text is dropped from the first
  // text piece after a leading BOS, even when that piece is nothing else.
  bool strip = add_space_prefix_ && !ids.empty() && ids[0] == bos_ && bos_ >= 0;
  for (int32_t id : ids) {
    append_piece(id, strip, out);
    const int32_t ty = types_[id];  // in range: append_piece checked it
    if (ty != kControl && ty != kUnknown && ty != kUnused) strip = false;
  }
  return out;
}

}  // namespace kvrt
