// GGUF (v2, v3) reader over a memory map; every count, offset and extent is
// checked against the file size before use.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kvrt {

// GGUF metadata value types, as numbered in the format.
enum class GgufType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
  string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};

// A metadata value. Scalars are widened; arrays keep their element type and
// point into the map (strings of an array are decoded into `strings`).
struct GgufValue {
  GgufType type = GgufType::u8;
  uint64_t u = 0;        // unsigned integers and booleans
  int64_t i = 0;         // signed integers
  double f = 0;          // floats
  std::string str;       // string
  GgufType elem_type = GgufType::u8;   // arrays
  uint64_t n_elems = 0;                // arrays
  const uint8_t* elems = nullptr;      // arrays of scalars: raw little-endian data
  std::vector<std::string_view> strings;  // arrays of strings: views into the map
};

struct GgufTensor {
  std::string name;
  uint32_t type = 0;        // kvrt_k::WeightType numbering (GGML type ids)
  uint32_t n_dims = 0;
  uint64_t ne[4] = {1, 1, 1, 1};  // ne[0] is the fastest-varying dimension
  uint64_t offset = 0;      // from the start of the data section
  const uint8_t* data = nullptr;
  uint64_t nbytes = 0;
};

class GgufFile {
 public:
  // Maps and parses `path`. Throws Error: KVRT_ERR_IO when it cannot be
  // opened, KVRT_ERR_CORRUPT when malformed, KVRT_ERR_UNSUPPORTED for a
  // version or tensor type it does not know.
  static std::unique_ptr<GgufFile> open(const std::string& path);
  // Parses a buffer the caller keeps alive (fuzzing, tests).
  static std::unique_ptr<GgufFile> parse(const uint8_t* data, size_t size,
                                         std::string source_name);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& source() const { return source_; }

  const GgufValue* find(std::string_view key) const;
  // Typed look-ups; throw KVRT_ERR_CORRUPT naming the key when the value has
  // another type; return the fallback when the key is absent.
  uint64_t get_uint(std::string_view key, uint64_t fallback) const;
  double get_float(std::string_view key, double fallback) const;
  std::string get_string(std::string_view key, std::string fallback) const;
  bool get_bool(std::string_view key, bool fallback) const;
  // Throws KVRT_ERR_CORRUPT "missing key ..." when absent.
  uint64_t require_uint(std::string_view key) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* tensor(std::string_view name) const;

 private:
  GgufFile() = default;
  void parse_all();

  std::string source_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  void* map_ = nullptr;  // non-null when we own an mmap of size_ bytes
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::unordered_map<std::string, GgufValue> kv_;
  std::vector<GgufTensor> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace kvrt
