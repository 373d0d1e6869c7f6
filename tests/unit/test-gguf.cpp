// Tests of the GGUF reader: well-formed files written by the tools' writer,
// and truncated or corrupted variants, each refused with its specific status.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gguf-writer.hpp"
#include "model/gguf-reader.hpp"
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
using kvrt::GgufType;
using kvrt_tools::GgufWriter;
using Bytes = std::vector<uint8_t>;

namespace {

// A parsed private heap copy of exactly the given bytes, so any read past
// their end is caught by the address sanitizer.
struct Parsed {
  std::unique_ptr<uint8_t[]> buf;
  std::unique_ptr<GgufFile> file;
  GgufFile* operator->() const { return file.get(); }
};

Parsed parse_copy(const Bytes& b) {
  Parsed p;
  p.buf.reset(new uint8_t[b.size() ? b.size() : 1]);
  if (!b.empty()) std::memcpy(p.buf.get(), b.data(), b.size());
  p.file = GgufFile::parse(p.buf.get(), b.size(), "test.gguf");
  return p;
}

// Runs `fn`, which must throw kvrt::Error with `status` and a message
// containing `needle`.
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
  } catch (const std::exception& e) {
    print_error("unexpected exception: %s\n", e.what());
    fail();
  }
  print_error("no error, wanted status %d with '%s'\n", status, needle);
  fail();
}

void expect_parse_error(const Bytes& b, kvrt_status status, const char* needle) {
  expect_error([&] { parse_copy(b); }, status, needle);
}

Bytes f32_bytes(const std::vector<float>& v) {
  Bytes b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// Raw byte builder for files the writer would never produce.
struct Raw {
  Bytes b;
  Raw& u32(uint32_t v) { return put(&v, 4); }
  Raw& u64(uint64_t v) { return put(&v, 8); }
  Raw& str(const std::string& s) {
    u64(s.size());
    return put(s.data(), s.size());
  }
  Raw& put(const void* p, size_t n) {
    const size_t at = b.size();
    b.resize(at + n);
    if (n) std::memcpy(b.data() + at, p, n);
    return *this;
  }
  Raw& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    put("GGUF", 4);
    u32(version);
    u64(n_tensors);
    return u64(n_kv);
  }
  Raw& pad_to(size_t a) {
    b.resize((b.size() + a - 1) / a * a, 0);
    return *this;
  }
};

// A small file with every supported metadata kind and tensor type; its last
// tensor ends exactly at the end of the file.
GgufWriter sample_writer() {
  GgufWriter w;
  w.add_u32("a.u32", 4000000000u);
  w.add_i32("a.i32", -7);
  w.add_f32("a.f32", 1.5f);
  w.add_bool("a.bool", true);
  w.add_string("a.str", "hello");
  w.add_array_string("a.strs", {"x", "", "yz"});
  w.add_array_f32("a.f32s", {0.25f, -1.0f});
  w.add_array_i32("a.i32s", {1, -2, 3});
  std::vector<float> m(4 * 3);
  for (size_t i = 0; i < m.size(); ++i) m[i] = static_cast<float>(i);
  w.add_tensor("m.f32", 0, {4, 3}, f32_bytes(m));
  w.add_tensor("m.f16", 1, {32, 2}, Bytes(32 * 2 * 2, 0x11));
  w.add_tensor("m.bf16", 30, {8, 1, 2}, Bytes(8 * 2 * 2, 0x22));
  w.add_tensor("m.q8", 8, {64, 2}, Bytes(2 * 2 * 34, 0x33));  // 136 bytes, a multiple of 8
  w.add_tensor("v.f32", 0, {8}, f32_bytes({1, 2, 3, 4, 5, 6, 7, 8}));  // 32 bytes: no tail pad
  return w;
}

