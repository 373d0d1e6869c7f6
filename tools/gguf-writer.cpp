// A small standalone GGUF v3 writer: metadata, tensor infos, aligned data.
#include "gguf-writer.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace kvrt_tools {
namespace {

// GGUF value type ids.
constexpr uint32_t T_U32 = 4, T_I32 = 5, T_F32 = 6, T_BOOL = 7, T_STRING = 8, T_ARRAY = 9;

template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));  // GGUF is little-endian, like every host we build for
}

void put_str(std::vector<uint8_t>& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  const size_t at = out.size();
  out.resize(at + s.size());
  if (!s.empty()) std::memcpy(out.data() + at, s.data(), s.size());
}

uint64_t pad_to(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

}  // namespace

void GgufWriter::add_u32(const std::string& key, uint32_t v) {
  Kv kv{key, T_U32, {}};
  put(kv.value, v);
  kvs_.push_back(std::move(kv));
}

void GgufWriter::add_i32(const std::string& key, int32_t v) {
  Kv kv{key, T_I32, {}};
  put(kv.value, v);
  kvs_.push_back(std::move(kv));
}

void GgufWriter::add_f32(const std::string& key, float v) {
  Kv kv{key, T_F32, {}};
  put(kv.value, v);
  kvs_.push_back(std::move(kv));
}

void GgufWriter::add_bool(const std::string& key, bool v) {
  Kv kv{key, T_BOOL, {}};
  put<uint8_t>(kv.value, v ? 1 : 0);
  kvs_.push_back(std::move(kv));
}

void GgufWriter::add_string(const std::string& key, const std::string& v) {
  Kv kv{key, T_STRING, {}};
  put_str(kv.value, v);
  kvs_.push_back(std::move(kv));
}

void GgufWriter::add_array_string(const std::string& key, const std::vector<std::string>& v) {
  Kv kv{key, T_ARRAY, {}};
  put<uint32_t>(kv.value, T_STRING);
  put<uint64_t>(kv.value, v.size());
  for (const auto& s : v) put_str(kv.value, s);
  kvs_.push_back(std::move(kv));
}

void GgufWriter::add_array_f32(const std::string& key, const std::vector<float>& v) {
  Kv kv{key, T_ARRAY, {}};
  put<uint32_t>(kv.value, T_F32);
  put<uint64_t>(kv.value, v.size());
  for (float x : v) put(kv.value, x);
  kvs_.push_back(std::move(kv));
}

void GgufWriter::add_array_i32(const std::string& key, const std::vector<int32_t>& v) {
  Kv kv{key, T_ARRAY, {}};
  put<uint32_t>(kv.value, T_I32);
  put<uint64_t>(kv.value, v.size());
  for (int32_t x : v) put(kv.value, x);
  kvs_.push_back(std::move(kv));
}

void GgufWriter::add_tensor(const std::string& name, uint32_t ggml_type,
                            std::vector<uint64_t> ne, std::vector<uint8_t> bytes) {
  tensors_.push_back(Tensor{name, ggml_type, std::move(ne), std::move(bytes)});
}

void GgufWriter::set_alignment(uint32_t a) { alignment_ = a; }

std::vector<uint8_t> GgufWriter::header_bytes() const {
  // A zero alignment would make padding meaningless; write unpadded then.
  const uint64_t align = alignment_ ? alignment_ : 1;
  const bool write_alignment = alignment_ != 32;
  std::vector<uint8_t> out = {'G', 'G', 'U', 'F'};
  put<uint32_t>(out, 3);
  put<uint64_t>(out, tensors_.size());
  put<uint64_t>(out, kvs_.size() + (write_alignment ? 1 : 0));
  if (write_alignment) {
    put_str(out, "general.alignment");
    put<uint32_t>(out, T_U32);
    put<uint32_t>(out, alignment_);
  }
  for (const auto& kv : kvs_) {
    put_str(out, kv.key);
    put<uint32_t>(out, kv.type);
    out.insert(out.end(), kv.value.begin(), kv.value.end());
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    put_str(out, t.name);
    put<uint32_t>(out, static_cast<uint32_t>(t.ne.size()));
    for (uint64_t n : t.ne) put<uint64_t>(out, n);
    put<uint32_t>(out, t.type);
    put<uint64_t>(out, offset);
    offset = pad_to(offset + t.bytes.size(), align);
  }
  out.resize(pad_to(out.size(), align), 0);
  return out;
}

std::vector<uint8_t> GgufWriter::to_bytes() const {
  const uint64_t align = alignment_ ? alignment_ : 1;
  std::vector<uint8_t> out = header_bytes();
  for (const auto& t : tensors_) {
    out.insert(out.end(), t.bytes.begin(), t.bytes.end());
    out.resize(pad_to(out.size(), align), 0);
  }
  return out;
}

bool GgufWriter::write(const std::string& path, std::string* err) const {
  const uint64_t align = alignment_ ? alignment_ : 1;
  auto set_err = [&](const char* what) {
    if (err) *err = path + ": " + what + ": " + std::strerror(errno);
    return false;
  };
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return set_err("cannot open for writing");
  static const uint8_t zeros[256] = {};
  std::vector<uint8_t> head = header_bytes();
  bool ok = std::fwrite(head.data(), 1, head.size(), f) == head.size();
  for (const auto& t : tensors_) {
    if (!ok) break;
    if (!t.bytes.empty()) ok = std::fwrite(t.bytes.data(), 1, t.bytes.size(), f) == t.bytes.size();
    uint64_t pad = pad_to(t.bytes.size(), align) - t.bytes.size();
    while (ok && pad > 0) {
      size_t n = pad < sizeof(zeros) ? static_cast<size_t>(pad) : sizeof(zeros);
      ok = std::fwrite(zeros, 1, n, f) == n;
      pad -= n;
    }
  }
  if (!ok) {
    set_err("write failed");
    std::fclose(f);
    return false;
  }
  if (std::fclose(f) != 0) return set_err("close failed");
  return true;
}

}  // namespace kvrt_tools
