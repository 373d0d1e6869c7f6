// GGUF (v2, v3) parsing over a read-only memory map, with every count,
// length, offset and extent checked against the bytes that remain.
#include "model/gguf-reader.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "kernels/common/weight-types.h"
#include "util/error.hpp"

namespace kvrt {
namespace {

// Smallest encodings, used to refuse counts the remaining bytes cannot hold
// before anything is allocated from them.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;          // key length, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // name length, n_dims, type, offset
constexpr uint32_t kMaxDims = 4;

const char* type_name(GgufType t) {
  switch (t) {
    case GgufType::u8: return "u8";
    case GgufType::i8: return "i8";
    case GgufType::u16: return "u16";
    case GgufType::i16: return "i16";
    case GgufType::u32: return "u32";
    case GgufType::i32: return "i32";
    case GgufType::f32: return "f32";
    case GgufType::boolean: return "bool";
    case GgufType::string: return "string";
    case GgufType::array: return "array";
    case GgufType::u64: return "u64";
    case GgufType::i64: return "i64";
    case GgufType::f64: return "f64";
  }
  return "?";
}

// Size of a scalar value type; 0 for string, array and unknown ids.
uint64_t scalar_size(uint32_t t) {
  switch (static_cast<GgufType>(t)) {
    case GgufType::u8: case GgufType::i8: case GgufType::boolean: return 1;
    case GgufType::u16: case GgufType::i16: return 2;
    case GgufType::u32: case GgufType::i32: case GgufType::f32: return 4;
    case GgufType::u64: case GgufType::i64: case GgufType::f64: return 8;
    default: return 0;
  }
}

// GGML's names for the tensor types we refuse, so the message says what the
// file holds rather than a bare number.
const char* ggml_type_name(uint32_t t) {
  static const char* const names[] = {
      "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
      "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS",
      "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64",
      "IQ1_M", "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0"};
  return t < sizeof(names) / sizeof(names[0]) ? names[t] : "unknown";
}

bool supported_weight_type(uint32_t t) {
  return t == kvrt_k::W_F32 || t == kvrt_k::W_F16 || t == kvrt_k::W_Q8_0 || t == kvrt_k::W_BF16;
}

template <typename T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // unaligned-safe; GGUF is little-endian like our hosts
  return v;
}

// A bounds-checked reading position; every read names what it was reading.
class Cursor {
 public:
  Cursor(const uint8_t* base, size_t size, const std::string& src)
      : base_(base), size_(size), src_(src) {}