void test_round_trip(void**) {
  Bytes b = sample_writer().to_bytes();
  auto f = parse_copy(b);
  assert_int_equal(f->version(), 3);
  assert_int_equal(f->alignment(), 32);
  assert_int_equal(f->get_uint("a.u32", 0), 4000000000u);
  assert_true(f->get_float("a.f32", 0) == 1.5);
  assert_true(f->get_bool("a.bool", false));
  assert_string_equal(f->get_string("a.str", "").c_str(), "hello");
  assert_string_equal(f->get_string("absent", "dflt").c_str(), "dflt");
  assert_int_equal(f->get_uint("absent", 77), 77);
  const kvrt::GgufValue* v = f->find("a.i32");
  assert_non_null(v);
  assert_int_equal(v->type, GgufType::i32);
  assert_int_equal(v->i, -7);
  const kvrt::GgufValue* s = f->find("a.strs");
  assert_non_null(s);
  assert_int_equal(s->type, GgufType::array);
  assert_int_equal(s->elem_type, GgufType::string);
  assert_int_equal(s->strings.size(), 3);
  assert_true(s->strings[0] == "x" && s->strings[1].empty() && s->strings[2] == "yz");
  const kvrt::GgufValue* a = f->find("a.i32s");
  assert_int_equal(a->n_elems, 3);
  int32_t second;
  std::memcpy(&second, a->elems + 4, 4);
  assert_int_equal(second, -2);
  float fs[2];
  std::memcpy(fs, f->find("a.f32s")->elems, 8);
  assert_true(fs[0] == 0.25f && fs[1] == -1.0f);

  assert_int_equal(f->tensors().size(), 5);
  const kvrt::GgufTensor* t = f->tensor("m.f32");
  assert_non_null(t);
  assert_int_equal(t->n_dims, 2);
  assert_int_equal(t->ne[0], 4);
  assert_int_equal(t->ne[1], 3);
  assert_int_equal(t->ne[2], 1);
  assert_int_equal(t->nbytes, 48);
  float x;
  std::memcpy(&x, t->data + 4 * 7, 4);
  assert_true(x == 7.0f);
  assert_int_equal(f->tensor("m.f16")->nbytes, 128);
  assert_int_equal(f->tensor("m.bf16")->nbytes, 32);
  assert_int_equal(f->tensor("m.bf16")->ne[2], 2);
  assert_int_equal(f->tensor("m.q8")->nbytes, 136);
  assert_int_equal(f->tensor("m.q8")->data[135], 0x33);
  const kvrt::GgufTensor* last = f->tensor("v.f32");
  std::memcpy(&x, last->data + 28, 4);
  assert_true(x == 8.0f);
  for (const auto& tt : f->tensors()) assert_int_equal(tt.offset % 32, 0);
  assert_null(f->tensor("nope"));

  // Typed look-ups refuse other types, naming the key.
  expect_error([&] { f->get_uint("a.str", 0); }, KVRT_ERR_CORRUPT, "a.str");
  expect_error([&] { f->get_uint("a.i32", 0); }, KVRT_ERR_CORRUPT, "negative");
  expect_error([&] { f->get_string("a.u32", ""); }, KVRT_ERR_CORRUPT, "a.u32");
  expect_error([&] { f->get_bool("a.u32", false); }, KVRT_ERR_CORRUPT, "a.u32");
  expect_error([&] { f->require_uint("b.none"); }, KVRT_ERR_CORRUPT, "missing key 'b.none'");
}

void test_version2_and_custom_alignment(void**) {
  GgufWriter w = sample_writer();
  w.set_alignment(64);
  Bytes b = w.to_bytes();
  b[4] = 2;  // v2 has the same layout as v3
  auto f = parse_copy(b);
  assert_int_equal(f->version(), 2);
  assert_int_equal(f->alignment(), 64);
  for (const auto& t : f->tensors()) {
    assert_int_equal(t.offset % 64, 0);
    assert_int_equal((t.data - f->tensors()[0].data) % 64, 0);
  }
}

void test_truncated_everywhere(void**) {
  const Bytes full = sample_writer().to_bytes();
  parse_copy(full);  // the untruncated file is fine
  // Every strict prefix misses some part: header, metadata, tensor infos or data.
  for (size_t n = 0; n < full.size(); ++n) {
    Bytes cut(full.begin(), full.begin() + static_cast<long>(n));
    try {
      parse_copy(cut);
      print_error("prefix of %zu bytes parsed\n", n);
      fail();
    } catch (const kvrt::Error& e) {
      if (e.status() != KVRT_ERR_CORRUPT) {
        print_error("prefix %zu: status %d: %s\n", n, e.status(), e.what());
        fail();
      }
    }
  }
  // 416 data bytes: 48+128+32+136+32, each padded to 32. 40 bytes before the
  // header's end is inside the tensor infos whatever the padding.
  const size_t header_bytes = full.size() - 416;
  expect_parse_error(Bytes(full.begin(), full.begin() + static_cast<long>(header_bytes - 40)),
                     KVRT_ERR_CORRUPT, "truncated");
  expect_parse_error(Bytes(full.begin(), full.end() - 1), KVRT_ERR_CORRUPT,
                     "'v.f32' extends past the end of the file");
}

