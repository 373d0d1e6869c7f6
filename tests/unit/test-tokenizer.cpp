// Tests of the SentencePiece-style tokenizer: known answers on the test
// model, merge order and byte fallback on small vocabularies, round trips
// and refused metadata.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gguf-writer.hpp"
#include "model/gguf-reader.hpp"
#include "model/tokenizer.hpp"
#include "util/error.hpp"

// cmocka last: its fail()/skip() macros clash with names in C++ headers.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include <cmocka.h>
}

using kvrt::GgufFile;
using kvrt::Tokenizer;
using kvrt_tools::GgufWriter;
using Ids = std::vector<int32_t>;

namespace {

const std::string kSp = "\xE2\x96\x81";  // U+2581

std::string model_path() {
  const char* p = std::getenv("KVRT_MODEL");
  if (!p || !*p) p = std::getenv("KVRT_MODEL_DEFAULT");
  return p ? p : "";
}

const Tokenizer& real() {
  static std::unique_ptr<GgufFile> f;
  static Tokenizer t;
  if (!f) {
    f = GgufFile::open(model_path());
    t = Tokenizer::from_gguf(*f);
  }
  return t;
}

void print_ids(const char* what, const Ids& ids) {
  std::string s;
  for (int32_t id : ids) s += std::to_string(id) + " ";
  print_message("%s: %s\n", what, s.c_str());
}

void assert_ids(const Ids& got, const Ids& want) {
  if (got != want) {
    print_ids("got ", got);
    print_ids("want", want);
    fail();
  }
}

// A tokenizer from a small vocabulary; token types default to normal.
struct Vocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int32_t> types;
  std::string model = "llama";
  bool with_types = true;
  int add_space_prefix = -1;  // -1: key absent
  uint32_t bos = 1, eos = 2, unk = 0;

  void add(const std::string& p, float s, int32_t type = 1) {
    pieces.push_back(p);
    scores.push_back(s);
    types.push_back(type);
  }
  std::vector<uint8_t> bytes() const {
    GgufWriter w;
    w.add_string("tokenizer.ggml.model", model);
    w.add_array_string("tokenizer.ggml.tokens", pieces);
    w.add_array_f32("tokenizer.ggml.scores", scores);
    if (with_types) w.add_array_i32("tokenizer.ggml.token_type", types);
    w.add_u32("tokenizer.ggml.bos_token_id", bos);
    w.add_u32("tokenizer.ggml.eos_token_id", eos);
    w.add_u32("tokenizer.ggml.unknown_token_id", unk);
    if (add_space_prefix >= 0) w.add_bool("tokenizer.ggml.add_space_prefix", add_space_prefix);
    return w.to_bytes();
  }
  Tokenizer build() const {
    std::vector<uint8_t> b = bytes();
    auto f = GgufFile::parse(b.data(), b.size(), "vocab.gguf");
    return Tokenizer::from_gguf(*f);  // copies everything it keeps
  }
};

// <unk> <s> </s>, then the given pieces from id 3.
Vocab base_vocab() {
  Vocab v;
  v.add("<unk>", 0, 2);
  v.add("<s>", 0, 3);
  v.add("</s>", 0, 3);
  return v;
}

void expect_error(const std::function<void()>& fn, kvrt_status status, const char* needle) {
  try {
    fn();
  } catch (const kvrt::Error& e) {
    if (e.status() != status || std::strstr(e.what(), needle) == nullptr) {
      print_error("got status %d '%s', wanted %d with '%s'\n", e.status(), e.what(), status,
                  needle);
      fail();
    }
    return;
  }
  print_error("no error, wanted status %d with '%s'\n", status, needle);
  fail();
}

void test_known_answers(void**) {
  const Tokenizer& t = real();
  assert_int_equal(t.n_vocab(), 512);
  assert_ids(t.encode("Once upon a time", true), {1, 403, 407, 261, 378});
  assert_ids(t.encode("Once upon a time", false), {403, 407, 261, 378});
  const Ids gen = {432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267,
                   337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432,
                   358, 394, 261, 370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267, 337,
                   335, 312, 432, 398, 312, 286, 267, 414, 270, 333, 415, 426, 13,  438, 310,
                   439, 419, 357, 336};
  std::string text;
  for (int32_t id : gen) t.append_piece(id, false, text);
  assert_string_equal(text.c_str(),
                      ", there was a little girl named Lily. She loved to play outside in the "
                      "park. One day, she saw a big, red ball. She wanted to play with it, but "
                      "it was too high.\nLily's mom said");
  // The whole sequence decodes to the prompt followed by the continuation.
  Ids all = {1, 403, 407, 261, 378};
  all.insert(all.end(), gen.begin(), gen.end());
  assert_string_equal(t.decode(all).c_str(), ("Once upon a time" + text).c_str());
}

