// Replays every file of a corpus folder through a fuzz target, so inputs that
// once crashed stay fixed as an ordinary test.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  std::error_code ec;
  std::filesystem::directory_iterator it(argv[1], ec);
  if (ec) {
    std::fprintf(stderr, "cannot read corpus folder %s: %s\n", argv[1], ec.message().c_str());
    return 1;
  }
  size_t n = 0;
  for (const auto& e : it) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::vector<uint8_t> buf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(buf.data(), buf.size());
    ++n;
  }
  if (n == 0) {
    std::fprintf(stderr, "corpus folder %s is empty\n", argv[1]);
    return 1;
  }
  std::printf("%zu passed, 0 failed\n", n);
  return 0;
}