// Random byte flips must never crash or read out of bounds; whatever comes
// back is either a parsed file or a kvrt::Error.
void test_random_corruption(void**) {
  const Bytes full = sample_writer().to_bytes();
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 3000; ++iter) {
    Bytes b = full;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) b[rng() % b.size()] ^= static_cast<uint8_t>(1 + rng() % 255);
    if (rng() % 2) b.resize(rng() % b.size());
    try {
      parse_copy(b);
    } catch (const kvrt::Error& e) {
      assert_true(e.status() == KVRT_ERR_CORRUPT || e.status() == KVRT_ERR_UNSUPPORTED);
    }
  }
}

void test_bad_magic_and_versions(void**) {
  Bytes b = sample_writer().to_bytes();
  Bytes m = b;
  m[0] = 'X';
  expect_parse_error(m, KVRT_ERR_CORRUPT, "bad magic");
  expect_parse_error(Bytes{'G', 'G'}, KVRT_ERR_CORRUPT, "bad magic");
  expect_parse_error(Bytes{}, KVRT_ERR_CORRUPT, "bad magic");
  Bytes v1 = b;
  v1[4] = 1;
  expect_parse_error(v1, KVRT_ERR_UNSUPPORTED, "version 1 ");
  Bytes v99 = b;
  v99[4] = 99;
  expect_parse_error(v99, KVRT_ERR_UNSUPPORTED, "version 99 ");
}

void test_absurd_counts(void**) {
  // tensor_count at bytes 8..15, kv_count at 16..23.
  Bytes b = sample_writer().to_bytes();
  Bytes k = b;
  const uint64_t huge = 1ull << 60;
  std::memcpy(k.data() + 16, &huge, 8);
  expect_parse_error(k, KVRT_ERR_CORRUPT, "metadata count 1152921504606846976");
  Bytes t = b;
  std::memcpy(t.data() + 8, &huge, 8);
  expect_parse_error(t, KVRT_ERR_CORRUPT, "tensor count 1152921504606846976");
  // A count just above what the bytes could hold is refused too.
  Raw r;
  r.header(0, 3).str("k").u32(0);
  r.b.push_back(1);
  expect_parse_error(r.b, KVRT_ERR_CORRUPT, "metadata count 3");
}

void test_string_length_past_end(void**) {
  Raw r;
  r.header(0, 1).str("key").u32(8).u64(1000).put("abc", 3);
  expect_parse_error(r.b, KVRT_ERR_CORRUPT, "length 1000");
  Raw k;  // a key length past the end
  k.header(0, 1).u64(UINT64_MAX).put("abcdefghijklmnopqrst", 20);
  expect_parse_error(k.b, KVRT_ERR_CORRUPT, "metadata key");
}

void test_array_overflow(void**) {
  // 2^61 + 1 elements of 8 bytes wrap to 8 bytes in 64-bit arithmetic.
  Raw r;
  r.header(0, 1).str("arr").u32(9).u32(10).u64((1ull << 61) + 1).u64(5).u64(6);
  expect_parse_error(r.b, KVRT_ERR_CORRUPT, "does not fit");
  Raw s;  // more strings than bytes
  s.header(0, 1).str("arr").u32(9).u32(8).u64(1ull << 40).str("a").str("b");
  expect_parse_error(s.b, KVRT_ERR_CORRUPT, "strings cannot fit");
  Raw u;  // unknown element type
  u.header(0, 1).str("arr").u32(9).u32(77).u64(1).u64(0);
  expect_parse_error(u.b, KVRT_ERR_CORRUPT, "unknown element type 77");
  Raw v;  // unknown value type
  v.header(0, 1).str("val").u32(13).u64(0);
  expect_parse_error(v.b, KVRT_ERR_CORRUPT, "unknown value type 13");
  Raw bl;  // booleans are 0 or 1
  bl.header(0, 1).str("flag").u32(7).put("\x02", 1).pad_to(16);
  expect_parse_error(bl.b, KVRT_ERR_CORRUPT, "boolean");
}

void test_nested_arrays(void**) {
  // One level of nesting is read (and stepped over).
  Raw ok;
  ok.header(0, 2).str("nest").u32(9).u32(9).u64(2);
  ok.u32(4).u64(1).u32(5);
  ok.u32(8).u64(1).str("s");
  ok.str("after").u32(4).u32(42);
  auto f = parse_copy(ok.b);
  assert_int_equal(f->find("nest")->n_elems, 2);
  assert_int_equal(f->find("nest")->elem_type, GgufType::array);
  assert_int_equal(f->get_uint("after", 0), 42);
  // Deeper nesting is refused as unsupported.
  Raw deep;
  deep.header(0, 1).str("deep").u32(9).u32(9).u64(1).u32(9).u64(1).u32(4).u64(1).u32(5);
  expect_parse_error(deep.b, KVRT_ERR_UNSUPPORTED, "nested");
}