void test_round_trips(void**) {
  const Tokenizer& t = real();
  const char* texts[] = {
      "Hello, world!",
      "  two leading spaces and trailing  ",
      " one leading space",
      "digits 0123456789 and 3.14159, -42!",
      "line one\nline two\n\ttabbed\r\n",
      "punctuation: ;:'\"()[]{}<>?/\\|~`@#$%^&*_+=",
      "caf\xC3\xA9 na\xC3\xAFve r\xC3\xA9sum\xC3\xA9",
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E",
      "emoji \xF0\x9F\x98\x80\xF0\x9F\x8E\x89 end",
      "x",
      " ",
      "<s> is not special in text </s>",
  };
  for (const char* s : texts) {
    Ids ids = t.encode(s, true);
    assert_int_equal(ids[0], t.bos());
    std::string back = t.decode(ids);
    if (back != s) {
      print_error("round trip of '%s' gave '%s'\n", s, back.c_str());
      fail();
    }
  }
  // Invalid UTF-8 survives as bytes.
  const std::string bad = "a\xFF\xC3(b\xE2\x82";
  assert_true(t.decode(t.encode(bad, true)) == bad);
  // A long text round-trips (the merge loop is n log n).
  std::string big;
  while (big.size() < 200000) big += "The little dog ran to the park. It was happy! ";
  assert_true(t.decode(t.encode(big, true)) == big);
}

void test_byte_fallback_real(void**) {
  const Tokenizer& t = real();
  // The vocabulary lays byte tokens <0x00>..<0xFF> out at ids 3..258, after
  // <unk>, <s>, </s>; the emoji has no piece of its own.
  Ids ids = t.encode("\xF0\x9F\x98\x80", true);
  assert_true(ids.size() >= 5);
  const Ids tail(ids.end() - 4, ids.end());
  assert_ids(tail, {3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80});
  std::string nl;
  t.append_piece(3 + '\n', false, nl);
  assert_string_equal(nl.c_str(), "\n");
  // Control tokens print nothing.
  std::string ctl;
  t.append_piece(t.bos(), false, ctl);
  t.append_piece(t.eos(), false, ctl);
  assert_true(ctl.empty());
  expect_error([&] { t.append_piece(512, false, ctl); }, KVRT_ERR_OUT_OF_RANGE, "512");
  expect_error([&] { t.append_piece(-1, false, ctl); }, KVRT_ERR_OUT_OF_RANGE, "-1");
}

void test_empty_text(void**) {
  const Tokenizer& t = real();
  assert_ids(t.encode("", true), {1});
  assert_true(t.encode("", false).empty());
  assert_true(t.decode(Ids{1}).empty());
  assert_true(t.decode(Ids{}).empty());
}

void test_leading_space_rules(void**) {
  const Tokenizer& t = real();
  Ids ids = t.encode("Once", false);
  // Without BOS nothing is stripped: the encoder's space prefix shows.
  assert_string_equal(t.decode(ids).c_str(), " Once");
  ids.insert(ids.begin(), t.bos());
  assert_string_equal(t.decode(ids).c_str(), "Once");
  std::string s;
  t.append_piece(ids[1], true, s);
  assert_string_equal(s.c_str(), "Once");
}

void test_merge_order(void**) {
  // "aba" -> symbols ▁ a b a. "ab" and "ba" tie: the leftmost pair merges.
  Vocab v = base_vocab();
  v.add(kSp, -1);  // 3
  v.add("a", -1);  // 4
  v.add("b", -1);  // 5
  v.add("ab", -2); // 6
  v.add("ba", -2); // 7
  assert_ids(v.build().encode("aba", false), {3, 6, 4});
  // A higher score wins wherever it is.
  v.scores[7] = -1.5f;
  assert_ids(v.build().encode("aba", false), {3, 4, 7});
  // Merges chain: "▁a" then "▁ab" beats both pairs once its parts exist.
  Vocab w = base_vocab();
  w.add(kSp, -1);          // 3
  w.add("a", -1);          // 4
  w.add("b", -1);          // 5
  w.add("ab", -3);         // 6
  w.add(kSp + "a", -2);    // 7
  w.add(kSp + "ab", -2.5); // 8
  assert_ids(w.build().encode("ab", false), {8});
  assert_ids(w.build().encode("ab ab", true), {1, 8, 8});
  assert_string_equal(w.build().decode(Ids{1, 8, 8}).c_str(), "ab ab");
}