  size_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  void need(uint64_t n, const char* what) const {
    if (n > remaining())
      fail(KVRT_ERR_CORRUPT, "%s: truncated: %s needs %" PRIu64 " bytes at offset %zu, %" PRIu64
           " remain", src_.c_str(), what, n, pos_, remaining());
  }
  const uint8_t* take(uint64_t n, const char* what) {
    need(n, what);
    const uint8_t* p = base_ + pos_;
    pos_ += static_cast<size_t>(n);
    return p;
  }
  template <typename T>
  T get(const char* what) {
    return load_le<T>(take(sizeof(T), what));
  }
  std::string_view str(const char* what) {
    uint64_t n = get<uint64_t>(what);
    if (n > remaining())
      fail(KVRT_ERR_CORRUPT, "%s: truncated: %s at offset %zu has length %" PRIu64
           " but only %" PRIu64 " bytes remain", src_.c_str(), what, pos_ - 8, n, remaining());
    const uint8_t* p = take(n, what);
    return std::string_view(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
  }

 private:
  const uint8_t* base_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& src_;
};

// Reads one value of type `t` for key `key` into `v`. `depth` counts array
// nesting: arrays of arrays are read (and skipped over) one level deep.
void read_value(Cursor& c, const std::string& src, const std::string& key, uint32_t t,
                GgufValue& v, int depth) {
  const uint64_t sz = scalar_size(t);
  if (sz != 0) {
    v.type = static_cast<GgufType>(t);
    const uint8_t* p = c.take(sz, "metadata value");
    switch (v.type) {
      case GgufType::u8: v.u = *p; break;
      case GgufType::i8: v.i = static_cast<int8_t>(*p); break;
      case GgufType::u16: v.u = load_le<uint16_t>(p); break;
      case GgufType::i16: v.i = load_le<int16_t>(p); break;
      case GgufType::u32: v.u = load_le<uint32_t>(p); break;
      case GgufType::i32: v.i = load_le<int32_t>(p); break;
      case GgufType::u64: v.u = load_le<uint64_t>(p); break;
      case GgufType::i64: v.i = load_le<int64_t>(p); break;
      case GgufType::f32: v.f = load_le<float>(p); break;
      case GgufType::f64: v.f = load_le<double>(p); break;
      case GgufType::boolean:
        if (*p > 1)
          fail(KVRT_ERR_CORRUPT, "%s: key '%s': boolean value %u is neither 0 nor 1", src.c_str(),
               key.c_str(), *p);
        v.u = *p;
        break;
      default: break;
    }
    return;
  }
  if (t == static_cast<uint32_t>(GgufType::string)) {
    v.type = GgufType::string;
    v.str = std::string(c.str("string value"));
    return;
  }
  if (t != static_cast<uint32_t>(GgufType::array))
    fail(KVRT_ERR_CORRUPT, "%s: key '%s' has unknown value type %u", src.c_str(), key.c_str(), t);

  v.type = GgufType::array;
  const uint32_t et = c.get<uint32_t>("array element type");
  const uint64_t n = c.get<uint64_t>("array length");
  v.elem_type = static_cast<GgufType>(et);
  v.n_elems = n;
  const uint64_t esz = scalar_size(et);
  if (esz != 0) {
    if (n > c.remaining() / esz)
      fail(KVRT_ERR_CORRUPT, "%s: key '%s': array of %" PRIu64 " %s elements (%u bytes each) "
           "does not fit in the %" PRIu64 " bytes that remain", src.c_str(), key.c_str(), n,
           type_name(v.elem_type), static_cast<unsigned>(esz), c.remaining());
    v.elems = c.take(n * esz, "array data");
    return;
  }
  if (et == static_cast<uint32_t>(GgufType::string)) {
    if (n > c.remaining() / 8)
      fail(KVRT_ERR_CORRUPT, "%s: key '%s': array of %" PRIu64 " strings cannot fit in the %"
           PRIu64 " bytes that remain", src.c_str(), key.c_str(), n, c.remaining());
    if (depth == 0) v.strings.reserve(static_cast<size_t>(n));
    for (uint64_t i = 0; i < n; ++i) {
      std::string_view s = c.str("array string");
      if (depth == 0) v.strings.push_back(s);
    }
    return;
  }
  if (et == static_cast<uint32_t>(GgufType::array)) {
    // Nothing in a Llama model needs nested arrays; they are stepped over
    // (one level deep) so that an unrelated key does not block loading.
    if (depth > 0)
      fail(KVRT_ERR_UNSUPPORTED, "%s: key '%s': arrays nested more than two deep are not "
           "supported", src.c_str(), key.c_str());
    if (n > c.remaining() / 12)
      fail(KVRT_ERR_CORRUPT, "%s: key '%s': array of %" PRIu64 " arrays cannot fit in the %"
           PRIu64 " bytes that remain", src.c_str(), key.c_str(), n, c.remaining());
    v.elems = nullptr;
    for (uint64_t i = 0; i < n; ++i) {
      GgufValue inner;
      read_value(c, src, key, et, inner, depth + 1);
    }
    return;
  }
  fail(KVRT_ERR_CORRUPT, "%s: key '%s': array has unknown element type %u", src.c_str(),
       key.c_str(), et);
}

}  // namespace

std::unique_ptr<GgufFile> GgufFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(KVRT_ERR_IO, "%s: cannot open: %s", path.c_str(), std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail(KVRT_ERR_IO, "%s: cannot stat: %s", path.c_str(), std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(KVRT_ERR_IO, "%s: not a regular file", path.c_str());
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    fail(KVRT_ERR_CORRUPT, "%s: empty file, not a GGUF model", path.c_str());
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) fail(KVRT_ERR_IO, "%s: cannot map: %s", path.c_str(), std::strerror(e));

  std::unique_ptr<GgufFile> f(new GgufFile());
  f->source_ = path;
  f->base_ = static_cast<const uint8_t*>(map);
  f->size_ = size;
  f->map_ = map;  // owned from here: the destructor unmaps even if parsing throws
  f->parse_all();
  return f;
}

std::unique_ptr<GgufFile> GgufFile::parse(const uint8_t* data, size_t size,
                                          std::string source_name) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->source_ = std::move(source_name);
  f->base_ = data;
  f->size_ = size;
  f->parse_all();
  return f;
}

