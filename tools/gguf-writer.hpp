// A small standalone GGUF v3 writer (standard library only) used by the tools
// and the tests to craft model files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvrt_tools {

class GgufWriter {
 public:
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string(const std::string& key, const std::string& v);
  void add_array_string(const std::string& key, const std::vector<std::string>& v);
  void add_array_f32(const std::string& key, const std::vector<float>& v);
  void add_array_i32(const std::string& key, const std::vector<int32_t>& v);
  // ne[0] is the fastest dimension (GGUF order); bytes are the tensor data as stored.
  void add_tensor(const std::string& name, uint32_t ggml_type, std::vector<uint64_t> ne,
                  std::vector<uint8_t> bytes);
  void set_alignment(uint32_t a);  // default 32 (written as general.alignment only if != 32)
  std::vector<uint8_t> to_bytes() const;  // the whole file
  bool write(const std::string& path, std::string* err) const;  // streams to disk

 private:
  struct Kv {
    std::string key;
    uint32_t type;               // GGUF value type
    std::vector<uint8_t> value;  // encoded value (after the type field)
  };
  struct Tensor {
    std::string name;
    uint32_t type;
    std::vector<uint64_t> ne;
    std::vector<uint8_t> bytes;
  };
  // Header, metadata and tensor infos, padded to the alignment; the tensor
  // data follows, each tensor padded to the alignment.
  std::vector<uint8_t> header_bytes() const;

  std::vector<Kv> kvs_;
  std::vector<Tensor> tensors_;
  uint32_t alignment_ = 32;
};

}  // namespace kvrt_tools