// A file with one tensor info whose fields the caller chooses, then data.
Bytes one_tensor(uint32_t n_dims, std::vector<uint64_t> ne, uint32_t type, uint64_t offset,
                 size_t data_bytes) {
  Raw r;
  r.header(1, 0).str("t.weight").u32(n_dims);
  for (uint64_t n : ne) r.u64(n);
  r.u32(type).u64(offset).pad_to(32);
  r.b.resize(r.b.size() + data_bytes, 0);
  return r.b;
}

void test_tensor_checks(void**) {
  parse_copy(one_tensor(2, {4, 2}, 0, 0, 32));  // fits exactly
  expect_parse_error(one_tensor(2, {4, 2}, 0, 0, 31), KVRT_ERR_CORRUPT,
                     "tensor 't.weight' extends past the end of the file (offset 0 + 32 bytes");
  expect_parse_error(one_tensor(2, {4, 2}, 0, 64, 64), KVRT_ERR_CORRUPT, "extends past");
  expect_parse_error(one_tensor(2, {4, 2}, 0, UINT64_MAX - 31, 64), KVRT_ERR_CORRUPT,
                     "extends past");
  expect_parse_error(one_tensor(2, {4, 2}, 0, 4, 64), KVRT_ERR_CORRUPT,
                     "offset 4 is not a multiple of the alignment 32");
  expect_parse_error(one_tensor(5, {1, 1, 1, 1, 1}, 0, 0, 32), KVRT_ERR_CORRUPT,
                     "5 dimensions");
  expect_parse_error(one_tensor(0, {}, 0, 0, 32), KVRT_ERR_CORRUPT, "0 dimensions");
  expect_parse_error(one_tensor(2, {4, 0}, 0, 0, 32), KVRT_ERR_CORRUPT, "empty dimension");
  expect_parse_error(one_tensor(4, {1ull << 32, 1ull << 32, 2, 1}, 0, 0, 32), KVRT_ERR_CORRUPT,
                     "overflows");
  expect_parse_error(one_tensor(2, {1ull << 62, 2}, 0, 0, 32), KVRT_ERR_CORRUPT, "too large");
  expect_parse_error(one_tensor(2, {1ull << 40, 1ull << 22}, 0, 0, 32), KVRT_ERR_CORRUPT,
                     "overflows");
  expect_parse_error(one_tensor(2, {48, 1}, 8, 0, 64), KVRT_ERR_CORRUPT,
                     "48 columns do not divide into Q8_0 blocks");
  parse_copy(one_tensor(2, {64, 1}, 8, 0, 68));
  expect_parse_error(one_tensor(2, {32, 2}, 2, 0, 64), KVRT_ERR_UNSUPPORTED,
                     "tensor 't.weight' has type 2 (Q4_0)");
  expect_parse_error(one_tensor(2, {32, 2}, 12, 0, 64), KVRT_ERR_UNSUPPORTED, "type 12 (Q4_K)");
  expect_parse_error(one_tensor(2, {32, 2}, 1000, 0, 64), KVRT_ERR_UNSUPPORTED, "type 1000");
}

void test_duplicates(void**) {
  GgufWriter w;
  w.add_u32("dup", 1);
  w.add_string("dup", "again");
  expect_parse_error(w.to_bytes(), KVRT_ERR_CORRUPT, "duplicate metadata key 'dup'");
  GgufWriter t;
  t.add_tensor("same", 0, {8}, Bytes(32));
  t.add_tensor("same", 0, {8}, Bytes(32));
  expect_parse_error(t.to_bytes(), KVRT_ERR_CORRUPT, "duplicate tensor name 'same'");
}

void test_bad_alignment(void**) {
  for (uint32_t a : {0u, 3u, 48u}) {
    GgufWriter w;
    w.set_alignment(a);
    w.add_tensor("x", 0, {8}, Bytes(32));
    expect_parse_error(w.to_bytes(), KVRT_ERR_CORRUPT, "not a nonzero power of two");
  }
  GgufWriter s;
  s.add_string("general.alignment", "32");
  expect_parse_error(s.to_bytes(), KVRT_ERR_CORRUPT, "general.alignment has type string");
  // A huge power of two pushes the data section past the end of the file.
  GgufWriter h;
  h.add_u32("general.alignment", 1u << 31);
  h.add_tensor("x", 0, {8}, Bytes(32));
  Bytes b = h.to_bytes();
  b.resize(4096);
  expect_parse_error(b, KVRT_ERR_CORRUPT, "extends past");
}