void test_small_vocab_fallback(void**) {
  Vocab v = base_vocab();
  v.add(kSp, -1);  // 3
  v.add("a", -1);  // 4
  // No byte tokens: an unknown character becomes <unk> (one per byte).
  assert_ids(v.build().encode("a\xC3\xA9", false), {3, 4, 0, 0});
  // With byte tokens it is spelled by bytes.
  Vocab b = v;
  b.add("<0xC3>", 0, 6);  // 5
  b.add("<0xA9>", 0, 6);  // 6
  Tokenizer t = b.build();
  assert_ids(t.encode("a\xC3\xA9", false), {3, 4, 5, 6});
  assert_string_equal(t.decode(Ids{1, 3, 4, 5, 6}).c_str(), "a\xC3\xA9");
  // Without token types, <0xNN> pieces are still byte tokens.
  Vocab n = b;
  n.with_types = false;
  Tokenizer tn = n.build();
  assert_ids(tn.encode("a\xC3\xA9", false), {3, 4, 5, 6});
  // Control pieces never come out of merging text.
  Vocab c = base_vocab();
  c.add(kSp, -1);
  for (const char* ch : {"<", "s", ">", "<s"}) c.add(ch, -1);  // 4..7
  assert_ids(c.build().encode("<s>", false), {3, 7, 6});
}

void test_no_space_prefix(void**) {
  Vocab v = base_vocab();
  v.add(kSp, -1);  // 3
  v.add("a", -1);  // 4
  v.add_space_prefix = 0;
  Tokenizer t = v.build();
  assert_ids(t.encode("a a", true), {1, 4, 3, 4});
  assert_string_equal(t.decode(Ids{1, 3, 4}).c_str(), " a");  // nothing stripped
}

void test_refusals(void**) {
  Vocab gpt2 = base_vocab();
  gpt2.model = "gpt2";
  expect_error([&] { gpt2.build(); }, KVRT_ERR_UNSUPPORTED, "tokenizer model 'gpt2'");
  Vocab scores = base_vocab();
  scores.scores.pop_back();
  expect_error([&] { scores.build(); }, KVRT_ERR_CORRUPT, "tokenizer.ggml.scores");
  Vocab types = base_vocab();
  types.types.push_back(1);
  expect_error([&] { types.build(); }, KVRT_ERR_CORRUPT, "tokenizer.ggml.token_type");
  Vocab bos = base_vocab();
  bos.bos = 3;
  expect_error([&] { bos.build(); }, KVRT_ERR_CORRUPT, "bos_token_id 3");
  Vocab none = base_vocab();
  none.unk = UINT32_MAX;  // "no such token"
  assert_int_equal(none.build().unk(), -1);
  Vocab empty;
  expect_error([&] { empty.build(); }, KVRT_ERR_CORRUPT, "vocabulary of 0 tokens");
  Vocab nan = base_vocab();
  nan.scores[1] = NAN;
  expect_error([&] { nan.build(); }, KVRT_ERR_CORRUPT, "NaN");
  GgufWriter w;
  w.add_array_string("tokenizer.ggml.tokens", {"a"});
  auto b = w.to_bytes();
  auto f = GgufFile::parse(b.data(), b.size(), "x.gguf");
  expect_error([&] { Tokenizer::from_gguf(*f); }, KVRT_ERR_CORRUPT, "tokenizer.ggml.model");
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_known_answers),
      cmocka_unit_test(test_round_trips),
      cmocka_unit_test(test_byte_fallback_real),
      cmocka_unit_test(test_empty_text),
      cmocka_unit_test(test_leading_space_rules),
      cmocka_unit_test(test_merge_order),
      cmocka_unit_test(test_small_vocab_fallback),
      cmocka_unit_test(test_no_space_prefix),
      cmocka_unit_test(test_refusals),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