GgufFile::~GgufFile() {
  if (map_) ::munmap(map_, size_);
}

void GgufFile::parse_all() {
  const char* src = source_.c_str();
  if (base_ == nullptr && size_ != 0) fail(KVRT_ERR_CORRUPT, "%s: no data", src);
  Cursor c(base_, size_, source_);

  if (size_ < 4 || std::memcmp(base_, "GGUF", 4) != 0)
    fail(KVRT_ERR_CORRUPT, "%s: not a GGUF file (bad magic)", src);
  c.take(4, "magic");
  version_ = c.get<uint32_t>("version");
  if (version_ != 2 && version_ != 3)
    fail(KVRT_ERR_UNSUPPORTED, "%s: GGUF version %u is not supported (only 2 and 3)", src,
         version_);
  const uint64_t n_tensors = c.get<uint64_t>("tensor count");
  const uint64_t n_kv = c.get<uint64_t>("metadata count");
  if (n_kv > c.remaining() / kMinKvBytes)
    fail(KVRT_ERR_CORRUPT, "%s: metadata count %" PRIu64 " cannot fit in the %" PRIu64
         " bytes that remain", src, n_kv, c.remaining());
  if (n_tensors > c.remaining() / kMinTensorInfoBytes ||
      n_kv * kMinKvBytes + n_tensors * kMinTensorInfoBytes > c.remaining())
    fail(KVRT_ERR_CORRUPT, "%s: tensor count %" PRIu64 " (with %" PRIu64
         " metadata entries) cannot fit in the %" PRIu64 " bytes that remain", src, n_tensors,
         n_kv, c.remaining());

  kv_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    const size_t at = c.pos();
    std::string key(c.str("metadata key"));
    if (kv_.count(key))
      fail(KVRT_ERR_CORRUPT, "%s: duplicate metadata key '%s' at offset %zu", src, key.c_str(),
           at);
    const uint32_t t = c.get<uint32_t>("metadata value type");
    GgufValue v;
    read_value(c, source_, key, t, v, 0);
    kv_.emplace(std::move(key), std::move(v));
  }

  if (const GgufValue* a = find("general.alignment")) {
    if (a->type != GgufType::u32)
      fail(KVRT_ERR_CORRUPT, "%s: general.alignment has type %s, expected u32", src,
           type_name(a->type));
    if (a->u == 0 || (a->u & (a->u - 1)) != 0)
      fail(KVRT_ERR_CORRUPT, "%s: general.alignment %" PRIu64
           " is not a nonzero power of two", src, a->u);
    alignment_ = a->u;
  }

  tensors_.reserve(static_cast<size_t>(n_tensors));
  tensor_index_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    t.name = std::string(c.str("tensor name"));
    const char* tn = t.name.c_str();
    if (tensor_index_.count(t.name))
      fail(KVRT_ERR_CORRUPT, "%s: duplicate tensor name '%s'", src, tn);
    t.n_dims = c.get<uint32_t>("tensor dimension count");
    if (t.n_dims == 0 || t.n_dims > kMaxDims)
      fail(KVRT_ERR_CORRUPT, "%s: tensor '%s' has %u dimensions (1 to %u allowed)", src, tn,
           t.n_dims, kMaxDims);
    uint64_t n_elems = 1;
    for (uint32_t d = 0; d < t.n_dims; ++d) {
      t.ne[d] = c.get<uint64_t>("tensor dimension");
      if (t.ne[d] == 0)
        fail(KVRT_ERR_CORRUPT, "%s: tensor '%s' has an empty dimension %u", src, tn, d);
      if (t.ne[d] > UINT64_MAX / n_elems)
        fail(KVRT_ERR_CORRUPT, "%s: tensor '%s': element count overflows at dimension %u "
             "(%" PRIu64 ")", src, tn, d, t.ne[d]);
      n_elems *= t.ne[d];
    }
    t.type = c.get<uint32_t>("tensor type");
    t.offset = c.get<uint64_t>("tensor offset");
    if (!supported_weight_type(t.type))
      fail(KVRT_ERR_UNSUPPORTED, "%s: tensor '%s' has type %u (%s), which is not supported "
           "(F32, F16, BF16 and Q8_0 are)", src, tn, t.type, ggml_type_name(t.type));
    // ne[0] bounds a row, so its byte size cannot overflow for these types
    // once the element count did not; the row count multiplies checked.
    if (t.ne[0] > UINT64_MAX / 4)
      fail(KVRT_ERR_CORRUPT, "%s: tensor '%s': row of %" PRIu64 " elements is too large", src,
           tn, t.ne[0]);
    const uint64_t row_bytes = kvrt_k::weight_row_bytes(t.type, static_cast<size_t>(t.ne[0]));
    if (row_bytes == 0)
      fail(KVRT_ERR_CORRUPT, "%s: tensor '%s': %" PRIu64 " columns do not divide into %s blocks",
           src, tn, t.ne[0], ggml_type_name(t.type));
    const uint64_t n_rows = n_elems / t.ne[0];
    if (n_rows > UINT64_MAX / row_bytes)
      fail(KVRT_ERR_CORRUPT, "%s: tensor '%s': byte size overflows", src, tn);
    t.nbytes = row_bytes * n_rows;
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment.
  const uint64_t pos = c.pos();
  const uint64_t data_start = (pos + alignment_ - 1) / alignment_ * alignment_;
  const uint64_t data_bytes = data_start <= size_ ? size_ - data_start : 0;
  for (GgufTensor& t : tensors_) {
    const char* tn = t.name.c_str();
    if (t.offset % alignment_ != 0)
      fail(KVRT_ERR_CORRUPT, "%s: tensor '%s' offset %" PRIu64 " is not a multiple of the "
           "alignment %" PRIu64, src, tn, t.offset, alignment_);
    if (data_start > size_ || t.offset > data_bytes || t.nbytes > data_bytes - t.offset)
      fail(KVRT_ERR_CORRUPT, "%s: tensor '%s' extends past the end of the file (offset %" PRIu64
           " + %" PRIu64 " bytes > %" PRIu64 " bytes of data)", src, tn, t.offset, t.nbytes,
           data_bytes);
    t.data = base_ + data_start + t.offset;
  }
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_.find(std::string(key));
  return it == kv_.end() ? nullptr : &it->second;
}