void test_io_errors(void**) {
  expect_error([] { GgufFile::open("/nonexistent-dir/none.gguf"); }, KVRT_ERR_IO,
               "No such file");
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = tmp && *tmp ? tmp : "/tmp";
  expect_error([&] { GgufFile::open(dir); }, KVRT_ERR_IO, "not a regular file");
  // A file written to disk by the writer maps and parses.
  std::string path = dir + "/kvrt-test-gguf-" + std::to_string(::getpid()) + ".gguf";
  std::string err;
  assert_true(sample_writer().write(path, &err));
  auto f = GgufFile::open(path);
  assert_int_equal(f->tensors().size(), 5);
  assert_true(f->source() == path);
  // The streamed file equals the in-memory one.
  Bytes mem = sample_writer().to_bytes();
  std::FILE* fp = std::fopen(path.c_str(), "rb");
  Bytes disk(mem.size() + 1);
  size_t n = std::fread(disk.data(), 1, disk.size(), fp);
  std::fclose(fp);
  disk.resize(n);
  assert_true(disk == mem);
  std::remove(path.c_str());
  std::string epath = path + ".empty";
  fp = std::fopen(epath.c_str(), "wb");
  std::fclose(fp);
  expect_error([&] { GgufFile::open(epath); }, KVRT_ERR_CORRUPT, "empty file");
  std::remove(epath.c_str());
  assert_false(sample_writer().write("/nonexistent-dir/x.gguf", &err));
  assert_true(err.find("/nonexistent-dir/x.gguf") != std::string::npos);
}

std::string model_path() {
  const char* p = std::getenv("KVRT_MODEL");
  if (!p || !*p) p = std::getenv("KVRT_MODEL_DEFAULT");
  return p ? p : "";
}

void test_real_model(void**) {
  const std::string path = model_path();
  assert_false(path.empty());
  auto f = GgufFile::open(path);
  assert_int_equal(f->version(), 3);
  assert_string_equal(f->get_string("general.architecture", "").c_str(), "llama");
  // 3 global tensors + 9 per layer for 5 layers.
  assert_int_equal(f->tensors().size(), 3 + 9 * 5);
  struct Shape {
    const char* name;
    uint64_t ne0, ne1;
  } shapes[] = {
      {"token_embd.weight", 64, 512}, {"output.weight", 64, 512}, {"output_norm.weight", 64, 1},
      {"blk.0.attn_q.weight", 64, 64}, {"blk.0.attn_k.weight", 64, 32},
      {"blk.4.attn_v.weight", 64, 32}, {"blk.2.attn_output.weight", 64, 64},
      {"blk.3.ffn_gate.weight", 64, 172}, {"blk.3.ffn_up.weight", 64, 172},
      {"blk.1.ffn_down.weight", 172, 64}, {"blk.4.ffn_norm.weight", 64, 1},
  };
  for (const Shape& s : shapes) {
    const kvrt::GgufTensor* t = f->tensor(s.name);
    assert_non_null(t);
    assert_int_equal(t->type, 0);
    assert_int_equal(t->ne[0], s.ne0);
    assert_int_equal(t->ne[1], s.ne1);
    assert_int_equal(t->nbytes, s.ne0 * s.ne1 * 4);
  }
  assert_int_equal(f->find("tokenizer.ggml.tokens")->strings.size(), 512);
  assert_int_equal(f->get_uint("llama.block_count", 0), 5);
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_version2_and_custom_alignment),
      cmocka_unit_test(test_truncated_everywhere),
      cmocka_unit_test(test_random_corruption),
      cmocka_unit_test(test_bad_magic_and_versions),
      cmocka_unit_test(test_absurd_counts),
      cmocka_unit_test(test_string_length_past_end),
      cmocka_unit_test(test_array_overflow),
      cmocka_unit_test(test_nested_arrays),
      cmocka_unit_test(test_tensor_checks),
      cmocka_unit_test(test_duplicates),
      cmocka_unit_test(test_bad_alignment),
      cmocka_unit_test(test_io_errors),
      cmocka_unit_test(test_real_model),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
