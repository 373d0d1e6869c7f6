// SentencePiece-style tokenizer read from GGUF metadata
// (tokenizer.ggml.model = "llama"): scores, byte fallback, space prefix.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kvrt {

class GgufFile;

// Hashes std::string and std::string_view alike, so look-ups of substrings
// need no allocation.
struct PieceHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

class Tokenizer {
 public:
  // Reads tokens, scores, token types and special ids. Throws Error:
  // KVRT_ERR_UNSUPPORTED naming another tokenizer model; KVRT_ERR_CORRUPT for
  // missing or inconsistent arrays or special ids out of range.
  static Tokenizer from_gguf(const GgufFile& f);

  // Text to ids: prepends a space, turns spaces into U+2581, merges by
  // score, and spells unknown characters as byte tokens <0xNN>.
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const;

  // Appends the bytes of token `id` to `out`: U+2581 becomes ' ', byte tokens
  // their byte, control tokens nothing. With strip_leading_space, a leading
  // space of this piece is dropped (the piece right after BOS).
  void append_piece(int32_t id, bool strip_leading_space, std::string& out) const;
  // Decodes a sequence the way detokenize does (strips the space after BOS).
  std::string decode(std::span<const int32_t> ids) const;

  int32_t n_vocab() const { return static_cast<int32_t>(pieces_.size()); }
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  int32_t unk() const { return unk_; }
  // True when every byte has a byte token, so that any text round-trips.
  bool has_all_byte_tokens() const;
  bool add_space_prefix() const { return add_space_prefix_; }

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<int32_t> types_;  // 1 normal, 2 unknown, 3 control, 4 user, 5 unused, 6 byte
  // Pieces that take part in merging (normal and user-defined tokens) -> id.
  std::unordered_map<std::string, int32_t, PieceHash, std::equal_to<>> index_;
  std::vector<int16_t> byte_value_;  // per token: its byte for byte tokens, else -1
  int32_t byte_ids_[256];
  int32_t bos_ = -1, eos_ = -1, unk_ = -1;
  bool add_space_prefix_ = true;
};

}  // namespace kvrt