uint64_t GgufFile::get_uint(std::string_view key, uint64_t fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  switch (v->type) {
    case GgufType::u8: case GgufType::u16: case GgufType::u32: case GgufType::u64:
      return v->u;
    case GgufType::i8: case GgufType::i16: case GgufType::i32: case GgufType::i64:
      if (v->i < 0)
        fail(KVRT_ERR_CORRUPT, "%s: key '%.*s' is negative (%" PRId64 ")", source_.c_str(),
             static_cast<int>(key.size()), key.data(), v->i);
      return static_cast<uint64_t>(v->i);
    default:
      fail(KVRT_ERR_CORRUPT, "%s: key '%.*s' has type %s, expected an integer", source_.c_str(),
           static_cast<int>(key.size()), key.data(), type_name(v->type));
  }
}

double GgufFile::get_float(std::string_view key, double fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  switch (v->type) {
    case GgufType::f32: case GgufType::f64: return v->f;
    case GgufType::u8: case GgufType::u16: case GgufType::u32: case GgufType::u64:
      return static_cast<double>(v->u);
    case GgufType::i8: case GgufType::i16: case GgufType::i32: case GgufType::i64:
      return static_cast<double>(v->i);
    default:
      fail(KVRT_ERR_CORRUPT, "%s: key '%.*s' has type %s, expected a number", source_.c_str(),
           static_cast<int>(key.size()), key.data(), type_name(v->type));
  }
}

bool GgufFile::get_bool(std::string_view key, bool fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  if (v->type != GgufType::boolean)
    fail(KVRT_ERR_CORRUPT, "%s: key '%.*s' has type %s, expected bool", source_.c_str(),
         static_cast<int>(key.size()), key.data(), type_name(v->type));
  return v->u != 0;
}

std::string GgufFile::get_string(std::string_view key, std::string fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  if (v->type != GgufType::string)
    fail(KVRT_ERR_CORRUPT, "%s: key '%.*s' has type %s, expected string", source_.c_str(),
         static_cast<int>(key.size()), key.data(), type_name(v->type));
  return v->str;
}

uint64_t GgufFile::require_uint(std::string_view key) const {
  if (!find(key))
    fail(KVRT_ERR_CORRUPT, "%s: missing key '%.*s'", source_.c_str(),
         static_cast<int>(key.size()), key.data());
  return get_uint(key, 0);
}

const GgufTensor* GgufFile::tensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace kvrt
